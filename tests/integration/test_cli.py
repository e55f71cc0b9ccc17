"""``manage.py saga`` against a real prefork worker and broker: start through the command, watch it finish with ``show``."""
import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command

from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import saga_user, wait_for_saga, wait_until

pytestmark = pytest.mark.integration


def saga_cmd(*args: str) -> str:
    out = StringIO()
    call_command("saga", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_a_saga_started_through_the_command_runs_to_its_end_and_show_tells_it(worker):
    started = json.loads(saga_cmd("start", "tests.three_steps", "--input", '{"flaky": {"b": 1}}', "--json"))
    saga = wait_for_saga(SagaInstance.objects.get(pk=started["id"]))

    shown = saga_cmd("show", str(saga.pk))
    listed = saga_cmd("list", "--status", "succeeded")

    # The command prints the saga as it is once started: the worker may have taken its first step by then.
    assert started["status"] in (SagaStatus.PENDING, SagaStatus.RUNNING) and saga.status == SagaStatus.SUCCEEDED
    assert "succeeded" in shown and "Saga succeeded: every step is done." in shown
    assert "Attempt 1 of b failed: ConnectionError: b flaked on attempt 1" in shown
    assert "b succeeded on attempt 2." in shown
    assert "▓" in shown and "█" in shown  # the timeline: b's retried attempt, then the successes
    assert str(saga.pk) in listed


def test_a_waiting_step_signalled_through_the_command_as_a_user_lets_the_saga_finish(worker):
    user = saga_user("approver", ["view_sagainstance", "start_saga"])
    user.user_permissions.add(Permission.objects.get(codename="change_call", content_type__app_label="testapp"))
    user = get_user_model().objects.get(pk=user.pk)
    started = json.loads(saga_cmd("start", "tests.gated", "--user", "approver", "--json"))
    wait_until(lambda: StepRecord.objects.filter(saga_id=started["id"], name="gate",
                                                 status=StepStatus.WAITING).exists())

    saga_cmd("signal", started["id"], "gate", "complete", "--result", '{"approved": true}', "--user", "approver")
    saga = wait_for_saga(SagaInstance.objects.get(pk=started["id"]))
    shown = json.loads(saga_cmd("show", started["id"], "--json", "--events", "100"))

    assert saga.status == SagaStatus.SUCCEEDED and saga.started_by == user
    assert shown["status"] == SagaStatus.SUCCEEDED
    assert "User approver (id {}) completed gate with {{\"approved\": true}}.".format(user.pk) in \
        [event["sentence"] for event in shown["events"]]
    assert SagaEvent.objects.get(saga=saga, kind=EventKind.STEP_SIGNALLED).detail["by"] == "approver"
