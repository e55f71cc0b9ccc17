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
    trail = list(saga.events.order_by("created_at", "id").values_list("id", "kind", "step_id"))
    kinds = [kind for _, kind, _ in trail]
    if not kinds or kinds[0] != EventKind.SAGA_CREATED:
        problems.append("audit trail does not start with saga_created")
    final = FINAL_EVENT.get(saga.status)
    if final and final not in kinds:
        problems.append(f"audit trail has no {final} event")
    problems.extend(_stage_order_problems(steps, trail))
    return problems


def _stage_order_problems(steps: list, trail: list[tuple]) -> list[str]:
    """No step started before every step of the earlier stages had succeeded.

    Read from the audit trail's order: the database's clock, which dates a
    ``step_started`` event when its attempt began, though it is written when
    the attempt ends. Rows from before stages existed have none: each step
    was then its own stage.
    """
    stage_of = {s.pk: s.index if s.stage is None else s.stage for s in steps}
    name_of = {s.pk: s.name for s in steps}
    first_start: dict[int, int] = {}
    last_success: dict[int, int] = {}
    for event_id, (_, kind, step_id) in enumerate(trail, start=1):  # positions in the trail
        if step_id not in stage_of:
            continue
        if kind == EventKind.STEP_STARTED:
            first_start.setdefault(step_id, event_id)
        elif kind == EventKind.STEP_SUCCEEDED:
            stage = stage_of[step_id]
            last_success[stage] = max(last_success.get(stage, 0), event_id)
    problems = []
    for step_id, started in first_start.items():
        stage = stage_of[step_id]
        early = [s for s, succeeded in last_success.items() if s < stage and succeeded > started]
        if early:
            problems.append(f"step {name_of[step_id]} started before stage {min(early)} had succeeded")
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
