"""The pivot, pause, resume and skip end to end: a real prefork worker, the real broker, the test database."""
import time
import uuid

import pytest

from sagas import complete_step, pause, resume, skip_step, start_saga
from sagas.engine import sweep
from sagas.models import EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import wait_for_saga, wait_until
from tests.testapp.models import Call

pytestmark = pytest.mark.integration

SAGA = "tests.three_steps"
PIVOTED = "tests.pivoted"
# Long enough that a chain that went on while a saga is paused would have run its next step.
SETTLE = 1.0


def calls(saga, kind="action"):
    return list(Call.objects.filter(saga_id=saga.pk, kind=kind).order_by("id").values_list("step", flat=True))


def gate(tmp_path):
    return tmp_path / f"gate-{uuid.uuid4().hex[:6]}"


def test_a_failure_before_the_pivot_compensates(worker):
    saga = wait_for_saga(start_saga(PIVOTED, input={"fail": {"ship": "permanent"}}))

    assert saga.status == SagaStatus.COMPENSATED
    assert calls(saga, "compensation") == ["a"]


def test_a_failure_after_the_pivot_pauses_then_resume_with_corrected_input_finishes(worker):
    saga = wait_for_saga(start_saga(PIVOTED, input={"fail": {"notify": "always"}}),
                         statuses=(SagaStatus.PAUSED, SagaStatus.COMPENSATED, SagaStatus.SUCCEEDED))

    assert saga.status == SagaStatus.PAUSED and saga.pause_cause == "after_pivot"
    assert calls(saga) == ["a", "ship", "notify", "notify", "notify"]  # its three attempts
    assert calls(saga, "compensation") == []  # past the pivot nothing is undone

    resume(saga, input={"fail": {}})
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.SUCCEEDED
    assert calls(saga)[-2:] == ["notify", "close"]
    assert saga.results["notify"]["attempt"] == 4  # the first of its fresh budget


def test_skip_a_step_after_the_pivot_and_the_saga_goes_on(worker):
    saga = wait_for_saga(start_saga(PIVOTED, input={"fail": {"notify": "permanent"}}),
                         statuses=(SagaStatus.PAUSED,))

    skip_step(saga, "notify", result={"value": 50}, reason="called the customer")
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.SUCCEEDED
    assert saga.results["notify"] == {"value": 50}
    assert saga.results["close"]["value"] == 1 + 2 + 50 + 1  # close saw the person's result


def test_pause_while_a_step_runs_lets_it_finish_and_starts_nothing_until_resumed(worker, tmp_path):
    opened = gate(tmp_path)
    saga = start_saga(SAGA, input={"wait_for_file": {"b": str(opened)}})
    wait_until(lambda: "b" in calls(saga))

    pause(saga, reason="supplier outage")
    opened.touch()  # the attempt in flight finishes while the saga is paused
    wait_until(lambda: StepRecord.objects.get(saga=saga, name="b").status == StepStatus.SUCCEEDED)
    time.sleep(SETTLE)

    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.PAUSED
    assert calls(saga) == ["a", "b"]  # c did not start

    resume(saga)
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.SUCCEEDED and calls(saga) == ["a", "b", "c"]


def test_pause_during_compensation_holds_it_and_resume_finishes_it(worker, tmp_path):
    opened = gate(tmp_path)
    saga = start_saga(SAGA, input={"fail": {"c": "permanent"}, "wait_for_file": {"undo-b": str(opened)}})
    wait_until(lambda: "b" in calls(saga, "compensation"))

    pause(saga)
    opened.touch()
    wait_until(lambda: StepRecord.objects.get(saga=saga, name="b").status == StepStatus.COMPENSATED)
    time.sleep(SETTLE)

    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.PAUSED
    assert calls(saga, "compensation") == ["b"]  # a is not undone yet

    assert resume(saga).status == SagaStatus.COMPENSATING
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.COMPENSATED and calls(saga, "compensation") == ["b", "a"]


def test_a_signal_while_paused_is_applied_on_resume(worker):
    saga = start_saga("tests.gated", input={})
    wait_until(lambda: StepRecord.objects.get(saga=saga, name="gate").status == StepStatus.WAITING)
    pause(saga)

    complete_step(saga, "gate", result={"approved": True})
    time.sleep(SETTLE)

    assert StepRecord.objects.get(saga=saga, name="gate").status == StepStatus.SUCCEEDED
    assert calls(saga) == ["a", "gate"]
    resume(saga)
    saga = wait_for_saga(saga)
    assert saga.status == SagaStatus.SUCCEEDED and calls(saga) == ["a", "gate", "c"]


def test_a_deadline_passing_while_paused_is_applied_on_resume(worker):
    saga = start_saga("tests.gated_short", input={})  # its wait times out after a second
    wait_until(lambda: StepRecord.objects.get(saga=saga, name="gate").status == StepStatus.WAITING)
    pause(saga)
    time.sleep(1.5)

    assert sweep().waits_timed_out == 0  # the sweeper leaves a paused saga alone
    assert StepRecord.objects.get(saga=saga, name="gate").status == StepStatus.WAITING

    resume(saga)
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.COMPENSATED
    assert "SignalTimeout" in saga.steps.get(name="gate").error
    assert calls(saga, "compensation") == ["gate", "a"]
    assert saga.events.filter(kind=EventKind.SAGA_PAUSED).count() == 1
