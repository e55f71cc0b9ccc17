"""Child sagas and conditions end to end: a real prefork worker, the real broker, the test database."""
import os
import subprocess
import time
import uuid

import pytest

from sagas import cancel, canvas, complete_step, pause, registry, resume, retry_compensation, start_saga
from sagas.engine import sweep
from sagas.models import EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import kill_whole_worker, make_due, wait_for_saga, wait_until
from tests.integration.conftest import start_worker
from tests.testapp.models import Call

pytestmark = pytest.mark.integration

NESTED = "tests.nested"  # a, ChildSaga child (tests.three_steps: a, b, c), c
# Long enough that a step that went on without its child's end would have run by now.
SETTLE = 1.0


def calls(saga, kind="action"):
    return list(Call.objects.filter(saga_id=saga.pk, kind=kind).order_by("id").values_list("step", flat=True))


def child_of(parent, timeout: float = 30.0) -> SagaInstance:
    return wait_until(lambda: SagaInstance.objects.filter(parent=parent).first(), timeout=timeout)


def step_of(saga, name) -> StepRecord:
    return StepRecord.objects.get(saga=saga, name=name)


def gate(tmp_path):
    return tmp_path / f"gate-{uuid.uuid4().hex[:6]}"


def started(path):
    """The action waiting for ``path`` has begun (``tests.testapp.sagas._wait_for``)."""
    return wait_until(lambda: path.with_name(path.name + ".started").exists())


# --- the child's end moves its parent ------------------------------------------------------------------


def test_a_childs_success_succeeds_its_step_with_the_childs_results_and_the_parent_finishes(worker):
    parent = start_saga(NESTED, input={"child": {"flaky": {"b": 1}}})

    parent = wait_for_saga(parent)

    child = SagaInstance.objects.get(parent=parent)
    assert (parent.status, child.status) == (SagaStatus.SUCCEEDED, SagaStatus.SUCCEEDED)
    assert (child.parent_step.name, child.depth) == ("child", 1)
    assert parent.results["child"] == {"saga_id": str(child.pk), "results": child.results}
    assert calls(child) == ["a", "b", "b", "c"]
    assert calls(parent) == ["a", "c"]
    # The parent's step waited without a worker: its wait began before the child started, ended after it ended.
    record = step_of(parent, "child")
    assert record.waiting_since <= child.started_at and record.finished_at >= child.finished_at
    assert (record.attempts, record.held_by) == (1, None)


def test_a_compensated_child_fails_its_step_and_the_parent_compensates(worker):
    parent = start_saga(NESTED, input={"child": {"fail": {"b": "permanent"}}})

    parent = wait_for_saga(parent)

    child = SagaInstance.objects.get(parent=parent)
    assert (parent.status, child.status) == (SagaStatus.COMPENSATED, SagaStatus.COMPENSATED)
    assert calls(child, "compensation") == ["a"]
    assert calls(parent, "compensation") == ["a"]
    record = step_of(parent, "child")
    assert record.status == StepStatus.FAILED and "was compensated: step b failed" in record.error
    assert "c" not in calls(parent)


def test_the_parent_failing_after_its_child_succeeded_undoes_the_child_as_a_whole(worker):
    parent = start_saga(NESTED, input={"fail": {"c": "permanent"}})

    parent = wait_for_saga(parent)

    child = SagaInstance.objects.get(parent=parent)
    assert (parent.status, child.status) == (SagaStatus.COMPENSATED, SagaStatus.COMPENSATED)
    assert calls(child) == ["a", "b", "c"]
    assert calls(child, "compensation") == ["c", "b", "a"]  # its own compensations, in reverse
    assert calls(parent, "compensation") == ["a"]
    assert step_of(parent, "child").status == StepStatus.COMPENSATED
    kinds = list(child.events.filter(kind__in=[EventKind.SAGA_SUCCEEDED, EventKind.SAGA_COMPENSATING,
                                               EventKind.SAGA_COMPENSATED]).values_list("kind", flat=True))
    assert kinds == [EventKind.SAGA_SUCCEEDED, EventKind.SAGA_COMPENSATING, EventKind.SAGA_COMPENSATED]
    # The parent's undoing reached a only once the child was undone.
    child_undone = child.events.get(kind=EventKind.SAGA_COMPENSATED).created_at
    assert parent.events.get(kind=EventKind.COMPENSATION_STARTED, step__name="a").created_at >= child_undone


