"""Forward recovery and operator controls, without a worker: the pivot, pause, resume, skip_step."""
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db.models.functions import Now

from sagas import (
    InvalidSagaInput,
    InvalidTransition,
    Parallel,
    Saga,
    SagaDefinitionError,
    Step,
    UnknownStep,
    cancel,
    complete_step,
    pause,
    registry,
    resume,
    skip_step,
    start_saga,
)
from sagas.engine import Decision, Report, claim_step, execute_compensation, execute_step, record_step, sweep
from sagas.errors import InvalidRequest
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import compensations_due, make_due

PIVOTED = "tests.pivoted"  # a, ship (the pivot), notify, close
SAGA = "tests.three_steps"


def noop(ctx):
    return None


@pytest.fixture(autouse=True)
def sent_at_once(monkeypatch):
    """What the engine sends after commit is recorded (``sent``) when it is decided: these tests run
    inside one transaction that never commits."""
    import types

    from django.db import transaction

    from sagas.engine import core

    monkeypatch.setattr(core, "transaction", types.SimpleNamespace(
        atomic=transaction.atomic, on_commit=lambda send, using=None, robust=False: send()))


def statuses(saga):
    return list(StepRecord.objects.filter(saga=saga).order_by("index").values_list("status", flat=True))


def status_of(saga):
    return SagaInstance.objects.get(pk=saga.pk).status


def kinds(saga):
    return list(SagaEvent.objects.filter(saga=saga).values_list("kind", flat=True))


# --- registration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("steps, message", [
    ([Step("a", noop, pivot=True), Step("b", noop, pivot=True)], "at most one pivot"),
    ([Step("a", noop), Parallel("p", Step("b", noop, pivot=True), Step("c", noop))], "not a Parallel member"),
    ([Step("a", noop, pivot=True), Step("b", noop, compensation=noop)], "may not declare a compensation"),
    ([Step("a", noop, pivot=True), Parallel("p", Step("b", noop), Step("c", noop, compensation=noop))],
     "'c' comes after the pivot"),
    ([Step("a", noop, pivot="yes")], "pivot must be True or False"),
])
def test_a_pivot_is_checked_when_registered(steps, message):
    with pytest.raises(SagaDefinitionError, match=message):
        registry.register(Saga(name="tests.bad_pivot", steps=steps))
    assert "tests.bad_pivot" not in registry


def test_a_pivot_before_steps_without_compensations_registers_and_is_described():
    saga = Saga(name="tests.good_pivot", steps=[
        Step("a", noop, compensation=noop), Step("b", noop, compensation=noop, pivot=True),
        Parallel("after", Step("c", noop), Step("d", noop))])
    saga.validate()
    assert saga.pivot_index == 1
    assert [saga.after_pivot(i) for i in range(4)] == [False, False, True, True]
    assert [s["pivot"] for s in saga.describe()["steps"]] == [False, True, False, False]


# --- the pivot ------------------------------------------------------------------------------------


def run_to(saga, index):
    for i in range(index):
        assert execute_step(saga.id, i).decision is Decision.CONTINUE


def test_a_failure_before_the_pivot_compensates_as_before(db, sent):
    saga = start_saga(PIVOTED, input={"fail": {"ship": "permanent"}})
    run_to(saga, 1)

    assert execute_step(saga.id, 1).decision is Decision.STOP

    assert status_of(saga) == SagaStatus.COMPENSATING
    assert compensations_due(saga) == [0]  # the pivot refused: nothing of it to undo


def test_a_failure_after_the_pivot_pauses_the_saga_and_compensates_nothing(db, sent, caplog,
                                                                         django_capture_on_commit_callbacks):
    saga = start_saga(PIVOTED, input={"fail": {"notify": "permanent"}})
    run_to(saga, 2)
    sent.clear()

    with django_capture_on_commit_callbacks(execute=True):
        outcome = execute_step(saga.id, 2)

    saga.refresh_from_db()
    assert outcome.decision is Decision.STOP
    assert saga.status == SagaStatus.PAUSED
    assert (saga.paused_from, saga.pause_cause) == (SagaStatus.RUNNING, "after_pivot")
    assert saga.due_at is None  # nothing for the sweeper to find
    assert statuses(saga) == [StepStatus.SUCCEEDED, StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.PENDING]
    paused = saga.events.get(kind=EventKind.SAGA_PAUSED)
    assert paused.detail["cause"] == "after_pivot" and paused.detail["failed_steps"] == ["notify"]
    assert "notify refused" in paused.detail["error"]
    assert sent == []
    assert not saga.events.filter(kind__in=[EventKind.SAGA_COMPENSATING, EventKind.COMPENSATION_STARTED]).exists()
    assert any("paused past its pivot" in r.getMessage() for r in caplog.records)  # the alert


