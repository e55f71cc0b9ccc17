"""What every phase of the engine shares: the state machine, the saga's lock, events and clocks.

A transition happens inside ``locked_saga``: one statement reads the saga's
step records with the saga's row, locks that row (on SQLite the IMMEDIATE
transaction takes the database's write lock) and reads the database's clock
(``saga.db_now``: leases, retry times and deadlines never come from a
process's own clock). The caller moves the saga and its steps; at the end the
transition's events go in one INSERT and the saga's changed fields, if any,
in one UPDATE. Every writer takes the saga's lock first, so step rows need no
lock of their own.

What each transition costs is what ``tests/unit/test_engine_cost.py`` pins.
"""
from __future__ import annotations

import enum
import hashlib
import logging
import math
import secrets
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import Q, Subquery
from django.db.models.functions import Now

from .. import alerts, canvas, liveness
from . import sql
from ..canvas import hard_time_limit
from ..definitions import Saga, Step, StepContext, registry
from ..errors import InvalidTransition, PermanentError, SagaDefinitionError, UnknownSagaType
from ..models import (
    ACTIVE_SAGA_STATUSES,
    EventKind,
    SagaEvent,
    SagaInstance,
    SagaStatus,
    StepRecord,
    StepStatus,
    results_of,
)

logger = logging.getLogger("sagas.engine")

# --- the state machine ------------------------------------------------------------

SAGA_MOVES: dict[str, set[str]] = {
    SagaStatus.PENDING: {SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.PAUSED},
    SagaStatus.RUNNING: {SagaStatus.SUCCEEDED, SagaStatus.COMPENSATING, SagaStatus.PAUSED},
    SagaStatus.COMPENSATING: {SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.PAUSED},
    # A paused saga goes back to where it was paused from (``resume``), or, before its pivot, is
    # undone (``cancel``).
    SagaStatus.PAUSED: {SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING},
    SagaStatus.FAILED: {SagaStatus.COMPENSATING},
    # A child saga its parent undoes as a whole (a move only its parent makes: ``PARENT_ONLY_MOVES``).
    SagaStatus.SUCCEEDED: {SagaStatus.COMPENSATING},
    SagaStatus.COMPENSATED: set(),
}

# Moves of a child saga that only its parent's transitions make (``move_saga(..., by_parent=True)``):
# a succeeded saga is final for everyone else.
PARENT_ONLY_MOVES: set[tuple[str, str]] = {(SagaStatus.SUCCEEDED, SagaStatus.COMPENSATING)}

STEP_MOVES: dict[str, set[str]] = {
    StepStatus.PENDING: {StepStatus.RUNNING, StepStatus.SKIPPED},
    # running -> running: a new attempt after a failed or lost one.
    StepStatus.RUNNING: {StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.WAITING},
    # A waiting step ends by a signal (succeeded or failed), a timeout or its saga's undoing (failed).
    StepStatus.WAITING: {StepStatus.SUCCEEDED, StepStatus.FAILED},
    StepStatus.SUCCEEDED: {StepStatus.COMPENSATING},
    StepStatus.COMPENSATING: {StepStatus.COMPENSATING, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED},
    StepStatus.COMPENSATION_FAILED: {StepStatus.COMPENSATING},
    # Only a failed step that may have applied effects (``may_have_effects``) is compensated. A step
    # after the pivot that failed for good is run again (``resume``: running) or done by hand
    # (``skip_step``: skipped) by a person.
    StepStatus.FAILED: {StepStatus.COMPENSATING, StepStatus.RUNNING, StepStatus.SKIPPED},
    StepStatus.COMPENSATED: set(),
    StepStatus.SKIPPED: set(),
}


def can_move_saga(current: str, target: str, *, by_parent: bool = False) -> bool:
    """Whether a saga may move from ``current`` to ``target``; ``by_parent``: its parent saga moves it."""
    if (current, target) in PARENT_ONLY_MOVES and not by_parent:
        return False
    return target in SAGA_MOVES.get(current, set())


def can_move_step(current: str, target: str) -> bool:
    return target in STEP_MOVES.get(current, set())


# --- decisions handed back to the tasks ----------------------------------------------


