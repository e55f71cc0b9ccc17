"""The API against its own OpenAPI schema, fuzzed by Schemathesis over real HTTP.

A gunicorn server runs on the test database (its URL is handed over the way
workers get it) with a message queue of its own that no worker consumes:
sagas the fuzzer starts stay pending, and the queue is deleted afterwards.
Every check runs, in the coverage and fuzzing phases, with a fixed seed so a
failure reproduces; the report names each failing request.
"""
import json
import os
import subprocess
import sys
import urllib.request
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token

from sagas.models import BulkAction, SagaInstance, SagaStatus, StepRecord, StepStatus
from sagas.workers import delete_queue, free_port, spawn_web, stop_workers, wait_for_http
from tests.helpers import ON_POSTGRESQL, saga_user

pytestmark = pytest.mark.integration

SAGA = "tests.three_steps"  # no input schema: a resubmitted copy of its input always passes
# Per operation; sized for the suite, deeper with SAGAS_FUZZ_EXAMPLES: 200 on PostgreSQL (about two and a half
# minutes on two cores); 50 on SQLite, where the API and its schema are the same and only the store differs.
MAX_EXAMPLES = int(os.environ.get("SAGAS_FUZZ_EXAMPLES", "200" if ON_POSTGRESQL else "50"))
SEED = 7
RUN_TIMEOUT = 600  # a guard against a hung run, not a measure: the operations grow with the API

# POST /api/sagas/ answers 400 to bodies the schema cannot tell apart from good
# ones: an input its own rules refuse in code (a row in some state, a value
# that must differ from a stored one), ids of rows this test did not create.
# Its 400 is documented that way. And it takes more than its schema says (the
# input serializers read "7" as 7, ignore fields they do not know): a body
# the schema calls wrong may start a saga, so a 202 to its negative data is
# no failure. Bodies the schema calls right must start one: that is
# test_starts_generated_from_the_schema_are_accepted_for_every_saga_type.
# Every other check and operation stays as strict as Schemathesis makes it.
CONFIG = """\
[parameters]
saga_id = "{finished}"

[[operations]]
include-path = "/api/sagas/{{saga_id}}/cancel/"
parameters = {{ saga_id = "{running}" }}

[[operations]]
include-path = "/api/sagas/{{saga_id}}/retry-compensation/"
parameters = {{ saga_id = "{failed}" }}

[[operations]]
include-path-regex = '^/api/sagas/[^/]+/steps/'
parameters = {{ saga_id = "{waiting}", step = "gate" }}

[[operations]]
include-path-regex = '^/api/signals/'
parameters = {{ token = "{token}" }}

[[operations]]
include-path = "/api/bulk-actions/{{bulk_action_id}}/"
parameters = {{ bulk_action_id = "{bulk}" }}

[[operations]]
include-path = "/api/sagas/"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]
checks.negative_data_rejection.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]
"""


