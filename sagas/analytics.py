"""Saga analytics: figures computed from the stored instances and step records.

There is no separate store: every figure is a query over ``SagaInstance`` and
``StepRecord`` in a time window (on ``SagaInstance.created_at``; ``since``
inclusive, ``until`` exclusive). Everything is computed in the database, so
memory and the number of queries do not grow with the number of sagas:
counts are grouped aggregates, the most frequent errors are ranked with a
window function, and each percentile comes back as the two or three rows
around it per group (a window function numbers the sorted durations), then
interpolated here exactly as ``percentile`` does. The same code runs on
SQLite and PostgreSQL. Results are plain dataclasses with ``as_dict()`` for
the admin, the API or a report.

Child sagas (started by a ``ChildSaga`` step) are sagas of their own type
and counted as any other; every figure of a type says how many of its sagas
were ``roots`` and how many ``children``, and ``root=True`` (only roots) or
``root=False`` (only children) narrows any of the functions below to one
kind. A child is told by its ``depth``, which never changes.

- ``saga_type_stats(...)``: one ``SagaTypeStats`` per saga type.
- ``overall_stats(...)``: the same figures over every type together.
- ``step_stats(...)``: one ``StepStats`` per saga type and step.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Iterable

from django.db import connections
from django.db.models import Count, DurationField, Expression, ExpressionWrapper, F, OrderBy, Q, QuerySet, Sum, Window
from django.db.models.functions import Coalesce, Collate, RowNumber

from .models import FORWARD_DONE_STATUSES, SagaInstance, SagaStatus, StepRecord, StepStatus

ALL_TYPES = "*"
TOP_ERRORS = 3
# What the API reports when it is given no ``since``: the last day.
DEFAULT_WINDOW = timedelta(hours=24)
_QUANTILE_SCALE = 1_000_000  # a quantile as an integer fraction, for integer arithmetic in SQL
# Collations that order text by code point, as Python's sorted() does.
_CODE_POINT_COLLATION = {"postgresql": "C", "sqlite": "BINARY"}

# A step whose action succeeded, whatever happened to it afterwards.
_STEP_FORWARD_OK = FORWARD_DONE_STATUSES
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
    roots: int = 0  # of ``total``: root sagas (no parent)
    children: int = 0  # of ``total``: child sagas (started by another saga's ``ChildSaga`` step)

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


def default_since(until: datetime | None, now: datetime) -> datetime:
    """The start of the default window: ``DEFAULT_WINDOW`` before ``until`` (or now)."""
    return (until or now) - DEFAULT_WINDOW


def capped_since(since: datetime, until: datetime | None, now: datetime, limit: float) -> datetime:
    """``since``, moved up so that [since, ``until`` or now) spans ``limit`` seconds at most.

    The cost of the figures grows with the sagas in the window, so a request
    from outside gets a bounded one (``SAGAS_ANALYTICS_MAX_WINDOW``); the
    answer's ``window`` says which was used.
    """
    return max(since, (until or now) - timedelta(seconds=limit))


def _sagas(since: datetime | None, until: datetime | None, saga_type: str | Iterable[str] | None,
           root: bool | None = None) -> QuerySet:
    rows = SagaInstance.objects.all()
    if root is not None:
        rows = rows.filter(depth=0) if root else rows.filter(depth__gt=0)
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


def _in_code_point_order(rows: QuerySet, column: str) -> OrderBy:
    """``column`` ascending as Python sorts text, whatever collation the database defaults to."""
    collation = _CODE_POINT_COLLATION.get(connections[rows.db].vendor)
    return (Collate(column, collation) if collation else F(column)).asc()


def _top_errors(rows: QuerySet, keys: tuple[str, ...], column: str, limit: int,
                prefix: str = "") -> dict[tuple, list[tuple[str, int]]]:
    """Per group of ``keys``: the ``limit`` most frequent non-empty values of ``column`` with their counts.

    Ranked in the database (ties by text, as ``_top`` breaks them), so only
    ``limit`` rows per group come back.
    """
    if limit <= 0:
        return {}
    ranked = rows.exclude(**{column: ""}).values(*keys, column).annotate(n=Count("pk")).annotate(
        rank=Window(RowNumber(), partition_by=[F(k) for k in keys] or None,
                    order_by=[F("n").desc(), _in_code_point_order(rows, column)]),
    ).filter(rank__lte=limit)
    found: dict[tuple, list[tuple[str, int]]] = defaultdict(list)
    for row in ranked.values_list(*keys, column, "n"):
        found[tuple(row[:-2])].append((prefix + row[-2], row[-1]))
    return found


def _quantiles(rows: QuerySet, keys: tuple[str, ...], duration: Expression,
               qs: tuple[float, ...] = (0.50, 0.95)) -> dict[tuple, dict[float, float]]:
    """Per group of ``keys``: each ``q`` quantile of ``duration`` in seconds, as ``percentile`` gives it.

    The database sorts and numbers each group's durations and sends back
    only the rows around each quantile's position (one query per quantile),
    whatever the number of rows.
    """
    numbered = rows.annotate(
        seconds=ExpressionWrapper(duration, output_field=DurationField()),
        position=Window(RowNumber(), partition_by=[F(k) for k in keys] or None, order_by=F("seconds").asc()),
        size=Window(Count("pk"), partition_by=[F(k) for k in keys] or None),
    )
    found: dict[tuple, dict[float, float]] = defaultdict(dict)
    for q in qs:
        # 1-based positions floor((size - 1) * q) .. + 2: the two rows percentile()
        # interpolates between are among them, whatever float rounding does there.
        floor = (F("size") - 1) * round(q * _QUANTILE_SCALE) / _QUANTILE_SCALE
        around: dict[tuple, tuple[int, dict[int, float]]] = {}
        for *group, position, size, seconds in numbered.filter(
                position__gte=floor, position__lte=floor + 2).values_list(*keys, "position", "size", "seconds"):
            around.setdefault(tuple(group), (size, {}))[1][position - 1] = seconds.total_seconds()
        for group, (size, values) in around.items():
            k = (size - 1) * q
            low = int(k)
            high = min(low + 1, size - 1)
            found[group][q] = values[low] + (values[high] - values[low]) * (k - low)
    return found


def _saga_duration() -> Expression:
    return F("finished_at") - Coalesce("started_at", "created_at")


def _saga_figures(saga_type: str, counts: dict[str, int], quantiles: dict[float, float],
                  errors: list[ErrorCount], children: int = 0) -> SagaTypeStats:
    full = {status: counts.get(status, 0) for status in SagaStatus.values}
    finished = full[SagaStatus.SUCCEEDED] + full[SagaStatus.COMPENSATED] + full[SagaStatus.FAILED]
    return SagaTypeStats(
        saga_type=saga_type,
        total=sum(full.values()),
        counts=full,
        finished=finished,
        success_rate=_ratio(full[SagaStatus.SUCCEEDED], finished),
        compensation_rate=_ratio(full[SagaStatus.COMPENSATED] + full[SagaStatus.FAILED], finished),
        p50_seconds=quantiles.get(0.50),
        p95_seconds=quantiles.get(0.95),
        top_errors=errors,
        roots=sum(full.values()) - children,
        children=children,
    )


def _saga_stats(rows: QuerySet, keys: tuple[str, ...], top_errors: int) -> dict[tuple, SagaTypeStats]:
    """Per group of ``keys`` (none: all rows together) the saga figures, in four queries."""
    counts: dict[tuple, dict[str, int]] = defaultdict(dict)
    children: dict[tuple, int] = defaultdict(int)
    for *group, status, n, young in rows.values_list(*keys, "status").annotate(
            n=Count("pk"), young=Count("pk", filter=Q(depth__gt=0))):
        counts[tuple(group)][status] = n
        children[tuple(group)] += young
    gave_up = rows.filter(status__in=(SagaStatus.COMPENSATED, SagaStatus.FAILED))
    errors = _top_errors(gave_up, keys, "error", top_errors)
    quantiles = _quantiles(rows.filter(finished_at__isnull=False), keys, _saga_duration())
    return {group: _saga_figures(group[0] if group else ALL_TYPES, counts[group], quantiles.get(group, {}),
                                 _top(errors.get(group, []), top_errors), children[group])
            for group in sorted(counts)}


def saga_type_stats(*, since: datetime | None = None, until: datetime | None = None,
                    saga_type: str | Iterable[str] | None = None, root: bool | None = None,
                    top_errors: int = TOP_ERRORS) -> list[SagaTypeStats]:
    """Per saga type: counts by status (roots and children), success and compensation rates, p50/p95
    duration, top errors. ``root``: only root sagas (True) or only child sagas (False)."""
    return list(_saga_stats(_sagas(since, until, saga_type, root), ("saga_type",), top_errors).values())


def overall_stats(*, since: datetime | None = None, until: datetime | None = None,
                  saga_type: str | Iterable[str] | None = None, root: bool | None = None,
                  top_errors: int = TOP_ERRORS) -> SagaTypeStats:
    """The same figures as ``saga_type_stats`` over every selected type together (``saga_type`` is ``*``)."""
    stats = _saga_stats(_sagas(since, until, saga_type, root), (), top_errors)
    return stats.get((), _saga_figures(ALL_TYPES, {}, {}, []))


def step_stats(*, since: datetime | None = None, until: datetime | None = None,
               saga_type: str | Iterable[str] | None = None, root: bool | None = None,
               top_errors: int = TOP_ERRORS) -> list[StepStats]:
    """Per saga type and step: counts by status, success and compensation rates, retries, p50/p95, top errors
    (``root``: of the steps of root sagas only, or of child sagas only)."""
    sagas = _sagas(since, until, saga_type, root)
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
    for key, pairs in _top_errors(records.filter(status=StepStatus.FAILED), keyed, "error", top_errors).items():
        errors[key].extend(pairs)
    for key, pairs in _top_errors(records.filter(status=StepStatus.COMPENSATION_FAILED), keyed,
                                  "compensation_error", top_errors, prefix="compensation: ").items():
        errors[key].extend(pairs)
    quantiles = _quantiles(records.filter(started_at__isnull=False, finished_at__isnull=False), keyed,
                           F("finished_at") - F("started_at"))

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
            p50_seconds=quantiles.get(key, {}).get(0.50),
            p95_seconds=quantiles.get(key, {}).get(0.95),
            top_errors=_top(errors[key], top_errors),
        ))
    return result
