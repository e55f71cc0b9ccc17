"""Bulk actions: one engine move over every saga matching a filter, done in the background in batches.

A user asks for a job (``bulk_action_create``) with an action and a filter:
the saga list's own filters (``sagas.api.filters``) and ``ids``. The task
``sagas.run_bulk_action`` runs one batch per message (``run_batch``) and sends
the next, so a long job never holds a worker for its whole length.

- A batch is one transaction: it locks the job's row, reads the next
  ``SAGAS_BULK_BATCH_SIZE`` matching sagas after the job's cursor (by
  ``created_at``, then id), calls for each the engine function a single action
  calls (``sagas.cancel`` and the rest, found by name when called, with the
  job's user as ``by``) and writes the counts and the cursor. A worker killed
  mid-batch leaves nothing of that batch: it is done again from the cursor, so
  each saga is acted on once.
- The job acts on the sagas its user may read (``access.visible``), created up
  to the moment it was asked for (sagas started meanwhile, a resubmit's among
  them, are not chased), and on each only if the user may make that move
  (``access.may``). A saga the user may not move, or the engine refuses
  (``InvalidTransition``: already finished, past its pivot), is listed in
  ``refused`` with the reason; it is never an error of the job.
- Memory is bounded by the batch: ids are read a batch at a time through the
  cursor; ``matched`` is one COUNT when the job is asked for.
- A job whose worker died goes on: its message comes back (the task is
  acknowledged late), and beat's check (``resend_stalled``) sends a running
  job whose last batch is older than ``SAGAS_BULK_STALE_AFTER`` again. Two
  messages for one job are harmless: batches take the job's row in turn
  and start from its cursor.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import django_filters
from celery import current_app
from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Now
from django.http import QueryDict
from django.utils import timezone

from . import access, engine
from .api.filters import SagaInstanceFilter
from .engine.core import describe_error
from .engine.running import INFRASTRUCTURE_ERRORS
from .errors import InvalidBulkAction, SagaError
from .models import BulkAction, BulkActionKind, BulkActionStatus, SagaInstance

logger = logging.getLogger("sagas.bulk")

TASK = "sagas.run_bulk_action"
FILTER_KEYS = ("status", "saga_type", "created_after", "created_before", "ids")
LIST_KEYS = ("status", "ids")
MAX_IDS = 10_000


@dataclass(frozen=True)
class Move:
    """What an action calls: the engine function's name and its move in ``access.MOVES``; ``done`` (for the
    functions that take a ``reason``): the word of the reason recorded when the job was given none."""

    function: str
    move: str
    done: str | None = None


MOVES: dict[str, Move] = {
    BulkActionKind.CANCEL: Move("cancel", "cancel", done="cancelled"),
    BulkActionKind.PAUSE: Move("pause", "pause", done="paused"),
    BulkActionKind.RESUME: Move("resume", "resume"),
    BulkActionKind.RETRY_COMPENSATION: Move("retry_compensation", "retry_compensation"),
    BulkActionKind.RESUBMIT: Move("resubmit", "resubmit"),
}


# --- the filter: the saga list's, plus ids ------------------------------------------------------


class UUIDListField(forms.Field):
    """Every value of the parameter, each a UUID."""

    widget = forms.SelectMultiple  # reads all of a parameter's values, as MultipleChoiceField does

    def to_python(self, value: Any) -> list[uuid.UUID]:
        if value in self.empty_values:
            return []
        ids = []
        for item in value:
            try:
                ids.append(uuid.UUID(str(item)))
            except ValueError:
                raise forms.ValidationError(f"{item!r} is not a valid UUID.", code="invalid") from None
        return ids


class UUIDListFilter(django_filters.Filter):
    field_class = UUIDListField

    def filter(self, qs: QuerySet, value: list[uuid.UUID]) -> QuerySet:
        return qs.filter(pk__in=value) if value else qs


class BulkSagaFilter(SagaInstanceFilter):
    """``GET /api/sagas/``'s filters (``status``, ``saga_type``, the creation window) and ``ids``."""

    ids = UUIDListFilter()


def _filterset(spec: dict, queryset: QuerySet) -> BulkSagaFilter:
    data = QueryDict(mutable=True)
    for key, value in spec.items():
        data.setlist(key, value if isinstance(value, list) else [value])
    return BulkSagaFilter(data=data, queryset=queryset)


def _shape_errors(spec: dict) -> dict:
    """What the JSON itself gets wrong (unknown keys, wrong types), before the list's filters judge the values."""
    errors = {}
    for key, value in spec.items():
        if key not in FILTER_KEYS:
            errors[key] = [f"unknown filter; the filters are {', '.join(FILTER_KEYS)}"]
        elif key in LIST_KEYS:
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                errors[key] = ["must be a non-empty list of strings"]
            elif key == "ids" and len(value) > MAX_IDS:
                errors[key] = [f"at most {MAX_IDS} ids"]
        elif not isinstance(value, str):
            errors[key] = ["must be a string"]
    return errors


