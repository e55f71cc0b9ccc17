"""What a stranger cannot break: bounded bodies, one error shape, throttles, bounded lists and windows,
the benchmark and chaos sagas behind their switches, /metrics tokens, retention on a schedule."""
import json
import logging
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from sagas import registry
from sagas.alerts import RateLimitedAdminEmailHandler
from sagas.models import SagaInstance, StepRecord
from tests.helpers import saga_user

SAGA = "tests.three_steps"
SAGAS_URL = "/api/sagas/"
SIGNAL_URL = "/api/signals/no-such-token/complete/"
NESTED = '{"a":' * 100_000 + "1" + "}" * 100_000


@pytest.fixture
def api(db, sent):
    user = saga_user("limits")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def assert_error(response, status: int, code: str) -> dict:
    """The API's one error shape: JSON with ``detail`` and ``code``."""
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["detail"], str) and body["code"] == code, body
    return body


# --- bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [SAGAS_URL, SIGNAL_URL])
def test_deeply_nested_json_answers_400_not_500(api, url):
    response = api.generic("POST", url, NESTED, content_type="application/json")

    assert_error(response, 400, "too_deep")
    assert SagaInstance.objects.count() == 0


def test_json_nested_past_the_depth_limit_is_refused_and_below_it_accepted(api, settings):
    settings.SAGAS_MAX_INPUT_DEPTH = 4
    deep = {"saga_type": SAGA, "input": {"a": {"b": {"c": {}}}}}  # the body, input, a, b, c: 5 levels
    shallow = {"saga_type": SAGA, "input": {"a": {"b": {}}}}

    assert_error(api.post(SAGAS_URL, deep, format="json"), 400, "too_deep")
    assert api.post(SAGAS_URL, shallow, format="json").status_code == 202


@pytest.mark.parametrize("url", [SAGAS_URL, SIGNAL_URL])
def test_a_body_over_the_size_limit_answers_413(api, settings, url):
    settings.SAGAS_MAX_INPUT_BYTES = 1000
    body = json.dumps({"saga_type": SAGA, "input": {"blob": "x" * 1000}})

    body_shape = assert_error(api.generic("POST", url, body, content_type="application/json"), 413,
                              "request_too_large")

    assert "1000 bytes" in body_shape["detail"]
    assert SagaInstance.objects.count() == 0


def test_a_body_that_does_not_say_its_length_is_cut_at_the_limit(api, settings):
    settings.SAGAS_MAX_INPUT_BYTES = 1000
    body = json.dumps({"saga_type": SAGA, "input": {"blob": "x" * 5000}})

    response = api.generic("POST", SAGAS_URL, body, content_type="application/json", CONTENT_LENGTH="10")

    assert response.status_code in (400, 413)  # read up to what it claimed: never past the limit
    assert SagaInstance.objects.count() == 0


def test_a_body_that_is_not_json_answers_415(api):
    response = api.generic("POST", SAGAS_URL, "saga_type=tests.three_steps",
                           content_type="application/x-www-form-urlencoded")

    assert_error(response, 415, "unsupported_media_type")


def test_malformed_json_answers_400_in_the_same_shape(api):
    assert_error(api.generic("POST", SAGAS_URL, "{nope", content_type="application/json"), 400, "parse_error")


# --- one error shape --------------------------------------------------------------------------


def test_an_unknown_path_under_api_answers_json_404(api):
    assert_error(api.get("/api/no-such-thing/"), 404, "not_found")


def test_a_method_a_view_does_not_take_answers_json_405(api):
    response = api.put(SAGAS_URL, {}, format="json")

    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response["Allow"]


def test_an_unknown_saga_answers_404_with_its_code(api):
    assert_error(api.get(f"{SAGAS_URL}not-a-uuid/"), 404, "saga_not_found")


