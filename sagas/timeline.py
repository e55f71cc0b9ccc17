"""A saga's timeline as a picture: bars on a time axis, drawn on the server as HTML and CSS.

The bars come from the audit trail (``SagaEvent``), read in ``created_at``
order: a ``step_started`` event is written when its attempt ends but dated
when it began, so only that order puts it before the attempt's end. One row
per step (members of a ``Parallel`` each get theirs); on it, one bar per
forward attempt, per wait before a retry, per wait for a signal and per
compensation attempt, coloured by how it ended. An attempt in progress has
no event yet: its start is read from the step record
(``attempt_started_at``) and its bar runs to now.

No library and no picture file: each bar is a positioned element whose
``title`` is its sentence (the tooltip). Widths are shares of the track, with
a floor of ``MIN_BAR_PX`` so that a one-millisecond compensation in a saga
of a minute is still there to point at; row labels are text at the page's
font size. A zoom (1x to 16x, the page's script switches it) widens the track
inside its own scroll box, for sagas whose steps take milliseconds: the
page itself never scrolls sideways. Child sagas (``ChildSaga``) get a row of
their own under their step: one bar spanning the child's run, a link to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from .models import EventKind, SagaEvent, StepRecord, StepStatus
from .sentences import describe

# Bar kinds and their outcomes; the colour of a bar is its outcome's.
ATTEMPT, RETRY_WAIT, WAITING, COMPENSATION = "attempt", "retry-wait", "waiting", "compensation"
OUTCOME_COLOURS: dict[str, tuple[str, str]] = {
    # outcome: (fill colour, legend text)
    "succeeded": ("#2e7d32", "attempt succeeded"),
    "retried": ("#ef8f00", "attempt failed, retried"),
    "failed": ("#ba2121", "failed for good"),
    "lost": ("#7b1fa2", "attempt lost (killed or worker died)"),
    "running": ("#417690", "in progress"),
    "wait": ("#c9c9c9", "waiting to retry"),
    "waiting": ("#7fb2d9", "waiting for a signal or a child saga"),
    "compensated": ("#6d4c41", "compensated"),
    "compensation-retried": ("#d2691e", "compensation failed, retried"),
}
WAITING_STATUS: str = StepStatus.WAITING

MIN_BAR_PX = 4  # the narrowest bar drawn, however short what it shows
ZOOMS = (1, 2, 4, 8, 16)  # the track's width, in widths of the visible track
TICKS_PER_VIEW = 8  # at most this many axis ticks in the visible track, at any zoom


@dataclass(frozen=True)
class Bar:
    step_index: int
    kind: str  # ATTEMPT, RETRY_WAIT, WAITING or COMPENSATION
    outcome: str  # a key of OUTCOME_COLOURS
    start: datetime
    end: datetime
    text: str  # the sentence shown as the tooltip

    @property
    def seconds(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0)


@dataclass(frozen=True)
class Row:
    index: int
    label: str


@dataclass(frozen=True)
class ChildRun:
    """A child saga's run, drawn as one bar on a row under the step it works for."""

    step_index: int  # the parent's step
    label: str  # e.g. "child tests.three_steps 1a2b3c4d"
    url: str  # its page
    status: str  # a ``SagaStatus`` value, its bar's outcome
    start: datetime
    end: datetime
    text: str  # its tooltip


