"""Bulk actions with real workers: thousands of sagas in batches, and jobs whose worker is killed mid-batch."""
import math
import os
import sqlite3
import subprocess
import time
import uuid

import pytest
from django.db import OperationalError, connection, transaction
from django.db.models import Count

from sagas import InvalidTransition, bulk, cancel, registry
from sagas.models import BulkAction, BulkActionStatus, EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import kill_whole_worker, saga_user, wait_until
from tests.integration.conftest import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.alone]  # kills timed to land mid-job: nothing else running

# Sagas in the big job; sized for the suite, and run by hand at 10 000 (``SAGAS_BULK_SAGAS=10000``).
MANY = int(os.environ.get("SAGAS_BULK_SAGAS", "3000"))

SAGA = "tests.three_steps"


def pending_sagas(n: int) -> list[SagaInstance]:
    """``n`` sagas as ``start_saga`` writes them (pending, their steps pending), in a few statements, nothing sent."""
    definition = registry.get(SAGA)
    sagas = SagaInstance.objects.bulk_create(
        [SagaInstance(saga_type=SAGA, version=definition.version, input={"n": i}) for i in range(n)], batch_size=500)
    StepRecord.objects.bulk_create(
        [StepRecord(saga=saga, index=i, name=step.name, has_compensation=step.has_compensation,
                    stage=definition.stage_of(i), parallel_group=definition.group_of(i))
         for saga in sagas for i, step in enumerate(definition.steps)], batch_size=1000)
    return sagas


def succeeded_saga() -> SagaInstance:
    saga = SagaInstance.objects.create(saga_type=SAGA, status=SagaStatus.SUCCEEDED)
    StepRecord.objects.bulk_create([StepRecord(saga=saga, index=i, name=name, status=StepStatus.SUCCEEDED)
                                    for i, name in enumerate("abc")])
    return saga


def wait_for_job(job: BulkAction, timeout: float = 120.0) -> BulkAction:
    wait_until(lambda: BulkAction.objects.get(pk=job.pk).status == BulkActionStatus.DONE, timeout=timeout,
               interval=0.2)
    return BulkAction.objects.get(pk=job.pk)


def cancels_per_saga(sagas) -> dict:
    """Saga id -> number of cancel requests it got."""
    rows = (SagaEvent.objects.filter(saga_id__in=[s.pk for s in sagas], kind=EventKind.CANCEL_REQUESTED)
            .values("saga_id").annotate(n=Count("id")))
    return {row["saga_id"]: row["n"] for row in rows}