def test_field_errors_stand_beside_detail_and_code(api):
    body = assert_error(api.post(SAGAS_URL, {"saga_type": "tests.nope"}, format="json"), 400,
                        "unknown_saga_type")

    assert "tests.nope" in body["saga_type"][0]


def test_without_credentials_the_answer_is_401_in_the_same_shape(db):
    assert_error(APIClient().get(SAGAS_URL), 401, "not_authenticated")


# --- throttles --------------------------------------------------------------------------------


def test_the_token_endpoints_are_throttled_per_client_with_retry_after(db, settings):
    settings.SAGAS_SIGNAL_THROTTLE_RATE = "2/minute"
    client = APIClient()

    answers = [client.post(SIGNAL_URL, {}, format="json") for _ in range(3)]

    assert [a.status_code for a in answers] == [404, 404, 429]
    assert_error(answers[2], 429, "throttled")
    assert 0 < int(answers[2]["Retry-After"]) <= 60


def test_a_client_cannot_escape_the_token_throttle_by_naming_another_address(db, settings):
    settings.SAGAS_SIGNAL_THROTTLE_RATE = "1/minute"
    client = APIClient()

    client.post(SIGNAL_URL, {}, format="json", HTTP_X_FORWARDED_FOR="10.0.0.1")
    again = client.post(SIGNAL_URL, {}, format="json", HTTP_X_FORWARDED_FOR="10.0.0.2")

    assert again.status_code == 429


def test_the_authenticated_api_is_throttled_per_user(api, settings):
    settings.SAGAS_API_THROTTLE_RATE = "2/minute"
    other = saga_user("other")
    other_client = APIClient()
    other_client.force_authenticate(other)

    answers = [api.get(SAGAS_URL).status_code for _ in range(3)]

    assert answers == [200, 200, 429]
    assert other_client.get(SAGAS_URL).status_code == 200


def test_a_throttle_set_off_lets_everything_through(api, settings):
    settings.SAGAS_API_THROTTLE_RATE = None

    assert {api.get(SAGAS_URL).status_code for _ in range(5)} == {200}


# --- error mails ------------------------------------------------------------------------------


def test_django_error_mails_are_rate_limited_per_kind_of_error(settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.SAGAS_ALERT_MAIL_INTERVAL = 60
    handler = RateLimitedAdminEmailHandler()

    def record(exc: Exception) -> logging.LogRecord:
        try:
            raise exc
        except Exception:
            return logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Internal Server Error: %s",
                                     ("/api/sagas/",), sys.exc_info())

    for _ in range(5):
        handler.emit(record(RecursionError("deep")))
    handler.emit(record(KeyError("other")))

    assert len(mail.outbox) == 2  # one per kind of error, not one per request


# --- bounded lists, windows and scrapes --------------------------------------------------------


def test_a_page_of_the_saga_list_does_not_count_the_table(api):
    for _ in range(3):
        SagaInstance.objects.create(saga_type=SAGA)

    with CaptureQueriesContext(connection) as queries:
        body = api.get(SAGAS_URL).json()

    assert len(body["results"]) == 3 and body["count"] is None
    assert not [q for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]


def test_an_old_page_number_past_the_first_answers_404_rather_than_the_first_page_again(api):
    SagaInstance.objects.create(saga_type=SAGA)

    assert api.get(SAGAS_URL, {"page": "1"}).status_code == 200
    assert_error(api.get(SAGAS_URL, {"page": "2"}), 404, "page_numbers_retired")


def test_a_cursor_the_list_did_not_give_out_answers_404(api):
    assert_error(api.get(SAGAS_URL, {"cursor": "bz14"}), 404, "not_found")