class Decision(enum.Enum):
    CONTINUE = "continue"  # the step is done: let the chain go on
    RETRY = "retry"  # run again after ``countdown`` seconds
    FAILED = "failed"  # failed for good: the error callback must run
    STOP = "stop"  # nothing for this message to do (saga finished, duplicate, out of order)


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    countdown: float = 0.0
    reason: str = ""
    # A RETRY for a passing infrastructure problem (the attempt rolled back, not counted): the task
    # counts it with its infrastructure retries, not the step's.
    infrastructure: bool = False


@dataclass(frozen=True)
class Claim:
    """An attempt this process holds: what its action or compensation runs with."""

    saga_id: uuid.UUID
    index: int
    attempt: int
    step: Step
    context: StepContext
    definition: Saga
    # A forward attempt: when it began (its ``step_started`` event is written with its end).
    began_at: datetime | None = None


@dataclass(frozen=True)
class Report:
    """How an attempt ended, as carried to the transaction that records it.

    A report that could not be recorded (the database went away, the soft time
    limit fired while waiting for the saga's lock) travels in the task's retry
    message, so the record is retried without running the action again.
    """

    attempt: int
    ok: bool
    result: Any = None
    error: str = ""
    timeout: bool = False
    permanent: bool = False
    # Failed, but the action may have applied effects: compensate it when the saga is undone.
    effects: bool = False
    # A waiting step's action returned ``SkipWait``: it succeeds without waiting.
    skip_wait: bool = False
    # A transactional attempt rolled back by a passing database error: nothing of it stays, and it
    # uses none of the step's attempts.
    infrastructure: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


class ReportPending(Exception):
    """An attempt's report could not be recorded for a reason that passes (the task retries the record)."""

    def __init__(self, report: Report, cause: BaseException):
        self.report = report
        self.cause = cause
        super().__init__(f"attempt {report.attempt} not recorded yet: {cause}")


class UnstorableResult(PermanentError):
    """An action returned a value the database cannot store faithfully."""


# --- the saga's lock ------------------------------------------------------------------

_SAVED = ("status", "error", "results", "started_at", "finished_at", "cancel_requested_at", "due_at", "sweeps",
          "paused_from", "pause_cause")


class SagaBusy(Exception):
    """Another transaction holds the saga's lock, and the caller asked not to wait (``nowait``)."""


@contextmanager
def locked_saga(saga_id, *, step: int | None = None, undoing: int | None = None,
                nowait: bool = False) -> Iterator[SagaInstance | None]:
    """The saga's row, locked, with ``db_now`` and its step records; written back in two statements at most.

    With ``step``, only that step's record and those of the earlier stages
    are read (what a forward step needs, whatever the size of a Parallel it
    belongs to); with ``undoing``, every record but those of the step's
    ``Parallel`` siblings (a compensation needs the later stages, and to know
    whether anything is left to undo). ``steps_of`` reads the rest if a
    transition needs them. ``nowait`` (every record is read): on
    PostgreSQL, ``SagaBusy`` at once if another transaction holds them (the
    sweeper moves on to the next saga rather than wait).
    """
    with transaction.atomic():
        # Every row read is locked (on PostgreSQL FOR UPDATE of both tables): a
        # transaction that waited for the lock then reads each row as the one
        # before it left it, not as it was when this statement began.
        if step is not None:
            records = _LOCKED_UP_TO(saga_id=saga_id, step=step, first=0)
        elif undoing is not None:
            records = _LOCKED_BUT_SIBLINGS(saga_id=saga_id, step=undoing, first=0)
        elif nowait and connection.vendor == "postgresql":
            try:
                records = _LOCKED_ALL_NOWAIT(saga_id=saga_id)
            except OperationalError as exc:
                if getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                    raise SagaBusy(f"saga {saga_id} is locked by another transaction") from exc
                raise
        else:
            records = _LOCKED_ALL(saga_id=saga_id)
        saga = _as_saga(records, complete=step is None and undoing is None)
        if saga is None:
            yield None
            return
        before = [getattr(saga, name) for name in _SAVED]
        yield saga
        if saga.status == SagaStatus.PAUSED:
            saga.due_at = None  # nothing is due: whatever happened while paused waits for ``resume``
        sql.insert_rows(saga.pending_events)
        changed = [name for name, old in zip(_SAVED, before) if getattr(saga, name) != old]
        if changed:
            sql.update_fields(saga, changed, updated_at=saga.db_now)