def validate(action: Any, spec: Any) -> None:
    """``InvalidBulkAction`` (field -> messages, the filter's under ``filter``) unless both are ones a job takes."""
    errors: dict[str, Any] = {}
    if action not in BulkActionKind.values:
        errors["action"] = [f"must be one of {', '.join(BulkActionKind.values)}"]
    if not isinstance(spec, dict):
        errors["filter"] = ["must be a JSON object"]
    else:
        problems = _shape_errors(spec)
        if not problems:
            filterset = _filterset(spec, SagaInstance.objects.none())
            if not filterset.is_valid():
                problems = {name: [str(m) for m in messages] for name, messages in filterset.errors.items()}
        if problems:
            errors["filter"] = problems
    if errors:
        raise InvalidBulkAction(errors)


def matching(spec: dict, user: Any, *, until) -> QuerySet[SagaInstance]:
    """The sagas ``spec`` matches that ``user`` may read, created up to ``until``."""
    readable = access.visible(user, SagaInstance.objects.filter(created_at__lte=until))
    filterset = _filterset(spec, readable)
    if not filterset.is_valid():  # stored filters were validated; a changed rule must not widen one
        raise InvalidBulkAction({"filter": dict(filterset.errors)})
    return filterset.qs


# --- asking for a job ---------------------------------------------------------------------------


def missing_permission(user: Any, action: str | None = None) -> str:
    """Why ``user`` may not ask for a bulk ``action`` (or for any bulk action), or "" if they may."""
    if not access.may(user, "bulk"):
        return f"bulk actions need the permission {access.MOVES['bulk']}"
    move = MOVES.get(action) if action else None
    if move is not None and not access.may(user, move.move):
        return f"a bulk {action.replace('_', ' ')} needs the permission {access.MOVES[move.move]}"
    return ""


def bulk_action_create(*, action: str, filter: dict, reason: str = "", by: Any) -> BulkAction:
    """Record a job for ``by`` (a user) and send its first batch once the transaction commits.

    Permissions are the caller's to check first (``missing_permission``); the
    job checks each saga's again when it acts on it.
    """
    validate(action, filter)
    with transaction.atomic():
        job = BulkAction(action=action, filter=filter, reason=(reason or "").strip(), requested_by=by,
                         created_at=timezone.now(), progress_at=Now())
        job.matched = matching(filter, by, until=job.created_at).count()
        job.save(force_insert=True)
        send_after_commit(job.pk)
    job.refresh_from_db(fields=["progress_at"])
    return job


def send_after_commit(bulk_id: uuid.UUID | str) -> None:
    """Send the job's next batch once the transaction commits; a broker that fails then leaves it to beat's check."""
    def send() -> None:
        try:
            current_app.signature(TASK, args=(str(bulk_id),)).apply_async()
        except Exception as exc:  # the job is stored: resend_stalled sends it again
            logger.warning("bulk action %s: could not send its next batch (%s); the periodic check will",
                           bulk_id, describe_error(exc))

    transaction.on_commit(send)


# --- running it, a batch at a time --------------------------------------------------------------


@dataclass
class BatchReport:
    bulk_id: str
    acted: int = 0
    refused: int = 0
    done: bool = False
    # Another batch of this job holds its row (PostgreSQL): this message does nothing.
    busy: bool = False
    missing: bool = False

    def __str__(self) -> str:
        if self.missing:
            return "no such bulk action"
        if self.busy:
            return "another batch of this job is at work"
        return f"acted on {self.acted}, refused {self.refused}{'; done' if self.done else ''}"


def run_batch(bulk_id: uuid.UUID | str, *, size: int | None = None) -> BatchReport:
    """Act on the job's next batch of sagas and record it, in one transaction; send the next if any is left."""
    size = size or settings.SAGAS_BULK_BATCH_SIZE
    report = BatchReport(str(bulk_id))
    with transaction.atomic():
        # On SQLite the transaction itself holds the database's write lock (IMMEDIATE).
        job = BulkAction.objects.select_for_update(skip_locked=True).filter(pk=bulk_id).first()
        if job is None:
            report.missing = not BulkAction.objects.filter(pk=bulk_id).exists()
            report.busy = not report.missing
            return report
        if job.status == BulkActionStatus.DONE:
            report.done = True
            return report
        user = get_user_model().objects.filter(pk=job.requested_by_id).first() if job.requested_by_id else None
        stop = _why_stop(user)
        # One more than the batch: whether another batch is left is known without sending one to find out.
        sagas = [] if stop else list(_next_sagas(job, user, size + 1))
        more = len(sagas) > size
        sagas = sagas[:size]
        refused = []
        for saga in sagas:
            refusal = _act(job, saga, user)
            if refusal is None:
                report.acted += 1
            else:
                refused.append({"saga_id": str(saga.pk), "reason": refusal})
        report.refused = len(refused)
        if sagas:
            job.cursor_created_at, job.cursor_saga_id = sagas[-1].created_at, sagas[-1].pk
        job.succeeded += report.acted
        job.refused = [*job.refused, *refused]
        job.batches += 1
        job.progress_at = Now()
        if stop or not more:
            _finish(job, stop)
            report.done = True
        else:
            send_after_commit(job.pk)
        job.save()
    return report