def build_bars(events: Iterable[SagaEvent], records: Iterable[StepRecord], *, now: datetime) -> list[Bar]:
    """Every bar of the saga's timeline, from its events (any order) and its step records."""
    records = list(records)
    by_id = {r.pk: r for r in records}
    ordered = sorted(events, key=lambda e: (e.created_at, e.pk or 0))
    forward: dict[int, tuple[str, datetime, str]] = {}  # step index -> (kind, start, attempt)
    backward: dict[int, tuple[str, datetime, str]] = {}
    bars: list[Bar] = []

    def close(table: dict, index: int, at: datetime, outcome: str, text: str) -> None:
        opened = table.pop(index, None)
        if opened is None:
            return
        kind, start, attempt = opened
        if kind in (RETRY_WAIT, WAITING):
            outcome = "wait" if kind == RETRY_WAIT else "waiting"
            text = opened[2]
        bars.append(Bar(index, kind, outcome, start, at, text))

    for event in ordered:
        record = by_id.get(event.step_id)
        if record is None:
            continue
        i, at, detail = record.index, event.created_at, event.detail or {}
        sentence = describe(event.kind, detail, record.name)
        attempt = str(detail.get("attempt") or detail.get("attempts") or "?")
        kind = event.kind
        if kind == EventKind.STEP_STARTED:
            close(forward, i, at, "wait", "")
            forward[i] = (ATTEMPT, at, attempt)
        elif kind == EventKind.STEP_SUCCEEDED:
            close(forward, i, at, "succeeded", sentence)
        elif kind == EventKind.STEP_ATTEMPT_FAILED:
            close(forward, i, at, "retried", sentence)
            forward[i] = (RETRY_WAIT, at, f"Waiting to retry {record.name} after attempt {attempt} failed.")
        elif kind == EventKind.STEP_ATTEMPT_LOST and detail.get("compensation"):
            close(backward, i, at, "lost", sentence)
        elif kind == EventKind.STEP_ATTEMPT_LOST:
            close(forward, i, at, "lost", sentence)
        elif kind == EventKind.STEP_FAILED:
            close(forward, i, at, "failed", sentence)
        elif kind == EventKind.COMPENSATION_STARTED:
            close(backward, i, at, "wait", "")
            backward[i] = (COMPENSATION, at, attempt)
        elif kind == EventKind.STEP_COMPENSATED:
            close(backward, i, at, "compensated", sentence)
        elif kind == EventKind.COMPENSATION_ATTEMPT_FAILED:
            close(backward, i, at, "compensation-retried", sentence)
            backward[i] = (RETRY_WAIT, at, f"Waiting to retry the compensation of {record.name}.")
        elif kind == EventKind.COMPENSATION_FAILED:
            close(backward, i, at, "failed", sentence)
        elif WAITING_STATUS and detail.get("to") == WAITING_STATUS:
            close(forward, i, at, "succeeded", sentence)
            forward[i] = (WAITING, at, f"{record.name} waits for its child saga." if detail.get("child_saga")
                          else f"{record.name} waits for a signal.")
        elif forward.get(i, ("",))[0] == WAITING:
            close(forward, i, at, "waiting", "")  # a signal, a timeout or a cancel ends the wait

    for record in records:
        i = record.index
        if record.status == StepStatus.RUNNING and record.attempt_started_at and i not in forward:
            forward[i] = (ATTEMPT, record.attempt_started_at, str(record.attempts))
    for table in (forward, backward):
        for i, (kind, start, attempt) in list(table.items()):
            name = next((r.name for r in records if r.index == i), "?")
            text = (f"Attempt {attempt} of {name} is running." if kind == ATTEMPT
                    else f"Compensation attempt {attempt} of {name} is running." if kind == COMPENSATION else "")
            close(table, i, max(now, start), "running", text)
    return sorted(bars, key=lambda b: (b.step_index, b.start))


def rows_of(records: Iterable[StepRecord], pivot: int | None = None) -> list[Row]:
    """One row per step, by index; a Parallel member's label names its group, the pivot says it is one."""
    return [Row(r.index, (f"{r.parallel_group} › {r.name}" if r.parallel_group else r.name)
                + (" (pivot)" if r.index == pivot else ""))
            for r in sorted(records, key=lambda r: r.index)]


_STEPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900,
          1800, 3600, 7200, 4 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400)


def tick_step(span_seconds: float, most: int = 8) -> float:
    """The smallest round interval that puts at most ``most`` ticks on the axis."""
    for step in _STEPS:
        if span_seconds / step <= most:
            return step
    return span_seconds / most


def tick_label(seconds: float, step: float) -> str:
    if step < 1:
        return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.{max(0, len(str(step)) - 2)}f} s"
    if step < 60:
        return f"{seconds:.0f} s"
    if step < 3600:
        return f"{seconds / 60:.0f} min"
    if step < 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _share(at: datetime, start: datetime, span: float) -> float:
    """Where ``at`` falls on the track, in percent of it (clamped to the saga's run)."""
    return 100 * min(max((at - start).total_seconds() / span, 0.0), 1.0)


def _bar_style(left: float, right: float, colour: str) -> str:
    # The floor keeps a short bar visible; min() keeps one at the very end inside its track.
    return (f"left:min({left:.3f}%, calc(100% - {MIN_BAR_PX}px));"
            f"width:max({max(right - left, 0):.3f}%, {MIN_BAR_PX}px);background:{colour}")


def _ticks(span: float) -> SafeString:
    """One set of axis ticks per zoom (the page shows the set of the zoom chosen): round and few per view."""
    sets = []
    for zoom in ZOOMS:
        step = tick_step(span, TICKS_PER_VIEW * zoom)
        marks, n = [], 0
        while n * step <= span + 1e-9:
            marks.append(format_html('<span class="tick" style="left:{}%"><span>{}</span></span>',
                                     f"{100 * n * step / span:.3f}", tick_label(n * step, step)))
            n += 1
        sets.append(format_html('<div class="ticks" data-zoom="{}">{}</div>', zoom, mark_safe("".join(marks))))
    return mark_safe("".join(sets))


