"""The state machine: every transition of a saga and of its steps happens here.

A transition is one call: it locks the saga row (``select_for_update``; on
SQLite the IMMEDIATE transaction does the same), checks the move is allowed,
writes the change and its ``SagaEvent`` in one transaction. Tasks, views,
admin actions and the sweeper call these functions and never set a status
themselves. Messages are sent only after the transaction that decided them
commits (``transaction.on_commit``).

Forward execution of one step is split in three short transactions around
the action: claim the attempt, run the action (outside any transaction unless
the step is ``transactional``), record its outcome. A claim holds the step for
a lease (the step's timeout plus a grace); another delivery of the same step
waits while the lease is live and takes over once it has expired, so a
duplicated message never runs an action twice at once and a redelivered one
whose step already succeeded runs nothing.

A ``Parallel`` makes one stage of several steps: its members are claimed
independently (each waits only for the earlier stages), and the join needs no
result backend: the member whose recorded success completes the stage, under
the saga's row lock, sends the next stage after commit. When a member fails,
siblings waiting for a retry are stopped, siblings still at work finish, and
the compensation chain waits for them before undoing anything earlier.
"""
from __future__ import annotations

import enum
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from . import canvas, failure_injection
from .canvas import effective_timeout, hard_time_limit
from .definitions import Retry, Saga, Step, StepContext, registry
from .errors import (
    IdempotencyConflict,
    InvalidSagaInput,
    InvalidTransition,
    PermanentError,
    StepTimeout,
)
from .models import (
    ACTIVE_SAGA_STATUSES,
    EventKind,
    SagaEvent,
    SagaInstance,
    SagaStatus,
    StepRecord,
    StepStatus,
)

logger = logging.getLogger(__name__)

# --- the state machine ------------------------------------------------------------

SAGA_MOVES: dict[str, set[str]] = {
    SagaStatus.PENDING: {SagaStatus.RUNNING, SagaStatus.COMPENSATING},
    SagaStatus.RUNNING: {SagaStatus.SUCCEEDED, SagaStatus.COMPENSATING},
    SagaStatus.COMPENSATING: {SagaStatus.COMPENSATED, SagaStatus.FAILED},
    SagaStatus.FAILED: {SagaStatus.COMPENSATING},
    SagaStatus.SUCCEEDED: set(),
    SagaStatus.COMPENSATED: set(),
}

STEP_MOVES: dict[str, set[str]] = {
    StepStatus.PENDING: {StepStatus.RUNNING, StepStatus.SKIPPED},
    # running -> running: a new attempt after a failed or lost one.
    StepStatus.RUNNING: {StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.FAILED},
    StepStatus.SUCCEEDED: {StepStatus.COMPENSATING},
    StepStatus.COMPENSATING: {StepStatus.COMPENSATING, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED},
    StepStatus.COMPENSATION_FAILED: {StepStatus.COMPENSATING},
    StepStatus.FAILED: set(),
    StepStatus.COMPENSATED: set(),
    StepStatus.SKIPPED: set(),
}


def can_move_saga(current: str, target: str) -> bool:
    return target in SAGA_MOVES.get(current, set())


def can_move_step(current: str, target: str) -> bool:
    return target in STEP_MOVES.get(current, set())


def _event(saga: SagaInstance, kind: str, step: StepRecord | None = None, *, touch: bool = True,
           **detail: Any) -> SagaEvent:
    # Every event also bumps the saga's updated_at (unless the caller just
    # saved the saga): the sweeper reads it as "last sign of life".
    if touch:
        SagaInstance.objects.filter(pk=saga.pk).update(updated_at=timezone.now())
    return SagaEvent.objects.create(saga=saga, step=step, kind=kind, detail=detail)


def _move_saga(saga: SagaInstance, target: str, kind: str, **detail: Any) -> None:
    if not can_move_saga(saga.status, target):
        raise InvalidTransition(f"saga {saga.id} cannot move from {saga.status} to {target}")
    previous = saga.status
    saga.status = target
    now = timezone.now()
    if target == SagaStatus.RUNNING and saga.started_at is None:
        saga.started_at = now
    if target in (SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED):
        saga.finished_at = now
    elif target == SagaStatus.COMPENSATING:
        saga.finished_at = None
    saga.save(update_fields=["status", "started_at", "finished_at", "updated_at"])
    _event(saga, kind, touch=False, **{"from": previous, "to": target, **detail})


def _move_step(saga: SagaInstance, step: StepRecord, target: str, kind: str, **detail: Any) -> None:
    if not can_move_step(step.status, target):
        raise InvalidTransition(f"step {step.name} of saga {saga.id} cannot move from {step.status} to {target}")
    previous = step.status
    step.status = target
    step.save()
    _event(saga, kind, step=step, **{"from": previous, "to": target, **detail})


