"""Waiting steps in the admin: buttons for those who may signal, a filter, and who signalled what."""
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.urls import reverse

from sagas import start_saga
from sagas.engine import execute_step
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus

CHANGELIST = reverse("admin:sagas_sagainstance_changelist")


@pytest.fixture
def waiting(db, sent):
    saga = start_saga("tests.gated", input={})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)
    return saga


def change_url(saga):
    return reverse("admin:sagas_sagainstance_change", args=[saga.pk])


def signal_url(saga, signal, step="gate"):
    return reverse("admin:sagas_sagainstance_signal", args=[saga.pk, step, signal])


def texts(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def staff(client, *permissions):
    user = get_user_model().objects.create_user("staffer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_sagainstance"))
    for app_label, codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label=app_label))
    client.force_login(user)
    return user


def test_a_waiting_step_shows_complete_and_fail_to_a_user_with_its_permission(client, waiting):
    staff(client, ("testapp", "change_call"))

    page = client.get(change_url(waiting)).content.decode()

    assert "Waiting for your signal" in page
    assert signal_url(waiting, "complete") in page and signal_url(waiting, "fail") in page


def test_no_buttons_without_the_steps_permission_and_a_forged_post_is_refused(client, waiting):
    staff(client)

    assert "Waiting for your signal" not in client.get(change_url(waiting)).content.decode()
    answer = client.post(signal_url(waiting, "complete"), {"result": ""}, follow=True)

    assert any("needs the permission testapp.change_call" in t for t in texts(answer))
    assert StepRecord.objects.get(saga=waiting, name="gate").status == StepStatus.WAITING


def test_complete_from_the_admin_calls_the_engine_and_records_who(admin_client, waiting, sent,
                                                                   django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        answer = admin_client.post(signal_url(waiting, "complete"), {"result": '{"po": "PO-7"}'}, follow=True)

    assert any("gate completed" in t for t in texts(answer))
    gate = StepRecord.objects.get(saga=waiting, name="gate")
    assert gate.status == StepStatus.SUCCEEDED and gate.result["po"] == "PO-7"
    assert sent == [("forward", waiting.id, 2)]
    page = answer.content.decode()
    assert "User admin (id" in page and "completed gate" in page  # who signalled what, on the saga's page


def test_fail_from_the_admin_compensates(admin_client, waiting):
    answer = admin_client.post(signal_url(waiting, "fail"), {"error": "no budget"}, follow=True)

    assert any("gate failed" in t for t in texts(answer))
    assert SagaInstance.objects.get(pk=waiting.pk).status == SagaStatus.COMPENSATING
    assert "failed gate: no budget" in answer.content.decode()


def test_bad_json_is_refused_and_the_step_still_waits(admin_client, waiting):
    answer = admin_client.post(signal_url(waiting, "complete"), {"result": "{not json"}, follow=True)

    assert any("not JSON" in t for t in texts(answer))
    assert StepRecord.objects.get(saga=waiting, name="gate").status == StepStatus.WAITING


def test_a_second_signal_is_refused_with_a_message(admin_client, waiting):
    admin_client.post(signal_url(waiting, "complete"), {"result": ""})

    answer = admin_client.post(signal_url(waiting, "fail"), {"error": "late"}, follow=True)

    assert any("only a waiting step can be signalled" in t for t in texts(answer))
    assert SagaEvent.objects.filter(saga=waiting, kind=EventKind.STEP_SIGNALLED).count() == 1


def test_the_waiting_filter_shows_only_sagas_waiting_for_a_signal(admin_client, waiting):
    other = start_saga("tests.three_steps", input={})

    page = admin_client.get(CHANGELIST, {"waiting": "yes"}).content.decode()

    assert "waiting for a person" in admin_client.get(CHANGELIST).content.decode()
    assert waiting.pk.hex[:8] in page and other.pk.hex[:8] not in page


def test_the_timeline_draws_the_wait(admin_client, waiting):
    page = admin_client.get(change_url(waiting)).content.decode()

    assert 'data-kind="waiting"' in page
