"""Recovery: the sweeper moves on sagas that no message will move.

Every active saga carries ``due_at``, the moment it should have shown a sign
of life by (the database's clock): its attempt's lease, its retry time, or a
stall time after its last transition. Every attempt records which worker
process holds it. A sweep reads only the sagas that are due, and those
whose attempts are held by workers that stopped heartbeating, both through
an index, so its cost does not grow with the number of sagas in flight.

One saga the sweeper cannot move never stops it: a passing database error
postpones that saga; anything else (an unregistered version, a definition
whose steps changed under the same version) is recorded on it, as a
``saga_stuck`` event and its error, and it is held for a person
(``due_at`` empty) until ``release_held``.
"""
from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Iterator

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models.functions import Now

from .. import liveness
from ..models import (
    ACTIVE_SAGA_STATUSES,
    FORWARD_PASSED_STATUSES,
    EventKind,
    SagaInstance,
    SagaStatus,
    StepRecord,
    StepStatus,
    SweeperLease,
    WorkerBeat,
)
from .compensation import (
    compensation_order,
    fail_compensation,
    fail_lost_attempt,
    finish_if_compensated,
    forward_failed,
    start_compensating,
)
from .core import (
    dead_holders,
    definition_of,
    describe_error,
    dispatch_compensation,
    dispatch_forward,
    dispatch_steps,
    event,
    in_flight,
    is_paused,
    SagaBusy,
    hold_for_person,
    locked_saga,
    lose_attempt,
    move_saga,
    release,
    save_step,
    stall_deadline,
    steps_of,
    used_attempts,
)
from . import children
from .running import INFRASTRUCTURE_ERRORS
from .waiting import expire_waits, expired_wait_saga_ids, wait_due

logger = logging.getLogger("sagas.engine")


@dataclass
class SweepReport:
    # Another sweep held the sweeper's lease: this one did nothing.
    skipped: bool = False
    examined: int = 0
    resumed_forward: int = 0
    resumed_compensation: int = 0
    compensation_started: int = 0
    waits_timed_out: int = 0
    postponed: int = 0
    # Sagas another transaction held locked: left for the next sweep, not waited for.
    busy: int = 0
    held: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.resumed_forward + self.resumed_compensation + self.compensation_started


def due_saga_ids(limit: int) -> list:
    """Sagas due now, and sagas with an attempt held by a worker that stopped heartbeating."""
    due = list(SagaInstance.objects.filter(due_at__lte=Now()).order_by("due_at").values_list("id", flat=True)[:limit])
    silent = WorkerBeat.objects.filter(
        beat_at__lt=Now() - timedelta(seconds=settings.SAGAS_WORKER_DEAD_AFTER)).values("id")
    # A saga held for a person (due_at empty) stays held, whoever held its steps.
    orphaned = StepRecord.objects.filter(held_by__in=silent, saga__due_at__isnull=False).values_list(
        "saga_id", flat=True).distinct()[:limit]
    return list(dict.fromkeys([*due, *orphaned]))


SWEEPER = "sweeper"


@contextmanager
def sweeping() -> Iterator[bool]:
    """Hold the sweeper's lease (``SweeperLease``, on the database's clock) while sweeping.

    Yields True if this sweep got it, False if another one runs: then it
    does nothing, so sweeps that beat queued while one was slow never pile
    up, each holding a worker process. A lease whose process is known dead
    (``liveness``: gone from this machine, or silent) is taken over at once;
    a process that hangs holding it keeps it ``SAGAS_SWEEP_LEASE`` seconds
    at most.
    """
    holder = f"{liveness.identity()}#{uuid.uuid4().hex[:8]}"
    until = Now() + timedelta(seconds=settings.SAGAS_SWEEP_LEASE)
    got = bool(SweeperLease.objects.filter(pk=SWEEPER, until__lt=Now()).update(holder=holder, until=until))
    if not got:
        try:
            with transaction.atomic():
                SweeperLease.objects.create(id=SWEEPER, holder=holder, until=until)
            got = True
        except IntegrityError:
            got = _take_over_from_the_dead(holder, until)
    try:
        yield got
    finally:
        if got:  # ended at once (a second back: SQLite's clock reads to the millisecond)
            SweeperLease.objects.filter(pk=SWEEPER, holder=holder).update(until=Now() - timedelta(seconds=1))


def _take_over_from_the_dead(holder: str, until) -> bool:
    """The sweeper's lease is held: take it if its holder's process is known dead (killed mid-sweep)."""
    found = SweeperLease.objects.filter(pk=SWEEPER).annotate(db_now=Now()).values_list("holder", "db_now").first()
    if found is None:
        return False
    held, now = found
    if not liveness.dead_holders({held.split("#")[0]}, now):
        return False  # another sweep runs
    return bool(SweeperLease.objects.filter(pk=SWEEPER, holder=held).update(holder=holder, until=until))