def _lock_saga(saga_id) -> SagaInstance | None:
    return SagaInstance.objects.select_for_update().filter(pk=saga_id).first()


def _lock_step(saga: SagaInstance, index: int) -> StepRecord:
    return StepRecord.objects.select_for_update().get(saga=saga, index=index)


def _describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- definitions and timing -------------------------------------------------------


def definition_of(saga: SagaInstance) -> Saga:
    return registry.get(saga.saga_type, saga.version)


def _lease_until(step: Step, *, compensation: bool = False) -> datetime:
    # Past the hard limit the pool has killed the attempt; one more grace for
    # the worker to report it.
    seconds = hard_time_limit(step, compensation=compensation) + settings.SAGAS_HARD_TIMEOUT_GRACE
    return timezone.now() + timedelta(seconds=seconds)


# --- starting -----------------------------------------------------------------------


def validate_input(definition: Saga, data: Any) -> dict:
    """Check ``data`` against the saga's schema; raise ``InvalidSagaInput`` naming the fields."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidSagaInput({"input": ["must be a JSON object"]})
    try:
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise InvalidSagaInput({"input": [f"must be JSON-serialisable: {exc}"]}) from None
    schema = definition.input_schema
    if schema is None:
        return data
    if isinstance(schema, type) and hasattr(schema, "is_valid"):
        serializer = schema(data=data)
        if not serializer.is_valid():
            raise InvalidSagaInput(_plain_errors(serializer.errors))
        return data
    schema(data)  # a callable validator raises InvalidSagaInput itself
    return data


def _plain_errors(errors: Any) -> Any:
    if isinstance(errors, dict):
        return {k: _plain_errors(v) for k, v in errors.items()}
    if isinstance(errors, list):
        return [_plain_errors(v) for v in errors]
    return str(errors)


def start_saga(
    saga_type: str,
    input: dict | None = None,
    idempotency_key: str | None = None,
    *,
    version: int | None = None,
    resubmitted_from: SagaInstance | None = None,
) -> SagaInstance:
    """Create a saga instance and its step records; enqueue it once the transaction commits.

    With an ``idempotency_key`` already used for this saga type, return that
    instance and start nothing (``IdempotencyConflict`` if the input differs).
    """
    definition = registry.get(saga_type, version)
    data = validate_input(definition, input)
    if idempotency_key is not None:
        idempotency_key = str(idempotency_key).strip()
        if not idempotency_key or len(idempotency_key) > 255:
            raise InvalidSagaInput({"idempotency_key": ["must be 1 to 255 characters"]})
        existing = _existing_for_key(saga_type, idempotency_key, data)
        if existing is not None:
            return existing
    try:
        with transaction.atomic():
            saga = SagaInstance.objects.create(
                saga_type=definition.name,
                version=definition.version,
                input=data,
                idempotency_key=idempotency_key,
                resubmitted_from=resubmitted_from,
            )
            StepRecord.objects.bulk_create(
                StepRecord(saga=saga, index=i, name=s.name, has_compensation=s.has_compensation,
                           stage=definition.stage_of(i), parallel_group=definition.group_of(i))
                for i, s in enumerate(definition.steps)
            )
            _event(saga, EventKind.SAGA_CREATED, version=definition.version,
                   idempotency_key=idempotency_key,
                   resubmitted_from=str(resubmitted_from.pk) if resubmitted_from else None)
            saga_id = saga.id
            transaction.on_commit(lambda: canvas.dispatch_forward(saga_id, 0))
    except IntegrityError:
        # Another process inserted the same key between our look-up and insert.
        existing = _existing_for_key(saga_type, idempotency_key, data) if idempotency_key else None
        if existing is None:
            raise
        return existing
    saga.created_now = True
    return saga


def _existing_for_key(saga_type: str, key: str, data: dict) -> SagaInstance | None:
    existing = SagaInstance.objects.filter(saga_type=saga_type, idempotency_key=key).first()
    if existing is not None and existing.input != data:
        raise IdempotencyConflict(
            f"idempotency key {key!r} was already used for saga {existing.id} with another input"
        )
    if existing is not None:
        existing.created_now = False
    return existing


# --- running one step ----------------------------------------------------------------


class Decision(enum.Enum):
    CONTINUE = "continue"  # the step is done: let the chain go on
    RETRY = "retry"  # run again after ``countdown`` seconds
    FAILED = "failed"  # failed for good: the error callback must run
    STOP = "stop"  # nothing to do any more (saga gone, finished or compensating)


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    countdown: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class _Claim:
    saga_id: uuid.UUID
    index: int
    attempt: int
    step: Step
    context: StepContext


def _poll_delay(until: datetime | None) -> float:
    if until is None:
        return 1.0
    remaining = (until - timezone.now()).total_seconds()
    return max(0.2, min(remaining, 5.0))


def _previous_steps_done(saga: SagaInstance, definition: Saga, index: int) -> bool:
    """Every step of the earlier stages succeeded (members of one Parallel do not wait for each other)."""
    first_of_stage = definition.stage_indices(index)[0]
    return not saga.steps.filter(index__lt=first_of_stage).exclude(status=StepStatus.SUCCEEDED).exists()


def _fail_step(saga: SagaInstance, record: StepRecord, error: str, *, blame: bool = True, **detail: Any) -> None:
    """Mark the step failed; with ``blame`` its error also becomes the saga's (not for a sibling stopped later)."""
    record.error = error
    record.finished_at = timezone.now()
    record.lease_expires_at = None
    record.next_attempt_at = None
    _move_step(saga, record, StepStatus.FAILED, EventKind.STEP_FAILED, error=error, attempts=record.attempts, **detail)
    if blame:
        saga.error = f"step {record.name} failed: {error}"
        saga.save(update_fields=["error", "updated_at"])


