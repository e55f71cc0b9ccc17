"""``/metrics``: Prometheus figures read from the database when scraped.

Counters kept in a process's memory would be wrong here: steps run in many
prefork worker processes, on many machines, and the web processes that
answer the scrape run none of them. The database already holds every figure,
so a custom collector reads them at scrape time (see the guide's "Metrics and Prometheus"
for what that costs):

- ``figures``: the grouped queries, over any set of sagas: by type, status
  and role (started, finished, active; ``role`` is ``root`` or ``child``,
  so summing it away gives every saga of the type); step records by type and step
  (attempts by outcome, waiting steps, durations as a histogram);
- ``totals``: those figures summed once for every finished saga (folded),
  so a scrape reads only the sagas not folded yet, whatever the number that
  finished before.

Counters are figures over the rows the database keeps: ``saga_prune``
removes old sagas, which a scraper sees as a counter reset.
"""
from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Iterator

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from django.db.models import Count, Q

from .. import access
from ..engine.intervention import PERSON
from ..models import ACTIVE_SAGA_STATUSES, FINAL_SAGA_STATUSES, SagaInstance, SagaStatus
from . import totals
from .figures import (BUCKET_FIGURES, CHILD, DURATION_BUCKETS, ROOT, SUCCEEDED_STATUSES, Key, SecondsBetween,
                      role_and_status)

__all__ = ["DURATION_BUCKETS", "SUCCEEDED_STATUSES", "SagaCollector", "SecondsBetween", "compute_exposition",
           "exposition", "families", "metrics_view", "scrape_allowed", "without_types"]


ROLE_HELP = " (role: root, or child for a saga started by another saga's ChildSaga step)."


def _saga_families(figures: Counter[Key]) -> list[Metric]:
    started = CounterMetricFamily("sagas_started", "Sagas started, by saga type and role" + ROLE_HELP,
                                  labels=["saga_type", "role"])
    finished = CounterMetricFamily("sagas_finished", "Sagas finished, by saga type, final status and role"
                                   + ROLE_HELP, labels=["saga_type", "status", "role"])
    active = GaugeMetricFamily("sagas_active", "Sagas not finished yet, by saga type, status and role" + ROLE_HELP,
                               labels=["saga_type", "status", "role"])
    by_type: dict[tuple[str, str], int] = {}
    for (saga_type, step, figure), n in sorted(figures.items()):
        if step or n <= 0:
            continue
        role, status = role_and_status(figure)
        by_type[(saga_type, role)] = by_type.get((saga_type, role), 0) + n
        if status in FINAL_SAGA_STATUSES:
            finished.add_metric([saga_type, status, role], n)
        elif status in ACTIVE_SAGA_STATUSES:
            active.add_metric([saga_type, status, role], n)
    for (saga_type, role), n in sorted(by_type.items()):
        started.add_metric([saga_type, role], n)
    return [started, finished, active]


def _steps(figures: Counter[Key], figure: str) -> list[tuple[str, str]]:
    """(saga type, step) of the steps with a value for ``figure``, in order."""
    return sorted({(saga_type, step) for (saga_type, step, name), value in figures.items()
                   if step and name == figure and value > 0})


def _attempt_families(figures: Counter[Key]) -> list[Metric]:
    attempts = CounterMetricFamily(
        "sagas_step_attempts", "Forward step attempts that ended, by saga type, step and outcome "
        "(failed includes attempts lost with their worker).", labels=["saga_type", "step", "outcome"])
    waiting = GaugeMetricFamily("sagas_waiting_steps", "Steps now waiting for a signal, by saga type and step.",
                                labels=["saga_type", "step"])
    for labels in _steps(figures, "records"):
        row = {name: figures[(*labels, name)] for name in ("tried", "succeeded", "in_flight", "waiting")}
        failed = max(row["tried"] - row["succeeded"] - row["in_flight"], 0)
        attempts.add_metric([*labels, "succeeded"], row["succeeded"])
        attempts.add_metric([*labels, "failed"], failed)
        waiting.add_metric(list(labels), row["waiting"])
    return [attempts, waiting]


def _duration_family(figures: Counter[Key]) -> Metric:
    durations = HistogramMetricFamily(
        "sagas_step_duration_seconds", "Time from a step's first attempt to its success or final failure, "
        "retries included, by saga type, step and outcome.", labels=["saga_type", "step", "outcome"])
    for labels in _steps(figures, "n"):
        row = {name: figures[(*labels, name)] for name in ("n", "ok_n", "all_sum", "ok_sum")}
        for outcome, count, total in (
            ("succeeded", row["ok_n"], row["ok_sum"]),
            ("failed", row["n"] - row["ok_n"], row["all_sum"] - row["ok_sum"]),
        ):
            if not count:
                continue
            cumulative = []
            for bucket, bound in zip(BUCKET_FIGURES, DURATION_BUCKETS):
                ok = figures[(*labels, f"ok_{bucket}")]
                cumulative.append((_bound(bound), ok if outcome == "succeeded" else figures[(*labels, bucket)] - ok))
            cumulative.append(("+Inf", count))
            durations.add_metric([*labels, outcome], cumulative, max(total, 0.0))
    return durations


def _bound(value: float) -> str:
    return f"{value:g}" if value != int(value) else f"{value:.1f}"


class SagaCollector:
    """Every ``sagas_`` figure: the folded totals plus the sagas not folded yet (four queries), and the
    paused sagas by why (one more, over the paused ones only: an index on status)."""

    def collect(self) -> Iterator[Metric]:
        return iter([*families(totals.current()), paused_family()])


def paused_family() -> Metric:
    """``sagas_paused``: sagas now paused, by saga type, cause (a person, a step after the pivot, the parent)
    and role."""
    paused = GaugeMetricFamily("sagas_paused", "Sagas now paused, by saga type, cause (person: a person "
                               "paused it; after_pivot: a step after its pivot failed for good; parent: its "
                               "parent saga was paused) and role" + ROLE_HELP,
                               labels=["saga_type", "cause", "role"])
    rows = (SagaInstance.objects.filter(status=SagaStatus.PAUSED).order_by()
            .values_list("saga_type", "pause_cause")
            .annotate(n=Count("id"), children=Count("id", filter=Q(depth__gt=0))))
    counts: Counter[tuple[str, str, str]] = Counter()
    for saga_type, cause, n, children in rows:
        # A saga paused before causes were recorded has none: a person paused it (the only pause there was).
        counts[saga_type, cause or PERSON, ROOT] += n - children
        counts[saga_type, cause or PERSON, CHILD] += children
    for labels, count in sorted(counts.items()):
        if count:
            paused.add_metric(list(labels), count)
    return paused


def families(figures: Counter[Key]) -> list[Metric]:
    """The metric families of these figures (``sagas.metrics.figures``), in the order they are exposed."""
    return [*_saga_families(figures), *_attempt_families(figures), _duration_family(figures)]


def compute_exposition() -> bytes:
    """The figures in Prometheus's text format, read from the database now (finished sagas folded first)."""
    totals.fold()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SagaCollector())
    return generate_latest(registry)


CACHE_KEY = "sagas:metrics:exposition"


def exposition() -> bytes:
    """The figures, computed at most once per ``SAGAS_METRICS_CACHE_SECONDS`` for every web process.

    Computing them reads the sagas still moving (finished ones are folded
    into totals): kept in the shared cache, however many scrapers ask
    (several Prometheus servers, a scraper retrying), one computation per
    interval.
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
