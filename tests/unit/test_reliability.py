"""Fault paths of the engine, without a worker: what it decides when things go wrong.

Each test names the fault it reproduces; the ones that need a real worker,
a kill or a broker are in tests/integration/test_reliability.py.
"""
from datetime import timedelta
from unittest import mock

import pytest
from django.db import OperationalError, connection
from django.db.models.functions import Now
from django.utils import timezone

from sagas import InvalidSagaInput, Saga, Step, cancel, registry, resubmit, start_saga
from sagas import canvas, engine
from sagas.engine import Decision, Report, execute_compensation, execute_step, sweep
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus, WorkerBeat
from tests.helpers import compensations_due, make_due, saga_user, started_in_thread

SAGA = "tests.three_steps"
PARALLEL = "tests.parallel"  # a -> Parallel("fanout", b1, b2, b3) -> c
A, B1, B2, B3, C = range(5)


def held_by_worker_on_another_machine(saga, *, silent_for: float) -> None:
    """Step a's attempt, as if held by a worker process elsewhere whose last heartbeat is ``silent_for`` seconds old."""
    holder = "elsewhere|machine-b|4242|abcd1234"
    StepRecord.objects.filter(saga=saga, index=0).update(held_by=holder)
    WorkerBeat.objects.create(id=holder, hostname="elsewhere", pid=4242, started_at=Now(),
                              beat_at=Now() - timedelta(seconds=silent_for))


def kinds(saga, step=None):
    events = saga.events.order_by("created_at", "id")
    if step is not None:
        events = events.filter(step__name=step)
    return list(events.values_list("kind", flat=True))


# --- 1. an accepted cancel ends compensated, with its reason ------------------------------


def test_cancel_while_the_last_step_runs_ends_compensated_not_succeeded(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(SAGA, input={})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)
    running = engine.claim_step(saga.id, 2, None)  # the last step is at work

    with django_capture_on_commit_callbacks(execute=True):
        cancel(saga, reason="order withdrawn by the customer")
    with django_capture_on_commit_callbacks(execute=True):
        outcome = engine.record_step(saga.id, 2, Report(running.attempt, ok=True, result={"value": 4}), None)

    assert outcome.decision is Decision.STOP
    assert sent[-1] == ("compensate", saga.id, [2, 1, 0])  # the attempt in flight is undone first
    for index in (2, 1, 0):
        execute_compensation(saga.id, index)
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED
    assert saga.error == "order withdrawn by the customer"
    assert EventKind.SAGA_SUCCEEDED not in kinds(saga)


def test_cancel_while_every_member_of_a_final_parallel_runs_ends_compensated(db, sent,
                                                                            django_capture_on_commit_callbacks):
    registry.register(Saga("tests.final_parallel", steps=[
        Step("a", _ok, compensation=_ok),
        engine_parallel("fan", Step("m1", _ok, compensation=_ok), Step("m2", _ok, compensation=_ok)),
    ]))
    try:
        saga = start_saga("tests.final_parallel", input={})
        execute_step(saga.id, 0)
        m1 = engine.claim_step(saga.id, 1, None)
        m2 = engine.claim_step(saga.id, 2, None)
        cancel(saga, reason="stop")
        with django_capture_on_commit_callbacks(execute=True):
            engine.record_step(saga.id, 1, Report(m1.attempt, ok=True, result={}), None)
            engine.record_step(saga.id, 2, Report(m2.attempt, ok=True, result={}), None)

        assert sent[-1] == ("compensate", saga.id, [2, 1, 0])  # sent once, by the last report
        for index in (2, 1, 0):
            execute_compensation(saga.id, index)
        saga.refresh_from_db()
        assert saga.status == SagaStatus.COMPENSATED and saga.error == "stop"
    finally:
        registry.unregister("tests.final_parallel")


def _ok(ctx):
    return {}


def engine_parallel(name, *steps):
    from sagas import Parallel

    return Parallel(name, *steps)


def test_a_blank_cancel_reason_is_recorded_as_cancelled(db, sent):
    saga = cancel(start_saga(SAGA, input={}), reason="  ")

    assert saga.error == "cancelled"
    assert saga.events.get(kind=EventKind.CANCEL_REQUESTED).detail["reason"] == "cancelled"


# --- 2. one saga the sweeper cannot move never stops it ---------------------------------------


