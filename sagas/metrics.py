"""``/metrics``: Prometheus figures read from the database when scraped.

Counters kept in a process's memory would be wrong here: steps run in many
prefork worker processes, on many machines, and the web processes that
answer the scrape run none of them. The database already holds every figure,
so a custom collector reads them at scrape time, in three grouped queries
(see the README's "Metrics" for what they cost):

1. sagas by type and status (started, finished, active);
2. step records by type and step (attempts by outcome, waiting steps);
3. finished step records by type, step and outcome (durations, as a histogram).

Counters are figures over the rows the database keeps: ``saga_prune``
removes old sagas, which a scraper sees as a counter reset.
"""
from __future__ import annotations

import hmac
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, F, FloatField, Func, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import access
from .models import ACTIVE_SAGA_STATUSES, FINAL_SAGA_STATUSES, FORWARD_DONE_STATUSES, SagaInstance, StepRecord, \
    StepStatus

# Upper bounds (seconds) of the step duration histogram's buckets.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
# Statuses of a step whose action succeeded (a waiting step's did too).
SUCCEEDED_STATUSES = (*FORWARD_DONE_STATUSES, StepStatus.WAITING)


def _saga_families() -> list[Metric]:
    started = CounterMetricFamily("sagas_started", "Sagas started, by saga type.", labels=["saga_type"])
    finished = CounterMetricFamily("sagas_finished", "Sagas finished, by saga type and final status.",
                                   labels=["saga_type", "status"])
    active = GaugeMetricFamily("sagas_active", "Sagas not finished yet, by saga type and status.",
                               labels=["saga_type", "status"])
    totals: dict[str, int] = {}
    rows = SagaInstance.objects.order_by().values_list("saga_type", "status").annotate(n=Count("id"))
    for saga_type, status, n in sorted(rows):
        totals[saga_type] = totals.get(saga_type, 0) + n
        if status in FINAL_SAGA_STATUSES:
            finished.add_metric([saga_type, status], n)
        elif status in ACTIVE_SAGA_STATUSES:
            active.add_metric([saga_type, status], n)
    for saga_type, n in sorted(totals.items()):
        started.add_metric([saga_type], n)
    return [started, finished, active]


def _attempt_families() -> list[Metric]:
    attempts = CounterMetricFamily(
        "sagas_step_attempts", "Forward step attempts that ended, by saga type, step and outcome "
        "(failed includes attempts lost with their worker).", labels=["saga_type", "step", "outcome"])
    waiting = GaugeMetricFamily("sagas_waiting_steps", "Steps now waiting for a signal, by saga type and step.",
                                labels=["saga_type", "step"])
    rows = (StepRecord.objects.order_by().values("saga__saga_type", "name")
            .annotate(tried=Sum("attempts"),
                      succeeded=Count("id", filter=Q(status__in=SUCCEEDED_STATUSES)),
                      in_flight=Count("id", filter=Q(status=StepStatus.RUNNING, lease_expires_at__isnull=False)),
                      waiting=Count("id", filter=Q(status=StepStatus.WAITING))))
    for row in sorted(rows, key=lambda r: (r["saga__saga_type"], r["name"])):
        labels = [row["saga__saga_type"], row["name"]]
        failed = max((row["tried"] or 0) - row["succeeded"] - row["in_flight"], 0)
        attempts.add_metric([*labels, "succeeded"], row["succeeded"])
        attempts.add_metric([*labels, "failed"], failed)
        waiting.add_metric(labels, row["waiting"])
    return [attempts, waiting]


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