def read_saga(saga_id, *, step: int) -> SagaInstance | None:
    """As ``locked_saga(saga_id, step=step)`` reads it, but unlocked and outside any transaction.

    For a claim made by conditional UPDATEs (``save_step_if_unchanged``,
    ``save_saga_if_unchanged``): nothing read here is written back otherwise.
    """
    saga = _as_saga(_READ_UP_TO(saga_id=saga_id, step=step, first=0), complete=False)
    if saga is not None:
        saga.read_as = [getattr(saga, name) for name in _SAVED]  # see save_saga_if_unchanged
    return saga


def _as_saga(records: list[StepRecord], *, complete: bool) -> SagaInstance | None:
    if not records:  # every saga has steps: no rows, no saga
        return None
    saga = records[0].saga
    saga.db_now = records[0].db_now
    for record in records:
        record.saga = saga
        record.loaded = _values(record)
    saga.records = records
    saga.complete = complete
    saga.pending_events = []
    return saga


def _steps_with_saga(saga_id, *, lock: bool = True, nowait: bool = False):
    rows = StepRecord.objects.select_related("saga").annotate(db_now=Now()).filter(saga_id=saga_id).order_by("index")
    return rows.select_for_update(nowait=nowait) if lock else rows


def _own_stage(saga_id, step):
    return StepRecord.objects.filter(saga_id=saga_id, index=step).order_by().values("stage")[:1]


# The first step's row is always among those read (and locked first, rows being locked in index order):
# every transition under the saga's lock, and every one-statement transition that must not interleave
# with one, takes it first, so two of them never each wait for the other (a member of a first-stage
# Parallel included).


# (``first`` is that index, 0: a prepared read's values are all keywords.)


def _steps_up_to(saga_id, step, first, *, lock: bool = True):
    return _steps_with_saga(saga_id, lock=lock).filter(
        Q(index=step) | Q(index=first) | Q(stage__lt=Subquery(_own_stage(saga_id, step))))


def _steps_but_siblings(saga_id, step, first):
    return _steps_with_saga(saga_id).filter(
        Q(index=step) | Q(index=first) | ~Q(stage=Subquery(_own_stage(saga_id, step))))


# The read of a transition: all the saga's steps, or one step's and its earlier stages'.
_LOCKED_ALL = sql.PreparedRead(_steps_with_saga, saga_id=uuid.UUID)
_LOCKED_ALL_NOWAIT = sql.PreparedRead(lambda saga_id: _steps_with_saga(saga_id, nowait=True), saga_id=uuid.UUID)
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a NOWAIT lock that is held
_LOCKED_UP_TO = sql.PreparedRead(_steps_up_to, saga_id=uuid.UUID, step=int, first=int)
_LOCKED_BUT_SIBLINGS = sql.PreparedRead(_steps_but_siblings, saga_id=uuid.UUID, step=int, first=int)
_READ_UP_TO = sql.PreparedRead(lambda saga_id, step, first: _steps_up_to(saga_id, step, first, lock=False),
                               saga_id=uuid.UUID, step=int, first=int)


_STEP_FIELDS = [f.attname for f in StepRecord._meta.concrete_fields if not f.primary_key]


def _values(record: StepRecord) -> dict:
    return {name: getattr(record, name) for name in _STEP_FIELDS}


def save_step(record: StepRecord) -> None:
    """Write the fields of ``record`` this transition changed (one UPDATE, none if nothing changed)."""
    now = _values(record)
    changed = [name for name, value in now.items() if value != record.loaded[name]]
    if changed:
        sql.update_fields(record, changed)
        record.loaded = now


