"""The engine end to end: a real prefork worker, the real broker, the test database."""
import os
import signal

import pytest

from sagas import cancel, retry_compensation, start_saga
from sagas.engine import sweep
from sagas.models import EventKind, SagaStatus, StepStatus
from sagas.tasks import compensate_saga, run_step
from tests.helpers import make_due, wait_for_saga, wait_until
from tests.testapp.models import Call, Ledger

pytestmark = pytest.mark.integration

SAGA = "tests.three_steps"


def calls(saga, kind="action"):
    return list(Call.objects.filter(saga_id=saga.id, kind=kind).values_list("step", flat=True))


def step(saga, name):
    return saga.steps.get(name=name)


def test_three_step_saga_succeeds_and_passes_results_forward(worker):
    saga = wait_for_saga(start_saga(SAGA, input={}))

    assert saga.status == SagaStatus.SUCCEEDED
    assert [s.status for s in saga.steps.all()] == [StepStatus.SUCCEEDED] * 3
    assert saga.results == {
        "a": {"value": 1, "attempt": 1},
        "b": {"value": 2, "attempt": 1},
        "c": {"value": 4, "attempt": 1},  # 1 + (1 + 2): c saw both earlier results
    }
    assert step(saga, "c").result == {"value": 4, "attempt": 1}
    assert calls(saga) == ["a", "b", "c"]
    assert saga.started_at and saga.finished_at


def test_failure_at_last_step_compensates_in_reverse(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"fail": {"c": "permanent"}}))

    assert saga.status == SagaStatus.COMPENSATED
    assert calls(saga, "compensation") == ["b", "a"]
    assert [s.status for s in saga.steps.all()] == [
        StepStatus.COMPENSATED, StepStatus.COMPENSATED, StepStatus.FAILED,
    ]
    assert "c refused" in saga.error


def test_a_step_failed_for_good_compensates_without_failing_its_task(worker):
    logged_before = len(worker["log"].read_text())

    saga = wait_for_saga(start_saga(SAGA, input={"fail": {"c": "permanent"}}))

    assert saga.status == SagaStatus.COMPENSATED
    log = worker["log"].read_text()[logged_before:]
    # Its record started the compensation: the task ended normally, no error
    # callback ran, and nothing was traced as a crash.
    assert "failed for good, compensating: PermanentError: c refused" in log, log[-3000:]
    assert "sagas.compensate_saga" not in log and "Traceback" not in log, log[-3000:]


def test_flaky_step_succeeds_on_third_attempt(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"flaky": {"b": 2}}))

    assert saga.status == SagaStatus.SUCCEEDED
    b = step(saga, "b")
    assert b.attempts == 3
    assert b.result["attempt"] == 3
    failed_attempts = saga.events.filter(kind=EventKind.STEP_ATTEMPT_FAILED, step=b)
    assert [e.detail["attempt"] for e in failed_attempts] == [1, 2]
    assert all("ConnectionError" in e.detail["error"] for e in failed_attempts)


def test_step_failing_every_attempt_is_compensated_after_max_attempts(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"fail": {"b": "always"}}))

    assert saga.status == SagaStatus.COMPENSATED
    assert step(saga, "b").attempts == 3
    assert calls(saga) == ["a", "b", "b", "b"]
    assert calls(saga, "compensation") == ["a"]


def test_permanent_error_is_not_retried(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"fail": {"b": "permanent"}}))

    assert saga.status == SagaStatus.COMPENSATED
    b = step(saga, "b")
    assert b.attempts == 1
    assert b.status == StepStatus.FAILED
    assert b.error.startswith("PermanentError")
    assert calls(saga) == ["a", "b"]
    assert calls(saga, "compensation") == ["a"]


def test_step_past_its_timeout_is_compensated_with_a_timeout_error(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"sleep": {"c": 3}}))

    assert saga.status == SagaStatus.COMPENSATED
    c = step(saga, "c")
    assert c.status == StepStatus.FAILED
    assert "StepTimeout" in c.error and "exceeded 1s" in c.error
    assert saga.events.get(kind=EventKind.STEP_FAILED, step=c).detail["timeout"] is True
    assert calls(saga, "compensation") == ["b", "a"]


