"""Invariants every saga must satisfy once finished, whatever its type.

Used by ``saga_chaos`` (and anyone auditing a database): a saga's status must
agree with its steps' statuses and with its audit trail.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from .models import EventKind, SagaInstance, SagaStatus, StepStatus

UNDONE = {StepStatus.COMPENSATED, StepStatus.FAILED, StepStatus.SKIPPED}
FINAL_EVENT = {
    SagaStatus.SUCCEEDED: EventKind.SAGA_SUCCEEDED,
    SagaStatus.COMPENSATED: EventKind.SAGA_COMPENSATED,
    SagaStatus.FAILED: EventKind.SAGA_FAILED,
}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


def saga_problems(saga: SagaInstance) -> list[str]:
    """What is wrong with one finished saga (empty when nothing is)."""
    steps = list(saga.steps.all())
    problems = []
    if saga.status == SagaStatus.SUCCEEDED and any(s.status != StepStatus.SUCCEEDED for s in steps):
        problems.append("succeeded with a step that did not succeed")
    if saga.status == SagaStatus.COMPENSATED:
        left = [s.name for s in steps if s.status not in UNDONE and not (
            s.status == StepStatus.SUCCEEDED and not s.has_compensation)]
        if left:
            problems.append(f"compensated but steps {left} are not undone")
    if saga.status == SagaStatus.FAILED and not any(s.status == StepStatus.COMPENSATION_FAILED for s in steps):
        problems.append("failed with no compensation_failed step")
    kinds = list(saga.events.order_by("id").values_list("kind", flat=True))
    if not kinds or kinds[0] != EventKind.SAGA_CREATED:
        problems.append("audit trail does not start with saga_created")
    final = FINAL_EVENT.get(saga.status)
    if final and final not in kinds:
        problems.append(f"audit trail has no {final} event")
    return problems


def check_sagas(sagas: QuerySet[SagaInstance]) -> list[Check]:
    """Every saga finished, and every finished saga consistent."""
    unfinished = sagas.exclude(status__in=FINAL_EVENT.keys())
    checks = [Check("every saga finished (none lost)", not unfinished.exists(),
                    f"{unfinished.count()} unfinished" if unfinished.exists() else "")]
    broken = {}
    for saga in sagas.filter(status__in=FINAL_EVENT.keys()).prefetch_related("steps"):
        problems = saga_problems(saga)
        if problems:
            broken[str(saga.id)] = problems
    sample = "; ".join(f"{k}: {v}" for k, v in list(broken.items())[:3])
    checks.append(Check("saga status agrees with its steps and audit trail", not broken,
                        f"{len(broken)} inconsistent ({sample})" if broken else ""))
    return checks