def sweep(*, limit: int = 500) -> SweepReport:
    """Move on every saga that is due: lost messages, dead workers, lost error callbacks, waits past their deadline.

    One sweep at a time (``sweeping``); a saga another transaction holds is
    not waited for (``busy``): it is still due, and the next sweep looks again.
    """
    with sweeping() as mine:
        if not mine:
            return SweepReport(skipped=True)
        return _sweep(limit)


def _sweep(limit: int) -> SweepReport:
    report = SweepReport()
    for saga_id in expired_wait_saga_ids(limit):
        # On a passing error the deadline stays passed: the next sweep tries again.
        report.waits_timed_out += _guarded(report, saga_id, partial(expire_waits, nowait=True), postpone=False) or 0
    for saga_id in due_saga_ids(limit):
        action = _guarded(report, saga_id, partial(resume_stalled, nowait=True), postpone=True)
        if action == "forward":
            report.resumed_forward += 1
        elif action == "compensation":
            report.resumed_compensation += 1
        elif action == "compensation_started":
            report.compensation_started += 1
    try:
        liveness.forget_silent_workers()
    except INFRASTRUCTURE_ERRORS as exc:
        logger.warning("sweeper: could not prune heartbeats: %s", exc)
    return report


def _guarded(report: SweepReport, saga_id, move, *, postpone: bool):
    """``move(saga_id)``, or None if it failed: one saga the sweeper cannot move never stops the others.

    A passing error (the database) leaves the saga for a later sweep
    (``postpone``: due again a stall time from now); any other holds it for a
    person.
    """
    report.examined += 1
    try:
        return move(saga_id)
    except SagaBusy:
        report.busy += 1  # whoever holds it is moving it; still due, so the next sweep looks again
    except INFRASTRUCTURE_ERRORS as exc:
        logger.warning("sweeper: saga %s postponed: %s", saga_id, exc)
        report.postponed += 1
        if postpone:
            _postpone(saga_id)
    except Exception as exc:  # this saga cannot be moved by the sweeper: a person must look
        logger.exception("sweeper: saga %s held for a person", saga_id)
        report.held.append(str(saga_id))
        _hold_for_person(saga_id, exc)
    return None


def _postpone(saga_id) -> None:
    try:
        SagaInstance.objects.filter(pk=saga_id, due_at__isnull=False).update(
            due_at=Now() + timedelta(seconds=settings.SAGAS_STALL_AFTER))
    except INFRASTRUCTURE_ERRORS:
        pass  # still due: the next sweep tries again


def _hold_for_person(saga_id, exc: Exception) -> None:
    try:
        hold_for_person(saga_id, f"the sweeper could not move this saga: {describe_error(exc)}")
    except INFRASTRUCTURE_ERRORS as again:
        logger.warning("sweeper: could not hold saga %s: %s", saga_id, again)


def resume_stalled(saga_id, *, nowait: bool = False) -> str | None:
    """Send again whatever a stalled saga waits for, judged from its stored state.

    Returns what it did (``forward``, ``compensation``, ``compensation_started``,
    ``finished``) or None when the saga is not stalled (it then becomes due at
    the next moment that matters), or no longer due: another sweep, which
    found it due at the same time, resumed it first (its resend stands, and
    its backoff is not doubled again). ``nowait``: see ``locked_saga``.
    """
    with locked_saga(saga_id, nowait=nowait) as saga:
        if saga is None or saga.status not in ACTIVE_SAGA_STATUSES or is_paused(saga):
            return None  # a paused saga waits for a person's ``resume``
        records = steps_of(saga)
        now = saga.db_now
        dead = dead_holders(records, now)
        orphaned = any(r.held_by in dead for r in records if r.lease_expires_at)
        if saga.due_at is None or (saga.due_at > now and not orphaned):
            return None  # held for a person, or moved since it was found due
        definition = definition_of(saga, records)
        live = [r.lease_expires_at for r in records if in_flight(r, now, dead)]
        if live:
            saga.due_at = min(live)
            return None
        retries = [r.next_attempt_at for r in records
                   if r.lease_expires_at is None and r.next_attempt_at and r.next_attempt_at > now]
        if retries:
            saga.due_at = min(retries) + timedelta(seconds=settings.SAGAS_STALL_AFTER)
            return None
        sweeps = saga.sweeps
        action = carry_on(saga, records, definition)
        if saga.status in ACTIVE_SAGA_STATUSES and action in ("forward", "compensation"):
            # Sent again: if that too goes unanswered, wait twice as long before the next try.
            saga.sweeps = min(sweeps + 1, 6)
            saga.due_at = now + timedelta(seconds=settings.SAGAS_STALL_AFTER * 2 ** saga.sweeps)
        return action


