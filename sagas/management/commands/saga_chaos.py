"""Sagas under killed workers and a restarted broker: are any lost, is every one consistent?

The command runs its own Redis (no persistence, so a restart loses every
queued message: the worst case) and its own workers, so it never disturbs a
broker or workers that something else uses. It plays the sweeper itself,
with a short stall time, instead of waiting for beat, and the process
supervisor: a worker that exits on its own is started again, as systemd or
``restart: unless-stopped`` would.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from config.celery import app
from sagas.bench import CHAOS_SAGA
from sagas.engine import start_saga, sweep
from sagas.invariants import check_sagas
from sagas.models import FINAL_SAGA_STATUSES, EventKind, SagaEvent, SagaInstance
from sagas.workers import spawn_worker, stop_workers, wait_for_workers, worker_name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class Command(BaseCommand):
    help = "Run sagas while killing workers and restarting the broker; report lost sagas and invariants."

    def add_arguments(self, parser):
        parser.add_argument("--sagas", type=int, default=60)
        parser.add_argument("--failure-share", type=float, default=0.3, help="share of sagas whose last step fails")
        parser.add_argument("--step-seconds", type=float, default=0.3, help="how long each step works")
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--concurrency", type=int, default=2)
        parser.add_argument("--kill-every", type=float, default=2.0, help="seconds between kills")
        parser.add_argument("--broker-restarts", type=int, default=1)
        parser.add_argument("--stall-after", type=float, default=5.0, help="the sweeper's stall time here")
        parser.add_argument("--timeout", type=float, default=300.0)
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs and print where")

    def handle(self, *args, **o):
        if not shutil.which("redis-server"):
            raise CommandError("saga_chaos runs a Redis of its own: redis-server must be on PATH")
        if o["sagas"] < 1 or o["workers"] < 1:
            raise CommandError("--sagas and --workers must be at least 1")
        rng = random.Random(o["seed"])
        self.tmp = Path(tempfile.mkdtemp(prefix="saga-chaos-"))
        self.port = free_port()
        self.broker_url = f"redis://127.0.0.1:{self.port}/0"
        self.queue = f"chaos-{uuid.uuid4().hex[:8]}"
        # This process now publishes to the chaos Redis for good: run the command
        # in a process of its own (the test does).
        app.conf.broker_url = self.broker_url
        app.conf.task_default_queue = self.queue
        self.redis = self._start_redis()
        self.workers: dict[int, subprocess.Popen] = {}
        self.names: dict[int, str] = {}
        kills = {"pool child": 0, "whole worker": 0, "broker restart": 0, "worker crashed, restarted": 0}
        try:
            for n in range(o["workers"]):
                self._start_worker(n, o["concurrency"])
            self._wait_for_workers()
            ids = [
                start_saga(CHAOS_SAGA, input={"i": i, "sleep": o["step_seconds"],
                                              "fail": rng.random() < o["failure_share"]}).id
                for i in range(o["sagas"])
            ]
            self.stdout.write(f"saga_chaos: {len(ids)} sagas, {o['workers']} workers x {o['concurrency']}, "
                              f"broker {self.broker_url}, a kill every {o['kill_every']}s")
            deadline = time.monotonic() + o["timeout"]
            restarts_at = sorted(rng.uniform(0.2, 0.6) * len(ids) for _ in range(o["broker_restarts"]))
            next_kill = time.monotonic() + o["kill_every"]
            chaos_over = False
            last_progress = ""
            while time.monotonic() < deadline:
                done = SagaInstance.objects.filter(id__in=ids, status__in=FINAL_SAGA_STATUSES).count()
                progress = f"  finished {done}/{len(ids)}  kills {kills}"
                if progress != last_progress:
                    self.stdout.write(progress)
                    last_progress = progress
                if done == len(ids):
                    break
                chaos_over = chaos_over or done >= 0.8 * len(ids)
                # Like a process supervisor would: bring back workers that died on their own
                # (kombu can crash a worker whose broker connection drops mid-restore).
                for n, proc in list(self.workers.items()):
                    if proc.poll() is not None:
                        kills["worker crashed, restarted"] += 1
                        self._start_worker(n, o["concurrency"])
                if restarts_at and done >= restarts_at[0]:
                    restarts_at.pop(0)
                    self._restart_redis()
                    kills["broker restart"] += 1
                elif not chaos_over and time.monotonic() >= next_kill:
                    kills[self._kill_something(rng, o["concurrency"])] += 1
                    next_kill = time.monotonic() + o["kill_every"]
                sweep()
                time.sleep(0.5)
        finally:
            stop_workers(list(self.workers.values()), timeout=20)
            self.redis.terminate()
            self.redis.wait(timeout=10)
            if o["keep_logs"]:
                self.stdout.write(f"worker logs kept in {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        self._report(ids)

    # --- the parts it breaks -------------------------------------------------------

    def _start_redis(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return proc
            except OSError:
                time.sleep(0.05)
        raise CommandError("the chaos Redis did not start")

    def _restart_redis(self) -> None:
        self.redis.kill()
        self.redis.wait()
        self.redis = self._start_redis()

    def _start_worker(self, n: int, concurrency: int) -> None:
        env = {
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_VISIBILITY_TIMEOUT": "30",
            "SAGAS_DEFAULT_STEP_TIMEOUT": "10",
            "SAGAS_HARD_TIMEOUT_GRACE": "2",
        }
        self.names[n] = worker_name(f"{self.queue}-{n}")
        self.workers[n] = spawn_worker(queue=self.queue, name=self.names[n], concurrency=concurrency,
                                       env=env, log=self.tmp / f"worker-{n}.log", loglevel="info")

    def _wait_for_workers(self) -> None:
        try:
            wait_for_workers(set(self.names.values()), list(self.workers.values()))
        except RuntimeError as exc:
            raise CommandError(f"the chaos workers did not start: {exc}") from None

    def _kill_something(self, rng: random.Random, concurrency: int) -> str:
        n = rng.choice(sorted(self.workers))
        worker = self.workers[n]
        children = children_of(worker.pid)
        if children and rng.random() < 0.7:
            os.kill(rng.choice(children), signal.SIGKILL)  # the worker re-queues its task
            return "pool child"
        worker.kill()  # its reserved messages come back only via visibility timeout or the sweeper
        worker.wait()
        self._start_worker(n, concurrency)
        return "whole worker"

    # --- the verdict ---------------------------------------------------------------

    def _report(self, ids) -> None:
        sagas = SagaInstance.objects.filter(id__in=ids)
        by_status = {}
        for status in sagas.values_list("status", flat=True):
            by_status[status] = by_status.get(status, 0) + 1
        events = SagaEvent.objects.filter(saga_id__in=ids)
        self.stdout.write(f"final statuses: {dict(sorted(by_status.items()))}")
        self.stdout.write(
            f"recovered: {events.filter(kind=EventKind.STEP_ATTEMPT_LOST).count()} lost attempts taken over, "
            f"{events.filter(kind=EventKind.SAGA_RESUMED).count()} sagas resumed by the sweeper"
        )
        checks = check_sagas(sagas)
        for check in checks:
            verdict = "PASS" if check.passed else "FAIL"
            self.stdout.write(f"  {verdict}  {check.name}{'  ' + check.detail if check.detail else ''}")
        if not all(c.passed for c in checks):
            raise CommandError("chaos run broke an invariant or lost sagas")
        self.stdout.write("saga_chaos: no saga lost, every saga consistent")
