"""Running the saga forward: claim one attempt of one step, run its action, record its report.

Three short transactions around the action: claim (the step is held by this
process, for a lease), run the action (outside any transaction unless the
step is ``transactional``), record the report. On PostgreSQL the commonest
claim and the commonest report are one conditional statement each (a free
step taken; a plain step's success with the next step to follow). Another delivery of a step
held by a live attempt does nothing: it is a duplicate, and the holder's
message carries the chain on. An attempt whose lease expired, or whose
worker stopped heartbeating, is lost and taken over by the next delivery,
or by the sweeper.

A ``Parallel`` makes one stage of several steps: its members are claimed
independently (each waits only for the earlier stages), and the join needs no
result backend: the member whose recorded success completes the stage, under
the saga's row lock, sends the next stage after commit.
"""
from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from .. import liveness
from ..definitions import Retry, Saga
from ..errors import PermanentError, SagaDefinitionError
from ..models import FORWARD_PASSED_STATUSES, EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus
from .compensation import continue_compensation, fail_lost_attempt, forward_failed, late_success_to_undo
from .core import (
    Claim,
    Decision,
    Outcome,
    Report,
    UnstorableResult,
    begin_attempt,
    claim_of,
    dead_holders,
    definition_of,
    describe_error,
    dispatch_forward,
    dispatch_late_compensation,
    due_range,
    event,
    fail_record,
    goes_forward,
    hold_for_person,
    in_flight,
    is_paused,
    keep_due,
    lease_length,
    lease_until,
    locked_saga,
    log_attempt_start,
    loggable,
    lose_attempt,
    make_claim,
    record_at,
    move_saga,
    move_step,
    moved_detail,
    named_definition,
    new_signal_token,
    read_saga,
    release,
    retry_is_due,
    retry_wait,
    save_saga_if_unchanged,
    save_step,
    save_step_if_unchanged,
    stall_length,
    started_detail,
    steps_of,
    used_attempts,
)
from .running import DATABASE_PASSING, attempt_error, invoke, record_or_pending, success_report
from . import children, sql
from .waiting import begin_wait

logger = logging.getLogger("sagas.engine")


def execute_step(saga_id, index: int, policy: Retry | None = None, report: dict | None = None, *,
                 saga_type: str | None = None, version: int | None = None) -> Outcome:
    """Run one attempt of forward step ``index`` and record it (or only record a carried ``report``).

    ``saga_type`` and ``version``: the saga's, as its message names them,
    which spares the claim a read (they are checked against the stored
    saga; an older message without them, or a version no longer
    registered, is claimed the usual way).
    """
    try:
        return _execute_step(saga_id, index, policy, report, saga_type=saga_type, version=version)
    except SagaDefinitionError as exc:
        # Steps changed under the same version: no path may go on with it, the one-statement ones
        # included (they check the stored names and fall back to the checks that raise this).
        hold_for_person(saga_id, f"this saga cannot go on: {exc}")
        return Outcome(Decision.STOP, reason=str(exc))


def _execute_step(saga_id, index: int, policy: Retry | None, report: dict | None, *,
                  saga_type: str | None, version: int | None) -> Outcome:
    if report is not None:
        return record_step(saga_id, index, Report(**report), policy)
    claim = claim_step(saga_id, index, policy, definition=named_definition(saga_type, version))
    if isinstance(claim, Outcome):
        return claim
    if claim.step.transactional:
        return _run_transactional(claim, policy)
    try:
        result = invoke(claim.step.action, claim, phase="action")
    except Exception as exc:  # the action's failure is data: record it and decide
        logger.info("saga %s step %s attempt %s failed: %s", saga_id, claim.step.name, claim.attempt,
                    loggable(claim, exc))
        outcome = failure_report(claim, exc)
    else:
        outcome = success_report(claim, result)
    return record_or_pending(partial(record_step, claim=claim), claim, outcome, policy)


def failure_report(claim: Claim, exc: Exception, *, rolled_back: bool = False) -> Report:
    error, timed_out = attempt_error(claim, exc)
    # An action that returned a value we cannot store did its work: undo it with the rest.
    effects = isinstance(exc, UnstorableResult) and not rolled_back
    return Report(claim.attempt, ok=False, error=error, timeout=timed_out,
                  permanent=isinstance(exc, PermanentError), effects=effects)


class _NotOwner(Exception):
    def __init__(self, outcome: Outcome):
        self.outcome = outcome