def test_step_ignoring_its_soft_limit_is_stopped_by_the_hard_limit(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"stubborn": {"c": 30}}))

    assert saga.status == SagaStatus.COMPENSATED
    c = step(saga, "c")
    assert c.status == StepStatus.COMPENSATED
    assert "hard time limit" in c.error
    assert c.may_have_effects  # killed mid-action: it may have done its work, so it is undone too
    assert calls(saga, "compensation") == ["c", "b", "a"]


def test_compensation_that_always_fails_leaves_saga_failed(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"fail": {"c": "permanent"}, "comp_fail": {"a": 99}}))

    assert saga.status == SagaStatus.FAILED
    assert step(saga, "b").status == StepStatus.COMPENSATED  # the later step was undone first
    a = step(saga, "a")
    assert a.status == StepStatus.COMPENSATION_FAILED
    assert a.compensation_attempts == 2
    assert "cannot undo a" in a.compensation_error
    assert "compensation of step a failed" in saga.error
    assert calls(saga, "compensation") == ["b", "a", "a"]


def test_retry_compensation_finishes_what_failed(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"fail": {"c": "permanent"}, "comp_fail": {"a": 3}}))
    assert saga.status == SagaStatus.FAILED

    retry_compensation(saga)
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.COMPENSATED
    assert step(saga, "a").status == StepStatus.COMPENSATED
    assert calls(saga, "compensation") == ["b", "a", "a", "a", "a"]  # b once; a: 2 failed, 1 failed, 1 ok


def test_idempotency_key_reuse_starts_nothing_new(worker):
    first = start_saga(SAGA, input={"x": 1}, idempotency_key="order-42")
    second = start_saga(SAGA, input={"x": 1}, idempotency_key="order-42")

    assert second.id == first.id
    wait_for_saga(first)
    assert calls(first) == ["a", "b", "c"]
    assert first.__class__.objects.filter(idempotency_key="order-42").count() == 1


def test_redelivered_step_of_a_finished_saga_runs_nothing(worker):
    saga = wait_for_saga(start_saga(SAGA, input={}))

    outcome = run_step.apply_async((str(saga.id), 1)).get(timeout=30)

    assert outcome == "stopped: saga is succeeded"
    assert calls(saga) == ["a", "b", "c"]


def test_same_step_delivered_twice_at_once_runs_the_action_once(worker):
    saga = start_saga(SAGA, input={"sleep": {"a": 1.5}})
    wait_until(lambda: calls(saga) == ["a"])
    duplicate = run_step.apply_async((str(saga.id), 0))  # a second delivery while the first runs

    saga = wait_for_saga(saga)
    # The duplicate found the step held by a live attempt and went no further (no
    # polling), or, picked up late, found it done.
    assert duplicate.get(timeout=30) in {"stopped: another attempt holds the step", "step already succeeded",
                                         "stopped: step already succeeded"}
    assert saga.status == SagaStatus.SUCCEEDED
    assert calls(saga) == ["a", "b", "c"]
    assert step(saga, "a").attempts == 1


def test_error_callback_delivered_twice_compensates_once(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"fail": {"c": "permanent"}}))

    assert compensate_saga.apply_async((str(saga.id),)).get(timeout=30) == "already handled"
    assert calls(saga, "compensation") == ["b", "a"]


