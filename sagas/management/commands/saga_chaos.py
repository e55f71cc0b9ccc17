"""Sagas under killed workers and a restarted broker, at the settings in force.

The command runs what a deployment runs, on a queue of its own: prefork
workers and one ``celery beat`` (the sweeper's clock), with no setting
shortened or overridden, and nothing swept from here. While ``sagas.chaos``
sagas run it injects faults, each timestamped:

- **pool child**: one prefork child SIGKILLed (its worker re-queues the task);
- **whole worker**: a worker's main process and its pool children SIGKILLed
  together, as when a machine dies; a replacement starts, as a supervisor
  would start one;
- **broker restart**: its own Redis killed (-9) and started again, losing
  every message it held. An external broker (``--broker-url``) is never
  restarted: that fault is skipped, and the run says so.

A worker or beat that exits on its own is started again too (counted apart).
Then it reads the rows: sagas lost, effects applied twice or left in place
(see ``sagas.chaos``), the saga invariants, and per fault the recovery time
of every saga in flight at it (from the fault to the saga's next audit
event). It exits 1 if any of those fails or a recovery exceeds
``--max-recovery``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

from config.celery import app
from sagas.chaos import (
    CHAOS_SAGA,
    REFUSING_STEPS,
    Fault,
    check_effects,
    figures_by_kind,
    longest,
    measure_recoveries,
)
from sagas.engine import start_saga
from sagas.invariants import check_sagas
from sagas.models import FINAL_SAGA_STATUSES, EventKind, SagaEvent, SagaInstance
from sagas.sagas import CHAOS_ENV, register_chaos_sagas
from sagas.workers import free_port, spawn_beat, spawn_worker, stop_workers, wait_for_workers, worker_name

POOL_CHILD = "pool child"
WHOLE_WORKER = "whole worker"
BROKER_RESTART = "broker restart"
KINDS = [POOL_CHILD, WHOLE_WORKER, BROKER_RESTART]


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Cluster:
    """The processes a run breaks: a broker (its own Redis, or an external one), workers, one beat.

    Plays the process supervisor too: ``supervise`` starts again whatever
    exited without being killed here.
    """

    def __init__(self, *, tmp: Path, broker_url: str | None, queue: str, workers: int, concurrency: int):
        self.tmp, self.queue, self.concurrency = tmp, queue, concurrency
        self.own_broker = broker_url is None
        self.port = free_port() if self.own_broker else None
        self.broker_url = broker_url or f"redis://127.0.0.1:{self.port}/0"
        self.slots = range(workers)
        self.redis: subprocess.Popen | None = None
        self.workers: dict[int, subprocess.Popen] = {}
        self.names: dict[int, str] = {}
        self.beat: subprocess.Popen | None = None
        self.worker_exits = 0
        self.beat_exits = 0

    # --- starting and stopping ---------------------------------------------------------

    def start(self) -> None:
        if self.own_broker:
            self._start_redis()
        for n in self.slots:
            self._start_worker(n)
        try:
            wait_for_workers(set(self.names.values()), list(self.workers.values()))
        except RuntimeError as exc:
            raise CommandError(f"the chaos workers did not start: {exc} (logs in {self.tmp})") from None
        self._start_beat()

    def stop(self) -> None:
        if self.beat is not None and self.beat.poll() is None:
            self.beat.terminate()
            try:
                self.beat.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.beat.kill()
                self.beat.wait()
        stop_workers(list(self.workers.values()), timeout=20)
        if not self.own_broker:
            self._delete_queue()
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(timeout=10)

    def _start_redis(self) -> None:
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp), "--logfile", str(self.tmp / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise CommandError("the chaos Redis did not start")

    def _start_worker(self, n: int) -> None:
        # Only the wiring: its broker and queue. Every other setting is the one in force.
        self.names[n] = worker_name(f"{self.queue}-{n}")
        self.workers[n] = spawn_worker(queue=self.queue, name=self.names[n], concurrency=self.concurrency,
                                       env={"CELERY_BROKER_URL": self.broker_url, **CHAOS_ENV},
                                       log=self.tmp / f"worker-{n}.log", loglevel="info")

    def _start_beat(self) -> None:
        self.beat = spawn_beat(queue=self.queue, schedule=self.tmp / "celerybeat-schedule",
                               env={"CELERY_BROKER_URL": self.broker_url, **CHAOS_ENV}, log=self.tmp / "beat.log")

    def _delete_queue(self) -> None:
        try:
            with app.connection_for_write() as conn:
                conn.default_channel.queue_delete(self.queue)
        except Exception as exc:  # leaving an empty queue behind is harmless; say so
            print(f"could not delete queue {self.queue} on the external broker: {exc}")

    def supervise(self) -> list[str]:
        """Start again what exited on its own; say what."""
        notes = []
        for n, proc in list(self.workers.items()):
            if proc.poll() is not None:
                self.worker_exits += 1
                notes.append(f"worker {self.names[n]} exited on its own (status {proc.returncode}): started again")
                self._start_worker(n)
        if self.beat is not None and self.beat.poll() is not None:
            self.beat_exits += 1
            notes.append(f"beat exited on its own (status {self.beat.returncode}): started again")
            self._start_beat()
        return notes

    # --- what it breaks ----------------------------------------------------------------

    def busy(self) -> dict[int, list[int]]:
        """Worker slot -> pids of its pool children running a task now (empty when no one answers)."""
        names = {name: n for n, name in self.names.items()}
        try:
            replies = app.control.inspect(destination=list(names), timeout=1.0, limit=len(names)).active() or {}
        except Exception:  # the broker may be down or restarting: no targets then
            return {}
        busy: dict[int, list[int]] = {}
        for name, tasks in replies.items():
            if name in names:
                n = names[name]
                pids = {t.get("worker_pid") for t in tasks} & set(children_of(self.workers[n].pid))
                if pids:
                    busy[n] = sorted(pids)
        return busy

    def kill_pool_child(self, rng: random.Random, busy: dict[int, list[int]]) -> tuple[datetime, str] | None:
        if busy:
            n = rng.choice(sorted(busy))
            pid, running = rng.choice(busy[n]), "running a task"
        else:
            candidates = [(n, c) for n in self.slots for c in children_of(self.workers[n].pid)]
            if not candidates:
                return None
            n, pid = rng.choice(candidates)
            running = "idle"
        at = timezone.now()
        _signal(pid, signal.SIGKILL)
        return at, f"pid {pid} of {self.names[n]} ({running})"

    def kill_whole_worker(self, rng: random.Random, busy: dict[int, list[int]]) -> tuple[datetime, str]:
        n = rng.choice(sorted(busy) or list(self.slots))
        proc, name = self.workers[n], self.names[n]
        # Frozen first, so that it cannot replace or reap its children while they die.
        _signal(proc.pid, signal.SIGSTOP)
        children = children_of(proc.pid)
        at = timezone.now()
        for pid in children:
            _signal(pid, signal.SIGKILL)
        _signal(proc.pid, signal.SIGKILL)
        proc.wait()
        self._start_worker(n)
        return at, (f"{name}: main pid {proc.pid} and children {children} "
                    f"({len(busy.get(n, []))} running a task); replacement started")

    def restart_broker(self, down_seconds: float) -> tuple[datetime, str]:
        at = timezone.now()
        self.redis.kill()
        self.redis.wait()
        time.sleep(down_seconds)
        self._start_redis()
        return at, f"Redis on port {self.port} killed (-9), started again empty after {down_seconds:g}s"


class Command(BaseCommand):
    help = ("Sagas under killed workers and a restarted broker, at the settings in force; "
            "reports lost sagas, invariants and the longest recovery time.")

    def add_arguments(self, parser):
        parser.add_argument("--sagas", type=int, default=40, help="sagas to start, spread over the faults")
        parser.add_argument("--failure-share", type=float, default=0.3,
                            help="share of sagas in which one step refuses for good (they are compensated)")
        parser.add_argument("--step-seconds", type=float, default=1.0, help="how long each step works")
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--concurrency", type=int, default=2, help="prefork children per worker")
        parser.add_argument("--kills", type=int, default=3,
                            help="faults of each kill kind: pool children killed, whole workers killed")
        parser.add_argument("--broker-restarts", type=int, default=1,
                            help="restarts of its own Redis (none with --broker-url)")
        parser.add_argument("--fault-interval", type=float, default=5.0, help="seconds between faults")
        parser.add_argument("--broker-url", default=None,
                            help="use this broker (Redis or RabbitMQ) and a private queue on it, instead of "
                                 "a Redis of its own; it is never restarted")
        parser.add_argument("--max-recovery", type=float, default=30.0,
                            help="longest acceptable time from a fault to the next event of a saga it caught")
        parser.add_argument("--timeout", type=float, default=600.0,
                            help="seconds from the first saga's start; a saga unfinished by then is lost")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--keep-logs", action="store_true", help="keep the logs of workers, beat and Redis")
        parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
        parser.add_argument("--stall-after", type=float, default=None,
                            help="deprecated, ignored: the sweeper runs at the settings in force (beat)")
        parser.add_argument("--kill-every", type=float, default=None, help="deprecated: use --fault-interval")

    def handle(self, *args, **o):
        register_chaos_sagas()  # here, and in the workers and beat through CHAOS_ENV
        if o["sagas"] < 1 or o["workers"] < 1 or o["concurrency"] < 1:
            raise CommandError("--sagas, --workers and --concurrency must be at least 1")
        if o["kills"] < 0 or o["broker_restarts"] < 0:
            raise CommandError("--kills and --broker-restarts cannot be negative")
        if o["step_seconds"] < 0 or o["fault_interval"] <= 0 or not 0 <= o["failure_share"] <= 1:
            raise CommandError("--step-seconds >= 0, --fault-interval > 0 and 0 <= --failure-share <= 1, please")
        if o["broker_url"] is None and not shutil.which("redis-server"):
            raise CommandError("saga_chaos runs a Redis of its own: redis-server must be on PATH "
                               "(or give --broker-url)")
        if o["stall_after"] is not None:
            self.stdout.write("--stall-after is deprecated and ignored: beat's sweeper runs at the settings in force")
        if o["kill_every"] is not None:
            self.stdout.write("--kill-every is deprecated: read as --fault-interval")
            o["fault_interval"] = o["kill_every"]
        self.options = o
        self.rng = random.Random(o["seed"])
        tmp = Path(tempfile.mkdtemp(prefix="saga-chaos-"))
        queue = f"chaos-{uuid.uuid4().hex[:8]}"
        cluster = Cluster(tmp=tmp, broker_url=o["broker_url"], queue=queue,
                          workers=o["workers"], concurrency=o["concurrency"])
        # This process publishes to the chaos broker and queue for good: run the
        # command in a process of its own (the tests do).
        app.conf.broker_url = cluster.broker_url
        app.conf.task_default_queue = queue
        plan = self._plan(cluster.own_broker)
        self._describe(cluster, plan)
        self.faults: list[Fault] = []
        self.queue = queue
        try:
            cluster.start()
            ids, ended = self._run(cluster, plan)
        finally:
            cluster.stop()
            if o["keep_logs"]:
                self.stdout.write(f"logs of workers, beat and Redis kept in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        self._report(cluster, ids, ended)

    # --- the run -----------------------------------------------------------------------

    def _plan(self, own_broker: bool) -> list[str]:
        o = self.options
        kinds = [POOL_CHILD] * o["kills"] + [WHOLE_WORKER] * o["kills"]
        if own_broker:
            kinds += [BROKER_RESTART] * o["broker_restarts"]
        self.rng.shuffle(kinds)
        return kinds

    def _describe(self, cluster: Cluster, plan: list[str]) -> None:
        o = self.options
        broker = (f"its own Redis {cluster.broker_url}" if cluster.own_broker
                  else f"{cluster.broker_url.split('@')[-1]} (external)")
        self.stdout.write(
            f"saga_chaos: {o['sagas']} sagas, {o['workers']} workers x {o['concurrency']} children + beat, "
            f"broker {broker}, queue {cluster.queue}, database {connection.vendor}")
        visibility = (f", visibility timeout {settings.CELERY_BROKER_TRANSPORT_OPTIONS.get('visibility_timeout')}s"
                      if cluster.broker_url.startswith("redis") else "")
        self.stdout.write(
            f"  settings in force: step timeout {settings.SAGAS_DEFAULT_STEP_TIMEOUT:g}s "
            f"(+{settings.SAGAS_HARD_TIMEOUT_GRACE:g}s hard), stall after {settings.SAGAS_STALL_AFTER:g}s, "
            f"sweep every {settings.SAGAS_SWEEP_INTERVAL:g}s{visibility}")
        counts = ", ".join(f"{plan.count(k)} {k}" for k in KINDS if plan.count(k))
        self.stdout.write(f"  faults: {counts or 'none'}, one every {o['fault_interval']:g}s, seed {o['seed']}")
        if not cluster.own_broker and o["broker_restarts"]:
            self.stdout.write(f"  broker restart skipped: an external broker ({broker}) is not restarted by this "
                              f"command ({o['broker_restarts']} asked)")

    def _run(self, cluster: Cluster, plan: list[str]) -> tuple[list, datetime]:
        o = self.options
        interval = o["fault_interval"]
        t0 = time.monotonic()
        self.started_at = timezone.now()
        # Sagas start at a steady pace over the fault window, so that every
        # fault finds some in flight.
        window = interval * len(plan)
        starts = [t0 + window * j / o["sagas"] for j in range(o["sagas"])]
        faults_due = [t0 + interval * (i + 1) for i in range(len(plan))]
        deadline = t0 + o["timeout"]
        ids: list = []
        finished, last_check, last_print = -1, 0.0, 0.0
        while True:
            now = time.monotonic()
            for note in cluster.supervise():
                self._say(t0, note)
            while starts and starts[0] <= now:
                starts.pop(0)
                ids.append(self._start_one(t0, len(ids)))
            if plan and faults_due[0] <= now:
                if self._inject(cluster, plan[0], t0, late=now - faults_due[0] > interval / 2):
                    plan.pop(0)
                    faults_due.pop(0)
                    # A fault that waited for a busy process keeps the next ones an interval away.
                    done_at = time.monotonic()
                    faults_due = [max(due, done_at + interval * (k + 1)) for k, due in enumerate(faults_due)]
            if now - last_check >= 1.0:
                last_check = now
                done = SagaInstance.objects.filter(id__in=ids, status__in=FINAL_SAGA_STATUSES).count()
                if done != finished or now - last_print >= 30:
                    self._say(t0, f"finished {done}/{o['sagas']} (started {len(ids)})")
                    finished, last_print = done, now
                if not starts and not plan and done == len(ids):
                    break
            if now >= deadline:
                self._say(t0, f"--timeout {o['timeout']:g}s reached")
                break
            time.sleep(0.2)
        return ids, timezone.now()

    def _start_one(self, t0: float, i: int):
        o = self.options
        fail = self.rng.choice(REFUSING_STEPS) if self.rng.random() < o["failure_share"] else None
        key = f"{self.queue}-{i}"
        try:
            return start_saga(CHAOS_SAGA, input={"i": i, "sleep": o["step_seconds"], "fail": fail},
                              idempotency_key=key).id
        except Exception as exc:  # the row is committed; its first message is what did not go out
            self._say(t0, f"saga {i}: first message not sent ({exc}); left to the sweeper")
            return SagaInstance.objects.get(saga_type=CHAOS_SAGA, idempotency_key=key).id

    def _inject(self, cluster: Cluster, kind: str, t0: float, late: bool) -> bool:
        """Inject one fault; a kill waits (a while) for a process that is running a task."""
        if kind == BROKER_RESTART:
            at, what = cluster.restart_broker(down_seconds=1.0)
        else:
            busy = cluster.busy()
            if not busy and not late:
                return False
            if kind == POOL_CHILD:
                done = cluster.kill_pool_child(self.rng, busy)
                if done is None:
                    return False
                at, what = done
            else:
                at, what = cluster.kill_whole_worker(self.rng, busy)
        self.faults.append(Fault(kind, at, what))
        self._say(t0, f"FAULT {kind}: {what}", at=at)
        return True

    def _say(self, t0: float, text: str, at: datetime | None = None) -> None:
        """One line of the run, stamped with seconds since the first saga started (a fault: its own time)."""
        offset = (at - self.started_at).total_seconds() if at else time.monotonic() - t0
        self.stdout.write(f"  +{offset:6.1f}s  {text}")

    # --- the verdict ---------------------------------------------------------------------

    def _report(self, cluster: Cluster, ids: list, ended: datetime) -> None:
        o = self.options
        sagas = SagaInstance.objects.filter(id__in=ids)
        statuses: dict[str, int] = {}
        for status in sagas.values_list("status", flat=True):
            statuses[status] = statuses.get(status, 0) + 1
        lost = sagas.exclude(status__in=FINAL_SAGA_STATUSES).count()
        events = SagaEvent.objects.filter(saga_id__in=ids)
        self.stdout.write(f"final statuses: {dict(sorted(statuses.items()))}; {lost} lost")
        self.stdout.write(
            f"engine: {events.filter(kind=EventKind.STEP_ATTEMPT_LOST).count()} lost attempts taken over, "
            f"{events.filter(kind=EventKind.SAGA_RESUMED).count()} sagas resumed by the sweeper")
        self.stdout.write(f"supervisor: {cluster.worker_exits} worker exits and {cluster.beat_exits} beat exits "
                          f"on their own, each started again")

        effects = check_effects(sagas)
        invariants = check_sagas(sagas)
        self.stdout.write("checks")
        for check in effects + invariants:
            detail = f"  {check.detail}" if check.detail else ""
            self.stdout.write(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}{detail}")

        trails: dict = {}
        for saga_id, at, kind in events.order_by("created_at", "id").values_list("saga_id", "created_at", "kind"):
            trails.setdefault(saga_id, []).append((at, kind))
        recoveries = measure_recoveries(self.faults, trails)
        figures = figures_by_kind(self.faults, recoveries, KINDS)
        worst = longest(recoveries)
        self.stdout.write("recovery: from each fault to the next audit event of every saga in flight at it")
        self.stdout.write(f"  {'fault kind':<16}{'faults':>7}{'affected':>10}{'never':>7}{'max s':>9}{'p95 s':>9}")
        for f in figures:
            self.stdout.write(f"  {f.kind:<16}{f.faults:>7}{f.affected:>10}{f.unrecovered:>7}"
                              f"{_seconds(f.max_seconds):>9}{_seconds(f.p95_seconds):>9}")
        if worst is not None:
            longest_text = ("never (no event by the end of the run)" if worst.seconds is None
                            else f"{worst.seconds:.1f}s")
            self.stdout.write(
                f"  longest: {longest_text}, saga {worst.saga_id} after the {worst.fault.kind} at "
                f"+{(worst.fault.at - self.started_at).total_seconds():.1f}s "
                f"({worst.fault.what}); limit {o['max_recovery']:g}s")

        reasons = []
        if lost:
            reasons.append(f"{lost} sagas lost (unfinished after {o['timeout']:g}s)")
        reasons += [f"{c.name}: FAIL" for c in effects + invariants if not c.passed and "none lost" not in c.name]
        slow = [r for r in recoveries if r.seconds is None or r.seconds > o["max_recovery"]]
        if slow:
            reasons.append(f"{len(slow)} recoveries over {o['max_recovery']:g}s "
                           f"(longest {_seconds(worst.seconds) + 's' if worst.seconds is not None else 'never'})")
        reasons += [f"no saga was in flight at any {f.kind} fault: nothing measured for it"
                    for f in figures if f.faults and not f.affected]
        passed = not reasons
        verdict = ("saga_chaos: PASS: no saga lost, no effect applied twice or left in place, every invariant "
                   f"holds, every recovery within {o['max_recovery']:g}s" if passed
                   else "saga_chaos: FAIL: " + "; ".join(reasons))
        self.stdout.write(verdict)
        if o["json"]:
            self.stdout.write(json.dumps({
                "passed": passed,
                "sagas": len(ids),
                "lost": lost,
                "statuses": statuses,
                "database": connection.vendor,
                "broker": "own redis" if cluster.own_broker else "external",
                "faults": {f.kind: f.as_dict() for f in figures},
                "longest_recovery_s": None if worst is None or worst.seconds is None else round(worst.seconds, 2),
                "unrecovered": sum(f.unrecovered for f in figures),
                "max_recovery_s": o["max_recovery"],
                "effects_ok": all(c.passed for c in effects),
                "invariants_ok": all(c.passed for c in invariants),
                "worker_exits": cluster.worker_exits,
                "beat_exits": cluster.beat_exits,
                "seed": o["seed"],
                "run_seconds": round((ended - self.started_at).total_seconds(), 1),
            }))
        if not passed:
            raise CommandError("chaos run failed: " + "; ".join(reasons))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
