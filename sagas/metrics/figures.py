"""The figures of ``/metrics`` over a set of sagas, as one flat ``Counter``.

A scrape counts the sagas not folded yet with these functions, and a fold
(``sagas.metrics.totals``) counts a batch of finished sagas with the same
ones before adding them to ``MetricTotal``: whichever way a saga is counted,
it adds the same figures. Every figure is a sum, so the two parts add up.

A key is ``(saga_type, step, figure)``: ``step`` is empty for a saga's own
figure (``figure`` is then its status for a root saga, ``child:<status>`` for
a child saga: ``saga_figure``; the value a number of sagas); for a step's
figures it is the step's name (``STEP_FIGURES``, ``DURATION_FIGURES``).
A child saga is told by its ``depth`` (it never changes), so a saga is
counted the same way whenever it is.
"""
from __future__ import annotations

from collections import Counter
from datetime import timedelta

from django.db.models import Count, F, FloatField, Func, OuterRef, Q, QuerySet, Subquery, Sum

from ..models import FORWARD_DONE_STATUSES, SagaInstance, StepRecord, StepStatus

# Upper bounds (seconds) of the step duration histogram's buckets.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
# Statuses of a step whose action succeeded (a waiting step's did too).
SUCCEEDED_STATUSES = (*FORWARD_DONE_STATUSES, StepStatus.WAITING)

Key = tuple[str, str, str]
# A saga's own figure is its status for a root saga, this and its status for a child saga.
CHILD_PREFIX = "child:"
ROOT, CHILD = "root", "child"
# Saga ids per statement: SQLite takes at most 32 766 parameters.
CHUNK = 5000

# Per step (all its records): how many records, attempts begun, records whose action succeeded,
# attempts in flight, waits.
STEP_FIGURES = ("records", "tried", "succeeded", "in_flight", "waiting")
# Per step (its finished records): how many, how many succeeded, their seconds, and per bucket
# how many took at most its bound (``le_<n>``; ``ok_le_<n>`` of those that succeeded).
BUCKET_FIGURES = tuple(f"le_{n}" for n in range(len(DURATION_BUCKETS)))
DURATION_FIGURES = ("n", "ok_n", "all_sum", "ok_sum", *BUCKET_FIGURES, *(f"ok_{b}" for b in BUCKET_FIGURES))


def saga_figure(status: str, depth: int) -> str:
    """The figure a saga of this status and depth adds one to: its status, ``child:`` first for a child."""
    return f"{CHILD_PREFIX}{status}" if depth else status


def role_and_status(figure: str) -> tuple[str, str]:
    """``(role, status)`` of a saga's figure: ``root`` or ``child``, as ``saga_figure`` wrote it."""
    if figure.startswith(CHILD_PREFIX):
        return CHILD, figure[len(CHILD_PREFIX):]
    return ROOT, figure


def saga_figures(sagas: QuerySet[SagaInstance], *, children: bool = True) -> Counter[Key]:
    """These sagas by type, status and root or child: one grouped query.

    ``children=False``: every saga is a root (a database from before child
    sagas, whose table has no ``depth`` yet: the migration that folded the
    first totals).
    """
    rows = sagas.order_by().values_list("saga_type", "status")
    if not children:
        return Counter({(saga_type, "", saga_figure(status, 0)): n
                        for saga_type, status, n in rows.annotate(n=Count("id"))})
    rows = rows.annotate(n=Count("id"), children=Count("id", filter=Q(depth__gt=0)))
    figures: Counter[Key] = Counter()
    for saga_type, status, n, children in rows:
        figures[(saga_type, "", saga_figure(status, 0))] += n - children
        figures[(saga_type, "", saga_figure(status, 1))] += children
    return +figures  # no zeros: a type with no child sagas has no child figures


def counted_sagas(rows: list[tuple[str, str, int]]) -> Counter[Key]:
    """Sagas by type, status and root or child, from their ``(saga_type, status, depth)``."""
    return Counter((saga_type, "", saga_figure(status, depth)) for saga_type, status, depth in rows)