def test_a_failed_child_holds_its_parent_until_a_person_retries_its_compensation(worker):
    parent = start_saga(NESTED, input={"child": {"fail": {"c": "permanent"}, "comp_fail": {"b": 2}}})
    child = wait_for_saga(child_of(parent))
    assert child.status == SagaStatus.FAILED
    time.sleep(SETTLE)

    assert SagaInstance.objects.get(pk=parent.pk).status == SagaStatus.RUNNING
    assert step_of(parent, "child").status == StepStatus.WAITING
    assert calls(parent, "compensation") == []

    retry_compensation(child)
    parent = wait_for_saga(parent)

    assert SagaInstance.objects.get(pk=child.pk).status == SagaStatus.COMPENSATED
    assert parent.status == SagaStatus.COMPENSATED
    assert calls(parent, "compensation") == ["a"]


def test_a_child_whose_undoing_fails_fails_its_parents_and_a_retry_of_the_parent_finishes_both(worker):
    parent = start_saga(NESTED, input={"fail": {"c": "permanent"}, "child": {"comp_fail": {"c": 2}}})

    parent = wait_for_saga(parent)

    child = SagaInstance.objects.get(parent=parent)
    assert (parent.status, child.status) == (SagaStatus.FAILED, SagaStatus.FAILED)
    assert step_of(parent, "child").status == StepStatus.COMPENSATION_FAILED
    assert calls(parent, "compensation") == []  # a is not undone while the child is not

    retry_compensation(parent)  # reaches the child: its failed compensation is retried too
    parent = wait_for_saga(parent)

    assert parent.status == SagaStatus.COMPENSATED
    assert SagaInstance.objects.get(pk=child.pk).status == SagaStatus.COMPENSATED
    assert calls(child, "compensation") == ["c", "c", "c", "b", "a"]
    assert calls(parent, "compensation") == ["a"]


# --- down the tree ---------------------------------------------------------------------------------


def test_cancel_while_the_child_runs_cancels_the_child_and_undoes_both(worker, tmp_path):
    opened = gate(tmp_path)
    parent = start_saga(NESTED, input={"child": {"wait_for_file": {"b": str(opened)}}})
    child = child_of(parent)
    started(opened)

    cancel(parent, reason="no longer needed")
    opened.touch()  # the child's attempt in flight finishes, and is undone with the rest

    parent = wait_for_saga(parent)
    child = SagaInstance.objects.get(pk=child.pk)
    assert (parent.status, child.status) == (SagaStatus.COMPENSATED, SagaStatus.COMPENSATED)
    assert child.cancel_requested_at is not None
    assert "c" not in calls(child)
    assert calls(child, "compensation") == ["b", "a"]
    assert calls(parent, "compensation") == ["a"]


def test_pause_and_resume_of_the_parent_reach_its_running_child(worker, tmp_path):
    opened = gate(tmp_path)
    parent = start_saga(NESTED, input={"child": {"wait_for_file": {"b": str(opened)}}})
    child = child_of(parent)
    started(opened)

    pause(parent, reason="audit")
    opened.touch()
    wait_until(lambda: step_of(child, "b").status == StepStatus.SUCCEEDED)
    time.sleep(SETTLE)

    assert SagaInstance.objects.get(pk=child.pk).status == SagaStatus.PAUSED
    assert calls(child) == ["a", "b"]  # c did not start

    resume(parent)
    parent = wait_for_saga(parent)

    assert parent.status == SagaStatus.SUCCEEDED
    assert calls(SagaInstance.objects.get(pk=child.pk)) == ["a", "b", "c"]


def test_a_child_that_does_not_end_in_time_is_cancelled_and_its_step_fails(worker, tmp_path):
    opened = gate(tmp_path)
    parent = start_saga("tests.nested_timeout", input={"child": {"wait_for_file": {"b": str(opened)}}})
    child = child_of(parent)
    started(opened)
    time.sleep(1.2)  # past its one second

    assert sweep().waits_timed_out == 1
    opened.touch()

    parent = wait_for_saga(parent)
    assert parent.status == SagaStatus.COMPENSATED
    assert SagaInstance.objects.get(pk=child.pk).status == SagaStatus.COMPENSATED
    assert step_of(parent, "child").error == "ChildSagaTimeout: its child saga did not end within 1s"