def test_attempts_exhausted_after_the_pivot_pause_too(db, sent):
    saga = start_saga(PIVOTED, input={"fail": {"notify": "always"}})
    run_to(saga, 2)
    for _ in range(2):
        assert execute_step(saga.id, 2).decision is Decision.RETRY
        StepRecord.objects.filter(saga=saga, index=2).update(next_attempt_at=Now())

    assert execute_step(saga.id, 2).decision is Decision.STOP

    assert status_of(saga) == SagaStatus.PAUSED


def test_cancel_past_the_pivot_is_refused_and_changes_nothing(db, sent):
    saga = start_saga(PIVOTED, input={})
    run_to(saga, 2)
    events = SagaEvent.objects.count()

    with pytest.raises(InvalidTransition, match="past its pivot"):
        cancel(saga)

    assert status_of(saga) == SagaStatus.RUNNING and SagaEvent.objects.count() == events


def test_resume_after_the_pivot_runs_the_step_again_with_a_fresh_budget_and_corrected_input(db, sent):
    saga = start_saga(PIVOTED, input={"fail": {"notify": "always"}})
    run_to(saga, 2)
    for _ in range(3):
        execute_step(saga.id, 2)
        StepRecord.objects.filter(saga=saga, index=2).update(next_attempt_at=Now())
    assert status_of(saga) == SagaStatus.PAUSED
    person = User.objects.create_user("operator")
    sent.clear()

    resumed = resume(saga, input={"fail": {}}, by=person)

    assert resumed.status == SagaStatus.RUNNING and resumed.due_at is not None
    assert resumed.input == {"fail": {}}
    event = resumed.events.get(kind=EventKind.SAGA_RESUMED, detail__phase="person")
    assert event.detail["by"] == "operator" and event.detail["changed_input"] == ["fail"]
    notify = resumed.steps.get(index=2)
    assert (notify.status, notify.attempts, notify.retry_base) == (StepStatus.RUNNING, 3, 3)
    assert resumed.events.filter(kind=EventKind.STEP_RETRIED).count() == 1
    assert sent == [("forward", saga.id, 2)]
    assert execute_step(saga.id, 2).decision is Decision.CONTINUE  # attempt 4, the first of a fresh budget
    assert execute_step(saga.id, 3).decision is Decision.CONTINUE
    saga.refresh_from_db()
    assert saga.status == SagaStatus.SUCCEEDED and saga.results["notify"]["attempt"] == 4


def test_a_fresh_budget_is_a_whole_one(db, sent):
    saga = start_saga(PIVOTED, input={"fail": {"notify": "always"}})
    run_to(saga, 2)
    for _ in range(3):
        execute_step(saga.id, 2)
        StepRecord.objects.filter(saga=saga, index=2).update(next_attempt_at=Now())
    resume(saga)

    decisions = []
    for _ in range(3):
        decisions.append(execute_step(saga.id, 2).decision)
        StepRecord.objects.filter(saga=saga, index=2).update(next_attempt_at=Now())

    assert decisions == [Decision.RETRY, Decision.RETRY, Decision.STOP]  # three more attempts, then paused again
    assert status_of(saga) == SagaStatus.PAUSED
    assert StepRecord.objects.get(saga=saga, index=2).attempts == 6


def test_resume_with_invalid_input_is_refused_and_changes_nothing(db, sent):
    saga = start_saga(PIVOTED, input={"fail": {"notify": "permanent"}})
    run_to(saga, 2)
    execute_step(saga.id, 2)  # fails for good after the pivot: paused
    events = SagaEvent.objects.count()

    with pytest.raises(InvalidSagaInput):
        resume(saga, input={"amount": float("nan")})
    with pytest.raises(InvalidSagaInput, match="must be a JSON object"):
        resume(saga, input=["not", "an", "object"])

    saga.refresh_from_db()
    assert saga.status == SagaStatus.PAUSED and saga.input == {"fail": {"notify": "permanent"}}
    assert SagaEvent.objects.count() == events
    assert statuses(saga)[2] == StepStatus.FAILED


