"""``manage.py saga``: each subcommand through the engine functions, its refusals, who made each move, masking."""
import json
import uuid
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError

from sagas import PermanentError, Retry, Saga, Step, pause, registry, start_saga
from sagas.access import MASK
from sagas.engine import Decision, execute_compensation, execute_step
from sagas.management.commands.saga import BAD_INPUT, FORBIDDEN, NOT_ALLOWED, NOT_FOUND
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import paused_after_pivot, saga_user

SAGA = "tests.three_steps"
PIVOTED = "tests.pivoted"
GATED = "tests.gated"
SECRET = "tests.cli_secret"


def saga_cmd(*args: str) -> str:
    """What ``manage.py saga ARGS`` prints."""
    out = StringIO()
    call_command("saga", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def refused(*args: str) -> CommandError:
    with pytest.raises(CommandError) as caught:
        saga_cmd(*args)
    return caught.value


def state() -> tuple:
    """Everything a move could change: sagas, their statuses and inputs, steps, events."""
    return (list(SagaInstance.objects.order_by("id").values_list("id", "status", "input", "error")),
            list(StepRecord.objects.order_by("id").values_list("id", "status", "result", "attempts")),
            SagaEvent.objects.count())


def waiting_at_gate():
    saga = start_saga(GATED, input={})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)
    assert StepRecord.objects.get(saga=saga, name="gate").status == StepStatus.WAITING
    return saga


def failed_saga():
    saga = start_saga(SAGA, input={"fail": {"b": "permanent"}, "comp_fail": {"a": 1}})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)  # b refuses: the saga compensates a, whose compensation fails
    assert execute_compensation(saga.id, 0, Retry(max_attempts=1)).decision is Decision.FAILED
    return saga


def approver(username="approver"):
    user = saga_user(username, ["view_sagainstance"])
    user.user_permissions.add(Permission.objects.get(codename="change_call", content_type__app_label="testapp"))
    return get_user_model().objects.get(pk=user.pk)


def _echo(ctx):
    if ctx.input.get("refuse"):
        raise PermanentError(f"salary {ctx.input['salary']} is above the cap")
    return {"salary": ctx.input.get("salary"), "ok": True}


@pytest.fixture
def secret_type():
    registry.register(Saga(SECRET, steps=[Step("a", _echo, compensation=_echo)], sensitive=("salary",)))
    yield SECRET
    registry.unregister(SECRET)


# --- list --------------------------------------------------------------------------------------------


def test_list_shows_sagas_newest_first_with_their_current_step(db, sent):
    older = start_saga(SAGA, input={})
    newer = start_saga(PIVOTED, input={})
    execute_step(newer.id, 0)

    out = saga_cmd("list")

    assert out.index(str(newer.pk)) < out.index(str(older.pk))
    assert "tests.pivoted" in out and "ship (pending)" in out
    assert "2 sagas, newest first" in out


def test_list_filters_as_the_api_does(db, sent):
    running = start_saga(SAGA, input={})
    paused = start_saga(PIVOTED, input={})
    pause(paused)

    by_status = saga_cmd("list", "--status", "paused")
    by_two = saga_cmd("list", "--status", "paused,pending")
    by_type = saga_cmd("list", "--saga-type", SAGA)
    before = saga_cmd("list", "--created-before", "2000-01-01T00:00:00Z")

    assert str(paused.pk) in by_status and str(running.pk) not in by_status
    assert str(paused.pk) in by_two and str(running.pk) in by_two
    assert str(running.pk) in by_type and str(paused.pk) not in by_type
    assert "0 sagas" in before


def test_list_json_has_the_api_shape_and_the_limit_says_more_match(db, sent):
    sagas = [start_saga(SAGA, input={"n": n}) for n in range(3)]

    rows = json.loads(saga_cmd("list", "--json", "--limit", "2"))
    table = saga_cmd("list", "--limit", "2")

    assert [row["id"] for row in rows] == [str(sagas[2].pk), str(sagas[1].pk)]
    assert {"id", "saga_type", "status", "input", "steps", "children"} <= set(rows[0])
    assert "more match" in table