def _run_transactional(claim: Claim, policy: Retry | None) -> Outcome:
    """The action's writes and the step's success commit together or not at all.

    No lock is held while the action runs: the saga's row is locked only to
    record the success at the end, and if another attempt owns the step by
    then the action's writes roll back. Two deliveries can never both apply
    them. (On SQLite any write transaction holds the database's write lock:
    keep transactional actions short there.)
    """
    try:
        with transaction.atomic():
            result = invoke(claim.step.action, claim, phase="action")
            return record_step(claim.saga_id, claim.index, success_report(claim, result), policy, must_own=True)
    except _NotOwner as refused:
        return refused.outcome
    except DATABASE_PASSING as exc:
        # Rolled back by the database (a dropped connection, a lock), whether in the action or in
        # recording its success: nothing of it stays, and it is no fault of the step's.
        logger.warning("saga %s step %s attempt %s rolled back: %s", claim.saga_id, claim.step.name,
                       claim.attempt, exc)
        report = Report(claim.attempt, ok=False, error=describe_error(exc), infrastructure=True)
    except Exception as exc:  # rolled back: nothing of the action stays
        report = failure_report(claim, exc, rolled_back=True)
    return record_or_pending(record_step, claim, report, policy)


def _previous_steps_done(records: list[StepRecord], definition: Saga, index: int) -> bool:
    """Every step of the earlier stages succeeded, or was skipped (members of one Parallel do not wait for each other)."""
    first_of_stage = definition.stage_indices(index)[0]
    earlier = [r for r in records if r.index < first_of_stage]
    return len(earlier) == first_of_stage and all(r.status in FORWARD_PASSED_STATUSES for r in earlier)


def claim_step(saga_id, index: int, policy: Retry | None, *, definition: Saga | None = None) -> Claim | Outcome:
    """Hold forward step ``index`` for a new attempt by this process, or say why not.

    Most claims take a step that is free to start in a running saga, and
    change nothing but the step's row: they are made by one conditional
    UPDATE after an unlocked read (``_claim_free_step``); the saga's first
    claim also moves it to ``running`` by another. Anything else (a lost
    attempt, a duplicate, a saga being undone) is decided under the saga's lock.
    """
    return (_claim_in_one_statement(saga_id, index, definition) or _claim_free_step(saga_id, index)
            or _claim_locked(saga_id, index, policy))


def _claim_in_one_statement(saga_id, index: int, definition: Saga | None) -> Claim | None:
    """On PostgreSQL, with the definition known beforehand: the claim of a pending step as one statement.

    The same conditional UPDATE as ``_claim_free_step`` makes, with the read
    it follows made by the statement itself (``sql.claim_pending_step``):
    one round trip instead of two. For a pending step that does not wait,
    of a saga already running and not close to due, the commonest claim;
    None otherwise, or when anything differs: the other claims decide.
    """
    if (definition is None or connection.vendor != "postgresql" or not 0 <= index < len(definition.steps)
            or definition.step_at(index).wait_for_signal or definition.claims_locked(index)):
        return None
    saga_id = uuid.UUID(str(saga_id))
    if index == 0:
        return None if definition.is_parallel(0) else _start_in_one_statement(saga_id, definition)
    found = sql.claim_pending_step(
        saga_id=saga_id, index=index, saga_type=definition.name, version=definition.version,
        names=[s.name for s in definition.steps], holder=liveness.identity(),
        lease=lease_length(definition.step_at(index)), due_kept=due_range(),
        pending=StepStatus.PENDING, running=StepStatus.RUNNING, succeeded=StepStatus.SUCCEEDED,
        saga_running=SagaStatus.RUNNING)
    if found is None:
        return None
    began_at, stored_input, stored_results = found
    return claim_of(saga_id, definition, index, 1, began_at=began_at,
                    input=json.loads(stored_input), results=json.loads(stored_results or "{}"))


def _start_in_one_statement(saga_id: uuid.UUID, definition: Saga) -> Claim | None:
    """The first claim of a saga that has not started (its first stage one step): the saga moves to
    running and the step is held, in one statement (``sql.claim_first_step``) in place of a read and
    three writes. None if the saga is not pending, or anything else differs: the other claims decide.
    """
    step = definition.step_at(0)
    found = sql.claim_first_step(
        saga_id=saga_id, saga_type=definition.name, version=definition.version, name=step.name,
        lease=lease_length(step), holder=liveness.identity(), stall_after=stall_length(), due_kept=due_range(),
        pending=StepStatus.PENDING, running=StepStatus.RUNNING,
        saga_pending=SagaStatus.PENDING, saga_running=SagaStatus.RUNNING,
        saga_started=(EventKind.SAGA_STARTED, moved_detail(SagaStatus.PENDING, SagaStatus.RUNNING)))
    if found is None:
        return None
    began_at, stored_input = found
    return claim_of(saga_id, definition, 0, 1, began_at=began_at, input=json.loads(stored_input), results={})


