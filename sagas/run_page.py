"""A saga's run page in the admin: what the template of its change view shows, read in a few queries.

The admin (``sagas.admin``) decides which buttons and forms apply; this
module gathers what the page shows about the run: its header facts, its shape
as a graph (stages left to right, a ``Parallel``'s members stacked, a
``ChildSaga`` step linked to its child), the timeline, each step's context,
output, attempts, compensation and signals, and the events as sentences.
Every value goes through ``sagas.access`` as the viewer may see it (masked
sensitive fields; only the child sagas the viewer may read). Times are
``<time>`` elements in UTC that the page's script shows in the browser's zone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone as dt_timezone
from typing import Any

from django.urls import reverse
from django.utils import timezone
from django.template.defaultfilters import truncatechars
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from . import access, engine
from .errors import SagaError
from .models import ACTIVE_SAGA_STATUSES, SagaInstance, StepRecord, StepStatus, results_of
from .selectors import saga_tree
from .sentences import describe_event
from .timeline import ATTEMPT, CHILD_COLOURS, COMPENSATION, Bar, ChildRun, build_bars, span_label, timeline_chart

EVENT_LIMIT = 1000  # events read for the page (the timeline's and the list's)

# The colour of each step status, in the graph and the steps' badges.
STEP_COLOURS: dict[str, str] = {
    StepStatus.PENDING: "#9e9e9e",
    StepStatus.RUNNING: "#417690",
    StepStatus.WAITING: "#2f7fb5",
    StepStatus.SUCCEEDED: "#2e7d32",
    StepStatus.FAILED: "#ba2121",
    StepStatus.COMPENSATING: "#b26a00",
    StepStatus.COMPENSATED: "#6d4c41",
    StepStatus.COMPENSATION_FAILED: "#8b0000",
    StepStatus.SKIPPED: "#9e9e9e",
}


def when(at: datetime | None) -> SafeString | str:
    """One time on the page: UTC in the markup, shown in the browser's zone by the page's script, UTC on hover."""
    if at is None:
        return "-"
    utc = at.astimezone(dt_timezone.utc)
    text = f"{utc:%Y-%m-%d %H:%M:%S}.{utc.microsecond // 1000:03d} UTC"
    return format_html('<time class="when" datetime="{}" title="{}">{}</time>',
                       utc.isoformat(timespec="milliseconds").replace("+00:00", "Z"), text, text)


# A time inside a sentence (``sagas.sentences`` writes a deadline so): shown as every other time on the page.
_SENTENCE_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def with_times(sentence: str) -> SafeString:
    """``sentence`` as HTML, each UTC time in it a ``when`` element."""
    parts = _SENTENCE_TIME.split(sentence)  # text, time, text, time, ..., text
    return format_html_join("", "{}", (
        (when(datetime.strptime(part, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt_timezone.utc)) if n % 2 else part,)
        for n, part in enumerate(parts)))


def took(start: datetime | None, end: datetime | None) -> str:
    """How long from ``start`` to ``end``, in the unit that reads best ("" if either is missing)."""
    if start is None or end is None:
        return ""
    return span_label(max((end - start).total_seconds(), 0.0))


@dataclass
class Attempt:
    number: str
    start: datetime
    end: datetime
    outcome: str
    text: SafeString  # its sentence (with its error, if it failed)
    running: bool

    @property
    def duration(self) -> str:
        return took(self.start, self.end)


@dataclass
class StepView:
    """One step as the page shows it."""

    record: StepRecord
    stage: int
    colour: str
    runs: str  # alone / in parallel: group; pivot role
    compensation: Any  # ``compensation_summary``
    saw: dict  # what its action was given: the saga's input and the earlier stages' outputs
    output: Any
    error: str
    compensation_error: str
    attempts: list[Attempt] = field(default_factory=list)
    compensations: list[Attempt] = field(default_factory=list)
    acts: list[tuple[datetime, str]] = field(default_factory=list)  # what people did to it (signals, skips ...)
    children: list[dict] = field(default_factory=list)  # its child sagas the viewer may read (tree nodes)
    is_pivot: bool = False

    @property
    def duration(self) -> str:
        return took(self.record.started_at, self.record.finished_at)

    @property
    def anchor(self) -> str:
        return f"step-{self.record.index}"


def _stage_of(record: StepRecord, definition) -> int:
    if record.stage is not None:
        return record.stage
    try:
        return definition.stage_of(record.index) if definition else record.index
    except IndexError:
        return record.index


def _attempts(bars: list[Bar], kind: str) -> list[Attempt]:
    return [Attempt(str(n), b.start, b.end, b.outcome, with_times(b.text), b.outcome == "running")
            for n, b in enumerate((b for b in bars if b.kind == kind), start=1)]


def child_url(saga_id) -> str:
    return reverse("admin:sagas_sagainstance_change", args=[saga_id])


def run_page(saga: SagaInstance, user: Any) -> dict:
    """Everything the run page shows of ``saga`` to ``user``."""
    now = timezone.now()
    try:
        definition = engine.definition_of(saga)
    except SagaError:
        definition = None
    pivot = definition.pivot_index if definition else None
    records = list(saga.steps.order_by("index"))
    for record in records:
        record.saga = saga  # the summaries read the saga's definition through it: no query per step
    events = list(saga.events.order_by("created_at", "id")[: EVENT_LIMIT + 1])
    by_pk = {r.pk: r for r in records}
    for event in events:  # as this user may see them (never saved)
        event.detail = access.shown(user, saga.saga_type, event.detail)
        event.step = by_pk.get(event.step_id)
    shown_events = events[:EVENT_LIMIT]

    def text(value: str) -> str:
        """Free text (an error, a sentence) with the saga's sensitive values masked, unless the user sees them."""
        return value if access.sees_sensitive(user) else access.masked_text(value, saga.saga_type, saga.input)

    bars = [replace(bar, text=text(bar.text)) for bar in build_bars(shown_events, records, now=now)]
    tree = saga_tree(user, saga)
    children = tree["root"]["children"]
    for child in children:
        child.update(url=child_url(child["id"]), short=child["id"].hex[:8],
                     colour=CHILD_COLOURS.get(child["status"], "#9e9e9e"))

    outputs = results_of(records)
    steps = []
    for record in records:
        stage = _stage_of(record, definition)
        earlier = {r.name for r in records if _stage_of(r, definition) < stage}
        own = [b for b in bars if b.step_index == record.index]
        acts = [(e.created_at, with_times(text(describe_event(e)))) for e in shown_events
                if e.step_id == record.pk and (e.detail or {}).get("by")]
        steps.append(StepView(
            record=record, stage=stage, colour=STEP_COLOURS.get(record.status, "#9e9e9e"),
            runs=parallel_summary(record),
            compensation=compensation_summary(record, error=text(record.compensation_error)),
            saw=access.shown(user, saga.saga_type, {
                "input": saga.input, "results": {k: v for k, v in outputs.items() if k in earlier}}),
            output=access.shown(user, saga.saga_type, record.result),
            error=text(record.error), compensation_error=text(record.compensation_error),
            attempts=_attempts(own, ATTEMPT), compensations=_attempts(own, COMPENSATION), acts=acts,
            children=[c for c in children if c["parent_step"] == record.name], is_pivot=record.index == pivot,
        ))

    runs = [ChildRun(view.record.index, f"{c['id'].hex[:8]} {c['saga_type']}", child_url(c["id"]),
                     c["status"], c["started_at"] or c["created_at"],
                     c["finished_at"] or max(now, c["started_at"] or c["created_at"]),
                     f"Child saga {c['saga_type']} {c['id'].hex[:8]} for {view.record.name}: {c['status']}")
             for view in steps for c in view.children]
    stages: dict[int, list[StepView]] = {}
    for view in steps:
        stages.setdefault(view.stage, []).append(view)
    return {
        "saga": saga,
        "duration": _duration(saga, now),
        "steps": steps,
        "stages": [{"steps": members, "group": members[0].record.parallel_group}
                   for _, members in sorted(stages.items())],
        "chart": timeline_chart(shown_events, records, start=saga.created_at, end=saga.finished_at, now=now,
                                pivot=pivot, children=runs, bars=bars),
        "events": [(e.created_at, with_times(text(describe_event(e))), e.kind, e.step) for e in shown_events],
        "events_cut": len(events) > EVENT_LIMIT,
        "event_limit": EVENT_LIMIT,
        "tree": tree,
        "has_child_steps": bool(children) or bool(definition and any(
            definition.is_child(r.index) for r in records if r.index < len(definition.steps))),
        "error": text(saga.error),
        "input": access.shown(user, saga.saga_type, saga.input),
        "results": access.shown(user, saga.saga_type, saga.current_results),
    }


