"""The waiting-step endpoints without a worker: messages the engine would send are recorded, not sent."""
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from sagas import start_saga
from sagas.engine import execute_step
from sagas.models import EventKind, SagaEvent, SagaStatus, StepRecord, StepStatus
from tests.testapp.models import Seen

GATED = "tests.gated"


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def approver(db):
    user = get_user_model().objects.create_user("approver", password="x")
    user.user_permissions.add(Permission.objects.get(codename="change_call", content_type__app_label="testapp"))
    return user


@pytest.fixture
def api(approver, sent):
    return client_for(approver)


@pytest.fixture
def outsider_api(db, sent):
    return client_for(get_user_model().objects.create_user("outsider", password="x"))


def waiting_saga(**input):
    saga = start_saga(GATED, input=input)
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)
    return saga


def url(saga, step="gate", signal="complete") -> str:
    return f"/api/sagas/{saga.pk}/steps/{step}/{signal}/"


def token_of(saga) -> str:
    return Seen.objects.get(saga_id=saga.pk, kind="token").data["token"]


# --- the list ------------------------------------------------------------------------------------


def test_the_list_shows_only_steps_this_user_may_signal_oldest_first(api, outsider_api):
    first, second = waiting_saga(), waiting_saga()
    start_saga("tests.pure_wait", input={})  # pending: not waiting yet

    answer = api.get("/api/waiting-steps/")

    assert answer.status_code == 200
    rows = answer.json()["results"]
    assert [(r["saga_id"], r["saga_type"], r["step"]) for r in rows] == [
        (str(first.pk), GATED, "gate"), (str(second.pk), GATED, "gate")]
    gate = StepRecord.objects.get(saga=first, name="gate")
    assert rows[0]["since"] and rows[0]["deadline"]
    assert rows[0]["deadline"].startswith(gate.signal_deadline.isoformat()[:19])
    assert outsider_api.get("/api/waiting-steps/").json()["results"] == []


def test_the_token_never_appears_in_api_answers(api):
    saga = waiting_saga()
    token = token_of(saga)

    for path in ("/api/waiting-steps/", f"/api/sagas/{saga.pk}/", f"/api/sagas/{saga.pk}/events/"):
        assert token not in api.get(path).content.decode()
    assert token not in api.post(url(saga), {"result": {"ok": True}}, format="json").content.decode()


# --- complete and fail ----------------------------------------------------------------------------


def test_complete_answers_202_and_the_saga_goes_on(api, sent, django_capture_on_commit_callbacks):
    saga = waiting_saga()

    with django_capture_on_commit_callbacks(execute=True):
        answer = api.post(url(saga), {"result": {"po": "PO-1"}}, format="json")

    assert answer.status_code == 202, answer.content
    gate = next(s for s in answer.json()["steps"] if s["name"] == "gate")
    assert gate["status"] == StepStatus.SUCCEEDED and gate["result"]["po"] == "PO-1"
    assert sent == [("forward", saga.id, 2)]
    event = SagaEvent.objects.get(saga=saga, kind=EventKind.STEP_SIGNALLED)
    assert event.detail["by"] == "approver"


def test_complete_without_a_body_keeps_the_actions_output(api):
    saga = waiting_saga()

    answer = api.post(url(saga))

    assert answer.status_code == 202
    assert StepRecord.objects.get(saga=saga, name="gate").result == {"value": 2, "attempt": 1}


def test_fail_answers_202_and_the_saga_compensates(api):
    saga = waiting_saga()

    answer = api.post(url(saga, signal="fail"), {"error": "not in this quarter"}, format="json")

    assert answer.status_code == 202
    assert answer.json()["status"] == SagaStatus.COMPENSATING
    assert StepRecord.objects.get(saga=saga, name="gate").error == "not in this quarter"


@pytest.mark.parametrize("body, field", [({}, "error"), ({"error": ""}, "error"), ({"error": "   "}, "error"),
                                         ({"error": "a\x00b"}, "error")])
def test_fail_needs_a_reason_else_400_with_field_errors(api, body, field):
    saga = waiting_saga()

    answer = api.post(url(saga, signal="fail"), body, format="json")

    assert answer.status_code == 400
    assert field in answer.json()
    assert StepRecord.objects.get(saga=saga, name="gate").status == StepStatus.WAITING


@pytest.mark.parametrize("result", [[1, 2], "text", 3])
def test_a_result_that_is_not_an_object_is_400(api, result):
    saga = waiting_saga()

    answer = api.post(url(saga), {"result": result}, format="json")

    assert answer.status_code == 400
    assert "result" in answer.json()


def test_without_the_steps_permission_403(outsider_api):
    saga = waiting_saga()

    answer = outsider_api.post(url(saga))

    assert answer.status_code == 403
    assert StepRecord.objects.get(saga=saga, name="gate").status == StepStatus.WAITING


@pytest.mark.parametrize("which", ["saga", "malformed", "step"])
def test_unknown_saga_or_step_404(api, which):
    saga = waiting_saga()
    path = {"saga": url(type("S", (), {"pk": uuid.uuid4()})), "malformed": "/api/sagas/nope/steps/gate/complete/",
            "step": url(saga, step="nope")}[which]

    answer = api.post(path)

    assert answer.status_code == 404


def test_a_step_that_is_not_waiting_409_and_a_second_signal_409(api):
    saga = waiting_saga()

    assert api.post(url(saga, step="c")).status_code == 409
    assert api.post(url(saga)).status_code == 202
    second = api.post(url(saga, signal="fail"), {"error": "too late"}, format="json")
    assert second.status_code == 409
    assert second.json()["code"] == "invalid_transition"


def test_signals_need_authentication(db, sent):
    saga = waiting_saga()

    assert APIClient().post(url(saga)).status_code in (401, 403)
    assert APIClient().get("/api/waiting-steps/").status_code in (401, 403)


# --- the token endpoints -------------------------------------------------------------------------


def test_the_token_completes_without_other_authentication_once(db, sent):
    saga = waiting_saga()
    anonymous = APIClient()
    path = f"/api/signals/{token_of(saga)}/complete/"

    first = anonymous.post(path, {"result": {"signed": True}}, format="json")
    again = anonymous.post(path, {"result": {"signed": True}}, format="json")

    assert first.status_code == 202
    assert again.status_code == 404
    assert StepRecord.objects.get(saga=saga, name="gate").result["signed"] is True


def test_the_token_fails_its_step(db, sent):
    saga = waiting_saga()

    answer = APIClient().post(f"/api/signals/{token_of(saga)}/fail/", {"error": "declined"}, format="json")

    assert answer.status_code == 202
    assert answer.json()["status"] == SagaStatus.COMPENSATING


def test_an_unknown_token_404(db, sent):
    waiting_saga()

    assert APIClient().post("/api/signals/not-a-token/complete/").status_code == 404
    assert APIClient().post("/api/signals/not-a-token/fail/", {"error": "x"}, format="json").status_code == 404


def test_the_schema_describes_the_new_operations(api):
    paths = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()["paths"]

    assert set(paths["/api/sagas/{saga_id}/steps/{step}/complete/"]["post"]["responses"]) >= {
        "202", "400", "403", "404", "409"}
    assert set(paths["/api/signals/{token}/fail/"]["post"]["responses"]) >= {"202", "400", "404", "409"}
    assert "/api/waiting-steps/" in paths