def save_step_if_unchanged(record: StepRecord, *, expect: tuple[str, ...], saga_status: str) -> bool:
    """Write the fields of ``record`` changed since it was read, only if the ``expect`` fields still hold
    the values read and its saga's status is ``saga_status``: one conditional UPDATE, with no lock taken
    before. True if it was written.
    """
    now = _values(record)
    changed = [name for name, value in now.items() if value != record.loaded[name]]
    written = sql.update_fields(record, changed, expect={name: record.loaded[name] for name in expect},
                                parent_has=("saga", "status", saga_status))
    if written:
        record.loaded = now
    return bool(written)


def steps_of(saga: SagaInstance) -> list[StepRecord]:
    """Every step record of the saga, by index (those ``locked_saga`` read, as this transition left them)."""
    if not saga.complete and len(saga.records) == len(definition_of(saga).steps):
        saga.complete = True  # the last stage's step read them all
    if not saga.complete:
        # Locked too: a claim of one of these steps (a Parallel sibling's,
        # which takes no lock of the saga's) either committed before, and is
        # read here, or waits for this transition and then finds the row it
        # left (skipped, say) and changes nothing. Read unlocked, a claim
        # committed meanwhile would be overwritten by this transition's write.
        have = {r.index for r in saga.records}
        rest = list(StepRecord.objects.select_for_update().filter(saga_id=saga.pk).exclude(index__in=have)
                    .order_by("index"))
        for record in rest:
            record.saga = saga
            record.loaded = _values(record)
        saga.records = sorted([*saga.records, *rest], key=lambda r: r.index)
        saga.complete = True
    return saga.records


def hold_for_person(saga_id, error: str) -> None:
    """Hold an active saga for a person: nothing moves it (``due_at`` empty) until ``release_held``.

    For what no retry can mend (a version no longer registered, a definition
    whose steps changed under the same version): the error says why, in the
    saga's error and a ``saga_stuck`` event.
    """
    with locked_saga(saga_id) as saga:
        if saga is None or saga.status not in ACTIVE_SAGA_STATUSES or saga.status == SagaStatus.PAUSED:
            return
        saga.error = error
        saga.due_at = None
        event(saga, EventKind.SAGA_STUCK, error=error,
              note="held for a person: fix the cause, then release it to the sweeper")


def saga_id_of(saga: SagaInstance | uuid.UUID | str):
    """The id of a saga given as an instance or as its id (what the public functions accept)."""
    return saga.pk if isinstance(saga, SagaInstance) else saga


def no_such_saga(saga) -> SagaInstance.DoesNotExist:
    return SagaInstance.DoesNotExist(f"no saga {saga_id_of(saga)}")


def record_at(saga: SagaInstance, index: int) -> StepRecord:
    return next(r for r in saga.records if r.index == index)


def event(saga: SagaInstance, kind: str, step: StepRecord | None = None, *, at: datetime | None = None,
          **detail: Any) -> SagaEvent:
    """Record a transition (at ``saga.db_now``, or ``at``); written with the transition's other events."""
    saga.sweeps = 0  # something happened: the sweeper's backoff starts again
    recorded = SagaEvent(saga=saga, step=step, kind=kind, detail=detail, created_at=at or saga.db_now)
    saga.pending_events.append(recorded)
    return recorded


def log_attempt_start(saga: SagaInstance, record: StepRecord) -> None:
    """The ``step_started`` event of the attempt now ending, dated when it began.

    A claim writes only the step's row (``attempt_started_at``); the
    transition that ends the attempt, its report or its loss, writes the
    event and clears the time, so it is written once. (Attempts claimed
    before this field existed wrote their event when claimed.)
    """
    if record.attempt_started_at is None:
        return
    event(saga, EventKind.STEP_STARTED, step=record, at=record.attempt_started_at, **started_detail(record.attempts))
    record.attempt_started_at = None


def lose_attempt(saga: SagaInstance, record: StepRecord, **detail: Any) -> None:
    """The attempt holding forward step ``record`` never reported (its worker died, or it was killed).

    Its action may have applied effects, whatever happens next: the step is
    compensated if its saga is undone, even when a later attempt of it fails
    without effects (a later success makes its output known, and clears it).
    """
    log_attempt_start(saga, record)
    record.may_have_effects = True
    event(saga, EventKind.STEP_ATTEMPT_LOST, step=record, attempt=record.attempts, **detail)


