"""People intervening: cancel, pause and resume, skip a step, retry a failed compensation, resubmit,
release a held saga."""
from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from ..errors import InvalidRequest, InvalidSagaInput, InvalidTransition, UnknownStep
from ..models import ACTIVE_SAGA_STATUSES, EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus
from . import children, sql
from .compensation import compensation_order, past_pivot, start_compensating
from .core import (
    actor,
    dead_holders,
    definition_of,
    dispatch_compensation,
    event,
    in_flight,
    is_paused,
    json_problem,
    locked_saga,
    move_saga,
    move_step,
    no_such_saga,
    release,
    saga_id_of,
    stall_deadline,
    steps_of,
)
from .recovery import carry_on
from .start import start_saga, validate_input
from .waiting import checked_result, time_out_waits

PERSON = "person"  # a saga's ``pause_cause`` when a person paused it
PARENT = "parent"  # a child's ``pause_cause`` when its parent was paused (its parent's resume resumes it)
REASON_MAX_LENGTH = 2000


def cancel(saga: SagaInstance | uuid.UUID | str, *, reason: str = "cancelled", by: Any = None) -> SagaInstance:
    """Stop a pending or running saga and compensate what it did.

    The saga moves to ``compensating`` at once. A step attempt in progress
    finishes; its effects are then compensated too, before the earlier steps'.
    The saga's error keeps ``reason``; its event, who (``by``: the user).
    """
    reason = (reason or "").strip() or "cancelled"
    with locked_saga(saga_id_of(saga)) as instance:
        if instance is None:
            raise no_such_saga(saga)
        going_forward = instance.status in (SagaStatus.PENDING, SagaStatus.RUNNING) or (
            is_paused(instance) and instance.paused_from in (SagaStatus.PENDING, SagaStatus.RUNNING))
        if not going_forward:
            raise InvalidTransition(
                f"saga {instance.id} is {instance.status}; only a pending, running or paused saga can be cancelled")
        records = steps_of(instance)
        if past_pivot(definition_of(instance, records), records):
            raise InvalidTransition(
                f"saga {instance.id} is past its pivot: it can only go forward (resume it, or skip the step "
                f"that failed), not be cancelled")
        instance.cancel_requested_at = instance.db_now
        event(instance, EventKind.CANCEL_REQUESTED, reason=reason, **actor(by))
        instance.error = reason
        start_compensating(instance, records, reason)
    return SagaInstance.objects.get(pk=instance.pk)


def _checked_reason(reason: Any, *, required: bool) -> str:
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        raise InvalidRequest({"reason": ["must be text"]})
    reason = reason.strip()
    if required and not reason:
        raise InvalidRequest({"reason": ["a reason is required"]})
    problem = json_problem(reason, "reason")
    if problem:
        raise InvalidRequest({"reason": [problem]})
    if len(reason) > REASON_MAX_LENGTH:
        raise InvalidRequest({"reason": [f"at most {REASON_MAX_LENGTH} characters"]})
    return reason


def pause(saga: SagaInstance | uuid.UUID | str, *, reason: str = "", by: Any = None) -> SagaInstance:
    """Pause a pending, running or compensating saga: nothing more starts until ``resume``.

    An attempt at work finishes and its report is recorded, as are signals;
    no next step, retry, compensation or resend is sent, and the sweeper
    leaves it alone. Event ``saga_paused`` with ``reason`` and who (``by``).
    """
    reason = _checked_reason(reason, required=False)
    return _pause(saga, reason=reason, by=by, cause=PERSON)


_PAUSABLE = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


def _pause(saga: SagaInstance | uuid.UUID | str, *, reason: str, by: Any, cause: str) -> SagaInstance:
    """Pause the saga, then its children that are at work (their cause: ``PARENT``), down the tree."""
    with locked_saga(saga_id_of(saga)) as instance:
        if instance is None:
            raise no_such_saga(saga)
        if instance.status not in _PAUSABLE:
            raise InvalidTransition(
                f"saga {instance.id} is {instance.status}; only a pending, running or compensating saga can be paused")
        instance.pause_cause = cause
        move_saga(instance, SagaStatus.PAUSED, EventKind.SAGA_PAUSED, cause=cause, reason=reason, **actor(by))
        for child in children.children_of(instance.pk, _PAUSABLE):
            _pause(child, reason=reason or f"its parent saga {instance.pk} was paused", by=by, cause=PARENT)
    return SagaInstance.objects.get(pk=instance.pk)


