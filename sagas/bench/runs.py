"""Bare Celery and sagas through real workers: throughput, latency and the workers' memory.

Throughput: ``count`` runs started at once (sagas through ``start_saga``, as
an application would, from this process), timed from the first start until
this process sees the last one finished. Latency: runs started one after
another, each once the previous one finished, from the saga's creation (or
the chain's sending) to its end as the worker records it.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable

import psutil
from django.db import transaction
from django.utils import timezone

from ..analytics import percentile
from ..engine import start_saga
from ..metrics import totals
from ..models import ACTIVE_SAGA_STATUSES, SagaInstance, SagaStatus
from .workload import LATENCY_KEY, bare_chain, bare_group, redis_client

CHUNK = 500  # ids per query: SQLite caps the parameters of one statement
BURST_POLL = 0.01  # seconds between looks at a burst (wall times are good to that)


class BenchTimeout(RuntimeError):
    pass


@dataclass
class Run:
    """One mode's figures: ``count`` runs in ``wall_s`` seconds, and their latencies (seconds)."""

    count: int
    wall_s: float
    latencies: list[float]

    @property
    def per_s(self) -> float:
        return self.count / self.wall_s if self.wall_s else 0.0

    def quantile_ms(self, q: float) -> float | None:
        value = percentile(self.latencies, q)
        return None if value is None else value * 1000


def chunks(items: list, size: int = CHUNK):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Deadline:
    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds
        self.seconds = seconds

    def wait(self, done: Callable[[], bool], what: str, *, interval: float = 0.005,
             tick: Callable[[], None] | None = None) -> None:
        """Poll ``done`` every ``interval`` seconds; ``tick`` runs between polls (sampling memory)."""
        while not done():
            if time.monotonic() > self.at:
                raise BenchTimeout(f"{what} did not finish within {self.seconds:g}s")
            if tick:
                tick()
            time.sleep(interval)


# --- the bare side ------------------------------------------------------------------------


def run_bare(count: int, *, steps: int, parallel: int | None, deadline: Deadline, one_at_a_time: bool = False,
             tick: Callable[[], None] | None = None) -> Run:
    run_id = uuid.uuid4().hex
    key = LATENCY_KEY.format(run_id=run_id)
    client = redis_client()
    started = time.perf_counter()
    for i in range(count):
        workflow = bare_group(run_id, i, parallel) if parallel else bare_chain(run_id, i, steps)
        workflow.apply_async()
        if one_at_a_time:
            deadline.wait(lambda: client.llen(key) > i, "bare runs")
    deadline.wait(lambda: client.llen(key) >= count, "bare runs", interval=BURST_POLL, tick=tick)
    elapsed = time.perf_counter() - started
    latencies = [float(v) for v in client.lrange(key, 0, -1)]
    client.delete(key)
    return Run(count, elapsed, latencies)


# --- sagas ----------------------------------------------------------------------------------


def run_sagas(name: str, count: int, *, fail: bool, deadline: Deadline, created: list,
              one_at_a_time: bool = False, tick: Callable[[], None] | None = None) -> Run:
    expected = SagaStatus.COMPENSATED if fail else SagaStatus.SUCCEEDED
    since = timezone.now()
    ids = []
    started = time.perf_counter()
    for i in range(count):
        ids.append(start_saga(name, input={"i": i, "fail": fail}).id)
        created.append(ids[-1])
        if one_at_a_time:
            last = ids[-1]
            deadline.wait(lambda: not SagaInstance.objects.filter(pk=last, status__in=ACTIVE_SAGA_STATUSES).exists(),
                          "sagas")
    # Unfinished sagas of this run, by the status index: cheap however many there are.
    unfinished = SagaInstance.objects.filter(saga_type=name, status__in=ACTIVE_SAGA_STATUSES, created_at__gte=since)
    deadline.wait(lambda: not unfinished.exists(), "sagas", interval=BURST_POLL, tick=tick)
    elapsed = time.perf_counter() - started
    latencies, wrong = [], 0
    for chunk in chunks(ids):
        for status, created_at, finished_at in SagaInstance.objects.filter(pk__in=chunk).values_list(
                "status", "created_at", "finished_at"):
            if status != expected:
                wrong += 1
            elif finished_at is not None:
                latencies.append((finished_at - created_at).total_seconds())
    if wrong:
        raise RuntimeError(f"{wrong} of {count} benchmark sagas did not end {expected}")
    return Run(count, elapsed, latencies)


def delete_sagas(ids: list) -> None:
    for chunk in chunks(ids):
        with transaction.atomic():
            totals.forget(chunk)  # /metrics: their figures go with them
            SagaInstance.objects.filter(pk__in=chunk).delete()


# --- the workers' memory ------------------------------------------------------------------------


class Memory:
    """RSS of every worker process (main and pool children) at named moments, and the highest total seen between.

    ``start`` (after the warm-up) and ``end`` (after the last run) frame the
    run; marks between them tell which phase the memory came with.
    """

    def __init__(self, pids: list[int], every: float = 1.0):
        self.pids, self.every = pids, every
        self.marks: dict[str, dict[int, dict]] = {}
        self.peak_total = 0
        self._last = 0.0

    def sample(self) -> dict[int, dict]:
        found: dict[int, dict] = {}
        for pid in self.pids:
            try:
                main = psutil.Process(pid)
                found[pid] = {"role": "worker", "rss": main.memory_info().rss}
                for child in main.children(recursive=True):
                    found[child.pid] = {"role": f"pool child of {pid}", "rss": child.memory_info().rss}
            except psutil.NoSuchProcess:
                continue
        self.peak_total = max(self.peak_total, self.total(found))
        return found

    def tick(self) -> None:
        """Sample now and then while a phase runs (for the highest total)."""
        if time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            self.sample()

    def mark(self, name: str) -> None:
        self.marks[name] = self.sample()

    @property
    def start(self) -> dict[int, dict]:
        return self.marks.get("start", {})

    @property
    def end(self) -> dict[int, dict]:
        return self.marks.get("end", {})

    @staticmethod
    def total(sample: dict[int, dict]) -> int:
        return sum(p["rss"] for p in sample.values())
