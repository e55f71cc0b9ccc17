"""Waiting steps end to end: a real prefork worker, the real broker, the test database, real HTTP where it matters."""
import threading
import time

import pytest
from django.contrib.auth.models import Permission, User
from django.db import close_old_connections, connections
from django.db.models.functions import Now
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from sagas import InvalidTransition, cancel, complete_step, fail_step, start_saga
from sagas.engine import complete_step_by_token, sweep
from sagas.models import EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import wait_for_saga, wait_until
from tests.testapp.models import Call, Seen

pytestmark = pytest.mark.integration


def gate_of(saga) -> StepRecord:
    return StepRecord.objects.get(saga_id=saga.pk, name="gate")


def wait_for_gate(saga, status=StepStatus.WAITING) -> StepRecord:
    return wait_until(lambda: (gate := gate_of(saga)).status == status and gate, timeout=30)


@pytest.fixture
def approver(worker):
    user = User.objects.create_user("approver", password="x")
    user.user_permissions.add(Permission.objects.get(codename="change_call", content_type__app_label="testapp"))
    return User.objects.get(pk=user.pk)


def test_a_waiting_step_holds_no_worker_and_its_signal_lets_the_saga_finish(worker, approver):
    saga = start_saga("tests.gated", input={})
    gate = wait_for_gate(saga)
    time.sleep(0.5)  # a chain that went on would have run c by now

    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.RUNNING
    assert (gate.lease_expires_at, gate.held_by) == (None, None)
    assert not Call.objects.filter(saga_id=saga.pk, step="c").exists()

    complete_step(saga, "gate", result={"approved_by": "approver", "value": 10}, by=approver)

    saga = wait_for_saga(saga)
    assert saga.status == SagaStatus.SUCCEEDED
    assert saga.results["gate"] == {"value": 10, "attempt": 1, "approved_by": "approver"}
    assert saga.results["c"]["value"] == 1 + 10 + 1  # c saw the merged result
    assert saga.events.get(kind=EventKind.STEP_SIGNALLED).detail["by_user_id"] == approver.pk


def test_a_failed_wait_compensates_the_waiting_step_with_its_output(worker, approver):
    saga = start_saga("tests.gated", input={})
    wait_for_gate(saga)

    fail_step(saga, "gate", error="refused", by=approver)

    saga = wait_for_saga(saga)
    assert saga.status == SagaStatus.COMPENSATED
    assert [s.status for s in saga.steps.all()] == [StepStatus.COMPENSATED, StepStatus.COMPENSATED,
                                                    StepStatus.SKIPPED]
    assert Seen.objects.get(saga_id=saga.pk, kind="compensation").data == {"value": 2, "attempt": 1}
    undone = list(Call.objects.filter(saga_id=saga.pk, kind="compensation").values_list("step", flat=True))
    assert undone == ["gate", "a"]


def test_cancel_while_waiting_compensates_the_waiting_step_too(worker):
    saga = start_saga("tests.gated", input={})
    wait_for_gate(saga)

    cancel(saga, reason="withdrawn")

    saga = wait_for_saga(saga)
    assert saga.status == SagaStatus.COMPENSATED
    assert list(Call.objects.filter(saga_id=saga.pk, kind="compensation").values_list("step", flat=True)) == [
        "gate", "a"]
    with pytest.raises(InvalidTransition):
        complete_step(saga, "gate")


def test_a_deadline_that_passes_times_out_through_the_sweeper_and_the_saga_compensates(worker):
    saga = start_saga("tests.gated_short", input={})  # signal_timeout=1
    wait_for_gate(saga)
    time.sleep(1.2)

    report = sweep()

    assert report.waits_timed_out == 1
    saga = wait_for_saga(saga)
    assert saga.status == SagaStatus.COMPENSATED
    assert "no signal within 1s" in gate_of(saga).error