def test_sweeper_holds_a_saga_of_an_unregistered_version_and_moves_the_others(db, sent,
                                                                              django_capture_on_commit_callbacks):
    broken = start_saga(SAGA, input={})
    SagaInstance.objects.filter(pk=broken.pk).update(version=99, due_at=Now() - timedelta(seconds=60))
    healthy = start_saga(SAGA, input={})
    make_due(healthy)
    sent.clear()

    with django_capture_on_commit_callbacks(execute=True):
        report = sweep()

    assert report.resumed_forward == 1 and report.held == [str(broken.id)]
    assert sent == [("forward", healthy.id, 0)]
    broken.refresh_from_db()
    assert broken.due_at is None and "could not move this saga" in broken.error and "v99" in broken.error
    assert broken.events.filter(kind=EventKind.SAGA_STUCK).count() == 1
    assert sweep().examined == 0  # held for a person: not tried again and again


def test_sweeper_holds_a_saga_whose_definition_changed_under_the_same_version(db, sent):
    saga = start_saga(SAGA, input={})
    StepRecord.objects.filter(saga=saga, index=1).update(name="renamed")
    make_due(saga)

    report = sweep()

    saga.refresh_from_db()
    assert report.held == [str(saga.id)]
    assert "new version" in saga.error
    assert saga.status == SagaStatus.PENDING  # nothing else changed


def test_a_held_saga_whose_step_a_silent_worker_held_stays_held(db, sent, settings):
    saga = start_saga(SAGA, input={})
    engine.claim_step(saga.id, 0, None)
    held_by_worker_on_another_machine(saga, silent_for=settings.SAGAS_WORKER_DEAD_AFTER + 1)
    SagaInstance.objects.filter(pk=saga.pk).update(version=99)
    assert sweep().held == [str(saga.id)]

    assert sweep().examined == 0  # not found again through its silent worker
    assert saga.events.filter(kind=EventKind.SAGA_STUCK).count() == 1


def test_a_held_saga_released_by_a_person_is_swept_again(db, sent):
    saga = start_saga(SAGA, input={})
    SagaInstance.objects.filter(pk=saga.pk).update(version=99)
    make_due(saga)
    sweep()
    SagaInstance.objects.filter(pk=saga.pk).update(version=1)  # the person fixed the cause

    engine.release_held(saga)

    assert sweep().resumed_forward == 1


def test_a_passing_database_error_postpones_one_saga_and_the_others_move(db, sent):
    first, second = start_saga(SAGA, input={}), start_saga(SAGA, input={})
    make_due(first)
    make_due(second)
    real_resume = engine.recovery.resume_stalled

    def flaky(saga_id, **options):
        if saga_id == first.id:
            raise OperationalError("database is locked")
        return real_resume(saga_id, **options)

    with mock.patch.object(engine.recovery, "resume_stalled", flaky):
        report = sweep()

    assert report.postponed == 1 and report.resumed_forward == 1
    first.refresh_from_db()
    assert first.due_at is not None and first.error == ""  # postponed, not held


# --- 3. the sweeper reads only what is due, through an index -----------------------------------


def test_sweeper_finds_the_due_saga_among_many_that_wait_legitimately(db, sent):
    waiting = [start_saga(SAGA, input={"i": i}) for i in range(30)]
    for saga in waiting:  # live attempts: nothing to do for the sweeper
        engine.claim_step(saga.id, 0, None)
    SagaInstance.objects.filter(pk__in=[s.pk for s in waiting]).update(updated_at=timezone.now() - timedelta(days=1))
    due = start_saga(SAGA, input={"due": True})
    make_due(due)

    report = sweep(limit=5)  # fewer than the waiting ones: they must not crowd the due one out

    assert report.examined == 1 and report.resumed_forward == 1


def test_sweeping_costs_the_same_few_queries_however_many_sagas_wait(db, sent, django_assert_max_num_queries):
    for i in range(40):
        engine.claim_step(start_saga(SAGA, input={"i": i}).id, 0, None)
    sweep()  # the first sweep ever writes the sweeper's lease row

    # the sweeper's lease taken and given back, due sagas, attempts of silent workers, waits past their
    # deadline, and the heartbeats' pruning
    with django_assert_max_num_queries(6):
        assert sweep().examined == 0


def test_the_sweeper_query_can_use_the_due_index(db):
    sql = str(SagaInstance.objects.filter(due_at__lte=Now()).order_by("due_at").values("id")[:500].query)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN {sql}")
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "saga_due_idx" in plan


# --- 4. an action that ran is never left failed with its effects ----------------------------------