def step_figures(saga_ids: list) -> Counter[Key]:
    """Attempts, waits and durations of these sagas' step records by saga type and step.

    Two grouped queries per ``CHUNK`` sagas. Each record finds its saga's
    type by the saga's key (a subquery), not by a join: given a join,
    PostgreSQL's planner hashed the whole saga table (or the whole step
    table) at 100 000 sagas, where this reads only these sagas' rows, each
    through an index. For many sagas at once, ``step_figures_where``.
    """
    figures: Counter[Key] = Counter()
    for start in range(0, len(saga_ids), CHUNK):
        _count_steps(figures, StepRecord.objects.filter(saga_id__in=saga_ids[start:start + CHUNK]).annotate(
            saga_type=Subquery(SagaInstance.objects.filter(pk=OuterRef("saga_id")).order_by().values("saga_type")[:1])))
    return figures


def step_figures_where(sagas: Q) -> Counter[Key]:
    """As ``step_figures``, for the step records of the sagas ``sagas`` (a ``Q`` on ``StepRecord``, through
    ``saga__``) in one pass joined to their sagas: for tens of thousands, cheaper than a look-up per record."""
    figures: Counter[Key] = Counter()
    _count_steps(figures, StepRecord.objects.filter(sagas).annotate(saga_type=F("saga__saga_type")))
    return figures


def _count_steps(figures: Counter[Key], steps: QuerySet[StepRecord]) -> None:
    """Add the figures of ``steps`` (annotated with their ``saga_type``) to ``figures``: two grouped queries."""
    rows = (steps.order_by().values("saga_type", "name")
            .annotate(records=Count("id"), tried=Sum("attempts"),
                      succeeded=Count("id", filter=Q(status__in=SUCCEEDED_STATUSES)),
                      in_flight=Count("id", filter=Q(status=StepStatus.RUNNING, lease_expires_at__isnull=False)),
                      waiting=Count("id", filter=Q(status=StepStatus.WAITING))))
    for row in rows:
        for figure in STEP_FIGURES:
            figures[(row["saga_type"], row["name"], figure)] += row[figure] or 0
    for row in _durations(steps):
        for figure in DURATION_FIGURES:
            value = row[figure]
            figures[(row["saga_type"], row["name"], figure)] += _seconds(value) if "sum" in figure else value


class SecondsBetween(Func):
    """``end - start`` in seconds, computed by the database's own functions.

    Django's duration arithmetic on SQLite calls a Python function per row and
    per use: with one use per histogram bucket that made a scrape of 80 000
    step records take seconds there. ``julianday`` and ``EXTRACT(EPOCH ...)``
    are built in.
    """

    output_field = FloatField()
    arity = 2

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection,
                           template="((julianday(%(expressions)s)) * 86400.0)", arg_joiner=") - julianday(", **extra)

    def as_postgresql(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection, template="EXTRACT(EPOCH FROM (%(expressions)s))",
                           arg_joiner=" - ", **extra)

    def as_sql(self, compiler, connection, **extra):
        if "template" not in extra:  # another database: Django's duration, as microseconds
            return super().as_sql(compiler, connection, template="(%(expressions)s)", arg_joiner=" - ", **extra)
        return super().as_sql(compiler, connection, **extra)


def _durations(steps: QuerySet[StepRecord]):
    """Finished records (succeeded or failed for good) grouped by type and step, one count per bucket."""
    took = SecondsBetween(F("finished_at"), F("started_at"))
    done = Q(status__in=FORWARD_DONE_STATUSES)
    return (steps.order_by()
            .filter(started_at__isnull=False, finished_at__isnull=False)
            .filter(done | Q(status=StepStatus.FAILED))
            .annotate(took=took)
            .values("saga_type", "name")
            .annotate(ok_n=Count("id", filter=done), n=Count("id"), ok_sum=Sum("took", filter=done),
                      all_sum=Sum("took"),
                      **{f"ok_{b}": Count("id", filter=done & Q(took__lte=bound))
                         for b, bound in zip(BUCKET_FIGURES, DURATION_BUCKETS)},
                      **{b: Count("id", filter=Q(took__lte=bound)) for b, bound in zip(BUCKET_FIGURES, DURATION_BUCKETS)}))


def _seconds(value: timedelta | int | float | None) -> float:
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)
