"""Faults a second review of the engine confirmed, each reproduced here before it was fixed.

The Parallel member left in place on PostgreSQL (fault 1) is found by the
interleaving harness (``test_interleavings.py``); the faults below need no
second thread, or one at a single, named point.
"""
from datetime import timedelta
from unittest import mock

import pytest
from django.db import OperationalError, connection, transaction
from django.db.models.functions import Now

from sagas import Retry, Saga, Step, cancel, engine, registry, start_saga
from sagas.engine import complete_step_by_token, fail_step_by_token
from sagas.engine import Decision, Report, execute_compensation, execute_step, sweep
from sagas.errors import UnknownSignalToken
from sagas.models import ChaosEffect, EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import compensations_due, make_due, started_in_thread
from tests.testapp.models import Ledger

LINE = "tests.effects_line"  # a -> b -> c, each leaving a ChaosEffect row
GATED = "tests.gated"  # a -> gate (waits for a signal) -> c


def _undo_all(saga):
    for index in compensations_due(saga):
        execute_compensation(saga.id, index)
    return SagaInstance.objects.get(pk=saga.pk)


def _db_now():
    with connection.cursor() as cur:
        cur.execute("SELECT CURRENT_TIMESTAMP")
        value = cur.fetchone()[0]
    if isinstance(value, str):  # SQLite
        from datetime import datetime, timezone
        value = datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
    return value


# --- fault 2: a lost attempt that is retried and then fails is still compensated -----------------------


def _lost_attempt_of_b(saga):
    """Attempt 1 of b applied its effect, then its worker died: its lease runs out."""
    claim = engine.claim_step(saga.id, 1, None)
    ChaosEffect.objects.create(key=claim.context.idempotency_key, saga_id=saga.id, step="b", applied=1, runs=1)
    StepRecord.objects.filter(saga=saga, index=1).update(lease_expires_at=Now() - timedelta(seconds=1))


@pytest.mark.parametrize("taken_over_by", ["the next delivery", "the sweeper"])
def test_a_lost_attempt_retried_then_refused_is_compensated(db, sent, taken_over_by):
    saga = start_saga(LINE, input={"fail": "b"})  # every attempt of b that reports refuses for good
    execute_step(saga.id, 0)
    _lost_attempt_of_b(saga)
    if taken_over_by == "the sweeper":
        make_due(saga)
        sweep()

    assert execute_step(saga.id, 1).decision is Decision.STOP  # attempt 2 refused: compensating

    b = saga.steps.get(name="b")
    assert (b.status, b.attempts, b.may_have_effects) == (StepStatus.FAILED, 2, True)
    assert compensations_due(saga) == [1, 0]
    saga = _undo_all(saga)
    assert saga.status == SagaStatus.COMPENSATED
    assert ChaosEffect.objects.get(saga_id=saga.id, step="b").undone_at is not None


def test_a_lost_attempt_awaiting_its_retry_when_the_saga_is_cancelled_is_compensated(db, sent):
    saga = start_saga(LINE, input={})
    execute_step(saga.id, 0)
    _lost_attempt_of_b(saga)
    make_due(saga)
    sweep()  # the lost attempt is freed; its retry is on its way

    cancel(saga, reason="stop")

    assert compensations_due(saga) == [1, 0]
    assert _undo_all(saga).status == SagaStatus.COMPENSATED
    assert ChaosEffect.objects.get(saga_id=saga.id, step="b").undone_at is not None


def test_a_step_that_succeeds_after_a_lost_attempt_keeps_its_output_in_the_results(db, sent):
    saga = start_saga(LINE, input={})
    execute_step(saga.id, 0)
    _lost_attempt_of_b(saga)

    assert execute_step(saga.id, 1).decision is Decision.CONTINUE
    execute_step(saga.id, 2)

    saga.refresh_from_db()
    assert saga.status == SagaStatus.SUCCEEDED and set(saga.results) == {"a", "b", "c"}


# --- fault 3: after a long step, a lost next message is resent within the stall time -------------------


