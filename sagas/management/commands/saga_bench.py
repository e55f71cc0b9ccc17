"""The orchestrator against a bare Celery chain of the same steps, side by side, in one run."""
from __future__ import annotations

import subprocess
import time
import uuid

from celery import chain
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from config.celery import app
from sagas.analytics import percentile
from sagas.bench import BENCH_SAGA, BENCH_STEPS, bench_done, bench_step, redis_client
from sagas.engine import start_saga
from sagas.models import FINAL_SAGA_STATUSES, SagaInstance, SagaStatus
from sagas.workers import spawn_worker, stop_workers, wait_for_workers, worker_name


class Command(BaseCommand):
    help = "Benchmark: orchestrated sagas vs a bare Celery chain of the same steps, in one run."

    def add_arguments(self, parser):
        parser.add_argument("--sagas", type=int, default=200, help="sagas (and chains) per mode")
        parser.add_argument("--workers", type=int, default=1, help="worker processes to start")
        parser.add_argument("--concurrency", type=int, default=2, help="prefork children per worker")
        parser.add_argument("--latency-runs", type=int, default=30,
                            help="runs started one at a time, after the previous finished, to time latency")
        parser.add_argument("--timeout", type=float, default=600.0)
        parser.add_argument("--keep", action="store_true", help="keep the benchmark's saga rows")

    def handle(self, *args, sagas: int, workers: int, concurrency: int, latency_runs: int, timeout: float,
               keep: bool, **options):
        if sagas < 1 or workers < 1 or concurrency < 1:
            raise CommandError("--sagas, --workers and --concurrency must be at least 1")
        self.created: list = []
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        saved_queue = app.conf.task_default_queue
        app.conf.task_default_queue = queue
        procs = self._start_workers(queue, workers, concurrency)
        try:
            self.stdout.write(
                f"saga_bench: {sagas} per mode, {BENCH_STEPS} steps each, {workers} worker(s) x {concurrency} "
                f"children, database {connection.vendor}, broker {settings.CELERY_BROKER_URL.split('@')[-1]}"
            )
            self._run_bare(5, timeout)  # warm-up: imports, connections
            self._run_sagas(5, timeout, fail=False)
            burst = [
                ("bare Celery chain", *self._run_bare(sagas, timeout)),
                ("saga, succeeds", *self._run_sagas(sagas, timeout, fail=False)),
                ("saga, compensated", *self._run_sagas(sagas, timeout, fail=True)),
            ]
            one = min(sagas, latency_runs)
            single = [
                ("bare Celery chain", *self._run_bare(one, timeout, one_at_a_time=True)),
                ("saga, succeeds", *self._run_sagas(one, timeout, fail=False, one_at_a_time=True)),
                ("saga, compensated", *self._run_sagas(one, timeout, fail=True, one_at_a_time=True)),
            ]
        finally:
            stop_workers(procs)
            app.conf.task_default_queue = saved_queue
            if not keep:
                SagaInstance.objects.filter(id__in=self.created).delete()
        self._report(burst, single)

    # --- workers -------------------------------------------------------------------

    def _start_workers(self, queue: str, count: int, concurrency: int) -> list[subprocess.Popen]:
        names = [worker_name(queue) for _ in range(count)]
        procs = [spawn_worker(queue=queue, name=name, concurrency=concurrency) for name in names]
        try:
            wait_for_workers(set(names), procs)
        except RuntimeError as exc:
            stop_workers(procs)
            raise CommandError(f"benchmark workers did not start: {exc}") from None
        return procs

    # --- the two modes -------------------------------------------------------------

    def _run_bare(self, count: int, timeout: float, *, one_at_a_time: bool = False) -> tuple[float, list[float]]:
        run_id = uuid.uuid4().hex
        key = f"saga-bench:{run_id}:latency"
        client = redis_client()
        deadline = time.monotonic() + timeout
        started = time.perf_counter()
        for i in range(count):
            steps = [bench_step.si(i) for _ in range(BENCH_STEPS)]
            chain(*steps, bench_done.si(run_id, time.time())).apply_async()
            if one_at_a_time:
                self._wait(lambda: client.llen(key) > i, deadline, "bare chains")
        self._wait(lambda: client.llen(key) >= count, deadline, "bare chains")
        elapsed = time.perf_counter() - started
        latencies = [float(v) for v in client.lrange(key, 0, -1)]
        client.delete(key)
        return elapsed, latencies

    def _run_sagas(self, count: int, timeout: float, *, fail: bool, one_at_a_time: bool = False):
        expected = SagaStatus.COMPENSATED if fail else SagaStatus.SUCCEEDED
        deadline = time.monotonic() + timeout
        started = time.perf_counter()
        ids = []
        for i in range(count):
            ids.append(start_saga(BENCH_SAGA, input={"i": i, "fail": fail}).id)
            self.created.append(ids[-1])
            if one_at_a_time:
                self._wait(lambda: self._finished(ids[-1:]) == 1, deadline, "sagas")
        self._wait(lambda: self._finished(ids) == count, deadline, "sagas")
        elapsed = time.perf_counter() - started
        finished = SagaInstance.objects.filter(id__in=ids)
        wrong = finished.exclude(status=expected).count()
        if wrong:
            raise CommandError(f"{wrong} benchmark sagas did not end {expected}")
        latencies = [(s.finished_at - s.created_at).total_seconds() for s in finished.only("created_at", "finished_at")]
        return elapsed, latencies

    @staticmethod
    def _finished(ids) -> int:
        return SagaInstance.objects.filter(id__in=ids, status__in=FINAL_SAGA_STATUSES).count()

    @staticmethod
    def _wait(predicate, deadline: float, what: str) -> None:
        while not predicate():
            if time.monotonic() > deadline:
                raise CommandError(f"{what} did not finish in time")
            time.sleep(0.005)

    # --- report --------------------------------------------------------------------

    def _report(self, burst, single) -> None:
        self.stdout.write("")
        self.stdout.write("Throughput: all started at once")
        self.stdout.write(f"  {'mode':<20} {'n':>5} {'wall s':>8} {'per s':>8}")
        rates = {}
        for label, elapsed, latencies in burst:
            rates[label] = len(latencies) / elapsed
            self.stdout.write(f"  {label:<20} {len(latencies):>5} {elapsed:>8.2f} {rates[label]:>8.1f}")
        self.stdout.write("Latency: one at a time, start to finish")
        self.stdout.write(f"  {'mode':<20} {'n':>5} {'p50 ms':>8} {'p95 ms':>8}")
        medians = {}
        for label, _elapsed, latencies in single:
            medians[label] = percentile(latencies, 0.5) * 1000
            p95 = percentile(latencies, 0.95) * 1000
            self.stdout.write(f"  {label:<20} {len(latencies):>5} {medians[label]:>8.1f} {p95:>8.1f}")
        bare, saga = "bare Celery chain", "saga, succeeds"
        self.stdout.write("")
        self.stdout.write(
            f"orchestrated / bare: throughput x{rates[saga] / rates[bare]:.2f}, "
            f"median latency x{medians[saga] / medians[bare]:.1f}"
        )
