"""Reads for the pages people watch (admin lists, the live page): bounded queries, no N+1.

Writes go through ``sagas.engine``; these only read.
"""
from __future__ import annotations

from typing import Any

from django.db.models import Case, OuterRef, Q, QuerySet, Subquery, When
from django.db.models.functions import Coalesce

from .definitions import registry
from .models import SagaInstance, SagaStatus, StepRecord, StepStatus

# Where a saga stands: the first step (by index) in one of these statuses. For
# a running saga that is the step at work (or the next one to start); for a
# compensating one the step being undone; for a finished one the step where it
# broke, if any.
CURRENT_STEP_STATUSES = (StepStatus.RUNNING, StepStatus.WAITING, StepStatus.COMPENSATING,
                         StepStatus.COMPENSATION_FAILED, StepStatus.FAILED, StepStatus.PENDING)


# Steps that never ran: a compensated saga whose steps are all undone or these stopped at the last
# step that did run (a waiting step that failed is compensated too, so no step is left failed).
NOT_RUN_STEP_STATUSES = (StepStatus.PENDING, StepStatus.SKIPPED)


def with_current_step(queryset: QuerySet[SagaInstance]) -> QuerySet[SagaInstance]:
    """Annotate ``current_step`` (name) and ``current_step_status``, in the same query (correlated subqueries).

    For a compensated saga with no step in ``CURRENT_STEP_STATUSES`` (it broke at a waiting step, which
    is undone like the others), the last step that ran: where it stopped.
    """
    current = StepRecord.objects.filter(saga=OuterRef("pk"), status__in=CURRENT_STEP_STATUSES).order_by("index")
    stopped = (StepRecord.objects.filter(saga=OuterRef("pk")).exclude(status__in=NOT_RUN_STEP_STATUSES)
               .order_by("-index"))

    def where(field: str):
        here = Subquery(current.values(field)[:1])
        return Case(When(status=SagaStatus.COMPENSATED, then=Coalesce(here, Subquery(stopped.values(field)[:1]))),
                    default=here)

    return queryset.annotate(current_step=where("name"), current_step_status=where("status"))


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