def _claim_forward(saga_id, index: int, policy: Retry | None) -> _Claim | Outcome:
    now = timezone.now()
    with transaction.atomic():
        saga = _lock_saga(saga_id)
        if saga is None:
            return Outcome(Decision.STOP, reason="saga does not exist")
        if saga.status not in (SagaStatus.PENDING, SagaStatus.RUNNING):
            return Outcome(Decision.STOP, reason=f"saga is {saga.status}")
        record = _lock_step(saga, index)
        if record.status == StepStatus.SUCCEEDED:
            return Outcome(Decision.CONTINUE, reason="step already succeeded")
        if record.status in (StepStatus.FAILED, StepStatus.SKIPPED):
            return Outcome(Decision.FAILED, reason=f"step already {record.status}")
        definition = definition_of(saga)
        if not _previous_steps_done(saga, definition, index):
            return Outcome(Decision.STOP, reason="an earlier step has not succeeded")
        step = definition.step_at(index)
        policy = policy or step.retry
        if record.status == StepStatus.RUNNING and record.lease_expires_at and record.lease_expires_at > now:
            return Outcome(Decision.RETRY, _poll_delay(record.lease_expires_at), "another attempt holds the step")
        if saga.cancel_requested_at is not None:
            return _refuse_for_cancel(saga, record)
        if record.status == StepStatus.RUNNING:
            if record.next_attempt_at and record.next_attempt_at > now:
                return Outcome(Decision.RETRY, _poll_delay(record.next_attempt_at), "retry not due yet")
            if record.lease_expires_at is not None:
                # The attempt that held the lease never reported: its worker died.
                _event(saga, EventKind.STEP_ATTEMPT_LOST, step=record, attempt=record.attempts)
                if not policy.allows_another(record.attempts):
                    _fail_step(saga, record, f"attempt {record.attempts} was lost (worker died or was killed)")
                    return Outcome(Decision.FAILED, reason="attempts exhausted")
        if saga.status == SagaStatus.PENDING:
            _move_saga(saga, SagaStatus.RUNNING, EventKind.SAGA_STARTED)
        record.attempts += 1
        record.started_at = record.started_at or now
        record.lease_expires_at = _lease_until(step)
        record.next_attempt_at = None
        _move_step(saga, record, StepStatus.RUNNING, EventKind.STEP_STARTED, attempt=record.attempts)
        return _claim(saga, definition, index, record.attempts)


def _claim(saga: SagaInstance, definition: Saga, index: int, attempt: int, *,
           compensated: StepRecord | None = None) -> _Claim:
    """What the claimed attempt runs with: for a compensation, ``compensated`` is the step's record."""
    step = definition.step_at(index)
    key = f"{saga.id}:{step.name}" + (":compensation" if compensated is not None else "")
    context = StepContext(
        saga_id=saga.id,
        saga_type=saga.saga_type,
        input=saga.input,
        results={k: v for k, v in saga.results.items() if k in _names_before(definition, index)},
        step=step.name,
        attempt=attempt,
        idempotency_key=key,
        result=compensated.result if compensated is not None else None,
        is_compensation=compensated is not None,
    )
    return _Claim(saga.id, index, attempt, step, context)


def _names_before(definition: Saga, index: int) -> set[str]:
    """Steps of the earlier stages: their results are what a step sees (never a sibling's)."""
    return {s.name for s in definition.steps[:definition.stage_indices(index)[0]]}


def _refuse_for_cancel(saga: SagaInstance, record: StepRecord) -> Outcome:
    if record.status == StepStatus.PENDING:
        _move_step(saga, record, StepStatus.SKIPPED, EventKind.STEP_SKIPPED, reason="saga cancelled")
    else:
        _fail_step(saga, record, "cancelled before the next attempt")
    saga.error = "cancelled"
    saga.save(update_fields=["error", "updated_at"])
    return Outcome(Decision.FAILED, reason="saga cancelled")