def _claim_free_step(saga_id, index: int) -> Claim | None:
    """The claim as one UPDATE of the step's row (and of the saga's, now and then), if both are still as read.

    The UPDATE checks the step's status and attempt count are unchanged and
    its saga still runs. Every transition that makes a free step unfit to
    start writes that step's row under the saga's lock (a compensating saga
    skips its pending steps and fails those awaiting a retry), so on
    PostgreSQL an UPDATE that waited for such a transition's row lock
    re-checks the row it left and changes nothing. None: decide under the lock.
    """
    saga = read_saga(saga_id, step=index)
    if saga is None or saga.status not in (SagaStatus.PENDING, SagaStatus.RUNNING):
        return None
    record = record_at(saga, index)
    free = record.status == StepStatus.PENDING or (
        record.status == StepStatus.RUNNING and record.lease_expires_at is None and retry_is_due(record, saga.db_now))
    if not free:
        return None
    try:
        definition = definition_of(saga, saga.records)
    except SagaDefinitionError:
        return None  # the locked claim says so
    if definition.claims_locked(index) or not _previous_steps_done(saga.records, definition, index):
        return None
    # The saga's row is written only for its first claim (pending -> running),
    # or when it came close to due (waiting in a long queue, say).
    read_as = saga.status
    if saga.status == SagaStatus.PENDING:
        move_saga(saga, SagaStatus.RUNNING, EventKind.SAGA_STARTED)
    keep_due(saga)
    if not save_saga_if_unchanged(saga, status=read_as):
        return None  # cancelled, or started by another delivery: decided under the lock
    step = definition.step_at(index)
    begin_attempt(saga, record, lease_until(saga, step))
    token = new_signal_token(record) if step.wait_for_signal else None
    if not save_step_if_unchanged(record, expect=("status", "attempts"), saga_status=SagaStatus.RUNNING):
        return None
    return make_claim(saga, definition, index, record.attempts, signal_token=token)


def _claim_locked(saga_id, index: int, policy: Retry | None) -> Claim | Outcome:
    with locked_saga(saga_id, step=index) as saga:
        if saga is None:
            return Outcome(Decision.STOP, reason="saga does not exist")
        if saga.status not in (SagaStatus.PENDING, SagaStatus.RUNNING):
            return Outcome(Decision.STOP, reason=f"saga is {saga.status}")
        records = saga.records  # this step's and the earlier stages'
        definition = definition_of(saga, records)
        record = record_at(saga, index)
        if record.status in FORWARD_PASSED_STATUSES:  # succeeded, or skipped by a person
            return _already_succeeded(steps_of(saga), definition, index)
        if record.status == StepStatus.FAILED:
            return Outcome(Decision.FAILED, reason=f"step already {record.status}")
        if record.status == StepStatus.WAITING:
            return Outcome(Decision.STOP, reason="step is waiting for a signal")
        if not _previous_steps_done(records, definition, index):
            return Outcome(Decision.STOP, reason="an earlier step has not succeeded")
        step = definition.step_at(index)
        policy = policy or step.retry
        now = saga.db_now
        if record.status == StepStatus.RUNNING:
            if in_flight(record, now, dead_holders([record], now)):
                return Outcome(Decision.STOP, reason="another attempt holds the step")
            if record.lease_expires_at is None and not retry_is_due(record, now):
                # Early by the database's clock (another machine's clock, or a sweeper's resend):
                # wait for the retry's time rather than drop the message.
                return Outcome(Decision.RETRY, countdown=retry_wait(record, now), reason="retry not due yet")
            if record.lease_expires_at is not None:
                # The attempt that held the step never reported: its worker died or it was killed.
                if not policy.allows_another(used_attempts(record)):
                    fail_lost_attempt(saga, record, blame=True)
                    return Outcome(Decision.FAILED, reason="attempts exhausted")  # the error callback decides
                lose_attempt(saga, record)
        if saga.status == SagaStatus.PENDING:
            move_saga(saga, SagaStatus.RUNNING, EventKind.SAGA_STARTED)
        if record.status == StepStatus.PENDING and definition.claims_locked(index):
            decided = _ask_conditions(saga, definition, record)
            if decided is not None:
                return decided
        if definition.is_child(index):
            return children.start_child(saga, record, definition)  # in this transaction: once, under the lock
        begin_attempt(saga, record, lease_until(saga, step))
        token = new_signal_token(record) if step.wait_for_signal else None
        save_step(record)
        return make_claim(saga, definition, index, record.attempts, signal_token=token)