# --- inside a Parallel, duplicates, lost messages -------------------------------------------------------


def test_a_child_inside_a_parallel_joins_with_its_siblings(worker):
    parent = wait_for_saga(start_saga("tests.nested_parallel", input={}))

    child = SagaInstance.objects.get(parent=parent)
    assert (parent.status, child.status) == (SagaStatus.SUCCEEDED, SagaStatus.SUCCEEDED)
    assert calls(parent) == ["a", "b2", "c"]
    c_began = Call.objects.get(saga_id=parent.pk, step="c").created_at
    assert c_began >= child.finished_at  # the join waited for the child


def test_a_child_inside_a_parallel_whose_sibling_fails_is_cancelled(worker, tmp_path):
    opened = gate(tmp_path)
    parent = start_saga("tests.nested_parallel", input={
        "fail": {"b2": "permanent"}, "wait_for_file": {"b2": str(opened)}})
    child = child_of(parent)
    opened.touch()

    parent = wait_for_saga(parent)

    assert parent.status == SagaStatus.COMPENSATED
    assert SagaInstance.objects.get(pk=child.pk).status == SagaStatus.COMPENSATED
    assert calls(parent, "compensation") == ["a"]


def test_a_duplicate_delivery_of_the_parents_step_never_starts_a_second_child(worker, tmp_path):
    opened = gate(tmp_path)
    parent = start_saga(NESTED, input={"wait_for_file": {"a": str(opened)}})
    started(opened)
    definition = registry.get(NESTED)
    copy = canvas.step_signature(parent.id, 1, definition.step_at(1), definition)

    opened.touch()  # a ends; its chain sends the child's step, while copies of that message arrive too
    for countdown in (0, 0.02, 0.05, 0.1, 0.2, 0.5):
        copy.apply_async(countdown=countdown)
    parent = wait_for_saga(parent)
    copy.apply_async()  # and one after the parent finished
    time.sleep(SETTLE)

    assert parent.status == SagaStatus.SUCCEEDED
    assert SagaInstance.objects.filter(parent=parent).count() == 1
    assert SagaInstance.objects.count() == 2
    record = step_of(parent, "child")
    assert record.attempts == 1
    assert parent.events.filter(kind=EventKind.STEP_WAITING, step=record).count() == 1


def test_a_lost_end_message_is_made_good_by_the_sweeper(worker, monkeypatch):
    parent = start_saga("tests.nested_gate", input={})
    child = child_of(parent)
    wait_until(lambda: step_of(child, "gate").status == StepStatus.WAITING)
    monkeypatch.setattr(canvas, "dispatch_child_ended", lambda parent_id, child_id: None)  # the message is lost

    complete_step(child, "gate", result={"value": 5})  # the child's end, here
    time.sleep(SETTLE)

    assert SagaInstance.objects.get(pk=child.pk).status == SagaStatus.SUCCEEDED
    assert step_of(parent, "child").status == StepStatus.WAITING  # nothing moved the parent
    make_due(parent)  # as if a stall time had passed

    sweep()
    parent = wait_for_saga(parent)

    assert parent.status == SagaStatus.SUCCEEDED
    assert parent.results["child"]["results"]["gate"]["value"] == 5
    assert calls(parent) == ["a", "c"]