def started_detail(attempt: int) -> dict:
    """The detail of an attempt's ``step_started`` event."""
    previous = StepStatus.PENDING if attempt == 1 else StepStatus.RUNNING
    return {"attempt": attempt, "from": previous, "to": StepStatus.RUNNING}


def move_saga(saga: SagaInstance, target: str, kind: str, *, by_parent: bool = False, **detail: Any) -> None:
    """Move the saga to ``target`` with its event. ``by_parent``: a move its parent saga makes of it
    (``PARENT_ONLY_MOVES``), refused for a saga that has none. A child that ends (succeeded,
    compensated, failed) has its parent told once this commits (``notify_parent``)."""
    if by_parent and saga.parent_id is None:
        raise InvalidTransition(f"saga {saga.id} has no parent: only a parent saga may move it to {target}")
    if not can_move_saga(saga.status, target, by_parent=by_parent):
        raise InvalidTransition(f"saga {saga.id} cannot move from {saga.status} to {target}")
    previous = saga.status
    if saga.metrics_folded:  # a finished saga moves again: /metrics counts it live until it ends
        from ..metrics.totals import unfold

        unfold(saga, status=previous)
    saga.status = target
    if target == SagaStatus.RUNNING and saga.started_at is None:
        saga.started_at = saga.db_now
    if target in (SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED):
        saga.finished_at = saga.db_now
        saga.due_at = None
        saga.results = results_of(steps_of(saga))  # the steps hold them while the saga runs
    elif target == SagaStatus.COMPENSATING:
        saga.finished_at = None
    if target == SagaStatus.PAUSED:
        saga.paused_from = previous  # where ``resume`` goes back to
        saga.due_at = None
    elif previous == SagaStatus.PAUSED:
        saga.paused_from = saga.pause_cause = ""
    event(saga, kind, **{"from": previous, "to": target, **detail})
    if target == SagaStatus.FAILED:
        alerts.saga_failed(saga)  # a person must act: logged and mailed once this commits
    if target in (SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED):
        notify_parent(saga)


def notify_parent(saga: SagaInstance) -> None:
    """A child saga ended: once this commits, a message moves its parent (``children.child_ended``).

    Sent, not done here: the parent's lock is taken before its children's
    (cancel and pause go down the tree), never after. A message lost is made
    good by the sweeper, which looks at a waiting parent every stall time.
    """
    if saga.parent_id is not None:
        send_after_commit(canvas.dispatch_child_ended, saga.parent_id, saga.id)


def save_saga_if_unchanged(saga: SagaInstance, *, status: str) -> bool:
    """Write what changed on a saga read without its lock (``read_saga``), only if its status is still ``status``.

    One conditional UPDATE of the saga's row (none if nothing changed), then
    its events, outside any transaction. True if written.
    """
    changed = [name for name, old in zip(_SAVED, saga.read_as) if getattr(saga, name) != old]
    if changed and not sql.update_fields(saga, changed, expect={"status": status}, updated_at=saga.db_now):
        return False
    sql.insert_rows(saga.pending_events)
    saga.pending_events = []
    return True


def move_step(saga: SagaInstance, step: StepRecord, target: str, kind: str, **detail: Any) -> None:
    if not can_move_step(step.status, target):
        raise InvalidTransition(f"step {step.name} of saga {saga.id} cannot move from {step.status} to {target}")
    previous = step.status
    step.status = target
    save_step(step)
    event(saga, kind, step=step, **moved_detail(previous, target, **detail))


def is_user(by: Any) -> bool:
    return hasattr(by, "has_perm") and hasattr(by, "get_username")


def actor(by: Any) -> dict:
    """Who made a move, as its event records it: a user's username and id (``by``, ``by_user_id``), a
    name (``token``, a command's), or nothing for code that passes no one."""
    if is_user(by):
        return {"by": by.get_username(), "by_user_id": by.pk}
    if by is None:
        return {}
    return {"by": str(by)[:200]}


def moved_detail(previous: str, target: str, **detail: Any) -> dict:
    """The detail of a step's move from ``previous`` to ``target``."""
    return {"from": previous, "to": target, **detail}