@pytest.mark.parametrize("bad", ["nul", "nan"])
def test_an_output_no_database_stores_fails_the_step_and_it_is_compensated(db, sent, bad):
    saga = start_saga(SAGA, input={"bad_output": {"b": bad}})
    execute_step(saga.id, 0)

    assert execute_step(saga.id, 1).decision is Decision.STOP  # failed for good: compensating
    assert compensations_due(saga) == [1, 0]  # b ran: it is undone too

    b = saga.steps.get(name="b")
    assert b.status == StepStatus.FAILED and b.may_have_effects and "cannot be stored" in b.error
    assert execute_compensation(saga.id, 1).decision is Decision.CONTINUE
    assert execute_compensation(saga.id, 0).decision is Decision.CONTINUE
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED
    assert saga.steps.get(name="b").status == StepStatus.COMPENSATED


def test_a_success_whose_record_fails_for_a_passing_reason_is_recorded_later_without_running_again(db, sent):
    saga = start_saga(SAGA, input={})
    real = engine.forward.record_step
    calls = {"n": 0}

    def failing_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(*args, **kwargs)

    with mock.patch.object(engine.forward, "record_step", failing_once):
        with pytest.raises(engine.ReportPending) as pending:
            execute_step(saga.id, 0)
    carried = pending.value.report.as_dict()  # what the task's retry message carries

    outcome = execute_step(saga.id, 0, report=carried)

    assert outcome.decision is Decision.CONTINUE
    a = saga.steps.get(name="a")
    assert a.status == StepStatus.SUCCEEDED and a.attempts == 1 and a.result == {"value": 1, "attempt": 1}
    from tests.testapp.models import Call
    assert Call.objects.filter(saga_id=saga.id, step="a").count() == 1  # the action ran once


def test_a_report_for_an_attempt_that_lost_the_step_is_dropped_with_an_event(db, sent):
    saga = start_saga(SAGA, input={})
    engine.claim_step(saga.id, 0, None)
    StepRecord.objects.filter(saga=saga, index=0).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert isinstance(engine.claim_step(saga.id, 0, None), engine.Claim)  # attempt 2 took over

    outcome = engine.record_step(saga.id, 0, Report(1, ok=False, error="RuntimeError: late"), None)

    assert outcome.decision is Decision.STOP
    dropped = saga.events.get(kind=EventKind.REPORT_DROPPED)
    assert dropped.detail["attempt"] == 1 and dropped.detail["error"] == "RuntimeError: late"
    assert saga.steps.get(index=0).status == StepStatus.RUNNING


# --- 5. infrastructure retries are counted apart ---------------------------------------------


def test_a_database_error_after_many_step_retries_is_retried_not_fatal(db, sent):
    from sagas import tasks

    saga = start_saga(SAGA, input={})
    outcomes = iter([OperationalError("database is locked"), engine.Outcome(Decision.CONTINUE, reason="done")])

    def execute(*args, **kwargs):
        item = next(outcomes)
        if isinstance(item, Exception):
            raise item
        return item

    with mock.patch.object(engine, "execute_step", execute):
        # This delivery is the 25th retry of the step (backoff waits): that says nothing of the database.
        result = tasks.run_step.apply(args=(str(saga.id), 0), retries=25)

    assert result.successful(), result.traceback
    assert result.get() == "done"


# --- 7. input judged the same on every database -------------------------------------------------


@pytest.mark.parametrize("value,field,message", [
    ({"name": "nul \x00 byte"}, "name", "NUL"),
    ({"amount": float("nan")}, "amount", "finite"),
    ({"amount": float("inf")}, "amount", "finite"),
    ({"nested": {"deep": ["x", "\x00"]}}, "nested", "NUL"),
    ({"name": "lone \ud800 surrogate"}, "name", "Unicode"),
    ({1: "one"}, "input", "keys must be strings"),
    ({"nested": {2: "two"}}, "nested", "keys must be strings"),
])
def test_input_no_database_stores_as_given_is_refused_and_writes_nothing(db, sent, value, field, message):
    with pytest.raises(InvalidSagaInput) as caught:
        start_saga(SAGA, input=value)

    assert list(caught.value.errors) == [field]
    assert message in caught.value.errors[field][0]
    assert SagaInstance.objects.count() == 0 and SagaEvent.objects.count() == 0


