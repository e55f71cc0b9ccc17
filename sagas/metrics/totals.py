"""Running totals of the finished sagas' figures: a scrape reads only the sagas still moving.

A finished saga is *folded* once: in one transaction holding its row's lock,
its figures (``sagas.metrics.figures``) are added to ``MetricTotal`` and the
saga is marked ``metrics_folded``. A scrape reads the totals and adds the
same figures of the sagas not folded (the active ones, and those finished
since the last fold, found through a partial index that holds only them):
the values of reading every row, at the cost of the rows still moving.

The engine writes nothing more for this on its hot path. What changes a
folded saga's figures moves its totals in the same transaction:

- leaving its final status (``failed`` -> ``compensating`` when its
  compensation is retried): ``unfold``, called by the engine's ``move_saga``;
  the saga is counted live again, and folded again once it ends;
- being removed (``saga_prune``, the benchmark's clean-up): ``forget``.

A finished saga's step records do not change while it stays finished, so
what ``unfold`` and ``forget`` subtract is what the fold added (the step
moves a compensation retry makes before the saga's own move change no
figure: ``compensation_failed`` and ``compensating`` both count as succeeded).

Concurrency: a fold locks the sagas it folds, skipping (PostgreSQL) those a
transition holds, so a saga is never folded twice nor while it moves; totals
move by ``value = value + delta`` in one statement, so concurrent folds,
unfolds and prunes add up. A scrape reads the totals and the unfolded sagas
in one snapshot (``REPEATABLE READ`` on PostgreSQL, SQLite's transaction),
so a fold committing meanwhile is counted once, not twice or not at all.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator

from django.db import connection, transaction
from django.db.models import Q

from ..models import FINAL_SAGA_STATUSES, MetricTotal, SagaInstance
from .figures import CHUNK, Key, counted_sagas, saga_figures, step_figures, step_figures_where

# Sagas folded per transaction, and at most this many transactions per scrape: a backlog (a
# burst of finished sagas) is folded over the next scrapes, and is counted live until then.
# (The sagas that finished before the totals existed were folded by their migration.)
FOLD_BATCH = 500
FOLD_BATCHES_PER_SCRAPE = 20
# Rows of MetricTotal per INSERT ... ON CONFLICT statement (4 parameters each).
UPSERT_ROWS = 1000


def fold(*, batches: int = FOLD_BATCHES_PER_SCRAPE) -> int:
    """Fold finished sagas not folded yet, in ``batches`` transactions at most; how many."""
    # Found among the unfolded sagas (their partial index), then locked by key: asked for finished
    # unfolded sagas at once, SQLite's planner took the status index and read every finished saga.
    finished = [pk for pk, status in SagaInstance.objects.filter(metrics_folded=False).order_by()
                .values_list("pk", "status") if status in FINAL_SAGA_STATUSES]
    folded = 0
    for start in range(0, min(len(finished), batches * FOLD_BATCH), FOLD_BATCH):
        folded += _fold_batch(finished[start:start + FOLD_BATCH])
    return folded


def _fold_batch(candidates: list) -> int:
    with transaction.atomic():
        # Checked again under the lock: one may have moved, or been folded by another process.
        rows = list(SagaInstance.objects.filter(pk__in=candidates, metrics_folded=False,
                                                status__in=FINAL_SAGA_STATUSES)
                    .select_for_update(skip_locked=True).order_by().values_list("pk", "saga_type", "status", "depth"))
        if not rows:
            return 0
        add(_figures_of(rows))
        SagaInstance.objects.filter(pk__in=[row[0] for row in rows]).update(metrics_folded=True)
    return len(rows)


def fold_everything(*, children: bool = True) -> int:
    """Fold every finished saga at once, in one joined pass; how many.

    For the migration that brought the totals in (``0011_metric_totals``),
    which holds the saga table meanwhile: nothing moves a saga between the
    pass and the marking. Elsewhere, ``fold`` (by batches, each locked).
    ``children=False``: the table has no child sagas yet (``saga_figures``).
    """
    finished = SagaInstance.objects.filter(metrics_folded=False, status__in=FINAL_SAGA_STATUSES)
    figures = saga_figures(finished, children=children)
    figures.update(step_figures_where(Q(saga__metrics_folded=False, saga__status__in=FINAL_SAGA_STATUSES)))
    add(figures)
    return finished.update(metrics_folded=True)


def unfold(saga: SagaInstance, *, status: str) -> None:
    """The folded ``saga`` leaves its final ``status``: its figures leave the totals, and it is counted live.

    Called inside the transition's transaction, the saga's row locked.
    """
    add(_figures_of([(saga.pk, saga.saga_type, status, saga.depth)]), sign=-1)
    SagaInstance.objects.filter(pk=saga.pk).update(metrics_folded=False)
    saga.metrics_folded = False


def forget(saga_ids: list) -> None:
    """These sagas are being removed: the figures of those folded leave the totals.

    Called inside the removing transaction; their rows are locked here (no
    fold takes one of them before it is gone).
    """
    rows = [(pk, saga_type, status, depth) for pk, saga_type, status, depth, folded
            in SagaInstance.objects.filter(pk__in=saga_ids).select_for_update().order_by("pk")
            .values_list("pk", "saga_type", "status", "depth", "metrics_folded") if folded]
    if rows:
        add(_figures_of(rows), sign=-1)


def _figures_of(rows: list[tuple]) -> Counter[Key]:
    """The figures of the sagas ``(pk, saga_type, status, depth)``, their step records looked up by key."""
    figures = counted_sagas([row[1:] for row in rows])
    figures.update(step_figures([row[0] for row in rows]))
    return figures


def add(figures: Counter[Key], *, sign: int = 1) -> None:
    """Add ``figures`` (times ``sign``) to the totals: ``value = value + delta``, in key order."""
    table = MetricTotal._meta.db_table
    rows = sorted((key, sign * value) for key, value in figures.items() if value)
    for start in range(0, len(rows), UPSERT_ROWS):
        chunk = rows[start:start + UPSERT_ROWS]
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (saga_type, step, figure, value) VALUES "
                + ", ".join(["(%s, %s, %s, %s)"] * len(chunk))
                + f" ON CONFLICT (saga_type, step, figure) DO UPDATE SET value = {table}.value + excluded.value",
                [part for key, value in chunk for part in (*key, value)])


def current() -> Counter[Key]:
    """Every figure now: the totals plus the sagas not folded yet, read in one snapshot.

    Four queries: the totals, the unfolded sagas, and two grouped queries of
    their step records (two per ``CHUNK`` of them; for more than a ``CHUNK``,
    one joined pass).
    """
    with snapshot():
        figures = Counter({(saga_type, step, figure): value for saga_type, step, figure, value
                           in MetricTotal.objects.values_list("saga_type", "step", "figure", "value")})
        live = list(SagaInstance.objects.filter(metrics_folded=False).order_by()
                    .values_list("pk", "saga_type", "status", "depth"))
        if len(live) <= CHUNK:
            figures.update(_figures_of(live))
        else:  # a crowd (a burst of sagas in flight): one joined pass costs less than a look-up per record
            figures.update(counted_sagas([row[1:] for row in live]))
            figures.update(step_figures_where(Q(saga__metrics_folded=False)))
    return figures


@contextmanager
def snapshot() -> Iterator[None]:
    """A transaction whose reads all see the database as of its first one.

    PostgreSQL's default (READ COMMITTED) gives each statement its own
    snapshot: a fold committing between the totals and the unfolded sagas
    would be counted twice. Inside a transaction already begun (a test's),
    its own level stands.
    """
    outer = connection.in_atomic_block
    with transaction.atomic():
        if connection.vendor == "postgresql" and not outer:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield

