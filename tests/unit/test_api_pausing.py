"""The API's pause, resume and skip: permissions, 409 for moves the state machine refuses, who made each."""
import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from sagas import pause, start_saga
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepStatus
from tests.helpers import paused_after_pivot, saga_user

SAGA = "tests.three_steps"


def client_of(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


@pytest.fixture
def operator(db):
    return saga_user("pauser", ["view_sagainstance", "pause_saga"])


@pytest.mark.parametrize("path", ["pause/", "resume/", "steps/notify/skip/"])
def test_each_move_needs_the_pause_permission(db, sent, path):
    saga = paused_after_pivot() if path != "pause/" else start_saga(SAGA, input={})
    viewer = saga_user("viewer", ["view_sagainstance"])
    events = SagaEvent.objects.count()

    answer = client_of(viewer).post(f"/api/sagas/{saga.pk}/{path}", {"reason": "x"}, format="json")

    assert answer.status_code == 403 and "sagas.pause_saga" in answer.json()["detail"]
    assert SagaEvent.objects.count() == events


def test_a_saga_the_user_may_not_read_is_a_404(db, sent):
    saga = start_saga(SAGA, input={})
    stranger = saga_user("stranger", ["pause_saga"])
    assert client_of(stranger).post(f"/api/sagas/{saga.pk}/pause/", {}, format="json").status_code == 404


def test_pause_then_resume_through_the_api_records_who(db, sent, operator):
    saga = start_saga(SAGA, input={})
    api = client_of(operator)

    paused = api.post(f"/api/sagas/{saga.pk}/pause/", {"reason": "supplier outage", "by": "not me"}, format="json")
    again = api.post(f"/api/sagas/{saga.pk}/pause/", {}, format="json")
    resumed = api.post(f"/api/sagas/{saga.pk}/resume/", {}, format="json")
    twice = api.post(f"/api/sagas/{saga.pk}/resume/", {}, format="json")

    assert paused.status_code == 202 and paused.json()["status"] == "paused"
    assert paused.json()["paused_from"] == "pending" and paused.json()["pause_cause"] == "person"
    assert again.status_code == 409 and again.json()["code"] == "invalid_transition"
    assert resumed.status_code == 202 and resumed.json()["status"] == "pending"
    assert twice.status_code == 409
    event = SagaEvent.objects.get(saga=saga, kind=EventKind.SAGA_PAUSED)
    assert (event.detail["by"], event.detail["by_user_id"], event.detail["reason"]) == \
        ("pauser", operator.pk, "supplier outage")
    assert SagaEvent.objects.get(saga=saga, kind=EventKind.SAGA_RESUMED, detail__phase="person").detail["by"] == "pauser"


def test_resume_with_corrected_input_and_with_invalid_input(db, sent, operator):
    saga = paused_after_pivot()
    api = client_of(operator)

    bad = api.post(f"/api/sagas/{saga.pk}/resume/", {"input": ["not", "an", "object"]}, format="json")
    nul = api.post(f"/api/sagas/{saga.pk}/resume/", {"input": {"note": "a\u0000b"}}, format="json")
    assert bad.status_code == 400 and "input" in bad.json()
    assert nul.status_code == 400 and "input" in nul.json(), nul.content
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.PAUSED

    good = api.post(f"/api/sagas/{saga.pk}/resume/", {"input": {"fail": {}}}, format="json")

    assert good.status_code == 202 and good.json()["status"] == "running"
    assert good.json()["input"] == {"fail": {}}
    assert [s["status"] for s in good.json()["steps"]][2] == StepStatus.RUNNING


def test_skip_through_the_api(db, sent, operator):
    saga = paused_after_pivot()
    api = client_of(operator)

    no_reason = api.post(f"/api/sagas/{saga.pk}/steps/notify/skip/", {"result": {"value": 9}}, format="json")
    unknown = api.post(f"/api/sagas/{saga.pk}/steps/nope/skip/", {"reason": "by hand"}, format="json")
    not_failed = api.post(f"/api/sagas/{saga.pk}/steps/ship/skip/", {"reason": "by hand"}, format="json")
    skipped = api.post(f"/api/sagas/{saga.pk}/steps/notify/skip/", {"result": {"value": 9}, "reason": "sent by post"},
                       format="json")

    assert no_reason.status_code == 400 and "reason" in no_reason.json()
    assert unknown.status_code == 404 and not_failed.status_code == 409
    assert skipped.status_code == 202 and skipped.json()["status"] == "running"
    step = next(s for s in skipped.json()["steps"] if s["name"] == "notify")
    assert step["status"] == "skipped" and step["result"] == {"value": 9}
    assert SagaEvent.objects.get(saga=saga, kind=EventKind.STEP_SKIPPED).detail["by"] == "pauser"


def test_cancel_past_the_pivot_answers_409(db, sent):
    saga = paused_after_pivot()
    canceller = saga_user("canceller", ["view_sagainstance", "cancel_saga"])
    answer = client_of(canceller).post(f"/api/sagas/{saga.pk}/cancel/", {}, format="json")
    assert answer.status_code == 409 and "pivot" in answer.json()["detail"]


def test_cancel_of_a_saga_paused_before_its_pivot_is_accepted(db, sent):
    saga = start_saga(SAGA, input={})
    pause(saga)
    canceller = saga_user("canceller", ["view_sagainstance", "cancel_saga"])
    answer = client_of(canceller).post(f"/api/sagas/{saga.pk}/cancel/", {}, format="json")
    assert answer.status_code == 202 and answer.json()["status"] == "compensated"
