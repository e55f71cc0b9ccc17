"""The sagas ``saga_chaos`` runs, the effects their steps leave, and how a run is judged.

Four workloads: ``sagas.chaos`` (the plain one: a step,
a Parallel of two, a step), ``sagas.chaos.fanout`` (a step, a Parallel of 24
members one of which may refuse while its siblings are claimed, a step),
``sagas.chaos.long`` (a step, a step that works for tens of seconds, two
steps) and ``sagas.chaos.nested`` (a step, a child saga, a Parallel of a
child saga and a step, a step: children of ``sagas.chaos.nested.child``,
undone as a whole when their parent fails after them). Every action applies a real effect in this database (a ``ChaosEffect`` row
keyed by the step's idempotency key) and every compensation marks it undone,
so a run can tell from the rows alone whether an effect was applied twice,
is missing after success, or was left in place after compensation.

Recovery is read from the audit trail: for a fault at time T, every saga
still active at T is caught by it, and its recovery time is the time from T
to its first ``SagaEvent`` after T.

Stand-still is read from the audit trail too, per saga, fault or no fault:
the longest stretch of its active life (from ``saga_created`` to its final
event, or to the end of the run) in which no event was written and no live
attempt worked for it (see ``measure_stand_stills``). A step's own work,
however long, is not standing still; a saga whose next message was lost is.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from django.db.models import F, QuerySet
from django.utils import timezone

from .analytics import percentile
from .definitions import ChildSaga, Parallel, Retry, Saga, Step, registry
from .errors import PermanentError, UnknownSagaType
from .invariants import FINAL_EVENT, Check
from .models import ChaosEffect, EventKind, SagaInstance, SagaStatus, StepStatus

CHAOS_SAGA = "sagas.chaos"
FANOUT_SAGA = "sagas.chaos.fanout"
LONG_SAGA = "sagas.chaos.long"
NESTED_SAGA = "sagas.chaos.nested"
NESTED_CHILD_SAGA = "sagas.chaos.nested.child"

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
    return _apply_once_per_key(ctx)


def _apply_once_per_key(ctx) -> dict:
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


# --- the fan-out saga ------------------------------------------------------------------
#
# Input: ``sleep`` (seconds the first and last steps work), ``member_sleep``
# (seconds each member works), ``fail`` (the member that refuses for good, or
# none) and ``fail_after`` (seconds it works before refusing: short, so that
# its siblings are being claimed and run, on every worker process, while its
# failure is recorded). Every member applies an effect; a compensated saga
# must leave none of them in place, whichever members had been claimed.

FANOUT_MEMBERS = tuple(f"m{i:02d}" for i in range(24))


def apply_member_effect(ctx) -> dict:
    if ctx.input.get("fail") == ctx.step:
        time.sleep(float(ctx.input.get("fail_after") or 0))
        raise PermanentError(f"chaos: member {ctx.step} refuses")
    seconds = float(ctx.input.get("member_sleep") or 0)
    if seconds:
        time.sleep(seconds)
    return _apply_once_per_key(ctx)


fanout_saga = Saga(
    name=FANOUT_SAGA,
    description="Fan-out chaos saga used by `manage.py saga_chaos --workload fanout`: "
                "a Parallel of 24 members, each leaving a checkable effect.",
    steps=[
        Step("f0", apply_effect, compensation=undo_effect, retry=RETRY),
        Parallel("fan", *[Step(name, apply_member_effect, compensation=undo_effect, retry=RETRY)
                          for name in FANOUT_MEMBERS]),
        Step("f2", apply_effect, compensation=undo_effect, retry=RETRY),
    ],
)


# --- the long-step saga ----------------------------------------------------------------
#
# Input: ``sleep`` (seconds the short steps work), ``long_seconds`` (seconds
# the long step works: tens of them, within the default step timeout),
# ``fail`` (``l3`` to have the last step refuse, or none). ``saga_chaos``
# loses the message that carries the saga on after the long step.

LONG_STEP = "long"


def apply_long_effect(ctx) -> dict:
    time.sleep(float(ctx.input.get("long_seconds") or 0))
    return _apply_once_per_key(ctx)


long_saga = Saga(
    name=LONG_SAGA,
    description="Long-step chaos saga used by `manage.py saga_chaos --workload long`: "
                "one step works for tens of seconds, every step leaves a checkable effect.",
    steps=[
        Step("l0", apply_effect, compensation=undo_effect, retry=RETRY),
        Step(LONG_STEP, apply_long_effect, compensation=undo_effect, retry=RETRY),
        Step("l2", apply_effect, compensation=undo_effect, retry=RETRY),
        Step("l3", apply_effect, compensation=undo_effect, retry=RETRY),
    ],
)
LONG_REFUSING_STEPS = ("l3",)


# --- the nested saga ------------------------------------------------------------------
#
# Input: ``sleep`` (seconds a step works, the children's too), ``fail`` (the
# parent's step that refuses for good: ``n2``, after both children succeeded,
# so each is undone as a whole; ``n1b``, the Parallel member beside a child,
# which is then stopped or undone), ``child_fail`` (the step of the first
# child that refuses: that child compensates itself and its parent's step
# fails). Every step of parent and child applies an effect; a compensated
# tree must leave none in place, in the parent or in any child.


def nested_child_input(ctx) -> dict:
    """The child's input: the parent's pace; the first child (``child``) refuses where the parent says."""
    return {"i": ctx.input.get("i"), "sleep": ctx.input.get("sleep"),
            "fail": ctx.input.get("child_fail") if ctx.step == "child" else None}


nested_child_saga = Saga(
    name=NESTED_CHILD_SAGA,
    description="The child saga of `manage.py saga_chaos --workload nested`: three steps with checkable effects.",
    steps=[
        Step("c0", apply_effect, compensation=undo_effect, retry=RETRY),
        Step("c1", apply_effect, compensation=undo_effect, retry=RETRY),
        Step("c2", apply_effect_once, compensation=undo_effect, retry=RETRY, transactional=True),
    ],
)

nested_saga = Saga(
    name=NESTED_SAGA,
    description="Nested chaos saga used by `manage.py saga_chaos --workload nested`: child sagas, one of them "
                "inside a Parallel, every step of the tree leaving a checkable effect.",
    steps=[
        Step("n0", apply_effect, compensation=undo_effect, retry=RETRY),
        ChildSaga("child", NESTED_CHILD_SAGA, input=nested_child_input),
        Parallel("fan",
                 ChildSaga("child_a", NESTED_CHILD_SAGA, input=nested_child_input),
                 Step("n1b", apply_effect, compensation=undo_effect, retry=RETRY)),
        Step("n2", apply_effect, compensation=undo_effect, retry=RETRY),
    ],
)
# How a nested saga may fail: (parent step, child step). Twice as often after both children succeeded.
NESTED_REFUSALS = (("n2", None), ("n2", None), ("n1b", None), (None, "c1"))


# --- effects -------------------------------------------------------------------------


TWICE = "applied twice"
MISSING = "missing"
LEFT = "left in place"


@dataclass(frozen=True)
class EffectProblem:
    kind: str  # TWICE, MISSING or LEFT
    text: str


def _child_steps(saga: SagaInstance) -> set[int]:
    """The indices of the saga's ``ChildSaga`` steps: their effects are their children's, not their own."""
    try:
        definition = registry.get(saga.saga_type, saga.version)
    except UnknownSagaType:  # not registered in this process (the chaos switch is off): the steps that started one
        return set(SagaInstance.objects.filter(parent_id=saga.pk).values_list("parent_step__index", flat=True))
    return {i for i in range(len(definition.steps)) if definition.is_child(i)}


def effect_problems(saga: SagaInstance, effects: dict[str, ChaosEffect]) -> list[EffectProblem]:
    """What is wrong with one saga's effects (``effects``: step name -> its row); empty when nothing is.

    A ``ChildSaga`` step applies nothing itself: its child's effects are judged with the child."""
    problems = []
    children = _child_steps(saga)
    for record in saga.steps.all():
        if record.index in children:
            continue
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


