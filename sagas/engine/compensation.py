"""Undoing a saga: the move to ``compensating`` and one attempt of one compensation.

The compensation chain is sent only once no forward attempt is still at work:
an attempt in flight when the saga starts compensating (a cancel, a failed
``Parallel`` sibling) finishes, and the report of the last one to finish
sends the chain. Nothing polls while it runs.
"""
from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import connection
from django.db.models import Q

from .. import alerts, liveness
from ..definitions import Retry, Saga
from ..models import FORWARD_DONE_STATUSES, EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus
from . import children, sql
from .core import (
    Claim,
    Decision,
    Outcome,
    Report,
    claim_of,
    dead_holders,
    definition_of,
    dispatch_compensation,
    due_range,
    end_wait,
    event,
    fail_record,
    hold,
    in_flight,
    is_paused,
    keep_due,
    lease_length,
    lease_until,
    locked_saga,
    loggable,
    lose_attempt,
    make_claim,
    move_saga,
    move_step,
    moved_detail,
    named_definition,
    record_at,
    release,
    retry_is_due,
    retry_wait,
    save_step,
    stall_deadline,
    steps_of,
)
from .running import attempt_error, invoke, record_or_pending

logger = logging.getLogger("sagas.engine")

UNDO_PENDING = (StepStatus.SUCCEEDED, StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED)


def to_undo(record: StepRecord) -> bool:
    """The step's effects are (or may be) in place and it has a compensation to remove them."""
    if not record.has_compensation:
        return False
    return record.status in UNDO_PENDING or (record.status == StepStatus.FAILED and record.may_have_effects)


# ``to_undo``, and a step still at work, as a filter for records not read.
LEFT_TO_UNDO = Q(status=StepStatus.RUNNING) | Q(has_compensation=True) & (
    Q(status__in=UNDO_PENDING) | Q(status=StepStatus.FAILED, may_have_effects=True))


def compensation_order(records: list[StepRecord]) -> list[int]:
    """Indices the compensation chain visits, latest first."""
    return [r.index for r in reversed(records) if to_undo(r)]


def finish_if_compensated(saga: SagaInstance) -> bool:
    """A compensating saga with nothing left to undo and nothing still running is compensated.

    Judged from the records read, and for those not read (the siblings of a
    ``Parallel`` member, which a compensation does not read) by one query
    in the database: undoing a stage of M members costs M times one member.
    """
    if saga.status != SagaStatus.COMPENSATING:
        return False
    if any(r.status == StepStatus.RUNNING or to_undo(r) for r in saga.records):
        return False
    if not saga.complete and len(saga.records) < len(definition_of(saga).steps):
        unread = StepRecord.objects.filter(saga_id=saga.pk).exclude(index__in=[r.index for r in saga.records])
        if unread.filter(LEFT_TO_UNDO).exists():
            return False
    move_saga(saga, SagaStatus.COMPENSATED, EventKind.SAGA_COMPENSATED)
    return True


def continue_compensation(saga: SagaInstance, records: list[StepRecord]) -> None:
    """Send the compensation chain once no forward attempt is at work; finish when nothing is left."""
    running = [r.lease_expires_at for r in records if r.status == StepStatus.RUNNING]
    if running:
        # Their reports come back here; if their workers die the sweeper does.
        saga.due_at = min((lease for lease in running if lease), default=stall_deadline(saga))
        return
    indices = compensation_order(records)
    if not indices:
        if saga.status == SagaStatus.COMPENSATING:
            move_saga(saga, SagaStatus.COMPENSATED, EventKind.SAGA_COMPENSATED, note="nothing to undo")
        return
    saga.due_at = stall_deadline(saga)
    dispatch_compensation(saga, indices)


def fail_lost_attempt(saga: SagaInstance, record: StepRecord, *, blame: bool) -> None:
    """An attempt that never reported (killed at its hard time limit, or its worker died): it may have done its work."""
    lose_attempt(saga, record)
    fail_record(saga, record, f"attempt {record.attempts} did not finish (hard time limit, or its worker died)",
              blame=blame, effects=True)