def _invoke(fn: Callable, claim: _Claim, *, phase: str) -> Any:
    failure_injection.maybe_fail(claim.context.saga_type, claim.step.name, phase, context=claim.context)
    result = fn(claim.context)
    try:
        json.dumps(result)
    except (TypeError, ValueError):
        raise PermanentError(f"{phase} returned a value that is not JSON-serialisable: {result!r}") from None
    return result


def _attempt_error(claim: _Claim, exc: Exception) -> tuple[str, bool]:
    """The error an attempt is recorded with, and whether it was a timeout."""
    if _is_timeout(exc):
        limit = effective_timeout(claim.step, compensation=claim.context.is_compensation)
        return f"StepTimeout: attempt {claim.attempt} exceeded {limit:g}s", True
    return _describe_error(exc), False


def _is_timeout(exc: BaseException) -> bool:
    from celery.exceptions import SoftTimeLimitExceeded

    return isinstance(exc, (SoftTimeLimitExceeded, StepTimeout))


def execute_step(saga_id, index: int, policy: Retry | None = None) -> Outcome:
    """Run one attempt of forward step ``index`` and record what happened."""
    claim = _claim_forward(saga_id, index, policy)
    if isinstance(claim, Outcome):
        return claim
    policy = policy or claim.step.retry
    try:
        if claim.step.transactional:
            # The action's writes and the step's success commit together or not
            # at all, with the step row locked throughout: two deliveries can
            # never both apply them.
            with transaction.atomic():
                if not _still_owns(claim):
                    return Outcome(Decision.STOP, reason="another attempt owns the step")
                result = _invoke(claim.step.action, claim, phase="action")
                return _record_success(claim, result)
        result = _invoke(claim.step.action, claim, phase="action")
    except Exception as exc:  # the action's failure is data: record it and decide
        logger.info("saga %s step %s attempt %s failed: %s", saga_id, claim.step.name, claim.attempt, exc)
        return _record_failure(claim, exc, policy)
    return _record_success(claim, result)


def _still_owns(claim: _Claim) -> bool:
    saga = _lock_saga(claim.saga_id)
    if saga is None:
        return False
    record = _lock_step(saga, claim.index)
    if record.status != StepStatus.RUNNING or record.attempts != claim.attempt:
        return False
    if saga.status != SagaStatus.RUNNING:
        # A Parallel sibling failed between the claim and now: this attempt
        # never starts, and compensation need not wait for its lease.
        _fail_step(saga, record, "stopped: the saga is compensating", blame=False)
        _finish_if_compensated(saga)
        return False
    return True


def _record_success(claim: _Claim, result: Any) -> Outcome:
    with transaction.atomic():
        saga = _lock_saga(claim.saga_id)
        if saga is None:
            return Outcome(Decision.STOP, reason="saga does not exist")
        record = _lock_step(saga, claim.index)
        if record.status != StepStatus.RUNNING or record.attempts != claim.attempt:
            _event(saga, EventKind.STEP_ATTEMPT_LOST, step=record, attempt=claim.attempt,
                   note=f"finished after the step had moved on to {record.status}; its result was not recorded")
            return Outcome(Decision.CONTINUE if record.status == StepStatus.SUCCEEDED else Decision.STOP)
        record.result = result
        record.error = ""
        record.finished_at = timezone.now()
        record.lease_expires_at = None
        _move_step(saga, record, StepStatus.SUCCEEDED, EventKind.STEP_SUCCEEDED, attempt=claim.attempt)
        saga.results = {**saga.results, record.name: result}
        saga.save(update_fields=["results", "updated_at"])
        if saga.status != SagaStatus.RUNNING:
            # A Parallel member that finished after a sibling failed: its effects
            # are recorded here and undone by the compensation under way.
            if not record.has_compensation:
                _event(saga, EventKind.NOTHING_TO_COMPENSATE, step=record, note="no compensation defined; left as is")
            _finish_if_compensated(saga)
            return Outcome(Decision.CONTINUE, reason=f"succeeded while the saga is {saga.status}")
        if not saga.steps.exclude(status=StepStatus.SUCCEEDED).exists():
            _move_saga(saga, SagaStatus.SUCCEEDED, EventKind.SAGA_SUCCEEDED)
        else:
            _dispatch_next_stage_if_joined(saga, claim.index)
    return Outcome(Decision.CONTINUE)


