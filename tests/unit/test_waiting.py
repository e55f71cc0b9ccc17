"""Waiting steps through the engine's functions, without a worker: messages are recorded, not sent."""
import hashlib
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.db.models.functions import Now

from sagas import (
    InvalidTransition,
    SignalNotAllowed,
    UnknownSignalToken,
    UnknownStep,
    cancel,
    complete_step,
    fail_step,
    start_saga,
)
from sagas.engine import STEP_MOVES, complete_step_by_token, execute_compensation, execute_step, fail_step_by_token, sweep
from sagas.engine.core import Decision
from sagas.errors import InvalidSignal
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import compensations_due
from tests.testapp.models import Seen

GATED, SHORT, PURE, PARALLEL = "tests.gated", "tests.gated_short", "tests.pure_wait", "tests.parallel_gate"


def _step(saga, name) -> StepRecord:
    return StepRecord.objects.get(saga_id=saga.pk, name=name)


def _token(saga, step="gate") -> str:
    return Seen.objects.filter(saga_id=saga.pk, step=step, kind="token").last().data["token"]


@pytest.fixture
def waiting(db, sent, django_capture_on_commit_callbacks):
    """A tests.gated saga whose gate waits (step a done, the gate's action done)."""
    saga = start_saga(GATED, input={})
    execute_step(saga.id, 0)
    outcome = execute_step(saga.id, 1)
    assert outcome.decision is Decision.STOP
    sent.clear()
    return saga


@pytest.fixture
def approver(db):
    user = User.objects.create_user("approver", password="x")
    user.user_permissions.add(Permission.objects.get(codename="change_call", content_type__app_label="testapp"))
    return User.objects.get(pk=user.pk)  # permissions cache fresh


# --- the state machine ------------------------------------------------------------------------


def test_a_running_step_may_wait_and_a_waiting_step_ends_succeeded_or_failed():
    assert StepStatus.WAITING in STEP_MOVES[StepStatus.RUNNING]
    assert STEP_MOVES[StepStatus.WAITING] == {StepStatus.SUCCEEDED, StepStatus.FAILED}
    assert StepStatus.WAITING not in STEP_MOVES[StepStatus.PENDING]


# --- the wait ---------------------------------------------------------------------------------------


def test_the_action_success_makes_the_step_wait_holding_nothing_and_stops_the_chain(waiting, sent):
    gate = _step(waiting, "gate")
    saga = SagaInstance.objects.get(pk=waiting.pk)
    assert saga.status == SagaStatus.RUNNING
    assert gate.status == StepStatus.WAITING
    assert (gate.lease_expires_at, gate.held_by, gate.next_attempt_at) == (None, None, None)
    assert gate.result == {"value": 2, "attempt": 1}  # the action's output is kept
    assert gate.signal_deadline - gate.waiting_since == timedelta(seconds=3600)
    assert saga.due_at == gate.signal_deadline  # the sweeper has nothing to look at before the deadline
    assert _step(waiting, "c").status == StepStatus.PENDING
    assert sent == []
    assert gate.events.last().kind == EventKind.STEP_WAITING


def test_the_token_is_stored_only_as_its_hash_and_never_in_results_or_events(waiting):
    token = _token(waiting)
    gate = _step(waiting, "gate")
    assert len(token) >= 40
    assert gate.signal_token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(gate.result)
    assert not any(token in str(e.detail) for e in SagaEvent.objects.filter(saga_id=waiting.pk))


def test_a_redelivered_message_for_a_waiting_step_changes_nothing(waiting, sent):
    outcome = execute_step(waiting.id, 1)

    assert outcome.decision is Decision.STOP
    assert _step(waiting, "gate").status == StepStatus.WAITING
    assert Seen.objects.filter(saga_id=waiting.pk, kind="token").count() == 1  # not run again
    assert sent == []


def test_an_action_that_returns_skip_wait_succeeds_at_once_and_the_chain_goes_on(db, sent):
    saga = start_saga(GATED, input={"skip_wait": True})
    execute_step(saga.id, 0)

    outcome = execute_step(saga.id, 1)

    assert outcome.decision is Decision.CONTINUE
    gate = _step(saga, "gate")
    assert gate.status == StepStatus.SUCCEEDED and gate.result == {"value": 2, "attempt": 1}
    assert gate.events.get(kind=EventKind.STEP_SUCCEEDED).detail["wait_skipped"] is True