def _why_stop(user: Any) -> str:
    """Why the job may not go on (it then ends, its other sagas untouched), or ""."""
    if user is None:
        return "stopped: the user who asked for it no longer exists"
    if not user.is_active:
        return f"stopped: {user.get_username()} is no longer active"
    if not access.may(user, "bulk"):
        return f"stopped: {user.get_username()} no longer holds {access.MOVES['bulk']}"
    return ""


def _finish(job: BulkAction, stop: str) -> None:
    job.status = BulkActionStatus.DONE
    job.finished_at = Now()
    job.error = stop
    if not stop:
        # What it went through: a saga that stopped matching before its turn (it finished) is not counted.
        job.matched = job.succeeded + len(job.refused)


def _next_sagas(job: BulkAction, user: Any, size: int) -> QuerySet[SagaInstance]:
    rows = matching(job.filter, user, until=job.created_at)
    if job.cursor_created_at is not None:
        after = job.cursor_created_at
        rows = rows.filter(Q(created_at__gt=after) | Q(created_at=after, pk__gt=job.cursor_saga_id))
    return rows.order_by("created_at", "pk").only("id", "saga_type", "started_by", "created_at")[:size]


def _act(job: BulkAction, saga: SagaInstance, user: Any) -> str | None:
    """Make the job's move on ``saga`` through the engine; None, or why it was refused.

    In a savepoint of its own: a refusal leaves nothing of its attempt in
    the batch. A passing database error fails the whole batch (done again);
    anything else unexpected refuses this saga only, and is logged.
    """
    move = MOVES[job.action]
    if not access.may(user, move.move, saga):
        type_permission = getattr(access.definition_named(saga.saga_type), "permission", None)
        needs = access.MOVES[move.move] + (f" and {type_permission}" if type_permission else "")
        return f"{user.get_username()} may not {job.action.replace('_', ' ')} this saga (it needs {needs})"
    function = getattr(engine, move.function, None)  # found when called: pause and resume may come later
    if function is None:
        return f"{job.action} is not available in this version of the orchestrator"
    kwargs: dict[str, Any] = {"by": user}
    if move.done:
        kwargs["reason"] = job.reason or f"{move.done} by bulk action {job.pk}"
    try:
        with transaction.atomic():
            outcome = function(saga.pk, **kwargs)
    except INFRASTRUCTURE_ERRORS:
        raise
    except (SagaError, SagaInstance.DoesNotExist) as exc:  # InvalidTransition, and the engine's other refusals
        return str(exc) or type(exc).__name__
    except Exception as exc:  # one saga the job cannot move never stops it from moving the others
        logger.exception("bulk action %s: %s of saga %s failed", job.pk, job.action, saga.pk)
        return f"unexpected error: {describe_error(exc)}"
    if job.action == BulkActionKind.RESUBMIT and getattr(outcome, "created_now", True) is False:
        return f"already resubmitted as {outcome.pk}"
    return None


# --- the periodic check -------------------------------------------------------------------------


def resend_stalled(*, stale_after: float | None = None, limit: int = 100) -> list[str]:
    """Send again every running job whose last batch is older than ``stale_after`` seconds (default
    ``SAGAS_BULK_STALE_AFTER``): its worker died, or its next message was lost. Returns their ids."""
    stale_after = settings.SAGAS_BULK_STALE_AFTER if stale_after is None else stale_after
    cutoff = Now() - timedelta(seconds=stale_after)
    stalled = list(BulkAction.objects.filter(status=BulkActionStatus.RUNNING, progress_at__lte=cutoff)
                   .order_by("progress_at").values_list("pk", flat=True)[:limit])
    sent = []
    for bulk_id in stalled:
        with transaction.atomic():
            # Marked as sent now: the next check waits a whole stale time before sending it again.
            if BulkAction.objects.filter(pk=bulk_id, status=BulkActionStatus.RUNNING,
                                         progress_at__lte=cutoff).update(progress_at=Now()):
                send_after_commit(bulk_id)
                sent.append(str(bulk_id))
    return sent


def bulk_action_get(bulk_id: Any, user: Any) -> BulkAction:
    """The job ``bulk_id`` names if ``user`` may read it (``BulkAction.DoesNotExist`` otherwise, malformed ids too)."""
    try:
        pk = uuid.UUID(str(bulk_id))
    except ValueError:
        raise BulkAction.DoesNotExist(f"no bulk action {bulk_id}") from None
    return access.visible_bulk_actions(user, BulkAction.objects.all()).get(pk=pk)