def _dispatch_next_stage_if_joined(saga: SagaInstance, index: int) -> None:
    """The join of a Parallel: the member whose success completes the stage sends the next one.

    Called under the saga's row lock, so of members finishing together exactly
    one sees them all succeeded. A plain step sends nothing: its chain goes on.
    """
    definition = definition_of(saga)
    if not definition.is_parallel(index):
        return
    members = definition.stage_indices(index)
    if saga.steps.filter(index__in=members).exclude(status=StepStatus.SUCCEEDED).exists():
        return
    following = definition.next_stage_start(index)
    if following is None:
        return
    saga_id = saga.id
    transaction.on_commit(lambda: canvas.dispatch_forward(saga_id, following))


def _record_failure(claim: _Claim, exc: Exception, policy: Retry) -> Outcome:
    error, timed_out = _attempt_error(claim, exc)
    permanent = isinstance(exc, PermanentError)
    with transaction.atomic():
        saga = _lock_saga(claim.saga_id)
        if saga is None:
            return Outcome(Decision.STOP, reason="saga does not exist")
        record = _lock_step(saga, claim.index)
        if record.status != StepStatus.RUNNING or record.attempts != claim.attempt:
            return Outcome(Decision.STOP, reason="a later attempt owns the step")
        if saga.status not in (SagaStatus.PENDING, SagaStatus.RUNNING):
            # A Parallel member that failed after a sibling did: no retry, the saga is being undone.
            _fail_step(saga, record, error, blame=False, permanent=permanent, timeout=timed_out,
                       note=f"not retried: the saga is {saga.status}")
            _finish_if_compensated(saga)
            return Outcome(Decision.STOP, reason=f"saga is {saga.status}")
        if permanent or not policy.allows_another(claim.attempt):
            _fail_step(saga, record, error, permanent=permanent, timeout=timed_out)
            return Outcome(Decision.FAILED, reason=error)
        delay = policy.delay_after(claim.attempt)
        record.error = error
        record.lease_expires_at = None
        record.next_attempt_at = timezone.now() + timedelta(seconds=delay)
        record.save()
        _event(saga, EventKind.STEP_ATTEMPT_FAILED, step=record, attempt=claim.attempt, error=error,
               timeout=timed_out, retry_in=delay)
    return Outcome(Decision.RETRY, countdown=delay, reason=error)


# --- compensating ------------------------------------------------------------------


UNDO_PENDING = (StepStatus.SUCCEEDED, StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED)


def _compensable(saga: SagaInstance) -> list[StepRecord]:
    """Steps still to undo, latest first."""
    return list(saga.steps.filter(has_compensation=True, status__in=UNDO_PENDING).order_by("-index"))


def _compensation_order(saga: SagaInstance) -> list[int]:
    """Indices the compensation chain visits, latest first.

    Besides the steps to undo, a Parallel member still running: its chain task
    waits for it to finish, then undoes it if it succeeded, so nothing earlier
    is compensated before it.
    """
    undo = Q(has_compensation=True, status__in=UNDO_PENDING) | Q(status=StepStatus.RUNNING)
    return list(saga.steps.filter(undo).order_by("-index").values_list("index", flat=True))


def _finish_if_compensated(saga: SagaInstance) -> None:
    """A compensating saga with nothing left to undo and nothing still running is compensated."""
    if saga.status != SagaStatus.COMPENSATING:
        return
    if saga.steps.filter(status=StepStatus.RUNNING).exists() or _compensable(saga):
        return
    _move_saga(saga, SagaStatus.COMPENSATED, EventKind.SAGA_COMPENSATED)


def begin_compensation(saga_id, reason: str = "") -> list[int] | None:
    """Move a saga whose forward run ended in failure to ``compensating``.

    Returns the indices to compensate (latest first; the compensation chain is
    sent after commit), or ``None`` when the saga was not running: a second
    delivery of the error callback does nothing.
    """
    with transaction.atomic():
        saga = _lock_saga(saga_id)
        if saga is None or saga.status not in (SagaStatus.PENDING, SagaStatus.RUNNING):
            return None
        return _start_compensating(saga, reason)


def _start_compensating(saga: SagaInstance, reason: str) -> list[int]:
    definition = definition_of(saga)
    now = timezone.now()
    for record in saga.steps.select_for_update().order_by("index"):
        if record.status == StepStatus.RUNNING and definition.is_parallel(record.index):
            if record.lease_expires_at and record.lease_expires_at > now:
                # A sibling of the member that failed, still at work: it finishes
                # and records its outcome; the compensation chain waits for it.
                continue
            # Waiting for a retry (or its attempt was lost): no attempt is made any more.
            _fail_step(saga, record, "stopped: the saga is compensating", blame=False)
        elif record.status == StepStatus.RUNNING:
            # The attempt never reported (hard time limit, or the task crashed).
            _fail_step(saga, record, reason or "attempt did not finish (hard time limit or crashed task)")
        elif record.status == StepStatus.PENDING:
            _move_step(saga, record, StepStatus.SKIPPED, EventKind.STEP_SKIPPED)
        elif record.status == StepStatus.SUCCEEDED and not record.has_compensation:
            _event(saga, EventKind.NOTHING_TO_COMPENSATE, step=record, note="no compensation defined; left as is")
    if not saga.error:
        saga.error = reason or "failed"
        saga.save(update_fields=["error", "updated_at"])
    _move_saga(saga, SagaStatus.COMPENSATING, EventKind.SAGA_COMPENSATING, reason=saga.error)
    indices = _compensation_order(saga)
    if not indices and not saga.steps.filter(status=StepStatus.RUNNING).exists():
        _move_saga(saga, SagaStatus.COMPENSATED, EventKind.SAGA_COMPENSATED, note="nothing to undo")
        return []
    saga_id = saga.id
    transaction.on_commit(lambda: canvas.dispatch_compensation(saga_id, indices))
    return indices


