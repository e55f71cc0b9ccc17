"""The admin as people watch sagas: readable lists, only the buttons that apply, the timeline, the live page."""
import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from sagas.admin import applicable_interventions
from sagas.models import SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus

CHANGELIST = reverse("admin:sagas_sagainstance_changelist")
LIVE = reverse("sagas-live")


def make_saga(status=SagaStatus.RUNNING, step_statuses=(StepStatus.SUCCEEDED, StepStatus.RUNNING, StepStatus.PENDING),
              saga_type="shop.order", **fields):
    """A saga row in any state, written directly: for showing, not for running."""
    now = timezone.now()
    saga = SagaInstance.objects.create(saga_type=saga_type, status=status, started_at=now - timedelta(seconds=3),
                                       due_at=now + timedelta(minutes=1), **fields)
    for index, (name, step_status) in enumerate(zip(["reserve", "charge", "ship"], step_statuses)):
        StepRecord.objects.create(saga=saga, index=index, name=name, status=step_status, attempts=1,
                                  started_at=now - timedelta(seconds=2))
    return saga


def buttons(page: str) -> set[str]:
    return set(re.findall(r'intervene/([a-z-]+)/', page))


@pytest.mark.parametrize("status, steps, expected", [
    (SagaStatus.PENDING, [StepStatus.PENDING] * 3, {"cancel", "pause"}),
    (SagaStatus.RUNNING, [StepStatus.SUCCEEDED, StepStatus.RUNNING, StepStatus.PENDING], {"cancel", "pause"}),
    (SagaStatus.COMPENSATING, [StepStatus.COMPENSATING, StepStatus.FAILED, StepStatus.SKIPPED], {"pause"}),
    (SagaStatus.SUCCEEDED, [StepStatus.SUCCEEDED] * 3, {"resubmit"}),
    (SagaStatus.COMPENSATED, [StepStatus.COMPENSATED, StepStatus.FAILED, StepStatus.SKIPPED], {"resubmit"}),
    (SagaStatus.FAILED, [StepStatus.COMPENSATION_FAILED, StepStatus.FAILED, StepStatus.SKIPPED],
     {"resubmit", "retry-compensation"}),
])
def test_saga_page_shows_only_the_buttons_that_apply(admin_client, db, status, steps, expected):
    saga = make_saga(status, steps)

    page = admin_client.get(reverse("admin:sagas_sagainstance_change", args=[saga.pk])).content.decode()

    assert buttons(page) == expected
    assert set(applicable_interventions(saga)) == expected


def test_a_saga_held_by_the_sweeper_offers_release(db):
    saga = make_saga(SagaStatus.RUNNING)
    saga.due_at = None

    assert applicable_interventions(saga) == ["cancel", "release", "pause"]


@pytest.mark.parametrize("paused_from, expected", [
    (SagaStatus.RUNNING, {"cancel", "resume"}),
    (SagaStatus.COMPENSATING, {"resume"}),  # already being undone: resumed, not cancelled
])
def test_a_paused_saga_offers_resume_and_cancel_before_its_pivot(admin_client, db, paused_from, expected):
    saga = make_saga(SagaStatus.PAUSED, [StepStatus.SUCCEEDED, StepStatus.RUNNING, StepStatus.PENDING],
                     paused_from=paused_from)
    SagaInstance.objects.filter(pk=saga.pk).update(due_at=None)
    saga.refresh_from_db()

    page = admin_client.get(reverse("admin:sagas_sagainstance_change", args=[saga.pk])).content.decode()

    assert buttons(page) == expected
    assert "Paused: a person decides" in page and f"paused by a person (was {paused_from})" in page


def test_changelist_shows_one_readable_line_per_saga(admin_client, db):
    saga = make_saga(error="step charge failed: TimeoutError")

    page = admin_client.get(CHANGELIST).content.decode()

    assert f">{saga.pk.hex[:8]}</code>" in page
    assert str(saga.pk) not in re.sub(r'="[^"]*"', "", page)  # the full id only in attributes (link, tooltip)
    assert "charge (running)" in page
    assert "step charge failed: TimeoutError" in page
    assert "white-space: nowrap" in page


