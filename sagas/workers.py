"""Starting and stopping ``celery worker``, ``celery beat`` and gunicorn: for saga_bench, saga_chaos and the tests.

A process started here uses the database this process uses (its URL is
passed on, so a test database is shared too) and the queue it is given.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection
from kombu import Exchange, Queue

from config.celery import app


def database_url() -> str:
    """The URL of the database this process is connected to, for worker processes."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = quote(db["USER"] or "")
    if db["PASSWORD"]:
        auth += f":{quote(db['PASSWORD'])}"
    host = db["HOST"] or "127.0.0.1"
    port = db["PORT"] or 5432
    return f"postgres://{auth}@{host}:{port}/{db['NAME']}"


def production_env() -> dict:
    """Environment for a process at production settings (``DEBUG=0``, a throwaway secret key), on loopback HTTP.

    For benchmarks: with DEBUG on, Django keeps every process's recent
    statements and failure injection reads its rules, which no deployment does.
    """
    return {"DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "127.0.0.1",
            "SECURE_SSL_REDIRECT": "0", "SECURE_HSTS_SECONDS": "0", "SESSION_COOKIE_SECURE": "0",
            "CSRF_COOKIE_SECURE": "0"}


def worker_name(queue: str) -> str:
    return f"{queue}-{uuid.uuid4().hex[:6]}@localhost"


def _spawn_celery(args: list[str], *, queue: str, env: dict | None, log: Path | None) -> subprocess.Popen:
    """``celery -A config <args>`` in a process of its own, on this process's database, sending to ``queue``."""
    full_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings"),
        "DATABASE_URL": database_url(),
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        **(env or {}),
    }
    out = open(log, "a") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", *args],
                                cwd=settings.BASE_DIR, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log:
            out.close()


def spawn_worker(
    *,
    queue: str,
    name: str,
    concurrency: int = 2,
    env: dict | None = None,
    log: Path | None = None,
    loglevel: str = "warning",
) -> subprocess.Popen:
    """Start a prefork worker (so time limits are enforced) consuming ``queue``."""
    return _spawn_celery(
        ["worker", "-P", "prefork", "-c", str(concurrency), "-Q", queue, "-n", name, "-E", "--without-gossip",
         "--without-mingle", "-l", loglevel],
        queue=queue, env=env, log=log,
    )


def wait_for_workers(names: set[str], procs: list[subprocess.Popen], timeout: float = 60.0) -> None:
    """Return once every named worker answers a ping; raise if one exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"worker exited with status {dead[0].returncode}")
        answered = {name for reply in app.control.ping(timeout=0.5) for name in reply}
        if names <= answered:
            return
    raise RuntimeError(f"workers {sorted(names)} did not answer within {timeout:g}s (is the broker running?)")


def stop_workers(procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    """Warm shutdown (SIGTERM: running tasks finish), then kill what is left."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn_beat(
    *,
    queue: str,
    schedule: Path,
    env: dict | None = None,
    log: Path | None = None,
    loglevel: str = "info",
) -> subprocess.Popen:
    """Start ``celery beat`` (the sweeper's clock) sending to ``queue``, its schedule file at ``schedule``."""
    return _spawn_celery(["beat", "-s", str(schedule), "-l", loglevel], queue=queue, env=env, log=log)


def spawn_web(*, port: int, queue: str, workers: int = 2, env: dict | None = None, log: Path | None = None,
              timeout: int = 30) -> subprocess.Popen:
    """Start gunicorn (sync workers) serving the app on 127.0.0.1:``port``, sending to ``queue``."""
    full_env = {**os.environ, "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings"),
                "DATABASE_URL": database_url(), "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
                "CELERY_TASK_DEFAULT_QUEUE": queue, "SAGAS_VAR_DIR": str(settings.VAR_DIR), **(env or {})}
    out = open(log, "a") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", str(workers), "--timeout", str(timeout)],
            cwd=settings.BASE_DIR, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log:
            out.close()


def wait_for_http(url: str, proc: subprocess.Popen, log: Path | None = None, timeout: float = 60.0) -> None:
    """Return once ``url`` answers at all (any status); raise if the server exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-4000:] if log else ""
            raise RuntimeError(f"server exited with status {proc.returncode}\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.2)
    tail = log.read_text()[-4000:] if log else ""
    raise RuntimeError(f"{url} did not answer within {timeout:g}s\n{tail}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def delete_queue(name: str) -> int:
    """Drop the queue Celery made for ``name`` (messages and bindings); how many messages it held.

    Declared here first: the broker client deletes only the bindings this process knows.
    """
    with app.connection_for_write() as conn:
        queue = Queue(name, Exchange(name), routing_key=name)(conn.default_channel)
        queue.declare()
        dropped = queue.purge()
        queue.delete()
    return dropped
