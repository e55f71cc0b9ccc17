"""Real Celery workers (prefork, each in its own process) on the test database.

A worker gets the test database's URL and a queue of its own, so a test run
never shares messages with a demo or another run. Tests use
``transactional_db``: the worker must see committed rows.
"""
import contextlib
import os
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from config.celery import app
from sagas.workers import database_url, spawn_worker, stop_workers, wait_for_workers, worker_name

__all__ = ["QUEUE", "database_url", "start_worker"]
QUEUE = f"test-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def start_worker(*, queue: str = QUEUE, concurrency: int = 2, extra_env: dict | None = None):
    """Run ``celery worker`` (prefork) in a subprocess until the block exits.

    Several may run at once on one queue: they compete for its messages like
    workers on separate machines would.
    """
    name = worker_name(queue)
    previous_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    log = Path(settings.VAR_DIR) / f"worker-{name.split('@')[0]}.log"
    proc = spawn_worker(queue=queue, name=name, concurrency=concurrency, log=log, loglevel="info",
                        env={"DJANGO_SETTINGS_MODULE": "config.settings_test", **(extra_env or {})})
    try:
        try:
            wait_for_workers({name}, [proc])
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{log.read_text()[-4000:]}") from None
        yield {"process": proc, "queue": queue, "name": name, "log": log}
    finally:
        app.conf.task_default_queue = previous_queue  # later tests send to the session's worker again
        stop_workers([proc], timeout=20)
        if not os.environ.get("KEEP_WORKER_LOGS"):
            log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker):
    with start_worker() as worker:
        yield worker


@pytest.fixture
def worker(celery_worker_process, transactional_db):
    """One prefork worker (concurrency 2) shared by the session, on a clean database."""
    return celery_worker_process
