"""The live page's figures: a fingerprint that says whether anything changed, and the snapshot itself.

Both are bounded whatever the number of sagas: the fingerprint is two
index-only look-ups (the newest event id, the newest saga ``updated_at``);
the snapshot is seven queries, each on an index and limited (counts cover
the sagas created in the last ``SAGAS_LIVE_WINDOW`` seconds, lists hold at
most ``SAGAS_LIVE_ROWS`` rows).

Child sagas: a child's row names its parent and the parent's step it works
for (``parent``), and a parent's step waiting for its child names that
child (``child``), both with a link, each only when the page's user may
read its type (``exclude``); the children of the steps shown come in one
query.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Max
from django.urls import reverse
from django.utils import timezone

from ..engine.intervention import PARENT as PAUSED_WITH_PARENT
from ..models import ACTIVE_SAGA_STATUSES, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus
from ..selectors import CURRENT_STEP_STATUSES



def fingerprint() -> tuple:
    """Changes whenever a transition was recorded: every transition writes an event or touches its saga's row.

    (A claim that only marks a step running writes neither; the page shows
    it with the next event, at the attempt's end.)
    """
    newest_event = SagaEvent.objects.aggregate(newest=Max("id"))["newest"]
    newest_update = SagaInstance.objects.aggregate(newest=Max("updated_at"))["newest"]
    return newest_event, newest_update


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _link(saga: SagaInstance) -> dict[str, Any]:
    return {
        "id": str(saga.pk), "short_id": saga.pk.hex[:8], "saga_type": saga.saga_type, "status": saga.status,
        "url": reverse("admin:sagas_sagainstance_change", args=[saga.pk]),
    }


def _saga_row(saga: SagaInstance, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """A saga as a row links it; a child's also names its parent and the step it works for (``parent``),
    unless the parent is of a type the page's user may not read (``depth`` still says it is a child).

    The saga comes with its ``parent`` and ``parent_step`` (``_with_parents``): no query here.
    """
    row = {**_link(saga), "depth": saga.depth, "parent": None}
    parent = saga.parent if saga.parent_id is not None else None
    if parent is not None and parent.saga_type not in exclude:
        row["parent"] = {**_link(parent), "step": saga.parent_step.name if saga.parent_step_id else ""}
    return row


def _with_parents(sagas):
    return sagas.select_related("parent", "parent_step")


def _link_children(rows: list[dict[str, Any]], exclude: tuple[str, ...]) -> None:
    """Each row's step (``step_id``, taken out here) that a child saga works for gets that child (``child``):
    the one it started last, as ``engine.children.child_of`` reads it. One query for all the rows."""
    step_ids = {row["step_id"] for row in rows if row.get("step_id") is not None}
    latest: dict[int, SagaInstance] = {}
    if step_ids:
        for child in (SagaInstance.objects.filter(parent_step_id__in=step_ids)
                      .only("id", "saga_type", "status", "parent_step_id", "created_at")
                      .order_by("parent_step_id", "-created_at")):
            latest.setdefault(child.parent_step_id, child)
    for row in rows:
        child = latest.get(row.pop("step_id", None))
        row["child"] = _link(child) if child is not None and child.saga_type not in exclude else None


def _sagas(exclude: tuple[str, ...]):
    """The sagas a page shows: all, but the types its user may not read."""
    return SagaInstance.objects.exclude(saga_type__in=exclude) if exclude else SagaInstance.objects.all()


def _counts(since: datetime, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    rows = (_sagas(exclude).filter(created_at__gte=since).order_by()
            .values("saga_type", "status").annotate(n=Count("id")))
    by_type: dict[str, dict[str, int]] = {}
    for row in rows:
        by_type.setdefault(row["saga_type"], {})[row["status"]] = row["n"]
    return [{"saga_type": name, "counts": counts, "total": sum(counts.values())}
            for name, counts in sorted(by_type.items())]


def _current(records: list[StepRecord]) -> StepRecord | None:
    """The step the saga stands at (as ``selectors.with_current_step`` picks it)."""
    return next((r for r in records if r.status in CURRENT_STEP_STATUSES), None)


def _in_flight(limit: int, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    sagas = (_with_parents(_sagas(exclude)).filter(status__in=ACTIVE_SAGA_STATUSES).order_by("created_at")
             .prefetch_related("steps")[:limit])
    rows = []
    for saga in sagas:
        step = _current(list(saga.steps.all()))
        since = None
        if step is not None:
            since = (step.attempt_started_at or step.started_at) if step.status == StepStatus.RUNNING else None
        rows.append({
            **_saga_row(saga, exclude),
            "step": step.name if step else "", "step_status": step.status if step else "",
            "step_id": step.pk if step else None,
            "since": _iso(since or saga.updated_at), "held": saga.due_at is None,
            "error": saga.error[:300],
        })
    return rows


def _waiting(limit: int, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Steps waiting (for a signal, or for their child saga), oldest wait first, with the deadline stored on
    each (an index keeps it short)."""
    records = StepRecord.objects.filter(status=StepStatus.WAITING)
    if exclude:
        records = records.exclude(saga__saga_type__in=exclude)
    records = (records.select_related("saga", "saga__parent", "saga__parent_step")
               .order_by("waiting_since", "id")[:limit])
    return [{**_saga_row(record.saga, exclude), "step": record.name, "step_id": record.pk,
             "since": _iso(record.waiting_since), "deadline": _iso(record.signal_deadline)} for record in records]


def _failures(statuses: tuple[str, ...], limit: int, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    sagas = _with_parents(_sagas(exclude)).filter(status__in=statuses).order_by("-updated_at")[:limit]
    return [{**_saga_row(s, exclude), "error": why_it_waits(s)[:300], "since": _iso(s.finished_at or s.updated_at)}
            for s in sagas]


def why_it_waits(saga: SagaInstance) -> str:
    """Why a saga that needs a person does: its error, and for a paused one how it came to pause."""
    if saga.status != SagaStatus.PAUSED:
        return saga.error
    if saga.pause_cause == "after_pivot":
        return f"paused past its pivot: {saga.error}"
    if saga.pause_cause == PAUSED_WITH_PARENT:
        return "paused with its parent saga (its parent's resume resumes it)"
    return "paused by a person" + (f" (was {saga.paused_from})" if saga.paused_from else "")


def build_snapshot(exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything the live page shows, as JSON-ready data (``exclude``: saga types its user may not read)."""
    now = timezone.now()
    rows = settings.SAGAS_LIVE_ROWS
    in_flight, waiting = _in_flight(rows, exclude), _waiting(rows, exclude)
    _link_children([*in_flight, *waiting], exclude)
    return {
        "generated_at": _iso(now),
        "window_seconds": settings.SAGAS_LIVE_WINDOW,
        "statuses": list(SagaStatus.values),
        "counts": _counts(now - timedelta(seconds=settings.SAGAS_LIVE_WINDOW), exclude),
        "in_flight": in_flight,
        "waiting_supported": True,
        "waiting": waiting,
        # Failed and paused sagas stay here until a person acts (retry compensation, resume, skip).
        "needs_person": _failures((SagaStatus.FAILED, SagaStatus.PAUSED), rows, exclude),
        "latest_failures": _failures((SagaStatus.COMPENSATED, SagaStatus.FAILED), 10, exclude),
    }


def snapshot_json(exclude: tuple[str, ...] = ()) -> str:
    return json.dumps(build_snapshot(exclude), separators=(",", ":"))
