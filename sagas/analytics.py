"""Saga analytics: figures computed from the stored instances and step records.

There is no separate store: every figure is a query over ``SagaInstance`` and
``StepRecord`` in a time window (on ``SagaInstance.created_at``; ``since``
inclusive, ``until`` exclusive). Counts are aggregated in the database;
percentiles are computed in Python from the durations of finished rows, so
the same code runs on SQLite and PostgreSQL. Results are plain dataclasses
with ``as_dict()`` for the admin, the API or a report.

- ``saga_type_stats(...)``: one ``SagaTypeStats`` per saga type.
- ``overall_stats(...)``: the same figures over every type together.
- ``step_stats(...)``: one ``StepStats`` per saga type and step.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Iterable

from django.db.models import Count, QuerySet, Sum

from .models import SagaInstance, SagaStatus, StepRecord, StepStatus

ALL_TYPES = "*"
TOP_ERRORS = 3

# A step whose action succeeded, whatever happened to it afterwards.
_STEP_FORWARD_OK = (StepStatus.SUCCEEDED, StepStatus.COMPENSATING, StepStatus.COMPENSATED,
                    StepStatus.COMPENSATION_FAILED)
_STEP_UNDONE = (StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)


@dataclass(frozen=True)
class ErrorCount:
    error: str
    count: int


@dataclass(frozen=True)
class SagaTypeStats:
    saga_type: str
    total: int
    counts: dict[str, int]  # every saga status -> instances in it
    finished: int  # succeeded + compensated + failed
    success_rate: float | None  # succeeded / finished
    compensation_rate: float | None  # (compensated + failed) / finished
    p50_seconds: float | None  # duration of finished instances, started -> finished
    p95_seconds: float | None
    top_errors: list[ErrorCount] = field(default_factory=list)

    @property
    def active(self) -> int:
        return self.total - self.finished

    def as_dict(self) -> dict:
        return {**asdict(self), "active": self.active}


@dataclass(frozen=True)
class StepStats:
    saga_type: str
    index: int
    step: str
    total: int
    counts: dict[str, int]  # every step status -> records in it
    succeeded: int  # actions that succeeded (some later compensated)
    failed: int  # actions that failed for good
    compensated: int  # compensations run to the end
    compensation_failed: int
    retried_attempts: int  # attempts beyond the first, over all records
    success_rate: float | None  # succeeded / (succeeded + failed)
    compensation_rate: float | None  # (compensated + compensation_failed) / succeeded
    p50_seconds: float | None  # first attempt start -> success or final failure
    p95_seconds: float | None
    top_errors: list[ErrorCount] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation; ``None`` for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    k = (len(ordered) - 1) * q
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _sagas(since: datetime | None, until: datetime | None, saga_type: str | Iterable[str] | None) -> QuerySet:
    rows = SagaInstance.objects.all()
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    if until is not None:
        rows = rows.filter(created_at__lt=until)
    if isinstance(saga_type, str):
        rows = rows.filter(saga_type=saga_type)
    elif saga_type is not None:
        rows = rows.filter(saga_type__in=list(saga_type))
    return rows.order_by()


def _top(pairs: Iterable[tuple[str, int]], limit: int) -> list[ErrorCount]:
    ranked = sorted(((text, n) for text, n in pairs if text), key=lambda p: (-p[1], p[0]))
    return [ErrorCount(text, n) for text, n in ranked[:limit]]


def _saga_figures(saga_type: str, counts: dict[str, int], durations: list[float],
                  errors: list[ErrorCount]) -> SagaTypeStats:
    full = {status: counts.get(status, 0) for status in SagaStatus.values}
    finished = full[SagaStatus.SUCCEEDED] + full[SagaStatus.COMPENSATED] + full[SagaStatus.FAILED]
    return SagaTypeStats(
        saga_type=saga_type,
        total=sum(full.values()),
        counts=full,
        finished=finished,
        success_rate=_ratio(full[SagaStatus.SUCCEEDED], finished),
        compensation_rate=_ratio(full[SagaStatus.COMPENSATED] + full[SagaStatus.FAILED], finished),
        p50_seconds=percentile(durations, 0.50),
        p95_seconds=percentile(durations, 0.95),
        top_errors=errors,
    )


def _saga_durations(rows: QuerySet) -> dict[str, list[float]]:
    durations: dict[str, list[float]] = defaultdict(list)
    finished = rows.filter(finished_at__isnull=False)
    for saga_type, created, started, finished_at in finished.values_list(
            "saga_type", "created_at", "started_at", "finished_at").iterator():
        durations[saga_type].append((finished_at - (started or created)).total_seconds())
    return durations


def saga_type_stats(*, since: datetime | None = None, until: datetime | None = None,
                    saga_type: str | Iterable[str] | None = None, top_errors: int = TOP_ERRORS) -> list[SagaTypeStats]:
    """Per saga type: counts by status, success and compensation rates, p50/p95 duration, top errors."""
    rows = _sagas(since, until, saga_type)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for name, status, n in rows.values_list("saga_type", "status").annotate(n=Count("id")):
        counts[name][status] = n
    errors: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for name, text, n in rows.exclude(error="").filter(
            status__in=(SagaStatus.COMPENSATED, SagaStatus.FAILED)).values_list("saga_type", "error").annotate(
            n=Count("id")):
        errors[name].append((text, n))
    durations = _saga_durations(rows)
    return [_saga_figures(name, counts[name], durations.get(name, []), _top(errors.get(name, []), top_errors))
            for name in sorted(counts)]


def overall_stats(*, since: datetime | None = None, until: datetime | None = None,
                  saga_type: str | Iterable[str] | None = None, top_errors: int = TOP_ERRORS) -> SagaTypeStats:
    """The same figures as ``saga_type_stats`` over every selected type together (``saga_type`` is ``*``)."""
    rows = _sagas(since, until, saga_type)
    counts = dict(rows.values_list("status").annotate(n=Count("id")))
    errors = rows.exclude(error="").filter(status__in=(SagaStatus.COMPENSATED, SagaStatus.FAILED)).values_list(
        "error").annotate(n=Count("id"))
    durations = [d for per_type in _saga_durations(rows).values() for d in per_type]
    return _saga_figures(ALL_TYPES, counts, durations, _top(errors, top_errors))


def step_stats(*, since: datetime | None = None, until: datetime | None = None,
               saga_type: str | Iterable[str] | None = None, top_errors: int = TOP_ERRORS) -> list[StepStats]:
    """Per saga type and step: counts by status, success and compensation rates, retries, p50/p95, top errors."""
    sagas = _sagas(since, until, saga_type)
    records = StepRecord.objects.filter(saga__in=sagas).order_by()
    keyed = ("saga__saga_type", "index", "name")
    counts: dict[tuple, dict[str, int]] = defaultdict(dict)
    attempts: dict[tuple, int] = defaultdict(int)
    for saga_name, index, name, status, n, tries in records.values_list(*keyed, "status").annotate(
            n=Count("id"), tries=Sum("attempts")):
        counts[(saga_name, index, name)][status] = n
        if status not in (StepStatus.PENDING, StepStatus.SKIPPED):
            attempts[(saga_name, index, name)] += (tries or 0) - n
    errors: dict[tuple, list[tuple[str, int]]] = defaultdict(list)
    for saga_name, index, name, text, n in records.filter(status=StepStatus.FAILED).exclude(error="").values_list(
            *keyed, "error").annotate(n=Count("id")):
        errors[(saga_name, index, name)].append((text, n))
    for saga_name, index, name, text, n in records.filter(status=StepStatus.COMPENSATION_FAILED).exclude(
            compensation_error="").values_list(*keyed, "compensation_error").annotate(n=Count("id")):
        errors[(saga_name, index, name)].append((f"compensation: {text}", n))
    durations: dict[tuple, list[float]] = defaultdict(list)
    for saga_name, index, name, started, finished in records.filter(
            started_at__isnull=False, finished_at__isnull=False).values_list(
            *keyed, "started_at", "finished_at").iterator():
        durations[(saga_name, index, name)].append((finished - started).total_seconds())

    result = []
    for key in sorted(counts):
        full = {status: counts[key].get(status, 0) for status in StepStatus.values}
        succeeded = sum(full[s] for s in _STEP_FORWARD_OK)
        failed = full[StepStatus.FAILED]
        undone = sum(full[s] for s in _STEP_UNDONE)
        result.append(StepStats(
            saga_type=key[0], index=key[1], step=key[2],
            total=sum(full.values()),
            counts=full,
            succeeded=succeeded,
            failed=failed,
            compensated=full[StepStatus.COMPENSATED],
            compensation_failed=full[StepStatus.COMPENSATION_FAILED],
            retried_attempts=attempts[key],
            success_rate=_ratio(succeeded, succeeded + failed),
            compensation_rate=_ratio(undone, succeeded),
            p50_seconds=percentile(durations[key], 0.50),
            p95_seconds=percentile(durations[key], 0.95),
            top_errors=_top(errors[key], top_errors),
        ))
    return result
