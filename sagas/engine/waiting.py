"""Waiting steps: a step whose action succeeded waits for a person or another system to signal it.

Nothing is held while a step waits: its action's success records ``waiting``
(with ``waiting_since`` and ``signal_deadline`` from the database's clock),
frees the step's lease and stops the chain. A signal (``complete_step`` or
``fail_step``, from a user or through the wait's token) is a transition under
the saga's lock, so of two signals at once exactly one wins and the other gets
``InvalidTransition``; a completed step sends what follows after commit, a
failed one starts the compensation in the same transaction. The sweeper times
out waits past their deadline (``expire_waits``), found through a partial
index that holds only waiting steps.
"""
from __future__ import annotations

import hmac
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.db.models.functions import Now

from ..definitions import Saga
from ..errors import InvalidSignal, InvalidTransition, SignalNotAllowed, UnknownSignalToken, UnknownStep
from ..models import EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus
from . import children, forward
from .compensation import continue_compensation, forward_failed
from .core import (
    Decision,
    actor,
    is_user,
    Outcome,
    definition_of,
    dispatch_forward,
    end_wait,
    event,
    fail_record,
    goes_forward,
    is_paused,
    json_problem,
    keep_due,
    locked_saga,
    move_step,
    no_such_saga,
    release,
    save_step,
    saga_id_of,
    stall_deadline,
    steps_of,
    token_hash,
)

# A wait without a deadline: the sweeper looks at its saga once a day (it has nothing to re-send).
WAIT_HORIZON = timedelta(days=1)
ERROR_MAX_LENGTH = 2000
TOKEN_MAX_LENGTH = 200
BY_TOKEN = "token"


# --- the action succeeded: wait ------------------------------------------------------------


def begin_wait(saga: SagaInstance, record: StepRecord, definition: Saga, result: Any) -> Outcome:
    """Record the action's output and make the step wait; the chain stops here (the signal goes on).

    A token callback that came while the action ran (``early_signal``) is
    applied now instead, as if it had come the moment the step began to wait.
    """
    step = definition.step_at(record.index)
    early = record.early_signal
    record.result = result
    record.error = ""
    record.may_have_effects = False
    release(record)
    if early:
        return _apply_early(saga, record, definition, early)
    record.waiting_since = saga.db_now
    record.signal_deadline = (saga.db_now + timedelta(seconds=step.signal_timeout)) if step.signal_timeout else None
    move_step(saga, record, StepStatus.WAITING, EventKind.STEP_WAITING, attempt=record.attempts,
              deadline=record.signal_deadline.isoformat() if record.signal_deadline else None,
              permission=step.signal_permission)
    if definition.is_parallel(record.index):
        keep_due(saga)  # siblings may still be at work; the sweeper settles it when it looks
    else:
        saga.due_at = record.signal_deadline or saga.db_now + WAIT_HORIZON
    return Outcome(Decision.STOP, reason=f"step {record.name} waits for a signal")


def _apply_early(saga: SagaInstance, record: StepRecord, definition: Saga, early: dict) -> Outcome:
    _take_signal(saga, record, definition, result=early.get("result"), error=early.get("error"))
    done = "completed" if early["signal"] == "complete" else "failed"
    return Outcome(Decision.STOP, reason=f"step {record.name} {done} by a signal that came early")


def wait_due(saga: SagaInstance, waiting: list[StepRecord]) -> None:
    """When the sweeper should look at a saga whose open steps all wait: the first deadline, or the horizon."""
    deadlines = [r.signal_deadline for r in waiting if r.signal_deadline]
    saga.due_at = min(deadlines) if deadlines else saga.db_now + WAIT_HORIZON


# --- signals ------------------------------------------------------------------------------------


def signaller(by: Any) -> dict:
    """Who sent a signal, as its event records it: ``actor``, and ``system`` for code that names no one."""
    return actor(by) or {"by": "system"}


def may_signal(user: Any, permission: str | None) -> bool:
    """Whether ``user`` may signal a step that asks for ``permission`` (none: any authenticated user)."""
    if not getattr(user, "is_authenticated", False):
        return False
    return permission is None or user.has_perm(permission)


def _merged(output: Any, result: Any) -> Any:
    """The step's result: the signal's ``result`` over the action's output."""
    if result is None:
        return output
    if isinstance(output, dict) and isinstance(result, dict):
        return {**output, **result}
    return result


def checked_result(result: Any, error: type[Exception] = InvalidSignal) -> Any:
    """A step's result a person or system gives (a signal's, a skip's): None, or a storable JSON object
    (``error`` naming the field otherwise)."""
    if result is None:
        return None
    if not isinstance(result, dict):
        raise error({"result": ["must be a JSON object"]})
    problem = json_problem(result, "result")
    if problem:
        raise error({"result": [problem]})
    return result