CONDITION_FALSE = "condition false"


def _ask_conditions(saga: SagaInstance, definition: Saga, record: StepRecord) -> Outcome | None:
    """A pending step's turn has come: ask its ``when`` (and its Parallel's, if nothing of the Parallel
    has started yet), with the context its action would get. None: it runs. Otherwise what was done:
    skipped (its Parallel's members too, for the Parallel's condition), or failed for good when a
    condition raised.
    """
    index = record.index
    own, group = definition.conditions(index)
    context = make_claim(saga, definition, index, record.attempts + 1).context
    skipped = []
    try:
        if group is not None:
            members = [r for r in steps_of(saga) if r.index in definition.stage_indices(index)]
            # The first member to be claimed decides for all: once one has moved, the Parallel's answer was yes.
            if all(r.status == StepStatus.PENDING for r in members) and not group(context):
                skipped = members
        if not skipped and own is not None and not own(context):
            skipped = [record]
    except Exception as exc:  # the definition's code failed: no retry can tell what it meant
        error = f"its condition (when) raised {describe_error(exc)}"
        begin_attempt(saga, record, lease_until(saga, definition.step_at(index)))
        log_attempt_start(saga, record)
        fail_record(saga, record, error, permanent=True, condition=True)
        went = forward_failed(saga, steps_of(saga))
        return Outcome(Decision.STOP, reason=f"failed for good, {went}: {error}")
    if not skipped:
        return None
    for member in skipped:
        member.finished_at = saga.db_now
        detail = {"parallel": definition.group_of(index)} if member is not record else {}
        move_step(saga, member, StepStatus.SKIPPED, EventKind.STEP_SKIPPED, reason=CONDITION_FALSE, **detail)
    return _passed(saga, definition, record)


def _already_succeeded(records: list[StepRecord], definition: Saga, index: int) -> Outcome:
    """A redelivery of a step that succeeded: let the chain go on only if nothing after it started.

    (Its worker may have died between recording the success and sending the
    next step.) Otherwise the message is a duplicate and goes no further.
    """
    following = definition.next_stage_start(index)
    if (following is not None and not definition.is_parallel(index)
            and records[following].status == StepStatus.PENDING):
        return Outcome(Decision.CONTINUE, reason="step already succeeded")
    return Outcome(Decision.STOP, reason="step already succeeded")


def record_step(saga_id, index: int, report: Report, policy: Retry | None, *, must_own: bool = False,
                claim: Claim | None = None) -> Outcome:
    """Record how one attempt of forward step ``index`` ended, and decide what follows.

    ``must_own``: a report that no longer owns the step raises (a
    transactional action's writes then roll back with it). ``claim``: the
    attempt's own claim, when the process that ran it records it.
    """
    if claim is not None and report.ok and not must_own and _succeed_unlocked(claim, report):
        return Outcome(Decision.CONTINUE)
    with locked_saga(saga_id, step=index) as saga:
        if saga is None:
            return _refuse(must_own, Outcome(Decision.STOP, reason="saga does not exist"))
        records = saga.records  # this step's and the earlier stages'; steps_of reads the rest when needed
        record = record_at(saga, index)
        if record.status != StepStatus.RUNNING or record.attempts != report.attempt:
            if must_own:
                raise _NotOwner(Outcome(Decision.STOP, reason="another attempt owns the step"))
            again = report.ok and late_success_to_undo(record)
            event(saga, EventKind.REPORT_DROPPED, step=record, attempt=report.attempt, ok=report.ok,
                  error=report.error, compensated_again=again,
                  note=f"the step had moved on to {record.status} (attempt {record.attempts}); not recorded"
                       + ("; its effects are undone again" if again else ""))
            if again:
                dispatch_late_compensation(saga, index, report.attempt, report.result)
            return Outcome(Decision.STOP, reason="another attempt owns the step")
        log_attempt_start(saga, record)
        definition = definition_of(saga, records)  # still the steps it was started with
        if report.ok:
            if definition.step_at(index).wait_for_signal:
                if not report.skip_wait and goes_forward(saga):
                    return begin_wait(saga, record, definition, report.result)
                return _succeed(saga, records, record, definition, report.result, wait_skipped=report.skip_wait)
            return _succeed(saga, records, record, definition, report.result)
        return _fail_attempt(saga, records, record, definition, report, policy or definition.step_at(index).retry)


