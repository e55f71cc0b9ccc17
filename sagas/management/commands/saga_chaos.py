"""Sagas under killed workers and a restarted broker, at the settings in force.

The command runs what a deployment runs, on a queue of its own: prefork
workers and one ``celery beat`` (the sweeper's clock), with no setting
shortened or overridden, and nothing swept from here. ``--workload`` picks
what runs (see ``sagas.chaos``), any of:

- **plain** (the default): ``sagas.chaos`` sagas, a step, a Parallel of two, a step;
- **fanout**: ``sagas.chaos.fanout`` sagas, a Parallel of 24 members with real
  effects, in most of which one member refuses for good after a short while,
  as its siblings are being claimed and run on every worker process;
- **long**: ``sagas.chaos.long`` sagas, whose second step works for
  ``--long-seconds``; each one's next message is lost (below);
- **nested**: ``sagas.chaos.nested`` sagas, each the parent of two child
  sagas (one beside a step in a Parallel); in ``--nested-failure-share`` of
  them the parent fails after its children succeeded (they are undone as a
  whole), a member beside a child refuses, or the first child refuses (it
  compensates itself). Children are judged with their parents: lost,
  effects, every invariant, the tree invariants included.

While they run it injects faults, each timestamped:

- **pool child**: one prefork child SIGKILLed (its worker re-queues the task);
- **whole worker**: a worker's main process and its pool children SIGKILLed
  together, as when a machine dies; a replacement starts, as a supervisor
  would start one;
- **broker restart**: its own Redis killed (-9) and started again, losing
  every message it held. An external broker (``--broker-url``) is never
  restarted: that fault is skipped, and the run says so.

Each long-step saga gets one of two faults of its own, in turn, both of
which lose the message that carries the saga on after its long step:

- **lost message** (own Redis only): Redis is killed (-9) shortly before
  the long step ends. The worker records the step's success in the
  database, but cannot publish the next step's message (Celery gives up
  after its few retries); 2 s later that whole worker (main process and
  children) is SIGKILLed, taking with it the copy of the message it ran
  that it would have put back on the broker once reconnected, and Redis
  is started again, empty. Nothing but the sweeper can move the saga on.
  Killing a worker right after the recorded success is the faithful fault;
  the broker outage is what makes that moment last long enough to hit it
  (the publish otherwise follows the commit within milliseconds). The fault
  is dated when the success was recorded (when the next message would have
  been sent).
- **long-step kill**: the whole worker running the long step (main process
  and children) SIGKILLed halfway through it, as in *whole worker*: the next
  message is never sent, and the one it ran stays unacknowledged (on Redis,
  for ``visibility_timeout``). With an external broker every long-step saga
  gets this one.

A worker or beat that exits on its own is started again too (counted apart).
Then it reads the rows: sagas lost, effects applied twice or left in place
(see ``sagas.chaos``; among them, effect rows of compensated sagas still in
place), the saga invariants, per fault the recovery time of every saga in
flight at it (from the fault to the saga's next audit event), and per saga
the longest time it stood still: the longest stretch of its active life
with no audit event and no live attempt working for it. An attempt works
from its start to its report, or until a fault killed its process (the
command notes which steps the killed processes held): a long step's own
duration is not standing still, a lost message after it is. It exits 1 if
any of those fails, or a recovery or a stand-still exceeds ``--max-recovery``.
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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from config.celery import app
from sagas import liveness
from sagas.chaos import (
    CHAOS_SAGA,
    FANOUT_MEMBERS,
    FANOUT_SAGA,
    LONG_REFUSING_STEPS,
    LONG_SAGA,
    LONG_STEP,
    NESTED_CHILD_SAGA,
    NESTED_REFUSALS,
    NESTED_SAGA,
    REFUSING_STEPS,
    Fault,
    TrailEvent,
    check_effects,
    effects_left_behind,
    figures_by_kind,
    longest,
    measure_recoveries,
    measure_stand_stills,
    stand_still_figures,
    work_spans,
)
from sagas.engine import start_saga
from sagas.invariants import Check, check_sagas
from sagas.models import FINAL_SAGA_STATUSES, EventKind, SagaEvent, SagaInstance, StepRecord, StepStatus
from sagas.sagas import CHAOS_ENV, register_chaos_sagas
from sagas.workers import free_port, spawn_beat, spawn_worker, stop_workers, wait_for_workers, worker_name

POOL_CHILD = "pool child"
WHOLE_WORKER = "whole worker"
BROKER_RESTART = "broker restart"
LOST_MESSAGE = "lost message"
LONG_STEP_KILL = "long-step kill"
KINDS = [POOL_CHILD, WHOLE_WORKER, BROKER_RESTART, LOST_MESSAGE, LONG_STEP_KILL]

WORKLOADS = {"plain": CHAOS_SAGA, "fanout": FANOUT_SAGA, "long": LONG_SAGA, "nested": NESTED_SAGA}
# The saga types a workload starts through its parents (judged with them).
CHILD_TYPES = {"nested": [NESTED_CHILD_SAGA]}


def with_descendants(ids: list) -> list:
    """``ids`` and the ids of every child saga under them, down the tree."""
    found, frontier = list(ids), list(ids)
    while frontier:
        frontier = list(SagaInstance.objects.filter(parent_id__in=frontier).values_list("id", flat=True))
        found += frontier
    return found


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

    def kill_pool_child(self, rng: random.Random, busy: dict[int, list[int]],
                        held: Callable[[list[int]], frozenset]) -> tuple[datetime, str, frozenset] | None:
        """``held(pids)``: the steps those processes hold, read just before they die."""
        if busy:
            n = rng.choice(sorted(busy))
            pid, running = rng.choice(busy[n]), "running a task"
        else:
            candidates = [(n, c) for n in self.slots for c in children_of(self.workers[n].pid)]
            if not candidates:
                return None
            n, pid = rng.choice(candidates)
            running = "idle"
        cut = held([pid])
        at = timezone.now()
        _signal(pid, signal.SIGKILL)
        return at, f"pid {pid} of {self.names[n]} ({running})", cut

    def kill_whole_worker(self, rng: random.Random, busy: dict[int, list[int]],
                          held: Callable[[list[int]], frozenset]) -> tuple[datetime, str, frozenset]:
        return self.kill_worker(rng.choice(sorted(busy) or list(self.slots)), busy, held)

    def kill_worker(self, n: int, busy: dict[int, list[int]],
                    held: Callable[[list[int]], frozenset]) -> tuple[datetime, str, frozenset]:
        proc, name = self.workers[n], self.names[n]
        # Frozen first, so that it cannot replace or reap its children while they die.
        _signal(proc.pid, signal.SIGSTOP)
        children = children_of(proc.pid)
        cut = held([proc.pid, *children])
        at = timezone.now()
        for pid in children:
            _signal(pid, signal.SIGKILL)
        _signal(proc.pid, signal.SIGKILL)
        proc.wait()
        self._start_worker(n)
        return at, (f"{name}: main pid {proc.pid} and children {children} "
                    f"({len(busy.get(n, []))} running a task); replacement started"), cut

    def slot_of(self, pid: int) -> int | None:
        """The worker slot whose pool child (or main process) ``pid`` is."""
        return next((n for n, proc in self.workers.items() if pid == proc.pid or pid in children_of(proc.pid)),
                    None)

    def restart_broker(self, down_seconds: float) -> tuple[datetime, str]:
        at = self.stop_broker()
        time.sleep(down_seconds)
        self.start_broker()
        return at, f"Redis on port {self.port} killed (-9), started again empty after {down_seconds:g}s"

    def stop_broker(self) -> datetime:
        """Its own Redis killed (-9): every message it held is gone."""
        at = timezone.now()
        self.redis.kill()
        self.redis.wait()
        return at

    def start_broker(self) -> None:
        self._start_redis()


class Command(BaseCommand):
    help = ("Sagas under killed workers and a restarted broker, at the settings in force; "
            "reports lost sagas, invariants and the longest recovery time.")

    def add_arguments(self, parser):
        parser.add_argument("--workload", default="plain",
                            help="comma-separated workloads to run together: plain, fanout, long, nested "
                                 "(default plain)")
        parser.add_argument("--sagas", type=int, default=40,
                            help="plain sagas to start, spread over the faults")
        parser.add_argument("--failure-share", type=float, default=0.3,
                            help="share of plain and long-step sagas in which one step refuses for good "
                                 "(they are compensated)")
        parser.add_argument("--step-seconds", type=float, default=1.0, help="how long each step works")
        parser.add_argument("--fanout-sagas", type=int, default=6, help="fan-out sagas (24 members each)")
        parser.add_argument("--fanout-failure-share", type=float, default=0.75,
                            help="share of fan-out sagas in which one member refuses for good")
        parser.add_argument("--member-seconds", type=float, default=0.05, help="how long each fan-out member works")
        parser.add_argument("--long-sagas", type=int, default=2,
                            help="long-step sagas, started half a long step (and 5 s) apart")
        parser.add_argument("--long-seconds", type=float, default=40.0,
                            help="how long the long step works (longer than SAGAS_STALL_AFTER and a sweep, "
                                 "so that the sweeper looks at it while it runs)")
        parser.add_argument("--nested-sagas", type=int, default=8,
                            help="nested sagas (a parent and two child sagas each)")
        parser.add_argument("--nested-failure-share", type=float, default=0.6,
                            help="share of nested sagas that fail: mostly the parent after its children "
                                 "succeeded, else a member beside a child or the first child itself")
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
                            help="longest acceptable time from a fault to the next event of a saga it caught, "
                                 "and longest acceptable stand-still of any saga")
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
        workloads = [w.strip() for w in o["workload"].split(",") if w.strip()]
        unknown = sorted(set(workloads) - set(WORKLOADS))
        if unknown or not workloads:
            raise CommandError(f"--workload: unknown {', '.join(unknown) or '(none given)'}; "
                               f"choose from {', '.join(WORKLOADS)}")
        o["workloads"] = [w for w in WORKLOADS if w in workloads]
        counts = {"plain": o["sagas"], "fanout": o["fanout_sagas"], "long": o["long_sagas"],
                  "nested": o["nested_sagas"]}
        o["counts"] = counts
        if o["workers"] < 1 or o["concurrency"] < 1 or any(counts[w] < 1 for w in o["workloads"]):
            raise CommandError("--workers, --concurrency and the saga count of every chosen workload "
                               "(--sagas, --fanout-sagas, --long-sagas, --nested-sagas) must be at least 1")
        if not 0 <= o["nested_failure_share"] <= 1:
            raise CommandError("0 <= --nested-failure-share <= 1, please")
        if "long" in o["workloads"] and o["long_seconds"] < 5:
            raise CommandError("--long-seconds must be at least 5 (the lost message is timed from its end)")
        if not 0 <= o["fanout_failure_share"] <= 1 or o["member_seconds"] < 0:
            raise CommandError("0 <= --fanout-failure-share <= 1 and --member-seconds >= 0, please")
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
        # command in a process of its own (the tests do). Celery reads the broker
        # from CELERY_BROKER_URL before its configuration, so a deployment's
        # variable would keep this process on the deployment's broker: it is
        # replaced too (the processes started here are given theirs explicitly).
        app.conf.broker_url = cluster.broker_url
        if "CELERY_BROKER_URL" in os.environ:
            os.environ["CELERY_BROKER_URL"] = cluster.broker_url
        app.conf.task_default_queue = queue
        self.own_broker = cluster.own_broker
        plan = self._plan(cluster.own_broker)
        self._describe(cluster, plan)
        self.faults: list[Fault] = []
        self.queue = queue
        # Long-step sagas whose own fault is still to come: saga id -> its fault kind.
        self.long_faults: dict = {}
        try:
            cluster.start()
            ids, ended = self._run(cluster, plan)
            ids = with_descendants(ids)  # the child sagas are judged with their parents
            running_at_end = self._running_at_end(ids)
        finally:
            cluster.stop()
            if o["keep_logs"]:
                self.stdout.write(f"logs of workers, beat and Redis kept in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        self._report(cluster, ids, ended, running_at_end)

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
        sizes = {"plain": f"{o['sagas']} plain", "fanout": f"{o['fanout_sagas']} fan-out",
                 "long": f"{o['long_sagas']} long-step", "nested": f"{o['nested_sagas']} nested"}
        self.stdout.write(
            f"saga_chaos: {' + '.join(sizes[w] for w in o['workloads'])} sagas, {o['workers']} workers x "
            f"{o['concurrency']} children + beat, broker {broker}, queue {cluster.queue}, "
            f"database {connection.vendor}")
        if "fanout" in o["workloads"]:
            self.stdout.write(
                f"  fan-out: {len(FANOUT_MEMBERS)} members of {o['member_seconds']:g}s, one refusing after "
                f"{o['member_seconds'] / 2:g}s in {o['fanout_failure_share']:.0%} of them")
        if "nested" in o["workloads"]:
            self.stdout.write(
                f"  nested: each a parent of two {NESTED_CHILD_SAGA} children (one in a Parallel); "
                f"{o['nested_failure_share']:.0%} fail (the parent after its children, a member beside one, "
                f"or the first child)")
        if "long" in o["workloads"]:
            ways = (f"{LOST_MESSAGE} (Redis down over the step's end) and {LONG_STEP_KILL} (its worker killed "
                    "halfway), in turn" if cluster.own_broker else
                    f"{LONG_STEP_KILL} (its worker killed halfway): an external broker is not stopped")
            self.stdout.write(f"  long step: {o['long_seconds']:g}s, then its next message lost: {ways}")
        visibility = (f", visibility timeout {settings.CELERY_BROKER_TRANSPORT_OPTIONS.get('visibility_timeout')}s"
                      if cluster.broker_url.startswith("redis") else "")
        self.stdout.write(
            f"  settings in force: step timeout {settings.SAGAS_DEFAULT_STEP_TIMEOUT:g}s "
            f"(+{settings.SAGAS_HARD_TIMEOUT_GRACE:g}s hard), stall after {settings.SAGAS_STALL_AFTER:g}s, "
            f"sweep every {settings.SAGAS_SWEEP_INTERVAL:g}s{visibility}")
        counts = ", ".join(f"{plan.count(k)} {k}" for k in KINDS if plan.count(k))
        own = " (and one per long-step saga)" if "long" in o["workloads"] else ""
        self.stdout.write(f"  faults: {counts or 'none'}{own}, one every {o['fault_interval']:g}s, "
                          f"seed {o['seed']}")
        if not cluster.own_broker and o["broker_restarts"]:
            self.stdout.write(f"  broker restart skipped: an external broker ({broker}) is not restarted by this "
                              f"command ({o['broker_restarts']} asked)")

    def _run(self, cluster: Cluster, plan: list[str]) -> tuple[list, datetime]:
        o = self.options
        interval = o["fault_interval"]
        t0 = time.monotonic()
        self.started_at = timezone.now()
        # Sagas start at a steady pace over the fault window, so that every
        # fault finds some in flight. Long-step sagas start half a long step (and 5 s)
        # apart: one's broker outage (over its step's end) is over before the
        # next one's worker is killed (halfway through its step).
        window = interval * len(plan)
        starts = []
        for workload in o["workloads"]:
            if workload == "long":
                starts += [(t0 + (o["long_seconds"] / 2 + 5) * j, workload, j) for j in range(o["long_sagas"])]
            else:
                n = o["counts"][workload]
                starts += [(t0 + window * j / n, workload, j) for j in range(n)]
        starts.sort(key=lambda start: start[0])
        faults_due = [t0 + interval * (i + 1) for i in range(len(plan))]
        deadline = t0 + o["timeout"]
        ids: list = []
        finished, last_check, last_print = -1, 0.0, 0.0
        while True:
            now = time.monotonic()
            for note in cluster.supervise():
                self._say(t0, note)
            while starts and starts[0][0] <= now:
                _, workload, j = starts.pop(0)
                ids.append(self._start_one(t0, workload, j))
            for note in self._long_step_faults(cluster, t0):
                self._say(t0, note)
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
                    self._say(t0, f"finished {done}/{len(ids) + len(starts)} (started {len(ids)})")
                    finished, last_print = done, now
                # A parent's children are judged with it: wait for them too (one may end after its parent).
                if (not starts and not plan and not self.long_faults and done == len(ids)
                        and not SagaInstance.objects.filter(parent_id__in=ids).exclude(
                            status__in=FINAL_SAGA_STATUSES).exists()):
                    break
            if now >= deadline:
                self._say(t0, f"--timeout {o['timeout']:g}s reached")
                break
            time.sleep(0.2)
        return ids, timezone.now()

    def _start_one(self, t0: float, workload: str, i: int):
        o = self.options
        saga_type = WORKLOADS[workload]
        if workload == "fanout":
            fail = self.rng.choice(FANOUT_MEMBERS) if self.rng.random() < o["fanout_failure_share"] else None
            data = {"i": i, "sleep": o["step_seconds"], "member_sleep": o["member_seconds"], "fail": fail,
                    "fail_after": o["member_seconds"] / 2}
        elif workload == "long":
            fail = self.rng.choice(LONG_REFUSING_STEPS) if self.rng.random() < o["failure_share"] else None
            data = {"i": i, "sleep": o["step_seconds"], "long_seconds": o["long_seconds"], "fail": fail}
        elif workload == "nested":
            fail, child_fail = (self.rng.choice(NESTED_REFUSALS) if self.rng.random() < o["nested_failure_share"]
                                else (None, None))
            data = {"i": i, "sleep": o["step_seconds"], "fail": fail, "child_fail": child_fail}
        else:
            fail = self.rng.choice(REFUSING_STEPS) if self.rng.random() < o["failure_share"] else None
            data = {"i": i, "sleep": o["step_seconds"], "fail": fail}
        key = f"{self.queue}-{workload}-{i}"
        try:
            saga_id = start_saga(saga_type, input=data, idempotency_key=key).id
        except Exception as exc:  # the row is committed; its first message is what did not go out
            self._say(t0, f"{workload} saga {i}: first message not sent ({exc}); left to the sweeper")
            saga_id = SagaInstance.objects.get(saga_type=saga_type, idempotency_key=key).id
        if workload == "long":
            # In turn: the broker down over the long step's end, or its worker killed halfway.
            lose = self.own_broker and i % 2 == 0
            self.long_faults[saga_id] = LOST_MESSAGE if lose else LONG_STEP_KILL
        return saga_id

    def _held(self, pids: list[int]) -> frozenset:
        """The steps of this run's sagas held by processes ``pids`` (read from ``held_by``)."""
        wanted = {str(pid) for pid in pids}
        rows = StepRecord.objects.filter(Q(saga__idempotency_key__startswith=self.queue)
                                         | Q(saga__parent__idempotency_key__startswith=self.queue),
                                         held_by__isnull=False)
        return frozenset(pk for pk, holder in rows.values_list("pk", "held_by")
                         if holder.split("|")[2:3] and holder.split("|")[2] in wanted)

    def _long_step_faults(self, cluster: Cluster, t0: float) -> list[str]:
        """Each long-step saga's own fault, once an attempt of its long step has run long enough.

        (An attempt lost to another fault is followed by another: the fault waits for that one.)
        """
        if not self.long_faults:
            return []
        o = self.options
        notes = []
        now = timezone.now()
        records = StepRecord.objects.filter(saga_id__in=list(self.long_faults), name=LONG_STEP)
        for record in records:
            kind = self.long_faults[record.saga_id]
            if record.status != StepStatus.RUNNING:
                if record.status != StepStatus.PENDING:
                    # Lost to another fault, refused, or over already: its own fault has nothing to hit.
                    del self.long_faults[record.saga_id]
                    notes.append(f"{kind} of saga {record.saga_id} not injected: its long step is "
                                 f"{record.status} (attempt {record.attempts})")
                continue
            if record.attempt_started_at is None or not record.held_by:
                continue
            halfway = record.attempt_started_at + timedelta(seconds=o["long_seconds"] / 2)
            near_end = record.attempt_started_at + timedelta(seconds=o["long_seconds"] - 1.5)
            if kind == LONG_STEP_KILL and now >= halfway:
                slot = cluster.slot_of(int(record.held_by.split("|")[2]))
                if slot is None:
                    continue
                at, what, cut = cluster.kill_worker(slot, cluster.busy(), self._held)
                what = f"saga {record.saga_id} halfway through its long step; {what}"
            elif kind == LOST_MESSAGE and now >= near_end:
                if cluster.slot_of(int(record.held_by.split("|")[2])) is None:
                    continue  # its worker died already (another fault): the next attempt's end, then
                at, what, cut = self._lose_next_message(cluster, record)
            else:
                continue
            del self.long_faults[record.saga_id]
            self.faults.append(Fault(kind, at, what, cut))
            self._say(t0, f"FAULT {kind}: {what}", at=at)
        return notes

    def _lose_next_message(self, cluster: Cluster, record: StepRecord) -> tuple[datetime, str, frozenset]:
        """Redis down over the long step's end; once its success is recorded, the worker that ran it killed.

        The worker cannot publish the next step while Redis is down, and the
        copy of the message it ran, which it would put back once reconnected,
        dies with it: Redis comes back empty, and no message moves the saga.
        """
        slot = cluster.slot_of(int(record.held_by.split("|")[2]))
        down_at = cluster.stop_broker()
        # The step ends about 1.5 s after this; a broker kept down much longer would stall every saga of
        # the run, which is not the fault meant here.
        give_up = time.monotonic() + 8.0
        while time.monotonic() < give_up:
            record.refresh_from_db(fields=["status", "finished_at"])
            if record.status != StepStatus.RUNNING:
                break
            time.sleep(0.1)
        succeeded = record.status == StepStatus.SUCCEEDED and record.finished_at is not None
        cut, killed = frozenset(), "its worker was gone already"
        if slot is not None:
            time.sleep(2.0)  # the worker's publish of the next step retries a few times, then gives up
            _, killed, cut = cluster.kill_worker(slot, {}, self._held)
        cluster.start_broker()
        up = (timezone.now() - down_at).total_seconds()
        if succeeded:
            return record.finished_at, (
                f"saga {record.saga_id}: Redis on port {cluster.port} killed (-9) before its long step ended, "
                f"its success recorded {(record.finished_at - down_at).total_seconds():.1f}s later, then the "
                f"worker that ran it killed ({killed}), Redis started again empty after {up:.1f}s: "
                f"the next step's message was never sent"), cut
        return down_at, (f"saga {record.saga_id}: Redis on port {cluster.port} down {up:.1f}s but its long step "
                         f"did not succeed meanwhile (it is {record.status}); {killed}"), cut

    @staticmethod
    def _child_ends(sagas) -> dict:
        """Child saga id (as text) -> when it reached its final status, for the children among ``sagas``."""
        finals = SagaEvent.objects.filter(saga__in=sagas.filter(parent__isnull=False), kind__in=[
            EventKind.SAGA_SUCCEEDED, EventKind.SAGA_COMPENSATED, EventKind.SAGA_FAILED]).order_by("created_at")
        ends: dict = {}
        for saga_id, at in finals.values_list("saga_id", "created_at"):
            ends.setdefault(str(saga_id), at)  # its first end: a child undone later ended first as succeeded
        return ends

    def _running_at_end(self, ids: list) -> dict:
        """Step id -> when its attempt began, for attempts a live process still holds at the end of the run."""
        now = timezone.now()
        held = list(StepRecord.objects.filter(saga_id__in=ids, held_by__isnull=False,
                                              lease_expires_at__gt=now))
        dead = liveness.dead_holders({r.held_by for r in held}, now) if held else set()
        return {r.pk: r.attempt_started_at for r in held if r.held_by not in dead}

    def _inject(self, cluster: Cluster, kind: str, t0: float, late: bool) -> bool:
        """Inject one fault; a kill waits (a while) for a process that is running a task."""
        if kind == BROKER_RESTART:
            at, what = cluster.restart_broker(down_seconds=1.0)
            cut = frozenset()
        else:
            busy = cluster.busy()
            if not busy and not late:
                return False
            if kind == POOL_CHILD:
                done = cluster.kill_pool_child(self.rng, busy, self._held)
                if done is None:
                    return False
                at, what, cut = done
            else:
                at, what, cut = cluster.kill_whole_worker(self.rng, busy, self._held)
        self.faults.append(Fault(kind, at, what, cut))
        self._say(t0, f"FAULT {kind}: {what}", at=at)
        return True

    def _say(self, t0: float, text: str, at: datetime | None = None) -> None:
        """One line of the run, stamped with seconds since the first saga started (a fault: its own time)."""
        offset = (at - self.started_at).total_seconds() if at else time.monotonic() - t0
        self.stdout.write(f"  +{offset:6.1f}s  {text}")

    # --- the verdict ---------------------------------------------------------------------

    def _report(self, cluster: Cluster, ids: list, ended: datetime, running_at_end: dict) -> None:
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
        left = effects_left_behind(sagas)
        effects.append(Check("no effect row of a compensated saga left in place", not left,
                             f"{len(left)} ({'; '.join(f'saga {e.saga_id} step {e.step}' for e in left[:3])})"
                             if left else ""))
        invariants = check_sagas(sagas)
        self.stdout.write("checks")
        for check in effects + invariants:
            detail = f"  {check.detail}" if check.detail else ""
            self.stdout.write(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}{detail}")

        trails: dict = {}
        stand_trails: dict = {}
        rows = events.order_by("created_at", "id").values_list("saga_id", "created_at", "kind", "step_id", "detail")
        child_ended = self._child_ends(sagas)
        for saga_id, at, kind, step_id, detail in rows:
            trails.setdefault(saga_id, []).append((at, kind))
            child = (detail or {}).get("child_saga") if kind == EventKind.STEP_WAITING else None
            stand_trails.setdefault(saga_id, []).append(TrailEvent(
                at, kind, step_id, waits_for_child=child is not None, child_ended=child_ended.get(child)))
        work = {saga_id: work_spans(trail, self.faults, ended, running_at_end)
                for saga_id, trail in stand_trails.items()}
        recoveries = measure_recoveries(self.faults, trails, work)
        kinds = KINDS if "long" in o["workloads"] else [k for k in KINDS if k not in (LOST_MESSAGE, LONG_STEP_KILL)]
        figures = figures_by_kind(self.faults, recoveries, kinds)
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

        stills = measure_stand_stills(stand_trails, self.faults, ended, running_at_end)
        type_of = dict(sagas.values_list("id", "saga_type"))
        types = [t for w in o["workloads"] for t in [WORKLOADS[w], *CHILD_TYPES.get(w, [])]]
        overall = stand_still_figures(stills, o["max_recovery"])
        by_type = {t: stand_still_figures([s for s in stills if type_of.get(s.saga_id) == t], o["max_recovery"])
                   for t in types}
        still_worst = max(stills, key=lambda s: s.seconds, default=None)
        self.stdout.write("stand-still: per saga, the longest stretch with no audit event and no live attempt "
                          "working for it")
        self.stdout.write(f"  {'saga type':<20}{'sagas':>7}{'max s':>9}{'p95 s':>9}{'over':>6}")
        for t, f in [*by_type.items(), ("all", overall)]:
            self.stdout.write(f"  {t:<20}{f.sagas:>7}{_seconds(f.max_seconds):>9}{_seconds(f.p95_seconds):>9}"
                              f"{f.over:>6}")
        if still_worst is not None and still_worst.start is not None:
            self.stdout.write(
                f"  longest: {still_worst.seconds:.1f}s, {type_of.get(still_worst.saga_id)} saga "
                f"{still_worst.saga_id}, from +{(still_worst.start - self.started_at).total_seconds():.1f}s "
                f"to +{(still_worst.end - self.started_at).total_seconds():.1f}s; limit {o['max_recovery']:g}s")

        reasons = []
        if lost:
            reasons.append(f"{lost} sagas lost (unfinished after {o['timeout']:g}s)")
        reasons += [f"{c.name}: FAIL" for c in effects + invariants if not c.passed and "none lost" not in c.name]
        slow = [r for r in recoveries if r.seconds is None or r.seconds > o["max_recovery"]]
        if slow:
            reasons.append(f"{len(slow)} recoveries over {o['max_recovery']:g}s "
                           f"(longest {_seconds(worst.seconds) + 's' if worst.seconds is not None else 'never'})")
        if overall.over:
            reasons.append(f"{overall.over} sagas stood still over {o['max_recovery']:g}s "
                           f"(longest {_seconds(overall.max_seconds)}s)")
        reasons += [f"no saga was in flight at any {f.kind} fault: nothing measured for it"
                    for f in figures if f.faults and not f.affected]
        passed = not reasons
        verdict = ("saga_chaos: PASS: no saga lost, no effect applied twice or left in place, every invariant "
                   f"holds, every recovery within {o['max_recovery']:g}s, no saga stood still longer" if passed
                   else "saga_chaos: FAIL: " + "; ".join(reasons))
        self.stdout.write(verdict)
        if o["json"]:
            self.stdout.write(json.dumps({
                "passed": passed,
                "workloads": o["workloads"],
                "sagas": sagas.filter(parent__isnull=True).count(),
                "child_sagas": sagas.filter(parent__isnull=False).count(),
                "lost": lost,
                "effects_left": len(left),
                "stand_still": {**overall.as_dict(), "by_type": {t: f.as_dict() for t, f in by_type.items()}},
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