def test_skip_step_takes_a_persons_result_and_goes_on(db, sent):
    saga = start_saga(PIVOTED, input={"fail": {"notify": "permanent"}})
    run_to(saga, 2)
    execute_step(saga.id, 2)  # fails for good after the pivot: paused
    person = User.objects.create_user("clerk")
    sent.clear()

    skipped = skip_step(saga, "notify", result={"value": 100, "by_hand": True}, reason="phoned the customer",
                        by=person)

    assert skipped.status == SagaStatus.RUNNING
    notify = skipped.steps.get(name="notify")
    assert notify.status == StepStatus.SKIPPED and notify.result == {"value": 100, "by_hand": True}
    event = skipped.events.get(kind=EventKind.STEP_SKIPPED)
    assert event.detail["reason"] == "phoned the customer" and event.detail["by"] == "clerk"
    assert sent == [("forward", saga.id, 3)]
    assert execute_step(saga.id, 3).decision is Decision.CONTINUE
    saga.refresh_from_db()
    assert saga.status == SagaStatus.SUCCEEDED
    assert saga.results["notify"] == {"value": 100, "by_hand": True}
    assert saga.results["close"]["value"] == 100 + 1 + 2 + 1  # close saw the person's result among its inputs


def test_skip_step_refuses_what_it_cannot_take(db, sent):
    saga = start_saga(PIVOTED, input={"fail": {"notify": "permanent"}})
    run_to(saga, 2)
    execute_step(saga.id, 2)  # fails for good after the pivot: paused
    events = SagaEvent.objects.count()

    with pytest.raises(InvalidRequest) as missing:
        skip_step(saga, "notify", reason="  ")
    assert missing.value.errors == {"reason": ["a reason is required"]}
    with pytest.raises(InvalidRequest, match="must be a JSON object"):
        skip_step(saga, "notify", result=[1], reason="by hand")
    with pytest.raises(UnknownStep):
        skip_step(saga, "nope", reason="by hand")
    with pytest.raises(InvalidTransition, match="only a step that failed for good after the pivot"):
        skip_step(saga, "ship", reason="by hand")

    assert SagaEvent.objects.count() == events and status_of(saga) == SagaStatus.PAUSED


def test_skip_step_of_a_saga_not_paused_is_refused(db, sent):
    saga = start_saga(PIVOTED, input={})
    run_to(saga, 2)
    with pytest.raises(InvalidTransition):
        skip_step(saga, "notify", reason="by hand")


# --- pause and resume -------------------------------------------------------------------------------


def test_pause_while_a_step_runs_records_its_end_and_starts_nothing_until_resumed(db, sent):
    saga = start_saga(SAGA, input={})
    claim = claim_step(saga.id, 0, None)
    person = User.objects.create_user("ops")

    paused = pause(saga, reason="checking the supplier", by=person)

    assert paused.status == SagaStatus.PAUSED and paused.due_at is None
    event = paused.events.get(kind=EventKind.SAGA_PAUSED)
    assert event.detail == {"from": "running", "to": "paused", "cause": "person", "reason": "checking the supplier",
                            "by": "ops", "by_user_id": person.pk}
    outcome = record_step(saga.id, 0, Report(claim.attempt, ok=True, result={"value": 1}), None)
    assert outcome.decision is Decision.STOP  # the chain goes no further
    assert statuses(saga)[0] == StepStatus.SUCCEEDED
    assert execute_step(saga.id, 1).decision is Decision.STOP  # a message already on its way starts nothing
    assert statuses(saga)[1] == StepStatus.PENDING and status_of(saga) == SagaStatus.PAUSED
    assert SagaInstance.objects.get(pk=saga.pk).due_at is None
    sent.clear()

    resumed = resume(saga, by=person)

    assert resumed.status == SagaStatus.RUNNING
    assert sent == [("forward", saga.id, 1)]
    run_to(saga, 0)
    for index in (1, 2):
        assert execute_step(saga.id, index).decision is Decision.CONTINUE
    assert status_of(saga) == SagaStatus.SUCCEEDED


