"""Reads for the pages people watch (admin lists, the live page): bounded queries, no N+1.

Writes go through ``sagas.engine``; these only read.
"""
from __future__ import annotations

from typing import Any

from django.db.models import OuterRef, Q, QuerySet, Subquery

from .definitions import registry
from .models import SagaInstance, StepRecord, StepStatus

# Where a saga stands: the first step (by index) in one of these statuses. For
# a running saga that is the step at work (or the next one to start); for a
# compensating one the step being undone; for a finished one the step where it
# broke, if any.
CURRENT_STEP_STATUSES = (StepStatus.RUNNING, StepStatus.WAITING, StepStatus.COMPENSATING,
                         StepStatus.COMPENSATION_FAILED, StepStatus.FAILED, StepStatus.PENDING)


def with_current_step(queryset: QuerySet[SagaInstance]) -> QuerySet[SagaInstance]:
    """Annotate ``current_step`` (name) and ``current_step_status``: one correlated subquery each, in the same query."""
    current = StepRecord.objects.filter(saga=OuterRef("pk"), status__in=CURRENT_STEP_STATUSES).order_by("index")
    return queryset.annotate(
        current_step=Subquery(current.values("name")[:1]),
        current_step_status=Subquery(current.values("status")[:1]),
    )


def waiting_steps_for(user: Any) -> QuerySet[StepRecord]:
    """The steps now waiting that ``user`` may signal, oldest wait first (with their sagas, in one query).

    Who may signal what comes from the registered definitions (few waiting
    steps), so the filter runs in the database and the list paginates.
    """
    from .engine import may_signal

    allowed = [Q(saga__saga_type=saga.name, saga__version=saga.version, name=step.name)
               for saga in registry for step in saga.steps
               if step.wait_for_signal and may_signal(user, step.signal_permission)]
    if not allowed:
        return StepRecord.objects.none()
    either = allowed[0]
    for condition in allowed[1:]:
        either |= condition
    return (StepRecord.objects.filter(status=StepStatus.WAITING).filter(either).select_related("saga")
            .order_by("waiting_since", "id"))