def start_compensating(saga: SagaInstance, records: list[StepRecord], reason: str, *,
                       by_parent: bool = False) -> list[int]:
    """Stop what has not started, move the saga to ``compensating`` and send (or await) the chain.

    A step waiting for its child saga stops waiting and the child is cancelled (it is undone with the
    rest). ``by_parent``: a succeeded child its parent undoes as a whole (a move only a parent makes).
    """
    now = saga.db_now
    dead = dead_holders(records, now)
    for record in records:
        if record.status == StepStatus.RUNNING:
            if in_flight(record, now, dead):
                continue  # at work: it finishes and reports, and is undone like the rest
            if record.lease_expires_at is not None:
                fail_lost_attempt(saga, record, blame=not saga.error)
            else:  # waiting for a retry: no attempt is made any more
                fail_record(saga, record, "stopped: the saga is compensating", blame=False)
        elif record.status == StepStatus.PENDING:
            move_step(saga, record, StepStatus.SKIPPED, EventKind.STEP_SKIPPED)
        elif record.status == StepStatus.WAITING and definition_of(saga).is_child(record.index):
            # Its child runs: it is cancelled, and the step is compensated when the child is.
            end_wait(record)
            fail_record(saga, record, "stopped while waiting for its child saga: the saga is compensating",
                        blame=False, effects=True, waiting=True)
            children.stop_child(record, f"its parent saga {saga.pk} is compensating: {reason or saga.error}")
        elif record.status == StepStatus.WAITING:
            # Its action ran: the step fails (no signal counts any more) and is compensated with the rest.
            end_wait(record)
            fail_record(saga, record, "stopped while waiting for a signal: the saga is compensating", blame=False,
                        effects=True, waiting=True)
        elif record.status == StepStatus.SUCCEEDED and not record.has_compensation:
            event(saga, EventKind.NOTHING_TO_COMPENSATE, step=record, note="no compensation defined; left as is")
    if not saga.error:
        saga.error = reason or "failed"
    move_saga(saga, SagaStatus.COMPENSATING, EventKind.SAGA_COMPENSATING, by_parent=by_parent, reason=saga.error)
    continue_compensation(saga, records)
    return compensation_order(records)


AFTER_PIVOT = "after_pivot"  # a saga's ``pause_cause`` when it paused on its own


def forward_failed(saga: SagaInstance, records: list[StepRecord], reason: str = "") -> str:
    """A forward step failed for good (already recorded): undo the saga, or, once its pivot has
    succeeded, pause it for a person (it only goes forward from there). A paused saga decides
    nothing: ``resume`` judges its records. ``records``: all of them (``steps_of``). Says what it did.
    """
    if is_paused(saga):
        return "recorded while paused"
    definition = definition_of(saga)
    if past_pivot(definition, records):
        failed = [r for r in records if r.status == StepStatus.FAILED and definition.after_pivot(r.index)]
        saga.pause_cause = AFTER_PIVOT
        move_saga(saga, SagaStatus.PAUSED, EventKind.SAGA_PAUSED, cause=AFTER_PIVOT,
                  failed_steps=[r.name for r in failed], error=saga.error,
                  reason=f"step {failed[0].name if failed else '?'} failed for good after the pivot "
                         f"{definition.step_at(definition.pivot_index).name}: a person decides")
        alerts.saga_paused(saga)
        return "paused after the pivot"
    start_compensating(saga, records, reason or saga.error)
    return "compensating"


def past_pivot(definition: Saga, records: list[StepRecord]) -> bool:
    """The saga's pivot has succeeded: from here on it only goes forward (no cancel, no compensation)."""
    pivot = definition.pivot_index
    return pivot is not None and any(r.index == pivot and r.status == StepStatus.SUCCEEDED for r in records)


def begin_compensation(saga_id, reason: str = "") -> list[int] | None:
    """The chain's error callback: compensate a saga whose forward run really ended in failure.

    Judged from the stored state, not from the callback having run: a chain
    also breaks when a task's infrastructure retries run out or the broker
    refuses the next message, and that is no reason to undo a healthy saga
    (the sweeper moves it on). Returns the indices to compensate, or ``None``
    when nothing is to be done.
    """
    with locked_saga(saga_id) as saga:
        if saga is None or saga.status not in (SagaStatus.PENDING, SagaStatus.RUNNING):
            return None
        records = steps_of(saga)
        now = saga.db_now
        dead = dead_holders(records, now)
        grace = timedelta(seconds=settings.SAGAS_HARD_TIMEOUT_GRACE)
        over = [r for r in records if r.status == StepStatus.RUNNING and r.lease_expires_at is not None
                and (not in_flight(r, now, dead) or r.lease_expires_at - grace <= now)]
        failed = any(r.status == StepStatus.FAILED for r in records)
        if not (failed or over or saga.cancel_requested_at):
            event(saga, EventKind.ERROR_CALLBACK_IGNORED, reason=reason,
                  note="no step failed: the chain broke for another reason; the sweeper moves the saga on")
            return None
        for record in over:
            fail_lost_attempt(saga, record, blame=not saga.error)
        if saga.cancel_requested_at:
            return start_compensating(saga, records, reason)
        forward_failed(saga, records, reason)
        return compensation_order(records) if saga.status == SagaStatus.COMPENSATING else None