def test_the_analytics_window_is_capped_and_the_answer_says_so(api, settings):
    settings.SAGAS_ANALYTICS_MAX_WINDOW = 7 * 24 * 3600
    now = timezone.now()
    old = SagaInstance.objects.create(saga_type=SAGA)
    SagaInstance.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=8))
    SagaInstance.objects.create(saga_type=SAGA)

    asked = (now - timedelta(days=30)).isoformat()
    body = api.get("/api/analytics/", {"since": asked}).json()
    within = api.get("/api/analytics/", {"since": (now - timedelta(days=6)).isoformat()}).json()

    assert body["overall"]["total"] == 1  # the 8-day-old saga is outside the capped window
    since = timezone.datetime.fromisoformat(body["window"]["since"].replace("Z", "+00:00"))
    assert timedelta(days=7) - timedelta(minutes=1) < now - since <= timedelta(days=7)
    assert within["overall"]["total"] == 1 and within["window"]["since"].startswith(
        (now - timedelta(days=6)).date().isoformat())


def test_a_non_ascii_bearer_token_on_metrics_answers_401(client, db, settings):
    settings.SAGAS_METRICS_TOKEN = "s3cret"

    response = client.get("/metrics", REMOTE_ADDR="10.0.0.7", HTTP_AUTHORIZATION="Bearer s3crét")

    assert response.status_code == 401


def test_metrics_are_computed_once_per_cache_interval(client, db, settings, django_assert_num_queries):
    settings.SAGAS_METRICS_TOKEN = "s3cret"
    settings.SAGAS_METRICS_CACHE_SECONDS = 60
    scrape = {"REMOTE_ADDR": "10.0.0.7", "HTTP_AUTHORIZATION": "Bearer s3cret"}

    first = client.get("/metrics", **scrape)
    SagaInstance.objects.create(saga_type=SAGA)
    with django_assert_num_queries(0):
        second = client.get("/metrics", **scrape)

    assert first.status_code == second.status_code == 200 and first.content == second.content


# --- the benchmark and chaos sagas --------------------------------------------------------------


def registered_in_a_fresh_process(**env: str) -> list[str]:
    """The saga names a process at the test settings registers, under ``env``."""
    code = ("import django, json; django.setup(); from sagas import registry; "
            "registry.get('sagas.bench.s3') if 'sagas.bench' in registry else None; "
            "print(json.dumps(sorted({s.name for s in registry})))")
    clean = {k: v for k, v in os.environ.items() if k not in ("SAGAS_BENCH_SAGAS", "SAGAS_CHAOS_SAGAS")}
    done = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, capture_output=True, text=True,
                          env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings_test", **env}, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_bench_and_chaos_sagas_are_not_registered_by_default():
    names = registered_in_a_fresh_process()

    assert SAGA in names
    assert not [n for n in names if n.startswith(("sagas.bench", "sagas.chaos"))]


def test_each_switch_registers_its_own_sagas_as_the_commands_workers_get_them():
    from sagas.sagas import BENCH_ENV, CHAOS_ENV

    bench = registered_in_a_fresh_process(**BENCH_ENV)
    chaos = registered_in_a_fresh_process(**CHAOS_ENV)

    assert {"sagas.bench", "sagas.bench.s3"} <= set(bench) and "sagas.chaos" not in bench
    assert "sagas.chaos" in chaos and not [n for n in chaos if n.startswith("sagas.bench")]


def test_a_bench_variant_cannot_be_started_through_the_api_by_default(api):
    response = api.post(SAGAS_URL, {"saga_type": "sagas.bench.p1000"}, format="json")

    assert_error(response, 400, "unknown_saga_type")
    assert StepRecord.objects.count() == 0


def test_every_saga_defined_in_the_chaos_module_follows_the_chaos_switch(chaos_sagas):
    from sagas import chaos
    from sagas.definitions import Saga

    defined = {v.name for v in vars(chaos).values() if isinstance(v, Saga)}

    assert defined and all(name in registry for name in defined)


def test_the_commands_register_their_sagas_themselves(bench_sagas):
    assert "sagas.bench" in registry
    assert registry.get("sagas.bench.p3").name == "sagas.bench.p3"


# --- retention --------------------------------------------------------------------------------