def _checked_error(error: Any) -> str:
    if not isinstance(error, str) or not error.strip():
        raise InvalidSignal({"error": ["a reason is required"]})
    problem = json_problem(error, "error")
    if problem:
        raise InvalidSignal({"error": [problem]})
    if len(error) > ERROR_MAX_LENGTH:
        raise InvalidSignal({"error": [f"at most {ERROR_MAX_LENGTH} characters"]})
    return error.strip()


def complete_step(saga: SagaInstance | uuid.UUID | str, step_name: str, result: dict | None = None,
                  by: Any = None) -> SagaInstance:
    """Complete waiting step ``step_name``: it succeeds with the action's output merged with ``result``.

    ``by`` is the user who decided (checked against the step's
    ``signal_permission``), or None for code that decides itself. Raises
    ``InvalidTransition`` if the step is not waiting (a second signal).
    """
    return _signal(saga_id_of(saga), step_name, by=by, result=checked_result(result))


def fail_step(saga: SagaInstance | uuid.UUID | str, step_name: str, error: str = "",
              by: Any = None) -> SagaInstance:
    """Fail waiting step ``step_name`` for good with ``error`` (a refusal): the saga compensates, this step included."""
    return _signal(saga_id_of(saga), step_name, by=by, error=_checked_error(error))


def complete_step_by_token(token: str, result: dict | None = None) -> SagaInstance:
    """``complete_step`` for a system holding the wait's ``ctx.signal_token`` (once: the token dies with the wait)."""
    result = checked_result(result)
    saga_id, name, hashed = _token_owner(token)
    return _signal(saga_id, name, by=BY_TOKEN, result=result, hashed=hashed)


def fail_step_by_token(token: str, error: str = "") -> SagaInstance:
    """``fail_step`` for a system holding the wait's ``ctx.signal_token``."""
    error = _checked_error(error)
    saga_id, name, hashed = _token_owner(token)
    return _signal(saga_id, name, by=BY_TOKEN, error=error, hashed=hashed)


def _token_owner(token: Any) -> tuple[Any, str, str]:
    """The saga and step a live token belongs to (looked up by its hash, on an index), or ``UnknownSignalToken``."""
    if not isinstance(token, str) or not token or len(token) > TOKEN_MAX_LENGTH:
        raise UnknownSignalToken("unknown or used signal token")
    hashed = token_hash(token)
    # A token lives as long as its wait, and never longer than SAGAS_SIGNAL_TOKEN_TTL (a wait with no
    # deadline too): counted from the wait's start, or the attempt's while its action still runs.
    born_after = Now() - timedelta(seconds=settings.SAGAS_SIGNAL_TOKEN_TTL)
    owner = (StepRecord.objects.filter(signal_token_hash=hashed, status__in=(StepStatus.WAITING, StepStatus.RUNNING))
             .filter(Q(waiting_since__gte=born_after) | Q(waiting_since__isnull=True, started_at__gte=born_after))
             .values_list("saga_id", "name").first())
    if owner is None:
        raise UnknownSignalToken("unknown or used signal token")
    return owner[0], owner[1], hashed


def _signal(saga_id, step_name: str, *, by: Any, result: Any = None, error: str | None = None,
            hashed: str | None = None) -> SagaInstance:
    with locked_saga(saga_id) as saga:
        if saga is None:
            raise no_such_saga(saga_id)
        records = steps_of(saga)
        record = next((r for r in records if r.name == step_name), None)
        if record is None:
            raise UnknownStep(f"saga {saga.id} has no step {step_name!r}")
        if hashed is not None and not hmac.compare_digest(record.signal_token_hash or "", hashed):
            raise UnknownSignalToken("unknown or used signal token")  # used by a signal that won the lock first
        definition = definition_of(saga, records)
        step = definition.step_at(record.index)
        if definition.is_child(record.index):
            raise InvalidTransition(f"step {step_name} of saga {saga.id} waits for its child saga, not for a "
                                    f"signal: its child's end moves it")
        if is_user(by) and not may_signal(by, step.signal_permission):
            raise SignalNotAllowed(f"signalling {step_name} needs the permission {step.signal_permission}")
        if hashed is not None and record.status == StepStatus.RUNNING and goes_forward(saga):
            _keep_early(saga, record, by=by, result=result, error=error)
            return SagaInstance.objects.get(pk=saga.pk)
        # A paused saga takes a signal too: recorded now, what follows it waits for ``resume``.
        if record.status != StepStatus.WAITING or not goes_forward(saga):
            raise InvalidTransition(
                f"step {step_name} of saga {saga.id} is {record.status} (saga {saga.status}); only a waiting "
                f"step can be signalled")
        event(saga, EventKind.STEP_SIGNALLED, step=record, **_signal_detail(result, error), **signaller(by))
        _take_signal(saga, record, definition, result=result, error=error)
    return SagaInstance.objects.get(pk=saga.pk)


def _signal_detail(result: Any, error: str | None) -> dict:
    """What a signal says, as its event (and a kept early signal) records it."""
    return {"signal": "complete", "result": result} if error is None else {"signal": "fail", "error": error}


