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

    with pytest.raises(InvalidTransition, match="only a pending or running saga can be cancelled"):
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

from sagas.engine import Decision, execute_compensation, execute_step, sweep  # noqa: E402


def test_redelivered_step_that_already_succeeded_is_not_run_again(db, sent):
    saga = start_saga(SAGA, input={})
    assert execute_step(saga.id, 0).decision is Decision.CONTINUE

    again = execute_step(saga.id, 0)

    assert again.decision is Decision.CONTINUE and again.reason == "step already succeeded"
    assert saga.steps.get(index=0).attempts == 1


def test_step_held_by_a_live_attempt_makes_a_duplicate_wait(db, sent):
    from django.utils import timezone
    from datetime import timedelta

    saga = start_saga(SAGA, input={})
    StepRecord.objects.filter(saga=saga, index=0).update(
        status=StepStatus.RUNNING, attempts=1, lease_expires_at=timezone.now() + timedelta(seconds=30))
    SagaInstance.objects.filter(pk=saga.pk).update(status=SagaStatus.RUNNING)

    outcome = execute_step(saga.id, 0)

    assert outcome.decision is Decision.RETRY and 0 < outcome.countdown <= 5
    assert saga.steps.get(index=0).attempts == 1


def test_step_out_of_order_does_nothing(db, sent):
    saga = start_saga(SAGA, input={})

    assert execute_step(saga.id, 2).decision is Decision.STOP
    assert saga.steps.get(index=2).status == StepStatus.PENDING


def test_failed_step_tells_the_task_to_fail_again_on_redelivery(db, sent):
    saga = start_saga(SAGA, input={"fail": {"a": "permanent"}})
    assert execute_step(saga.id, 0).decision is Decision.FAILED

    assert execute_step(saga.id, 0).decision is Decision.FAILED  # so the error callback is sure to run
    assert saga.steps.get(index=0).attempts == 1


def test_sweeper_starts_compensation_when_the_error_callback_was_lost(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(SAGA, input={"fail": {"b": "permanent"}})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)
    sent.clear()

    with django_capture_on_commit_callbacks(execute=True):
        report = sweep(stall_after=0)

    saga.refresh_from_db()
    assert report.compensation_started == 1
    assert saga.status == SagaStatus.COMPENSATING
    assert sent == [("compensate", saga.id, [0])]


def test_sweeper_resumes_a_compensation_that_stalled(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(SAGA, input={"fail": {"c": "permanent"}})
    for index in range(3):
        execute_step(saga.id, index)
    from sagas.engine import begin_compensation
    assert begin_compensation(saga.id) == [1, 0]
    assert execute_compensation(saga.id, 1).decision is Decision.CONTINUE
    sent.clear()

    with django_capture_on_commit_callbacks(execute=True):
        report = sweep(stall_after=0)

    assert report.resumed_compensation == 1
    assert sent == [("compensate", saga.id, [0])]


def test_sweeper_leaves_recent_sagas_alone(db, sent):
    start_saga(SAGA, input={})

    assert sweep(stall_after=3600).total == 0


def test_compensation_out_of_order_waits_for_later_steps(db, sent):
    saga = start_saga(SAGA, input={"fail": {"c": "permanent"}})
    for index in range(3):
        execute_step(saga.id, index)
    from sagas.engine import begin_compensation
    begin_compensation(saga.id)

    assert execute_compensation(saga.id, 0).decision is Decision.STOP
    assert saga.steps.get(index=0).status == StepStatus.SUCCEEDED