def test_resume_while_the_attempt_still_runs_sends_nothing_twice(db, sent):
    saga = start_saga(SAGA, input={})
    claim = claim_step(saga.id, 0, None)
    pause(saga)
    sent.clear()

    resumed = resume(saga)

    assert sent == []  # the attempt at work reports, and its chain goes on
    assert resumed.due_at is not None
    assert record_step(saga.id, 0, Report(claim.attempt, ok=True, result={"value": 1}), None).decision \
        is Decision.CONTINUE


def test_a_retry_decided_while_paused_waits_for_resume(db, sent):
    saga = start_saga(SAGA, input={"flaky": {"a": 1}})
    claim = claim_step(saga.id, 0, None)
    pause(saga)

    outcome = record_step(saga.id, 0, Report(claim.attempt, ok=False, error="ConnectionError: flaked"), None)

    assert outcome.decision is Decision.STOP
    record = StepRecord.objects.get(saga=saga, index=0)
    assert record.status == StepStatus.RUNNING and record.next_attempt_at is not None
    assert SagaInstance.objects.get(pk=saga.pk).due_at is None
    StepRecord.objects.filter(pk=record.pk).update(next_attempt_at=Now())
    sent.clear()
    resume(saga)
    assert sent == [("forward", saga.id, 0)]
    assert execute_step(saga.id, 0).decision is Decision.CONTINUE


def test_a_failure_for_good_while_paused_compensates_only_when_resumed(db, sent):
    saga = start_saga(SAGA, input={"fail": {"a": "permanent"}})
    claim = claim_step(saga.id, 0, None)
    pause(saga)

    record_step(saga.id, 0, Report(claim.attempt, ok=False, error="PermanentError: a refused", permanent=True), None)

    assert status_of(saga) == SagaStatus.PAUSED and statuses(saga)[0] == StepStatus.FAILED
    resume(saga)
    assert status_of(saga) == SagaStatus.COMPENSATED  # a failed before doing anything: nothing to undo


def test_pause_a_pending_saga_then_resume_it(db, sent):
    saga = start_saga(SAGA, input={})
    pause(saga)
    assert execute_step(saga.id, 0).decision is Decision.STOP
    assert statuses(saga)[0] == StepStatus.PENDING
    sent.clear()

    resumed = resume(saga)

    assert resumed.status == SagaStatus.PENDING
    assert sent == [("forward", saga.id, 0)]
    assert execute_step(saga.id, 0).decision is Decision.CONTINUE
    assert status_of(saga) == SagaStatus.RUNNING


def test_pause_during_compensation_holds_it_and_resume_goes_on(db, sent):
    saga = start_saga(SAGA, input={"fail": {"c": "permanent"}})
    for index in range(3):
        execute_step(saga.id, index)
    assert status_of(saga) == SagaStatus.COMPENSATING
    assert execute_compensation(saga.id, 1).decision is Decision.CONTINUE

    pause(saga)

    assert execute_compensation(saga.id, 0).decision is Decision.STOP  # the chain's next message starts nothing
    assert statuses(saga)[0] == StepStatus.SUCCEEDED
    sent.clear()
    resumed = resume(saga)
    assert resumed.status == SagaStatus.COMPENSATING
    assert sent == [("compensate", saga.id, [0])]
    assert execute_compensation(saga.id, 0).decision is Decision.CONTINUE
    assert status_of(saga) == SagaStatus.COMPENSATED


def test_a_compensation_failing_for_good_while_paused_fails_the_saga_on_resume(db, sent):
    saga = start_saga(SAGA, input={"fail": {"c": "permanent"}, "comp_fail": {"b": 5}})
    for index in range(3):
        execute_step(saga.id, index)
    from sagas.engine.compensation import _claim_compensation, record_compensation

    claims = []
    for _ in range(2):  # COMP allows two attempts
        claim = _claim_compensation(saga.id, 1, None)
        claims.append(claim)
        if len(claims) == 1:
            record_compensation(saga.id, 1, Report(claim.attempt, ok=False, error="RuntimeError: cannot undo b"), None)
            StepRecord.objects.filter(saga=saga, index=1).update(next_attempt_at=Now())
    pause(saga)
    record_compensation(saga.id, 1, Report(claims[1].attempt, ok=False, error="RuntimeError: cannot undo b"), None)

    assert status_of(saga) == SagaStatus.PAUSED and statuses(saga)[1] == StepStatus.COMPENSATION_FAILED
    assert resume(saga).status == SagaStatus.FAILED