def _succeed_unlocked(claim: Claim, report: Report) -> bool:
    """On PostgreSQL, the success of a plain step in the middle of its saga in one statement, with no lock before.

    Most reports are that one: the step succeeded, its saga runs, and what
    follows is the next step, which its chain sends. The transition then
    writes the step's row and two events and nothing on the saga's row
    (which ``_succeed`` would write only to move ``due_at`` or clear
    ``sweeps``): one conditional statement does it, in place of a locked
    read, two writes and a commit, four round trips fewer
    (``sql.succeed_step_if_running`` says what it checks). False when it
    does not apply or a condition no longer holds: the report is then
    recorded under the saga's lock, as any other.
    """
    definition, index = claim.definition, claim.index
    if (connection.vendor != "postgresql" or claim.began_at is None or report.skip_wait
            or claim.step.wait_for_signal or definition.is_parallel(index)):
        return False
    if definition.next_stage_start(index) is None:
        return sql.succeed_last_step_if_running(
            saga_id=claim.saga_id, index=index, attempt=report.attempt, began_at=claim.began_at,
            result=report.result, running=StepStatus.RUNNING, succeeded=StepStatus.SUCCEEDED,
            saga_running=SagaStatus.RUNNING, saga_succeeded=SagaStatus.SUCCEEDED,
            started=(EventKind.STEP_STARTED, started_detail(report.attempt)),
            ended=(EventKind.STEP_SUCCEEDED,
                   moved_detail(StepStatus.RUNNING, StepStatus.SUCCEEDED, attempt=report.attempt)),
            saga_ended=(EventKind.SAGA_SUCCEEDED, moved_detail(SagaStatus.RUNNING, SagaStatus.SUCCEEDED)))
    return sql.succeed_step_if_running(
        saga_id=claim.saga_id, index=index, attempt=report.attempt, began_at=claim.began_at, result=report.result,
        running=StepStatus.RUNNING, succeeded=StepStatus.SUCCEEDED, due_kept=due_range(),
        started=(EventKind.STEP_STARTED, started_detail(report.attempt)),
        ended=(EventKind.STEP_SUCCEEDED,
               moved_detail(StepStatus.RUNNING, StepStatus.SUCCEEDED, attempt=report.attempt)))


def _refuse(must_own: bool, outcome: Outcome) -> Outcome:
    if must_own:
        raise _NotOwner(outcome)
    return outcome


def _succeed(saga: SagaInstance, records: list[StepRecord], record: StepRecord, definition: Saga,
             result: Any, **detail: Any) -> Outcome:
    record.result = result
    record.error = ""
    record.finished_at = saga.db_now
    record.may_have_effects = False  # what its action did is now known: its output, undone by its compensation
    release(record)
    move_step(saga, record, StepStatus.SUCCEEDED, EventKind.STEP_SUCCEEDED, attempt=record.attempts, **detail)
    if goes_forward(saga) and is_paused(saga):
        # Recorded; what follows (the next step, the end of the saga) waits for ``resume``.
        return Outcome(Decision.STOP, reason="succeeded while the saga is paused")
    if saga.status != SagaStatus.RUNNING:
        # Cancelled, or a Parallel sibling failed, while this attempt ran: its
        # effects are recorded here and undone with the rest.
        if not record.has_compensation:
            event(saga, EventKind.NOTHING_TO_COMPENSATE, step=record, note="no compensation defined; left as is")
        if not is_paused(saga):  # paused while being undone: ``resume`` goes on with it
            continue_compensation(saga, steps_of(saga))
        return Outcome(Decision.STOP, reason=f"succeeded while the saga is {saga.status}")
    return _passed(saga, definition, record)


