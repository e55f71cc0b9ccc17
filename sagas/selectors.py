"""Reads for the pages people watch (admin lists, the live page): bounded queries, no N+1.

Writes go through ``sagas.engine``; these only read.
"""
from __future__ import annotations

from django.db.models import OuterRef, QuerySet, Subquery

from .models import SagaInstance, StepRecord, StepStatus

# Where a saga stands: the first step (by index) in one of these statuses. For
# a running saga that is the step at work (or the next one to start); for a
# compensating one the step being undone; for a finished one the step where it
# broke, if any.
CURRENT_STEP_STATUSES = tuple(
    status for status in (StepStatus.RUNNING, getattr(StepStatus, "WAITING", None), StepStatus.COMPENSATING,
                          StepStatus.COMPENSATION_FAILED, StepStatus.FAILED, StepStatus.PENDING)
    if status is not None)


def with_current_step(queryset: QuerySet[SagaInstance]) -> QuerySet[SagaInstance]:
    """Annotate ``current_step`` (name) and ``current_step_status``: one correlated subquery each, in the same query."""
    current = StepRecord.objects.filter(saga=OuterRef("pk"), status__in=CURRENT_STEP_STATUSES).order_by("index")
    return queryset.annotate(
        current_step=Subquery(current.values("name")[:1]),
        current_step_status=Subquery(current.values("status")[:1]),
    )
