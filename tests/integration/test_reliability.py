"""Fault paths that need a real worker, a kill or a broker: each reproduces one of the engine's promises breaking."""
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, connections, transaction
from rest_framework.authtoken.models import Token

from sagas import cancel, start_saga
from sagas.engine import sweep
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepStatus
from sagas.tasks import compensate_saga
from sagas.workers import database_url
from tests.helpers import kill_whole_worker, make_due, saga_user, wait_for_saga, wait_until
from tests.integration.conftest import start_worker
from tests.testapp.models import Call, Ledger

pytestmark = pytest.mark.integration

SAGA = "tests.three_steps"
postgres_only = pytest.mark.skipif(
    "sqlite" in settings.DATABASES["default"]["ENGINE"],
    reason="on SQLite every write transaction holds the database's one write lock",
)


def calls(saga, kind="action"):
    return list(Call.objects.filter(saga_id=saga.id, kind=kind).values_list("step", flat=True))


def gate(tmp_path: Path) -> Path:
    return tmp_path / f"gate-{uuid.uuid4().hex[:6]}"


def test_cancel_while_the_last_step_runs_ends_compensated_with_its_reason(worker, tmp_path):
    opened = gate(tmp_path)
    saga = start_saga(SAGA, input={"wait_for_file": {"c": str(opened)}})
    wait_until(lambda: "c" in calls(saga))

    cancel(saga, reason="customer withdrew the order")
    opened.touch()  # the attempt in flight finishes after the cancel was accepted
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.COMPENSATED
    assert saga.error == "customer withdrew the order"
    assert calls(saga, "compensation") == ["c", "b", "a"]  # c finished, then was undone first
    assert not saga.events.filter(kind=EventKind.SAGA_SUCCEEDED).exists()


@pytest.mark.parametrize("bad", ["nul", "nan"])
def test_an_output_the_database_refuses_is_compensated_not_left_in_place(worker, bad):
    saga = wait_for_saga(start_saga(SAGA, input={"bad_output": {"b": bad}}))

    assert saga.status == SagaStatus.COMPENSATED
    b = saga.steps.get(name="b")
    assert b.may_have_effects and "cannot be stored" in b.error
    assert calls(saga) == ["a", "b"]  # not run again
    assert calls(saga, "compensation") == ["b", "a"]


def test_an_error_callback_for_a_healthy_saga_does_not_compensate_it(worker, tmp_path):
    opened = gate(tmp_path)
    saga = start_saga(SAGA, input={"wait_for_file": {"b": str(opened)}})
    wait_until(lambda: "b" in calls(saga))

    # What a chain whose next message the broker refused would deliver.
    assert compensate_saga.apply_async((str(saga.id),)).get(timeout=30) == "already handled"
    opened.touch()
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.SUCCEEDED
    assert saga.events.filter(kind=EventKind.ERROR_CALLBACK_IGNORED).count() == 1
    assert calls(saga, "compensation") == []


API_CLIENT_SCRIPT = """
import json, sys, django
django.setup()
from rest_framework.test import APIClient
client = APIClient()
client.credentials(HTTP_AUTHORIZATION="Token " + sys.argv[1])
response = client.post("/api/sagas/", {"saga_type": sys.argv[2], "input": {}}, format="json")
print(json.dumps({"status": response.status_code, "body": response.json()}))
"""


def test_a_saga_accepted_while_the_broker_is_down_answers_202_and_the_sweeper_sends_it(worker):
    user = saga_user("operator")
    token = Token.objects.create(user=user).key
    # The API in a process of its own whose broker does not answer (nothing listens on port 1).
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings_test", "DATABASE_URL": database_url(),
           "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}
    run = subprocess.run([sys.executable, "-c", API_CLIENT_SCRIPT, token, SAGA], cwd=settings.BASE_DIR, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout.strip().splitlines()[-1])

    assert answer["status"] == 202
    saga = SagaInstance.objects.get(pk=answer["body"]["id"])
    assert saga.status == SagaStatus.PENDING  # accepted; nothing could be sent
    assert "could not send" in run.stderr

    make_due(saga)
    assert sweep().resumed_forward == 1  # this process's broker answers
    assert wait_for_saga(saga).status == SagaStatus.SUCCEEDED


