"""Bulk actions without a worker: jobs asked for through the API and the admin; their batches run here.

The engine's messages are recorded (``sent``), and so are the batches a job
would send itself (``batches_sent``).
"""
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from sagas import InvalidTransition, bulk, cancel, engine, start_saga
from sagas.models import BulkAction, BulkActionStatus, EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import SAGA_PERMISSIONS, saga_user

SAGA = "tests.three_steps"
OTHER = "tests.ledger"
BULK_URL = "/api/bulk-actions/"
CHANGELIST = reverse("admin:sagas_sagainstance_changelist")


@pytest.fixture
def batches_sent(monkeypatch):
    """The job ids whose next batch would be sent once the transaction commits."""
    ids = []
    monkeypatch.setattr(bulk, "send_after_commit", lambda bulk_id: ids.append(str(bulk_id)))
    return ids


@pytest.fixture
def user(db):
    return saga_user("operator")  # every sagas.* permission


def client_of(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def api(user, sent, batches_sent):
    return client_of(user)


def pending(n=1, saga_type=SAGA, **kwargs):
    return [start_saga(saga_type, input={"n": i}, **kwargs) for i in range(n)]


def finished():
    """A saga cancelled before it ran: compensated, so every move but resubmit is refused."""
    return cancel(start_saga(SAGA, input={"done": True}))


def failed_saga():
    """A saga whose compensation of ``a`` failed for good: what retry_compensation is for."""
    saga = SagaInstance.objects.create(saga_type=SAGA, status=SagaStatus.FAILED, error="cannot undo a")
    for index, (name, status) in enumerate([("a", StepStatus.COMPENSATION_FAILED), ("b", StepStatus.COMPENSATED),
                                            ("c", StepStatus.FAILED)]):
        StepRecord.objects.create(saga=saga, index=index, name=name, status=status, compensation_attempts=2)
    return saga


def refusal(move, saga, **kwargs) -> str:
    """What the engine says when it refuses ``move`` on ``saga`` (nothing changes): the reason a job lists."""
    with pytest.raises(InvalidTransition) as refused:
        move(saga.pk, **kwargs)
    return str(refused.value)


def ask(user, action="cancel", spec=None, reason=""):
    return bulk.bulk_action_create(action=action, filter=spec if spec is not None else {}, reason=reason, by=user)


def run_to_the_end(job, size=None) -> BulkAction:
    for _ in range(100):
        if bulk.run_batch(job.pk, size=size).done:
            return BulkAction.objects.get(pk=job.pk)
    raise AssertionError("the job did not end in 100 batches")


def cancelled(saga) -> int:
    return SagaEvent.objects.filter(saga_id=saga.pk, kind=EventKind.CANCEL_REQUESTED).count()


def fields(response) -> dict:
    body = response.json()
    assert isinstance(body.pop("detail"), str) and isinstance(body.pop("code"), str)
    return body


# --- the API: asking for a job --------------------------------------------------------------------


def test_a_bulk_action_answers_202_with_the_job_its_location_and_sends_its_first_batch(api, batches_sent):
    sagas = pending(3)

    response = api.post(BULK_URL, {"action": "cancel", "filter": {"status": ["pending"]}, "reason": "stop"},
                        format="json")

    assert response.status_code == 202, response.content
    body = response.json()
    job = BulkAction.objects.get()
    assert body["id"] == str(job.pk)
    assert response["Location"].endswith(f"{BULK_URL}{job.pk}/")
    assert {k: body[k] for k in ("action", "filter", "status", "matched", "succeeded", "refused", "reason")} == {
        "action": "cancel", "filter": {"status": ["pending"]}, "status": "running", "matched": 3,
        "succeeded": 0, "refused": [], "reason": "stop"}
    assert batches_sent == [str(job.pk)]
    assert all(SagaInstance.objects.get(pk=s.pk).status == SagaStatus.PENDING for s in sagas)  # not yet
    assert api.get(response["Location"]).json() == body


def test_the_job_shows_its_progress_once_it_ran(api, user):
    sagas, done = pending(2), finished()
    job_id = api.post(BULK_URL, {"action": "cancel", "filter": {"saga_type": SAGA}}, format="json").json()["id"]

    run_to_the_end(BulkAction.objects.get(pk=job_id))
    body = api.get(f"{BULK_URL}{job_id}/").json()

    assert (body["status"], body["matched"], body["succeeded"]) == ("done", 3, 2)
    assert [r["saga_id"] for r in body["refused"]] == [str(done.pk)]
    assert body["finished_at"] is not None
    assert all(cancelled(s) == 1 for s in sagas)


def test_without_credentials_a_bulk_action_is_refused(db, sent):
    assert APIClient().post(BULK_URL, {"action": "cancel", "filter": {}}, format="json").status_code == 401
    assert not BulkAction.objects.exists()


def test_without_run_bulk_actions_it_answers_403_and_creates_nothing(db, sent, batches_sent):
    user = saga_user("no-bulk", [p for p in SAGA_PERMISSIONS if p != "run_bulk_actions"])
    pending(1)
    client = client_of(user)

    response = client.post(BULK_URL, {"action": "cancel", "filter": {}}, format="json")

    assert response.status_code == 403
    assert "sagas.run_bulk_actions" in response.json()["detail"]
    assert not BulkAction.objects.exists() and batches_sent == []
    job = ask(saga_user("other"))
    assert client.get(f"{BULK_URL}{job.pk}/").status_code == 403


@pytest.mark.parametrize("action, missing", [
    ("cancel", "cancel_saga"), ("pause", "pause_saga"), ("resume", "pause_saga"),
    ("retry_compensation", "retry_compensation"), ("resubmit", "resubmit_saga"),
])
def test_without_the_actions_own_permission_it_answers_403_and_creates_nothing(db, sent, batches_sent, action,
                                                                                missing):
    user = saga_user("half", [p for p in SAGA_PERMISSIONS if p != missing])

    response = client_of(user).post(BULK_URL, {"action": action, "filter": {}}, format="json")

    assert response.status_code == 403
    assert f"sagas.{missing}" in response.json()["detail"]
    assert not BulkAction.objects.exists() and batches_sent == []


@pytest.mark.parametrize("body, where", [
    ({"action": "explode", "filter": {}}, ["action"]),
    ({"filter": {}}, ["action"]),
    ({"action": "cancel"}, ["filter"]),
    ({"action": "cancel", "filter": ["pending"]}, ["filter"]),
    ({"action": "cancel", "filter": {"colour": "red"}}, ["filter", "colour"]),
    ({"action": "cancel", "filter": {"status": ["bogus"]}}, ["filter", "status"]),
    ({"action": "cancel", "filter": {"status": "pending"}}, ["filter", "status"]),
    ({"action": "cancel", "filter": {"status": []}}, ["filter", "status"]),
    ({"action": "cancel", "filter": {"status": [1]}}, ["filter", "status"]),
    ({"action": "cancel", "filter": {"saga_type": ""}}, ["filter", "saga_type"]),
    ({"action": "cancel", "filter": {"saga_type": 7}}, ["filter", "saga_type"]),
    ({"action": "cancel", "filter": {"created_after": "yesterday"}}, ["filter", "created_after"]),
    ({"action": "cancel", "filter": {"created_before": "2026-13-01T00:00:00Z"}}, ["filter", "created_before"]),
    ({"action": "cancel", "filter": {"ids": ["not-a-uuid"]}}, ["filter", "ids"]),
    ({"action": "cancel", "filter": {"ids": []}}, ["filter", "ids"]),
    ({"action": "cancel", "filter": {"ids": [str(uuid.uuid4())] * (bulk.MAX_IDS + 1)}}, ["filter", "ids"]),
    ({"action": "cancel", "filter": {}, "reason": "x" * 1001}, ["reason"]),
    ({"action": "cancel", "filter": {}, "reason": 0}, ["reason"]),
])
def test_a_bad_action_or_filter_answers_400_with_field_errors_and_creates_nothing(api, batches_sent, body, where):
    pending(1)

    response = api.post(BULK_URL, body, format="json")

    assert response.status_code == 400, response.content
    errors = fields(response)
    for key in where:
        assert key in errors, errors
        errors = errors[key]
    assert isinstance(errors, list) and all(isinstance(m, str) for m in errors)
    assert not BulkAction.objects.exists() and batches_sent == []


def test_the_filter_takes_the_date_times_the_saga_list_takes(api):
    response = api.post(BULK_URL, {"action": "cancel", "filter": {
        "created_after": "2020-01-01T00:00:00+01:00", "created_before": "2999-01-01 00:00:00Z"}}, format="json")

    assert response.status_code == 202, response.content


def test_a_user_reads_their_own_jobs_and_one_with_view_bulkaction_reads_every_one(db, sent, batches_sent):
    owner, other, auditor = saga_user("owner"), saga_user("other"), saga_user("auditor", ["view_sagainstance"])
    auditor.user_permissions.add(Permission.objects.get(codename="view_bulkaction"))
    job = ask(owner)
    url = f"{BULK_URL}{job.pk}/"

    assert client_of(owner).get(url).status_code == 200
    assert client_of(other).get(url).status_code == 404  # as unknown as a missing one
    assert client_of(auditor).get(url).status_code == 200


@pytest.mark.parametrize("bulk_id", [uuid.uuid4(), "not-a-uuid"])
def test_an_unknown_or_malformed_job_id_answers_404(api, bulk_id):
    response = api.get(f"{BULK_URL}{bulk_id}/")

    assert response.status_code == 404
    assert response.json()["code"] == "bulk_action_not_found"


def test_bulk_actions_are_throttled_as_the_rest_of_the_api(api, settings):
    settings.SAGAS_API_THROTTLE_RATE = "2/minute"

    answers = [api.post(BULK_URL, {"action": "cancel", "filter": {}}, format="json") for _ in range(3)]

    assert [a.status_code for a in answers] == [202, 202, 429]
    assert answers[2].json()["code"] == "throttled" and "Retry-After" in answers[2]
    assert BulkAction.objects.count() == 2


def test_the_schema_describes_the_bulk_action_endpoints(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    assert set(schema["paths"]["/api/bulk-actions/"]) == {"post"}
    assert set(schema["paths"]["/api/bulk-actions/{bulk_action_id}/"]) == {"get"}
    filter_schema = schema["components"]["schemas"]["BulkActionInput"]["properties"]["filter"]
    assert set(filter_schema["properties"]) == set(bulk.FILTER_KEYS)
    assert filter_schema["additionalProperties"] is False


# --- running a job, a batch at a time ----------------------------------------------------------------


def test_a_bulk_cancel_goes_through_the_engine_for_each_match_and_lists_the_one_it_refuses(user, sent,
                                                                                           batches_sent):
    sagas, done, other = pending(5), finished(), pending(1, OTHER)[0]
    job = ask(user, spec={"saga_type": SAGA})
    assert job.matched == 6

    job = run_to_the_end(job, size=2)

    assert (job.status, job.succeeded, job.matched, job.batches) == (BulkActionStatus.DONE, 5, 6, 3)
    assert job.refused == [{"saga_id": str(done.pk), "reason": refusal(engine.cancel, done)}]
    for saga in sagas:
        saga = SagaInstance.objects.get(pk=saga.pk)
        assert saga.status == SagaStatus.COMPENSATED and saga.error == f"cancelled by bulk action {job.pk}"
        event = SagaEvent.objects.get(saga=saga, kind=EventKind.CANCEL_REQUESTED)
        assert (event.detail["by"], event.detail["by_user_id"]) == (user.username, user.pk)
    assert cancelled(other) == 0 and cancelled(done) == 1  # the cancel that finished it, not the job's
    assert batches_sent == [str(job.pk)] * 3  # the first, then after each full batch


def test_a_batch_reads_the_sagas_of_one_batch_never_every_match(user, sent, batches_sent):
    pending(5)
    job = ask(user)

    with CaptureQueriesContext(connection) as queries:
        bulk.run_batch(job.pk, size=2)

    reads = [q["sql"] for q in queries.captured_queries
             if 'ORDER BY "sagas_sagainstance"."created_at" ASC' in q["sql"]]
    assert len(reads) == 1 and reads[0].endswith("LIMIT 3"), reads  # the batch and one more: is there another?
    assert BulkAction.objects.get(pk=job.pk).succeeded == 2


def test_the_jobs_reason_is_each_sagas_reason(user, sent, batches_sent):
    saga = pending(1)[0]

    run_to_the_end(ask(user, spec={"ids": [str(saga.pk)]}, reason="supplier outage"))

    assert SagaInstance.objects.get(pk=saga.pk).error == "supplier outage"


def test_status_and_ids_narrow_what_it_acts_on(user, sent, batches_sent):
    a, b, c = pending(3)
    done = finished()

    job = run_to_the_end(ask(user, spec={"status": ["pending"], "ids": [str(a.pk), str(c.pk), str(done.pk)]}))

    assert (job.succeeded, job.refused) == (2, [])
    assert (cancelled(a), cancelled(b), cancelled(c)) == (1, 0, 1)


def test_the_creation_window_is_half_open_as_on_the_saga_list(user, sent, batches_sent):
    old, inside, edge = pending(3)
    start = timezone.now() - timedelta(hours=2)
    for saga, at in [(old, start - timedelta(seconds=1)), (inside, start), (edge, start + timedelta(hours=1))]:
        SagaInstance.objects.filter(pk=saga.pk).update(created_at=at)

    job = run_to_the_end(ask(user, spec={"created_after": start.isoformat(),
                                         "created_before": (start + timedelta(hours=1)).isoformat()}))

    assert job.succeeded == 1
    assert (cancelled(old), cancelled(inside), cancelled(edge)) == (0, 1, 0)


def test_sagas_created_after_the_job_was_asked_for_are_left_alone(user, sent, batches_sent):
    before = pending(1)[0]
    job = ask(user, spec={"status": ["pending"]})
    after = pending(1)[0]

    job = run_to_the_end(job)

    assert (job.succeeded, cancelled(before), cancelled(after)) == (1, 1, 0)


def test_it_acts_only_on_sagas_its_user_may_read(db, sent, batches_sent):
    user = saga_user("starter", ["start_saga", "cancel_saga", "run_bulk_actions"])  # no view_sagainstance
    theirs, code = pending(1, by=user)[0], pending(1)[0]

    job = ask(user, spec={})
    assert job.matched == 1
    job = run_to_the_end(job)

    assert (job.succeeded, job.refused) == (1, [])
    assert (cancelled(theirs), cancelled(code)) == (1, 0)


def test_a_saga_its_user_may_no_longer_move_is_refused_with_the_reason(user, sent, batches_sent):
    saga = pending(1)[0]
    job = ask(user)
    user.user_permissions.remove(Permission.objects.get(codename="cancel_saga"))

    job = run_to_the_end(job)

    assert job.succeeded == 0
    assert job.refused == [{"saga_id": str(saga.pk),
                            "reason": "operator may not cancel this saga (it needs sagas.cancel_saga)"}]
    assert cancelled(saga) == 0


def test_a_user_who_lost_run_bulk_actions_stops_the_job_untouched(user, sent, batches_sent):
    saga = pending(1)[0]
    job = ask(user)
    user.user_permissions.remove(Permission.objects.get(codename="run_bulk_actions"))

    job = run_to_the_end(job)

    assert (job.status, job.succeeded, job.refused) == (BulkActionStatus.DONE, 0, [])
    assert job.error == "stopped: operator no longer holds sagas.run_bulk_actions"
    assert job.matched == 1 and cancelled(saga) == 0


def test_retry_compensation_and_resubmit_go_through_the_engine(user, sent, batches_sent,
                                                              django_capture_on_commit_callbacks):
    broken, done = failed_saga(), finished()

    with django_capture_on_commit_callbacks(execute=True):  # what the engine sends once a batch commits
        retried = run_to_the_end(ask(user, "retry_compensation", {"ids": [str(broken.pk), str(done.pk)]}))
    resubmitted = run_to_the_end(ask(user, "resubmit", {"ids": [str(done.pk)]}))
    again = run_to_the_end(ask(user, "resubmit", {"ids": [str(done.pk)]}))

    assert (retried.succeeded, [r["saga_id"] for r in retried.refused]) == (1, [str(done.pk)])
    assert SagaInstance.objects.get(pk=broken.pk).status == SagaStatus.COMPENSATING
    assert ("compensate", broken.pk, [0]) in sent
    new = SagaInstance.objects.get(resubmitted_from=done)
    assert new.started_by_id == user.pk and resubmitted.succeeded == 1
    assert again.succeeded == 0 and again.refused == [{"saga_id": str(done.pk),
                                                       "reason": f"already resubmitted as {new.pk}"}]
    assert not SagaInstance.objects.filter(resubmitted_from=new).exists()  # the new saga was not chased


def test_pause_and_resume_are_the_engines_functions_found_when_the_batch_runs(user, sent, batches_sent,
                                                                              monkeypatch):
    saga = pending(1)[0]
    calls = []
    monkeypatch.setattr(engine, "pause", lambda s, **kw: calls.append(("pause", s, kw)), raising=False)
    monkeypatch.setattr(engine, "resume", lambda s, **kw: calls.append(("resume", s, kw)), raising=False)

    paused = run_to_the_end(ask(user, "pause", {"ids": [str(saga.pk)]}, reason="supplier outage"))
    resumed = run_to_the_end(ask(user, "resume", {"ids": [str(saga.pk)]}))

    assert (paused.succeeded, resumed.succeeded) == (1, 1)
    assert calls == [("pause", saga.pk, {"by": user, "reason": "supplier outage"}),
                     ("resume", saga.pk, {"by": user})]


def test_a_bulk_pause_then_a_bulk_resume_go_through_the_engine(user, sent, batches_sent):
    sagas, done = pending(3), finished()

    paused = run_to_the_end(ask(user, "pause", {"saga_type": SAGA}, reason="supplier outage"))

    assert paused.succeeded == 3 and [r["saga_id"] for r in paused.refused] == [str(done.pk)]
    assert paused.refused[0]["reason"] == refusal(engine.pause, done)
    for saga in sagas:
        assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.PAUSED
        event = SagaEvent.objects.get(saga=saga, kind=EventKind.SAGA_PAUSED)
        assert (event.detail["reason"], event.detail["by"]) == ("supplier outage", user.username)

    resumed = run_to_the_end(ask(user, "resume", {"status": [SagaStatus.PAUSED]}))

    assert (resumed.matched, resumed.succeeded, resumed.refused) == (3, 3, [])
    assert {SagaInstance.objects.get(pk=s.pk).status for s in sagas} == {SagaStatus.PENDING}
    assert all(SagaEvent.objects.filter(saga=s, kind=EventKind.SAGA_RESUMED, detail__by=user.username).exists()
               for s in sagas)


def test_an_action_the_engine_does_not_have_yet_refuses_each_saga(user, sent, batches_sent, monkeypatch):
    saga = pending(1)[0]
    monkeypatch.delattr(engine, "pause", raising=False)

    job = run_to_the_end(ask(user, "pause", {"ids": [str(saga.pk)]}))

    assert job.refused == [{"saga_id": str(saga.pk),
                            "reason": "pause is not available in this version of the orchestrator"}]


def test_a_batch_a_database_error_breaks_leaves_nothing_of_it_and_is_done_again_whole(user, sent, batches_sent,
                                                                                      monkeypatch):
    sagas = pending(4)
    job = ask(user)
    real, seen = engine.cancel, []

    def breaks_on_the_third(saga_id, **kwargs):
        seen.append(saga_id)
        if len(seen) == 3:
            raise OperationalError("connection lost")
        return real(saga_id, **kwargs)

    monkeypatch.setattr(engine, "cancel", breaks_on_the_third)
    with pytest.raises(OperationalError):
        bulk.run_batch(job.pk)

    assert [cancelled(s) for s in sagas] == [0, 0, 0, 0]  # the two before it were rolled back with it
    stored = BulkAction.objects.get(pk=job.pk)
    assert (stored.succeeded, stored.batches, stored.cursor_saga_id) == (0, 0, None)
    monkeypatch.setattr(engine, "cancel", real)
    job = run_to_the_end(job)
    assert job.succeeded == 4 and [cancelled(s) for s in sagas] == [1, 1, 1, 1]


def test_a_saga_that_breaks_the_engine_unexpectedly_is_refused_and_the_others_go_on(user, sent, batches_sent,
                                                                                    monkeypatch):
    first, second = pending(2)
    real = engine.cancel

    def broken_for_the_first(saga_id, **kwargs):
        if saga_id == first.pk:
            raise KeyError("a bug")
        return real(saga_id, **kwargs)

    monkeypatch.setattr(engine, "cancel", broken_for_the_first)
    job = run_to_the_end(ask(user))

    assert job.succeeded == 1 and cancelled(second) == 1
    assert job.refused == [{"saga_id": str(first.pk), "reason": "unexpected error: KeyError: 'a bug'"}]


def test_a_done_or_unknown_job_does_nothing_more(user, sent, batches_sent):
    job = run_to_the_end(ask(user))
    batches = job.batches

    assert bulk.run_batch(job.pk).done
    assert BulkAction.objects.get(pk=job.pk).batches == batches
    assert bulk.run_batch(uuid.uuid4()).missing


def test_the_periodic_check_sends_again_only_running_jobs_whose_progress_is_old(user, sent, batches_sent):
    stalled, fresh, done = ask(user), ask(user), run_to_the_end(ask(user))
    long_ago = timezone.now() - timedelta(minutes=5)
    BulkAction.objects.filter(pk__in=[stalled.pk, done.pk]).update(progress_at=long_ago)
    batches_sent.clear()

    assert bulk.resend_stalled(stale_after=60) == [str(stalled.pk)]
    assert batches_sent == [str(stalled.pk)]
    assert bulk.resend_stalled(stale_after=60) == []  # sent just now: not again until it is old again
    assert fresh.pk not in {uuid.UUID(i) for i in batches_sent}


# --- the admin ---------------------------------------------------------------------------------------


@pytest.fixture
def staff(db):
    return saga_user("staff", is_staff=True)


def test_the_saga_list_offers_the_bulk_actions_to_who_may_use_them(client, staff, sent):
    pending(1)
    client.force_login(staff)
    assert "Bulk cancel in the background" in client.get(CHANGELIST).content.decode()

    viewer = saga_user("viewer", ["view_sagainstance", "cancel_saga"], is_staff=True)
    client.force_login(viewer)
    assert "Bulk cancel" not in client.get(CHANGELIST).content.decode()


def test_select_all_confirms_over_the_lists_filters_then_starts_a_job_and_opens_its_page(client, staff, sent,
                                                                                         batches_sent):
    sagas, done = pending(3), finished()
    client.force_login(staff)
    url = f"{CHANGELIST}?status__exact=pending"
    form = {"action": "bulk_cancel", "select_across": "1", "_selected_action": [str(sagas[0].pk)]}

    confirm = client.post(url, {**form, "index": "0"})

    assert confirm.status_code == 200 and not BulkAction.objects.exists()
    page = confirm.content.decode()
    assert '<strong class="bulk-matching">3</strong>' in page and "&quot;pending&quot;" in page

    started = client.post(url, {**form, "post": "yes", "reason": "supplier outage"})

    job = BulkAction.objects.get()
    assert started.status_code == 302 and started["Location"] == reverse("admin:sagas_bulkaction_change",
                                                                         args=[job.pk])
    assert (job.action, job.filter, job.reason, job.requested_by, job.matched) == (
        "cancel", {"status": ["pending"]}, "supplier outage", staff, 3)
    assert batches_sent == [str(job.pk)]
    running = client.get(started["Location"]).content.decode()
    assert "0 of 3 handled" in running and 'http-equiv="refresh"' in running
    assert cancelled(done) == 1  # the cancel that finished it; the job has not run


def test_the_lists_date_filter_becomes_the_jobs_creation_window(client, staff, sent, batches_sent):
    pending(1)
    client.force_login(staff)
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    query = {"created_at__gte": str(today), "created_at__lt": str(today + timedelta(days=1)), "saga_type": SAGA}
    url = f"{CHANGELIST}?{'&'.join(f'{k}={v}' for k, v in query.items()).replace('+', '%2B')}"

    client.post(url, {"action": "bulk_cancel", "select_across": "1",
                      "_selected_action": [str(SagaInstance.objects.first().pk)], "post": "yes"})

    assert BulkAction.objects.get().filter == {"created_after": str(today),
                                               "created_before": str(today + timedelta(days=1)),
                                               "saga_type": SAGA}


def test_ticked_rows_without_select_all_become_an_ids_filter(client, staff, sent, batches_sent):
    a, b, c = pending(3)
    client.force_login(staff)

    client.post(CHANGELIST, {"action": "bulk_cancel", "select_across": "0",
                             "_selected_action": [str(a.pk), str(c.pk)], "post": "yes"})

    assert sorted(BulkAction.objects.get().filter["ids"]) == sorted([str(a.pk), str(c.pk)])


@pytest.mark.parametrize("query, named", [("q=three", "the search"), ("waiting=yes", "waiting for a person")])
def test_a_list_filter_a_bulk_action_cannot_say_is_refused(client, staff, sent, batches_sent, query, named):
    saga = pending(1)[0]
    client.force_login(staff)

    response = client.post(f"{CHANGELIST}?{query}", {"action": "bulk_cancel", "select_across": "1", "index": "0",
                                                     "_selected_action": [str(saga.pk)]}, follow=True)

    assert any(named in str(m) for m in get_messages(response.wsgi_request))
    assert not BulkAction.objects.exists()


def test_the_jobs_page_lists_what_it_refused_and_is_read_only(client, staff, sent, batches_sent):
    pending(1)
    done = finished()
    job = run_to_the_end(ask(staff, spec={"saga_type": SAGA}))
    client.force_login(staff)

    page = client.get(reverse("admin:sagas_bulkaction_change", args=[job.pk])).content.decode()

    assert "2 of 2 handled: 1 acted on, 1 refused" in page
    assert str(done.pk) in page and refusal(engine.cancel, done) in page
    assert 'http-equiv="refresh"' not in page and 'name="_save"' not in page


def test_the_admin_shows_a_user_their_own_jobs_only(client, staff, sent, batches_sent):
    mine, theirs = ask(staff), ask(saga_user("other"))
    client.force_login(staff)

    listing = client.get(reverse("admin:sagas_bulkaction_changelist")).content.decode()

    assert mine.pk.hex[:8] in listing and theirs.pk.hex[:8] not in listing
    assert client.get(reverse("admin:sagas_bulkaction_change", args=[theirs.pk])).status_code == 302