def loggable(claim: Claim, exc: BaseException) -> str:
    """An attempt's error as a log line may show it: the saga's sensitive input values masked."""
    from ..access import masked_text

    return masked_text(str(exc), claim.definition.name, claim.context.input)


def describe_error(exc: BaseException) -> str:
    """An exception as its step's error: its type and text, made storable on every database.

    A NUL character (PostgreSQL refuses it in text) and a lone surrogate
    (not UTF-8) are written as escapes: an action's error is data, and one
    the database refuses would leave its step unrecorded.
    """
    text = str(exc)
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return storable_text(described)


def storable_text(text: str) -> str:
    """``text`` with what no database stores as given (NUL, lone surrogates) written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


# --- definitions ----------------------------------------------------------------------


def definition_of(saga: SagaInstance, records: list[StepRecord] | None = None) -> Saga:
    """The saga's definition; with records, also checked to be the one it was started with."""
    definition = registry.get(saga.saga_type, saga.version)
    if records is not None and not _same_steps(definition, records, complete=saga.complete):
        raise SagaDefinitionError(
            f"saga {saga.saga_type} v{saga.version} now has steps {[s.name for s in definition.steps]}, "
            f"but this instance was started with {[r.name for r in records]}: register the changed "
            f"definition under a new version"
        )
    return definition


def named_definition(saga_type: str | None, version: int | None) -> Saga | None:
    """The definition a message names (``saga_type`` and ``version`` kwargs), or None: not named, or no
    longer registered. Checked against the stored saga by whoever uses it."""
    if not saga_type or version is None:
        return None
    try:
        return registry.get(saga_type, version)
    except UnknownSagaType:
        return None


def _same_steps(definition: Saga, records: list[StepRecord], *, complete: bool) -> bool:
    if complete and len(records) != len(definition.steps):
        return False
    return all(r.index < len(definition.steps) and definition.steps[r.index].name == r.name for r in records)


# --- clocks: leases, liveness, deadlines ---------------------------------------------------


def lease_length(step: Step, *, compensation: bool = False) -> timedelta:
    # Past the hard limit the pool has killed the attempt; one more grace for
    # the worker to report it.
    return timedelta(seconds=hard_time_limit(step, compensation=compensation) + settings.SAGAS_HARD_TIMEOUT_GRACE)


def lease_until(saga: SagaInstance, step: Step, *, compensation: bool = False) -> datetime:
    return saga.db_now + lease_length(step, compensation=compensation)


def stall_deadline(saga: SagaInstance) -> datetime:
    """When the sweeper should look, if no message moves the saga before."""
    return saga.db_now + stall_length()


def stall_length() -> timedelta:
    """How long after its last transition a saga that stopped moving is due (``stall_deadline``)."""
    return timedelta(seconds=settings.SAGAS_STALL_AFTER)


def dead_holders(records: list[StepRecord], now: datetime) -> set[str]:
    """Holders of live leases among ``records`` known to be dead (a query only when there are any)."""
    holders = {r.held_by for r in records if r.held_by and r.lease_expires_at and r.lease_expires_at > now}
    return liveness.dead_holders(holders, now) if holders else set()


def in_flight(record: StepRecord, now: datetime, dead: set[str]) -> bool:
    """An attempt holds the step: its lease is live and its worker is not known dead."""
    return bool(record.lease_expires_at and record.lease_expires_at > now and record.held_by not in dead)


def is_paused(saga: SagaInstance, *, from_status: str | None = None) -> bool:
    """The saga is paused (and was paused from ``from_status``, if given): what happens is recorded, nothing decided."""
    return saga.status == SagaStatus.PAUSED and (from_status is None or saga.paused_from == from_status)


def goes_forward(saga: SagaInstance) -> bool:
    """The saga runs forward, or would if it were not paused: a step's report is recorded as in a running saga."""
    return saga.status == SagaStatus.RUNNING or is_paused(saga, from_status=SagaStatus.RUNNING) or \
        is_paused(saga, from_status=SagaStatus.PENDING)