def _claim_compensation(saga_id, index: int, policy: Retry | None) -> _Claim | Outcome:
    now = timezone.now()
    with transaction.atomic():
        saga = _lock_saga(saga_id)
        if saga is None:
            return Outcome(Decision.STOP, reason="saga does not exist")
        if saga.status != SagaStatus.COMPENSATING:
            return Outcome(Decision.STOP, reason=f"saga is {saga.status}")
        record = _lock_step(saga, index)
        definition = definition_of(saga)
        step = definition.step_at(index)
        if record.status == StepStatus.RUNNING:
            waiting = _wait_for_running_member(saga, record, now)
            if waiting is not None:
                return waiting
        if not record.has_compensation or record.status not in UNDO_PENDING:
            _finish_if_compensated(saga)
            return Outcome(Decision.CONTINUE, reason=f"nothing to compensate (step {record.status})")
        # Everything in later stages is undone first; members of one Parallel
        # are independent of each other.
        last_of_stage = definition.stage_indices(index)[-1]
        later = saga.steps.filter(Q(has_compensation=True, status__in=UNDO_PENDING) | Q(status=StepStatus.RUNNING),
                                  index__gt=last_of_stage)
        if later.exists():
            return Outcome(Decision.STOP, reason="a later step is not compensated yet")
        policy = policy or step.compensation_retry
        if record.status == StepStatus.COMPENSATING:
            if record.lease_expires_at and record.lease_expires_at > now:
                return Outcome(Decision.RETRY, _poll_delay(record.lease_expires_at), "another attempt holds the step")
            if record.next_attempt_at and record.next_attempt_at > now:
                return Outcome(Decision.RETRY, _poll_delay(record.next_attempt_at), "retry not due yet")
            if record.lease_expires_at is not None:
                _event(saga, EventKind.STEP_ATTEMPT_LOST, step=record, attempt=record.compensation_attempts,
                       compensation=True)
                if not policy.allows_another(record.compensation_attempts):
                    _fail_compensation(saga, record, "compensation attempt was lost (worker died or was killed)")
                    return Outcome(Decision.FAILED, reason="compensation attempts exhausted")
        if record.status == StepStatus.COMPENSATION_FAILED:
            return Outcome(Decision.FAILED, reason="compensation already failed")
        record.compensation_attempts += 1
        record.lease_expires_at = _lease_until(step, compensation=True)
        record.next_attempt_at = None
        _move_step(saga, record, StepStatus.COMPENSATING, EventKind.COMPENSATION_STARTED,
                   attempt=record.compensation_attempts)
        return _claim(saga, definition, index, record.compensation_attempts, compensated=record)


def _wait_for_running_member(saga: SagaInstance, record: StepRecord, now: datetime) -> Outcome | None:
    """A Parallel member still running when compensation reaches it.

    While its attempt holds a live lease the chain waits (it may yet succeed
    and need undoing); once the lease has expired the attempt is taken as
    lost, the member failed, and the chain goes on.
    """
    if record.lease_expires_at and record.lease_expires_at > now:
        return Outcome(Decision.RETRY, _poll_delay(record.lease_expires_at), "a parallel step is still running")
    if record.lease_expires_at is not None:
        _event(saga, EventKind.STEP_ATTEMPT_LOST, step=record, attempt=record.attempts)
        error = "attempt did not finish (hard time limit or crashed task)"
    else:
        error = "stopped: the saga is compensating"
    _fail_step(saga, record, error, blame=False)
    return None


def _fail_compensation(saga: SagaInstance, record: StepRecord, error: str) -> None:
    record.compensation_error = error
    record.lease_expires_at = None
    record.next_attempt_at = None
    _move_step(saga, record, StepStatus.COMPENSATION_FAILED, EventKind.COMPENSATION_FAILED,
               error=error, attempts=record.compensation_attempts)
    saga.error = f"compensation of step {record.name} failed: {error}"
    saga.save(update_fields=["error", "updated_at"])
    _move_saga(saga, SagaStatus.FAILED, EventKind.SAGA_FAILED, reason=saga.error)