def _passed(saga: SagaInstance, definition: Saga, record: StepRecord) -> Outcome:
    """Step ``record`` of a running saga is passed (succeeded, or skipped): what follows it."""
    if not _stage_done(saga, definition, record):
        keep_due(saga)
        return Outcome(Decision.CONTINUE)  # a Parallel member with siblings still at work
    following = definition.next_stage_start(record.index)
    if following is None:
        move_saga(saga, SagaStatus.SUCCEEDED, EventKind.SAGA_SUCCEEDED)
        return Outcome(Decision.CONTINUE)
    keep_due(saga)
    if definition.is_parallel(record.index):
        # The join of a Parallel: the member whose success completes the stage
        # sends the next one. Under the saga's lock, of members finishing
        # together exactly one sees them all succeeded. A plain step sends
        # nothing: its chain goes on.
        dispatch_forward(saga, following)
    return Outcome(Decision.CONTINUE)


def _stage_done(saga: SagaInstance, definition: Saga, record: StepRecord) -> bool:
    """Every step of this step's stage has succeeded (counted in the database: a Parallel's members are not read)."""
    if not definition.is_parallel(record.index):
        return True
    return not StepRecord.objects.filter(saga_id=saga.pk, stage=record.stage).exclude(
        status__in=FORWARD_PASSED_STATUSES).exists()


def _fail_attempt(saga: SagaInstance, records: list[StepRecord], record: StepRecord, definition: Saga,
                  report: Report, policy: Retry) -> Outcome:
    paused = is_paused(saga)
    if report.infrastructure and goes_forward(saga):
        return _while_paused(saga, _attempt_not_counted(saga, record, report))
    if not goes_forward(saga):
        # Cancelled, or a Parallel sibling failed: no retry, the saga is being undone.
        fail_record(saga, record, report.error, blame=False, effects=report.effects, permanent=report.permanent,
                  timeout=report.timeout, note=f"not retried: the saga is {saga.paused_from or saga.status}")
        if not paused:  # paused while being undone: ``resume`` goes on with it
            continue_compensation(saga, steps_of(saga))
        return Outcome(Decision.STOP, reason=f"saga is {saga.status}")
    if report.permanent or not policy.allows_another(report.attempt - record.retry_base):
        # Failed for good: the compensation starts in this same transaction.
        # The task then ends normally, so the chain's error callback (there
        # for a task that dies without reporting) is not needed: one message
        # and one transaction fewer, and no exception for Celery to trace
        # (its failure path keeps about 75 KB of each worker's memory).
        fail_record(saga, record, report.error, effects=report.effects, permanent=report.permanent,
                  timeout=report.timeout)
        went = forward_failed(saga, steps_of(saga))
        return Outcome(Decision.STOP, reason=f"failed for good, {went}: {report.error}")
    delay = policy.delay_after(report.attempt - record.retry_base)
    detail = {"early_signal_discarded": True} if record.early_signal else {}
    record.error = report.error
    record.early_signal = None  # it answered this attempt's token; the retry hands out a new one
    release(record)
    record.next_attempt_at = saga.db_now + timedelta(seconds=delay)
    save_step(record)
    saga.due_at = record.next_attempt_at + timedelta(seconds=settings.SAGAS_STALL_AFTER)
    event(saga, EventKind.STEP_ATTEMPT_FAILED, step=record, attempt=report.attempt, error=report.error,
          timeout=report.timeout, retry_in=delay, **detail)
    return _while_paused(saga, Outcome(Decision.RETRY, countdown=delay, reason=report.error))


def _while_paused(saga: SagaInstance, outcome: Outcome) -> Outcome:
    """A retry decided for a paused saga is not sent: its time is recorded, and ``resume`` sends it."""
    if is_paused(saga) and outcome.decision is Decision.RETRY:
        return Outcome(Decision.STOP, reason=f"retry waits: the saga is paused ({outcome.reason})")
    return outcome


# A transactional attempt rolled back by a passing database error is tried again this soon.
_NOT_COUNTED_RETRY = 1.0


def _attempt_not_counted(saga: SagaInstance, record: StepRecord, report: Report) -> Outcome:
    """A transactional attempt that rolled back for a passing reason: nothing of it stays, so it is
    tried again at once and its number is given again (the task counts it with its infrastructure retries).
    (``record_step`` has written the attempt's start already.)"""
    record.attempts -= 1
    record.error = report.error
    release(record)
    record.next_attempt_at = saga.db_now
    save_step(record)
    keep_due(saga)
    event(saga, EventKind.STEP_ATTEMPT_FAILED, step=record, attempt=report.attempt, error=report.error,
          infrastructure=True, counted=False, retry_in=_NOT_COUNTED_RETRY)
    return Outcome(Decision.RETRY, countdown=_NOT_COUNTED_RETRY, reason=report.error, infrastructure=True)