@pytest.fixture
def api_server(transactional_db, tmp_path):
    """gunicorn on a free port, on the test database and a queue nobody consumes; its base URL."""
    port, queue = free_port(), f"fuzz-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "server.log"
    # The throttles off: the fuzzer sends thousands of requests a minute as one user, from one address.
    proc = spawn_web(port=port, queue=queue, log=log, env={
        "DJANGO_SETTINGS_MODULE": "config.settings_test", "SAGAS_API_THROTTLE_RATE": "off",
        "SAGAS_SIGNAL_THROTTLE_RATE": "off", "SAGAS_AUTH_THROTTLE_RATE": "off"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/api/schema/", proc, log)
        yield base
    finally:
        stop_workers([proc], timeout=20)
        delete_queue(queue)


def saga_row(status: str, step_status: str) -> SagaInstance:
    saga = SagaInstance.objects.create(saga_type=SAGA, status=status, input={"note": "fuzz"})
    for index, name in enumerate("abc"):
        StepRecord.objects.create(saga=saga, index=index, name=name, status=step_status)
    return saga


def waiting_row(token: str) -> SagaInstance:
    """A tests.gated saga whose gate waits for a signal (by a user holding its permission, or ``token``)."""
    from sagas.engine.core import token_hash

    saga = SagaInstance.objects.create(saga_type="tests.gated", status=SagaStatus.RUNNING, input={"note": "fuzz"})
    for index, (name, status) in enumerate([("a", StepStatus.SUCCEEDED), ("gate", StepStatus.WAITING),
                                            ("c", StepStatus.PENDING)]):
        StepRecord.objects.create(saga=saga, index=index, name=name, status=status, result={"value": index},
                                  signal_token_hash=token_hash(token) if name == "gate" else None)
    return saga


def test_api_answers_as_its_schema_says_under_fuzzing(api_server, tmp_path):
    user = saga_user("fuzzer", password="fuzz-pass-1")
    user.user_permissions.add(Permission.objects.get(codename="change_call", content_type__app_label="testapp"))
    token = Token.objects.create(user=user).key
    signal_token = "fuzz-signal-token-" + uuid.uuid4().hex
    ours = {
        "finished": saga_row(SagaStatus.SUCCEEDED, StepStatus.SUCCEEDED).pk,
        "running": saga_row(SagaStatus.RUNNING, StepStatus.PENDING).pk,
        "failed": saga_row(SagaStatus.FAILED, StepStatus.COMPENSATION_FAILED).pk,
        "waiting": waiting_row(signal_token).pk,
    }
    config = tmp_path / "schemathesis.toml"
    bulk_job = BulkAction.objects.create(action="cancel", filter={"ids": [str(ours["running"])]}, requested_by=user)
    config.write_text(CONFIG.format(**ours, token=signal_token, bulk=bulk_job.pk))

    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{api_server}/api/schema/",
         "--header", f"Authorization: Token {token}", "--checks", "all", "--phases", "examples,coverage,fuzzing",
         "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1", "--request-timeout", "20",
         "--generation-database", "none", "--generation-allow-x00", "true",
         "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )

    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-2000:]
    started = SagaInstance.objects.exclude(pk__in=ours.values())
    assert started.exists()  # the fuzzer did start sagas...
    assert not started.exclude(status=SagaStatus.PENDING).exists()  # ...and none of them ran


# --- starts built from the schema are valid starts ----------------------------------------------

STARTS_PER_TYPE = max(5, MAX_EXAMPLES // 20)


def reference_rows() -> None:
    """A few rows of each kind the corporate inputs name, so that their ids are listed in the schema."""
    from corporate import fixtures
    from corporate.models import Employee

    for n in range(3):
        department = fixtures.department()
        fixtures.customer(), fixtures.product()
        fixtures.service(live_version="0.0.0-live")
        Employee.objects.create(saga_id=uuid.uuid4(), name=f"Hire {n}", email=f"hire{n}@corp.example",
                                department=department, salary="50000")


def generated_starts(schema, saga_type: str, auth: dict, count: int) -> list:
    """``count`` bodies Schemathesis builds (positive data) from ``saga_type``'s branch of the
    ``POST /api/sagas/`` body, each sent as a start: [(body, status, answer)]."""
    import hypothesis
    import schemathesis

    raw = json.loads(json.dumps(schema.raw_schema))
    body = raw["paths"]["/api/sagas/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    ref = body["discriminator"]["mapping"][saga_type]
    body.clear()
    body["$ref"] = ref
    branch = schemathesis.openapi.from_dict(raw)
    branch.location = schema.location
    operation = branch["/api/sagas/"]["POST"]
    answers = []

    @hypothesis.settings(max_examples=count, database=None, deadline=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.generate])
    @hypothesis.given(case=operation.as_strategy(headers=auth))
    def send(case):
        case.headers.pop("Idempotency-Key", None)  # each one a new start, never a replay of an earlier one
        response = case.call(base_url=schema.location.rsplit("/api/schema/", 1)[0], timeout=20)
        answers.append((case.body, response.status_code, response.text[:300]))

    send()
    return answers


def test_starts_generated_from_the_schema_are_accepted_for_every_saga_type(api_server):
    import schemathesis

    from sagas.definitions import registry

    user = saga_user("starter", password="start-pass-1")
    auth = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    reference_rows()
    schema = schemathesis.openapi.from_url(f"{api_server}/api/schema/", headers=auth, timeout=30)
    mapping = schema.raw_schema["paths"]["/api/sagas/"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["discriminator"]["mapping"]
    served = {t["name"] for t in json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{api_server}/api/saga-types/", headers=auth), timeout=30).read())}
    # Every type the server registers (those this process's other tests registered are not the server's).
    assert set(mapping) == served
    assert {d.name for d in registry if d.name.startswith("corporate.")} <= served

    refused, sent = [], 0
    for saga_type in sorted(mapping):
        answers = generated_starts(schema, saga_type, auth, STARTS_PER_TYPE)
        sent += len(answers)
        assert {body["saga_type"] for body, _, _ in answers} == {saga_type}
        refused += [(body, status, text) for body, status, text in answers if status != 202]

    assert not refused, f"{len(refused)} of {sent} starts built from the schema were refused, e.g. {refused[:5]}"
    started = SagaInstance.objects.values_list("saga_type", flat=True).distinct()
    assert set(started) == set(mapping)  # each type started, as many times as it was sent
    assert SagaInstance.objects.count() == sent