# --- one attempt of one compensation ------------------------------------------------------


def execute_compensation(saga_id, index: int, policy: Retry | None = None, report: dict | None = None, *,
                         saga_type: str | None = None, version: int | None = None) -> Outcome:
    """Run one attempt of the compensation of step ``index`` and record it (or record a carried report).

    ``saga_type`` and ``version``: the saga's, as its message names them
    (checked against the stored saga), as for a forward step.
    """
    if report is not None:
        return record_compensation(saga_id, index, Report(**report), policy)
    claim = (_claim_in_one_statement(saga_id, index, named_definition(saga_type, version))
             or _claim_compensation(saga_id, index, policy))
    if isinstance(claim, Outcome):
        return claim
    try:
        invoke(claim.step.compensation, claim, phase="compensation")
    except Exception as exc:  # recorded and retried, or the saga is left to a person
        logger.warning("saga %s compensation of %s attempt %s failed: %s",
                       saga_id, claim.step.name, claim.attempt, loggable(claim, exc))
        error, timed_out = attempt_error(claim, exc)
        outcome = Report(claim.attempt, ok=False, error=error, timeout=timed_out)
    else:
        outcome = Report(claim.attempt, ok=True)
    return record_or_pending(partial(record_compensation, claim=claim), claim, outcome, policy)


# The statuses the one-statement claim and record check, as ``to_undo`` and ``results_of`` read them.
_STATUSES = {"running": StepStatus.RUNNING, "failed": StepStatus.FAILED, "undo_pending": list(UNDO_PENDING),
             "forward_done": list(FORWARD_DONE_STATUSES), "saga_compensating": SagaStatus.COMPENSATING}


def _claim_in_one_statement(saga_id, index: int, definition: Saga | None) -> Claim | None:
    """On PostgreSQL, with the definition known beforehand: the first attempt of a plain step's compensation,
    claimed in one statement (``sql.claim_compensation``) in place of a locked read, two writes and a commit.

    For a step that succeeded, of a compensating saga with nothing of a
    later stage at work or left to undo: the commonest claim of a
    compensation chain. None otherwise, or when anything differs: the
    locked claim decides. (A ``Parallel`` member's is always locked.)
    """
    if (definition is None or connection.vendor != "postgresql" or not 0 <= index < len(definition.steps)
            or definition.is_parallel(index) or definition.is_child(index)):
        return None
    saga_id = uuid.UUID(str(saga_id))
    step = definition.step_at(index)
    found = sql.claim_compensation(
        saga_id=saga_id, index=index, saga_type=definition.name, version=definition.version,
        names=[s.name for s in definition.steps], lease=lease_length(step, compensation=True),
        holder=liveness.identity(), due_kept=due_range(), compensating=StepStatus.COMPENSATING,
        succeeded=StepStatus.SUCCEEDED, **_STATUSES,
        started=(EventKind.COMPENSATION_STARTED, moved_detail(StepStatus.SUCCEEDED, StepStatus.COMPENSATING, attempt=1)))
    if found is None:
        return None
    stored_input, stored_output, stored_results = found
    return claim_of(saga_id, definition, index, 1, began_at=None, input=json.loads(stored_input),
                    results=json.loads(stored_results or "{}"), compensation=True,
                    output=None if stored_output is None else json.loads(stored_output))


