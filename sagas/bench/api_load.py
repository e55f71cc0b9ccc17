"""Starting sagas through the REST API under load: gunicorn serves, locust loads it from another process.

gunicorn runs at production settings (``DEBUG=0``, a fresh secret key, plain
HTTP on loopback as the compose file serves it) on this process's database,
with a queue of its own that no worker reads: the sagas it accepts stay
``pending``. Locust's users post ``POST /api/sagas/`` back to back, for a
fixed time at a fixed number of users. Afterwards the sagas, the queue, the
user and its token are removed.
"""
from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token

from ..models import SagaInstance
from ..sagas import BENCH_ENV
from ..workers import delete_queue, free_port, production_env, spawn_web, stop_workers, wait_for_http
from .runs import delete_sagas

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
WARM_UP_PER_WEB_WORKER = 5


@dataclass
class ApiFigures:
    users: int
    web_workers: int
    seconds: float
    requests: int  # counted once every user runs (locust's --reset-stats)
    failures: int  # any answer but 202
    per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    sagas_created: int  # all the run's sagas, warm-up and ramp-up included
    queue_dropped: int  # their first messages, dropped with the queue

    def as_dict(self) -> dict:
        return asdict(self)


def run_api_load(*, saga_type: str, users: int, spawn_rate: float, seconds: float, web_workers: int,
                 log_dir: Path | None = None) -> ApiFigures:
    run_id = uuid.uuid4().hex[:12]
    queue = f"api-bench-{run_id[:8]}"
    user = get_user_model().objects.create_user(f"saga-bench-{run_id}")
    # What a client that starts sagas holds (``sagas.access``): starting them, and reading them.
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="sagas",
                                                         codename__in=("start_saga", "view_sagainstance")))
    token = Token.objects.create(user=user).key
    tmp = Path(log_dir or tempfile.mkdtemp(prefix="saga-bench-api-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = spawn_web(port=port, queue=queue, workers=web_workers, log=tmp / "gunicorn.log",
                       env={**production_env(), **BENCH_ENV, "SAGAS_API_THROTTLE_RATE": "off",
                            "LOG_LEVEL": "WARNING"})
    dropped = 0
    try:
        wait_for_http(f"{base}/api/saga-types/", server, tmp / "gunicorn.log")
        _warm_up(base, token, saga_type, run_id, web_workers * WARM_UP_PER_WEB_WORKER)
        stats = _locust(base, token, saga_type, run_id, users=users, spawn_rate=spawn_rate, seconds=seconds,
                        tmp=tmp)
        created = SagaInstance.objects.filter(saga_type=saga_type, input__run=run_id).count()
    finally:
        stop_workers([server], timeout=20)
        delete_sagas(list(SagaInstance.objects.filter(saga_type=saga_type, input__run=run_id)
                          .values_list("pk", flat=True)))
        dropped = delete_queue(queue)
        user.delete()  # and its token
    return ApiFigures(users=users, web_workers=web_workers, seconds=seconds, sagas_created=created,
                      queue_dropped=dropped, **stats)


def _post(base: str, token: str, saga_type: str, run_id: str, i: int) -> int:
    body = f'{{"saga_type": "{saga_type}", "input": {{"run": "{run_id}", "i": {i}}}}}'.encode()
    request = urllib.request.Request(f"{base}/api/sagas/", data=body, method="POST", headers={
        "Authorization": f"Token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def _warm_up(base: str, token: str, saga_type: str, run_id: str, count: int) -> None:
    """A few requests first, so that each gunicorn worker has imported and connected before the clock runs."""
    for i in range(count):
        status = _post(base, token, saga_type, run_id, -1 - i)
        if status != 202:
            raise RuntimeError(f"POST /api/sagas/ answered {status} during the warm-up")


def _locust(base: str, token: str, saga_type: str, run_id: str, *, users: int, spawn_rate: float,
            seconds: float, tmp: Path) -> dict:
    prefix = tmp / "locust"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", base,
        "--users", str(users), "--spawn-rate", f"{spawn_rate:g}", "--run-time", f"{seconds:g}s",
        "--reset-stats", "--only-summary", "--csv", str(prefix), "--exit-code-on-error", "0",
        "--stop-timeout", "5", "--loglevel", "WARNING",
        "--token", token, "--saga-type", saga_type, "--run-id", run_id,
    ]
    with open(tmp / "locust.log", "w") as out:
        done = subprocess.run(command, cwd=settings.BASE_DIR, stdout=out, stderr=subprocess.STDOUT,
                              timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"locust exited with status {done.returncode}\n{(tmp / 'locust.log').read_text()[-4000:]}")
    with open(f"{prefix}_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")

    def ms(column: str) -> float | None:
        return None if row[column] in ("", "N/A") else float(row[column])

    return {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
            "per_s": round(float(row["Requests/s"]), 1), "p50_ms": ms("50%"), "p95_ms": ms("95%"), "p99_ms": ms("99%")}
