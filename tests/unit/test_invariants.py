"""The invariants a finished saga satisfies, parallel ones included."""
from sagas import start_saga
from sagas.engine import execute_compensation, execute_step
from sagas.invariants import saga_problems
from sagas.models import EventKind, SagaEvent
from tests.helpers import compensations_due

PARALLEL = "tests.parallel"  # a -> Parallel("fanout", b1, b2, b3) -> c


def test_a_parallel_saga_run_in_any_member_order_is_consistent(db, sent):
    saga = start_saga(PARALLEL, input={})
    for index in (0, 3, 1, 2, 4):
        execute_step(saga.id, index)
    saga.refresh_from_db()

    assert saga_problems(saga) == []


def test_a_compensated_parallel_saga_is_consistent(db, sent):
    saga = start_saga(PARALLEL, input={"fail": {"b2": "permanent"}})
    for index in (0, 1, 3, 2):
        execute_step(saga.id, index)
    for index in compensations_due(saga):
        execute_compensation(saga.id, index)
    saga.refresh_from_db()

    assert saga.status == "compensated"
    assert saga_problems(saga) == []


def test_a_step_started_before_the_earlier_stage_succeeded_is_reported(db, sent):
    saga = start_saga(PARALLEL, input={})
    for index in range(5):
        execute_step(saga.id, index)
    c = saga.steps.get(name="c")
    # Forge the trail: c starts again, before b2's success is recorded.
    SagaEvent.objects.filter(saga=saga, step=c).delete()
    b2_success = saga.events.get(kind=EventKind.STEP_SUCCEEDED, step__name="b2")
    b2_success.delete()
    SagaEvent.objects.create(saga=saga, step=c, kind=EventKind.STEP_STARTED)
    SagaEvent.objects.create(saga=saga, step=b2_success.step, kind=EventKind.STEP_SUCCEEDED)
    saga.refresh_from_db()

    assert saga_problems(saga) == ["step c started before stage 1 had succeeded"]
