"""/metrics: Prometheus text read from the database at scrape time (finished sagas from their totals),
behind a bearer token."""
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from sagas.metrics import compute_exposition, exposition
from sagas.models import SagaInstance, SagaStatus, StepRecord, StepStatus

NOW = timezone.now()


def saga(saga_type="shop.order", status=SagaStatus.SUCCEEDED, steps=(), parent=None):
    """A saga row (a child of ``parent`` if given); ``steps``: (name, status, attempts, seconds or None, lease held)."""
    instance = SagaInstance.objects.create(saga_type=saga_type, status=status, parent=parent,
                                           depth=parent.depth + 1 if parent else 0)
    for index, (name, step_status, attempts, seconds, leased) in enumerate(steps):
        StepRecord.objects.create(
            saga=instance, index=index, name=name, status=step_status, attempts=attempts,
            started_at=NOW if attempts else None,
            finished_at=NOW + timedelta(seconds=seconds) if seconds is not None else None,
            lease_expires_at=NOW + timedelta(minutes=5) if leased else None)
    return instance


def samples(text: str) -> dict:
    """(sample name, sorted labels) -> value, for every sample in the exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def figures(db):
    saga(steps=[("charge", StepStatus.SUCCEEDED, 2, 0.3, False), ("ship", StepStatus.SUCCEEDED, 1, 2.0, False)])
    saga(status=SagaStatus.COMPENSATED,
         steps=[("charge", StepStatus.COMPENSATED, 1, 0.2, False), ("ship", StepStatus.FAILED, 3, 40.0, False)])
    saga(status=SagaStatus.RUNNING, steps=[("charge", StepStatus.RUNNING, 1, None, True),
                                           ("ship", StepStatus.PENDING, 0, None, False)])
    saga("hr.hire", SagaStatus.FAILED, steps=[("open", StepStatus.COMPENSATION_FAILED, 1, 1.0, False)])
    return samples(exposition().decode())


def test_sagas_started_finished_and_active_by_type_and_status(figures):
    root = ("role", "root")
    assert figures[("sagas_started_total", (root, ("saga_type", "shop.order")))] == 3
    assert figures[("sagas_started_total", (root, ("saga_type", "hr.hire")))] == 1
    assert figures[("sagas_finished_total", (root, ("saga_type", "shop.order"), ("status", "succeeded")))] == 1
    assert figures[("sagas_finished_total", (root, ("saga_type", "shop.order"), ("status", "compensated")))] == 1
    assert figures[("sagas_finished_total", (root, ("saga_type", "hr.hire"), ("status", "failed")))] == 1
    assert figures[("sagas_active", (root, ("saga_type", "shop.order"), ("status", "running")))] == 1
    assert not [key for key in figures if ("role", "child") in key[1]]  # no child saga: no child series


def test_step_attempts_by_outcome(figures):
    def attempts(step, outcome):
        return figures[("sagas_step_attempts_total",
                        (("outcome", outcome), ("saga_type", "shop.order"), ("step", step)))]

    assert attempts("charge", "succeeded") == 2  # the running attempt has not ended
    assert attempts("charge", "failed") == 1  # the first attempt of the retried one
    assert attempts("ship", "succeeded") == 1
    assert attempts("ship", "failed") == 3


def test_step_durations_are_a_histogram_by_outcome(figures):
    def sample(name, outcome, **extra):
        labels = {"saga_type": "shop.order", "step": "ship", "outcome": outcome, **extra}
        return figures[(name, tuple(sorted(labels.items())))]

    assert sample("sagas_step_duration_seconds_count", "succeeded") == 1
    assert sample("sagas_step_duration_seconds_sum", "succeeded") == pytest.approx(2.0, abs=1e-3)  # SQLite: julianday
    assert sample("sagas_step_duration_seconds_bucket", "succeeded", le="1.0") == 0
    assert sample("sagas_step_duration_seconds_bucket", "succeeded", le="5.0") == 1
    assert sample("sagas_step_duration_seconds_bucket", "failed", le="30.0") == 0
    assert sample("sagas_step_duration_seconds_bucket", "failed", le="60.0") == 1
    assert sample("sagas_step_duration_seconds_bucket", "failed", le="+Inf") == 1


def test_every_name_is_prefixed(figures):
    assert figures and all(name.startswith("sagas_") for name, _ in figures)


CONTROL = ("SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN", "COMMIT", "SET TRANSACTION")


def scrape_statements() -> list[str]:
    """The data statements of one scrape (the figures cache bypassed)."""
    with CaptureQueriesContext(connection) as queries:
        compute_exposition()
    return [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(CONTROL)]


def test_a_scrape_costs_the_same_statements_however_many_sagas_finished_before(db):
    saga(status=SagaStatus.RUNNING, steps=[("a", StepStatus.RUNNING, 1, None, True)])
    for n in range(10):
        saga(f"type{n % 4}", steps=[("a", StepStatus.SUCCEEDED, 1, 0.1, False)])
    parent = saga(status=SagaStatus.RUNNING)
    saga("child.type", parent=parent)
    saga("child.type", SagaStatus.RUNNING, parent=parent)
    compute_exposition()  # folds them
    few = scrape_statements()
    for n in range(200):
        saga(f"type{n % 4}", steps=[("a", StepStatus.SUCCEEDED, 1, 0.1, False)])
    compute_exposition()
    many = scrape_statements()

    # Nothing left to fold (one look), then the totals, the sagas not folded and their steps (two), and
    # the paused sagas by cause.
    assert len(few) == len(many) == 6, "\n".join(many)


def test_a_scrape_reads_no_row_of_a_folded_saga(figures):
    before = samples(compute_exposition().decode())
    # Changed behind the engine's back: a scrape that read these rows would show it.
    SagaInstance.objects.filter(metrics_folded=True).update(saga_type="changed")
    StepRecord.objects.filter(saga__metrics_folded=True).update(attempts=99, status=StepStatus.WAITING)

    after = samples(compute_exposition().decode())

    assert after == before
    assert SagaInstance.objects.filter(metrics_folded=False).count() == 1  # the running one, read at each scrape


# --- who may scrape -------------------------------------------------------------------


def test_without_a_token_a_remote_client_is_refused(client, db, settings):
    settings.SAGAS_METRICS_TOKEN = "s3cret"

    response = client.get("/metrics", REMOTE_ADDR="10.0.0.7")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_wrong_token_is_refused(client, db, settings):
    settings.SAGAS_METRICS_TOKEN = "s3cret"

    response = client.get("/metrics", REMOTE_ADDR="10.0.0.7", HTTP_AUTHORIZATION="Bearer nope")

    assert response.status_code == 401


def test_the_token_opens_it(client, db, settings):
    settings.SAGAS_METRICS_TOKEN = "s3cret"
    settings.DEBUG = False

    response = client.get("/metrics", REMOTE_ADDR="10.0.0.7", HTTP_AUTHORIZATION="Bearer s3cret")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert "# TYPE sagas_started_total counter" in response.content.decode()


def test_localhost_is_open_in_development_only(client, db, settings):
    settings.SAGAS_METRICS_TOKEN = ""
    settings.DEBUG = True
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200

    settings.DEBUG = False
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401


def test_a_signed_in_user_who_may_read_sagas_gets_the_figures_of_the_types_they_may_read(client, db, sent):
    from sagas import Saga, Step, registry, start_saga
    from tests.helpers import saga_user

    registry.register(Saga("tests.secret_metrics", steps=[Step("a", lambda ctx: None)],
                           permission="testapp.change_call"))
    try:
        start_saga("tests.secret_metrics", input={})
        start_saga("tests.three_steps", input={})
        client.force_login(saga_user("watcher", ["view_sagainstance"]))

        body = client.get("/metrics").content.decode()

        assert 'saga_type="tests.three_steps"' in body and "tests.secret_metrics" not in body
    finally:
        registry.unregister("tests.secret_metrics")


def test_a_signed_in_user_without_the_view_permission_gets_401(client, db):
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_user("nobody"))

    assert client.get("/metrics").status_code == 401


def test_paused_sagas_are_active_and_counted_by_why(db, sent):
    from sagas import pause, start_saga
    from sagas.engine import execute_step
    from sagas.metrics import compute_exposition

    by_person = start_saga("tests.three_steps", input={})
    pause(by_person)
    past_pivot = start_saga("tests.pivoted", input={"fail": {"notify": "permanent"}})
    for index in range(3):
        execute_step(past_pivot.id, index)

    body = compute_exposition().decode()

    assert 'sagas_active{role="root",saga_type="tests.three_steps",status="paused"} 1.0' in body
    assert 'sagas_active{role="root",saga_type="tests.pivoted",status="paused"} 1.0' in body
    assert 'sagas_paused{cause="person",role="root",saga_type="tests.three_steps"} 1.0' in body
    assert 'sagas_paused{cause="after_pivot",role="root",saga_type="tests.pivoted"} 1.0' in body


def test_a_paused_saga_from_before_causes_were_recorded_counts_as_a_persons_in_one_series(db, sent):
    from sagas import pause, start_saga
    from sagas.metrics import compute_exposition

    for _ in range(2):
        pause(start_saga("tests.three_steps", input={}))
    legacy = SagaInstance.objects.filter(status=SagaStatus.PAUSED).first()
    SagaInstance.objects.filter(pk=legacy.pk).update(pause_cause="")  # paused before pause_cause existed

    body = compute_exposition().decode()

    lines = [line for line in body.splitlines() if line.startswith("sagas_paused{")]
    assert lines == ['sagas_paused{cause="person",role="root",saga_type="tests.three_steps"} 2.0']


# --- roots and children -------------------------------------------------------------------


@pytest.fixture
def family(db):
    """An onboarding (a root) with two IT provisionings as its children; one provisioning started by hand."""
    onboarding = saga("hr.onboarding", SagaStatus.RUNNING)
    saga("it.provisioning", SagaStatus.SUCCEEDED, parent=onboarding)
    saga("it.provisioning", SagaStatus.RUNNING, parent=onboarding)
    saga("it.provisioning", SagaStatus.COMPENSATED)
    return samples(exposition().decode())


def figure(figures, name, **labels):
    return figures.get((name, tuple(sorted(labels.items()))))


def test_child_sagas_are_counted_apart_from_roots_by_their_role(family):
    assert figure(family, "sagas_started_total", saga_type="it.provisioning", role="child") == 2
    assert figure(family, "sagas_started_total", saga_type="it.provisioning", role="root") == 1
    assert figure(family, "sagas_started_total", saga_type="hr.onboarding", role="root") == 1
    assert figure(family, "sagas_started_total", saga_type="hr.onboarding", role="child") is None
    assert figure(family, "sagas_finished_total", saga_type="it.provisioning", status="succeeded", role="child") == 1
    assert figure(family, "sagas_finished_total", saga_type="it.provisioning", status="compensated",
                  role="root") == 1
    assert figure(family, "sagas_active", saga_type="it.provisioning", status="running", role="child") == 1
    assert figure(family, "sagas_active", saga_type="hr.onboarding", status="running", role="root") == 1
    assert {labels for name, labels in family if name == "sagas_started_total"} == {
        (("role", "root"), ("saga_type", "hr.onboarding")), (("role", "child"), ("saga_type", "it.provisioning")),
        (("role", "root"), ("saga_type", "it.provisioning"))}  # no series of a role with no saga


def test_summed_over_role_the_figures_count_every_saga_of_a_type(family):
    started = sum(value for (name, labels), value in family.items()
                  if name == "sagas_started_total" and ("saga_type", "it.provisioning") in labels)

    assert started == SagaInstance.objects.filter(saga_type="it.provisioning").count() == 3


def test_a_finished_child_is_folded_as_a_child(family):
    from sagas.models import MetricTotal

    folded = dict(MetricTotal.objects.filter(saga_type="it.provisioning", step="").values_list("figure", "value"))

    assert folded == {"child:succeeded": 1, "compensated": 1}
    assert samples(compute_exposition().decode()) == family  # read from the totals, the same figures


def test_a_child_whose_parent_was_pruned_is_still_counted_as_a_child(db):
    onboarding = saga("hr.onboarding")
    saga("it.provisioning", parent=onboarding)
    onboarding.delete()

    figures = samples(compute_exposition().decode())

    assert figure(figures, "sagas_started_total", saga_type="it.provisioning", role="child") == 1


def test_children_paused_with_their_parent_are_counted_as_children_paused_by_it(db, sent):
    from sagas import pause, start_saga
    from sagas.engine import execute_step

    parent = start_saga("tests.nested", input={})
    execute_step(parent.id, 0)
    execute_step(parent.id, 1)  # starts its child
    pause(parent)

    figures = samples(compute_exposition().decode())

    assert figure(figures, "sagas_paused", saga_type="tests.three_steps", cause="parent", role="child") == 1
    assert figure(figures, "sagas_paused", saga_type="tests.nested", cause="person", role="root") == 1
    assert figure(figures, "sagas_active", saga_type="tests.three_steps", status="paused", role="child") == 1