def resume(saga: SagaInstance | uuid.UUID | str, *, input: dict | None = None, by: Any = None) -> SagaInstance:
    """A paused saga goes back to the status it was paused from and does what its records say.

    What happened while it was paused counts now: an attempt that ended, a
    signal, a deadline that passed (the wait times out). A step after the
    pivot that failed for good runs again with a fresh retry budget.
    ``input`` (a dict) is merged over the saga's input first and validated
    as a start would be (``InvalidSagaInput``, and nothing changes): what the
    next attempts see. Event ``saga_resumed`` with who (``by``) and the
    input fields changed.
    """
    with locked_saga(saga_id_of(saga)) as instance:
        if instance is None:
            raise no_such_saga(saga)
        if not is_paused(instance):
            raise InvalidTransition(f"saga {instance.id} is {instance.status}; only a paused saga can be resumed")
        records = steps_of(instance)
        definition = definition_of(instance, records)
        changed: list[str] = []
        if input is not None:
            if not isinstance(input, dict):
                raise InvalidSagaInput({"input": ["must be a JSON object"]})
            merged = validate_input(definition, {**instance.input, **input})
            changed = sorted(k for k in set(merged) | set(instance.input) if merged.get(k) != instance.input.get(k))
            if changed:
                instance.input = merged
                sql.update_fields(instance, ["input"])
        cause = instance.pause_cause
        move_saga(instance, instance.paused_from or SagaStatus.RUNNING, EventKind.SAGA_RESUMED, phase=PERSON,
                  cause=cause, **({"changed_input": changed} if changed else {}), **actor(by))
        _resume_children(instance, by)
        _go_on(instance, records, definition)
    return SagaInstance.objects.get(pk=instance.pk)


def _resume_children(saga: SagaInstance, by: Any) -> None:
    """Resume the children its pause paused (not one a person paused, nor one that paused past its pivot)."""
    for child in children.children_of(saga.pk, (SagaStatus.PAUSED,)):
        if child.pause_cause == PARENT:
            resume(child, by=by)


def _go_on(saga: SagaInstance, records: list[StepRecord], definition) -> None:
    """A saga just back from a pause: apply what happened meanwhile, then do what its records say."""
    saga.due_at = stall_deadline(saga)
    if saga.status == SagaStatus.COMPENSATING and any(
            r.status == StepStatus.COMPENSATION_FAILED for r in records):
        failed = next(r for r in records if r.status == StepStatus.COMPENSATION_FAILED)
        move_saga(saga, SagaStatus.FAILED, EventKind.SAGA_FAILED, reason=saga.error or
                  f"compensation of step {failed.name} failed")
        return
    if saga.status == SagaStatus.RUNNING:
        time_out_waits(saga, records, definition)  # deadlines that passed while it was paused
        if past_pivot(definition, records):
            for record in records:
                if record.status == StepStatus.FAILED and definition.after_pivot(record.index):
                    _retry_afresh(saga, record)
    now = saga.db_now
    dead = dead_holders(records, now)
    live = [r.lease_expires_at for r in records if in_flight(r, now, dead)]
    if live:
        saga.due_at = min(live)  # its report carries the saga on (or the sweeper, if it is lost)
        return
    carry_on(saga, records, definition)


def _retry_afresh(saga: SagaInstance, record: StepRecord) -> None:
    """Step ``record`` failed for good after the pivot: it runs again, with a fresh retry budget."""
    record.retry_base = record.attempts
    record.error = ""
    record.finished_at = None
    release(record)
    record.next_attempt_at = saga.db_now  # due at once: the next delivery makes a new attempt
    move_step(saga, record, StepStatus.RUNNING, EventKind.STEP_RETRIED, attempts_before=record.attempts,
              note="run again with a fresh retry budget")