@postgres_only
def test_a_transactional_step_at_work_holds_no_lock_that_cancel_or_a_new_saga_waits_for(worker, tmp_path):
    opened = gate(tmp_path)
    saga = start_saga("tests.ledger", input={"amount": 7, "wait_for_file": {"credit": str(opened)}})
    wait_until(lambda: Path(f"{opened}.started").exists())  # the action is at work, its transaction open
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '3s'")  # a lock held by the action would fail these, not hang them
    try:
        cancelled = cancel(saga, reason="stop")
        other = start_saga(SAGA, input={})
    finally:
        opened.touch()
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = 0")

    assert cancelled.status == SagaStatus.COMPENSATING
    saga = wait_for_saga(saga)
    assert saga.status == SagaStatus.COMPENSATED
    assert sorted(Ledger.objects.filter(saga_id=saga.id).values_list("amount", flat=True)) == [-7, 7]
    assert wait_for_saga(other).status == SagaStatus.SUCCEEDED


@postgres_only
def test_a_success_reported_while_the_soft_time_limit_fires_on_the_saga_lock_is_recorded(worker, tmp_path):
    opened = gate(tmp_path)
    saga = start_saga(SAGA, input={"wait_for_file": {"c": str(opened)}})
    wait_until(lambda: "c" in calls(saga))
    locked = threading.Event()

    def hold_the_saga_lock():
        try:
            with transaction.atomic():
                SagaInstance.objects.select_for_update().get(pk=saga.pk)
                locked.set()
                opened.touch()  # c returns now and waits for this lock past its 1 s limit
                threading.Event().wait(2.5)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_saga_lock)
    holder.start()
    holder.join()
    assert locked.is_set()
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.SUCCEEDED
    c = saga.steps.get(name="c")
    assert c.attempts == 1 and calls(saga) == ["a", "b", "c"]  # recorded, not run again


def test_a_step_held_by_a_killed_worker_moves_again_long_before_its_lease_ends(worker):
    # The session's worker stays out of it: this saga goes to a queue of its own.
    queue = f"kill-{uuid.uuid4().hex[:6]}"
    with start_worker(queue=queue, concurrency=1) as doomed:
        saga = start_saga("tests.slow", input={"sleep_first": {"slow": 600}})
        wait_until(lambda: "slow" in calls(saga), timeout=60)
        lease = saga.steps.get(name="slow").lease_expires_at  # minutes away: the default step timeout
        kill_whole_worker(doomed["process"])
    with start_worker(queue=queue, concurrency=1):
        def finished():
            sweep()  # what beat runs every few seconds
            return SagaInstance.objects.get(pk=saga.pk).status in (SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED)

        wait_until(finished, timeout=90, interval=1.0)

    saga.refresh_from_db()
    assert saga.status == SagaStatus.SUCCEEDED
    slow = saga.steps.get(name="slow")
    assert slow.attempts == 2 and calls(saga) == ["a", "slow", "slow", "c"]
    lost = SagaEvent.objects.get(saga=saga, step=slow, kind=EventKind.STEP_ATTEMPT_LOST)
    assert lost.created_at < lease  # noticed by the worker's silence, not by the lease running out
    assert slow.status == StepStatus.SUCCEEDED


def test_a_step_whose_worker_was_killed_and_whose_retry_is_refused_is_compensated(worker):
    # Attempt 1 of "slow" began its work (it may have charged a card) when its worker died; attempt 2
    # is refused for good. The saga is undone, "slow" included: its first attempt may have had effects.
    queue = f"kill-{uuid.uuid4().hex[:6]}"
    with start_worker(queue=queue, concurrency=1) as doomed:
        saga = start_saga("tests.slow", input={"sleep_first": {"slow": 600}, "fail": {"slow": "permanent"}})
        wait_until(lambda: "slow" in calls(saga), timeout=60)
        kill_whole_worker(doomed["process"])
    with start_worker(queue=queue, concurrency=1):
        def finished():
            sweep()
            return SagaInstance.objects.get(pk=saga.pk).status in (SagaStatus.COMPENSATED, SagaStatus.FAILED)

        wait_until(finished, timeout=90, interval=1.0)

    saga.refresh_from_db()
    slow = saga.steps.get(name="slow")
    assert saga.status == SagaStatus.COMPENSATED
    assert (slow.attempts, slow.status, slow.may_have_effects) == (2, StepStatus.COMPENSATED, True)
    assert calls(saga, "compensation") == ["slow", "a"]


@postgres_only
def test_a_worker_keeps_its_database_connections_from_one_step_to_the_next(worker):
    import time

    def sessions() -> int:
        time.sleep(1.5)  # backends report their statistics within a second
        with connection.cursor() as cursor:
            cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            return cursor.fetchone()[0]

    wait_for_saga(start_saga(SAGA, input={}))  # the pool children are connected
    before = sessions()
    for _ in range(5):
        wait_for_saga(start_saga(SAGA, input={}))  # 15 step tasks
    opened = sessions() - before

    assert opened <= 3, f"{opened} connections opened for 15 steps"