def _compensated_unlocked(claim: Claim, report: Report) -> bool:
    """On PostgreSQL, a plain step's compensation that succeeded, recorded in one statement
    (``sql.compensated_if_compensating``), with the saga's end when it was the last thing to undo.

    False when it does not apply (a ``Parallel`` member: its siblings may
    finish at the same moment, and only the saga's lock tells which is
    last) or a condition no longer holds: recorded under the lock then.
    """
    if connection.vendor != "postgresql" or claim.definition.is_parallel(claim.index):
        return False
    return sql.compensated_if_compensating(
        saga_id=claim.saga_id, index=claim.index, attempt=report.attempt, due_kept=due_range(),
        compensating=StepStatus.COMPENSATING, compensated=StepStatus.COMPENSATED, **_STATUSES,
        saga_compensated=SagaStatus.COMPENSATED,
        ended=(EventKind.STEP_COMPENSATED,
               moved_detail(StepStatus.COMPENSATING, StepStatus.COMPENSATED, attempt=report.attempt)),
        saga_ended=(EventKind.SAGA_COMPENSATED, moved_detail(SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)))


def _claim_compensation(saga_id, index: int, policy: Retry | None) -> Claim | Outcome:
    with locked_saga(saga_id, undoing=index) as saga:
        if saga is None:
            return Outcome(Decision.STOP, reason="saga does not exist")
        if saga.status != SagaStatus.COMPENSATING:
            return Outcome(Decision.STOP, reason=f"saga is {saga.status}")
        records = saga.records  # this step's and the later stages'
        record = record_at(saga, index)
        definition = definition_of(saga, records)
        now = saga.db_now
        dead = dead_holders([record], now)
        if record.status == StepStatus.RUNNING:
            if in_flight(record, now, dead):
                return Outcome(Decision.STOP, reason=f"step {record.name} is still running: its report goes on")
            if record.lease_expires_at is not None:
                fail_lost_attempt(saga, record, blame=False)
            else:
                fail_record(saga, record, "stopped: the saga is compensating", blame=False)
        if not to_undo(record):
            finish_if_compensated(saga)
            return Outcome(Decision.CONTINUE, reason=f"nothing to compensate (step {record.status})")
        # Everything in later stages is undone first; members of one Parallel
        # are independent of each other.
        if any(to_undo(r) or r.status == StepStatus.RUNNING for r in records if r.stage > record.stage):
            return Outcome(Decision.STOP, reason="a later step is not compensated yet")
        step = definition.step_at(index)
        policy = policy or step.compensation_retry
        if record.status == StepStatus.COMPENSATING:
            if in_flight(record, now, dead):
                return Outcome(Decision.STOP, reason="another attempt holds the compensation")
            if record.lease_expires_at is None and not retry_is_due(record, now):
                return Outcome(Decision.RETRY, countdown=retry_wait(record, now), reason="retry not due yet")
            if record.lease_expires_at is not None:
                event(saga, EventKind.STEP_ATTEMPT_LOST, step=record, attempt=record.compensation_attempts,
                      compensation=True)
                if not policy.allows_another(record.compensation_attempts):
                    fail_compensation(saga, record, "compensation attempt was lost (worker died or was killed)")
                    return Outcome(Decision.FAILED, reason="compensation attempts exhausted")
        if record.status == StepStatus.COMPENSATION_FAILED:
            return Outcome(Decision.FAILED, reason="compensation already failed")
        if definition.is_child(index):
            return children.undo(saga, record, definition)  # its child is undone as a whole
        record.compensation_attempts += 1
        hold(record, saga, lease_until(saga, step, compensation=True))
        move_step(saga, record, StepStatus.COMPENSATING, EventKind.COMPENSATION_STARTED,
                  attempt=record.compensation_attempts)
        return make_claim(saga, definition, index, record.compensation_attempts, compensated=record)


def fail_compensation(saga: SagaInstance, record: StepRecord, error: str) -> None:
    """The step's compensation failed for good: the saga is ``failed`` (when it is resumed, if paused)."""
    record.compensation_error = error
    release(record)
    move_step(saga, record, StepStatus.COMPENSATION_FAILED, EventKind.COMPENSATION_FAILED,
              error=error, attempts=record.compensation_attempts)
    saga.error = f"compensation of step {record.name} failed: {error}"
    if not is_paused(saga):
        move_saga(saga, SagaStatus.FAILED, EventKind.SAGA_FAILED, reason=saga.error)


