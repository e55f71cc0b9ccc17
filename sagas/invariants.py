"""Invariants every saga must satisfy once finished, whatever its type.

Used by ``saga_chaos`` (and anyone auditing a database): a saga's status must
agree with its steps' statuses and with its audit trail, and a parent's with
its child sagas' (``tree_problems``).
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from .models import EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus

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


# --- trees: a parent and its child sagas ------------------------------------------------------------
#
# A ``ChildSaga`` step's status, once its parent has finished, and the statuses its child (the one it
# started last) may then be in. A step that failed for good or was skipped may have had its child
# cancelled (its timeout, a lost race with the parent's undoing) whose compensation may still be under
# way; one whose undoing failed has a child that failed, or one past its own pivot (it cannot be undone).
# A step that never started a child (pending, skipped by its condition, refused before the start) has
# none, which is always allowed.
CHILD_OF_STEP = {
    StepStatus.SUCCEEDED: {SagaStatus.SUCCEEDED},
    StepStatus.COMPENSATED: {SagaStatus.COMPENSATED},
    StepStatus.FAILED: {SagaStatus.COMPENSATING, SagaStatus.COMPENSATED},
    StepStatus.SKIPPED: {SagaStatus.COMPENSATING, SagaStatus.COMPENSATED},
    StepStatus.COMPENSATION_FAILED: {SagaStatus.FAILED, SagaStatus.SUCCEEDED},
    # A failed parent whose other compensation failed while this one's child was still being undone.
    StepStatus.COMPENSATING: {SagaStatus.COMPENSATING, SagaStatus.COMPENSATED},
}
# A child a step replaced (the step ran again after its pivot and started another) was compensated first.
REPLACED = {SagaStatus.COMPENSATING, SagaStatus.COMPENSATED}


def tree_problems(parents: QuerySet[SagaInstance]) -> dict[str, list[str]]:
    """What is wrong between each finished saga of ``parents`` and its child sagas: parent id -> problems.

    - a compensated parent has no succeeded child (undoing it undid them);
    - a succeeded parent's children all succeeded, but those a step replaced (compensated);
    - a ``ChildSaga`` step's status agrees with its child's (``CHILD_OF_STEP``), and a succeeded step's
      output names that child.
    Parents still active are left out: their children may be a message ahead of them.
    """
    finished = parents.filter(status__in=FINAL_EVENT.keys())
    status_of = dict(finished.values_list("id", "status"))
    children = list(SagaInstance.objects.filter(parent_id__in=list(status_of)).order_by("created_at", "id")
                    .values_list("id", "parent_id", "parent_step_id", "status"))
    if not children:
        return {}
    steps = {pk: (name, status, result) for pk, name, status, result in StepRecord.objects.filter(
        pk__in={step_id for _, _, step_id, _ in children}).values_list("pk", "name", "status", "result")}
    latest = {step_id: child_id for child_id, _, step_id, _ in children}  # ordered: the last one wins
    problems: dict[str, list[str]] = {}
    for child_id, parent_id, step_id, child_status in children:
        found = problems.setdefault(str(parent_id), [])
        parent_status = status_of[parent_id]
        name, step_status, result = steps.get(step_id, ("?", None, None))
        what = f"child {child_id} of step {name} is {child_status}"
        if latest[step_id] != child_id:
            if child_status not in REPLACED:
                found.append(f"{what}, though the step started another after it")
            continue
        if parent_status == SagaStatus.COMPENSATED and child_status == SagaStatus.SUCCEEDED:
            found.append(f"compensated, but its {what}")
        elif parent_status == SagaStatus.SUCCEEDED and child_status != SagaStatus.SUCCEEDED:
            found.append(f"succeeded, but its {what}")
        if child_status not in CHILD_OF_STEP.get(step_status, set()):
            found.append(f"step {name} is {step_status}, but its {what}")
        elif step_status == StepStatus.SUCCEEDED and (result or {}).get("saga_id") != str(child_id):
            found.append(f"step {name} succeeded naming child {(result or {}).get('saga_id')}, not {child_id}")
    return {parent: found for parent, found in problems.items() if found}


def check_trees(parents: QuerySet[SagaInstance]) -> Check:
    broken = tree_problems(parents)
    sample = "; ".join(f"{k}: {v}" for k, v in list(broken.items())[:3])
    return Check("parent sagas agree with their child sagas", not broken,
                 f"{len(broken)} inconsistent ({sample})" if broken else "")


def check_sagas(sagas: QuerySet[SagaInstance]) -> list[Check]:
    """Every saga finished, every finished saga consistent, and so is every parent with its children."""
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
    checks.append(check_trees(sagas))
    return checks