@postgres_only
def test_a_worker_whose_database_connections_were_cut_moves_the_next_saga_on(worker):
    # Workers skip Django's health check before each task: a connection cut
    # since the last task fails its first query, and the task retries.
    wait_for_saga(start_saga(SAGA, input={}))  # the pool children hold connections
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert cursor.fetchone()[0] >= 2

    saga = wait_for_saga(start_saga(SAGA, input={}))

    assert saga.status == SagaStatus.SUCCEEDED
    assert calls(saga) == ["a", "b", "c"]


def test_a_worker_judged_dead_that_wakes_and_reports_success_after_the_undo_has_its_effect_undone_again(worker):
    # A pool child stopped (SIGSTOP: a long pause, a frozen VM) mid-step goes silent and is judged dead;
    # the saga is cancelled and undone meanwhile; then the child wakes, its action applies its effect and
    # reports success. The late success must be undone too.
    from sagas.models import ChaosEffect, StepRecord

    queue = f"pause-{uuid.uuid4().hex[:6]}"
    with start_worker(queue=queue, concurrency=1), start_worker(queue=queue, concurrency=1):
        saga = start_saga("tests.effects_line", input={"sleep": 4})
        holder = wait_until(lambda: StepRecord.objects.filter(saga=saga, index=0).values_list(
            "held_by", flat=True).first(), timeout=60)
        paused = int(holder.split("|")[2])
        os.kill(paused, signal.SIGSTOP)
        try:
            wait_until(lambda: SagaEvent.objects.filter(saga=saga).exists() and _silent(holder), timeout=60,
                       interval=0.5)
            cancel(saga, reason="stop")
            wait_until(lambda: SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATED, timeout=60)
        finally:
            os.kill(paused, signal.SIGCONT)
        wait_until(lambda: SagaEvent.objects.filter(saga=saga, kind=EventKind.LATE_SUCCESS_COMPENSATED).exists(),
                   timeout=60)

    effect = ChaosEffect.objects.get(saga_id=saga.id, step="a")
    assert effect.undone_at is not None
    assert SagaEvent.objects.get(saga=saga, kind=EventKind.REPORT_DROPPED).detail["compensated_again"] is True
    assert SagaInstance.objects.get(pk=saga.pk).status == SagaStatus.COMPENSATED


def _silent(holder: str) -> bool:
    """The holder has not heartbeaten for SAGAS_WORKER_DEAD_AFTER: judged dead."""
    from django.utils import timezone

    from sagas import liveness

    return bool(liveness.dead_holders({holder}, timezone.now()))


# --- the sweeper out of Flower's way ------------------------------------------------------------------


def test_the_sweeper_runs_every_interval_without_filling_flowers_task_list(worker, tmp_path):
    """Flower lists every task it hears a task-* event of: beat's task-sent and the worker's received,
    started, succeeded. The sweep (every few seconds) sends none; a saga's steps still do."""
    from config.celery import app
    from sagas.models import SweeperLease
    from sagas.workers import spawn_beat, stop_workers

    ours = worker["name"]
    heard: list[dict] = []
    with app.connection_for_read() as connection_:
        receiver = app.events.Receiver(connection_, handlers={"*": heard.append})
        listening = threading.Thread(target=receiver.capture, kwargs={"limit": None}, daemon=True)
        listening.start()
        beat = spawn_beat(queue=worker["queue"], schedule=tmp_path / "beat-schedule", log=tmp_path / "beat.log",
                          env={"DJANGO_SETTINGS_MODULE": "config.settings_test", "SAGAS_SWEEP_INTERVAL": "0.5"})
        try:
            holders = set()
            wait_until(lambda: holders.update(SweeperLease.objects.values_list("holder", flat=True)) or
                       len(holders) >= 4, timeout=30)  # a new holder per sweep: four sweeps ran
            saga = start_saga(SAGA, input={})  # the control: its steps are heard
            wait_for_saga(saga)
            wait_until(lambda: any(e.get("name") == "sagas.run_step" and e["hostname"] == ours for e in heard))
        finally:
            stop_workers([beat], timeout=10)
            receiver.should_stop = True
            listening.join(timeout=5)

    mine = [e for e in heard if e["type"].startswith("task-")
            and (e["hostname"] == ours or e.get("queue") == worker["queue"])]  # not other runs' workers
    named = {e["uuid"]: e["name"] for e in mine if e.get("name")}  # task-sent and task-received name the task
    assert "sagas.sweep" not in named.values(), sorted(set(named.values()))
    assert {e["uuid"] for e in mine} <= set(named)  # nothing heard only as started or succeeded
    assert "sagas.run_step" in named.values()
