"""What the engine costs per step, measured in this process: no broker, no worker, no network hop.

A few sagas run through the engine's own functions, one message at a time,
as the tasks would call them (``execute_step`` with what a step's message
names, then ``execute_compensation``
for each step in the chain the failed step's record sent), with the canvas's dispatch
functions replaced by recorders. Every statement the database receives is
counted (transaction control included: ``BEGIN``, ``COMMIT``, savepoints)
with Django's ``CaptureQueriesContext``.

For a ``Parallel`` stage, the members run one after another and are timed:
the cost of one member at ``M`` members against the cost at a reference
size shows whether a stage costs time linear in its members.
"""
from __future__ import annotations

import logging
import statistics
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator
from unittest import mock

from django.db import connection
from django.test.utils import CaptureQueriesContext

from .. import canvas, engine
from ..definitions import registry
from ..models import SagaInstance
from .workload import saga_name

REFERENCE_MEMBERS = 10


@dataclass
class StatementCounts:
    """Statements the engine sent for one kind of saga, averaged over the sagas run."""

    sagas: int
    steps: int  # step records per saga
    start: float  # start_saga's statements per saga
    forward: float  # per saga: every run_step of it
    compensation: float  # per saga: the error callback and every compensate_step (0 when it succeeds)
    transactions: float  # per saga, start excluded
    by_kind: dict = field(default_factory=dict)  # first keyword -> per saga, start excluded

    @property
    def per_step(self) -> float:
        """Statements per step record, start excluded: forward and compensation work together."""
        return (self.forward + self.compensation) / self.steps

    @property
    def transactions_per_step(self) -> float:
        return self.transactions / self.steps

    def as_dict(self) -> dict:
        return {**asdict(self), "per_step": round(self.per_step, 2),
                "transactions_per_step": round(self.transactions_per_step, 2)}


@dataclass
class MemberCost:
    """The time (and statements) one member of a Parallel stage costs the engine, at ``members`` members."""

    members: int
    ms_per_member: float
    statements_per_member: float
    stage_ms: float


@contextmanager
def recorded_dispatch() -> Iterator[list]:
    """The canvas's sends replaced by a recorder (as tests/conftest.py's ``sent`` fixture does).

    The engine's notes on the benchmark's own failures are silenced meanwhile.
    """
    sent: list = []
    engine_log = logging.getLogger("sagas.engine")
    level = engine_log.level
    engine_log.setLevel(logging.WARNING)
    try:
        with _recorders(sent):
            yield sent
    finally:
        engine_log.setLevel(level)


@contextmanager
def _recorders(sent: list) -> Iterator[None]:
    with mock.patch.object(canvas, "dispatch_forward", lambda saga_id, index=0, **_: sent.append(("forward", index))), \
            mock.patch.object(canvas, "dispatch_steps", lambda saga_id, indices, **_: sent.append(("steps", indices))), \
            mock.patch.object(canvas, "dispatch_compensation",
                              lambda saga_id, indices, **_: sent.append(("compensate", indices))):
        yield


@contextmanager
def captured() -> Iterator[list[str]]:
    """Every statement sent in the block, transaction control included (the SQL, in order).

    Django keeps the last 9,000 statements only: the log is swapped for an
    unbounded one meanwhile, so that a large stage is counted whole.
    """
    statements: list[str] = []
    saved = connection.queries_log
    connection.queries_log = deque()
    try:
        with CaptureQueriesContext(connection) as context:
            yield statements
        statements.extend(q["sql"] for q in context.captured_queries)
    finally:
        connection.queries_log = saved


def _first_word(sql: str) -> str:
    return sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""


def _run_one(name: str, fail: bool, created: list) -> tuple[list[str], list[str], list[str]]:
    """One saga through the engine; the statements of its start, forward steps and compensation."""
    definition = registry.get(name)
    with recorded_dispatch() as sent:
        with captured() as start:
            saga = start_saga_for_bench(name, fail)
        created.append(saga.id)
        with captured() as forward:
            for index in range(len(definition.steps)):
                engine.execute_step(saga.id, index, **_as_named(name))
        with captured() as backward:
            # The failing step's record started the compensation and "sent" its chain.
            for _, indices in [message for message in sent if message[0] == "compensate"]:
                for index in indices:
                    engine.execute_compensation(saga.id, index, **_as_named(name))
    expected = "compensated" if fail else "succeeded"
    status = SagaInstance.objects.values_list("status", flat=True).get(pk=saga.id)
    if status != expected:
        raise RuntimeError(f"in-process benchmark saga {saga.id} ended {status}, not {expected} (sent {sent})")
    return start, forward, backward


def _as_named(name: str) -> dict:
    """What a step's or a compensation's message names besides its saga's id, as its task passes it."""
    return canvas.names_of(registry.get(name))


def start_saga_for_bench(name: str, fail: bool, i: int = 0) -> SagaInstance:
    return engine.start_saga(name, input={"i": i, "fail": fail})


def count_statements(*, steps: int, parallel: int | None, fail: bool, sagas: int, created: list) -> StatementCounts:
    """Run ``sagas`` sagas (after one not counted: imports, caches) and average what they sent."""
    name = saga_name(steps=steps, parallel=parallel)
    _run_one(name, fail, created)
    runs = [_run_one(name, fail, created) for _ in range(sagas)]
    kinds: Counter = Counter()
    for _, forward, backward in runs:
        kinds.update(_first_word(sql) for sql in forward + backward)
    transactions = kinds["BEGIN"]
    return StatementCounts(
        sagas=sagas,
        steps=len(registry.get(name).steps),
        start=statistics.fmean(len(s) for s, _, _ in runs),
        forward=statistics.fmean(len(f) for _, f, _ in runs),
        compensation=statistics.fmean(len(b) for _, _, b in runs),
        transactions=transactions / sagas,
        by_kind={kind: round(n / sagas, 2) for kind, n in sorted(kinds.items())},
    )


def member_cost(members: int, *, repeats: int, created: list) -> MemberCost:
    """Time one Parallel stage of ``members`` members through the engine, member after member (best of ``repeats``).

    Statements are counted in a run of their own, so that capturing them
    does not weigh on the times.
    """
    name = saga_name(parallel=members)
    with recorded_dispatch():
        saga = start_saga_for_bench(name, False)
        created.append(saga.id)
        with captured() as counted:
            for index in range(members):
                engine.execute_step(saga.id, index, **_as_named(name))
        times = []
        for _ in range(repeats):
            saga = start_saga_for_bench(name, False)
            created.append(saga.id)
            began = time.perf_counter()
            for index in range(members):
                engine.execute_step(saga.id, index, **_as_named(name))
            times.append(time.perf_counter() - began)
    best = min(times)
    return MemberCost(members=members, ms_per_member=best / members * 1000,
                      statements_per_member=len(counted) / members, stage_ms=best * 1000)


def parallel_linearity(members: int, *, repeats: int, created: list) -> dict:
    """The cost of a member at ``members`` and at the reference size, and their ratio."""
    at_size = member_cost(members, repeats=repeats, created=created)
    reference = (at_size if members == REFERENCE_MEMBERS
                 else member_cost(REFERENCE_MEMBERS, repeats=repeats, created=created))
    return {
        "members": asdict(at_size),
        "reference": asdict(reference),
        "member_cost_ratio": at_size.ms_per_member / reference.ms_per_member,
    }