def _take_signal(saga: SagaInstance, record: StepRecord, definition: Saga, *, result: Any,
                 error: str | None) -> None:
    """The wait ends by the signal: completed (the action's output merged with ``result``) or failed for
    good with ``error`` (the saga compensates, this step included)."""
    end_wait(record)
    if error is None:
        _complete(saga, saga.records, record, definition, _merged(record.result, result))
    else:
        fail_record(saga, record, error, effects=True, permanent=True, signalled=True)
        forward_failed(saga, steps_of(saga))


def _keep_early(saga: SagaInstance, record: StepRecord, *, by: Any, result: Any, error: str | None) -> None:
    """A token callback for a step whose action still runs (the other system answered fast): kept on
    the step, and applied when the action's success is recorded (``begin_wait``). Its token is used:
    a second callback is refused as for a step that was signalled."""
    said = {**_signal_detail(result, error), **signaller(by)}
    record.signal_token_hash = None
    record.early_signal = said
    save_step(record)
    event(saga, EventKind.STEP_SIGNALLED, step=record, early=True, **said)


def complete(saga: SagaInstance, record: StepRecord, definition: Saga, result: Any, **detail: Any) -> None:
    """The waiting step succeeds with ``result`` (a signal's, or its child saga's: ``detail`` says which
    in its event); what follows is sent after commit."""
    _complete(saga, saga.records, record, definition, result, **detail)


def _complete(saga: SagaInstance, records: list[StepRecord], record: StepRecord, definition: Saga,
              result: Any, **detail: Any) -> None:
    """The step succeeds as if its action had just returned ``result``; what follows is sent after commit."""
    forward._succeed(saga, records, record, definition, result, **(detail or {"signalled": True}))
    if saga.status != SagaStatus.RUNNING:
        return
    saga.due_at = stall_deadline(saga)  # it waited with a far due time; now messages move it again
    following = definition.next_stage_start(record.index)
    if following is not None and not definition.is_parallel(record.index):
        dispatch_forward(saga, following)  # the chain stopped at the wait: send the rest
    # A Parallel member: _succeed sent the next stage if this signal completed it.


# --- deadlines -------------------------------------------------------------------------------------


def expired_waits(limit: int) -> QuerySet:
    """Ids of sagas with a wait past its deadline, read through the partial index of waiting steps' deadlines.

    A saga held for a person (``due_at`` empty) stays held, deadline or not.
    """
    return (StepRecord.objects.filter(status=StepStatus.WAITING, signal_deadline__lte=Now(),
                                      saga__due_at__isnull=False)
            .order_by("signal_deadline").values_list("saga_id", flat=True)[:limit])


def expired_wait_saga_ids(limit: int) -> list:
    return list(dict.fromkeys(expired_waits(limit)))


def expire_waits(saga_id, *, nowait: bool = False) -> int:
    """Fail the saga's waits whose deadline passed (no signal came): the saga compensates. How many timed out.

    ``nowait``: see ``locked_saga``."""
    with locked_saga(saga_id, nowait=nowait) as saga:
        if saga is None:
            return 0
        if is_paused(saga):
            return 0  # its deadlines count when it is resumed
        records = steps_of(saga)
        definition = definition_of(saga, records)
        if saga.status == SagaStatus.RUNNING and children.follow_children(saga, records, definition):
            return 0  # a child's end (its message lost) moved it first; its other deadlines count next time
        expired = time_out_waits(saga, records, definition)
        if not expired:
            return 0
        if saga.status == SagaStatus.RUNNING:
            forward_failed(saga, records)
        elif saga.status == SagaStatus.COMPENSATING:
            continue_compensation(saga, records)
        return expired


def time_out_waits(saga: SagaInstance, records: list[StepRecord], definition: Saga) -> int:
    """Fail the waits among ``records`` whose deadline passed (the caller decides what follows). How many."""
    now = saga.db_now
    expired = [r for r in records if r.status == StepStatus.WAITING and r.signal_deadline
               and r.signal_deadline <= now]
    # A child that has ended moves its step itself (its message, or the sweeper's look): not a timeout.
    expired = [r for r in expired if not (definition.is_child(r.index) and children.has_ended(r))]
    for record in expired:
        step = definition.step_at(record.index)
        end_wait(record)
        if definition.is_child(record.index):
            error = f"ChildSagaTimeout: its child saga did not end within {step.child_timeout:g}s"
            fail_record(saga, record, error, blame=not saga.error, effects=True, timeout=True,
                        child_saga=(record.result or {}).get("saga_id"))
            children.stop_child(record, f"timed out: its parent's step {record.name} waited "
                                        f"{step.child_timeout:g}s for it")
            continue
        fail_record(saga, record, f"SignalTimeout: no signal within {step.signal_timeout:g}s", blame=not saga.error,
                    effects=True, timeout=True)
    return len(expired)


__all__ = [
    "begin_wait", "complete", "complete_step", "complete_step_by_token", "expire_waits", "expired_wait_saga_ids",
    "fail_step", "fail_step_by_token", "may_signal", "signaller", "wait_due",
]
