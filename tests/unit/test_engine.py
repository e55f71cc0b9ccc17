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
def sent(monkeypatch):
    """Record what the engine would send to the broker."""
    from sagas import canvas

    messages = []
    monkeypatch.setattr(canvas, "dispatch_forward", lambda saga_id, index=0: messages.append(("forward", saga_id, index)))
    monkeypatch.setattr(canvas, "dispatch_compensation", lambda saga_id, idx: messages.append(("compensate", saga_id, idx)))
    return messages


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
