"""saga_demo against the test worker: examples, generated sagas with failures injected, the report."""
import pytest
from django.core.management import CommandError, call_command

from config.celery import app
from corporate.models import FailureInjectionRule
from sagas.models import SagaInstance

pytestmark = pytest.mark.integration


@pytest.fixture
def injection_on(settings):
    # pytest-django turns DEBUG off in this process; the worker runs with the settings' default (on).
    settings.SAGAS_FAILURE_INJECTION_ENABLED = True


def test_demo_runs_examples_and_generated_sagas_and_every_invariant_passes(worker, injection_on, capsys):
    call_command("saga_demo", sagas=12, failure_rate=0.3, seed=3, examples=True, timeout=120)

    out = capsys.readouterr().out
    assert SagaInstance.objects.filter(saga_type__startswith="corporate.").count() == 22
    assert "FAIL" not in out
    assert out.count("PASS") == 10 + 8  # every example, every invariant
    for heading in ("corporate.order_fulfillment", "all types", "Steps:", "Business invariants", "p95"):
        assert heading in out
    assert "every saga finished and every invariant holds" in out
    assert not FailureInjectionRule.objects.exists()  # the demo's rules are gone


def test_demo_without_a_worker_says_how_to_start_one(worker):
    queue = app.conf.task_default_queue
    app.conf.task_default_queue = "nobody-listens-here"
    try:
        with pytest.raises(CommandError, match="celery -A config worker"):
            call_command("saga_demo", sagas=1)
    finally:
        app.conf.task_default_queue = queue
    assert not SagaInstance.objects.exists()


def test_demo_refuses_failure_rate_when_injection_is_switched_off(worker, settings):
    settings.SAGAS_FAILURE_INJECTION_ENABLED = False
    with pytest.raises(CommandError, match="switched off"):
        call_command("saga_demo", sagas=1, failure_rate=0.5)