def test_list_of_a_parent_shows_its_children(db, sent):
    parent = start_saga("tests.nested", input={})
    execute_step(parent.id, 0)
    execute_step(parent.id, 1)  # starts its child
    child = SagaInstance.objects.get(parent=parent)

    rows = json.loads(saga_cmd("list", "--parent", str(parent.pk), "--json"))

    assert [row["id"] for row in rows] == [str(child.pk)]


@pytest.mark.parametrize("args, named", [
    (("--status", "bogus"), "--status"),
    (("--created-after", "yesterday"), "--created-after"),
    (("--parent", "not-an-id"), "--parent"),
])
def test_list_refuses_bad_filters_naming_the_option(db, args, named):
    error = refused("list", *args)
    assert error.returncode == BAD_INPUT and named in str(error)


def test_show_of_a_child_names_its_parent_and_the_parent_lists_it(db, sent):
    parent = start_saga("tests.nested", input={})
    execute_step(parent.id, 0)
    execute_step(parent.id, 1)
    child = SagaInstance.objects.get(parent=parent)

    out = saga_cmd("show", str(child.pk))
    above = saga_cmd("show", str(parent.pk))

    assert f"{parent.pk} (its step child)" in out
    assert str(child.pk) in above and "child" in above


def test_list_as_a_user_shows_only_the_sagas_they_may_read(db, sent):
    own_user = saga_user("starter", ["start_saga"])
    theirs = start_saga(SAGA, input={}, by=own_user)
    other = start_saga(SAGA, input={})

    out = saga_cmd("list", "--user", "starter")

    assert str(theirs.pk) in out and str(other.pk) not in out


# --- show ----------------------------------------------------------------------------------------------


def test_show_prints_header_steps_timeline_and_events_in_words(db, sent):
    saga = start_saga(SAGA, input={"fail": {"b": "permanent"}}, idempotency_key="order-42")
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)

    out = saga_cmd("show", str(saga.pk))

    assert str(saga.pk) in out and "tests.three_steps v1" in out and "order-42" in out
    assert "Steps" in out and "b refused" in out
    assert "Timeline" in out and "█" in out and "X" in out  # a's success, b's failure
    assert "Saga created (version 1), idempotency key order-42." in out
    assert "b failed for good after 1 attempt(s) (permanent error)" in out
    assert "\x1b[" not in out  # no colour into a file


def test_show_json_adds_the_recent_events_with_their_sentences(db, sent):
    saga = start_saga(SAGA, input={})
    execute_step(saga.id, 0)

    data = json.loads(saga_cmd("show", str(saga.pk), "--json", "--events", "2"))

    assert data["id"] == str(saga.pk) and [s["name"] for s in data["steps"]] == ["a", "b", "c"]
    assert [e["kind"] for e in data["events"]] == [EventKind.STEP_STARTED, EventKind.STEP_SUCCEEDED]
    assert data["events"][-1]["sentence"] == "a succeeded on attempt 1."


def test_show_says_how_to_signal_a_waiting_step(db, sent):
    saga = waiting_at_gate()
    out = saga_cmd("show", str(saga.pk))
    assert f"manage.py saga signal {saga.pk} gate complete|fail" in out
    assert "gate is waiting for a signal (needs testapp.change_call)" in out