def test_retention_is_scheduled_only_when_an_age_is_set():
    assert "sagas-prune" not in settings.CELERY_BEAT_SCHEDULE
    code = "import json, config.settings as s; print(json.dumps(s.CELERY_BEAT_SCHEDULE.get('sagas-prune')))"
    done = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, capture_output=True, text=True,
                          env={**os.environ, "DEBUG": "1", "SAGAS_PRUNE_AFTER_DAYS": "30"}, timeout=60)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["task"] == "sagas.prune"


def test_the_prune_task_removes_what_saga_prune_would(db):
    from sagas.models import SagaStatus
    from sagas.tasks import prune

    old = SagaInstance.objects.create(saga_type=SAGA, status=SagaStatus.SUCCEEDED)
    SagaInstance.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(days=40))
    recent = SagaInstance.objects.create(saga_type=SAGA, status=SagaStatus.SUCCEEDED, finished_at=timezone.now())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings, "SAGAS_PRUNE_AFTER_DAYS", 30, raising=False)
        report = prune.run()

    assert report["sagas"] == 1
    assert list(SagaInstance.objects.values_list("pk", flat=True)) == [recent.pk]


# --- the schema and the validation agree --------------------------------------------------------


def openapi(api) -> dict:
    return api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()


def test_a_fail_signal_needs_a_non_empty_error_as_the_schema_says(api):
    error = openapi(api)["components"]["schemas"]["StepFailInput"]["properties"]["error"]

    assert error["minLength"] == 1
    assert_error(api.post("/api/signals/no-such-token/fail/", {"error": ""}, format="json"), 400, "invalid")


def test_json_object_keys_with_nul_are_refused_as_the_schema_says(api):
    result = openapi(api)["components"]["schemas"]["StepCompleteInput"]["properties"]["result"]

    assert result["propertyNames"]["pattern"] == r"^[^\x00]*$"
    response = api.post(SAGAS_URL, {"saga_type": SAGA, "input": {"a\x00b": 1}}, format="json")
    assert_error(response, 400, "invalid_input")


def test_a_version_the_type_does_not_have_is_an_error_on_version(api):
    body = assert_error(api.post(SAGAS_URL, {"saga_type": SAGA, "version": 99}, format="json"), 400,
                        "unknown_version")

    assert list(body) == ["version", "detail", "code"]


def _operations(doc: dict):
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            yield path, method.upper(), operation


def test_every_operation_documents_its_429_with_retry_after_and_the_rate_that_applies(api):
    for path, method, operation in _operations(openapi(api)):
        answer = operation["responses"]["429"]
        assert answer["headers"]["Retry-After"]["required"] is True, (method, path)
        assert answer["headers"]["Retry-After"]["schema"]["type"] == "integer"
        assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOutput")
        rate = ("SAGAS_SIGNAL_THROTTLE_RATE" if path.startswith("/api/signals/")
                else "SAGAS_AUTH_THROTTLE_RATE" if path == "/api/auth/token/" else "SAGAS_API_THROTTLE_RATE")
        assert f"`{rate}`" in answer["description"], (method, path)


def test_operations_that_take_a_body_document_413_and_415_and_the_others_do_not(api):
    for path, method, operation in _operations(openapi(api)):
        documented = {"413", "415"} & set(operation["responses"])
        assert documented == ({"413", "415"} if method == "POST" else set()), (method, path)


def test_a_429_carries_retry_after_even_when_the_throttle_cannot_say_how_long(api, settings, monkeypatch):
    from sagas.api.throttles import ApiUserThrottle

    settings.SAGAS_API_THROTTLE_RATE = "1/minute"
    monkeypatch.setattr(ApiUserThrottle, "wait", lambda self: None)  # DRF then sends no Retry-After

    answers = [api.get(SAGAS_URL) for _ in range(2)]

    assert_error(answers[1], 429, "throttled")
    assert answers[1]["Retry-After"] == "1"