def execute_compensation(saga_id, index: int, policy: Retry | None = None) -> Outcome:
    """Run one attempt of the compensation of step ``index`` and record what happened."""
    claim = _claim_compensation(saga_id, index, policy)
    if isinstance(claim, Outcome):
        return claim
    policy = policy or claim.step.compensation_retry
    try:
        _invoke(claim.step.compensation, claim, phase="compensation")
    except Exception as exc:  # recorded and retried, or the saga is left to a person
        logger.warning("saga %s compensation of %s attempt %s failed: %s",
                       saga_id, claim.step.name, claim.attempt, exc)
        return _record_compensation_failure(claim, exc, policy)
    return _record_compensated(claim)


def _record_compensated(claim: _Claim) -> Outcome:
    with transaction.atomic():
        saga = _lock_saga(claim.saga_id)
        if saga is None:
            return Outcome(Decision.STOP, reason="saga does not exist")
        record = _lock_step(saga, claim.index)
        if record.status != StepStatus.COMPENSATING or record.compensation_attempts != claim.attempt:
            return Outcome(Decision.STOP, reason="a later attempt owns the compensation")
        record.compensated_at = timezone.now()
        record.compensation_error = ""
        record.lease_expires_at = None
        _move_step(saga, record, StepStatus.COMPENSATED, EventKind.STEP_COMPENSATED, attempt=claim.attempt)
        _finish_if_compensated(saga)
    return Outcome(Decision.CONTINUE)


def _record_compensation_failure(claim: _Claim, exc: Exception, policy: Retry) -> Outcome:
    error, timed_out = _attempt_error(claim, exc)
    with transaction.atomic():
        saga = _lock_saga(claim.saga_id)
        if saga is None:
            return Outcome(Decision.STOP, reason="saga does not exist")
        record = _lock_step(saga, claim.index)
        if record.status != StepStatus.COMPENSATING or record.compensation_attempts != claim.attempt:
            return Outcome(Decision.STOP, reason="a later attempt owns the compensation")
        if not policy.allows_another(claim.attempt):
            _fail_compensation(saga, record, error)
            return Outcome(Decision.FAILED, reason=error)
        delay = policy.delay_after(claim.attempt)
        record.compensation_error = error
        record.lease_expires_at = None
        record.next_attempt_at = timezone.now() + timedelta(seconds=delay)
        record.save()
        _event(saga, EventKind.COMPENSATION_ATTEMPT_FAILED, step=record, attempt=claim.attempt, error=error,
               timeout=timed_out, retry_in=delay)
    return Outcome(Decision.RETRY, countdown=delay, reason=error)


# --- people intervening -----------------------------------------------------------------


def _as_id(saga: SagaInstance | uuid.UUID | str):
    return saga.pk if isinstance(saga, SagaInstance) else saga


def _lock_existing(saga: SagaInstance | uuid.UUID | str) -> SagaInstance:
    """The saga's row, locked; ``SagaInstance.DoesNotExist`` (a 404 in the API) when there is none."""
    instance = _lock_saga(_as_id(saga))
    if instance is None:
        raise SagaInstance.DoesNotExist(f"no saga {saga}")
    return instance


def cancel(saga: SagaInstance | uuid.UUID | str, *, reason: str = "cancelled") -> SagaInstance:
    """Stop a pending or running saga and compensate what it did.

    A step attempt in progress is allowed to finish (its effects are then
    compensated too); if none is in progress, compensation starts at once.
    """
    with transaction.atomic():
        instance = _lock_existing(saga)
        if instance.status not in (SagaStatus.PENDING, SagaStatus.RUNNING):
            raise InvalidTransition(f"saga {instance.id} is {instance.status}; only a pending or running saga can be cancelled")
        if instance.cancel_requested_at is None:
            instance.cancel_requested_at = timezone.now()
            instance.save(update_fields=["cancel_requested_at", "updated_at"])
            _event(instance, EventKind.CANCEL_REQUESTED, reason=reason)
        in_flight = instance.steps.filter(lease_expires_at__gt=timezone.now()).exists()
        if not in_flight:
            instance.error = reason
            instance.save(update_fields=["error", "updated_at"])
            _start_compensating(instance, reason)
    instance.refresh_from_db()
    return instance


