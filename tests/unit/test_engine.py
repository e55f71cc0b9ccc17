"""The engine's transitions without a worker: messages are recorded, not sent."""
import pytest

from sagas import (
    IdempotencyConflict,
    InvalidSagaInput,
    InvalidTransition,
    UnknownSagaType,
    cancel,
    resubmit,
    retry_compensation,
    start_saga,
)
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus

SAGA = "tests.three_steps"


@pytest.fixture
def no_rows():
    def check():
        assert SagaInstance.objects.count() == 0
        assert StepRecord.objects.count() == 0
        assert SagaEvent.objects.count() == 0
    return check


def test_start_saga_writes_instance_steps_and_event_then_enqueues_after_commit(db, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        saga = start_saga(SAGA, input={"x": 1})
        assert sent == []  # nothing leaves before the transaction commits

    assert sent == [("forward", saga.id, 0)]
    assert saga.status == SagaStatus.PENDING
    assert list(saga.steps.values_list("name", "status")) == [
        ("a", StepStatus.PENDING), ("b", StepStatus.PENDING), ("c", StepStatus.PENDING)
    ]
    assert list(saga.events.values_list("kind", flat=True)) == [EventKind.SAGA_CREATED]


def test_unknown_saga_type_creates_nothing(db, sent, no_rows):
    with pytest.raises(UnknownSagaType):
        start_saga("tests.nope", input={})
    no_rows()
    assert sent == []


@pytest.mark.parametrize("bad", [[1, 2], "text", 42])
def test_input_that_is_not_an_object_creates_nothing(db, sent, no_rows, bad):
    with pytest.raises(InvalidSagaInput) as caught:
        start_saga(SAGA, input=bad)
    assert caught.value.errors == {"input": ["must be a JSON object"]}
    no_rows()


def test_input_that_is_not_json_creates_nothing(db, sent, no_rows):
    with pytest.raises(InvalidSagaInput, match="JSON-serialisable"):
        start_saga(SAGA, input={"when": object()})
    no_rows()


def test_same_idempotency_key_returns_the_existing_instance(db, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = start_saga(SAGA, input={"x": 1}, idempotency_key="k-1")
        again = start_saga(SAGA, input={"x": 1}, idempotency_key="k-1")

    assert again.id == first.id
    assert first.created_now is True and again.created_now is False
    assert SagaInstance.objects.count() == 1
    assert len(sent) == 1


def test_same_key_with_other_input_is_a_conflict(db, sent):
    start_saga(SAGA, input={"x": 1}, idempotency_key="k-2")

    with pytest.raises(IdempotencyConflict, match="k-2"):
        start_saga(SAGA, input={"x": 2}, idempotency_key="k-2")
    assert SagaInstance.objects.count() == 1


def test_same_key_for_another_saga_type_is_independent(db, sent):
    one = start_saga(SAGA, input={}, idempotency_key="shared")
    other = start_saga("tests.ledger", input={}, idempotency_key="shared")

    assert one.id != other.id


def test_cancelling_a_pending_saga_compensates_at_once_with_nothing_to_undo(db, sent):
    saga = start_saga(SAGA, input={})

    saga = cancel(saga)

    assert saga.status == SagaStatus.COMPENSATED
    assert set(saga.steps.values_list("status", flat=True)) == {StepStatus.SKIPPED}
    assert saga.events.filter(kind=EventKind.CANCEL_REQUESTED).count() == 1


def test_cancelling_a_finished_saga_is_refused_and_changes_nothing(db, sent):
    saga = start_saga(SAGA, input={})
    cancel(saga)
    events = SagaEvent.objects.count()

    with pytest.raises(InvalidTransition, match="only a pending, running or paused saga can be cancelled"):
        cancel(saga)
    assert SagaEvent.objects.count() == events


def test_retry_compensation_is_refused_unless_failed(db, sent):
    saga = start_saga(SAGA, input={})

    with pytest.raises(InvalidTransition, match="only a failed saga"):
        retry_compensation(saga)


def test_resubmit_refuses_an_active_saga_and_links_a_finished_one(db, sent):
    saga = start_saga(SAGA, input={"x": 3})
    with pytest.raises(InvalidTransition, match="still pending"):
        resubmit(saga)
    cancel(saga)

    new = resubmit(saga)

    assert new.resubmitted_from_id == saga.id
    assert new.input == {"x": 3}
    assert new.status == SagaStatus.PENDING
    assert saga.events.filter(kind=EventKind.RESUBMITTED).get().detail["new_saga"] == str(new.id)


# --- running steps in this process (no worker): the engine's decisions -------------

from django.db.models.functions import Now  # noqa: E402

from sagas import engine  # noqa: E402
from sagas.engine import Decision, Report, execute_compensation, execute_step, sweep  # noqa: E402
from tests.helpers import compensations_due  # noqa: E402


def make_due(saga):
    """As if the saga's due time had passed: what the sweeper looks for."""
    SagaInstance.objects.filter(pk=saga.pk).update(due_at=Now())


def test_redelivered_step_that_already_succeeded_is_not_run_again(db, sent):
    saga = start_saga(SAGA, input={})
    assert execute_step(saga.id, 0).decision is Decision.CONTINUE

    again = execute_step(saga.id, 0)

    assert again.decision is Decision.CONTINUE and again.reason == "step already succeeded"
    assert saga.steps.get(index=0).attempts == 1


def test_a_duplicate_of_a_step_held_by_a_live_attempt_is_dropped_without_polling(db, sent):
    saga = start_saga(SAGA, input={})
    assert isinstance(engine.claim_step(saga.id, 0, None), engine.Claim)  # this process holds step a

    outcome = execute_step(saga.id, 0)

    assert outcome.decision is Decision.STOP and outcome.reason == "another attempt holds the step"
    assert saga.steps.get(index=0).attempts == 1


def test_step_out_of_order_does_nothing(db, sent):
    saga = start_saga(SAGA, input={})

    assert execute_step(saga.id, 2).decision is Decision.STOP
    assert saga.steps.get(index=2).status == StepStatus.PENDING


def test_a_step_failed_for_good_starts_the_compensation_in_the_same_transaction(
        db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(SAGA, input={"fail": {"b": "permanent"}})
    execute_step(saga.id, 0)
    sent.clear()

    with django_capture_on_commit_callbacks(execute=True):
        outcome = execute_step(saga.id, 1)

    # The task ends normally: the chain's error callback is only for a task that dies without reporting.
    assert outcome.decision is Decision.STOP and outcome.reason.startswith("failed for good")
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATING and saga.error.startswith("step b failed")
    assert sent == [("compensate", saga.id, [0])]
    assert list(saga.steps.values_list("status", flat=True)) == [
        StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED]
    assert execute_step(saga.id, 1).decision is Decision.STOP  # a redelivery changes nothing
    assert saga.steps.get(index=1).attempts == 1


def test_a_first_step_failed_for_good_leaves_nothing_to_undo(db, sent):
    saga = start_saga(SAGA, input={"fail": {"a": "permanent"}})

    assert execute_step(saga.id, 0).decision is Decision.STOP
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED


def test_sweeper_starts_compensation_when_the_error_callback_was_lost(db, sent, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    saga = start_saga(SAGA, input={})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)
    engine.claim_step(saga.id, 2, None)  # c allows one attempt, and this one is lost
    StepRecord.objects.filter(saga=saga, index=2).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert execute_step(saga.id, 2).decision is Decision.FAILED  # the task fails: its error callback compensates
    sent.clear()
    make_due(saga)

    with django_capture_on_commit_callbacks(execute=True):
        report = sweep()

    saga.refresh_from_db()
    assert report.compensation_started == 1
    assert saga.status == SagaStatus.COMPENSATING
    assert sent == [("compensate", saga.id, [2, 1, 0])]  # c may have done its work: undone too


def test_sweeper_resumes_a_compensation_that_stalled(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(SAGA, input={"fail": {"c": "permanent"}})
    for index in range(3):
        execute_step(saga.id, index)
    assert compensations_due(saga) == [1, 0]
    assert execute_compensation(saga.id, 1).decision is Decision.CONTINUE
    sent.clear()
    make_due(saga)

    with django_capture_on_commit_callbacks(execute=True):
        report = sweep()

    assert report.resumed_compensation == 1
    assert sent == [("compensate", saga.id, [0])]


def test_sweeper_leaves_sagas_that_are_not_due_alone(db, sent):
    start_saga(SAGA, input={})

    report = sweep()

    assert report.examined == 0 and report.total == 0


def test_compensation_out_of_order_waits_for_later_steps(db, sent):
    saga = start_saga(SAGA, input={"fail": {"c": "permanent"}})
    for index in range(3):
        execute_step(saga.id, index)

    assert execute_compensation(saga.id, 0).decision is Decision.STOP
    assert saga.steps.get(index=0).status == StepStatus.SUCCEEDED


# --- Parallel: members run at once, the last to succeed sends the next stage -----------


PARALLEL = "tests.parallel"  # a -> Parallel("fanout", b1, b2, b3) -> c
A, B1, B2, B3, C = range(5)


def test_start_saga_records_each_steps_stage_and_group(db, sent):
    saga = start_saga(PARALLEL, input={})

    assert list(saga.steps.values_list("index", "name", "stage", "parallel_group")) == [
        (A, "a", 0, None), (B1, "b1", 1, "fanout"), (B2, "b2", 1, "fanout"), (B3, "b3", 1, "fanout"), (C, "c", 2, None),
    ]


def test_members_of_a_stage_are_claimed_in_any_order(db, sent):
    saga = start_saga(PARALLEL, input={})
    execute_step(saga.id, A)

    assert execute_step(saga.id, C).decision is Decision.STOP  # the stage before it is not done
    for index in (B3, B1, B2):
        assert execute_step(saga.id, index).decision is Decision.CONTINUE

    assert list(saga.steps.filter(stage=1).values_list("status", flat=True)) == [StepStatus.SUCCEEDED] * 3
    assert execute_step(saga.id, C).decision is Decision.CONTINUE
    saga.refresh_from_db()
    assert saga.status == SagaStatus.SUCCEEDED
    # Each member saw the results of the earlier stages, never a sibling's; c saw them all.
    assert saga.results["b2"] == {"value": 2, "attempt": 1}
    assert saga.results["c"] == {"value": 8, "attempt": 1}


def test_a_member_does_not_wait_for_its_siblings_to_start(db, sent):
    saga = start_saga(PARALLEL, input={})
    execute_step(saga.id, A)
    claim = engine.claim_step(saga.id, B1, None)  # b1 holds its step

    assert execute_step(saga.id, B2).decision is Decision.CONTINUE
    assert isinstance(claim, engine.Claim)


def test_the_last_member_to_succeed_dispatches_the_next_stage_once(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(PARALLEL, input={})
    sent.clear()

    with django_capture_on_commit_callbacks(execute=True):
        execute_step(saga.id, A)  # a plain step: its chain goes on, the engine sends nothing
        execute_step(saga.id, B2)
        execute_step(saga.id, B3)
    assert sent == []

    with django_capture_on_commit_callbacks(execute=True):
        execute_step(saga.id, B1)
        execute_step(saga.id, B1)  # a redelivery of the last member sends nothing more
    assert sent == [("forward", saga.id, C)]


def test_a_failed_member_stops_a_sibling_waiting_for_its_retry(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(PARALLEL, input={"flaky": {"b1": 1}, "fail": {"b2": "permanent"}})
    execute_step(saga.id, A)
    assert execute_step(saga.id, B1).decision is Decision.RETRY
    sent.clear()

    with django_capture_on_commit_callbacks(execute=True):
        assert execute_step(saga.id, B2).decision is Decision.STOP  # failed for good: compensating

    b1 = saga.steps.get(index=B1)
    assert b1.status == StepStatus.FAILED and b1.error == "stopped: the saga is compensating"
    assert list(saga.steps.values_list("name", "status")) == [
        ("a", StepStatus.SUCCEEDED), ("b1", StepStatus.FAILED), ("b2", StepStatus.FAILED),
        ("b3", StepStatus.SKIPPED), ("c", StepStatus.SKIPPED),
    ]
    saga.refresh_from_db()
    assert saga.error.startswith("step b2 failed: PermanentError")  # the sibling stopped is not blamed
    assert sent == [("compensate", saga.id, [A])]
    assert execute_step(saga.id, B1).decision is Decision.STOP  # its retry message finds the saga compensating


def test_compensation_waits_for_a_running_member_whose_report_then_sends_it(
        db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(PARALLEL, input={"fail": {"b2": "permanent"}})
    execute_step(saga.id, A)
    execute_step(saga.id, B3)
    running = engine.claim_step(saga.id, B1, None)  # b1's action is under way
    sent.clear()

    with django_capture_on_commit_callbacks(execute=True):
        execute_step(saga.id, B2)  # fails for good: the saga compensates

    assert saga.steps.get(index=B1).status == StepStatus.RUNNING  # left to finish
    assert sent == []  # nothing is undone (and nothing polls) while b1 is at work

    with django_capture_on_commit_callbacks(execute=True):
        finished = engine.record_step(saga.id, B1, Report(running.attempt, ok=True, result={"value": 2}), None)
    assert finished.decision is Decision.STOP
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATING  # not succeeded, and nothing sent forward
    assert saga.steps.get(index=B1).status == StepStatus.SUCCEEDED
    assert sent == [("compensate", saga.id, [B3, B1, A])]  # b1's report sent the chain

    for index in (B3, B1, A):
        assert execute_compensation(saga.id, index).decision is Decision.CONTINUE
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED
    assert list(saga.steps.values_list("status", flat=True)) == [
        StepStatus.COMPENSATED, StepStatus.COMPENSATED, StepStatus.FAILED, StepStatus.COMPENSATED, StepStatus.SKIPPED,
    ]


def test_a_running_member_that_then_fails_is_not_retried(db, sent):
    saga = start_saga(PARALLEL, input={"fail": {"b2": "permanent"}})
    execute_step(saga.id, A)
    running = engine.claim_step(saga.id, B1, None)
    execute_step(saga.id, B2)  # fails for good: the saga compensates

    outcome = engine.record_step(saga.id, B1, Report(running.attempt, ok=False, error="ConnectionError: flaked"),
                                 None)

    assert outcome.decision is Decision.STOP
    b1 = saga.steps.get(index=B1)
    assert b1.status == StepStatus.FAILED and b1.next_attempt_at is None
    assert execute_compensation(saga.id, B1).decision is Decision.CONTINUE
    assert execute_compensation(saga.id, A).decision is Decision.CONTINUE
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED


def test_a_running_member_whose_lease_expired_is_failed_and_compensated_by_the_sweeper(
        db, sent, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    saga = start_saga(PARALLEL, input={"fail": {"b2": "permanent"}})
    execute_step(saga.id, A)
    engine.claim_step(saga.id, B1, None)
    execute_step(saga.id, B2)  # fails for good: the saga compensates
    StepRecord.objects.filter(saga=saga, index=B1).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    make_due(saga)  # its due time was that lease
    sent.clear()

    with django_capture_on_commit_callbacks(execute=True):
        report = sweep()

    assert report.resumed_compensation == 1
    b1 = saga.steps.get(index=B1)
    assert b1.status == StepStatus.FAILED and "did not finish" in b1.error
    assert b1.may_have_effects  # its action may have done its work before it was lost: undo it too
    assert saga.events.filter(kind=EventKind.STEP_ATTEMPT_LOST, step=b1).count() == 1
    assert sent == [("compensate", saga.id, [B1, A])]


def test_members_are_compensated_in_any_order_but_before_earlier_stages(db, sent):
    saga = start_saga(PARALLEL, input={"fail": {"c": "permanent"}})
    for index in range(5):
        execute_step(saga.id, index)
    assert compensations_due(saga) == [B3, B2, B1, A]

    assert execute_compensation(saga.id, B1).decision is Decision.CONTINUE  # a sibling need not wait
    assert execute_compensation(saga.id, A).decision is Decision.STOP  # b2 and b3 are not undone yet
    assert execute_compensation(saga.id, B3).decision is Decision.CONTINUE
    assert execute_compensation(saga.id, B2).decision is Decision.CONTINUE
    assert execute_compensation(saga.id, A).decision is Decision.CONTINUE
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED


def test_sweeper_sends_the_members_of_a_stage_that_have_not_succeeded(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(PARALLEL, input={})
    execute_step(saga.id, A)
    execute_step(saga.id, B2)
    sent.clear()
    make_due(saga)

    with django_capture_on_commit_callbacks(execute=True):
        report = sweep()

    assert report.resumed_forward == 1
    assert sent == [("steps", saga.id, [B1, B3])]


def test_sweeper_sends_the_next_stage_when_the_join_message_was_lost(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(PARALLEL, input={})
    for index in (A, B1, B2, B3):
        execute_step(saga.id, index)  # on-commit callbacks never run here: the dispatch of c is lost
    sent.clear()
    make_due(saga)

    with django_capture_on_commit_callbacks(execute=True):
        sweep()

    assert sent == [("forward", saga.id, C)]


def test_sweeper_sends_a_whole_stage_none_of_whose_members_ran(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(PARALLEL, input={})
    execute_step(saga.id, A)
    sent.clear()
    make_due(saga)

    with django_capture_on_commit_callbacks(execute=True):
        sweep()

    assert sent == [("forward", saga.id, B1)]


def test_cancel_compensates_at_once_and_undoes_the_running_member_when_it_reports(
        db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(PARALLEL, input={})
    execute_step(saga.id, A)
    running = engine.claim_step(saga.id, B1, None)
    sent.clear()

    with django_capture_on_commit_callbacks(execute=True):
        saga = cancel(saga, reason="customer withdrew")
    assert saga.status == SagaStatus.COMPENSATING and saga.cancel_requested_at is not None
    assert sent == []  # b1 is at work: the chain waits for its report

    assert execute_step(saga.id, B2).decision is Decision.STOP  # nothing new starts
    assert saga.steps.get(index=B2).status == StepStatus.SKIPPED
    with django_capture_on_commit_callbacks(execute=True):
        engine.record_step(saga.id, B1, Report(running.attempt, ok=True, result={"value": 2}), None)
    assert sent == [("compensate", saga.id, [B1, A])]
    for index in (B1, A):
        execute_compensation(saga.id, index)
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED
    assert saga.error == "customer withdrew"