def keep_due(saga: SagaInstance) -> None:
    """Keep the saga due between half a stall time and a stall time from now, moving ``due_at`` only
    when it left that range.

    So most transitions of a saga that moves along write nothing to its row;
    one that stops moving is due ``SAGAS_STALL_AFTER`` seconds at most after
    its last transition. (A step running longer makes the sweeper look once,
    find its attempt live, and set the saga due at the attempt's lease; the
    transition that ends the attempt brings that far due time back, so a
    message lost after a long step is resent a stall time later, not when
    the old lease would have ended.) ``due_kept`` is the same condition, for
    the one-statement transitions.
    """
    if not due_kept(saga.due_at, saga.db_now):
        saga.due_at = stall_deadline(saga)


def due_kept(due_at: datetime | None, now: datetime) -> bool:
    """``keep_due`` leaves this due time as it is (``sql.DUE_KEPT`` says the same in SQL)."""
    least, most = due_range()
    return due_at is not None and now + least <= due_at <= now + most


def due_range() -> tuple[timedelta, timedelta]:
    """How far from now a due time ``keep_due`` leaves as it is lies: at least, at most (``sql.DUE_KEPT``)."""
    return due_margin(), stall_length()


def due_margin() -> timedelta:
    """How far from due ``keep_due`` keeps a saga: one due sooner has its ``due_at`` moved."""
    return timedelta(seconds=settings.SAGAS_STALL_AFTER / 2)


def begin_attempt(saga: SagaInstance, record: StepRecord, lease: datetime) -> None:
    """A new attempt of forward step ``record`` holds it until ``lease`` (its event waits: ``log_attempt_start``)."""
    if not can_move_step(record.status, StepStatus.RUNNING):
        raise InvalidTransition(f"step {record.name} of saga {saga.id} cannot move from {record.status} to running")
    record.status = StepStatus.RUNNING
    record.attempts += 1
    record.early_signal = None  # a callback for an earlier attempt's token died with that attempt
    record.started_at = record.started_at or saga.db_now
    record.attempt_started_at = saga.db_now
    hold(record, saga, lease)


def hold(record: StepRecord, saga: SagaInstance, lease: datetime) -> None:
    """Give the step's new attempt to this process until ``lease``."""
    record.lease_expires_at = lease
    record.next_attempt_at = None
    record.held_by = liveness.identity()
    keep_due(saga)