@pytest.mark.parametrize("saga_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_show_of_an_unknown_saga_is_refused(db, saga_id):
    error = refused("show", saga_id)
    assert error.returncode == NOT_FOUND and f"no saga {saga_id}" in str(error)


def test_show_of_a_saga_the_user_may_not_read_is_as_unknown(db, sent):
    saga = start_saga(SAGA, input={})
    saga_user("nobody", [])

    error = refused("show", str(saga.pk), "--user", "nobody")

    assert error.returncode == NOT_FOUND and "may read" in str(error)


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_in_a_terminal_and_none_with_no_color(db, sent):
    saga = start_saga(SAGA, input={})

    def shown(*args):
        out = Terminal()
        call_command("saga", *args, stdout=out)
        return out.getvalue()

    assert "\x1b[" in shown("show", str(saga.pk))
    assert "\x1b[" not in shown("--no-color", "show", str(saga.pk))
    assert "\x1b[" not in shown("show", str(saga.pk), "--no-color")  # after the subcommand too
    assert "\x1b[" in saga_cmd("--force-color", "show", str(saga.pk))  # into a file when forced


# --- masking -------------------------------------------------------------------------------------------


def test_sensitive_fields_are_masked_unless_unmask_or_a_user_who_may_see_them(db, sent, secret_type):
    saga = start_saga(secret_type, input={"salary": 91234, "name": "Ada"})
    execute_step(saga.id, 0)
    saga_user("plain", ["view_sagainstance"])
    saga_user("hr", ["view_sagainstance", "view_sensitive_data"])

    masked = saga_cmd("show", str(saga.pk))
    as_json = json.loads(saga_cmd("show", str(saga.pk), "--json"))
    unmasked = saga_cmd("show", str(saga.pk), "--unmask")
    as_hr = json.loads(saga_cmd("show", str(saga.pk), "--json", "--user", "hr"))
    as_plain = json.loads(saga_cmd("list", "--json", "--user", "plain"))

    assert "91234" not in masked and MASK in masked and "Ada" in masked
    assert as_json["input"]["salary"] == MASK and as_json["steps"][0]["result"]["salary"] == MASK
    assert "91234" in unmasked
    assert as_hr["input"]["salary"] == 91234
    assert as_plain[0]["input"]["salary"] == MASK


def test_a_sensitive_value_inside_an_error_or_a_sentence_is_masked_too(db, sent, secret_type):
    saga = start_saga(secret_type, input={"salary": 91234, "refuse": True})
    execute_step(saga.id, 0)

    masked = saga_cmd("show", str(saga.pk))
    listed = saga_cmd("list")
    unmasked = saga_cmd("show", str(saga.pk), "--unmask")

    assert "91234" not in masked and f"salary {MASK} is above the cap" in masked
    assert "91234" not in listed
    assert "salary 91234 is above the cap" in unmasked


def test_unmask_is_refused_to_a_user_who_may_not_see_sensitive_fields(db, sent, secret_type):
    saga = start_saga(secret_type, input={"salary": 91234})
    saga_user("plain", ["view_sagainstance"])

    error = refused("show", str(saga.pk), "--unmask", "--user", "plain")

    assert error.returncode == FORBIDDEN and "sagas.view_sensitive_data" in str(error)


# --- start ---------------------------------------------------------------------------------------------


def test_start_starts_a_saga_through_the_engine(db, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        out = saga_cmd("start", SAGA, "--input", '{"order": 42}')

    saga = SagaInstance.objects.get()
    assert saga.input == {"order": 42} and saga.started_by is None
    assert f"Started: saga {saga.pk} (tests.three_steps v1) is now pending." in out
    assert sent == [("forward", saga.pk, 0)]
    assert "by" not in SagaEvent.objects.get(saga=saga, kind=EventKind.SAGA_CREATED).detail


def test_start_as_a_user_records_who_and_reads_input_from_a_file(db, sent, tmp_path):
    user = saga_user("starter", ["start_saga", "view_sagainstance"])
    given = tmp_path / "input.json"
    given.write_text('{"order": 7}')

    data = json.loads(saga_cmd("start", SAGA, "--input", f"@{given}", "--user", "starter", "--json"))

    saga = SagaInstance.objects.get(pk=data["id"])
    assert saga.input == {"order": 7} and saga.started_by == user
    assert SagaEvent.objects.get(saga=saga, kind=EventKind.SAGA_CREATED).detail["by"] == "starter"


def test_start_with_a_used_idempotency_key_starts_nothing_new(db, sent):
    saga_cmd("start", SAGA, "--input", "{}", "--idempotency-key", "k-1")
    out = saga_cmd("start", SAGA, "--input", "{}", "--idempotency-key", "k-1")

    assert SagaInstance.objects.count() == 1 and "nothing new started" in out
    conflict = refused("start", SAGA, "--input", '{"other": 1}', "--idempotency-key", "k-1")
    assert conflict.returncode == NOT_ALLOWED and SagaInstance.objects.count() == 1


@pytest.mark.parametrize("args, code, words", [
    (("--input", "{not json"), BAD_INPUT, "--input is not valid JSON"),
    (("--input", '{"x": NaN}'), BAD_INPUT, "--input is not valid JSON"),
    (("--input", "[1, 2]"), BAD_INPUT, "--input: must be a JSON object"),
    (("--input", "@/no/such/file.json"), BAD_INPUT, "cannot read"),
    (("--version", "two"), BAD_INPUT, "--version"),
    (("--version", "9"), NOT_FOUND, "has no version 9"),
    (("--idempotency-key", ""), BAD_INPUT, "--idempotency-key"),
])
def test_start_refuses_bad_input_and_creates_nothing(db, sent, args, code, words):
    error = refused("start", SAGA, *args)
    assert error.returncode == code and words in str(error), str(error)
    assert SagaInstance.objects.count() == 0 and SagaEvent.objects.count() == 0 and sent == []


def test_start_of_an_unknown_type_names_the_registered_ones(db, sent):
    error = refused("start", "no.such.saga")
    assert error.returncode == NOT_FOUND and "tests.three_steps" in str(error)
    assert SagaInstance.objects.count() == 0


def test_start_is_refused_to_a_user_without_the_permission(db, sent):
    saga_user("viewer", ["view_sagainstance"])
    error = refused("start", SAGA, "--user", "viewer")
    assert error.returncode == FORBIDDEN and "sagas.start_saga" in str(error)
    assert SagaInstance.objects.count() == 0


@pytest.mark.parametrize("username, code", [("ghost", NOT_FOUND), ("retired", FORBIDDEN)])
def test_an_unknown_or_inactive_user_is_refused(db, sent, username, code):
    saga_user("retired", is_active=False)
    error = refused("start", SAGA, "--user", username)
    assert error.returncode == code and username in str(error)
    assert SagaInstance.objects.count() == 0


# --- cancel, pause, resume -----------------------------------------------------------------------------


def test_cancel_compensates_and_records_who(db, sent):
    saga = start_saga(SAGA, input={})
    execute_step(saga.id, 0)
    saga_user("canceller", ["view_sagainstance", "cancel_saga"])

    out = saga_cmd("cancel", str(saga.pk), "--reason", "customer asked", "--user", "canceller")

    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATING and saga.error == "customer asked"
    assert "Cancelled" in out and "compensating" in out
    event = SagaEvent.objects.get(saga=saga, kind=EventKind.CANCEL_REQUESTED)
    assert (event.detail["by"], event.detail["reason"]) == ("canceller", "customer asked")


def test_cancel_is_refused_when_the_state_machine_says_no_and_nothing_changes(db, sent):
    saga = paused_after_pivot()
    before = state()

    error = refused("cancel", str(saga.pk))

    assert error.returncode == NOT_ALLOWED and "pivot" in str(error)
    assert state() == before


@pytest.mark.parametrize("move", ["cancel", "pause", "retry-compensation"])
def test_a_move_is_refused_to_a_user_without_its_permission(db, sent, move):
    saga = start_saga(SAGA, input={})
    saga_user("viewer", ["view_sagainstance"])
    before = state()

    error = refused(move, str(saga.pk), "--user", "viewer")

    assert error.returncode == FORBIDDEN and "sagas." in str(error)
    assert state() == before


def test_pause_then_resume_record_who_and_refuse_a_second_time(db, sent):
    saga = start_saga(SAGA, input={})
    user = saga_user("pauser", ["view_sagainstance", "pause_saga"])

    saga_cmd("pause", str(saga.pk), "--reason", "supplier outage", "--user", "pauser")
    again = refused("pause", str(saga.pk))
    resumed = saga_cmd("resume", str(saga.pk), "--user", "pauser")
    twice = refused("resume", str(saga.pk))

    assert again.returncode == NOT_ALLOWED and twice.returncode == NOT_ALLOWED
    assert "is now pending" in resumed
    paused = SagaEvent.objects.get(saga=saga, kind=EventKind.SAGA_PAUSED).detail
    assert (paused["by"], paused["by_user_id"], paused["reason"]) == ("pauser", user.pk, "supplier outage")
    assert SagaEvent.objects.get(saga=saga, kind=EventKind.SAGA_RESUMED, detail__phase="person").detail["by"] == \
        "pauser"


def test_resume_with_corrected_input_and_refusing_bad_input(db, sent):
    saga = paused_after_pivot()
    before = state()

    bad_json = refused("resume", str(saga.pk), "--input", "{oops")
    not_object = refused("resume", str(saga.pk), "--input", '"text"')
    assert bad_json.returncode == BAD_INPUT and not_object.returncode == BAD_INPUT
    assert state() == before

    data = json.loads(saga_cmd("resume", str(saga.pk), "--input", '{"fail": {}}', "--json"))

    assert data["status"] == SagaStatus.RUNNING and data["input"] == {"fail": {}}
    assert SagaEvent.objects.get(saga=saga, kind=EventKind.SAGA_RESUMED, detail__phase="person").detail[
        "changed_input"] == ["fail"]


def test_pause_refuses_a_reason_the_api_would_refuse(db, sent):
    saga = start_saga(SAGA, input={})
    error = refused("pause", str(saga.pk), "--reason", "x" * 2001)
    assert error.returncode == BAD_INPUT and "--reason" in str(error)
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.PENDING


# --- skip ----------------------------------------------------------------------------------------------


def test_skip_a_step_after_the_pivot_records_who_and_the_saga_goes_on(db, sent):
    saga = paused_after_pivot()
    saga_user("pauser", ["view_sagainstance", "pause_saga"])

    out = saga_cmd("skip", str(saga.pk), "notify", "--reason", "sent by post", "--result", '{"value": 9}',
                   "--user", "pauser")

    step = StepRecord.objects.get(saga=saga, name="notify")
    assert step.status == StepStatus.SKIPPED and step.result == {"value": 9}
    assert "Skipped notify" in out and "running" in out
    detail = SagaEvent.objects.get(saga=saga, kind=EventKind.STEP_SKIPPED).detail
    assert (detail["by"], detail["reason"]) == ("pauser", "sent by post")


@pytest.mark.parametrize("args, code", [
    (("nope", "--reason", "by hand"), NOT_FOUND),
    (("ship", "--reason", "by hand"), NOT_ALLOWED),
    (("notify", "--reason", "   "), BAD_INPUT),
    (("notify", "--reason", "by hand", "--result", "[1]"), BAD_INPUT),
])
def test_skip_refusals_change_nothing(db, sent, args, code):
    saga = paused_after_pivot()
    before = state()

    error = refused("skip", str(saga.pk), *args)

    assert error.returncode == code, str(error)
    assert state() == before


def test_skip_needs_a_reason(db, sent):
    saga = paused_after_pivot()
    error = refused("skip", str(saga.pk), "notify")
    assert "--reason" in str(error)


# --- signal --------------------------------------------------------------------------------------------


def test_signal_complete_as_a_user_who_may_records_who_and_goes_on(db, sent):
    saga = waiting_at_gate()
    user = approver()

    out = saga_cmd("signal", str(saga.pk), "gate", "complete", "--result", '{"approved": true}', "--user", "approver")

    gate = StepRecord.objects.get(saga=saga, name="gate")
    assert gate.status == StepStatus.SUCCEEDED and gate.result["approved"] is True
    assert "Completed gate" in out
    detail = SagaEvent.objects.get(saga=saga, kind=EventKind.STEP_SIGNALLED).detail
    assert (detail["by"], detail["by_user_id"], detail["signal"]) == ("approver", user.pk, "complete")


def test_signal_fail_without_a_user_acts_as_code(db, sent):
    saga = waiting_at_gate()

    saga_cmd("signal", str(saga.pk), "gate", "fail", "--error", "over budget")

    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATING
    assert SagaEvent.objects.get(saga=saga, kind=EventKind.STEP_SIGNALLED).detail["by"] == "system"


@pytest.mark.parametrize("args, code", [
    (("gate", "complete", "--user", "viewer"), FORBIDDEN),  # lacks the step's signal_permission
    (("gate", "fail"), BAD_INPUT),  # fail needs --error
    (("gate", "complete", "--error", "no"), BAD_INPUT),
    (("gate", "fail", "--result", "{}"), BAD_INPUT),
    (("gate", "complete", "--result", "{bad"), BAD_INPUT),
    (("a", "complete"), NOT_ALLOWED),  # not waiting
    (("nope", "complete"), NOT_FOUND),
])
def test_signal_refusals_change_nothing(db, sent, args, code):
    saga = waiting_at_gate()
    saga_user("viewer", ["view_sagainstance"])
    before = state()

    error = refused("signal", str(saga.pk), *args)

    assert error.returncode == code, str(error)
    assert state() == before


def test_a_second_signal_is_refused(db, sent):
    saga = waiting_at_gate()
    saga_cmd("signal", str(saga.pk), "gate", "complete")
    error = refused("signal", str(saga.pk), "gate", "complete")
    assert error.returncode == NOT_ALLOWED and "only a waiting step" in str(error)


# --- retry compensation ----------------------------------------------------------------------------------


def test_retry_compensation_of_a_failed_saga_records_who(db, sent):
    saga = failed_saga()
    saga_user("fixer", ["view_sagainstance", "retry_compensation"])

    out = saga_cmd("retry-compensation", str(saga.pk), "--user", "fixer")

    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATING and "Retrying compensation" in out
    assert SagaEvent.objects.filter(saga=saga, kind=EventKind.COMPENSATION_RETRY_REQUESTED,
                                    step__isnull=True).get().detail["by"] == "fixer"


def test_retry_compensation_of_a_saga_that_is_not_failed_is_refused(db, sent):
    saga = start_saga(SAGA, input={})
    before = state()

    error = refused("retry-compensation", str(saga.pk))

    assert error.returncode == NOT_ALLOWED and "only a failed saga" in str(error)
    assert state() == before


def test_a_move_on_an_unknown_saga_is_refused(db):
    error = refused("pause", str(uuid.uuid4()))
    assert error.returncode == NOT_FOUND


def test_show_names_a_compensation_that_failed_and_the_timeline_draws_it(db, sent):
    saga = failed_saga()

    out = saga_cmd("show", str(saga.pk))

    assert "compensation_failed" in out and "undo: RuntimeError: cannot undo a" in out
    assert "Saga failed and needs a person: compensation of step a failed" in out
    assert "(compensations are drawn on their step's row)" in out


@pytest.mark.parametrize("args", [("--width", "10"), ("--width", "wide"), ("--limit", "0"), ("--limit", "5000")])
def test_list_refuses_a_width_or_limit_out_of_range(db, args):
    error = refused("list", *args)
    assert args[0] in str(error)