def effects_left_behind(sagas: QuerySet[SagaInstance]) -> list[ChaosEffect]:
    """Effect rows of compensated sagas still in place (``undone_at`` empty): whatever their step records say."""
    compensated = sagas.filter(status=SagaStatus.COMPENSATED).values("id")
    return list(ChaosEffect.objects.filter(saga_id__in=compensated, undone_at__isnull=True).order_by("id"))


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
    # The steps (``StepRecord`` pks) whose attempt a process this fault killed was holding.
    cut: frozenset = frozenset()


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


def measure_recoveries(faults: list[Fault], trails: dict, work: dict | None = None) -> list[Recovery]:
    """One ``Recovery`` per fault and saga active at it.

    ``trails``: saga id -> its events as ``(created_at, kind)``, oldest first.
    A saga is active at T if it has an event at or before T and none of them
    finished it, or the last that did was followed by one that reopened it
    (``active_at``: a child saga being undone by its parent); its recovery is
    the time to its first event after T.
    ``work``: saga id -> its ``work_spans``: a saga whose live attempt, one
    the fault did not kill, was at work across T was not stopped by it (a
    long step of its own): its recovery counts from the end of that work.
    """
    recoveries = []
    for fault in faults:
        for saga_id, trail in trails.items():
            before = [kind for at, kind in trail if at <= fault.at]
            if not active_at(before):
                continue
            since = max([fault.at, *[end for begin, end in (work or {}).get(saga_id, [])
                                      if begin <= fault.at < end]])
            after = next((at for at, _ in trail if at > fault.at and at >= since), None)
            seconds = None if after is None else (after - since).total_seconds()
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