def skip_step(saga: SagaInstance | uuid.UUID | str, step: str, *, result: dict | None = None, reason: str,
              by: Any = None) -> SagaInstance:
    """A person did the work of a step that failed for good after the pivot: it becomes ``skipped``
    with ``result`` as its output (what later steps see in ``ctx.results``), and the saga goes on.

    Only for a paused saga and such a step (``InvalidTransition`` otherwise;
    ``UnknownStep`` for a name it does not have). Event ``step_skipped`` with
    ``reason``, ``result`` and who (``by``).
    """
    reason = _checked_reason(reason, required=True)
    result = checked_result(result, InvalidRequest)
    with locked_saga(saga_id_of(saga)) as instance:
        if instance is None:
            raise no_such_saga(saga)
        records = steps_of(instance)
        record = next((r for r in records if r.name == step), None)
        if record is None:
            raise UnknownStep(f"saga {instance.id} has no step {step!r}")
        definition = definition_of(instance, records)
        if not (is_paused(instance, from_status=SagaStatus.RUNNING) and record.status == StepStatus.FAILED
                and definition.after_pivot(record.index) and past_pivot(definition, records)):
            raise InvalidTransition(
                f"step {step} of saga {instance.id} is {record.status} (saga {instance.status}); only a step that "
                f"failed for good after the pivot, of a paused saga, can be skipped")
        record.result = result
        record.finished_at = instance.db_now
        move_step(instance, record, StepStatus.SKIPPED, EventKind.STEP_SKIPPED, reason=reason, result=result,
                  **actor(by))
        if not any(r.status == StepStatus.FAILED for r in records):
            instance.error = ""
        move_saga(instance, SagaStatus.RUNNING, EventKind.SAGA_RESUMED, phase="skip", skipped=step, **actor(by))
        _go_on(instance, records, definition)
    return SagaInstance.objects.get(pk=instance.pk)


def retry_compensation(saga: SagaInstance | uuid.UUID | str, *, by: Any = None) -> SagaInstance:
    """Re-run the compensations that failed, with a fresh retry budget (``by``: who asked)."""
    with locked_saga(saga_id_of(saga)) as instance:
        if instance is None:
            raise no_such_saga(saga)
        if instance.status != SagaStatus.FAILED:
            raise InvalidTransition(
                f"saga {instance.id} is {instance.status}; only a failed saga can retry compensation")
        event(instance, EventKind.COMPENSATION_RETRY_REQUESTED, **actor(by))
        records = steps_of(instance)
        definition = definition_of(instance, records)
        for record in records:
            if record.status == StepStatus.COMPENSATION_FAILED:
                record.compensation_attempts = 0
                release(record)
                move_step(instance, record, StepStatus.COMPENSATING, EventKind.COMPENSATION_RETRY_REQUESTED)
                child = children.child_of(record) if definition.is_child(record.index) else None
                if child is not None and child.status == SagaStatus.FAILED:
                    retry_compensation(child, by=by)  # its undoing failed because its child's did
        move_saga(instance, SagaStatus.COMPENSATING, EventKind.SAGA_COMPENSATING, reason="compensation retried")
        instance.due_at = stall_deadline(instance)
        dispatch_compensation(instance, compensation_order(records))
    return SagaInstance.objects.get(pk=instance.pk)


def resubmit(saga: SagaInstance | uuid.UUID | str, *, by: Any = None) -> SagaInstance:
    """Start a new instance of the latest version with the same input, linked to this one.

    Idempotent: a saga already resubmitted answers the instance it started
    (``created_now`` False), so a double click starts one saga, not two.
    """
    with locked_saga(saga_id_of(saga)) as original:
        if original is None:
            raise no_such_saga(saga)
        if original.status in ACTIVE_SAGA_STATUSES:
            raise InvalidTransition(
                f"saga {original.id} is still {original.status}; resubmit it once it has finished")
        earlier = SagaInstance.objects.filter(resubmitted_from=original).order_by("created_at").first()
        if earlier is not None:
            earlier.created_now = False
            return earlier
        new = start_saga(original.saga_type, input=original.input, resubmitted_from=original, by=by)
        event(original, EventKind.RESUBMITTED, new_saga=str(new.id), **actor(by))
    return new


def release_held(saga: SagaInstance | uuid.UUID | str, *, note: str = "", by: Any = None) -> SagaInstance:
    """Give a saga the sweeper held for a person back to the sweeper, once its cause is fixed."""
    with locked_saga(saga_id_of(saga)) as instance:
        if instance is None:
            raise no_such_saga(saga)
        if instance.status not in ACTIVE_SAGA_STATUSES or instance.due_at is not None or is_paused(instance):
            raise InvalidTransition(f"saga {instance.id} is not held by the sweeper")
        # Due now (a millisecond back: SQLite's clock reads to the millisecond only).
        instance.due_at = instance.db_now - timedelta(milliseconds=1)
        event(instance, EventKind.SAGA_RESUMED, phase="released", note=note or "released for the sweeper",
              **actor(by))
    return SagaInstance.objects.get(pk=instance.pk)