def record_compensation(saga_id, index: int, report: Report, policy: Retry | None, *,
                        claim: Claim | None = None) -> Outcome:
    """Record how one compensation attempt ended (``claim``: the attempt's own, when the process that ran it records it)."""
    if claim is not None and report.ok and _compensated_unlocked(claim, report):
        return Outcome(Decision.CONTINUE)
    with locked_saga(saga_id, undoing=index) as saga:
        if saga is None:
            return Outcome(Decision.STOP, reason="saga does not exist")
        record = record_at(saga, index)
        if record.status != StepStatus.COMPENSATING or record.compensation_attempts != report.attempt:
            event(saga, EventKind.REPORT_DROPPED, step=record, attempt=report.attempt, compensation=True,
                  ok=report.ok, error=report.error,
                  note=f"the compensation had moved on to {record.status} (attempt {record.compensation_attempts})")
            return Outcome(Decision.STOP, reason="a later attempt owns the compensation")
        if report.ok:
            record.compensated_at = saga.db_now
            record.compensation_error = ""
            release(record)
            move_step(saga, record, StepStatus.COMPENSATED, EventKind.STEP_COMPENSATED, attempt=report.attempt)
            if not finish_if_compensated(saga):
                keep_due(saga)
            return Outcome(Decision.CONTINUE)
        policy = policy or definition_of(saga).step_at(index).compensation_retry
        if not policy.allows_another(report.attempt):
            fail_compensation(saga, record, report.error)
            return Outcome(Decision.FAILED, reason=report.error)
        delay = policy.delay_after(report.attempt)
        record.compensation_error = report.error
        release(record)
        record.next_attempt_at = saga.db_now + timedelta(seconds=delay)
        save_step(record)
        saga.due_at = record.next_attempt_at + timedelta(seconds=settings.SAGAS_STALL_AFTER)
        event(saga, EventKind.COMPENSATION_ATTEMPT_FAILED, step=record, attempt=report.attempt, error=report.error,
              timeout=report.timeout, retry_in=delay)
        if is_paused(saga):  # its time is recorded; ``resume`` sends it
            return Outcome(Decision.STOP, reason=f"retry waits: the saga is paused ({report.error})")
    return Outcome(Decision.RETRY, countdown=delay, reason=report.error)


# --- a late success of an attempt judged dead -------------------------------------------------------


def late_success_to_undo(record: StepRecord) -> bool:
    """A success reported by an attempt that lost the step, after the step was undone (or while it is):
    what that attempt applied may be in place now, so the step's compensation runs again."""
    return record.has_compensation and record.status in (StepStatus.COMPENSATING, StepStatus.COMPENSATED)


def compensate_late_success(saga_id, index: int, attempt: int, result, *, retries: int = 0) -> Outcome:
    """Run step ``index``'s compensation once more, for the success attempt ``attempt`` reported late.

    A worker judged dead may still be alive (a long pause, a stopped
    process): its attempt's report comes after the step was taken over and
    undone. The state machine does not move (the step stays compensated);
    compensations are idempotent and keyed, so running it again undoes what
    the late attempt applied, or finds nothing to do. Each run leaves an
    event; a compensation that keeps failing is retried as the step's
    compensations are, then alerts a person.
    """
    with locked_saga(saga_id, undoing=index) as saga:
        if saga is None:
            return Outcome(Decision.STOP, reason="saga does not exist")
        definition = definition_of(saga)
        claim = claim_of(saga.id, definition, index, attempt, input=saga.input, results={}, began_at=None,
                         compensation=True, output=result)
    try:
        invoke(claim.step.compensation, claim, phase="compensation")
    except Exception as exc:  # recorded; retried like the step's compensation
        error, _ = attempt_error(claim, exc)
        policy = claim.step.compensation_retry
        more = policy.allows_another(retries + 1)
        delay = policy.delay_after(retries + 1) if more else 0.0
        with locked_saga(saga_id, undoing=index) as saga:
            record = record_at(saga, index)
            event(saga, EventKind.LATE_COMPENSATION_FAILED, step=record, attempt=attempt, error=error,
                  **({"retry_in": delay} if more else {}))
            if not more:
                alerts.late_compensation_failed(saga, record.name, error)
        return Outcome(Decision.RETRY, countdown=delay, reason=error) if more else \
            Outcome(Decision.FAILED, reason=error)
    with locked_saga(saga_id, undoing=index) as saga:
        event(saga, EventKind.LATE_SUCCESS_COMPENSATED, step=record_at(saga, index), attempt=attempt)
    return Outcome(Decision.CONTINUE)


__all__ = [
    "AFTER_PIVOT", "begin_compensation", "forward_failed", "past_pivot",
    "compensate_late_success", "compensation_order", "continue_compensation", "execute_compensation",
    "fail_compensation", "finish_if_compensated", "start_compensating", "to_undo",
]