def test_changelist_shows_where_a_saga_compensated_at_its_gate_stopped(admin_client, db, sent):
    from corporate.fixtures import Inputs
    from sagas import fail_step, start_saga
    from sagas.engine import execute_compensation, execute_step

    saga = start_saga("corporate.employee_onboarding", input=Inputs.onboarding(), version=5)  # the gate second
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)  # contract_signature waits for the signature
    fail_step(saga, "contract_signature", error="the candidate declined")
    for index in (1, 0):
        execute_compensation(saga.id, index)
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATED

    page = admin_client.get(CHANGELIST).content.decode()

    row = re.search(rf"<tr>(?:(?!</tr>).)*>{saga.pk.hex[:8]}</code>.*?</tr>", page, re.S).group(0)
    assert "contract_signature (compensated)" in row  # not "-": the gate it stopped at, undone


def _time_out(saga):
    from sagas.engine import sweep

    StepRecord.objects.filter(saga=saga, name="contract_signature").update(
        signal_deadline=timezone.now() - timedelta(seconds=1))
    sweep()


def _cancel(saga):
    from sagas import cancel

    cancel(saga, reason="the position was closed")


@pytest.mark.parametrize("end_the_wait", [_time_out, _cancel], ids=["timed out", "cancelled"])
def test_changelist_shows_the_gate_where_an_onboarding_ended_another_way(admin_client, db, sent, end_the_wait):
    from corporate.fixtures import Inputs
    from sagas import start_saga
    from sagas.engine import execute_compensation, execute_step

    saga = start_saga("corporate.employee_onboarding", input=Inputs.onboarding(), version=5)  # the gate second
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)  # contract_signature waits for the signature
    end_the_wait(saga)
    for index in (1, 0):
        execute_compensation(saga.id, index)
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATED

    page = admin_client.get(CHANGELIST).content.decode()

    row = re.search(rf"<tr>(?:(?!</tr>).)*>{saga.pk.hex[:8]}</code>.*?</tr>", page, re.S).group(0)
    assert "contract_signature (compensated)" in row


@pytest.mark.parametrize("sagas", [3, 40])
def test_changelist_query_count_does_not_grow_with_the_sagas(admin_client, db, sagas,
                                                             django_assert_max_num_queries):
    for n in range(sagas):
        make_saga(saga_type=f"shop.order{n % 3}")
    admin_client.get(CHANGELIST)  # the session and user are cached from here on, as in a browser

    with django_assert_max_num_queries(7):
        response = admin_client.get(CHANGELIST)

    assert response.status_code == 200


def test_events_on_the_saga_page_read_as_sentences_with_a_timeline_chart(admin_client, db):
    saga = make_saga(SagaStatus.RUNNING)
    charge = saga.steps.get(name="charge")
    start = timezone.now() - timedelta(seconds=2)
    SagaEvent.objects.create(saga=saga, step=charge, kind="step_started", detail={"attempt": 1}, created_at=start)
    SagaEvent.objects.create(saga=saga, step=charge, kind="step_attempt_failed", created_at=start + timedelta(seconds=1),
                             detail={"attempt": 1, "error": "TimeoutError: gateway", "retry_in": 0.5})

    page = admin_client.get(reverse("admin:sagas_sagainstance_change", args=[saga.pk])).content.decode()

    assert "Attempt 1 of charge failed: TimeoutError: gateway; retry in 0.5 s." in page
    assert '"attempt": 1' not in page  # no dictionaries
    assert '<div class="saga-timeline-chart"' in page
    assert 'data-outcome="retried"' in page


def test_admin_index_and_changelist_lead_to_the_live_page(admin_client, db):
    assert f'href="{LIVE}"' in admin_client.get(reverse("admin:index")).content.decode()
    assert f'href="{LIVE}"' in admin_client.get(CHANGELIST).content.decode()


def test_live_page_renders_its_sections_with_the_first_snapshot(admin_client, db):
    make_saga(SagaStatus.FAILED, [StepStatus.COMPENSATION_FAILED, StepStatus.FAILED, StepStatus.SKIPPED],
              error="compensation of step reserve failed: boom")

    page = admin_client.get(LIVE).content.decode()

    for section in ("needs-person", "counts", "in-flight", "waiting", "latest-failures"):
        assert f'id="{section}"' in page
    assert "compensation of step reserve failed: boom" in page  # in the embedded snapshot
    assert "new WebSocket" in page


def test_live_page_is_for_staff_only(client, db):
    user = get_user_model().objects.create_user("bob", password="pw")
    client.force_login(user)

    response = client.get(LIVE)

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]