# --- stand-still -----------------------------------------------------------------------


@dataclass(frozen=True)
class TrailEvent:
    at: datetime
    kind: str
    step_id: int | None = None
    # A ``ChildSaga`` step's ``step_waiting``: from here its child works for the saga (until ``child_ended``).
    waits_for_child: bool = False
    child_ended: datetime | None = None  # when that child reached its final status (None: not by the end)


@dataclass(frozen=True)
class StandStill:
    saga_id: object
    seconds: float
    start: datetime | None  # the longest stretch: from, to (None: the saga has no events)
    end: datetime | None


# The start of an attempt: ``step_started`` is dated when the attempt began
# (written when it ends); ``compensation_started`` is written when it begins.
ATTEMPT_STARTS = {EventKind.STEP_STARTED, EventKind.COMPENSATION_STARTED}
# What ends an attempt of the same step: its report, or its loss.
ATTEMPT_ENDS = {
    EventKind.STEP_SUCCEEDED, EventKind.STEP_WAITING, EventKind.STEP_ATTEMPT_FAILED, EventKind.STEP_FAILED,
    EventKind.STEP_ATTEMPT_LOST, EventKind.STEP_COMPENSATED, EventKind.COMPENSATION_ATTEMPT_FAILED,
    EventKind.COMPENSATION_FAILED,
}


def work_spans(trail: list[TrailEvent], faults: list[Fault], ended: datetime,
               running_at_end: dict | None = None) -> list[tuple[datetime, datetime]]:
    """When a live attempt worked for the saga of ``trail`` (its events, oldest first).

    An attempt works from its start event to the next event of the same
    step that ends an attempt (its report or its loss). A ``ChildSaga``
    step's wait works too, from its ``step_waiting`` to the step's next event
    or its child's end, whichever comes first. A fault that killed
    the process holding that step meanwhile (``Fault.cut``) ends it there:
    after it no one works, whatever the loss event says later.
    ``running_at_end``: step id -> when the attempt that holds it at the end
    of the run began (None: from its start event), for attempts a live
    process still runs; they work until ``ended``.
    """
    running_at_end = running_at_end or {}
    spans = []
    for i, start in enumerate(trail):
        if start.waits_for_child and start.step_id is not None:
            # The child works for the saga while its step waits for it: until the step moves, or the child's
            # end if that comes first (a lost message after it is the parent standing still).
            moved = next((e.at for e in trail[i + 1:] if e.step_id == start.step_id), ended)
            spans.append((start.step_id, start.at, min(moved, start.child_ended or ended)))
            continue
        if start.kind not in ATTEMPT_STARTS or start.step_id is None:
            continue
        end = next((e.at for e in trail[i + 1:] if e.step_id == start.step_id and e.kind in ATTEMPT_ENDS), None)
        if end is None:
            end = ended if start.step_id in running_at_end else start.at
        spans.append((start.step_id, start.at, end))
    spans += [(step_id, began, ended) for step_id, began in running_at_end.items() if began is not None]
    cut_spans = []
    for step_id, begin, end in spans:
        killed = [f.at for f in faults if step_id in f.cut and begin <= f.at < end]
        cut_spans.append((begin, min(killed, default=end)))
    return cut_spans


