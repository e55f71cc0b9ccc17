"""The admin pages render, stay read-only, and intervene only through the engine."""
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.urls import reverse

from sagas import cancel, start_saga
from sagas.models import EventKind, SagaInstance, SagaStatus, StepStatus

SAGA = "tests.three_steps"
CHANGELIST = reverse("admin:sagas_sagainstance_changelist")


@pytest.fixture
def finished(db, sent):
    """A saga cancelled before it ran: compensated, with a full trail of events."""
    return cancel(start_saga(SAGA, input={"x": 1}))


def change_url(saga):
    return reverse("admin:sagas_sagainstance_change", args=[saga.pk])


def texts(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def run_action(client, action, *sagas):
    return client.post(CHANGELIST, {"action": action, "_selected_action": [str(s.pk) for s in sagas]}, follow=True)


def test_changelist_lists_sagas(admin_client, finished):
    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    assert str(finished.pk) in response.content.decode()
    assert "Cancel selected sagas" in response.content.decode()


@pytest.mark.parametrize("query", [
    {"status__exact": SagaStatus.COMPENSATED}, {"saga_type": SAGA}, {"created_at__gte": "2000-01-01T00:00:00+00:00"},
])
def test_changelist_filters_answer(admin_client, finished, query):
    response = admin_client.get(CHANGELIST, query)

    assert response.status_code == 200
    assert str(finished.pk) in response.content.decode()


def test_search_by_id_finds_the_saga(admin_client, finished, sent):
    other = start_saga(SAGA, input={"x": 2})

    response = admin_client.get(CHANGELIST, {"q": str(finished.pk)})

    assert str(finished.pk) in response.content.decode()
    assert str(other.pk) not in response.content.decode()


def test_search_by_idempotency_key_finds_the_saga(admin_client, sent):
    keyed = start_saga(SAGA, input={}, idempotency_key="order-42")

    response = admin_client.get(CHANGELIST, {"q": "order-42"})

    assert str(keyed.pk) in response.content.decode()


def test_change_page_shows_steps_timeline_and_buttons(admin_client, finished):
    response = admin_client.get(change_url(finished))

    assert response.status_code == 200
    page = response.content.decode()
    assert "saga-timeline" in page
    kinds = (EventKind.SAGA_CREATED, EventKind.CANCEL_REQUESTED, EventKind.STEP_SKIPPED, EventKind.SAGA_COMPENSATED)
    for kind in kinds:
        assert kind.value in page
    assert page.index(EventKind.SAGA_CREATED.value) < page.index(EventKind.SAGA_COMPENSATED.value)
    assert "Resubmit" in page
    assert "Retry compensation" not in page  # compensated, not failed: nothing to retry
    assert 'name="_save"' not in page  # read-only: nothing to save


def test_step_without_compensation_says_so_calmly(admin_client, sent):
    saga = start_saga("tests.ledger", input={})

    page = admin_client.get(change_url(saga)).content.decode()

    assert page.count("none (left as is if the saga is undone)") == 1  # "notify" has none, "credit" has one
    assert "not undoable" not in page  # no alarm for a healthy step that has nothing to undo


def test_the_pivot_and_the_steps_after_it_are_marked(admin_client, sent):
    saga = start_saga("tests.pivoted", input={})

    page = admin_client.get(change_url(saga)).content.decode()

    assert page.count("pivot (point of no return)") == 1
    assert page.count("after the pivot (goes forward only)") == 2  # notify, close


def test_members_of_a_parallel_show_their_group(admin_client, sent):
    saga = start_saga("tests.parallel", input={})

    page = admin_client.get(change_url(saga)).content.decode()

    assert page.count("in parallel: fanout") == 3  # b1, b2, b3; a and c run alone
    step = saga.steps.get(name="b2")
    assert "fanout" in admin_client.get(reverse("admin:sagas_steprecord_change", args=[step.pk])).content.decode()


def test_nobody_adds_a_saga_in_the_admin(admin_client, db):
    assert admin_client.get(reverse("admin:sagas_sagainstance_add")).status_code == 403


def test_step_and_event_lists_render_read_only(admin_client, finished):
    for name in ("steprecord", "sagaevent"):
        response = admin_client.get(reverse(f"admin:sagas_{name}_changelist"))
        assert response.status_code == 200
        assert reverse(f"admin:sagas_{name}_add") not in response.content.decode()
    step = finished.steps.first()
    assert admin_client.get(reverse("admin:sagas_steprecord_change", args=[step.pk])).status_code == 200
    event = finished.events.first()
    assert admin_client.get(reverse("admin:sagas_sagaevent_change", args=[event.pk])).status_code == 200


def test_cancel_action_on_a_pending_saga_compensates_it(admin_client, sent):
    saga = start_saga(SAGA, input={})

    response = run_action(admin_client, "cancel_sagas", saga)

    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED  # nothing had run: nothing to undo
    assert list(saga.steps.values_list("status", flat=True)) == [StepStatus.SKIPPED] * 3
    [requested] = saga.events.filter(kind=EventKind.CANCEL_REQUESTED)
    assert requested.detail["reason"] == "cancelled in the admin by admin"
    assert any(str(saga.pk) in m and "cancel requested" in m for m in texts(response))


def test_cancel_action_on_a_finished_saga_reports_the_refusal_and_changes_nothing(admin_client, finished):
    events_before = finished.events.count()

    response = run_action(admin_client, "cancel_sagas", finished)

    saga = SagaInstance.objects.get(pk=finished.pk)
    assert saga.status == SagaStatus.COMPENSATED
    assert saga.events.count() == events_before
    [message] = texts(response)
    assert "only a pending, running or paused saga can be cancelled" in message


def test_action_reports_each_saga_on_its_own(admin_client, finished, sent):
    pending = start_saga(SAGA, input={"x": 2})

    response = run_action(admin_client, "cancel_sagas", finished, pending)

    messages = texts(response)
    assert len(messages) == 2
    assert any(str(finished.pk) in m and "only a pending, running or paused saga can be cancelled" in m for m in messages)
    assert any(str(pending.pk) in m and "cancel requested" in m for m in messages)
    assert SagaInstance.objects.get(pk=pending.pk).status == SagaStatus.COMPENSATED


def test_resubmit_action_starts_a_linked_instance(admin_client, finished):
    response = run_action(admin_client, "resubmit_sagas", finished)

    new = SagaInstance.objects.get(resubmitted_from=finished)
    assert new.status == SagaStatus.PENDING and new.input == finished.input
    assert any(str(new.pk) in m for m in texts(response))


def test_retry_compensation_action_on_a_saga_that_is_not_failed_reports_the_refusal(admin_client, finished):
    response = run_action(admin_client, "retry_compensation_sagas", finished)

    assert "only a failed saga can retry compensation" in texts(response)[0]
    assert SagaInstance.objects.get(pk=finished.pk).status == SagaStatus.COMPENSATED


def test_button_on_the_change_page_calls_the_engine(admin_client, sent):
    saga = start_saga(SAGA, input={})
    url = reverse("admin:sagas_sagainstance_intervene", args=[saga.pk, "cancel"])

    assert admin_client.get(url).status_code == 405
    response = admin_client.post(url, follow=True)

    assert response.redirect_chain[-1][0] == change_url(saga)
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATED


def test_staff_with_only_the_view_permission_sees_no_actions(client, finished):
    viewer = get_user_model().objects.create_user("viewer", password="secret-pass", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_sagainstance"))
    client.force_login(viewer)

    page = client.get(CHANGELIST).content.decode()
    assert "Cancel selected sagas" not in page
    response = client.post(reverse("admin:sagas_sagainstance_intervene", args=[finished.pk, "resubmit"]), follow=True)
    assert texts(response) == [f"Saga {finished.pk}: you may not resubmit it."]
    assert not SagaInstance.objects.filter(resubmitted_from=finished).exists()


def test_nobody_deletes_a_saga_in_the_admin(admin_client, finished):
    response = admin_client.post(reverse("admin:sagas_sagainstance_delete", args=[finished.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert SagaInstance.objects.filter(pk=finished.pk).exists()


def test_a_saga_the_sweeper_held_is_listed_and_released_by_the_admin_action(admin_client, sent):
    from sagas.engine import sweep
    from tests.helpers import make_due

    saga = start_saga(SAGA, input={})
    SagaInstance.objects.filter(pk=saga.pk).update(version=99)
    make_due(saga)
    sweep()  # cannot find version 99: held for a person
    held = admin_client.get("/admin/sagas/sagainstance/?held=yes")
    assert str(saga.pk) in held.content.decode()
    SagaInstance.objects.filter(pk=saga.pk).update(version=1)  # the cause is fixed

    response = run_action(admin_client, "release_sagas", saga)

    assert any("released to the sweeper" in m for m in texts(response))
    saga.refresh_from_db()
    assert saga.due_at is not None
    assert sweep().resumed_forward == 1