def test_the_schemas_validated_data_is_what_is_stored_and_replays_match(db, sent):
    from rest_framework import serializers

    class Order(serializers.Serializer):
        quantity = serializers.IntegerField()
        note = serializers.CharField(required=False, default="none")

    registry.register(Saga("tests.typed", steps=[Step("a", _ok)], input_schema=Order))
    try:
        saga = start_saga("tests.typed", input={"quantity": "5"}, idempotency_key="typed-1")
        again = start_saga("tests.typed", input={"quantity": "5"}, idempotency_key="typed-1")
    finally:
        registry.unregister("tests.typed")

    assert saga.input == {"quantity": 5, "note": "none"}
    assert again.id == saga.id and again.created_now is False


# --- 9. clocks: the database's, not each process's ------------------------------------------------


def test_a_process_whose_clock_runs_ahead_does_not_take_over_a_live_attempt(db, sent):
    saga = start_saga(SAGA, input={})
    engine.claim_step(saga.id, 0, None)
    ahead = timezone.now() + timedelta(hours=1)

    with mock.patch("django.utils.timezone.now", return_value=ahead):
        outcome = execute_step(saga.id, 0)

    assert outcome.decision is Decision.STOP and outcome.reason == "another attempt holds the step"
    assert saga.steps.get(index=0).attempts == 1


# --- 10. resubmit once, and an audit trail that says what happened ----------------------------------


def test_resubmitting_twice_starts_one_saga(db, sent):
    saga = cancel(start_saga(SAGA, input={"x": 1}))

    first = resubmit(saga)
    second = resubmit(saga)

    assert second.id == first.id and second.created_now is False
    assert SagaInstance.objects.filter(resubmitted_from=saga).count() == 1
    assert saga.events.filter(kind=EventKind.RESUBMITTED).count() == 1


def test_an_attempt_lost_before_a_cancel_gets_its_lost_event(db, sent):
    saga = start_saga(SAGA, input={})
    engine.claim_step(saga.id, 0, None)
    StepRecord.objects.filter(saga=saga, index=0).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    cancel(saga, reason="stop")

    a = saga.steps.get(name="a")
    assert kinds(saga, "a") == [EventKind.STEP_STARTED, EventKind.STEP_ATTEMPT_LOST, EventKind.STEP_FAILED]
    assert a.may_have_effects
    saga.refresh_from_db()
    assert saga.error == "stop"


def test_an_error_callback_for_a_healthy_saga_is_ignored_with_an_event(db, sent):
    saga = start_saga(SAGA, input={})
    execute_step(saga.id, 0)

    assert engine.begin_compensation(saga.id, reason="chain broke") is None

    saga.refresh_from_db()
    assert saga.status == SagaStatus.RUNNING
    assert saga.events.filter(kind=EventKind.ERROR_CALLBACK_IGNORED).count() == 1


# --- liveness: an attempt held by a worker that stopped heartbeating is lost at once ---------------


def test_an_attempt_held_by_a_silent_worker_is_taken_over_before_its_lease_ends(db, sent, settings):
    saga = start_saga(SAGA, input={})
    engine.claim_step(saga.id, 0, None)
    held_by_worker_on_another_machine(saga, silent_for=settings.SAGAS_WORKER_DEAD_AFTER + 1)

    report = sweep()  # found through the silent holder, although the saga is not due yet

    assert report.examined == 1 and report.resumed_forward == 1
    assert execute_step(saga.id, 0).decision is Decision.CONTINUE
    a = saga.steps.get(name="a")
    assert a.attempts == 2 and a.status == StepStatus.SUCCEEDED
    assert saga.events.filter(kind=EventKind.STEP_ATTEMPT_LOST, step=a).count() == 1


def test_an_attempt_held_by_a_worker_that_still_beats_is_left_alone(db, sent):
    saga = start_saga(SAGA, input={})
    engine.claim_step(saga.id, 0, None)
    held_by_worker_on_another_machine(saga, silent_for=0)
    make_due(saga)

    assert sweep().total == 0
    assert execute_step(saga.id, 0).decision is Decision.STOP


def test_an_attempt_held_by_a_dead_process_on_this_machine_is_lost_at_once(db, sent):
    import subprocess
    import sys

    from sagas import liveness

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer runs
    machine = liveness.identity().split("|")[1]
    saga = start_saga(SAGA, input={})
    engine.claim_step(saga.id, 0, None)
    StepRecord.objects.filter(saga=saga, index=0).update(held_by=f"here|{machine}|{child.pid}|deadbeef")

    assert execute_step(saga.id, 0).decision is Decision.CONTINUE  # taken over by the next delivery
    assert saga.steps.get(name="a").attempts == 2