def render_chart(bars: list[Bar], rows: list[Row], *, start: datetime, end: datetime,
                 children: Iterable[ChildRun] = ()) -> SafeString:
    """The picture: a label column, one row per step (and per child saga), a time axis from ``start``."""
    span = max((end - start).total_seconds(), 0.001)
    under: dict[int, list[ChildRun]] = {}
    for child in children:
        under.setdefault(child.step_index, []).append(child)
    by_row: dict[int, list[Bar]] = {}
    for bar in bars:
        by_row.setdefault(bar.step_index, []).append(bar)
    lines = []
    for row in rows:
        label = f"#{row.index} {row.label}"
        cells = format_html_join("", '<span class="bar bar-{} outcome-{}" data-kind="{}" data-outcome="{}" '
                                 'data-step="{}" style="{}" title="{}"></span>', (
            (bar.kind, bar.outcome, bar.kind, bar.outcome, bar.step_index,
             _bar_style(_share(bar.start, start, span), _share(bar.end, start, span),
                        OUTCOME_COLOURS.get(bar.outcome, ("#999", ""))[0]),
             f"{bar.text} ({bar.seconds:.3f} s)")
            for bar in by_row.get(row.index, [])))
        lines.append(format_html('<div class="tl-row" data-step="{}"><div class="tl-label" title="{}">{}</div>'
                                 '<div class="tl-track">{}</div></div>', row.index, label, label, cells))
        for child in under.get(row.index, []):
            seconds = max((child.end - child.start).total_seconds(), 0.0)
            lines.append(format_html(
                '<div class="tl-row tl-child"><div class="tl-label" title="{}"><a href="{}">↳ {}</a></div>'
                '<div class="tl-track"><a class="bar bar-child outcome-{}" data-kind="child" data-outcome="{}" '
                'data-step="{}" href="{}" style="{}" title="{}"></a></div></div>',
                child.label, child.url, child.label, child.status, child.status, child.step_index, child.url,
                _bar_style(_share(child.start, start, span), _share(child.end, start, span),
                           CHILD_COLOURS.get(child.status, "#999")),
                f"{child.text} ({seconds:.3f} s)"))
    zooms = format_html_join("", '<button type="button" data-zoom="{}"{}>{}×</button>',
                             ((z, mark_safe(' aria-pressed="true"') if z == 1 else "", z) for z in ZOOMS))
    return format_html(
        '<div class="saga-timeline-chart" data-span="{}" style="--zoom:1">'
        '<div class="tl-tools">Zoom {} <span class="tl-span">the saga\'s run: {}</span></div>'
        '<div class="tl-scroll"><div class="tl-inner">'
        '<div class="tl-row tl-axis"><div class="tl-label">since it was created</div>'
        '<div class="tl-track">{}</div></div>{}</div></div></div>',
        f"{span:.6f}", zooms, span_label(span), _ticks(span), mark_safe("".join(lines)))


def span_label(seconds: float) -> str:
    """A duration in the unit that reads best: 12 ms, 1.25 s, 3 min 5 s, 2 h 10 min, 3 d 4 h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


# A child saga's bar is coloured by its status (the page's status colours).
CHILD_COLOURS: dict[str, str] = {
    "pending": "#9e9e9e", "running": "#417690", "paused": "#6a1b9a", "succeeded": "#2e7d32",
    "compensating": "#b26a00", "compensated": "#6d4c41", "failed": "#ba2121",
}


def legend() -> SafeString:
    items = format_html_join(
        "", '<span class="tl-key"><span class="tl-swatch" style="background:{}"></span> {}</span>',
        OUTCOME_COLOURS.values())
    return format_html('<div class="saga-timeline-legend">{}<span class="tl-key">'
                       '<span class="tl-swatch tl-swatch-compensation"></span> outlined: compensation</span>'
                       '<span class="tl-key"><span class="tl-swatch tl-swatch-child"></span> '
                       'a child saga\'s run (a link to it)</span></div>', items)


def timeline_chart(events: Iterable[SagaEvent], records: Iterable[StepRecord], *, start: datetime,
                   end: datetime | None, now: datetime, pivot: int | None = None,
                   children: Iterable[ChildRun] = (), bars: list[Bar] | None = None) -> SafeString:
    """The saga's timeline from ``start`` to ``end`` (or now, while it runs), with its legend.

    ``bars``: already built from ``events`` (the run page reads them for its steps too).
    """
    records = list(records)
    children = list(children)
    bars = build_bars(events, records, now=now) if bars is None else bars
    last = max([end or now, *(b.end for b in bars), *(c.end for c in children)])
    if last <= start:
        last = start + timedelta(milliseconds=1)
    return mark_safe(render_chart(bars, rows_of(records, pivot), start=start, end=last, children=children)
                     + legend())
