import time

from django.db import connection

from sagas.models import FINAL_SAGA_STATUSES, SagaInstance

# The database the tests run on: what one database's tests skip or size by.
ON_POSTGRESQL = connection.vendor == "postgresql"


def wait_for_saga(saga, statuses=FINAL_SAGA_STATUSES, timeout: float = 60.0) -> SagaInstance:
    """Poll the database until the saga reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        saga = SagaInstance.objects.get(pk=saga.pk)
        if saga.status in statuses:
            return saga
        if time.monotonic() > deadline:
            steps = list(saga.steps.values_list("name", "status", "attempts"))
            raise AssertionError(f"saga {saga.id} still {saga.status} after {timeout}s; steps {steps}")
        time.sleep(0.1)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def kill_whole_worker(process) -> None:
    """SIGKILL a ``celery worker`` (its ``Popen``): its main process and its pool children, at once."""
    import os
    import signal
    import subprocess

    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    for pid in [process.pid, *map(int, children)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def make_due(saga) -> None:
    """As if the saga's due time had passed: what the sweeper looks for."""
    from django.db.models.functions import Now

    SagaInstance.objects.filter(pk=saga.pk).update(due_at=Now())


def compensations_due(saga) -> list[int]:
    """The compensations the engine's chain visits for ``saga`` now, latest step first.

    A step that fails for good starts the compensation in the transaction
    that records it; unit tests without a broker run that chain by hand.
    """
    from sagas.engine.compensation import compensation_order
    from sagas.models import StepRecord

    return compensation_order(list(StepRecord.objects.filter(saga_id=saga.pk).order_by("index")))


GATE_PERMISSIONS = ("approve_budget", "sign_off_budget", "release_deploy", "record_signed_contract")


def corporate_approver(username: str = "approver", permissions=GATE_PERMISSIONS):
    """A user holding the corporate gates' permissions (``corporate.<codename>``)."""
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(username, password="x")
    user.user_permissions.add(*Permission.objects.filter(codename__in=permissions, content_type__app_label="corporate"))
    return User.objects.get(pk=user.pk)  # a fresh object: no stale permission cache


def answer_gate(record, *, by, reject: dict | None = None) -> None:
    """Answer one waiting corporate gate the way its owner would.

    The contract is answered by the simulated e-signature service calling its
    callback over the API (the token endpoint, no credentials); every other
    gate by ``by`` through ``complete_step`` (or ``fail_step`` with the reason
    in ``reject[step]``).
    """
    from rest_framework.test import APIClient

    from corporate.models import ContractRequest, SignatureEnvelope
    from sagas import complete_step, fail_step

    reason = (reject or {}).get(record.name)
    if record.name == "contract_signature":
        contract = ContractRequest.objects.get(saga_id=record.saga_id)
        url = SignatureEnvelope.objects.get(envelope_id=contract.envelope_id).callback_url
        if reason:
            answer = APIClient().post(url[: -len("complete/")] + "fail/", {"error": reason}, format="json")
        else:
            answer = APIClient().post(url, {"result": {"signed": True}}, format="json")
        assert answer.status_code == 202, answer.content
    elif reason:
        fail_step(record.saga_id, record.name, error=reason, by=by)
    else:
        complete_step(record.saga_id, record.name, result={"approved": True, "comment": "ok"}, by=by)


def pass_gates(saga, *, by, reject: dict | None = None, timeout: float = 60.0,
               statuses=FINAL_SAGA_STATUSES) -> SagaInstance:
    """Wait for ``saga`` to reach ``statuses`` (to finish), answering each of its gates as soon as it waits
    (see ``answer_gate``)."""
    from sagas.models import StepRecord, StepStatus

    deadline = time.monotonic() + timeout
    while True:
        saga = SagaInstance.objects.get(pk=saga.pk)
        if saga.status in statuses:
            return saga
        # A ChildSaga step waits for its child saga, not for a person: its child's end moves it.
        for record in StepRecord.objects.filter(saga_id=saga.pk, status=StepStatus.WAITING).exclude(
                pk__in=SagaInstance.objects.filter(parent_step__isnull=False).values("parent_step")):
            answer_gate(record, by=by, reject=reject)
        if time.monotonic() > deadline:
            steps = list(saga.steps.values_list("name", "status", "attempts"))
            raise AssertionError(f"saga {saga.id} still {saga.status} after {timeout}s; steps {steps}")
        time.sleep(0.1)


def started_in_thread(target, *, settle: float = 1.0):
    """``target`` in a thread of its own (its database connections closed when it ends), started and given
    ``settle`` seconds to finish or to reach a lock and wait there. Returns the thread: still alive if it waits."""
    import threading

    from django.db import connections

    def run():
        try:
            target()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=settle)
    return thread


SAGA_PERMISSIONS = ("view_sagainstance", "start_saga", "cancel_saga", "pause_saga", "resubmit_saga",
                    "retry_compensation", "run_bulk_actions", "view_sensitive_data")


def saga_user(username: str = "operator", permissions=SAGA_PERMISSIONS, *, password: str = "secret-pass", **fields):
    """A user holding these ``sagas.*`` permissions (all of them by default: an operator)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username, password=password, **fields)
    user.user_permissions.add(*Permission.objects.filter(codename__in=permissions, content_type__app_label="sagas"))
    return get_user_model().objects.get(pk=user.pk)  # a fresh object: no stale permission cache


def paused_after_pivot() -> SagaInstance:
    """A ``tests.pivoted`` saga run in this process until it pauses: past its pivot, ``notify`` refused for good."""
    from sagas import start_saga
    from sagas.engine import execute_step
    from sagas.models import SagaStatus

    saga = start_saga("tests.pivoted", input={"fail": {"notify": "permanent"}})
    for index in range(3):
        execute_step(saga.id, index)
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.PAUSED
    return saga