def test_a_pure_wait_has_no_action_and_its_signal_sends_the_next_step(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(PURE, input={})
    assert execute_step(saga.id, 0).decision is Decision.STOP
    assert _step(saga, "wait").status == StepStatus.WAITING
    assert _step(saga, "wait").signal_deadline is None

    with django_capture_on_commit_callbacks(execute=True):
        complete_step(saga, "wait", result={"ok": True})

    assert _step(saga, "wait").result == {"ok": True}
    assert sent == [("forward", saga.id, 1)]


# --- signals ----------------------------------------------------------------------------------------


def test_complete_merges_the_result_records_who_and_sends_the_rest_after_commit(
        waiting, sent, approver, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        complete_step(waiting, "gate", result={"approved_by": "Ann", "value": 7}, by=approver)

    gate = _step(waiting, "gate")
    assert gate.status == StepStatus.SUCCEEDED
    assert gate.result == {"value": 7, "attempt": 1, "approved_by": "Ann"}
    assert (gate.signal_token_hash, gate.signal_deadline) == (None, None)
    signalled = gate.events.get(kind=EventKind.STEP_SIGNALLED)
    assert signalled.detail == {"signal": "complete", "result": {"approved_by": "Ann", "value": 7},
                                "by": "approver", "by_user_id": approver.pk}
    assert sent == [("forward", waiting.id, 2)]
    assert execute_step(waiting.id, 2).decision is Decision.CONTINUE
    assert SagaInstance.objects.get(pk=waiting.pk).status == SagaStatus.SUCCEEDED


def test_a_second_signal_is_refused_and_changes_nothing(waiting, approver):
    complete_step(waiting, "gate", by=approver)
    events = SagaEvent.objects.filter(saga_id=waiting.pk).count()

    with pytest.raises(InvalidTransition):
        complete_step(waiting, "gate", by=approver)
    with pytest.raises(InvalidTransition):
        fail_step(waiting, "gate", error="too late", by=approver)

    assert SagaEvent.objects.filter(saga_id=waiting.pk).count() == events
    assert _step(waiting, "gate").status == StepStatus.SUCCEEDED


def test_fail_compensates_the_waiting_step_first_with_the_actions_output(
        waiting, sent, approver, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        fail_step(waiting, "gate", error="over budget", by=approver)

    saga = SagaInstance.objects.get(pk=waiting.pk)
    gate = _step(waiting, "gate")
    assert saga.status == SagaStatus.COMPENSATING
    assert gate.status == StepStatus.FAILED and gate.error == "over budget"
    assert "over budget" in saga.error
    assert gate.events.get(kind=EventKind.STEP_SIGNALLED).detail["error"] == "over budget"
    assert sent == [("compensate", saga.id, [1, 0])]
    assert _step(waiting, "c").status == StepStatus.SKIPPED

    for index in compensations_due(saga):
        execute_compensation(saga.id, index)

    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATED
    seen = Seen.objects.get(saga_id=saga.pk, kind="compensation")
    assert seen.data == {"value": 2, "attempt": 1}


def test_a_user_without_the_steps_permission_may_not_signal(waiting):
    someone = User.objects.create_user("someone", password="x")

    with pytest.raises(SignalNotAllowed):
        complete_step(waiting, "gate", by=someone)

    assert _step(waiting, "gate").status == StepStatus.WAITING


def test_a_superuser_may_signal_any_step(waiting):
    boss = User.objects.create_superuser("boss", password="x")

    complete_step(waiting, "gate", by=boss)

    assert _step(waiting, "gate").status == StepStatus.SUCCEEDED


def test_unknown_steps_and_sagas_are_refused(waiting):
    import uuid

    with pytest.raises(UnknownStep):
        complete_step(waiting, "nope")
    with pytest.raises(SagaInstance.DoesNotExist):
        complete_step(uuid.uuid4(), "gate")


def test_a_step_that_is_not_waiting_cannot_be_signalled(waiting):
    with pytest.raises(InvalidTransition):
        complete_step(waiting, "c")


@pytest.mark.parametrize("result, message", [([1], "JSON object"), ({"x": float("nan")}, "finite"),
                                              ({"x": "a\x00b"}, "NUL")])
def test_a_result_no_database_stores_is_refused(waiting, result, message):
    with pytest.raises(InvalidSignal, match=message) as caught:
        complete_step(waiting, "gate", result=result)
    assert list(caught.value.errors) == ["result"]
    assert _step(waiting, "gate").status == StepStatus.WAITING


@pytest.mark.parametrize("error", ["", "   ", None])
def test_fail_needs_a_reason(waiting, error):
    with pytest.raises(InvalidSignal) as caught:
        fail_step(waiting, "gate", error=error)
    assert list(caught.value.errors) == ["error"]


# --- the token ----------------------------------------------------------------------------------------


def test_the_token_completes_its_step_once(waiting):
    token = _token(waiting)

    complete_step_by_token(token, result={"signed": True})

    gate = _step(waiting, "gate")
    assert gate.status == StepStatus.SUCCEEDED and gate.result["signed"] is True
    assert gate.events.get(kind=EventKind.STEP_SIGNALLED).detail["by"] == "token"
    with pytest.raises(UnknownSignalToken):
        complete_step_by_token(token)
    with pytest.raises(UnknownSignalToken):
        fail_step_by_token(token, error="again")


def test_the_token_can_fail_its_step(waiting):
    fail_step_by_token(_token(waiting), error="signature declined")

    assert _step(waiting, "gate").status == StepStatus.FAILED
    assert SagaInstance.objects.get(pk=waiting.pk).status == SagaStatus.COMPENSATING


@pytest.mark.parametrize("token", ["", "x" * 43, "x" * 1000, None])
def test_an_unknown_token_is_refused(waiting, token):
    with pytest.raises(UnknownSignalToken):
        complete_step_by_token(token)


def test_a_person_cannot_signal_a_step_whose_action_is_still_running(db, sent):
    from sagas.engine import claim_step

    saga = start_saga(GATED, input={})
    execute_step(saga.id, 0)
    claim_step(saga.id, 1, None)

    # (A token callback then is kept, and applied when the action returns: test_reliability_review.py.)
    with pytest.raises(InvalidTransition):
        complete_step(saga, "gate", result={"approved": True})


def test_a_token_dies_with_its_wait_when_the_saga_is_cancelled(waiting):
    token = _token(waiting)
    cancel(waiting)

    with pytest.raises(UnknownSignalToken):
        complete_step_by_token(token)


# --- cancel while waiting -------------------------------------------------------------------------------


def test_cancel_while_waiting_compensates_the_waiting_step_too(waiting, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        cancel(waiting, reason="no longer needed")

    gate = _step(waiting, "gate")
    assert SagaInstance.objects.get(pk=waiting.pk).status == SagaStatus.COMPENSATING
    assert gate.status == StepStatus.FAILED and gate.may_have_effects
    assert sent == [("compensate", waiting.id, [1, 0])]
    with pytest.raises(InvalidTransition):
        complete_step(waiting, "gate")


# --- deadlines ---------------------------------------------------------------------------------------------


def _expire(saga):
    StepRecord.objects.filter(saga_id=saga.pk, status=StepStatus.WAITING).update(
        signal_deadline=Now() - timedelta(seconds=1))


def test_the_sweeper_times_out_every_wait_past_its_deadline_and_the_sagas_compensate(
        db, sent, django_capture_on_commit_callbacks):
    sagas = []
    for _ in range(3):
        saga = start_saga(GATED, input={})
        execute_step(saga.id, 0)
        execute_step(saga.id, 1)
        sagas.append(saga)
    _expire(sagas[0])
    _expire(sagas[1])

    with django_capture_on_commit_callbacks(execute=True):
        report = sweep()

    assert report.waits_timed_out == 2
    for saga in sagas[:2]:
        gate = _step(saga, "gate")
        assert gate.status == StepStatus.FAILED and "no signal within 3600s" in gate.error
        assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATING
        assert ("compensate", saga.id, [1, 0]) in sent
    assert _step(sagas[2], "gate").status == StepStatus.WAITING  # not due: untouched


def test_a_saga_the_sweeper_cannot_move_does_not_stop_the_deadlines_of_others(db, sent):
    broken, fine = start_saga(GATED, input={}), start_saga(GATED, input={})
    for saga in (broken, fine):
        execute_step(saga.id, 0)
        execute_step(saga.id, 1)
        _expire(saga)
    SagaInstance.objects.filter(pk=broken.pk).update(version=99)  # no such definition any more

    report = sweep()

    assert str(broken.pk) in report.held
    assert SagaInstance.objects.get(pk=fine.pk).status == SagaStatus.COMPENSATING
    assert report.waits_timed_out == 1
    assert sweep().held == []  # a held saga is not found again


def test_the_deadline_query_uses_the_partial_index_of_waiting_steps(db):
    from sagas.engine.waiting import expired_waits

    sql, params = expired_waits(500).query.sql_with_params()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN {sql}", params)
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "step_signal_deadline_idx" in plan


def test_the_sweeper_sends_nothing_for_a_saga_that_only_waits(waiting, sent):
    from tests.helpers import make_due

    make_due(waiting)

    sweep()

    assert sent == []
    saga = SagaInstance.objects.get(pk=waiting.pk)
    assert saga.due_at == _step(waiting, "gate").signal_deadline


# --- a waiting Parallel member -------------------------------------------------------------------------------


def test_a_waiting_parallel_member_holds_the_join_until_its_signal(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(PARALLEL, input={})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)  # the gate waits
    with django_capture_on_commit_callbacks(execute=True):
        execute_step(saga.id, 2)  # its sibling succeeds: the stage is not done
    assert not [m for m in sent if m[0] == "forward"]

    with django_capture_on_commit_callbacks(execute=True):
        complete_step(saga, "gate")

    assert ("forward", saga.id, 3) in sent


# --- what the live page and /metrics read ---------------------------------------------------------------


def test_the_live_page_shows_the_wait_with_its_stored_start_and_deadline(waiting):
    from sagas.live.snapshot import build_snapshot

    rows = build_snapshot()["waiting"]

    gate = _step(waiting, "gate")
    assert [(r["id"], r["step"]) for r in rows] == [(str(waiting.pk), "gate")]
    assert rows[0]["since"] == gate.waiting_since.isoformat()
    assert rows[0]["deadline"] == gate.signal_deadline.isoformat()


def test_metrics_count_the_waiting_steps(waiting):
    from prometheus_client.parser import text_string_to_metric_families

    from sagas.metrics import exposition

    families = {f.name: f for f in text_string_to_metric_families(exposition().decode())}
    samples = {tuple(sorted(s.labels.items())): s.value for s in families["sagas_waiting_steps"].samples}
    assert samples[(("saga_type", GATED), ("step", "gate"))] == 1