def batch_in_flight(job: BulkAction) -> bool:
    """Whether a batch of ``job`` holds its transaction open now (it holds the job's row, or SQLite's write lock)."""
    if connection.vendor == "postgresql":
        try:
            with transaction.atomic():
                BulkAction.objects.select_for_update(nowait=True).filter(pk=job.pk).first()
            return False
        except OperationalError:
            return True
    probe = sqlite3.connect(connection.settings_dict["NAME"], timeout=0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.rollback()
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


def assert_each_cancelled_once(job: BulkAction, sagas) -> None:
    assert (job.status, job.succeeded, job.refused, job.matched) == (BulkActionStatus.DONE, len(sagas), [],
                                                                     len(sagas))
    counts = cancels_per_saga(sagas)
    assert len(counts) == len(sagas) and set(counts.values()) == {1}
    assert SagaInstance.objects.filter(pk__in=[s.pk for s in sagas], status=SagaStatus.COMPENSATED).count() \
        == len(sagas)


def test_a_bulk_cancel_over_thousands_of_sagas_cancels_each_once_and_refuses_the_finished_one(worker):
    sagas, done = pending_sagas(MANY), succeeded_saga()
    user = saga_user("operator")

    job = bulk.bulk_action_create(action="cancel", filter={"saga_type": SAGA, "status": ["pending", "succeeded"]},
                                  reason="supplier outage", by=user)
    assert job.matched == MANY + 1
    job = wait_for_job(job, timeout=max(120.0, MANY / 25))

    assert (job.status, job.succeeded, job.matched) == (BulkActionStatus.DONE, MANY, MANY + 1)
    with pytest.raises(InvalidTransition) as refused:
        cancel(done)  # what the engine says of it (and changes nothing)
    assert job.refused == [{"saga_id": str(done.pk), "reason": str(refused.value)}]
    assert job.batches == math.ceil((MANY + 1) / 200)
    counts = cancels_per_saga(sagas)
    assert len(counts) == MANY and set(counts.values()) == {1}
    assert set(SagaInstance.objects.filter(pk__in=[s.pk for s in sagas]).values_list("status", "error")) == {
        (SagaStatus.COMPENSATED, "supplier outage")}
    assert SagaInstance.objects.get(pk=done.pk).status == SagaStatus.SUCCEEDED


def _kill_mid_batch(job: BulkAction, kill, *, after: int = 2) -> BulkAction:
    """``kill()`` about a third of the way into a batch of ``job``, once ``after`` batches have committed.

    How long a batch takes is read from the time between two commits; the
    kill comes while the batch still holds its transaction open.
    """
    seen, since, length = None, 0.0, None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        batches, now = BulkAction.objects.get(pk=job.pk).batches, time.monotonic()
        if batches != seen:
            length = now - since if seen is not None and seen > 0 else None
            seen, since = batches, now
        elif batches >= after and length and now - since >= length / 3 and batch_in_flight(job):
            kill()
            break
        time.sleep(0.01)
    else:
        raise AssertionError(f"job {job.pk} did not reach a batch after {after} in time")
    wait_until(lambda: not batch_in_flight(job), timeout=30)  # the killed batch's transaction is gone
    return BulkAction.objects.get(pk=job.pk)


def test_a_job_whose_worker_is_killed_mid_batch_goes_on_from_its_cursor_and_acts_on_each_saga_once(worker):
    sagas = pending_sagas(1500)
    user = saga_user("operator")
    queue = f"bulk-kill-{uuid.uuid4().hex[:6]}"  # the session's worker stays out of it
    env = {"SAGAS_BULK_BATCH_SIZE": "100"}

    with start_worker(queue=queue, concurrency=1, extra_env=env) as doomed:
        job = bulk.bulk_action_create(action="cancel", filter={"status": ["pending"]}, by=user)
        stopped = _kill_mid_batch(job, lambda: kill_whole_worker(doomed["process"]))

    assert stopped.status == BulkActionStatus.RUNNING and 200 <= stopped.succeeded < 1500
    # The killed batch left nothing: every cancel recorded is one the job counted.
    assert sum(cancels_per_saga(sagas).values()) == stopped.succeeded == 100 * stopped.batches

    with start_worker(queue=queue, concurrency=1, extra_env=env):
        # Its message went with the worker (Redis gives it back only after the visibility timeout):
        # beat's check sends the job again.
        assert bulk.resend_stalled(stale_after=0) == [str(job.pk)]
        job = wait_for_job(job)

    assert_each_cancelled_once(job, sagas)
    assert job.batches == 15  # the killed batch was not counted: it was done once, again


def test_a_job_whose_pool_process_is_killed_mid_batch_is_delivered_again_and_acts_on_each_saga_once(worker):
    sagas = pending_sagas(1000)
    user = saga_user("operator")
    queue = f"bulk-child-{uuid.uuid4().hex[:6]}"

    def kill_pool_process():
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1, children
        subprocess.run(["kill", "-KILL", children[0]], check=True)

    with start_worker(queue=queue, concurrency=1, extra_env={"SAGAS_BULK_BATCH_SIZE": "100"}) as survivor:
        process = survivor["process"]
        job = bulk.bulk_action_create(action="cancel", filter={"status": ["pending"]}, by=user)
        stopped = _kill_mid_batch(job, kill_pool_process)
        assert stopped.status == BulkActionStatus.RUNNING
        # Acknowledged late and rejected when its process died: the worker takes the message again itself.
        job = wait_for_job(job)

    assert_each_cancelled_once(job, sagas)
    assert job.batches == 10
