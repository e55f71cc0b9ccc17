"""Real Celery workers (prefork, each in its own process) on the test database.

A worker gets the test database's URL and a queue of its own, so a test run
never shares messages with a demo or another run. Tests use
``transactional_db``: the worker must see committed rows.
"""
import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from config.celery import app

ROOT = Path(__file__).resolve().parents[2]
QUEUE = f"test-{uuid.uuid4().hex[:8]}"


def database_url() -> str:
    """The URL of the database this test session uses, for worker processes."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = db["USER"] or ""
    if db["PASSWORD"]:
        auth += f":{db['PASSWORD']}"
    host = db["HOST"] or "127.0.0.1"
    port = db["PORT"] or 5432
    return f"postgres://{auth}@{host}:{port}/{db['NAME']}"


def _wait_until_ready(name: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if app.control.ping(destination=[name], timeout=0.5):
            return
    raise RuntimeError(f"worker {name} did not answer within {timeout}s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def start_worker(*, queue: str = QUEUE, concurrency: int = 2, extra_env: dict | None = None):
    """Run ``celery worker`` (prefork) in a subprocess until the block exits.

    Several may run at once on one queue: they compete for its messages like
    workers on separate machines would.
    """
    name = f"{queue}-{uuid.uuid4().hex[:6]}@localhost"
    app.conf.task_default_queue = queue
    log = Path(settings.VAR_DIR) / f"worker-{name.split('@')[0]}.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": database_url(),
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        **(extra_env or {}),
    }
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "prefork", "-c", str(concurrency),
             "-Q", queue, "-n", name, "-E", "--without-gossip", "--without-mingle", "-l", "info"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_ready(name, proc, log)
        yield {"process": proc, "queue": queue, "name": name, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
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