def test_a_signal_while_paused_is_recorded_and_what_follows_waits(db, sent):
    saga = start_saga("tests.gated", input={})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)
    assert statuses(saga)[1] == StepStatus.WAITING
    pause(saga)
    sent.clear()

    complete_step(saga, "gate", result={"approved": True})

    assert statuses(saga)[1] == StepStatus.SUCCEEDED and status_of(saga) == SagaStatus.PAUSED
    assert sent == []
    resume(saga)
    assert sent == [("forward", saga.id, 2)]


def test_a_deadline_passing_while_paused_counts_on_resume(db, sent):
    saga = start_saga("tests.gated", input={})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)
    pause(saga)
    StepRecord.objects.filter(saga=saga, index=1).update(signal_deadline=Now() - timedelta(seconds=5))

    assert sweep().waits_timed_out == 0  # the sweeper leaves a paused saga alone
    assert statuses(saga)[1] == StepStatus.WAITING
    resumed = resume(saga)

    assert resumed.status == SagaStatus.COMPENSATING
    gate = resumed.steps.get(name="gate")
    assert gate.status == StepStatus.FAILED and "SignalTimeout" in gate.error


def test_the_sweeper_leaves_a_paused_saga_alone(db, sent):
    saga = start_saga(SAGA, input={})
    claim_step(saga.id, 0, None)
    StepRecord.objects.filter(saga=saga, index=0).update(lease_expires_at=Now() - timedelta(seconds=1))
    pause(saga)
    SagaInstance.objects.filter(pk=saga.pk).update(due_at=Now())  # even if it were due

    report = sweep()

    assert report.examined == 1 and report.total == 0
    assert status_of(saga) == SagaStatus.PAUSED and statuses(saga)[0] == StepStatus.RUNNING


def test_resume_frees_an_attempt_lost_while_paused(db, sent):
    saga = start_saga(SAGA, input={})
    claim_step(saga.id, 0, None)
    pause(saga)
    StepRecord.objects.filter(saga=saga, index=0).update(lease_expires_at=Now() - timedelta(seconds=1))
    sent.clear()

    resume(saga)

    assert sent == [("forward", saga.id, 0)]
    assert SagaEvent.objects.filter(saga=saga, kind=EventKind.STEP_ATTEMPT_LOST).count() == 1
    assert execute_step(saga.id, 0).decision is Decision.CONTINUE


def test_cancel_of_a_paused_saga_before_its_pivot_compensates(db, sent):
    saga = start_saga(PIVOTED, input={})
    run_to(saga, 1)
    pause(saga)

    cancelled = cancel(saga, reason="customer withdrew")

    assert cancelled.status == SagaStatus.COMPENSATING
    assert compensations_due(saga) == [0]


@pytest.mark.parametrize("move", ["pause", "resume"])
def test_moves_the_state_machine_refuses_change_nothing(db, sent, move):
    saga = start_saga(SAGA, input={})
    if move == "pause":
        cancel(saga)  # compensated: finished
    events = SagaEvent.objects.count()

    with pytest.raises(InvalidTransition):
        (pause if move == "pause" else resume)(saga)

    assert SagaEvent.objects.count() == events


def test_a_paused_saga_cannot_be_paused_twice_nor_released_as_held(db, sent):
    from sagas.engine import release_held

    saga = start_saga(SAGA, input={})
    pause(saga)
    with pytest.raises(InvalidTransition):
        pause(saga)
    with pytest.raises(InvalidTransition, match="not held"):
        release_held(saga)


def test_make_due_does_not_wake_a_paused_saga(db, sent):
    saga = start_saga(SAGA, input={})
    run_to(saga, 1)
    pause(saga)
    make_due(saga)
    sent.clear()
    sweep()
    assert sent == [] and status_of(saga) == SagaStatus.PAUSED