@pytest.mark.parametrize("body", [
    '{"saga_type": "tests.three_steps", "input": {"name": "a\\u0000b"}}',
    '{"saga_type": "tests.three_steps", "input": {"name": "\\ud800"}}',
])
def test_the_api_answers_the_same_400_on_every_database_for_input_none_stores(db, sent, body):
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    user = saga_user("operator")
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")

    response = client.post("/api/sagas/", body, content_type="application/json")

    assert response.status_code == 400
    assert [f for f in response.json() if f not in ("detail", "code")] == ["input"]
    assert list(response.json()["input"]) == ["name"]
    assert SagaInstance.objects.count() == 0


def _noting(statement):
    """Patches the engine's one-statement ``sql.<statement>`` to note what each call returned: (that list, the patch)."""
    real = getattr(engine.sql, statement)
    tried = []

    def noting(**values):
        tried.append(real(**values))
        return tried[-1]

    return tried, mock.patch.object(engine.sql, statement, noting)


@pytest.mark.skipif(connection.vendor == "sqlite", reason="SQLite has one writer at a time and no row locks")
def test_a_transition_that_waited_for_the_saga_lock_sees_what_the_one_before_it_wrote(transactional_db, sent):
    from django.db import transaction

    saga = start_saga(PARALLEL, input={})
    execute_step(saga.id, A)
    engine.claim_step(saga.id, B1, None)  # b1 at work too
    b2 = engine.claim_step(saga.id, B2, None)
    cancel(saga, reason="stop")  # b3 skipped; b1 and b2 at work
    sent.clear()
    outcome = {}

    def b2_reports():
        outcome["b2"] = engine.record_step(saga.id, B2, Report(b2.attempt, ok=True, result={}), None)

    with transaction.atomic():  # b1's report, holding the saga's lock while b2's report arrives
        SagaInstance.objects.select_for_update().get(pk=saga.pk)
        StepRecord.objects.filter(saga=saga, index=B1).update(status=StepStatus.SUCCEEDED, lease_expires_at=None,
                                                              held_by=None, result={})
        waiting = started_in_thread(b2_reports)
        assert waiting.is_alive()  # b2's report waits for the lock
    waiting.join(timeout=30)

    assert outcome["b2"].decision is Decision.STOP
    # b2's report saw b1 finished, so it was the last one at work: it sent the compensation.
    assert sent == [("compensate", saga.id, [B2, B1, A])]


@pytest.mark.skipif(connection.vendor == "sqlite", reason="SQLite has one writer at a time and no row locks")
@pytest.mark.parametrize("index", [0, 1, 2], ids=["first step", "middle step", "last step"])
def test_a_success_recorded_in_one_statement_waits_for_a_cancel_holding_the_lock_then_undoes_the_step(
        transactional_db, sent, index):
    from django.db import transaction

    saga = start_saga(SAGA, input={})
    for earlier in range(index):
        execute_step(saga.id, earlier)
    claim = engine.claim_step(saga.id, index, None)
    outcome = {}

    # The last step's success also ends the saga: a statement of its own.
    tried, patched = _noting("succeed_last_step_if_running" if index == 2 else "succeed_step_if_running")

    def b_reports():  # as execute_step records its own attempt: the one-statement way first
        with patched:
            outcome["b"] = engine.record_step(saga.id, index, Report(claim.attempt, ok=True, result={"b": 1}), None,
                                              claim=claim)

    with transaction.atomic():  # a cancel, holding the saga's lock while b's report arrives
        cancel(saga, reason="stop")
        reporting = started_in_thread(b_reports)
        assert reporting.is_alive()  # the report waits for the lock (and the cancel never waits for it)
    reporting.join(timeout=30)

    # Once the cancel committed, the one statement found the saga compensating and wrote nothing; the
    # locked transition then recorded the success and, b being the attempt the cancel left at work, sent
    # the compensation of what ran.
    b = StepRecord.objects.get(saga=saga, index=index)
    assert tried == [False]
    assert outcome["b"].decision is Decision.STOP
    assert (b.status, b.result) == (StepStatus.SUCCEEDED, {"b": 1})
    assert ("compensate", saga.id, list(range(index, -1, -1))) in sent
    assert list(saga.events.filter(step=b).values_list("kind", flat=True)) == [
        EventKind.STEP_STARTED, EventKind.STEP_SUCCEEDED]


# --- a claim made by one conditional UPDATE, after an unlocked read ------------------------