def test_a_waiting_parallel_member_and_its_signal(worker, approver):
    saga = start_saga("tests.parallel_gate", input={})
    wait_for_gate(saga)
    wait_until(lambda: StepRecord.objects.get(saga_id=saga.pk, name="b2").status == StepStatus.SUCCEEDED)

    complete_step(saga, "gate", by=approver)

    assert wait_for_saga(saga).status == SagaStatus.SUCCEEDED


def test_a_skipped_wait_goes_on_by_itself(worker):
    assert wait_for_saga(start_saga("tests.gated", input={"skip_wait": True})).status == SagaStatus.SUCCEEDED


def _race(signal_once) -> list[str]:
    """Two threads signal at the same moment; each says what it got."""
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def run(n: int) -> None:
        try:
            barrier.wait()
            outcomes.append(signal_once(n))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return sorted(outcomes)


def test_two_people_signalling_at_once_exactly_one_wins(worker, approver):
    saga = start_saga("tests.gated", input={})
    wait_for_gate(saga)

    def signal(n: int) -> str:
        close_old_connections()
        try:
            if n == 0:
                complete_step(saga.pk, "gate", by=approver)
            else:
                fail_step(saga.pk, "gate", error="no", by=approver)
        except InvalidTransition:
            return "refused"
        return "ok"

    assert _race(signal) == ["ok", "refused"]
    assert saga.events.filter(kind=EventKind.STEP_SIGNALLED).count() == 1
    assert wait_for_saga(saga).status in (SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED)


def test_two_api_calls_at_once_one_202_one_409(worker, approver):
    saga = start_saga("tests.gated", input={})
    wait_for_gate(saga)
    key = Token.objects.create(user=approver).key

    def post(n: int) -> str:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
        return str(client.post(f"/api/sagas/{saga.pk}/steps/gate/complete/", {"result": {"n": n}},
                               format="json").status_code)

    assert _race(post) == ["202", "409"]
    assert wait_for_saga(saga).status == SagaStatus.SUCCEEDED


def test_without_the_permission_the_api_answers_403(worker):
    saga = start_saga("tests.gated", input={})
    wait_for_gate(saga)
    someone = User.objects.create_user("someone", password="x")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=someone).key}")

    assert client.post(f"/api/sagas/{saga.pk}/steps/gate/complete/").status_code == 403
    assert gate_of(saga).status == StepStatus.WAITING


def test_the_token_callback_works_once_then_404(worker):
    saga = start_saga("tests.gated", input={})
    wait_for_gate(saga)
    token = Seen.objects.get(saga_id=saga.pk, kind="token").data["token"]

    first = APIClient().post(f"/api/signals/{token}/complete/", {"result": {"signed": True}}, format="json")
    again = APIClient().post(f"/api/signals/{token}/complete/", {}, format="json")

    assert (first.status_code, again.status_code) == (202, 404)
    saga = wait_for_saga(saga)
    assert saga.status == SagaStatus.SUCCEEDED and saga.results["gate"]["signed"] is True
    assert saga.events.get(kind=EventKind.STEP_SIGNALLED).detail["by"] == "token"


def test_two_token_callbacks_at_once_one_wins(worker):
    saga = start_saga("tests.gated", input={})
    wait_for_gate(saga)
    token = Seen.objects.get(saga_id=saga.pk, kind="token").data["token"]

    def call(n: int) -> str:
        return str(APIClient().post(f"/api/signals/{token}/complete/", {}, format="json").status_code)

    outcome = _race(call)
    assert outcome[0] == "202" and outcome[1] in ("404", "409")
    assert wait_for_saga(saga).status == SagaStatus.SUCCEEDED


def test_the_deadline_is_stored_from_the_database_clock(worker):
    saga = start_saga("tests.gated", input={})
    gate = wait_for_gate(saga)

    assert (gate.signal_deadline - gate.waiting_since).total_seconds() == 3600
    assert StepRecord.objects.filter(pk=gate.pk, signal_deadline__gt=Now()).exists()
