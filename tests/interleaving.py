"""Explore how two engine transitions interleave, one statement boundary at a time, and judge the outcome.

A *schedule* runs transition ``first`` in a thread of its own and stops it just
before its statement number ``k`` (every statement its connection sends,
``BEGIN`` and reads included); transition ``second`` then runs in another
thread to its end, or until it waits on a lock ``first`` holds (it has been
inside one statement for ``blocked_after`` seconds); then ``first`` goes on
and both finish. ``explore`` runs a scenario once per boundary of ``first``,
both ways round, from a fresh saga each time, then settles the saga as
workers and the sweeper would (``settle``) and checks the invariants that
define correctness (``problems``).

A blocked ``second`` is told apart by time, on both databases: a schedule in
which a slow statement is taken for a wait explores a neighbouring schedule
instead, never a wrong one, so no judgement depends on the threshold.

Everything runs in this process (threads, one connection each): it needs a
database shared across connections (``transactional_db``) and the ``sent``
fixture, which records what the engine sends instead of sending it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from django.db import connection, connections
from django.db.models.functions import Now

from sagas import engine
from sagas.chaos import effect_problems
from sagas.engine import Claim, Decision, Outcome
from sagas.invariants import saga_problems
from sagas.models import (
    FINAL_SAGA_STATUSES,
    ChaosEffect,
    EventKind,
    SagaInstance,
    SagaStatus,
    StepRecord,
    StepStatus,
)

BLOCKED_AFTER = 0.25
LIMIT = 30.0


class _Gate:
    """An execute wrapper that stops its thread before statement number ``boundary`` until ``go``."""

    def __init__(self, boundary: int):
        self.boundary = boundary
        self.count = 0
        self.paused = threading.Event()
        self.go = threading.Event()

    def __call__(self, execute, sql, params, many, context):
        if self.count == self.boundary:
            self.paused.set()
            self.go.wait(LIMIT)
        self.count += 1
        return execute(sql, params, many, context)


class _Watch:
    """An execute wrapper noting since when its thread is inside a statement (None: it is not)."""

    def __init__(self):
        self.since: float | None = None
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.since = time.monotonic()
        self.count += 1
        try:
            return execute(sql, params, many, context)
        finally:
            self.since = None


def _in_thread(fn: Callable[[], Any], wrapper, out: dict, key: str) -> threading.Thread:
    def run():
        try:
            with connection.execute_wrapper(wrapper):
                out[key] = fn()
        except BaseException as exc:  # noqa: BLE001 - what it raised is part of the outcome
            out[key] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@dataclass
class Run:
    """One schedule's outcome: whether ``first`` reached the boundary, and what each transition returned."""

    boundary: int
    reached: bool
    second_blocked: bool
    first: Any = None
    second: Any = None


def run_pair(first: Callable[[], Any], second: Callable[[], Any], boundary: int, *,
             blocked_after: float = BLOCKED_AFTER) -> Run:
    """``first`` stopped before its statement ``boundary``, ``second`` run meanwhile, then ``first`` resumed."""
    out: dict = {}
    gate = _Gate(boundary)
    one = _in_thread(first, gate, out, "first")
    while not gate.paused.is_set() and one.is_alive():
        gate.paused.wait(0.005)
    watch = _Watch()
    two = _in_thread(second, watch, out, "second")
    blocked = False
    deadline = time.monotonic() + LIMIT
    while two.is_alive():
        two.join(0.005)
        since = watch.since
        if since is not None and time.monotonic() - since > blocked_after:
            blocked = True  # it waits for a lock ``first`` holds: let ``first`` go on
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"the second transition did not finish in {LIMIT}s")
    gate.go.set()
    one.join(LIMIT)
    two.join(LIMIT)
    if one.is_alive() or two.is_alive():
        raise AssertionError(f"a transition did not finish in {LIMIT}s (deadlock?) at boundary {boundary}")
    return Run(boundary, gate.paused.is_set(), blocked, out.get("first"), out.get("second"))


# --- settling a saga as workers and the sweeper would --------------------------------------------


@dataclass
class Ledger:
    """What the settling saw: joins sent per stage start, and every delivery's outcome."""

    joins: dict[int, int] = field(default_factory=dict)
    outcomes: list = field(default_factory=list)


