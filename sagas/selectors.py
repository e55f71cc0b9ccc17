"""Reads for the pages people watch (admin lists, the live page): bounded queries, no N+1.

Writes go through ``sagas.engine``; these only read.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Case, OuterRef, Q, QuerySet, Subquery, When
from django.db.models.functions import Coalesce

from . import access
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


# A tree answers this many sagas at most (the deepest are left out beyond it: ``truncated``).
TREE_MAX_NODES = 500
_TREE_FIELDS = ("id", "saga_type", "version", "status", "error", "parent_id", "parent_step__name", "depth",
                "created_at", "started_at", "finished_at")


def _tree_node(row: dict) -> dict:
    return {"id": row["id"], "saga_type": row["saga_type"], "version": row["version"], "status": row["status"],
            "error": row["error"], "parent": row["parent_id"], "parent_step": row["parent_step__name"],
            "depth": row["depth"], "created_at": row["created_at"], "started_at": row["started_at"],
            "finished_at": row["finished_at"], "children": []}


def saga_tree(user, root: SagaInstance, *, max_nodes: int = TREE_MAX_NODES) -> dict:
    """``root`` and its descendants that ``user`` may read (``sagas.access``), a level per query.

    Bounded: nesting stops at ``SAGAS_MAX_DEPTH``, so at most that many
    levels are read, and at most ``max_nodes`` sagas are shown, oldest
    first within a level; ``truncated`` says some were left out. A child the
    user may not read is left out with what is below it.
    """
    top = _tree_node({**{name: getattr(root, name, None) for name in _TREE_FIELDS if "__" not in name},
                      "parent_step__name": root.parent_step.name if root.parent_step_id else None})
    nodes, level, count, truncated = {root.pk: top}, [root.pk], 1, False
    for _ in range(settings.SAGAS_MAX_DEPTH):
        if not level:
            break
        rows = list(access.visible(user, SagaInstance.objects.filter(parent_id__in=level))
                    .order_by("depth", "created_at", "id").values(*_TREE_FIELDS)[:max_nodes - count + 1])
        if len(rows) > max_nodes - count:
            rows, truncated = rows[:max_nodes - count], True
        for row in rows:
            nodes[row["id"]] = _tree_node(row)
            nodes[row["parent_id"]]["children"].append(nodes[row["id"]])
        count += len(rows)
        level = [row["id"] for row in rows]
        if truncated:
            break
    if level and not truncated and SagaInstance.objects.filter(parent_id__in=level).exists():
        truncated = True  # deeper than SAGAS_MAX_DEPTH allows now (it was raised, or lowered, since)
    return {"root": top, "nodes": count, "truncated": truncated}