def longest_stand_still(trail: list[TrailEvent], spans: list[tuple[datetime, datetime]],
                        ended: datetime) -> tuple[float, datetime | None, datetime | None]:
    """The longest stretch of the saga's active life with no event and no working attempt: seconds, from, to.

    Its life runs from its first event (``saga_created``) to its final one,
    or to ``ended`` if it has none; events after the final one do not count,
    unless they reopen it (``lives``: a child saga its parent undoes after it
    succeeded lives again from its ``saga_compensating``).
    """
    if not trail:
        return 0.0, None, None
    best = (0.0, None, None)
    for life_start, life_end in lives(trail, ended):
        marks = sorted({e.at for e in trail if life_start <= e.at <= life_end})
        covered = sorted((max(b, life_start), min(e, life_end)) for b, e in spans
                         if e > b and b < life_end and e > life_start)
        # The uncovered stretches of its life, then each cut at every event inside it.
        free, cursor = [], life_start
        for begin, end in covered:
            if begin > cursor:
                free.append((cursor, begin))
            cursor = max(cursor, end)
        if life_end > cursor:
            free.append((cursor, life_end))
        for begin, end in free:
            points = [begin, *[m for m in marks if begin < m < end], end]
            for a, b in zip(points, points[1:]):
                if (b - a).total_seconds() > best[0]:
                    best = ((b - a).total_seconds(), a, b)
    return best


# What brings a finished saga back to life: its parent undoing it after it succeeded.
REOPENS = {EventKind.SAGA_COMPENSATING}


def lives(trail: list[TrailEvent], ended: datetime) -> list[tuple[datetime, datetime]]:
    """The stretches in which the saga of ``trail`` was active: from its first event to its final one, and
    from each event that reopened it (``REOPENS``) to its next final one (or ``ended``)."""
    found, start = [], trail[0].at
    for e in trail:
        if start is not None and e.kind in FINAL_KINDS:
            found.append((start, e.at))
            start = None
        elif start is None and e.kind in REOPENS:
            start = e.at
    if start is not None:
        found.append((start, ended))
    return found


def active_at(kinds: list[str]) -> bool:
    """Whether a saga whose events up to some moment are of ``kinds`` (oldest first) was active then: it has
    begun, and its last final event, if any, was followed by one that reopened it."""
    markers = [k for k in kinds if k in FINAL_KINDS or k in REOPENS]
    return bool(kinds) and (not markers or markers[-1] not in FINAL_KINDS)


def measure_stand_stills(trails: dict, faults: list[Fault], ended: datetime,
                         running_at_end: dict | None = None) -> list[StandStill]:
    """One ``StandStill`` per saga: the longest time it stood still.

    ``trails``: saga id -> its ``TrailEvent``s, oldest first.
    ``running_at_end``: step id -> when its live attempt began (see ``work_spans``).
    The rule: its active life, less the time a live attempt worked for it (a
    long step's own work is not standing still, but the time after a fault
    killed its process is), cut at every event; the longest piece. So a
    lost message counts from the last thing that happened (the step's
    recorded success) to the first thing that moves the saga again.
    """
    stills = []
    for saga_id, trail in trails.items():
        spans = work_spans(trail, faults, ended, running_at_end)
        seconds, start, end = longest_stand_still(trail, spans, ended)
        stills.append(StandStill(saga_id, seconds, start, end))
    return stills


@dataclass(frozen=True)
class StandStillFigures:
    sagas: int
    max_seconds: float | None
    p95_seconds: float | None
    over: int  # sagas that stood still longer than the limit

    def as_dict(self) -> dict:
        return {"sagas": self.sagas, "max_s": _round(self.max_seconds), "p95_s": _round(self.p95_seconds),
                "over_limit": self.over}


def stand_still_figures(stills: list[StandStill], limit: float) -> StandStillFigures:
    seconds = [s.seconds for s in stills]
    return StandStillFigures(sagas=len(stills), max_seconds=max(seconds) if seconds else None,
                             p95_seconds=percentile(seconds, 0.95), over=sum(1 for s in seconds if s > limit))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