def test_after_a_long_step_the_saga_is_due_a_stall_time_after_its_success_not_at_the_old_lease(
        db, sent, settings):
    saga = start_saga(LINE, input={})
    execute_step(saga.id, 0)
    claim = engine.claim_step(saga.id, 1, None, definition=registry.get(LINE))  # b works for minutes...
    make_due(saga)
    sweep()  # ...so the sweeper looked, found it live, and made the saga due at its lease
    assert SagaInstance.objects.get(pk=saga.pk).due_at > _db_now() + timedelta(seconds=60)

    engine.record_step(saga.id, 1, Report(claim.attempt, ok=True, result={}), None, claim=claim)

    # The message for c is lost: the sweeper must look a stall time from now, not when b's lease ends.
    due = SagaInstance.objects.get(pk=saga.pk).due_at
    assert due <= _db_now() + timedelta(seconds=settings.SAGAS_STALL_AFTER + 1)


# --- fault 4: one locked saga never stops the sweeper; one sweep at a time -----------------------------


@pytest.mark.skipif(connection.vendor == "sqlite", reason="SQLite has one writer at a time and no row locks")
def test_a_saga_whose_row_another_transaction_holds_is_skipped_and_the_others_are_swept(transactional_db, sent):
    locked, other = start_saga(LINE, input={}), start_saga(LINE, input={})
    make_due(locked)
    make_due(other)
    sent.clear()  # their starts' messages
    swept = {}

    with transaction.atomic():  # a long transition (or a person's shell) holds the saga's row
        SagaInstance.objects.select_for_update().get(pk=locked.pk)
        sweeping = started_in_thread(lambda: swept.update(report=sweep()), settle=15)
        assert not sweeping.is_alive()  # it did not wait for the lock

    report = swept["report"]
    assert report.resumed_forward == 1 and report.busy == 1
    assert [m[1] for m in sent] == [other.id]
    assert SagaInstance.objects.get(pk=locked.pk).due_at is not None  # still due: the next sweep looks again


def test_a_sweep_started_while_another_runs_does_nothing(db, sent):
    saga = start_saga(LINE, input={})
    make_due(saga)

    with engine.recovery.sweeping() as mine:
        assert mine
        report = sweep()

    assert report.skipped and report.examined == 0 and sent == []
    assert sweep().resumed_forward == 1  # once the other has ended


def test_a_sweepers_lease_left_by_a_process_that_died_mid_sweep_is_taken_over_at_once(db, sent):
    from sagas.models import SweeperLease

    # A pool child killed while it swept: its process is gone from this machine, its lease a minute long.
    from sagas import liveness

    dead = liveness.identity().rsplit("|", 2)[0] + "|999999|deadbeef"
    SweeperLease.objects.create(id="sweeper", holder=f"{dead}#0a1b2c3d", until=Now() + timedelta(seconds=60))
    saga = start_saga(LINE, input={})
    make_due(saga)

    report = sweep()

    assert not report.skipped and report.resumed_forward == 1