@pytest.mark.parametrize("killed", ["pool child", "whole worker"])
def test_a_worker_killed_between_the_childs_end_and_the_parents_move_is_repaired_by_the_sweeper(
        worker, tmp_path, killed):
    # A worker of its own runs the whole tree; where the transaction that ends the child has committed and
    # its message to the parent is not sent yet, the process that committed it is SIGKILLed: the pool
    # child by itself ("kill"), or the whole worker, main process and pool children, by this test while
    # the pool child holds there ("hold").
    stopped = tmp_path / "child-ended"
    how = "kill" if killed == "pool child" else "hold"
    with start_worker(queue=f"kill-{uuid.uuid4().hex[:6]}", concurrency=1,
                      extra_env={"TESTS_STOP_AT_CHILD_END": f"{how}:{stopped}"}) as doomed:
        parent = start_saga("tests.nested_unhurried", input={})  # its child's steps: no tight time limit
        child = child_of(parent)
        wait_until(stopped.exists, timeout=60)
        pid = int(wait_until(stopped.read_text, timeout=5))
        if killed == "whole worker":
            assert pid in [int(p) for p in subprocess.run(["pgrep", "-P", str(doomed["process"].pid)],
                                                          capture_output=True, text=True).stdout.split()]
            kill_whole_worker(doomed["process"])
        else:  # the worker re-queues the step its pool child died in: delivered again, it finds it done
            wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10)
            wait_until(lambda: "'stopped: saga is succeeded'" in doomed["log"].read_text(), timeout=60)
        time.sleep(SETTLE)

        assert SagaInstance.objects.get(pk=child.pk).status == SagaStatus.SUCCEEDED
        assert SagaInstance.objects.get(pk=parent.pk).status == SagaStatus.RUNNING
        assert step_of(parent, "child").status == StepStatus.WAITING  # nothing told the parent
    make_due(parent)  # as if a stall time had passed

    sweep()  # what beat runs every few seconds; the parent's next step goes to the session's worker
    parent = wait_for_saga(parent)

    assert parent.status == SagaStatus.SUCCEEDED
    child = SagaInstance.objects.get(pk=child.pk)
    assert parent.results["child"] == {"saga_id": str(child.pk), "results": child.results}
    assert calls(parent) == ["a", "c"] and calls(child) == ["a", "b"]  # nothing ran twice
    assert SagaInstance.objects.filter(parent=parent).count() == 1
    record = step_of(parent, "child")
    assert (record.status, record.attempts) == (StepStatus.SUCCEEDED, 1)
    assert parent.events.filter(kind=EventKind.STEP_SUCCEEDED, step=record).count() == 1


# --- depth ------------------------------------------------------------------------------------------


def test_nesting_deeper_than_the_limit_fails_the_step_and_the_whole_tree_is_undone(worker, settings):
    root = start_saga("tests.recursive", input={})

    root = wait_for_saga(root, timeout=120)

    tree = list(SagaInstance.objects.order_by("depth"))
    assert [s.depth for s in tree] == list(range(settings.SAGAS_MAX_DEPTH + 1))
    assert all(s.status == SagaStatus.COMPENSATED for s in tree)
    deepest = tree[-1]
    assert f"deeper than SAGAS_MAX_DEPTH ({settings.SAGAS_MAX_DEPTH})" in step_of(deepest, "deeper").error
    assert all(calls(s, "compensation") == ["a"] for s in tree)


# --- conditions --------------------------------------------------------------------------------------


def test_conditions_that_hold_run_their_steps(worker):
    saga = wait_for_saga(start_saga("tests.conditional", input={}))

    assert saga.status == SagaStatus.SUCCEEDED
    assert sorted(calls(saga)) == ["a", "b", "c", "d", "e"]


def test_false_conditions_skip_their_steps_and_the_saga_goes_on(worker):
    saga = wait_for_saga(start_saga("tests.conditional", input={"skip": ["b", "p", "e"]}))

    assert saga.status == SagaStatus.SUCCEEDED
    assert calls(saga) == ["a"]
    statuses = dict(saga.steps.values_list("name", "status"))
    assert statuses == {"a": "succeeded", "b": "skipped", "c": "skipped", "d": "skipped", "e": "skipped"}
    reasons = set(saga.events.filter(kind=EventKind.STEP_SKIPPED).values_list("detail__reason", flat=True))
    assert reasons == {"condition false"}


def test_a_skipped_step_is_not_compensated_when_the_saga_is_undone(worker):
    saga = wait_for_saga(start_saga("tests.conditional", input={"skip": ["c"], "fail": {"e": "permanent"}}))

    assert saga.status == SagaStatus.COMPENSATED
    assert sorted(calls(saga, "compensation")) == ["a", "b", "d"]


def test_a_false_condition_on_a_child_saga_starts_no_child(worker):
    saga = wait_for_saga(start_saga("tests.conditional_child", input={"with_child": False}))

    assert saga.status == SagaStatus.SUCCEEDED
    assert not SagaInstance.objects.filter(parent=saga).exists()
    assert step_of(saga, "child").status == StepStatus.SKIPPED