def deliver_forward(saga_id, from_index: int, definition, ledger: Ledger, *, named: bool = True) -> None:
    """A forward chain from ``from_index``, as ``canvas.forward_chain`` builds it, run by one worker."""
    stage = definition.stage_of(from_index)
    for indices in definition.stages[stage:]:
        members = [i for i in indices if i >= from_index]
        if definition.is_parallel(indices[0]):
            for index in members:
                deliver_step(saga_id, index, definition, ledger, named=named)
            return
        if deliver_step(saga_id, indices[0], definition, ledger, named=named) is not Decision.CONTINUE:
            return


def _names(definition, named: bool) -> dict:
    return {"saga_type": definition.name, "version": definition.version} if named else {}


def _with_retries(run: Callable[[], Outcome], kind: str, index: int, ledger: Ledger) -> Outcome:
    """One task: ``run`` again while it answers RETRY (its countdown waited), as Celery would."""
    for _ in range(20):
        outcome = run()
        ledger.outcomes.append((kind, index, outcome.decision, outcome.reason))
        if outcome.decision is not Decision.RETRY:
            return outcome
        time.sleep(min(outcome.countdown, 0.3))
    raise AssertionError(f"{kind} {index} retried 20 times")


def deliver_step(saga_id, index: int, definition, ledger: Ledger, *, named: bool = True):
    """One run_step task, with its retries and its error callback."""
    names = _names(definition, named)
    outcome = _with_retries(lambda: engine.execute_step(saga_id, index, **names), "step", index, ledger)
    if outcome.decision is Decision.FAILED:
        engine.begin_compensation(saga_id, reason="error callback")
    return outcome.decision


def deliver_compensations(saga_id, indices: list[int], definition, ledger: Ledger, *, named: bool = True) -> None:
    """A compensation chain: each compensate_step task with its retries; the chain stops at one that does not go on."""
    names = _names(definition, named)
    for index in indices:
        outcome = _with_retries(lambda: engine.execute_compensation(saga_id, index, **names), "compensation",
                                index, ledger)
        if outcome.decision is not Decision.CONTINUE:
            return


def deliver(sent: list, saga_id, definition, ledger: Ledger, *, named: bool = True) -> None:
    """Deliver every message the engine sent for the saga (and those they send), oldest first."""
    while True:
        mine = [m for m in sent if str(m[1]) == str(saga_id)]
        if not mine:
            return
        message = mine[0]
        sent.remove(message)
        kind, _, what = message
        if kind == "forward":
            if what and definition.stage_of(what) > 0 and definition.is_parallel(what - 1):
                ledger.joins[what] = ledger.joins.get(what, 0) + 1
            deliver_forward(saga_id, what, definition, ledger, named=named)
        elif kind == "steps":
            for index in what:
                deliver_step(saga_id, index, definition, ledger, named=named)
        elif kind == "compensate":
            deliver_compensations(saga_id, what, definition, ledger, named=named)
        elif kind == "late":
            index, attempt, result = what
            engine.compensate_late_success(saga_id, index, attempt, result)


def lose_attempts(saga_id) -> None:
    """Attempts claimed by a transition that then stopped (a worker that died): their leases run out."""
    StepRecord.objects.filter(saga_id=saga_id, lease_expires_at__isnull=False).update(
        lease_expires_at=Now())


def settle(saga_id, sent: list, definition, ledger: Ledger | None = None, *, named: bool = True,
           rounds: int = 12) -> SagaInstance:
    """Deliver what was sent; when nothing moves the saga any more, let held attempts be lost and sweep."""
    ledger = ledger if ledger is not None else Ledger()
    for _ in range(rounds):
        deliver(sent, saga_id, definition, ledger, named=named)
        saga = SagaInstance.objects.get(pk=saga_id)
        if saga.status in FINAL_SAGA_STATUSES:
            return saga
        waiting = StepRecord.objects.filter(saga_id=saga_id, status=StepStatus.WAITING)
        if waiting.exists() and not sent:
            return saga  # a person or another system moves it on
        lose_attempts(saga_id)
        time.sleep(0.01)  # the database's clock passes the leases just ended
        SagaInstance.objects.filter(pk=saga_id, due_at__isnull=False).update(due_at=Now())
        engine.sweep()
    return SagaInstance.objects.get(pk=saga_id)


# --- what must hold ----------------------------------------------------------------------------------