def _read_then(action):
    """``read_saga`` as the claim calls it, with ``action`` run (once) between the read and the claim's UPDATE."""
    real = engine.forward.read_saga
    pending = [action]

    def read_then_act(saga_id, *, step):
        saga = real(saga_id, step=step)
        while pending:
            pending.pop()()
        return saga

    return mock.patch.object(engine.forward, "read_saga", read_then_act)


def test_a_cancel_between_the_claims_read_and_its_update_keeps_the_step_from_starting(db, sent):
    saga = start_saga(SAGA, input={})
    execute_step(saga.id, 0)

    with _read_then(lambda: cancel(saga, reason="stop")):
        outcome = execute_step(saga.id, 1)

    b = StepRecord.objects.get(saga=saga, index=1)
    assert outcome.decision is not Decision.CONTINUE
    assert (b.status, b.attempts, b.attempt_started_at) == (StepStatus.SKIPPED, 0, None)
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATING


def test_of_two_claims_of_one_free_step_read_at_once_exactly_one_holds_it(db, sent):
    saga = start_saga(SAGA, input={})
    execute_step(saga.id, 0)

    with _read_then(lambda: engine.claim_step(saga.id, 1, None)):  # another delivery claims meanwhile
        late = engine.claim_step(saga.id, 1, None)

    b = StepRecord.objects.get(saga=saga, index=1)
    assert late.decision is Decision.STOP and late.reason == "another attempt holds the step"
    assert (b.status, b.attempts) == (StepStatus.RUNNING, 1)


@pytest.mark.skipif(connection.vendor == "sqlite", reason="SQLite has one writer at a time and no row locks")
def test_a_claim_waiting_on_the_row_lock_of_a_cancel_refuses_once_it_commits(transactional_db, sent):
    import threading

    from django.db import connections

    saga = start_saga(SAGA, input={})
    execute_step(saga.id, 0)
    outcome = {}
    read = threading.Event()
    go = threading.Event()

    def read_then_wait():
        real = engine.forward.read_saga

        def slow_read(saga_id, *, step):
            found = real(saga_id, step=step)
            read.set()
            go.wait(10)
            return found

        try:
            with mock.patch.object(engine.forward, "read_saga", slow_read):
                outcome["claim"] = engine.claim_step(saga.id, 1, None)
        finally:
            connections.close_all()

    claiming = threading.Thread(target=read_then_wait)
    claiming.start()
    assert read.wait(10)
    with engine.core.locked_saga(saga.id) as locked:  # cancel's transaction, holding every step row
        go.set()
        claiming.join(timeout=1.0)
        assert claiming.is_alive()  # the claim's UPDATE waits for the row lock
        engine.compensation.start_compensating(locked, engine.core.steps_of(locked), "stop")
    claiming.join(timeout=30)

    assert isinstance(outcome["claim"], engine.Outcome) and outcome["claim"].decision is not Decision.CONTINUE
    assert StepRecord.objects.get(saga=saga, index=1).status == StepStatus.SKIPPED


def test_a_cancel_between_the_first_claims_read_and_its_updates_keeps_the_saga_from_starting(db, sent):
    saga = start_saga(SAGA, input={})

    with _read_then(lambda: cancel(saga, reason="stop")):
        outcome = execute_step(saga.id, 0)

    saga.refresh_from_db()
    assert outcome.decision is not Decision.CONTINUE
    assert (saga.status, saga.started_at) == (SagaStatus.COMPENSATED, None)
    assert not saga.events.filter(kind=EventKind.SAGA_STARTED).exists()
    assert set(saga.steps.values_list("status", flat=True)) == {StepStatus.SKIPPED}


# --- a claim in one statement (PostgreSQL, the message naming the saga) falls back when anything differs ----


@pytest.mark.parametrize("case", ["cancelled", "other version", "earlier step not done", "step renamed"])
def test_a_one_statement_claim_that_finds_anything_different_leaves_the_decision_to_the_other_claims(
        db, sent, case):
    definition = registry.get(SAGA)
    saga = start_saga(SAGA, input={})
    execute_step(saga.id, 0)
    named = canvas.names_of(definition)
    if case == "cancelled":
        cancel(saga, reason="stop")
    elif case == "other version":
        named["version"] = definition.version + 1  # no such version: claimed the usual way
    elif case == "earlier step not done":
        StepRecord.objects.filter(saga=saga, index=0).update(status=StepStatus.RUNNING)
    else:
        StepRecord.objects.filter(saga=saga, index=1).update(name="renamed")

    outcome = execute_step(saga.id, 1, **named)

    b = StepRecord.objects.get(saga=saga, index=1)
    if case == "other version":
        assert outcome.decision is Decision.CONTINUE and b.status == StepStatus.SUCCEEDED  # the usual claim
    elif case == "step renamed":  # the usual claim then says what is wrong: the saga is held for a person
        assert outcome.decision is Decision.STOP and "new version" in outcome.reason
        assert b.status == StepStatus.PENDING and b.attempts == 0  # nothing claimed
        assert SagaInstance.objects.get(pk=saga.pk).due_at is None
    else:
        assert outcome.decision is not Decision.CONTINUE
        assert (b.attempts, b.attempt_started_at) == (0, None)