def retry_compensation(saga: SagaInstance | uuid.UUID | str) -> SagaInstance:
    """Re-run the compensations that failed, with a fresh retry budget."""
    with transaction.atomic():
        instance = _lock_existing(saga)
        if instance.status != SagaStatus.FAILED:
            raise InvalidTransition(f"saga {instance.id} is {instance.status}; only a failed saga can retry compensation")
        _event(instance, EventKind.COMPENSATION_RETRY_REQUESTED)
        for record in instance.steps.select_for_update().filter(status=StepStatus.COMPENSATION_FAILED):
            record.compensation_attempts = 0
            record.lease_expires_at = None
            record.next_attempt_at = None
            _move_step(instance, record, StepStatus.COMPENSATING, EventKind.COMPENSATION_RETRY_REQUESTED)
        _move_saga(instance, SagaStatus.COMPENSATING, EventKind.SAGA_COMPENSATING, reason="compensation retried")
        indices = _compensation_order(instance)
        saga_id = instance.id
        transaction.on_commit(lambda: canvas.dispatch_compensation(saga_id, indices))
    instance.refresh_from_db()
    return instance


def resubmit(saga: SagaInstance | uuid.UUID | str) -> SagaInstance:
    """Start a new instance of the latest version with the same input, linked to this one."""
    with transaction.atomic():
        original = _lock_existing(saga)
        if original.status in ACTIVE_SAGA_STATUSES:
            raise InvalidTransition(f"saga {original.id} is still {original.status}; resubmit it once it has finished")
        new = start_saga(original.saga_type, input=original.input, resubmitted_from=original)
        _event(original, EventKind.RESUBMITTED, new_saga=str(new.id))
    return new


# --- recovery --------------------------------------------------------------------------


@dataclass
class SweepReport:
    examined: int = 0
    resumed_forward: int = 0
    resumed_compensation: int = 0
    compensation_started: int = 0

    @property
    def total(self) -> int:
        return self.resumed_forward + self.resumed_compensation + self.compensation_started


def sweep(*, stall_after: float | None = None, limit: int = 500) -> SweepReport:
    """Move on sagas with no sign of life: lost messages, dead workers, lost error callbacks."""
    stall_after = settings.SAGAS_STALL_AFTER if stall_after is None else stall_after
    cutoff = timezone.now() - timedelta(seconds=stall_after)
    report = SweepReport()
    stalled = SagaInstance.objects.filter(status__in=ACTIVE_SAGA_STATUSES, updated_at__lt=cutoff)
    for saga_id in stalled.order_by("updated_at").values_list("id", flat=True)[:limit]:
        report.examined += 1
        action = resume(saga_id, stall_after=stall_after)
        if action == "forward":
            report.resumed_forward += 1
        elif action == "compensation":
            report.resumed_compensation += 1
        elif action == "compensation_started":
            report.compensation_started += 1
    return report


def resume(saga_id, *, stall_after: float = 0.0) -> str | None:
    """Send again whatever a stalled saga waits for, judged from its stored state."""
    now = timezone.now()
    with transaction.atomic():
        saga = _lock_saga(saga_id)
        if saga is None or saga.status not in ACTIVE_SAGA_STATUSES:
            return None
        if saga.updated_at > now - timedelta(seconds=stall_after):
            return None
        records = list(saga.steps.all())
        if any(r.lease_expires_at and r.lease_expires_at > now for r in records):
            return None
        if any(r.next_attempt_at and r.next_attempt_at > now for r in records):
            return None
        if saga.status == SagaStatus.COMPENSATING:
            indices = _compensation_order(saga)
            if not indices:
                _finish_if_compensated(saga)
                return "finished"
            _event(saga, EventKind.SAGA_RESUMED, phase="compensation", steps=indices)
            transaction.on_commit(lambda: canvas.dispatch_compensation(saga.id, indices))
            return "compensation"
        failed = [r for r in records if r.status in (StepStatus.FAILED, StepStatus.SKIPPED)]
        if failed or saga.cancel_requested_at is not None:
            _start_compensating(saga, saga.error or "error callback lost")
            return "compensation_started"
        first_open = next((r.index for r in records if r.status != StepStatus.SUCCEEDED), None)
        if first_open is None:
            _move_saga(saga, SagaStatus.SUCCEEDED, EventKind.SAGA_SUCCEEDED)
            return "finished"
        definition = definition_of(saga)
        stage = definition.stage_indices(first_open)
        status = {r.index: r.status for r in records}
        open_members = [i for i in stage if status[i] != StepStatus.SUCCEEDED]
        if definition.is_parallel(first_open) and len(open_members) < len(stage):
            # Part of a Parallel succeeded: send the rest on their own; the
            # last of them to succeed sends the next stage.
            _event(saga, EventKind.SAGA_RESUMED, phase="forward", from_step=first_open, steps=open_members)
            transaction.on_commit(lambda: canvas.dispatch_steps(saga.id, open_members))
            return "forward"
        _event(saga, EventKind.SAGA_RESUMED, phase="forward", from_step=first_open)
        transaction.on_commit(lambda: canvas.dispatch_forward(saga.id, first_open))
        return "forward"
