"""Child sagas: a ``ChildSaga`` step's work is a whole saga of another type, started as its child.

- **Start** (``start_child``): when the step's turn comes, in the transaction that claims it, under the
  parent's lock: the child is written (``parent``, ``parent_step``, ``depth``) and the step waits,
  holding no worker, with output ``{"saga_id": ...}``. A redelivery of the step finds it waiting: one
  child, ever, for each attempt (the child's idempotency key names the parent, the step and the attempt).
- **The child's end** (``child_ended``): the transaction that ends a child sends ``sagas.child_ended``
  once it commits (``core.notify_parent``), which moves the parent's step (``follow``): the child
  succeeded, the step succeeds with ``{"saga_id", "results"}``; compensated, the step fails for good and
  the parent compensates (or pauses, past its pivot); failed, the step waits until a person resolves
  the child.
- **Undoing** (``undo``): compensating the step undoes the child as a whole (``succeeded ->
  compensating``, a move only a parent makes), or cancels it if it still runs; the step is
  ``compensated`` when the child is, and its compensation fails when the child ends ``failed``.
- **Down the tree**: cancel (``stop_child``), pause, resume and retry_compensation of a parent reach its
  children (``sagas.engine.intervention``); a child's ``timeout`` is its step's wait deadline, timed out
  by the sweeper as a waiting step's.
- **Repair**: a parent whose step waits for a child stays due every stall time, and the sweeper's
  ``carry_on`` looks at the child (``follow_children``): a lost message is made good.

Locks go down the tree only: a transition that holds a parent's lock may take its children's (cancel,
pause, undoing), never the other way round: a child's end sends a message instead of locking its parent.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from django.conf import settings

from ..definitions import ChildSaga, Saga, StepContext, registry
from ..errors import InvalidSagaInput, InvalidTransition, UnknownSagaType
from ..models import FINAL_SAGA_STATUSES, EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus
from .core import (
    Decision,
    Outcome,
    begin_attempt,
    definition_of,
    describe_error,
    end_wait,
    event,
    fail_record,
    goes_forward,
    is_paused,
    keep_due,
    lease_until,
    locked_saga,
    log_attempt_start,
    make_claim,
    move_saga,
    move_step,
    release,
    save_step,
    steps_of,
)
from .start import start_saga

# The phases call this module and it calls them back (a child's end completes or fails a step, undoing
# one compensates): those are imported where they are used.

logger = logging.getLogger("sagas.engine")

# A child's statuses in which it still goes forward (a cancel stops it).
_FORWARD = (SagaStatus.PENDING, SagaStatus.RUNNING)


def _goes_forward(child: SagaInstance) -> bool:
    """The child runs forward, or would if it were not paused: a cancel stops it (before its pivot)."""
    return child.status in _FORWARD or (child.status == SagaStatus.PAUSED and child.paused_from in _FORWARD)


class _CannotStart(Exception):
    """Why a child saga cannot be started: the step fails for good with this."""


def child_of(record: StepRecord) -> SagaInstance | None:
    """The child the step started last (one run again after its pivot starts another)."""
    return SagaInstance.objects.filter(parent_step_id=record.pk).order_by("-created_at").first()


def children_of(saga_id, statuses) -> list[SagaInstance]:
    return list(SagaInstance.objects.filter(parent_id=saga_id, status__in=statuses).order_by("created_at"))


def label(child: SagaInstance) -> str:
    return f"child saga {child.saga_type} {child.pk}"


# --- the step's turn: start the child ----------------------------------------------------------------


def start_child(saga: SagaInstance, record: StepRecord, definition: Saga) -> Outcome:
    """Start the step's child and make the step wait for it, in this transaction (the parent's lock held).

    What makes a start impossible (too deep, an unknown type, an input
    that raises or that the child refuses) fails the step for good.
    """
    step = definition.step_at(record.index)
    begin_attempt(saga, record, lease_until(saga, step))
    log_attempt_start(saga, record)
    context = make_claim(saga, definition, record.index, record.attempts).context
    try:
        child = _start(saga, record, step, context)
    except _CannotStart as exc:
        from .compensation import forward_failed

        fail_record(saga, record, str(exc), permanent=True)
        went = forward_failed(saga, steps_of(saga))
        return Outcome(Decision.STOP, reason=f"failed for good, {went}: {exc}")
    release(record)
    record.result = {"saga_id": str(child.pk)}
    record.error = ""
    record.waiting_since = saga.db_now
    record.signal_deadline = (saga.db_now + timedelta(seconds=step.child_timeout)) if step.child_timeout else None
    move_step(saga, record, StepStatus.WAITING, EventKind.STEP_WAITING, attempt=record.attempts,
              child_saga=str(child.pk), child_type=child.saga_type,
              deadline=record.signal_deadline.isoformat() if record.signal_deadline else None)
    keep_due(saga)  # due every stall time while it waits: the sweeper looks at the child (``follow_children``)
    return Outcome(Decision.STOP, reason=f"step {record.name} waits for its {label(child)}")


def _start(saga: SagaInstance, record: StepRecord, step: ChildSaga, context: StepContext) -> SagaInstance:
    depth = saga.depth + 1
    if depth > settings.SAGAS_MAX_DEPTH:
        raise _CannotStart(f"a child saga {step.saga_type} here would nest {depth} deep, deeper than "
                           f"SAGAS_MAX_DEPTH ({settings.SAGAS_MAX_DEPTH})")
    try:
        registry.get(step.saga_type, step.version)
    except UnknownSagaType as exc:
        raise _CannotStart(f"its child saga cannot start: {exc}") from None
    try:
        data = step.input(context) if step.input is not None else {}
    except Exception as exc:  # the definition's code failed: no retry can tell what it meant
        raise _CannotStart(f"its child's input (input=) raised {describe_error(exc)}") from None
    if not isinstance(data, dict):
        raise _CannotStart(f"its child's input (input=) must return a dict, got {type(data).__name__}")
    try:
        # The key names the attempt: a redelivery that got this far (it cannot, under the lock) would
        # find the child already there, and a step run again after its pivot starts a new one.
        return start_saga(step.saga_type, input=data, version=step.version,
                          idempotency_key=f"child:{saga.pk}:{record.name}:{record.attempts}",
                          parent=saga, parent_step=record)
    except InvalidSagaInput as exc:
        raise _CannotStart(f"its child saga {step.saga_type} refused the input: {exc.errors}") from None


# --- the child's end moves the parent -----------------------------------------------------------------


def child_ended(parent_id, child_id) -> str:
    """The message a child's end sends: move its parent's step as the child's status says.

    Judged from the stored state under the parent's lock, so a late, repeated
    or stale message changes nothing. Says what it did.
    """
    found = SagaInstance.objects.filter(pk=child_id, parent_id=parent_id).values_list("parent_step_id", flat=True)
    if not found:
        return "no such child"
    with locked_saga(parent_id) as saga:
        if saga is None:
            return "no parent"
        records = steps_of(saga)
        record = next((r for r in records if r.pk == found[0]), None)
        if record is None:
            return "no parent step"
        definition = definition_of(saga, records)
        child = child_of(record)  # read under the parent's lock: as the transitions before left it
        if child is None or str(child.pk) != str(child_id):
            return "not the step's child any more"
        return "moved" if follow(saga, record, child, definition, notified=True) else "nothing to do"


def follow(saga: SagaInstance, record: StepRecord, child: SagaInstance | None, definition: Saga, *,
           notified: bool = False) -> bool:
    """Move step ``record`` (a ``ChildSaga``'s, its saga locked) as its child's status says; True if it moved.

    ``notified``: the child's end said so (its message); the sweeper's look is not.
    """
    if child is None:
        return False
    if record.status == StepStatus.WAITING and goes_forward(saga):
        return _follow_forward(saga, record, child, definition, notified=notified)
    if record.status == StepStatus.COMPENSATING:
        if child.status == SagaStatus.COMPENSATED:
            compensated(saga, record, child)
            return True
        if child.status == SagaStatus.FAILED:
            from .compensation import fail_compensation

            fail_compensation(saga, record, f"its {label(child)} failed: {child.error or 'a person must act'}")
            return True
        return False
    if (record.status == StepStatus.COMPENSATION_FAILED and saga.status == SagaStatus.FAILED
            and child.status == SagaStatus.COMPENSATED):
        return _resolved(saga, record, child)
    return False


def _follow_forward(saga: SagaInstance, record: StepRecord, child: SagaInstance, definition: Saga, *,
                    notified: bool) -> bool:
    if child.status == SagaStatus.SUCCEEDED:
        from .waiting import complete

        end_wait(record)
        complete(saga, record, definition, {"saga_id": str(child.pk), "results": child.results},
                 child_saga=str(child.pk))
        return True
    if child.status == SagaStatus.COMPENSATED:
        from .compensation import forward_failed

        end_wait(record)
        fail_record(saga, record, f"its {label(child)} was compensated: {child.error or 'undone'}",
                    permanent=True, child_saga=str(child.pk))
        forward_failed(saga, steps_of(saga))
        return True
    if child.status == SagaStatus.FAILED and (notified or record.signal_deadline is not None):
        # It waits until a person resolves the child (its compensation retried): no deadline counts meanwhile.
        record.signal_deadline = None
        save_step(record)
        event(saga, EventKind.STEP_WAITING, step=record, attempt=record.attempts, child_saga=str(child.pk),
              child_status=child.status, deadline=None,
              note="its child saga failed: this step waits until a person resolves the child")
    return False


def _resolved(saga: SagaInstance, record: StepRecord, child: SagaInstance) -> bool:
    """The parent's undoing failed on this step because its child failed; a person has since resolved the
    child (it is compensated now): the parent's undoing goes on, unless another of its compensations failed."""
    if any(r.status == StepStatus.COMPENSATION_FAILED and r is not record for r in steps_of(saga)):
        return False
    move_saga(saga, SagaStatus.COMPENSATING, EventKind.SAGA_COMPENSATING,
              reason=f"its {label(child)} was compensated")
    record.compensation_attempts += 1
    move_step(saga, record, StepStatus.COMPENSATING, EventKind.COMPENSATION_STARTED,
              attempt=record.compensation_attempts, child_saga=str(child.pk))
    compensated(saga, record, child)
    return True


def follow_children(saga: SagaInstance, records: list[StepRecord], definition: Saga) -> bool:
    """Look at the children the saga's steps wait for (the sweeper's repair of a lost message): True if one's
    end moved the saga (what follows is decided and sent)."""
    for record in records:
        if (definition.is_child(record.index)
                and record.status in (StepStatus.WAITING, StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED)
                and follow(saga, record, child_of(record), definition)):
            return True
    return False


def waits_for_child(record: StepRecord, definition: Saga) -> bool:
    """The step waits for its child (forward, or its undoing): no message of its own moves it."""
    return definition.is_child(record.index) and record.status in (StepStatus.WAITING, StepStatus.COMPENSATING)


def has_ended(record: StepRecord) -> bool:
    """The step's child has ended (its end, not a deadline, moves the step)."""
    child = child_of(record)
    return child is not None and child.status in FINAL_SAGA_STATUSES


# --- undoing the step undoes the child ------------------------------------------------------------


def undo(saga: SagaInstance, record: StepRecord, definition: Saga) -> Outcome:
    """The compensation of a ``ChildSaga`` step (the parent compensating, its lock held): undo the child
    as a whole, or stop it if it still runs; the step is compensated when the child is (at once, if it
    already is)."""
    from .compensation import fail_compensation

    child = child_of(record)
    if record.status != StepStatus.COMPENSATING:
        record.compensation_attempts += 1
        release(record)
        move_step(saga, record, StepStatus.COMPENSATING, EventKind.COMPENSATION_STARTED,
                  attempt=record.compensation_attempts, child_saga=str(child.pk) if child else None)
    if child is None:  # it never started one: nothing to undo
        compensated(saga, record, None, chain_goes_on=True)
        return Outcome(Decision.CONTINUE, reason="no child saga to undo")
    problem = _undo_child(saga, child)
    status = SagaInstance.objects.values_list("status", flat=True).get(pk=child.pk)
    if problem is None and status == SagaStatus.COMPENSATED:
        compensated(saga, record, child, chain_goes_on=True)
        return Outcome(Decision.CONTINUE)
    if problem is not None or status == SagaStatus.FAILED:
        error = problem or f"its {label(child)} failed: a person must act on it"
        fail_compensation(saga, record, error)
        return Outcome(Decision.FAILED, reason=error)
    keep_due(saga)  # due every stall time: the sweeper looks at the child if its end's message is lost
    return Outcome(Decision.STOP, reason=f"waits for its {label(child)} to be compensated")


def _undo_child(parent: SagaInstance, child: SagaInstance) -> str | None:
    """Start undoing the child (its lock taken after the parent's); why it cannot be, or None."""
    from .compensation import past_pivot, start_compensating

    reason = f"undone by its parent saga {parent.pk}"
    if child.status == SagaStatus.SUCCEEDED:
        with locked_saga(child.pk) as locked:
            if locked is not None and locked.status == SagaStatus.SUCCEEDED:
                records = steps_of(locked)
                if past_pivot(definition_of(locked, records), records):
                    return f"its {label(child)} is past its pivot: it cannot be undone, a person decides"
                locked.error = reason
                start_compensating(locked, records, reason, by_parent=True)
        return None
    if _goes_forward(child):
        try:
            stop(child, reason)
        except InvalidTransition as exc:  # past its pivot: it only goes forward
            return f"its {label(child)} cannot be undone: {exc}"
    return None


def stop(child: SagaInstance, reason: str) -> None:
    """Cancel a child that still goes forward (``InvalidTransition`` past its pivot)."""
    from .intervention import cancel

    cancel(child, reason=reason)


def stop_child(record: StepRecord, reason: str) -> None:
    """The parent stops waiting for step ``record``'s child (it is undone, or timed out): cancel the child
    if it still goes forward. Past its pivot it goes on; undoing the step decides then."""
    child = child_of(record)
    if child is None or not _goes_forward(child):
        return
    try:
        stop(child, reason)
    except InvalidTransition as exc:
        logger.info("saga %s: its %s was not cancelled: %s", record.saga_id, label(child), exc)


def compensated(saga: SagaInstance, record: StepRecord, child: SagaInstance | None, *,
                chain_goes_on: bool = False) -> None:
    """The step's child is compensated: so is the step, and the parent's undoing goes on (``chain_goes_on``:
    the compensation chain that claimed it carries on; otherwise what is left is sent, or the saga ends)."""
    from .compensation import continue_compensation, finish_if_compensated

    record.compensated_at = saga.db_now
    record.compensation_error = ""
    release(record)
    move_step(saga, record, StepStatus.COMPENSATED, EventKind.STEP_COMPENSATED, attempt=record.compensation_attempts,
              **({"child_saga": str(child.pk)} if child is not None else {}))
    if is_paused(saga):
        return  # ``resume`` goes on with it
    if finish_if_compensated(saga):
        return
    if chain_goes_on:
        keep_due(saga)
    else:
        continue_compensation(saga, steps_of(saga))


__all__ = ["child_ended", "child_of", "children_of", "follow", "follow_children", "start_child", "stop_child",
           "undo", "waits_for_child"]