# --- PostgreSQL: the first claim of a saga, which also starts it, in one statement ---------------------


@pytest.mark.parametrize("case", ["cancelled", "other version", "started by another delivery", "step renamed"])
def test_a_one_statement_first_claim_that_finds_anything_different_writes_nothing_and_leaves_it_to_the_others(
        db, sent, case):
    definition = registry.get(SAGA)
    saga = start_saga(SAGA, input={})
    named = canvas.names_of(definition)
    if case == "cancelled":
        cancel(saga, reason="stop")
    elif case == "other version":
        named["version"] = definition.version + 1
    elif case == "started by another delivery":
        engine.claim_step(saga.id, 0, None)
    else:
        StepRecord.objects.filter(saga=saga, index=0).update(name="renamed")
    before = SagaInstance.objects.values("status", "started_at", "updated_at", "due_at").get(pk=saga.pk)
    events_before = saga.events.count()
    tried, patched = _noting("claim_first_step")

    with patched:
        if case == "step renamed":  # the usual claim then says what is wrong
            from sagas.errors import SagaDefinitionError

            with pytest.raises(SagaDefinitionError):
                engine.claim_step(saga.id, 0, None, definition=definition)
            claim = None
        else:
            claim = engine.claim_step(saga.id, 0, None,
                                      definition=engine.core.named_definition(named["saga_type"], named["version"]))

    a = StepRecord.objects.get(saga=saga, index=0)
    if case == "other version":  # not tried at all: claimed the usual way
        assert tried == [] and isinstance(claim, engine.Claim) and a.status == StepStatus.RUNNING
        return
    if connection.vendor == "postgresql":
        assert tried == [None]
    assert SagaInstance.objects.values("status", "started_at", "updated_at", "due_at").get(pk=saga.pk) == before
    assert saga.events.count() == events_before
    if case == "started by another delivery":
        assert claim.reason == "another attempt holds the step" and a.attempts == 1
    elif case == "cancelled":
        assert claim.decision is Decision.STOP and (a.status, a.attempts) == (StepStatus.SKIPPED, 0)
    else:
        assert (a.status, a.attempts) == (StepStatus.PENDING, 0)


@pytest.mark.skipif(connection.vendor == "sqlite", reason="SQLite has one writer at a time and no row locks")
def test_a_one_statement_first_claim_waits_for_a_cancel_holding_the_lock_and_then_starts_nothing(
        transactional_db, sent):
    from django.db import transaction

    definition = registry.get(SAGA)
    saga = start_saga(SAGA, input={})
    outcome = {}
    tried, patched = _noting("claim_first_step")

    def a_claims():
        with patched:
            outcome["a"] = engine.claim_step(saga.id, 0, None, definition=definition)

    with transaction.atomic():  # a cancel, holding the saga's lock while a's message arrives
        cancel(saga, reason="stop")
        claiming = started_in_thread(a_claims)
        assert claiming.is_alive()  # the claim waits for the first step's row lock
    claiming.join(timeout=30)

    saga.refresh_from_db()
    assert tried == [None]
    assert isinstance(outcome["a"], engine.Outcome) and outcome["a"].decision is Decision.STOP
    assert (saga.status, saga.started_at) == (SagaStatus.COMPENSATED, None)
    assert not saga.events.filter(kind=EventKind.SAGA_STARTED).exists()
    assert StepRecord.objects.get(saga=saga, index=0).status == StepStatus.SKIPPED


