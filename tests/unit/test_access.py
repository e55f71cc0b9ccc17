"""Who may do what (``sagas.access``), in the API and the admin alike; who did it; what is masked."""
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from sagas import Saga, Step, registry, start_saga
from sagas.access import MASK
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus
from tests.helpers import saga_user

SAGA = "tests.three_steps"
SECRET = "tests.secret"  # its own permission, and a sensitive field


def _noop(ctx):
    return {"salary": ctx.input.get("salary"), "ok": True}


@pytest.fixture(autouse=True)
def secret_type():
    registry.register(Saga(SECRET, steps=[Step("a", _noop, compensation=_noop)], permission="testapp.change_call",
                           sensitive=("salary", "email")))
    yield
    registry.unregister(SECRET)


def client_of(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def with_type_permission(user):
    user.user_permissions.add(Permission.objects.get(codename="change_call", content_type__app_label="testapp"))
    return get_user_model().objects.get(pk=user.pk)


@pytest.fixture
def stranger(db):
    """Logged in, and holding no permission at all."""
    return get_user_model().objects.create_user("stranger", password="x")


@pytest.fixture
def viewer(db):
    return saga_user("viewer", ["view_sagainstance"])


# --- reading ----------------------------------------------------------------------------------------------


def test_a_user_without_the_view_permission_sees_no_saga_and_each_is_a_404(db, sent, stranger):
    saga = start_saga(SAGA, input={})
    api = client_of(stranger)

    assert api.get("/api/sagas/").json()["results"] == []
    assert api.get(f"/api/sagas/{saga.pk}/").status_code == 404
    assert api.get(f"/api/sagas/{saga.pk}/events/").status_code == 404
    assert api.post(f"/api/sagas/{saga.pk}/cancel/", {}, format="json").status_code == 404
    assert api.get("/api/analytics/").status_code == 403


def test_the_view_permission_reads_every_saga(db, sent, viewer):
    saga = start_saga(SAGA, input={})
    api = client_of(viewer)

    assert [s["id"] for s in api.get("/api/sagas/").json()["results"]] == [str(saga.pk)]
    assert api.get(f"/api/sagas/{saga.pk}/").status_code == 200


def test_who_started_a_saga_may_always_read_it_and_sees_only_their_own(db, sent, stranger):
    starter = saga_user("starter", ["start_saga"])
    api = client_of(starter)
    mine = api.post("/api/sagas/", {"saga_type": SAGA, "input": {}}, format="json").json()
    start_saga(SAGA, input={"other": True})  # started by code: not theirs

    assert [s["id"] for s in api.get("/api/sagas/").json()["results"]] == [mine["id"]]
    assert api.get(f"/api/sagas/{mine['id']}/").json()["started_by"] == starter.pk
    assert client_of(stranger).get(f"/api/sagas/{mine['id']}/").status_code == 404


def test_a_saga_types_own_permission_is_needed_to_read_its_sagas_and_to_see_the_type(db, sent, viewer):
    hidden = start_saga(SECRET, input={"salary": 1})
    shown = start_saga(SAGA, input={})
    api = client_of(viewer)

    assert [s["id"] for s in api.get("/api/sagas/").json()["results"]] == [str(shown.pk)]
    assert api.get(f"/api/sagas/{hidden.pk}/").status_code == 404
    assert SECRET not in [t["name"] for t in api.get("/api/saga-types/").json()]
    assert SECRET not in [t["saga_type"] for t in api.get("/api/analytics/").json()["saga_types"]]

    allowed = client_of(with_type_permission(saga_user("cleared", ["view_sagainstance"])))
    assert allowed.get(f"/api/sagas/{hidden.pk}/").status_code == 200
    assert SECRET in [t["name"] for t in allowed.get("/api/saga-types/").json()]


# --- moves ------------------------------------------------------------------------------------------------


def test_starting_needs_the_start_permission_and_creates_nothing_without_it(db, sent, viewer):
    response = client_of(viewer).post("/api/sagas/", {"saga_type": SAGA, "input": {}}, format="json")

    assert response.status_code == 403 and "sagas.start_saga" in response.json()["detail"]
    assert not SagaInstance.objects.exists()


def test_starting_a_type_with_its_own_permission_needs_that_too(db, sent):
    starter = saga_user("starter", ["start_saga"])

    refused = client_of(starter).post("/api/sagas/", {"saga_type": SECRET, "input": {}}, format="json")
    accepted = client_of(with_type_permission(starter)).post("/api/sagas/", {"saga_type": SECRET, "input": {}},
                                                            format="json")

    assert refused.status_code == 403 and "testapp.change_call" in refused.json()["detail"]
    assert accepted.status_code == 202


@pytest.mark.parametrize("move, path, status, permission", [
    ("cancel", "cancel/", SagaStatus.PENDING, "cancel_saga"),
    ("resubmit", "resubmit/", SagaStatus.COMPENSATED, "resubmit_saga"),
    ("retry compensation", "retry-compensation/", SagaStatus.FAILED, "retry_compensation"),
])
def test_each_move_needs_its_own_permission_403_without_202_with(db, sent, viewer, move, path, status, permission):
    saga = start_saga(SAGA, input={})
    SagaInstance.objects.filter(pk=saga.pk).update(status=status)
    if status == SagaStatus.FAILED:
        saga.steps.filter(index=0).update(status="compensation_failed")

    refused = client_of(viewer).post(f"/api/sagas/{saga.pk}/{path}", {}, format="json")
    mover = saga_user("mover", ["view_sagainstance", permission])
    allowed = client_of(mover).post(f"/api/sagas/{saga.pk}/{path}", {"by": "someone else"}, format="json")

    assert refused.status_code == 403 and f"sagas.{permission}" in refused.json()["detail"]
    assert allowed.status_code == 202, allowed.content
    kind = {"cancel": EventKind.CANCEL_REQUESTED, "resubmit": EventKind.RESUBMITTED,
            "retry compensation": EventKind.COMPENSATION_RETRY_REQUESTED}[move]
    recorded = SagaEvent.objects.filter(saga=saga, kind=kind).first()
    assert (recorded.detail["by"], recorded.detail["by_user_id"]) == ("mover", mover.pk)  # never the body's text


def test_a_start_records_who_started_it(db, sent):
    starter = saga_user("starter", ["start_saga"])
    saga_id = client_of(starter).post("/api/sagas/", {"saga_type": SAGA, "input": {}}, format="json").json()["id"]

    saga = SagaInstance.objects.get(pk=saga_id)
    created = saga.events.get(kind=EventKind.SAGA_CREATED)
    assert saga.started_by == starter and created.detail["by"] == "starter"
    assert "by" not in start_saga(SAGA, input={}).events.get(kind=EventKind.SAGA_CREATED).detail  # code: no one


# --- sensitive fields ---------------------------------------------------------------------------------------


def test_sensitive_fields_are_masked_for_users_without_the_permission_and_stored_as_given(db, sent):
    saga = start_saga(SECRET, input={"salary": 98000, "email": "ann@example.com", "team": "ops"})
    from sagas.engine import execute_step
    execute_step(saga.id, 0)
    reader = with_type_permission(saga_user("reader", ["view_sagainstance"]))
    cleared = with_type_permission(saga_user("cleared", ["view_sagainstance", "view_sensitive_data"]))

    masked = client_of(reader).get(f"/api/sagas/{saga.pk}/").json()
    plain = client_of(cleared).get(f"/api/sagas/{saga.pk}/").json()

    assert masked["input"] == {"salary": MASK, "email": MASK, "team": "ops"}
    assert masked["steps"][0]["result"] == {"salary": MASK, "ok": True}
    assert client_of(reader).get("/api/sagas/").json()["results"][0]["input"]["salary"] == MASK
    assert plain["input"]["salary"] == 98000
    assert SagaInstance.objects.get(pk=saga.pk).input["salary"] == 98000


# --- Idempotency-Key ----------------------------------------------------------------------------------------


def test_one_users_idempotency_key_never_answers_another_users_saga(db, sent):
    ann, bob = saga_user("ann", ["start_saga"]), saga_user("bob", ["start_saga"])
    body = {"saga_type": SAGA, "input": {"order": 1}}

    first = client_of(ann).post("/api/sagas/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    again = client_of(ann).post("/api/sagas/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    other = client_of(bob).post("/api/sagas/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")

    assert first.json()["id"] == again.json()["id"] and again["Idempotent-Replayed"] == "true"
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_a_key_reused_with_another_body_is_a_409_that_names_no_saga(db, sent):
    ann = client_of(saga_user("ann", ["start_saga"]))
    first = ann.post("/api/sagas/", {"saga_type": SAGA, "input": {"order": 1}}, format="json",
                     HTTP_IDEMPOTENCY_KEY="k")

    conflict = ann.post("/api/sagas/", {"saga_type": SAGA, "input": {"order": 2}}, format="json",
                        HTTP_IDEMPOTENCY_KEY="k")

    assert conflict.status_code == 409 and first.json()["id"] not in conflict.content.decode()


def test_a_users_key_expires_and_then_starts_a_new_saga(db, sent, settings):
    ann = client_of(saga_user("ann", ["start_saga"]))
    body = {"saga_type": SAGA, "input": {}}
    first = ann.post("/api/sagas/", body, format="json", HTTP_IDEMPOTENCY_KEY="k").json()["id"]
    SagaInstance.objects.filter(pk=first).update(created_at=SagaInstance.objects.get(pk=first).created_at
                                                 - timedelta(seconds=settings.SAGAS_IDEMPOTENCY_TTL + 1))

    second = ann.post("/api/sagas/", body, format="json", HTTP_IDEMPOTENCY_KEY="k").json()["id"]

    assert second != first
    assert SagaEvent.objects.filter(saga_id=first, kind=EventKind.IDEMPOTENCY_KEY_EXPIRED).count() == 1


def test_a_key_from_code_keeps_its_saga_for_good(db, sent, settings):
    first = start_saga(SAGA, input={}, idempotency_key="nightly-2026-12-01")
    SagaInstance.objects.filter(pk=first.pk).update(created_at=first.created_at - timedelta(days=30))

    assert start_saga(SAGA, input={}, idempotency_key="nightly-2026-12-01").pk == first.pk


# --- the admin asks the same function --------------------------------------------------------------------


def test_the_admin_shows_each_button_only_to_who_may_press_it_and_refuses_the_others(client, db, sent):
    saga = start_saga(SAGA, input={})
    viewer = saga_user("viewer", ["view_sagainstance"], is_staff=True)
    canceller = saga_user("canceller", ["view_sagainstance", "cancel_saga"], is_staff=True)
    page = reverse("admin:sagas_sagainstance_change", args=[saga.pk])
    cancel_url = reverse("admin:sagas_sagainstance_intervene", args=[saga.pk, "cancel"])

    client.force_login(viewer)
    assert cancel_url not in client.get(page).content.decode()
    client.post(cancel_url)
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.PENDING

    client.force_login(canceller)
    assert cancel_url in client.get(page).content.decode()
    client.post(cancel_url)
    cancelled = SagaInstance.objects.get(pk=saga.pk)
    assert cancelled.status != SagaStatus.PENDING
    assert cancelled.events.get(kind=EventKind.CANCEL_REQUESTED).detail["by"] == "canceller"


def test_the_admin_lists_only_readable_sagas_and_masks_sensitive_fields(client, db, sent):
    hidden = start_saga(SECRET, input={"salary": 123456})
    viewer = saga_user("viewer", ["view_sagainstance"], is_staff=True)
    client.force_login(viewer)

    assert str(hidden.pk) not in client.get(reverse("admin:sagas_sagainstance_changelist")).content.decode()
    assert client.get(reverse("admin:sagas_sagainstance_change", args=[hidden.pk])).status_code in (302, 404)

    client.force_login(with_type_permission(viewer))
    page = client.get(reverse("admin:sagas_sagainstance_change", args=[hidden.pk])).content.decode()
    assert "123456" not in page and f"&quot;{MASK}&quot;" in page  # the input, as pretty-printed JSON
