"""The orchestrator against bare Celery on the same no-op steps, side by side, in one run.

The phases live in ``sagas.bench``; this command reads the options, runs
them in order and prints the report (and, with ``--json``, one JSON line last).
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.test.utils import override_settings

from config.celery import app
from sagas.bench import inprocess, report, runs
from sagas.bench.api_load import run_api_load
from sagas.bench.report import BARE, COMPENSATED, SAGA, Results
from sagas.bench.workload import BENCH_STEPS, MAX_SIZE, saga_name
from sagas.sagas import BENCH_ENV, register_bench_sagas
from sagas.workers import delete_queue, production_env, spawn_worker, stop_workers, wait_for_workers, worker_name

WARM_UP = 5
# This process as its workers run (production_env): no statement log, no failure injection.
PRODUCTION = {"DEBUG": False, "SAGAS_FAILURE_INJECTION_ENABLED": False}
MIN_TIMEOUT = 600.0
TIMEOUT_PER_STEP = 0.05


class Command(BaseCommand):
    help = ("Benchmark: orchestrated sagas against bare Celery on the same no-op steps, in one run; "
            "statements per step; worker memory; with --api, starting sagas through the REST API under load.")

    def add_arguments(self, parser):
        parser.add_argument("--sagas", type=int, default=200, help="runs per mode, all started at once (throughput)")
        parser.add_argument("--steps", type=int, default=BENCH_STEPS, help="plain no-op steps per saga (chain)")
        parser.add_argument("--parallel", type=int, metavar="M",
                            help="one Parallel stage of M members instead of the plain steps (bare: a group)")
        parser.add_argument("--workers", type=int, default=1, help="worker processes to start")
        parser.add_argument("--concurrency", type=int, default=2, help="prefork children per worker")
        parser.add_argument("--latency-runs", type=int, default=30,
                            help="runs started one at a time, after the previous finished, to time latency")
        parser.add_argument("--statement-sagas", type=int, default=3,
                            help="sagas per mode run in this process to count statements")
        parser.add_argument("--timeout", type=float,
                            help=f"seconds any one phase may take (default: {MIN_TIMEOUT:g}, or "
                                 f"{TIMEOUT_PER_STEP:g} per step of the run's sagas if that is more)")
        parser.add_argument("--keep", action="store_true", help="keep the benchmark's saga rows")
        parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
        parser.add_argument("--api", action="store_true",
                            help="instead: start sagas through POST /api/sagas/ under load (gunicorn, locust)")
        parser.add_argument("--api-users", type=int, default=16, help="locust users, each posting back to back")
        parser.add_argument("--api-spawn-rate", type=float,
                            help="users started per second (default: as many as --api-users: all within a second)")
        parser.add_argument("--api-seconds", type=float, default=20.0, help="how long the load runs")
        parser.add_argument("--api-web-workers", type=int, default=3, help="gunicorn worker processes")

    def handle(self, *args, **o):
        self._check(o)
        register_bench_sagas()  # here, and in the workers through BENCH_ENV
        name = saga_name(steps=o["steps"], parallel=o["parallel"])
        if o["timeout"] is None:
            o["timeout"] = max(MIN_TIMEOUT, TIMEOUT_PER_STEP * o["sagas"] * (o["parallel"] or o["steps"]))
        results = Results(settings={
            "mode": "api" if o["api"] else "workers", "database": connection.vendor,
            "broker": settings.CELERY_BROKER_URL.split("@")[-1], "saga_type": name, "sagas": o["sagas"],
            "steps": o["steps"], "parallel": o["parallel"], "workers": o["workers"],
            "concurrency": o["concurrency"], "latency_runs": min(o["sagas"], o["latency_runs"]),
        })
        self.stdout.write(self._headline(o, name))
        if o["api"]:
            self._note(f"gunicorn and locust, {o['api_seconds']:g} s of load")
            results.api = run_api_load(saga_type=name, users=o["api_users"],
                                       spawn_rate=o["api_spawn_rate"] or o["api_users"],
                                       seconds=o["api_seconds"], web_workers=o["api_web_workers"])
        else:
            created: list = []
            try:
                with override_settings(**PRODUCTION):
                    self._in_process(results, o, created)
                    self._through_workers(results, o, name, created)
            finally:
                if not o["keep"]:
                    runs.delete_sagas(created)
        results.load_end = [round(x, 2) for x in os.getloadavg()]
        for line in report.lines(results):
            self.stdout.write(line)
        if o["json"]:
            self.stdout.write(json.dumps(report.figures(results)))

    @staticmethod
    def _check(o: dict) -> None:
        for option in ("sagas", "steps", "workers", "concurrency", "latency_runs", "statement_sagas", "api_users",
                       "api_web_workers"):
            if o[option] < 1:
                raise CommandError(f"--{option.replace('_', '-')} must be at least 1")
        if o["steps"] > MAX_SIZE or (o["parallel"] is not None and not 1 <= o["parallel"] <= MAX_SIZE):
            raise CommandError(f"--steps and --parallel go from 1 to {MAX_SIZE}")
        if o["api_seconds"] <= 0 or (o["timeout"] is not None and o["timeout"] <= 0):
            raise CommandError("--api-seconds and --timeout must be positive")

    def _headline(self, o: dict, name: str) -> str:
        shape = f"one Parallel stage of {o['parallel']} members" if o["parallel"] else f"{o['steps']} steps"
        where = f"database {connection.vendor}, broker {settings.CELERY_BROKER_URL.split('@')[-1]}"
        if o["api"]:
            return (f"saga_bench --api: POST /api/sagas/ ({name}) for {o['api_seconds']:g} s, {o['api_users']} users, "
                    f"{o['api_web_workers']} gunicorn workers, {where}")
        return (f"saga_bench: {o['sagas']} per mode, {shape} ({name}), {o['workers']} worker(s) x "
                f"{o['concurrency']} children (DEBUG off), {where}")

    # --- phases ------------------------------------------------------------------------------

    def _in_process(self, results: Results, o: dict, created: list) -> None:
        self._note("statements per step, in this process")
        for mode, fail in ((SAGA, False), (COMPENSATED, True)):
            results.statements[mode] = inprocess.count_statements(
                steps=o["steps"], parallel=o["parallel"], fail=fail, sagas=o["statement_sagas"], created=created)
        if o["parallel"]:
            self._note(f"cost per member of a Parallel stage of {o['parallel']}, in this process")
            results.parallel = inprocess.parallel_linearity(o["parallel"], repeats=3, created=created)

    def _through_workers(self, results: Results, o: dict, name: str, created: list) -> None:
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        saved_queue = app.conf.task_default_queue
        app.conf.task_default_queue = queue
        procs = self._start_workers(queue, o["workers"], o["concurrency"])
        memory = results.memory = runs.Memory([p.pid for p in procs])
        shape = {"steps": o["steps"], "parallel": o["parallel"]}
        n, one = o["sagas"], min(o["sagas"], o["latency_runs"])

        def bare(count: int, **how) -> runs.Run:
            return runs.run_bare(count, **shape, deadline=runs.Deadline(o["timeout"]), **how)

        def sagas(count: int, fail: bool, **how) -> runs.Run:
            return runs.run_sagas(name, count, fail=fail, deadline=runs.Deadline(o["timeout"]), created=created,
                                  **how)

        try:
            self._note("warm-up")
            bare(WARM_UP)  # imports, connections, the variant built in the workers
            sagas(WARM_UP, False)
            sagas(WARM_UP, True)
            memory.mark("start")
            self._note(f"throughput: {n} of each mode at once")
            results.bursts[BARE] = bare(n, tick=memory.tick)
            memory.mark(f"after {BARE}")
            results.bursts[SAGA] = sagas(n, False, tick=memory.tick)
            memory.mark(f"after {SAGA}")
            results.bursts[COMPENSATED] = sagas(n, True, tick=memory.tick)
            memory.mark(f"after {COMPENSATED}")
            self._note(f"latency: {one} of each mode one at a time")
            results.latency[BARE] = bare(one, one_at_a_time=True)
            results.latency[SAGA] = sagas(one, False, one_at_a_time=True)
            results.latency[COMPENSATED] = sagas(one, True, one_at_a_time=True)
            memory.mark("end")
        except (runs.BenchTimeout, RuntimeError) as exc:
            raise CommandError(str(exc)) from None
        finally:
            stop_workers(procs)
            app.conf.task_default_queue = saved_queue
            delete_queue(queue)

    def _note(self, what: str) -> None:
        """Progress, on stderr: stdout holds the report (and the JSON line last)."""
        self.stderr.write(f"saga_bench: {what}", style_func=str)

    def _start_workers(self, queue: str, count: int, concurrency: int) -> list[subprocess.Popen]:
        names = [worker_name(queue) for _ in range(count)]
        procs = [spawn_worker(queue=queue, name=name, concurrency=concurrency, env={**production_env(), **BENCH_ENV})
                 for name in names]
        try:
            wait_for_workers(set(names), procs)
        except RuntimeError as exc:
            stop_workers(procs)
            raise CommandError(f"benchmark workers did not start: {exc}") from None
        return procs
