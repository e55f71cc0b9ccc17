"""saga_demo against the test worker: examples, generated sagas with failures injected, the gates answered
by the simulated approver (and timed out with short deadlines), pauses past a pivot resolved by the simulated
operator, the report."""
import re

import pytest
from django.core.management import CommandError, call_command

from config.celery import app
from corporate.models import FailureInjectionRule
from corporate.invariants import check_all
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus

pytestmark = pytest.mark.integration


@pytest.fixture
def injection_on(settings):
    # pytest-django turns DEBUG off in this process; the worker runs with the settings' default (on).
    settings.SAGAS_FAILURE_INJECTION_ENABLED = True


def test_demo_runs_examples_and_generated_sagas_and_every_invariant_passes(worker, injection_on, capsys):
    call_command("saga_demo", sagas=12, failure_rate=0.3, seed=3, examples=True, timeout=120,
                 approval_rate=0.7, approval_delay=0.1, approval_jitter=0.05)

    out = capsys.readouterr().out
    parents = SagaInstance.objects.filter(saga_type__startswith="corporate.", parent__isnull=True)
    assert parents.count() == 19 + 12
    assert "FAIL" not in out
    assert out.count("PASS") == 19 + 16  # every example, every invariant (the gates', the paused and the trees')
    # The latest onboarding's IT provisioning ran as a child saga: undone with its parent when the contract
    # was declined, and its figures reported as a type of its own.
    assert re.search(r"PASS  onboarding undone with its IT child: declined\s+compensated; "
                     r"child corporate.it_provisioning compensated", out)
    assert re.search(r"PASS  onboarding completes: IT child, contract signed\s+succeeded; "
                     r"child corporate.it_provisioning succeeded", out)
    assert "corporate.it_provisioning" in out.split("Steps:")[0]
    children = SagaInstance.objects.filter(saga_type="corporate.it_provisioning")
    assert children.exists() and not children.filter(parent__isnull=True).exists()
    # The latest budget approval skips the executive by its condition; version 3 by SkipWait.
    assert SagaEvent.objects.filter(kind=EventKind.STEP_SKIPPED, step__name="executive_signoff",
                                    detail__reason="condition false").exists()
    for heading in ("corporate.order_fulfillment", "all types", "Steps:", "Business invariants", "p95", "Gates:",
                    "budget_approval / manager_approval", "employee_onboarding / contract_signature",
                    "system_deployment / release_gate", "Operator: sagas paused past their pivot"):
        assert heading in out
    # The operator resolved every pause past a pivot: with the customer's address corrected, a laptop added,
    # corrected input, a step skipped with its result; and nothing is left paused.
    assert not SagaInstance.objects.filter(status=SagaStatus.PAUSED).exists()
    paused = SagaEvent.objects.filter(kind=EventKind.SAGA_PAUSED, detail__cause="after_pivot")
    resumed = SagaEvent.objects.filter(kind=EventKind.SAGA_RESUMED, detail__phase="person", detail__by="demo-operator")
    skipped = SagaEvent.objects.filter(kind=EventKind.STEP_SKIPPED, detail__by="demo-operator")
    assert paused.count() >= 4 and resumed.count() >= 3 and skipped.count() >= 1
    assert resumed.filter(detail__changed_input=["floor"]).exists()
    assert all(e.step.result == e.detail["result"] for e in skipped.select_related("step"))
    totals = re.search(r"^  all types\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", out, re.M)
    assert totals and [int(n) for n in totals.groups()] == [paused.count(), resumed.count(),
                                                             resumed.filter(detail__has_key="changed_input").count(),
                                                             skipped.count()]
    for label in ("order paused: mail bounced; address fixed", "onboarding paused: no laptop of its model"):
        assert re.search(rf"PASS  {label}\s+succeeded after a pause", out)
    # Every gate was answered by the demo's approver holding its permission, or through the contract's token.
    signals = SagaEvent.objects.filter(kind=EventKind.STEP_SIGNALLED)
    assert signals.exists() and set(signals.values_list("detail__by", flat=True)) == {"demo-approver", "token"}
    assert signals.filter(detail__signal="fail").exists()  # 70 %: some were rejected
    assert not StepRecord.objects.filter(status=StepStatus.WAITING).exists()
    assert "every saga finished and every invariant holds" in out
    assert not FailureInjectionRule.objects.exists()  # the demo's rules are gone


def test_short_deadlines_let_waits_time_out_and_compensate_during_the_demo(worker, capsys):
    call_command("saga_demo", sagas=8, seed=5, examples=True, short_deadlines=True, unanswered=0.5,
                 approval_rate=1.0, approval_delay=0.1, approval_jitter=0.0, timeout=120)

    out = capsys.readouterr().out
    assert "FAIL" not in out and "every saga finished and every invariant holds" in out
    assert "PASS  budget withdrawn: manager never answered" in out
    timed_out = StepRecord.objects.filter(error__startswith="SignalTimeout")
    assert timed_out.exists()
    assert all(r.saga.status == "compensated" for r in timed_out.select_related("saga"))
    totals = [int(m) for m in re.findall(r"^  \S+ / \S+\s+\d+\s+\d+\s+\d+\s+(\d+)", out, re.M)]
    assert sum(totals) == timed_out.count()  # the report's "timed out" column counts them
    assert all(passed for _, passed, _ in check_all())


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
