"""The saga ``saga_chaos`` runs, the effects its steps leave, and how a run is judged.

Every action applies a real effect in this database (a ``ChaosEffect`` row
keyed by the step's idempotency key) and every compensation marks it undone,
so a run can tell from the rows alone whether an effect was applied twice,
is missing after success, or was left in place after compensation.

Recovery is read from the audit trail: for a fault at time T, every saga
still active at T is caught by it, and its recovery time is the time from T
to its first ``SagaEvent`` after T.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from django.db.models import F, QuerySet
from django.utils import timezone

from .analytics import percentile
from .definitions import Parallel, Retry, Saga, Step
from .errors import PermanentError
from .invariants import FINAL_EVENT, Check
from .models import ChaosEffect, SagaInstance, SagaStatus, StepStatus

CHAOS_SAGA = "sagas.chaos"

# --- the saga ----------------------------------------------------------------------
#
# Input: ``sleep`` (seconds a step works), ``fail`` (the name of the step that
# refuses for good, or none). No step declares a timeout: a run measures the
# engine at the settings in force (SAGAS_DEFAULT_STEP_TIMEOUT and the rest).


def _work(ctx, share: float = 1.0) -> None:
    seconds = float(ctx.input.get("sleep") or 0) * share
    if seconds:
        time.sleep(seconds)  # time for a worker to die mid-step


def _refuse_if_asked(ctx) -> None:
    if ctx.input.get("fail") == ctx.step:
        raise PermanentError(f"chaos: step {ctx.step} refuses")


def apply_effect(ctx) -> dict:
    """An idempotent action: the effect exists once per idempotency key, however often this runs."""
    _work(ctx)
    _refuse_if_asked(ctx)
    effect, _ = ChaosEffect.objects.get_or_create(
        key=ctx.idempotency_key, defaults={"saga_id": ctx.saga_id, "step": ctx.step, "applied": 1})
    ChaosEffect.objects.filter(pk=effect.pk).update(runs=F("runs") + 1)
    return {"effect": ctx.idempotency_key}


def apply_effect_once(ctx) -> dict:
    """A transactional action: it adds one each time it commits, so exactly once means ``applied == 1``."""
    _work(ctx, share=0.2)  # inside the step's transaction: keep it short
    _refuse_if_asked(ctx)
    counted = ChaosEffect.objects.filter(key=ctx.idempotency_key).update(
        applied=F("applied") + 1, runs=F("runs") + 1)
    if not counted:
        ChaosEffect.objects.create(key=ctx.idempotency_key, saga_id=ctx.saga_id, step=ctx.step,
                                   transactional=True, applied=1, runs=1)
    return {"effect": ctx.idempotency_key}


def undo_effect(ctx) -> None:
    """The compensation of either kind: marks the effect undone once, however often it runs."""
    _work(ctx, share=0.5)
    # The action's output, or its key when the output is unknown (an attempt lost mid-action).
    key = (ctx.result or {}).get("effect") or ctx.action_key
    ChaosEffect.objects.filter(key=key).update(undo_runs=F("undo_runs") + 1)
    ChaosEffect.objects.filter(key=key, undone_at__isnull=True).update(undone_at=timezone.now())


# Lost attempts are retried (a killed worker is not the step's fault); a
# refusal (PermanentError) is not.
RETRY = Retry(max_attempts=5, backoff=0.5, max_backoff=2.0)

chaos_saga = Saga(
    name=CHAOS_SAGA,
    description="Chaos saga used by `manage.py saga_chaos`: every step leaves a checkable effect.",
    steps=[
        Step("s0", apply_effect, compensation=undo_effect, retry=RETRY),
        Parallel("fan",
                 Step("s1a", apply_effect, compensation=undo_effect, retry=RETRY),
                 Step("s1b", apply_effect_once, compensation=undo_effect, retry=RETRY, transactional=True)),
        Step("s2", apply_effect, compensation=undo_effect, retry=RETRY),
    ],
)
# Steps a run may ask to refuse: a Parallel member (its sibling is undone) and the last step.
REFUSING_STEPS = ("s1b", "s2")


# --- effects -------------------------------------------------------------------------


TWICE = "applied twice"
MISSING = "missing"
LEFT = "left in place"


@dataclass(frozen=True)
class EffectProblem:
    kind: str  # TWICE, MISSING or LEFT
    text: str


def effect_problems(saga: SagaInstance, effects: dict[str, ChaosEffect]) -> list[EffectProblem]:
    """What is wrong with one saga's effects (``effects``: step name -> its row); empty when nothing is."""
    problems = []
    for record in saga.steps.all():
        effect = effects.get(record.name)
        if effect is not None and effect.applied > 1:
            problems.append(EffectProblem(TWICE, f"effect of {record.name} applied {effect.applied} times"))
        if record.status == StepStatus.SUCCEEDED:
            if effect is None:
                problems.append(EffectProblem(MISSING, f"{record.name} succeeded but its effect is missing"))
            elif effect.undone_at is not None and saga.status == SagaStatus.SUCCEEDED:
                problems.append(EffectProblem(MISSING, f"{record.name} succeeded but its effect was undone"))
        elif record.status == StepStatus.COMPENSATED:
            if effect is None and record.may_have_effects:
                continue  # its attempt was lost before it applied anything: undone all the same
            if effect is None:
                problems.append(EffectProblem(MISSING, f"{record.name} was compensated but its effect never existed"))
            elif effect.undone_at is None:
                problems.append(EffectProblem(LEFT, f"{record.name} was compensated but its effect is still in place"))
        elif effect is not None and effect.undone_at is None and saga.status != SagaStatus.FAILED:
            # A failed saga waits for a person; any other must not keep the
            # effect of a step that did not succeed.
            problems.append(EffectProblem(LEFT, f"{record.name} is {record.status} but its effect is in place"))
    return problems