def _free_lost_attempts(saga: SagaInstance, records: list[StepRecord], definition) -> None:
    """Attempts that hold a step but are not in flight were lost: record it and free the step.

    Done here, not left to the next delivery, so a saga found through a
    silent worker is not found again and again while that delivery is on its way.
    """
    for record in records:
        if record.lease_expires_at is None or record.status not in (StepStatus.RUNNING, StepStatus.COMPENSATING):
            continue
        step = definition.step_at(record.index)
        if record.status == StepStatus.COMPENSATING:
            event(saga, EventKind.STEP_ATTEMPT_LOST, step=record, attempt=record.compensation_attempts,
                  compensation=True)
            if not step.compensation_retry.allows_another(record.compensation_attempts):
                fail_compensation(saga, record, "compensation attempt was lost (worker died or was killed)")
                continue
        elif saga.status == SagaStatus.COMPENSATING or not step.retry.allows_another(used_attempts(record)):
            fail_lost_attempt(saga, record, blame=not saga.error)
            continue
        else:
            lose_attempt(saga, record)
        release(record)
        record.next_attempt_at = saga.db_now  # the next delivery makes a new attempt at once
        save_step(record)


def carry_on(saga: SagaInstance, records: list[StepRecord], definition) -> str:
    """Do what the stored records say comes next for a saga nothing is at work on (the sweeper's
    resend, and a person's ``resume``): free its lost attempts, then send the next step, the retry,
    the compensation, or end it. ``records``: all of them. Says what it did."""
    _free_lost_attempts(saga, records, definition)
    return _carry_on(saga, records, definition)


def _carry_on(saga: SagaInstance, records: list[StepRecord], definition) -> str:
    if saga.status == SagaStatus.FAILED:
        return "finished"  # a compensation was lost for good: a person decides
    if children.follow_children(saga, records, definition):
        return "child_ended"  # a child's end, its message lost, moved the saga (and sent what follows)
    if saga.status == SagaStatus.COMPENSATING:
        indices = compensation_order(records)
        if not indices:
            finish_if_compensated(saga)
            return "finished"
        if children.waits_for_child(records[indices[0]], definition):
            saga.due_at = stall_deadline(saga)  # its child's undoing is at work: its end moves the saga
            return "waiting"
        event(saga, EventKind.SAGA_RESUMED, phase="compensation", steps=indices)
        dispatch_compensation(saga, indices)
        return "compensation"
    if saga.cancel_requested_at is not None:
        start_compensating(saga, records, saga.error or "cancelled")
        return "compensation_started"
    if any(r.status == StepStatus.FAILED for r in records):
        went = forward_failed(saga, records, "error callback lost")
        return "compensation_started" if saga.status == SagaStatus.COMPENSATING else went
    first_open = next((r.index for r in records if r.status not in FORWARD_PASSED_STATUSES), None)
    if first_open is None:
        move_saga(saga, SagaStatus.SUCCEEDED, EventKind.SAGA_SUCCEEDED)
        return "finished"
    stage = definition.stage_indices(first_open)
    waiting = [records[i] for i in stage if records[i].status == StepStatus.WAITING]
    open_members = [i for i in stage if records[i].status not in (*FORWARD_PASSED_STATUSES, StepStatus.WAITING)]
    if waiting and not open_members:
        wait_due(saga, waiting)  # nothing to send: a signal, or the deadline, moves it
        if any(definition.is_child(r.index) for r in waiting):
            # A child's end moves it; should that message be lost, the sweeper looks again a stall time on.
            saga.due_at = min(saga.due_at, stall_deadline(saga))
        return "waiting"
    if definition.is_parallel(first_open) and len(open_members) < len(stage):
        # Part of a Parallel succeeded: send the rest on their own; the
        # last of them to succeed sends the next stage.
        event(saga, EventKind.SAGA_RESUMED, phase="forward", from_step=first_open, steps=open_members)
        dispatch_steps(saga, open_members)
        return "forward"
    event(saga, EventKind.SAGA_RESUMED, phase="forward", from_step=first_open)
    dispatch_forward(saga, first_open)
    return "forward"


__all__ = ["SweepReport", "carry_on", "due_saga_ids", "resume_stalled", "stall_deadline", "sweep", "sweeping"]