def test_audit_trail_lists_every_transition_in_order(worker):
    saga = wait_for_saga(start_saga(SAGA, input={"fail": {"c": "permanent"}}))

    trail = [(e.kind, e.step.name if e.step else None) for e in saga.events.order_by("created_at", "id")]
    assert trail == [
        (EventKind.SAGA_CREATED, None),
        (EventKind.SAGA_STARTED, None),
        (EventKind.STEP_STARTED, "a"),
        (EventKind.STEP_SUCCEEDED, "a"),
        (EventKind.STEP_STARTED, "b"),
        (EventKind.STEP_SUCCEEDED, "b"),
        (EventKind.STEP_STARTED, "c"),
        (EventKind.STEP_FAILED, "c"),
        (EventKind.SAGA_COMPENSATING, None),
        (EventKind.COMPENSATION_STARTED, "b"),
        (EventKind.STEP_COMPENSATED, "b"),
        (EventKind.COMPENSATION_STARTED, "a"),
        (EventKind.STEP_COMPENSATED, "a"),
        (EventKind.SAGA_COMPENSATED, None),
    ]
    # A step_started event is written with its attempt's outcome, dated when the attempt began.
    for started in saga.events.filter(kind=EventKind.STEP_STARTED):
        ended = saga.events.filter(step=started.step, id__gt=started.id).order_by("created_at", "id").first()
        assert started.created_at <= ended.created_at


def test_worker_process_killed_mid_step_is_redelivered_and_finishes(worker):
    saga = start_saga(SAGA, input={"sleep_first": {"b": 30}})
    first = wait_until(lambda: Call.objects.filter(saga_id=saga.id, step="b").first())
    os.kill(first.pid, signal.SIGKILL)

    saga = wait_for_saga(saga, timeout=90)

    assert saga.status == SagaStatus.SUCCEEDED
    b = step(saga, "b")
    assert b.attempts == 2
    assert saga.events.filter(kind=EventKind.STEP_ATTEMPT_LOST, step=b).count() == 1
    assert calls(saga) == ["a", "b", "b", "c"]


def test_cancel_compensates_what_ran(worker):
    saga = start_saga(SAGA, input={"sleep": {"b": 1.5}})
    wait_until(lambda: "b" in calls(saga))

    cancel(saga)
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.COMPENSATED
    assert step(saga, "c").status == StepStatus.SKIPPED
    assert calls(saga, "compensation") == ["b", "a"]
    assert saga.events.filter(kind=EventKind.CANCEL_REQUESTED).count() == 1


def test_sweeper_restarts_a_saga_whose_first_message_was_lost(worker, monkeypatch):
    from sagas import canvas

    monkeypatch.setattr(canvas, "dispatch_forward", lambda *args, **kwargs: None)
    saga = start_saga(SAGA, input={})
    monkeypatch.undo()
    assert saga.status == SagaStatus.PENDING

    make_due(saga)

    report = sweep()

    assert report.resumed_forward == 1
    saga = wait_for_saga(saga)
    assert saga.status == SagaStatus.SUCCEEDED
    assert saga.events.filter(kind=EventKind.SAGA_RESUMED).count() == 1


def test_transactional_step_failure_leaves_no_rows(worker):
    saga = wait_for_saga(start_saga("tests.ledger", input={"amount": 5, "fail_after_write": True}))

    assert saga.status == SagaStatus.COMPENSATED
    assert step(saga, "credit").attempts == 2
    assert not Ledger.objects.filter(saga_id=saga.id).exists()


def test_transactional_step_compensation_nets_to_zero(worker):
    saga = wait_for_saga(start_saga("tests.ledger", input={"amount": 5, "fail": {"notify": "permanent"}}))

    assert saga.status == SagaStatus.COMPENSATED
    assert sorted(Ledger.objects.filter(saga_id=saga.id).values_list("amount", flat=True)) == [-5, 5]


def test_a_saga_longer_than_a_chain_segment_runs_every_step_once_forward_and_back(worker):
    from sagas.models import ChaosEffect

    done = wait_for_saga(start_saga("tests.long_line", input={}), timeout=120)
    undone = wait_for_saga(start_saga("tests.long_line", input={"fail": "s44"}), timeout=120)

    assert done.status == SagaStatus.SUCCEEDED and len(done.results) == 45
    assert [s.attempts for s in done.steps.all()] == [1] * 45
    assert undone.status == SagaStatus.COMPENSATED
    effects = ChaosEffect.objects.filter(saga_id=undone.id)
    assert effects.count() == 44 and not effects.filter(undone_at__isnull=True).exists()
    assert all(e.undo_runs == 1 for e in effects)
