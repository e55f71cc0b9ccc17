"""The API end to end: sagas started, watched and cancelled over HTTP, run by a real worker."""
import time

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from sagas.models import FINAL_SAGA_STATUSES, EventKind, SagaStatus, StepStatus
from tests.helpers import saga_user

pytestmark = pytest.mark.integration

SAGA = "tests.three_steps"


@pytest.fixture
def api(worker):
    user = saga_user("api-flow")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def start(api, input, key=None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    response = api.post("/api/sagas/", {"saga_type": SAGA, "input": input}, format="json", **headers)
    assert response.status_code == 202, response.content
    return response


def poll(api, url, done, timeout=60.0):
    """GET ``url`` until ``done(body)`` holds; the body it held for."""
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(url).json()
        if done(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not done after {timeout}s: {body}")
        time.sleep(0.1)


def finished(body):
    return body["status"] in FINAL_SAGA_STATUSES


def events(api, saga_id):
    return [(e["kind"], e["step"]) for e in api.get(f"/api/sagas/{saga_id}/events/").json()["results"]]


def test_saga_started_over_the_api_succeeds(api):
    response = start(api, {}, key="api-flow-1")

    saga = poll(api, response["Location"], finished)

    assert saga["status"] == SagaStatus.SUCCEEDED
    assert [(s["name"], s["status"], s["attempts"]) for s in saga["steps"]] == [
        ("a", StepStatus.SUCCEEDED, 1), ("b", StepStatus.SUCCEEDED, 1), ("c", StepStatus.SUCCEEDED, 1),
    ]
    assert saga["results"]["c"] == {"value": 4, "attempt": 1}
    assert saga["started_at"] and saga["finished_at"]
    assert events(api, saga["id"]) == [
        (EventKind.SAGA_CREATED, None),
        (EventKind.SAGA_STARTED, None),
        (EventKind.STEP_STARTED, "a"), (EventKind.STEP_SUCCEEDED, "a"),
        (EventKind.STEP_STARTED, "b"), (EventKind.STEP_SUCCEEDED, "b"),
        (EventKind.STEP_STARTED, "c"), (EventKind.STEP_SUCCEEDED, "c"),
        (EventKind.SAGA_SUCCEEDED, None),
    ]
    replay = start(api, {}, key="api-flow-1")
    assert replay.json()["id"] == saga["id"] and replay["Idempotent-Replayed"] == "true"


def test_saga_failing_at_its_last_step_ends_compensated(api):
    response = start(api, {"fail": {"c": "permanent"}})

    saga = poll(api, response["Location"], finished)

    assert saga["status"] == SagaStatus.COMPENSATED
    assert [s["status"] for s in saga["steps"]] == [
        StepStatus.COMPENSATED, StepStatus.COMPENSATED, StepStatus.FAILED,
    ]
    assert "c refused" in saga["error"]
    trail = events(api, saga["id"])
    assert trail.index((EventKind.STEP_COMPENSATED, "b")) < trail.index((EventKind.STEP_COMPENSATED, "a"))
    assert trail[-1] == (EventKind.SAGA_COMPENSATED, None)


def test_cancel_over_the_api_compensates_a_running_saga(api):
    response = start(api, {"sleep": {"b": 1.5}})
    url = response["Location"]
    poll(api, url, lambda body: body["steps"][1]["status"] == StepStatus.RUNNING, timeout=30)

    cancelled = api.post(f"{url}cancel/")

    assert cancelled.status_code == 202
    assert cancelled.json()["cancel_requested_at"]
    saga = poll(api, url, finished)
    assert saga["status"] == SagaStatus.COMPENSATED
    assert [s["status"] for s in saga["steps"]] == [
        StepStatus.COMPENSATED, StepStatus.COMPENSATED, StepStatus.SKIPPED,
    ]
    assert (EventKind.CANCEL_REQUESTED, None) in events(api, saga["id"])
    assert api.post(f"{url}cancel/").status_code == 409  # finished now: nothing left to cancel