def test_a_saga_resumed_by_an_overlapping_sweep_is_not_resent_again(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(LINE, input={})
    make_due(saga)

    with django_capture_on_commit_callbacks(execute=True):
        assert engine.resume_stalled(saga.id) == "forward"
        assert engine.resume_stalled(saga.id) is None  # no longer due: the other sweep's resend stands

    assert len(sent) == 1 and SagaInstance.objects.get(pk=saga.pk).sweeps == 1


def test_the_sweepers_beat_messages_expire_so_they_never_pile_up(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["sagas-sweep"]
    assert entry["options"]["expires"] == settings.SAGAS_SWEEP_EXPIRES
    # Long enough to outlast a backed-up queue (a shorter expiry dropped every sweep in saga_chaos runs).
    assert settings.SAGAS_SWEEP_EXPIRES > 2 * settings.SAGAS_STALL_AFTER


# --- fault 5: a token callback that arrives before the action returns is kept --------------------------


def _gate_at_work(saga):
    execute_step(saga.id, 0)
    return engine.claim_step(saga.id, 1, None)


def test_a_token_callback_that_arrives_while_the_action_runs_completes_the_step_when_it_returns(
        db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(GATED, input={})
    claim = _gate_at_work(saga)

    complete_step_by_token(claim.context.signal_token, result={"signed": True})
    assert saga.steps.get(name="gate").status == StepStatus.RUNNING  # the action has not returned yet
    with django_capture_on_commit_callbacks(execute=True):
        engine.record_step(saga.id, 1, Report(claim.attempt, ok=True, result={"value": 2}), None, claim=claim)

    gate = saga.steps.get(name="gate")
    assert (gate.status, gate.result) == (StepStatus.SUCCEEDED, {"value": 2, "signed": True})
    assert sent == [("forward", saga.id, 2)]
    signal = saga.events.get(kind=EventKind.STEP_SIGNALLED)
    assert signal.detail["by"] == "token" and signal.detail["early"] is True


def test_an_early_token_refusal_fails_the_step_when_its_action_returns_and_undoes_it(db, sent):
    saga = start_saga(GATED, input={})
    claim = _gate_at_work(saga)

    fail_step_by_token(claim.context.signal_token, error="declined")
    engine.record_step(saga.id, 1, Report(claim.attempt, ok=True, result={"value": 2}), None, claim=claim)

    gate = saga.steps.get(name="gate")
    assert gate.status == StepStatus.FAILED and gate.error == "declined"
    assert compensations_due(saga) == [1, 0]  # its action ran: undone with the rest


def test_an_early_token_callback_is_taken_once(db, sent):
    saga = start_saga(GATED, input={})
    claim = _gate_at_work(saga)
    complete_step_by_token(claim.context.signal_token)

    with pytest.raises(UnknownSignalToken):
        complete_step_by_token(claim.context.signal_token)


def test_an_early_token_callback_dies_with_an_attempt_that_fails(db, sent):
    saga = start_saga(GATED, input={})
    claim = _gate_at_work(saga)
    complete_step_by_token(claim.context.signal_token)

    outcome = engine.record_step(saga.id, 1, Report(claim.attempt, ok=False, error="boom"), None, claim=claim)
    assert outcome.decision is Decision.RETRY  # the retry makes a new attempt, with a token of its own
    StepRecord.objects.filter(saga=saga, index=1).update(next_attempt_at=None)
    retry = engine.claim_step(saga.id, 1, None)
    engine.record_step(saga.id, 1, Report(retry.attempt, ok=True, result={}), None, claim=retry)

    assert saga.steps.get(name="gate").status == StepStatus.WAITING  # the old callback does not count


# --- fault 6: an exception text no database stores as given ----------------------------------------------


def _raises_nul(ctx):
    raise RuntimeError("bad \x00 byte from the card service")


def test_an_exception_whose_text_holds_a_nul_fails_the_attempt_like_any_other(db, sent):
    registry.register(Saga("tests.nul_error", steps=[Step("a", _raises_nul, retry=Retry(max_attempts=1))]))
    try:
        saga = start_saga("tests.nul_error", input={})

        outcome = execute_step(saga.id, 0)

        a = saga.steps.get(name="a")
        assert outcome.decision is Decision.STOP
        assert a.status == StepStatus.FAILED and "bad \\x00 byte" in a.error and a.lease_expires_at is None
        assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATED
    finally:
        registry.unregister("tests.nul_error")


def test_describe_error_makes_any_exception_text_storable():
    text = engine.core.describe_error(RuntimeError("nul \x00 and a lone \ud800 surrogate"))

    assert engine.core.json_problem(text) is None and "\\x00" in text


# --- fault 7: a passing database error while a transactional success is recorded uses no attempt -------


def test_a_passing_database_error_while_a_transactional_success_is_recorded_uses_no_attempt(db, sent):
    saga = start_saga("tests.ledger", input={"amount": 5})  # credit: transactional, at most 2 attempts
    real = engine.forward.record_step
    failures = {"left": 2}  # more than the step's own attempts allow

    def flaky(*args, must_own=False, **kwargs):
        if must_own and failures["left"]:
            failures["left"] -= 1
            raise OperationalError("server closed the connection unexpectedly")
        return real(*args, must_own=must_own, **kwargs)

    outcomes = []
    with mock.patch.object(engine.forward, "record_step", flaky):
        for _ in range(4):
            outcome = execute_step(saga.id, 0)
            outcomes.append(outcome.decision)
            if outcome.decision is not Decision.RETRY:
                break
            assert outcome.infrastructure  # counted with the task's infrastructure retries
            StepRecord.objects.filter(saga=saga, index=0).update(next_attempt_at=None)

    credit = saga.steps.get(name="credit")
    assert outcomes[-1] is Decision.CONTINUE
    assert (credit.status, credit.attempts) == (StepStatus.SUCCEEDED, 1)
    assert list(Ledger.objects.filter(saga_id=saga.id).values_list("amount", flat=True)) == [5]


# --- smaller faults ---------------------------------------------------------------------------------------


def test_a_retry_that_arrives_early_by_the_databases_clock_waits_for_its_time_instead_of_being_dropped(db, sent):
    saga = start_saga(LINE, input={})
    claim = engine.claim_step(saga.id, 0, None)
    engine.record_step(saga.id, 0, Report(claim.attempt, ok=False, error="flaky"), None)
    StepRecord.objects.filter(saga=saga, index=0).update(next_attempt_at=Now() + timedelta(seconds=5))

    outcome = execute_step(saga.id, 0)

    assert outcome.decision is Decision.RETRY and 3 < outcome.countdown <= 5.5


def test_the_heartbeat_goes_on_after_an_interface_error(db):
    import threading

    from django.db import InterfaceError

    from sagas import liveness

    stop = threading.Event()
    beats = []

    def beat():
        beats.append(1)
        if len(beats) == 1:
            raise InterfaceError("connection already closed")
        stop.set()

    with mock.patch.object(liveness, "beat_once", beat), mock.patch.object(liveness, "close_old_connections"):
        liveness._beat_forever(stop, interval=0.01)

    assert len(beats) == 2


# --- fencing: a late success of an attempt judged dead, after its step was undone ---------------------------


def test_a_late_success_of_an_attempt_judged_dead_after_its_step_was_undone_undoes_it_again(
        db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(LINE, input={})
    execute_step(saga.id, 0)
    stalled = engine.claim_step(saga.id, 1, None)  # attempt 1: its worker stops answering (a long pause)
    StepRecord.objects.filter(saga=saga, index=1).update(lease_expires_at=Now() - timedelta(seconds=1))
    cancel(saga, reason="stop")  # b's attempt is judged lost: b is undone with a
    saga = _undo_all(saga)
    assert saga.status == SagaStatus.COMPENSATED
    sent.clear()

    # The paused process wakes: its action applied its effect, and it reports success.
    from sagas.chaos import apply_effect
    output = apply_effect(stalled.context)
    with django_capture_on_commit_callbacks(execute=True):
        engine.record_step(saga.id, 1, Report(stalled.attempt, ok=True, result=output), None, claim=stalled)

    dropped = saga.events.get(kind=EventKind.REPORT_DROPPED)
    assert dropped.detail["compensated_again"] is True
    assert sent == [("late", saga.id, (1, stalled.attempt, output))]
    assert engine.compensate_late_success(saga.id, 1, stalled.attempt, output).decision is Decision.CONTINUE
    effect = ChaosEffect.objects.get(saga_id=saga.id, step="b")
    assert effect.undone_at is not None and effect.undo_runs == 1  # the first undo found nothing yet
    assert saga.events.filter(kind=EventKind.LATE_SUCCESS_COMPENSATED).count() == 1
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATED  # the state machine did not move


def test_a_late_failure_report_is_only_dropped(db, sent):
    saga = start_saga(LINE, input={})
    stalled = engine.claim_step(saga.id, 0, None)
    StepRecord.objects.filter(saga=saga, index=0).update(lease_expires_at=Now() - timedelta(seconds=1))
    cancel(saga, reason="stop")
    _undo_all(saga)
    sent.clear()

    engine.record_step(saga.id, 0, Report(stalled.attempt, ok=False, error="boom"), None, claim=stalled)

    assert sent == [] and saga.events.get(kind=EventKind.REPORT_DROPPED).detail["compensated_again"] is False


# --- a definition whose steps changed under the same version: every path holds the saga ------------------


@pytest.mark.parametrize("named", [True, False], ids=["messages naming the saga", "older messages"])
def test_a_saga_whose_steps_changed_under_its_version_is_held_for_a_person_on_every_path(db, sent, named):
    definition = registry.get(LINE)
    names = {"saga_type": definition.name, "version": definition.version} if named else {}
    saga = start_saga(LINE, input={})
    StepRecord.objects.filter(saga=saga, index=2).update(name="c_before_the_edit")  # the code now says "c"

    outcomes = [execute_step(saga.id, index, **names).decision for index in range(3)]

    saga.refresh_from_db()
    assert outcomes == [Decision.CONTINUE, Decision.CONTINUE, Decision.STOP]
    assert saga.status == SagaStatus.RUNNING and saga.due_at is None and "new version" in saga.error
    assert saga.events.filter(kind=EventKind.SAGA_STUCK).count() == 1
    assert saga.steps.get(index=2).attempts == 0  # nothing ran with the edited definition
