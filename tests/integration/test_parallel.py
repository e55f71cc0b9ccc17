"""Parallel end to end: a real prefork worker (2 children), the real broker, the test database.

``tests.parallel`` is a -> Parallel("fanout", b1, b2, b3) -> c.
"""
import pytest

from sagas import cancel, start_saga
from sagas.engine import execute_step, sweep
from sagas.invariants import saga_problems
from sagas.models import EventKind, SagaStatus, StepStatus
from tests.helpers import make_due, wait_for_saga, wait_until
from tests.testapp.models import Call

pytestmark = pytest.mark.integration

SAGA = "tests.parallel"
MEMBERS = ("b1", "b2", "b3")


def calls(saga, kind="action"):
    return list(Call.objects.filter(saga_id=saga.id, kind=kind).values_list("step", flat=True))


def statuses(saga):
    return dict(saga.steps.values_list("name", "status"))


def event_ids(saga, kind, name):
    """Positions in the audit trail (in time order) of the step's events of ``kind``."""
    trail = list(saga.events.order_by("created_at", "id").values_list("kind", "step__name"))
    return [position for position, event in enumerate(trail) if event == (kind, name)]


def test_members_run_at_once_and_the_next_step_runs_after_them_all(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"sleep": {name: 0.6 for name in MEMBERS}}))

    assert saga.status == SagaStatus.SUCCEEDED
    assert set(statuses(saga).values()) == {StepStatus.SUCCEEDED}
    actions = list(Call.objects.filter(saga_id=saga.id, kind="action"))
    assert [c.step for c in actions][0] == "a" and [c.step for c in actions][-1] == "c"
    assert sorted(c.step for c in actions[1:4]) == list(MEMBERS)
    # Concurrency: with two pool children, two members start together, in two
    # processes, long before either's 0.6 s sleep is over.
    members = sorted((c for c in actions if c.step in MEMBERS), key=lambda c: c.created_at)
    assert (members[1].created_at - members[0].created_at).total_seconds() < 0.5
    assert members[0].pid != members[1].pid
    # The audit trail says the same: a second member started before the first succeeded ...
    first_success = min(i for name in MEMBERS for i in event_ids(saga, EventKind.STEP_SUCCEEDED, name))
    second_start = sorted(i for name in MEMBERS for i in event_ids(saga, EventKind.STEP_STARTED, name))[1]
    assert second_start < first_success
    # ... and c started only after every member had succeeded.
    last_success = max(i for name in MEMBERS for i in event_ids(saga, EventKind.STEP_SUCCEEDED, name))
    assert event_ids(saga, EventKind.STEP_STARTED, "c")[0] > last_success
    assert saga.results["c"] == {"value": 8, "attempt": 1}  # 1 + (1 + 2 + 2 + 2): c saw a and every member
    assert saga_problems(saga) == []


def test_a_member_failing_for_good_compensates_its_siblings_then_the_earlier_steps(worker):
    # b2 fails only after a second, so b1 and b3 have both succeeded by then.
    saga = wait_for_saga(start_saga(SAGA, input={"fail": {"b2": "permanent"}, "sleep": {"b2": 1.0}}))

    assert saga.status == SagaStatus.COMPENSATED
    assert statuses(saga) == {
        "a": StepStatus.COMPENSATED, "b1": StepStatus.COMPENSATED, "b2": StepStatus.FAILED,
        "b3": StepStatus.COMPENSATED, "c": StepStatus.SKIPPED,
    }
    assert calls(saga, "compensation") == ["b3", "b1", "a"]
    assert "c" not in calls(saga)
    assert "b2 refused" in saga.error
    assert saga_problems(saga) == []


def test_a_sibling_still_running_when_a_member_fails_finishes_and_is_then_compensated(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"fail": {"b2": "permanent"}, "sleep": {"b1": 1.5}}))

    assert saga.status == SagaStatus.COMPENSATED
    steps = statuses(saga)
    assert steps["b1"] == StepStatus.COMPENSATED and steps["b2"] == StepStatus.FAILED
    assert steps["b3"] in (StepStatus.COMPENSATED, StepStatus.SKIPPED)  # it may not have started in time
    assert steps["c"] == StepStatus.SKIPPED
    # b1 succeeded after compensation had begun, and was undone after that, before a.
    compensating = list(saga.events.order_by("created_at", "id").values_list("kind", flat=True)).index(
        EventKind.SAGA_COMPENSATING)
    assert event_ids(saga, EventKind.STEP_SUCCEEDED, "b1")[0] > compensating
    assert event_ids(saga, EventKind.STEP_COMPENSATED, "b1")[0] < event_ids(saga, EventKind.STEP_COMPENSATED, "a")[0]
    assert calls(saga, "compensation")[-1] == "a"
    assert saga.error.startswith("step b2 failed")
    assert saga_problems(saga) == []


def test_cancel_lets_running_members_finish_then_compensates_them(worker):
    saga = start_saga(SAGA, input={"sleep": {"b1": 1.0, "b2": 1.0}})
    wait_until(lambda: {"b1", "b2"} <= set(calls(saga)))

    cancel(saga)
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.COMPENSATED
    steps = statuses(saga)
    assert steps["b1"] == steps["b2"] == StepStatus.COMPENSATED
    assert steps["c"] == StepStatus.SKIPPED
    assert calls(saga, "compensation")[-1] == "a"
    assert saga_problems(saga) == []


def test_sweeper_resumes_a_parallel_stage_whose_messages_were_lost(worker, monkeypatch):
    from sagas import canvas

    monkeypatch.setattr(canvas, "dispatch_forward", lambda *args, **kwargs: None)
    saga = start_saga(SAGA, input={})
    execute_step(saga.id, 0)  # a, in this process: the group it would have sent is lost
    execute_step(saga.id, 2)  # b2 too
    monkeypatch.undo()

    make_due(saga)

    report = sweep()

    assert report.resumed_forward == 1
    saga = wait_for_saga(saga)
    assert saga.status == SagaStatus.SUCCEEDED
    assert sorted(calls(saga)) == ["a", "b1", "b2", "b3", "c"]  # nothing ran twice
    assert saga.events.get(kind=EventKind.SAGA_RESUMED).detail["steps"] == [1, 3]
    assert saga_problems(saga) == []


def test_sweeper_sends_the_step_after_a_parallel_whose_join_was_lost(worker, monkeypatch):
    from sagas import canvas

    monkeypatch.setattr(canvas, "dispatch_forward", lambda *args, **kwargs: None)
    saga = start_saga(SAGA, input={})
    for index in range(4):
        execute_step(saga.id, index)  # a and every member; the last one's dispatch of c is lost
    monkeypatch.undo()

    make_due(saga)

    sweep()

    saga = wait_for_saga(saga)
    assert saga.status == SagaStatus.SUCCEEDED
    assert calls(saga) == ["a", "b1", "b2", "b3", "c"]
    assert saga_problems(saga) == []


def test_a_member_killed_by_its_hard_time_limit_is_failed_and_compensated(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"stubborn": {"b1": 30}}), timeout=90)

    assert saga.status == SagaStatus.COMPENSATED
    steps = statuses(saga)
    assert steps["c"] == StepStatus.SKIPPED
    assert steps["b1"] == steps["b2"] == steps["b3"] == steps["a"] == StepStatus.COMPENSATED
    assert "hard time limit" in saga.steps.get(name="b1").error
    # b1 was killed mid-action: it may have done its work, so it is undone too.
    assert saga.steps.get(name="b1").may_have_effects
    assert calls(saga, "compensation") == ["b3", "b2", "b1", "a"]
    assert saga_problems(saga) == []