# --- what each step shows ---------------------------------------------------------------------


def parallel_summary(record: StepRecord) -> str:
    """How the step runs: alone, or at once with the other members of its Parallel; the pivot says so."""
    runs = f"in parallel: {record.parallel_group}" if record.parallel_group else "alone"
    role = pivot_role(record)
    return f"{runs}; {role}" if role else runs


def pivot_role(record: StepRecord) -> str:
    """``pivot`` (the point of no return), ``after the pivot``, or "" (before it, or no pivot)."""
    try:
        definition = engine.definition_of(record.saga)
    except SagaError:
        return ""
    if definition.pivot_index == record.index:
        return "pivot (point of no return)"
    return "after the pivot (goes forward only)" if definition.after_pivot(record.index) else ""


def compensation_summary(record: StepRecord, error: str | None = None) -> str:
    """Where the step's undo stands, in words (a step without a compensation is left as is when undoing).

    ``error``: the compensation's error as the viewer may see it (default: as stored)."""
    if not record.has_compensation:
        return "none (left as is if the saga is undone)"
    attempts = record.compensation_attempts
    if record.status == StepStatus.COMPENSATED:
        at = format_html(" at {}", when(record.compensated_at)) if record.compensated_at else ""
        return format_html("compensated{} ({} attempt(s))", at, attempts)
    if record.status == StepStatus.COMPENSATION_FAILED:
        error = truncatechars(record.compensation_error if error is None else error, 120)
        return format_html('<span style="color:#ba2121">compensation failed after {} attempt(s): {}</span>',
                           attempts, error)
    if record.status == StepStatus.COMPENSATING:
        return f"compensating (attempt {attempts})"
    if record.status in (StepStatus.PENDING, StepStatus.SKIPPED) or (
            record.status == StepStatus.FAILED and not record.may_have_effects):
        return "nothing to undo: it left no effect" if record.status == StepStatus.FAILED \
            else "nothing to undo: it has not run"
    return "undoable"


def _duration(saga: SagaInstance, now: datetime) -> str:
    if saga.started_at and saga.finished_at:
        return took(saga.started_at, saga.finished_at)
    if saga.started_at and saga.status in ACTIVE_SAGA_STATUSES:
        return f"{took(saga.started_at, now)} so far"
    return "-"