def problems(saga_id, ledger: Ledger | None = None, *, must_finish: bool = True) -> list[str]:
    """Every invariant the saga breaks once settled (empty when none)."""
    saga = SagaInstance.objects.get(pk=saga_id)
    steps = list(saga.steps.all())
    found = []
    if must_finish and saga.status not in FINAL_SAGA_STATUSES:
        found.append(f"not finished: {saga.status}, steps {[(s.name, s.status) for s in steps]}")
    if saga.status in FINAL_SAGA_STATUSES:
        found += saga_problems(saga)
        held = [s.name for s in steps if s.lease_expires_at or s.held_by]
        if held or saga.due_at is not None:
            found.append(f"finished but {held or 'the saga'} still holds a lease or due time")
        effects = {e.step: e for e in ChaosEffect.objects.filter(saga_id=saga.pk)}
        found += [p.text for p in effect_problems(saga, effects)]
    skipped = [s.name for s in steps if s.status == StepStatus.SKIPPED and s.attempts]
    if skipped:
        found.append(f"skipped after an attempt: {skipped}")
    if saga.cancel_requested_at and saga.status == SagaStatus.SUCCEEDED:
        found.append("succeeded after an accepted cancel")
    if saga.cancel_requested_at and not saga.events.filter(kind=EventKind.CANCEL_REQUESTED).exists():
        found.append("cancel recorded without its event")
    if ledger is not None:
        resent = saga.events.filter(kind=EventKind.SAGA_RESUMED).exists()
        doubled = {stage: n for stage, n in ledger.joins.items() if n > 1}
        if doubled and not resent:
            found.append(f"a Parallel joined more than once: {doubled}")
    return found


def rows(saga_id) -> dict:
    """What a differential check compares: the saga's and its steps' final state, times and its id left out."""
    import json

    saga = SagaInstance.objects.get(pk=saga_id)
    found = {
        "status": saga.status,
        "results": saga.results,
        "steps": [(s.name, s.status, s.attempts, s.compensation_attempts, s.result, s.may_have_effects)
                  for s in saga.steps.all()],
        "effects": sorted((e.step, e.applied, e.undone_at is not None)
                          for e in ChaosEffect.objects.filter(saga_id=saga_id)),
    }
    return json.loads(json.dumps(found, default=str).replace(str(saga_id), "<saga>"))


@dataclass
class Scenario:
    """A saga brought to a state, and two transitions to interleave from it."""

    name: str
    # (the ``sent`` list) -> the saga's id, in the state the transitions start from; it may leave messages
    # in ``sent`` that were on their way then (delivered once the pair has run).
    prepare: Callable[[list], Any]
    first: Callable[[Any], Callable[[], Any]]  # saga id -> the transition
    second: Callable[[Any], Callable[[], Any]]


def explore(scenario: Scenario, sent: list, definition, *, named: bool = True, max_boundaries: int = 60,
            check: Callable[[Any, Run], list[str]] | None = None) -> list[tuple[str, int, list[str]]]:
    """Every boundary of ``first`` with ``second`` run there, and the other way round: the failures found."""
    failures = []
    for order in ("first-then-second", "second-then-first"):
        for boundary in range(max_boundaries):
            sent.clear()
            saga_id = scenario.prepare(sent)
            one, two = scenario.first(saga_id), scenario.second(saga_id)
            if order == "second-then-first":
                one, two = two, one
            run = run_pair(one, two, boundary)
            ledger = Ledger()
            for outcome in (run.first, run.second):
                if isinstance(outcome, BaseException) and not _expected(outcome):
                    failures.append((order, boundary, [f"raised {type(outcome).__name__}: {outcome}"]))
            settle(saga_id, sent, definition, ledger, named=named)
            found = problems(saga_id, ledger) + (check(saga_id, run) if check else [])
            if found:
                failures.append((order, boundary, found))
            if not run.reached:
                break  # ``first`` ended before this boundary: every schedule was tried
    return failures


def _expected(exc: BaseException) -> bool:
    """What a transition may refuse with: a move the state machine does not allow."""
    from sagas.errors import InvalidTransition

    return isinstance(exc, InvalidTransition)


def claimed(outcome: Any) -> bool:
    return isinstance(outcome, Claim)


def stopped(outcome: Any) -> bool:
    return isinstance(outcome, Outcome) and outcome.decision is Decision.STOP
