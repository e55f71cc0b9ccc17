"""The REST API without a worker: messages the engine would send are recorded, not sent."""
import uuid
from datetime import datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from sagas import Saga, Step, cancel, registry, start_saga
from sagas.api.exceptions import input_errors
from sagas.api.pagination import SagaCursorPagination
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import saga_user

SAGA = "tests.three_steps"
SAGAS_URL = "/api/sagas/"
# The token's user (1), the user's permissions and its groups' (2: who may read what), then counts, top errors and two percentiles over sagas per
# type (4) and over all types (4), counts, top errors twice and two percentiles per step (5).
ANALYTICS_QUERIES = 16


@pytest.fixture
def user(db):
    return saga_user("operator")  # every sagas.* permission: an operator


@pytest.fixture
def api(user, sent):
    """A client authenticated with the user's API token."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def make_saga(status=SagaStatus.SUCCEEDED, *, saga_type=SAGA, step_statuses=None, created_at=None, **fields):
    """A saga row in any state, written directly: for reading and refusing, not for running."""
    saga = SagaInstance.objects.create(saga_type=saga_type, status=status, **fields)
    default = StepStatus.SUCCEEDED if status == SagaStatus.SUCCEEDED else StepStatus.PENDING
    for index, (name, step_status) in enumerate(zip("abc", step_statuses or [default] * 3)):
        StepRecord.objects.create(saga=saga, index=index, name=name, status=step_status)
    if created_at is not None:
        SagaInstance.objects.filter(pk=saga.pk).update(created_at=created_at)
    return SagaInstance.objects.get(pk=saga.pk)


def fields(response) -> dict:
    """A 400's field errors: its body less the ``detail`` and ``code`` every error carries."""
    body = response.json()
    assert isinstance(body.pop("detail"), str) and isinstance(body.pop("code"), str)
    return body


def assert_nothing_created():
    assert SagaInstance.objects.count() == 0
    assert StepRecord.objects.count() == 0
    assert SagaEvent.objects.count() == 0


# --- authentication ---------------------------------------------------------------


@pytest.mark.parametrize("method, url", [
    ("get", SAGAS_URL), ("post", SAGAS_URL), ("get", "/api/saga-types/"),
    ("get", f"{SAGAS_URL}{uuid.uuid4()}/"), ("post", f"{SAGAS_URL}{uuid.uuid4()}/cancel/"),
])
def test_requests_without_credentials_are_refused(db, sent, method, url):
    response = getattr(APIClient(), method)(url, {"saga_type": SAGA}, format="json")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert_nothing_created()