def _duration_family() -> Metric:
    durations = HistogramMetricFamily(
        "sagas_step_duration_seconds", "Time from a step's first attempt to its success or final failure, "
        "retries included, by saga type, step and outcome.", labels=["saga_type", "step", "outcome"])
    took = SecondsBetween(F("finished_at"), F("started_at"))
    buckets = {f"le_{n}": Count("id", filter=Q(took__lte=bound)) for n, bound in enumerate(DURATION_BUCKETS)}
    done = Q(status__in=FORWARD_DONE_STATUSES)
    rows = (StepRecord.objects.order_by()
            .filter(started_at__isnull=False, finished_at__isnull=False)
            .filter(done | Q(status=StepStatus.FAILED))
            .annotate(took=took)
            .values("saga__saga_type", "name")
            .annotate(ok_n=Count("id", filter=done), n=Count("id"), ok_sum=Sum("took", filter=done),
                      all_sum=Sum("took"),
                      **{f"ok_{k}": Count("id", filter=done & Q(took__lte=b))
                         for k, b in zip(buckets, DURATION_BUCKETS)},
                      **buckets))
    for row in sorted(rows, key=lambda r: (r["saga__saga_type"], r["name"])):
        labels = [row["saga__saga_type"], row["name"]]
        seconds = {"ok": _seconds(row["ok_sum"]), "all": _seconds(row["all_sum"])}
        for outcome, prefix, count, total in (
            ("succeeded", "ok_", row["ok_n"], seconds["ok"]),
            ("failed", "", row["n"] - row["ok_n"], seconds["all"] - seconds["ok"]),
        ):
            if not count:
                continue
            cumulative = []
            for n, bound in enumerate(DURATION_BUCKETS):
                within = row[f"{prefix}le_{n}"] if prefix else row[f"le_{n}"] - row[f"ok_le_{n}"]
                cumulative.append((_bound(bound), within))
            cumulative.append(("+Inf", count))
            durations.add_metric([*labels, outcome], cumulative, max(total, 0.0))
    return durations


def _seconds(value: timedelta | int | float | None) -> float:
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _bound(value: float) -> str:
    return f"{value:g}" if value != int(value) else f"{value:.1f}"


class SagaCollector:
    """Every ``sagas_`` figure, read from the database at each scrape (three queries)."""

    def collect(self) -> Iterator[Metric]:
        yield from _saga_families()
        yield from _attempt_families()
        yield _duration_family()


def compute_exposition() -> bytes:
    """The figures in Prometheus's text format, read from the database now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SagaCollector())
    return generate_latest(registry)


CACHE_KEY = "sagas:metrics:exposition"


def exposition() -> bytes:
    """The figures, computed at most once per ``SAGAS_METRICS_CACHE_SECONDS`` for every web process.

    Computing them reads every saga and step record (2.5 s at 100 000 sagas
    on SQLite): kept in the shared cache, however many scrapers ask (several
    Prometheus servers, a scraper retrying), one computation per interval.
    """
    seconds = settings.SAGAS_METRICS_CACHE_SECONDS
    if seconds <= 0:
        return compute_exposition()
    body = cache.get(CACHE_KEY)
    if body is None:
        body = compute_exposition()
        cache.set(CACHE_KEY, body, timeout=seconds)
    return body


LOOPBACK = {"127.0.0.1", "::1"}


def scrape_allowed(request: HttpRequest) -> bool:
    """A scraper showing the bearer token; with DEBUG on, also any client on this machine."""
    token = settings.SAGAS_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    # Compared as bytes: compare_digest refuses str holding anything but ASCII (a 500 before).
    if token and header.startswith("Bearer ") and hmac.compare_digest(
            header[7:].strip().encode("utf-8", "replace"), token.encode("utf-8")):
        return True
    return settings.DEBUG and request.META.get("REMOTE_ADDR") in LOOPBACK


def without_types(body: bytes, saga_types: list[str]) -> bytes:
    """The exposition less every sample of these saga types (their ``saga_type`` label)."""
    if not saga_types:
        return body
    marks = [f'saga_type="{t}"'.encode() for t in saga_types]
    return b"\n".join(line for line in body.split(b"\n") if not any(mark in line for mark in marks))


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """For a scraper with the token: every figure. For a signed-in user who may read sagas (the admin's
    session): the figures of the saga types they may read (``sagas.access``)."""
    if scrape_allowed(request):
        return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
    user = getattr(request, "user", None)
    if user is not None and access.may(user, "view"):
        return HttpResponse(without_types(exposition(), access.forbidden_types(user)),
                            content_type=CONTENT_TYPE_LATEST)
    response = HttpResponse("metrics need a bearer token (SAGAS_METRICS_TOKEN)\n", status=401,
                            content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response