def token_hash(token: str) -> str:
    """What is stored of a signal token: its sha256, so the database never holds a usable token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_signal_token(record: StepRecord) -> str:
    """A fresh, unguessable token for the waiting step's new attempt (its hash goes on the record).

    Each attempt gets its own: a failed attempt's token dies with it.
    """
    token = secrets.token_urlsafe(32)
    record.signal_token_hash = token_hash(token)
    return token


def end_wait(record: StepRecord) -> None:
    """The wait is over (signal, timeout or undoing): its token dies, its deadline no longer counts."""
    record.signal_token_hash = None
    record.signal_deadline = None
    record.early_signal = None


def release(record: StepRecord) -> None:
    record.lease_expires_at = None
    record.next_attempt_at = None
    record.held_by = None


# --- values that go into the database ------------------------------------------------------


def json_problem(value: Any, where: str = "input") -> str | None:
    """Why ``value`` cannot be stored as the same JSON on SQLite and PostgreSQL, or None.

    Keys must be strings, numbers finite, and text valid Unicode free of NUL
    characters (PostgreSQL refuses them; SQLite would keep them).
    """
    if value is None or isinstance(value, bool) or isinstance(value, int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}: {value!r} is not a finite number"
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where}: text must not contain NUL characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where}: text must be valid Unicode (a lone surrogate was found)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where}: keys must be strings, got {key!r}"
            problem = json_problem(key, f"{where} key") or json_problem(item, f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = json_problem(item, f"{where}[{i}]")
            if problem:
                return problem
        return None
    return f"{where}: a {type(value).__name__} is not JSON-serialisable"


# --- sending ----------------------------------------------------------------------------------


def send_after_commit(send: Callable[..., None], saga_id, *args: Any, **kwargs: Any) -> None:
    """Send once the transaction commits; a broker that fails then leaves the saga to the sweeper.

    The transition is committed and the saga's ``due_at`` is set: a send that
    fails after commit is never a reason to fail a task (its error callback
    would compensate a healthy saga) or a request.
    """
    def run() -> None:
        try:
            send(saga_id, *args, **kwargs)
        except Exception as exc:  # the sweeper re-sends from the stored state
            logger.warning("saga %s: could not send %s (%s); the sweeper will send it again",
                           saga_id, getattr(send, "__name__", send), describe_error(exc))

    transaction.on_commit(run)


def dispatch_forward(saga: SagaInstance, from_index: int) -> None:
    send_after_commit(canvas.dispatch_forward, saga.id, from_index, definition=definition_of(saga))


def dispatch_steps(saga: SagaInstance, indices: list[int]) -> None:
    send_after_commit(canvas.dispatch_steps, saga.id, indices, definition=definition_of(saga))


def dispatch_late_compensation(saga: SagaInstance, index: int, attempt: int, result: Any) -> None:
    send_after_commit(canvas.dispatch_late_compensation, saga.id, index, attempt, result,
                      definition=definition_of(saga))


def dispatch_compensation(saga: SagaInstance, indices: list[int]) -> None:
    send_after_commit(canvas.dispatch_compensation, saga.id, indices, definition=definition_of(saga))


# --- moves shared by the phases -----------------------------------------------------------


def fail_record(saga: SagaInstance, record: StepRecord, error: str, *, blame: bool = True, effects: bool = False,
              **detail: Any) -> None:
    """Mark the step failed; with ``blame`` its error also becomes the saga's (not for a sibling stopped later).

    ``effects``: its action may have applied effects, so it is compensated
    when the saga is undone.
    """
    record.error = error
    record.finished_at = saga.db_now
    record.may_have_effects = record.may_have_effects or effects
    release(record)
    if effects:
        detail["may_have_effects"] = True
    move_step(saga, record, StepStatus.FAILED, EventKind.STEP_FAILED, error=error, attempts=record.attempts, **detail)
    if blame:
        saga.error = f"step {record.name} failed: {error}"


def make_claim(saga: SagaInstance, definition: Saga, index: int, attempt: int, *,
               compensated: StepRecord | None = None, signal_token: str | None = None) -> Claim:
    """What the claimed attempt runs with: for a compensation, ``compensated`` is the step's record."""
    earlier = {s.name for s in definition.steps[:definition.stage_indices(index)[0]]}
    undoing = compensated is not None
    return claim_of(
        saga.id, definition, index, attempt, input=saga.input,
        results={k: v for k, v in results_of(saga.records).items() if k in earlier},
        compensation=undoing, output=compensated.result if undoing else None, signal_token=signal_token,
        began_at=None if undoing else record_at(saga, index).attempt_started_at)


def claim_of(saga_id: uuid.UUID, definition: Saga, index: int, attempt: int, *, input: dict, results: dict,
             began_at: datetime | None, compensation: bool = False, output: Any = None,
             signal_token: str | None = None) -> Claim:
    """A claim from its parts: ``results``, the outputs of the earlier stages' steps; for a
    ``compensation``, ``output`` is the step's own (what its compensation undoes)."""
    step = definition.step_at(index)
    key = f"{saga_id}:{step.name}" + (":compensation" if compensation else "")  # see StepContext.action_key
    context = StepContext(
        saga_id=saga_id,
        saga_type=definition.name,
        input=input,
        results=results,
        step=step.name,
        attempt=attempt,
        idempotency_key=key,
        result=output,
        is_compensation=compensation,
        signal_token=signal_token,
    )
    return Claim(saga_id, index, attempt, step, context, definition, began_at)


def used_attempts(record: StepRecord) -> int:
    """The forward attempts its retry policy counts: those since a person last gave it a fresh budget."""
    return record.attempts - record.retry_base


def retry_wait(record: StepRecord, now: datetime) -> float:
    """Seconds until the retry of ``record``, not due yet, is (the message that came early waits so long)."""
    return max((record.next_attempt_at - now).total_seconds(), 0.1)


def retry_is_due(record: StepRecord, now: datetime) -> bool:
    # A retry message may fire a moment before the database's clock says: allow for it.
    return record.next_attempt_at is None or record.next_attempt_at <= now + timedelta(seconds=1)