def test_a_wrong_token_is_refused(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    assert client.get(SAGAS_URL).status_code == 401


def test_token_authentication_is_accepted(api):
    response = api.get(SAGAS_URL)

    assert response.status_code == 200
    assert response.json() == {"count": None, "next": None, "previous": None, "results": []}


def test_session_authentication_is_accepted(user, sent):
    client = APIClient()
    client.force_login(user)

    assert client.get(SAGAS_URL).status_code == 200


# --- starting ---------------------------------------------------------------------


def test_post_starts_a_saga_answering_202_with_location_and_pending_steps(
    api, sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(SAGAS_URL, {"saga_type": SAGA, "input": {"x": 1}}, format="json")

    assert response.status_code == 202
    body = response.json()
    assert response["Location"] == f"http://testserver/api/sagas/{body['id']}/"
    assert "Idempotent-Replayed" not in response
    assert body["saga_type"] == SAGA and body["version"] == 1
    assert body["status"] == SagaStatus.PENDING
    assert body["input"] == {"x": 1}
    assert [(s["index"], s["name"], s["status"], s["has_compensation"]) for s in body["steps"]] == [
        (0, "a", StepStatus.PENDING, True), (1, "b", StepStatus.PENDING, True), (2, "c", StepStatus.PENDING, True),
    ]
    assert sent == [("forward", uuid.UUID(body["id"]), 0)]


def test_a_started_saga_is_answered_as_stored_without_reading_it_back(api):
    with CaptureQueriesContext(connection) as captured:
        body = api.post(SAGAS_URL, {"saga_type": SAGA, "input": {"x": 1}}, format="json").json()

    # The token and its user, then start_saga's transaction: the instance, its steps, its first event.
    statements = [q["sql"].split()[0] for q in captured.captured_queries
                  if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    # The token's user, its permissions and its groups' (read once per request), then the three rows.
    assert statements == ["SELECT", "SELECT", "SELECT", "INSERT", "INSERT", "INSERT"], captured.captured_queries
    assert api.get(f"{SAGAS_URL}{body['id']}/").json() == body


def test_instance_answer_has_every_documented_field(api):
    body = api.post(SAGAS_URL, {"saga_type": SAGA}, format="json").json()

    assert set(body) == {
        "id", "saga_type", "version", "status", "input", "results", "error", "idempotency_key",
        "resubmitted_from", "started_by", "created_at", "started_at", "finished_at", "updated_at",
        "cancel_requested_at", "paused_from", "pause_cause", "parent", "parent_step", "depth", "children", "steps",
    }
    assert set(body["steps"][0]) == {
        "index", "name", "status", "has_compensation", "attempts", "result", "error", "started_at",
        "finished_at", "compensation_attempts", "compensation_error", "compensated_at", "stage", "parallel_group",
        "waiting_since", "signal_deadline",
    }
    assert body["input"] == {}


def test_same_idempotency_key_replays_the_instance_and_creates_nothing(api):
    first = api.post(SAGAS_URL, {"saga_type": SAGA, "input": {"x": 1}}, format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    counts = (SagaInstance.objects.count(), StepRecord.objects.count(), SagaEvent.objects.count())

    again = api.post(SAGAS_URL, {"saga_type": SAGA, "input": {"x": 1}}, format="json", HTTP_IDEMPOTENCY_KEY="order-42")

    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["idempotency_key"] == "order-42"
    assert again["Idempotent-Replayed"] == "true"
    assert again["Location"] == first["Location"]
    assert (SagaInstance.objects.count(), StepRecord.objects.count(), SagaEvent.objects.count()) == counts


def test_same_idempotency_key_with_other_input_is_a_conflict(api):
    api.post(SAGAS_URL, {"saga_type": SAGA, "input": {"x": 1}}, format="json", HTTP_IDEMPOTENCY_KEY="order-42")

    response = api.post(SAGAS_URL, {"saga_type": SAGA, "input": {"x": 2}}, format="json",
                        HTTP_IDEMPOTENCY_KEY="order-42")

    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_conflict"
    assert SagaInstance.objects.count() == 1


def test_blank_idempotency_key_is_an_error_on_the_header(api):
    response = api.post(SAGAS_URL, {"saga_type": SAGA}, format="json", HTTP_IDEMPOTENCY_KEY="  ")

    assert response.status_code == 400
    assert fields(response) == {"Idempotency-Key": ["must be 1 to 255 characters"]}
    assert_nothing_created()


def test_unknown_saga_type_is_a_field_error_and_creates_nothing(api, sent):
    response = api.post(SAGAS_URL, {"saga_type": "tests.nope", "input": {}}, format="json")

    assert response.status_code == 400
    assert list(fields(response)) == ["saga_type"]
    assert "tests.nope" in response.json()["saga_type"][0]
    assert_nothing_created()
    assert sent == []


def test_unknown_version_is_a_field_error_on_version(api):
    response = api.post(SAGAS_URL, {"saga_type": SAGA, "version": 99}, format="json")

    assert response.status_code == 400
    assert "no version 99" in fields(response)["version"][0]
    assert_nothing_created()


def test_missing_saga_type_is_a_field_error(api):
    response = api.post(SAGAS_URL, {"input": {}}, format="json")

    assert response.status_code == 400
    assert list(fields(response)) == ["saga_type"]
    assert_nothing_created()


@pytest.mark.parametrize("bad", [[1, 2], "text", 42])
def test_input_that_is_not_an_object_is_a_field_error_and_creates_nothing(api, bad):
    response = api.post(SAGAS_URL, {"saga_type": SAGA, "input": bad}, format="json")

    assert response.status_code == 400
    assert fields(response) == {"input": ["must be a JSON object"]}
    assert_nothing_created()


class AmountSchema(serializers.Serializer):
    amount = serializers.IntegerField(min_value=1)


@pytest.fixture
def saga_with_schema():
    saga = registry.register(Saga(name="tests.api_schema", steps=[Step("only", lambda ctx: None)],
                                  input_schema=AmountSchema))
    yield saga.name
    registry.unregister(saga.name)


def test_input_failing_the_saga_schema_names_the_fields_inside_input(api, saga_with_schema):
    response = api.post(SAGAS_URL, {"saga_type": saga_with_schema, "input": {"amount": 0}}, format="json")

    assert response.status_code == 400
    assert list(fields(response)) == ["input"]
    assert list(response.json()["input"]) == ["amount"]
    assert_nothing_created()


def test_engine_input_errors_map_to_request_fields():
    assert input_errors({"input": ["must be a JSON object"]}) == {"input": ["must be a JSON object"]}
    assert input_errors({"amount": ["too small"]}) == {"input": {"amount": ["too small"]}}
    assert input_errors({"idempotency_key": ["too long"]}) == {"Idempotency-Key": ["too long"]}
    assert input_errors(["no amount"]) == {"input": ["no amount"]}


# --- reading ----------------------------------------------------------------------------


def test_detail_shows_the_instance_with_its_steps(api):
    saga = make_saga(SagaStatus.SUCCEEDED, input={"x": 1})

    response = api.get(f"{SAGAS_URL}{saga.pk}/")

    assert response.status_code == 200
    assert response.json()["id"] == str(saga.pk)
    assert response.json()["status"] == SagaStatus.SUCCEEDED
    assert [s["name"] for s in response.json()["steps"]] == ["a", "b", "c"]


@pytest.mark.parametrize("suffix", ["", "events/"])
def test_unknown_id_is_404(api, suffix):
    response = api.get(f"{SAGAS_URL}{uuid.uuid4()}/{suffix}")

    assert response.status_code == 404
    assert "detail" in response.json()


@pytest.mark.parametrize("method, suffix", [
    ("get", ""), ("get", "events/"), ("post", "cancel/"), ("post", "resubmit/"), ("post", "retry-compensation/"),
])
def test_malformed_id_is_404_not_500(api, method, suffix):
    response = getattr(api, method)(f"{SAGAS_URL}not-a-uuid/{suffix}")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"


@pytest.mark.parametrize("suffix", ["cancel/", "resubmit/", "retry-compensation/"])
def test_intervening_on_an_unknown_id_is_404(api, suffix):
    assert api.post(f"{SAGAS_URL}{uuid.uuid4()}/{suffix}").status_code == 404


def ids(response):
    return {item["id"] for item in response.json()["results"]}


def test_list_filters_by_status(api):
    ok = make_saga(SagaStatus.SUCCEEDED)
    failed = make_saga(SagaStatus.FAILED)
    make_saga(SagaStatus.PENDING)

    assert ids(api.get(SAGAS_URL, {"status": SagaStatus.SUCCEEDED})) == {str(ok.pk)}
    assert ids(api.get(f"{SAGAS_URL}?status=succeeded&status=failed")) == {str(ok.pk), str(failed.pk)}
    assert len(api.get(SAGAS_URL).json()["results"]) == 3


def test_list_rejects_an_unknown_status(api):
    response = api.get(SAGAS_URL, {"status": "exploded"})

    assert response.status_code == 400
    assert "status" in response.json()


def test_list_filters_by_saga_type(api):
    three = make_saga(SagaStatus.SUCCEEDED)
    make_saga(SagaStatus.SUCCEEDED, saga_type="tests.ledger")

    assert ids(api.get(SAGAS_URL, {"saga_type": SAGA})) == {str(three.pk)}


def test_list_filters_by_creation_window(api):
    now = timezone.now()
    old = make_saga(created_at=now - timedelta(days=3))
    middle = make_saga(created_at=now - timedelta(days=2))
    new = make_saga(created_at=now - timedelta(days=1))
    bound = (now - timedelta(days=2)).isoformat()

    assert ids(api.get(SAGAS_URL, {"created_after": bound})) == {str(middle.pk), str(new.pk)}  # inclusive
    assert ids(api.get(SAGAS_URL, {"created_before": bound})) == {str(old.pk)}  # exclusive
    window = {"created_after": (now - timedelta(days=3, hours=1)).isoformat(), "created_before": bound}
    assert ids(api.get(SAGAS_URL, window)) == {str(old.pk)}


def test_list_is_newest_first_and_paginated_by_cursor(api, monkeypatch):
    monkeypatch.setattr(SagaCursorPagination, "page_size", 2)  # read from settings once, at import
    now = timezone.now()
    sagas = [make_saga(created_at=now - timedelta(minutes=m)) for m in (3, 2, 1)]

    first = api.get(SAGAS_URL).json()
    second = api.get(first["next"]).json()

    assert first["count"] is None
    assert [item["id"] for item in first["results"]] == [str(sagas[2].pk), str(sagas[1].pk)]
    assert [item["id"] for item in second["results"]] == [str(sagas[0].pk)]
    assert second["next"] is None and second["previous"]


def test_events_are_listed_oldest_first(api):
    saga = start_saga(SAGA, input={})
    cancel(saga)  # pending: every step skipped at once, nothing to undo

    response = api.get(f"{SAGAS_URL}{saga.pk}/events/")

    assert response.status_code == 200
    events = response.json()["results"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert [(e["kind"], e["step"]) for e in events] == [
        (EventKind.SAGA_CREATED, None),
        (EventKind.CANCEL_REQUESTED, None),
        (EventKind.STEP_SKIPPED, "a"),
        (EventKind.STEP_SKIPPED, "b"),
        (EventKind.STEP_SKIPPED, "c"),
        (EventKind.SAGA_COMPENSATING, None),
        (EventKind.SAGA_COMPENSATED, None),
    ]
    assert events[2]["step_index"] == 0
    assert events[5]["detail"]["to"] == SagaStatus.COMPENSATING


def test_saga_types_lists_the_registered_definitions_with_their_steps(api):
    response = api.get("/api/saga-types/")

    assert response.status_code == 200
    by_name = {t["name"]: t for t in response.json()}
    three = by_name[SAGA]
    assert three["version"] == 1
    assert [s["name"] for s in three["steps"]] == ["a", "b", "c"]
    assert three["steps"][1]["timeout"] == 4
    assert three["steps"][0]["retry"] == {"max_attempts": 3, "backoff": 0.05, "max_backoff": 0.2}
    assert [s["has_compensation"] for s in by_name["tests.ledger"]["steps"]] == [True, False]
    assert {s["parallel_group"] for s in three["steps"]} == {None}


def test_saga_types_show_the_members_of_a_parallel(api):
    by_name = {t["name"]: t for t in api.get("/api/saga-types/").json()}

    steps = by_name["tests.parallel"]["steps"]
    assert [(s["index"], s["name"], s["stage"], s["parallel_group"]) for s in steps] == [
        (0, "a", 0, None), (1, "b1", 1, "fanout"), (2, "b2", 1, "fanout"), (3, "b3", 1, "fanout"), (4, "c", 2, None),
    ]


def test_instance_answer_shows_each_steps_stage_and_group(api):
    body = api.post(SAGAS_URL, {"saga_type": "tests.parallel"}, format="json").json()

    assert [(s["name"], s["stage"], s["parallel_group"]) for s in body["steps"]] == [
        ("a", 0, None), ("b1", 1, "fanout"), ("b2", 1, "fanout"), ("b3", 1, "fanout"), ("c", 2, None),
    ]


# --- intervening -------------------------------------------------------------------------


def test_cancel_a_pending_saga_answers_202_and_compensates_at_once(api):
    saga = start_saga(SAGA, input={})

    response = api.post(f"{SAGAS_URL}{saga.pk}/cancel/", {"reason": "customer changed their mind"}, format="json")

    assert response.status_code == 202
    assert response.json()["status"] == SagaStatus.COMPENSATED
    assert response.json()["cancel_requested_at"]
    assert response.json()["error"] == "customer changed their mind"


def test_cancel_a_finished_saga_is_a_conflict_and_changes_nothing(api):
    saga = make_saga(SagaStatus.SUCCEEDED)

    response = api.post(f"{SAGAS_URL}{saga.pk}/cancel/")

    assert response.status_code == 409
    assert response.json()["code"] == "invalid_transition"
    assert "only a pending, running or paused saga can be cancelled" in response.json()["detail"]
    saga.refresh_from_db()
    assert saga.status == SagaStatus.SUCCEEDED and saga.cancel_requested_at is None
    assert not saga.events.exists()


def test_retry_compensation_of_a_saga_that_is_not_failed_is_a_conflict(api):
    saga = make_saga(SagaStatus.SUCCEEDED)

    response = api.post(f"{SAGAS_URL}{saga.pk}/retry-compensation/")

    assert response.status_code == 409
    assert "only a failed saga can retry compensation" in response.json()["detail"]
    saga.refresh_from_db()
    assert saga.status == SagaStatus.SUCCEEDED


def test_retry_compensation_of_a_failed_saga_answers_202_and_compensates_again(
    api, sent, django_capture_on_commit_callbacks
):
    saga = make_saga(SagaStatus.FAILED, step_statuses=[
        StepStatus.COMPENSATION_FAILED, StepStatus.COMPENSATED, StepStatus.FAILED,
    ])

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"{SAGAS_URL}{saga.pk}/retry-compensation/")

    assert response.status_code == 202
    assert response.json()["status"] == SagaStatus.COMPENSATING
    assert response.json()["steps"][0]["status"] == StepStatus.COMPENSATING
    assert sent == [("compensate", saga.pk, [0])]


def test_resubmit_an_active_saga_is_a_conflict(api):
    saga = start_saga(SAGA, input={"x": 1})

    response = api.post(f"{SAGAS_URL}{saga.pk}/resubmit/")

    assert response.status_code == 409
    assert "still pending" in response.json()["detail"]
    assert SagaInstance.objects.count() == 1


def test_resubmit_a_finished_saga_answers_202_with_the_new_linked_instance(api):
    saga = make_saga(SagaStatus.COMPENSATED, input={"x": 1}, step_statuses=[StepStatus.SKIPPED] * 3)

    response = api.post(f"{SAGAS_URL}{saga.pk}/resubmit/")

    assert response.status_code == 202
    body = response.json()
    assert body["id"] != str(saga.pk)
    assert body["resubmitted_from"] == str(saga.pk)
    assert body["input"] == {"x": 1}
    assert body["status"] == SagaStatus.PENDING
    assert response["Location"].endswith(f"/api/sagas/{body['id']}/")
    assert saga.events.filter(kind=EventKind.RESUBMITTED).count() == 1


# --- schema and docs ------------------------------------------------------------------------


def test_schema_is_openapi_3(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert {"/api/sagas/", "/api/sagas/{saga_id}/cancel/", "/api/saga-types/"} <= set(schema["paths"])
    start = schema["paths"]["/api/sagas/"]["post"]
    body = start["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"]["propertyName"] == "saga_type"  # one body per saga type: test_input_schemas.py
    assert len(body["oneOf"]) == len({saga.name for saga in registry})
    assert set(start["responses"]) == {"202", "400", "409", "413", "415", "429"}  # the limits: sagas.api.schema
    assert "Location" in start["responses"]["202"]["headers"]


def test_docs_page_answers(api):
    response = api.get("/api/docs/")

    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


def schema(api) -> dict:
    return api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()


# --- schema and behaviour agree (what the schema fuzz test found) -------------------------


@pytest.mark.parametrize("body", [{"reason": ""}, {"reason": "   "}, {}])
def test_cancel_with_a_blank_or_no_reason_records_the_default_reason(api, body):
    saga = start_saga(SAGA, input={})

    response = api.post(f"{SAGAS_URL}{saga.pk}/cancel/", body, format="json")

    assert response.status_code == 202
    assert response.json()["error"] == "cancelled"
    assert SagaEvent.objects.get(saga=saga, kind=EventKind.CANCEL_REQUESTED).detail["reason"] == "cancelled"


def test_cancel_reason_with_a_nul_character_is_a_field_error(api):
    saga = start_saga(SAGA, input={})

    response = api.post(f"{SAGAS_URL}{saga.pk}/cancel/", {"reason": "a\x00b"}, format="json")

    assert response.status_code == 400
    assert list(fields(response)) == ["reason"]
    assert SagaInstance.objects.get(pk=saga.pk).cancel_requested_at is None


def test_schema_lists_registered_saga_types_and_refuses_an_empty_one(api):
    doc = schema(api)
    body = doc["paths"][SAGAS_URL]["post"]["requestBody"]["content"]["application/json"]["schema"]
    names = list(body["discriminator"]["mapping"])

    assert SAGA in names and names == sorted({saga.name for saga in registry})
    for name, ref in body["discriminator"]["mapping"].items():
        assert doc["components"]["schemas"][ref.split("/")[-1]]["properties"]["saga_type"]["enum"] == [name]
    response = api.post(SAGAS_URL, {"saga_type": "", "input": {}}, format="json")
    assert response.status_code == 400 and list(fields(response)) == ["saga_type"]
    assert_nothing_created()


@pytest.mark.parametrize("key", ["a\x00b", "k" * 256])
def test_idempotency_key_with_nul_or_too_long_is_an_error_on_the_header(api, key):
    response = api.post(SAGAS_URL, {"saga_type": SAGA}, format="json", HTTP_IDEMPOTENCY_KEY=key)

    assert response.status_code == 400
    assert list(fields(response)) == ["Idempotency-Key"]
    assert_nothing_created()


@pytest.mark.parametrize("url", ["/api/sagas/{saga}/events/"])
@pytest.mark.parametrize("page", ["99", "0", "", "x"])
def test_a_page_that_is_not_there_answers_404_as_documented(api, url, page):
    saga = make_saga()
    path = url.format(saga=saga.pk)

    response = api.get(path, {"page": page})

    assert response.status_code == 404
    operation = schema(api)["paths"][url.replace("{saga}", "{saga_id}")]["get"]
    assert "404" in operation["responses"]
    page_parameter = next(p for p in operation["parameters"] if p["name"] == "page")
    assert page_parameter["schema"]["minimum"] == 1


@pytest.mark.parametrize("parameter", ["created_after", "created_before", "saga_type", "status"])
def test_list_filter_sent_empty_is_a_field_error(api, parameter):
    response = api.get(SAGAS_URL, {parameter: ""})

    assert response.status_code == 400
    assert list(fields(response)) == [parameter]


def test_list_filter_accepts_any_offset_iso_allows(api):
    old = make_saga(created_at=timezone.now() - timedelta(days=1))

    response = api.get(SAGAS_URL, {"created_after": "2000-01-01T00:00:00+16:43"})  # beyond PostgreSQL's 15:59

    assert response.status_code == 200
    assert ids(response) == {str(old.pk)}


def test_list_filter_moment_outside_the_calendar_in_utc_is_a_field_error(api):
    response = api.get(SAGAS_URL, {"created_before": "0001-01-01T00:00:00+01:00"})

    assert response.status_code == 400
    assert list(fields(response)) == ["created_before"]


# --- analytics -------------------------------------------------------------------------


def test_analytics_reports_per_type_overall_and_per_step(api, sent):
    saga = start_saga(SAGA, input={})
    cancel(saga)

    response = api.get("/api/analytics/", {"saga_type": SAGA})

    assert response.status_code == 200
    body = response.json()
    assert body["overall"]["total"] == 1
    assert [t["saga_type"] for t in body["saga_types"]] == [SAGA]
    assert body["saga_types"][0]["counts"][SagaStatus.COMPENSATED] == 1
    assert [s["step"] for s in body["steps"]] == ["a", "b", "c"]


def test_analytics_without_since_covers_the_last_day_and_says_so(api, sent):
    make_saga(created_at=timezone.now() - timedelta(days=2))
    recent = make_saga(created_at=timezone.now() - timedelta(hours=23))

    body = api.get("/api/analytics/").json()

    assert body["overall"]["total"] == 1 and body["saga_types"][0]["saga_type"] == recent.saga_type
    since = datetime.fromisoformat(body["window"]["since"])
    assert abs(since - (timezone.now() - timedelta(hours=24))) < timedelta(minutes=1)
    assert body["window"]["until"] is None and body["window"]["saga_type"] is None


def test_analytics_without_since_takes_the_day_before_until(api, sent):
    response = api.get("/api/analytics/", {"until": "2026-01-10T12:00:00Z"})

    assert response.json()["window"]["since"] == "2026-01-09T12:00:00Z"


@pytest.mark.parametrize("sagas", [10, 200])
def test_analytics_queries_do_not_grow_with_the_number_of_sagas(api, sagas, django_assert_max_num_queries):
    now = timezone.now()
    statuses = [SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.RUNNING]
    rows = SagaInstance.objects.bulk_create(
        SagaInstance(saga_type=f"tests.kind{i % 3}", status=statuses[i % 4], error=f"error {i % 7}",
                     started_at=now, finished_at=now + timedelta(seconds=i) if i % 4 != 3 else None)
        for i in range(sagas))
    StepRecord.objects.bulk_create(
        StepRecord(saga=row, index=index, name=name, status=StepStatus.FAILED, attempts=2, error=f"step {i % 5}",
                   started_at=now, finished_at=now + timedelta(seconds=index + 1))
        for i, row in enumerate(rows) for index, name in enumerate("abc"))

    with django_assert_max_num_queries(ANALYTICS_QUERIES):
        response = api.get("/api/analytics/")

    assert response.status_code == 200 and response.json()["overall"]["total"] == sagas


def test_analytics_window_excludes_older_sagas(api, sent):
    start_saga(SAGA, input={})

    response = api.get("/api/analytics/", {"since": "2999-01-01T00:00:00Z"})

    assert response.status_code == 200
    assert response.json()["overall"]["total"] == 0


def test_analytics_refuses_a_bad_date_with_a_field_error(api):
    response = api.get("/api/analytics/", {"since": "yesterday"})

    assert response.status_code == 400
    assert "since" in response.json()


@pytest.mark.parametrize("parameter", ["since", "until", "saga_type"])
def test_analytics_parameter_sent_empty_is_a_field_error(api, parameter):
    response = api.get("/api/analytics/", {parameter: ""})

    assert response.status_code == 400
    assert list(fields(response)) == [parameter]


def test_analytics_requires_authentication(db):
    assert APIClient().get("/api/analytics/").status_code == 401


def test_output_serializers_build_their_fields_from_the_model_once_and_give_each_answer_its_own(db, monkeypatch):
    from sagas.api.serializers import SagaInstanceOutputSerializer, StepRecordOutputSerializer

    built = []
    real = serializers.ModelSerializer.get_fields
    monkeypatch.setattr(serializers.ModelSerializer, "get_fields", lambda self: built.append(type(self)) or real(self))
    for cls in (SagaInstanceOutputSerializer, StepRecordOutputSerializer):
        monkeypatch.delattr(cls, "_built_fields", raising=False)
    first, second = make_saga(), make_saga(status=SagaStatus.FAILED, error="refused")

    answers = [SagaInstanceOutputSerializer(saga).data for saga in (first, second, first)]

    assert sorted(c.__name__ for c in built) == ["SagaInstanceOutputSerializer", "StepRecordOutputSerializer"]
    assert [(a["id"], a["status"], a["error"]) for a in answers] == [
        (str(first.id), "succeeded", ""), (str(second.id), "failed", "refused"), (str(first.id), "succeeded", "")]
    assert answers[0]["steps"] == answers[2]["steps"] and len(answers[1]["steps"]) == len(second.steps.all())


# --- the root and the token endpoint ----------------------------------------------------------------

TOKEN_URL = "/api/auth/token/"


def test_the_api_root_lists_each_endpoint_without_an_id_for_anyone(db):
    from urllib.parse import urlparse

    from django.urls import resolve

    response = APIClient().get("/api/")

    assert response.status_code == 200
    links = response.json()
    assert {"sagas", "saga-types", "waiting-steps", "analytics", "auth/token", "schema", "docs"} <= set(links)
    for name, url in links.items():
        assert url.startswith("http://testserver/api/"), (name, url)
        resolve(urlparse(url).path)  # each one is served (Resolver404 otherwise)


def test_a_username_and_password_get_the_users_api_token(user):
    response = APIClient().post(TOKEN_URL, {"username": "operator", "password": "secret-pass"}, format="json")

    assert response.status_code == 200
    key = response.json()["token"]
    assert key == Token.objects.get(user=user).key
    again = APIClient().post(TOKEN_URL, {"username": "operator", "password": "secret-pass"}, format="json")
    assert again.json() == {"token": key}  # the same token, not a new one each time
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get(SAGAS_URL).status_code == 200


@pytest.mark.parametrize("body, field", [
    ({"username": "operator", "password": "wrong"}, "non_field_errors"),
    ({"username": "operator"}, "password"),
])
def test_bad_credentials_answer_400_in_the_apis_error_shape(user, body, field):
    response = APIClient().post(TOKEN_URL, body, format="json")

    assert response.status_code == 400
    answer = response.json()
    assert (answer["detail"], answer["code"]) == ("Invalid input.", "invalid")
    assert list(answer) == [field, "detail", "code"]
    assert not Token.objects.exists()


def test_the_token_endpoint_takes_json_only_as_the_rest_of_the_api(user):
    response = APIClient().generic("POST", TOKEN_URL, "username=operator&password=secret-pass",
                                   content_type="application/x-www-form-urlencoded")

    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"


def test_the_token_endpoint_is_throttled_per_client_address(user, settings):
    settings.SAGAS_AUTH_THROTTLE_RATE = "2/minute"
    client = APIClient()

    answers = [client.post(TOKEN_URL, {"username": "operator", "password": "guess"}, format="json")
               for _ in range(3)]

    assert [a.status_code for a in answers] == [400, 400, 429]
    assert answers[2].json()["code"] == "throttled" and 0 < int(answers[2]["Retry-After"]) <= 60


def test_the_token_endpoint_is_in_the_schema_without_authentication(db):
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    operation = schema["paths"]["/api/auth/token/"]["post"]
    assert "security" not in operation and "security" in schema["paths"]["/api/sagas/"]["get"]
    body = schema["components"]["schemas"][operation["requestBody"]["content"]["application/json"]["schema"]
                                           ["$ref"].rsplit("/", 1)[1]]
    assert {"username", "password"} <= set(body["required"])
    assert set(operation["responses"]) == {"200", "400", "413", "415", "429"}
