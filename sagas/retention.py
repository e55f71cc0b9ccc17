"""Retention: removing old finished sagas with their step records and audit trail.

Sagas that ended on their own (``succeeded``, ``compensated``) go once they
finished long enough ago. ``failed`` sagas stay unless asked for: a person
still has to act on them, and their trail says what is left to undo. Active
sagas (``pending``, ``running``, ``compensating``) are never touched,
whatever their age, nor is a child saga below one of them. Business rows that name a saga by ``saga_id`` (the
corporate app's orders, employees, budget requests) are not the
orchestrator's and stay.

Rows go in batches, each in its own transaction with the sagas' rows locked
and their status checked again, so a saga whose compensation is retried
meanwhile (``failed`` -> ``compensating``) is left alone, and the database
never holds one long delete.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from .metrics import totals
from .models import ACTIVE_SAGA_STATUSES, SagaEvent, SagaInstance, SagaStatus, StepRecord

PRUNED_STATUSES = (SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED)
DEFAULT_BATCH_SIZE = 500


@dataclass
class PruneReport:
    """What was removed (or, in a dry run, what would be)."""

    finished_before: datetime
    dry_run: bool
    sagas: dict[str, int] = field(default_factory=dict)  # status -> sagas
    steps: int = 0
    events: int = 0
    batches: int = 0

    @property
    def total_sagas(self) -> int:
        return sum(self.sagas.values())


def _statuses(include_failed: bool) -> tuple[str, ...]:
    return (*PRUNED_STATUSES, SagaStatus.FAILED) if include_failed else PRUNED_STATUSES


def prunable_sagas(*, finished_before: datetime, include_failed: bool = False) -> QuerySet[SagaInstance]:
    """Finished sagas (``failed`` only when included) whose ``finished_at`` is before the cutoff.

    A child saga stays while its parent, or any saga above it, is active: undoing the parent undoes
    the child as a whole, from the child's own records.
    """
    finished = SagaInstance.objects.filter(status__in=_statuses(include_failed), finished_at__lt=finished_before)
    above = Q()
    for level in range(1, settings.SAGAS_MAX_DEPTH + 1):
        above |= Q(**{"__".join(["parent"] * level) + "__status__in": ACTIVE_SAGA_STATUSES})
    # A subquery, so that the batches' locking read has no outer join to lock the nullable side of.
    held = SagaInstance.objects.filter(parent__isnull=False).filter(above).values("pk")
    return finished.exclude(pk__in=held).order_by()


def prune_finished_sagas(*, older_than: timedelta, include_failed: bool = False, dry_run: bool = False,
                         batch_size: int = DEFAULT_BATCH_SIZE, now: datetime | None = None) -> PruneReport:
    """Remove finished sagas that finished more than ``older_than`` ago, with their steps and events.

    ``dry_run`` counts what would go and removes nothing. A saga that was
    resubmitted keeps its resubmission, whose ``resubmitted_from`` becomes null.
    """
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cutoff = (now or timezone.now()) - older_than
    report = PruneReport(finished_before=cutoff, dry_run=dry_run,
                         sagas={status: 0 for status in _statuses(include_failed)})
    selection = prunable_sagas(finished_before=cutoff, include_failed=include_failed)
    if dry_run:
        _count_into(report, selection)
        return report
    while _prune_batch(report, selection, batch_size) == batch_size:
        pass
    return report


def _count_into(report: PruneReport, sagas: QuerySet[SagaInstance]) -> None:
    for status, n in sagas.values_list("status").annotate(n=Count("pk")):
        report.sagas[status] += n
    report.steps += StepRecord.objects.filter(saga__in=sagas).count()
    report.events += SagaEvent.objects.filter(saga__in=sagas).count()


def _prune_batch(report: PruneReport, selection: QuerySet[SagaInstance], batch_size: int) -> int:
    """Remove up to ``batch_size`` sagas in one transaction; how many went."""
    with transaction.atomic():
        ids = list(selection.select_for_update().order_by("finished_at", "pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return 0
        batch = SagaInstance.objects.filter(pk__in=ids)
        totals.forget(ids)  # /metrics: their figures go with them, as when every row was read
        for status, n in batch.values_list("status").annotate(n=Count("pk")).order_by():
            report.sagas[status] += n
        _, removed = batch.delete()  # cascades to step records and events; resubmissions are unlinked
    report.steps += removed.get(StepRecord._meta.label, 0)
    report.events += removed.get(SagaEvent._meta.label, 0)
    report.batches += 1
    return len(ids)