@pytest.mark.skipif(connection.vendor == "sqlite", reason="SQLite has one writer at a time and no row locks")
def test_a_cancel_arriving_while_the_one_statement_first_claim_runs_waits_for_it_and_undoes_the_step(
        transactional_db, sent):
    """The other order: the claim holds the first step's row, the cancel waits, then sees the saga running."""
    from django.db import transaction

    definition = registry.get(SAGA)
    saga = start_saga(SAGA, input={})
    done = {}

    def cancels():
        done["cancel"] = cancel(saga, reason="stop")

    with transaction.atomic():  # the claim's statement, kept open: its locks held until commit
        claim = engine.claim_step(saga.id, 0, None, definition=definition)
        cancelling = started_in_thread(cancels)
        assert cancelling.is_alive()  # the cancel waits for the claim's locks
    cancelling.join(timeout=30)

    saga.refresh_from_db()
    a = StepRecord.objects.get(saga=saga, index=0)
    assert isinstance(claim, engine.Claim) and claim.began_at == a.attempt_started_at
    assert saga.status == SagaStatus.COMPENSATING  # a's attempt is at work: it is undone when it reports
    assert (a.status, a.attempts) == (StepStatus.RUNNING, 1)
    assert kinds(saga)[:2] == [EventKind.SAGA_CREATED, EventKind.SAGA_STARTED]


# --- PostgreSQL: a compensation claimed and recorded in one statement each ---------------------------


def _compensating_saga():
    """tests.three_steps with c refusing for good: a and b are to be undone, b first."""
    saga = start_saga(SAGA, input={"fail": {"c": "permanent"}})
    named = canvas.names_of(registry.get(SAGA))
    for index in range(3):
        execute_step(saga.id, index, **named)
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATING
    return saga, named


@pytest.mark.parametrize("case", ["a later step not undone yet", "already claimed", "other version",
                                  "saga not compensating"])
def test_a_one_statement_compensation_claim_that_finds_anything_different_leaves_it_to_the_locked_claim(
        db, sent, case):
    saga, named = _compensating_saga()
    index = 0 if case == "a later step not undone yet" else 1
    if case == "already claimed":
        engine.compensation._claim_compensation(saga.id, 1, None)  # another delivery holds it
    elif case == "other version":
        named["version"] += 1
    elif case == "saga not compensating":
        SagaInstance.objects.filter(pk=saga.pk).update(status=SagaStatus.FAILED)
    events_before = saga.events.count()
    tried, patched = _noting("claim_compensation")

    with patched:
        outcome = execute_compensation(saga.id, index, **named)

    record = StepRecord.objects.get(saga=saga, index=index)
    if case == "other version":  # not tried: claimed and recorded the usual way
        assert tried == [] and outcome.decision is Decision.CONTINUE and record.status == StepStatus.COMPENSATED
        return
    if connection.vendor == "postgresql":
        assert tried == [None]
    assert outcome.decision is Decision.STOP
    assert saga.events.count() == events_before
    expected = {"a later step not undone yet": (StepStatus.SUCCEEDED, 0),
                "already claimed": (StepStatus.COMPENSATING, 1),
                "saga not compensating": (StepStatus.SUCCEEDED, 0)}[case]
    assert (record.status, record.compensation_attempts) == expected


@pytest.mark.skipif(connection.vendor == "sqlite", reason="SQLite has one writer at a time and no row locks")
@pytest.mark.parametrize("statement", ["claim_compensation", "compensated_if_compensating"])
def test_a_one_statement_compensation_waits_for_a_transition_holding_the_lock_and_sees_what_it_wrote(
        transactional_db, sent, statement):
    """While it waits, a transition under the lock moves the saga close to due (as the sweeper may): the one
    statement then finds the saga changed, writes nothing, and the locked way records the same outcome."""
    saga, named = _compensating_saga()
    claim = None
    if statement == "compensated_if_compensating":
        claim = engine.compensation._claim_compensation(saga.id, 1, None)
    tried, patched = _noting(statement)
    outcome = {}

    def b_undone():
        with patched:
            if claim is None:
                outcome["b"] = execute_compensation(saga.id, 1, **named)
            else:
                outcome["b"] = engine.compensation.record_compensation(
                    saga.id, 1, Report(claim.attempt, ok=True), None, claim=claim)

    with engine.core.locked_saga(saga.id) as locked:
        undoing = started_in_thread(b_undone)
        assert undoing.is_alive()  # it waits for the lock
        locked.due_at = locked.db_now + timedelta(seconds=1)
    undoing.join(timeout=30)

    b = StepRecord.objects.get(saga=saga, index=1)
    assert tried == [None if statement == "claim_compensation" else False]
    assert outcome["b"].decision is Decision.CONTINUE
    assert (b.status, b.compensation_attempts) == (StepStatus.COMPENSATED, 1)
    assert kinds(saga, "b")[-2:] == [EventKind.COMPENSATION_STARTED, EventKind.STEP_COMPENSATED]
