"""The admin's buttons and forms for a paused saga: they call the same engine functions as the API."""
import pytest
from django.urls import reverse

from sagas import start_saga
from sagas.engine import execute_step
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepStatus
from tests.helpers import saga_user

PIVOTED = "tests.pivoted"


def change_url(saga):
    return reverse("admin:sagas_sagainstance_change", args=[saga.pk])


def paused_after_pivot():
    saga = start_saga(PIVOTED, input={"fail": {"notify": "permanent"}})
    for index in range(3):
        execute_step(saga.id, index)
    return SagaInstance.objects.get(pk=saga.pk)


def test_a_saga_paused_past_its_pivot_shows_why_and_its_forms(admin_client, sent):
    saga = paused_after_pivot()

    page = admin_client.get(change_url(saga)).content.decode()

    assert "paused past its pivot" in page and "notify refused" in page
    assert 'class="resume-with-input"' in page
    assert 'data-step="notify"' in page  # its skip form
    assert "intervene/cancel/" not in page  # past the pivot: no cancel
    assert "#1 ship (pivot)" in page  # the timeline's row


def test_resume_with_corrected_input_from_the_form(admin_client, sent):
    saga = paused_after_pivot()
    url = reverse("admin:sagas_sagainstance_intervene", args=[saga.pk, "resume"])

    bad = admin_client.post(url, {"input": "{not json"}, follow=True)
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.PAUSED
    assert "not JSON" in bad.content.decode()

    admin_client.post(url, {"input": '{"fail": {}}'})

    resumed = SagaInstance.objects.get(pk=saga.pk)
    assert resumed.status == SagaStatus.RUNNING and resumed.input == {"fail": {}}
    assert resumed.steps.get(name="notify").status == StepStatus.RUNNING


def test_skip_a_step_from_its_form(admin_client, sent):
    saga = paused_after_pivot()
    url = reverse("admin:sagas_sagainstance_skip", args=[saga.pk, "notify"])

    refused = admin_client.post(url, {"result": '{"value": 5}', "reason": ""}, follow=True)
    assert "a reason is required" in refused.content.decode()
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.PAUSED

    admin_client.post(url, {"result": '{"value": 5}', "reason": "sent by hand"})

    saga.refresh_from_db()
    assert saga.status == SagaStatus.RUNNING
    step = saga.steps.get(name="notify")
    assert step.status == StepStatus.SKIPPED and step.result == {"value": 5}
    assert SagaEvent.objects.get(saga=saga, kind=EventKind.STEP_SKIPPED).detail["by"] == "admin"


def test_pause_needs_the_pause_permission(client, db, sent):
    saga = start_saga("tests.three_steps", input={})
    viewer = saga_user("watcher", ["view_sagainstance"], is_staff=True)
    pauser = saga_user("pauser", ["view_sagainstance", "pause_saga"], is_staff=True)
    url = reverse("admin:sagas_sagainstance_intervene", args=[saga.pk, "pause"])

    client.force_login(viewer)
    assert "intervene/pause/" not in client.get(change_url(saga)).content.decode()
    client.post(url)
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.PENDING

    client.force_login(pauser)
    assert "intervene/pause/" in client.get(change_url(saga)).content.decode()
    client.post(url)
    paused = SagaInstance.objects.get(pk=saga.pk)
    assert paused.status == SagaStatus.PAUSED
    assert paused.events.get(kind=EventKind.SAGA_PAUSED).detail["by"] == "pauser"


def test_the_paused_filter(admin_client, sent):
    paused = paused_after_pivot()
    start_saga("tests.three_steps", input={})
    changelist = reverse("admin:sagas_sagainstance_changelist")

    page = admin_client.get(changelist, {"paused": "after_pivot"}).content.decode()
    other = admin_client.get(changelist, {"paused": "person"}).content.decode()

    assert paused.pk.hex[:8] in page and paused.pk.hex[:8] not in other