def check_effects(sagas: QuerySet[SagaInstance]) -> list[Check]:
    """The run's effects against the finished sagas' outcomes, as checks to print."""
    by_saga: dict = defaultdict(dict)
    for effect in ChaosEffect.objects.filter(saga_id__in=sagas.values("id")):
        by_saga[effect.saga_id][effect.step] = effect
    found: dict[str, list[str]] = defaultdict(list)
    for saga in sagas.filter(status__in=FINAL_EVENT.keys()).prefetch_related("steps"):
        for problem in effect_problems(saga, by_saga.get(saga.id, {})):
            found[problem.kind].append(f"saga {saga.id}: {problem.text}")
    effects = [e for saga_effects in by_saga.values() for e in saga_effects.values()]
    twice = found[TWICE]
    wrong = found[MISSING] + found[LEFT]
    repeated = sum(e.runs - 1 for e in effects if e.runs > 1)
    return [
        Check("no effect applied twice (transactional ones exactly once)", not twice,
              f"{len(twice)} ({'; '.join(twice[:3])})" if twice else
              f"{len(effects)} effects, {sum(e.transactional for e in effects)} transactional"),
        Check("no effect missing after success or left in place after compensation", not wrong,
              f"{len(wrong)} ({'; '.join(wrong[:3])})" if wrong else
              f"{repeated} repeated action runs found their effect already there"),
    ]


# --- recovery ------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    kind: str
    at: datetime
    what: str = ""


@dataclass(frozen=True)
class Recovery:
    fault: Fault
    saga_id: object
    seconds: float | None  # None: no event after the fault (the saga never moved again)


@dataclass(frozen=True)
class KindFigures:
    kind: str
    faults: int
    affected: int
    unrecovered: int
    max_seconds: float | None
    p95_seconds: float | None

    def as_dict(self) -> dict:
        return {"faults": self.faults, "affected": self.affected, "unrecovered": self.unrecovered,
                "max_s": _round(self.max_seconds), "p95_s": _round(self.p95_seconds)}


FINAL_KINDS = set(FINAL_EVENT.values())


def measure_recoveries(faults: list[Fault], trails: dict) -> list[Recovery]:
    """One ``Recovery`` per fault and saga active at it.

    ``trails``: saga id -> its events as ``(created_at, kind)``, oldest first.
    A saga is active at T if it has an event at or before T and none of them
    finished it; its recovery is the time to its first event after T.
    """
    recoveries = []
    for fault in faults:
        for saga_id, trail in trails.items():
            before = [kind for at, kind in trail if at <= fault.at]
            if not before or FINAL_KINDS & set(before):
                continue
            after = next((at for at, _ in trail if at > fault.at), None)
            seconds = None if after is None else (after - fault.at).total_seconds()
            recoveries.append(Recovery(fault, saga_id, seconds))
    return recoveries


def figures_by_kind(faults: list[Fault], recoveries: list[Recovery], kinds: list[str]) -> list[KindFigures]:
    figures = []
    for kind in kinds:
        samples = [r for r in recoveries if r.fault.kind == kind]
        seconds = [r.seconds for r in samples if r.seconds is not None]
        figures.append(KindFigures(
            kind=kind,
            faults=sum(1 for f in faults if f.kind == kind),
            affected=len(samples),
            unrecovered=len(samples) - len(seconds),
            max_seconds=max(seconds) if seconds else None,
            p95_seconds=percentile(seconds, 0.95),
        ))
    return figures


def longest(recoveries: list[Recovery]) -> Recovery | None:
    """The slowest recovery; one that never happened counts as slowest of all."""
    if not recoveries:
        return None
    return max(recoveries, key=lambda r: float("inf") if r.seconds is None else r.seconds)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
