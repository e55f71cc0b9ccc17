"""A saga's timeline as a picture: bars on a time axis, drawn on the server as inline SVG.

The bars come from the audit trail (``SagaEvent``), read in ``created_at``
order: a ``step_started`` event is written when its attempt ends but dated
when it began, so only that order puts it before the attempt's end. One row
per step (members of a ``Parallel`` each get theirs); on it, one bar per
forward attempt, per wait before a retry, per wait for a signal and per
compensation attempt, coloured by how it ended. An attempt in progress has
no event yet: its start is read from the step record
(``attempt_started_at``) and its bar runs to now.

No JavaScript and no library: the browser draws the SVG as it comes, and
each bar's ``<title>`` is its sentence (the tooltip).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from django.utils.html import escape
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
    "waiting": ("#7fb2d9", "waiting for a signal"),
    "compensated": ("#6d4c41", "compensated"),
    "compensation-retried": ("#d2691e", "compensation failed, retried"),
}
WAITING_STATUS: str = StepStatus.WAITING

WIDTH, LABEL_WIDTH, ROW_HEIGHT, BAR_HEIGHT, AXIS_HEIGHT = 960, 220, 26, 16, 28
MIN_BAR_PX = 2.0


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
            forward[i] = (WAITING, at, f"{record.name} waits for a signal.")
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


def render_svg(bars: list[Bar], rows: list[Row], *, start: datetime, end: datetime) -> SafeString:
    """The picture: a label column, one row per step, a time axis in seconds from ``start``."""
    span = max((end - start).total_seconds(), 0.001)
    plot = WIDTH - LABEL_WIDTH - 10
    height = AXIS_HEIGHT + ROW_HEIGHT * max(len(rows), 1) + 6
    row_of = {row.index: n for n, row in enumerate(rows)}

    def x(at: datetime) -> float:
        return LABEL_WIDTH + plot * min(max((at - start).total_seconds() / span, 0.0), 1.0)

    parts = [f'<svg class="saga-timeline-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
             f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" '
             f'aria-label="timeline of the saga\'s steps" style="font:11px sans-serif;max-width:100%">']
    step = tick_step(span)
    n = 0
    while n * step <= span + 1e-9:
        tx = LABEL_WIDTH + plot * (n * step / span)
        parts.append(f'<line x1="{tx:.1f}" y1="{AXIS_HEIGHT - 6}" x2="{tx:.1f}" y2="{height}" stroke="#e3e3e3"/>'
                     f'<text x="{tx:.1f}" y="{AXIS_HEIGHT - 10}" text-anchor="middle" fill="#666">'
                     f'{escape(tick_label(n * step, step))}</text>')
        n += 1
    for n, row in enumerate(rows):
        y = AXIS_HEIGHT + n * ROW_HEIGHT
        if n % 2:
            parts.append(f'<rect x="0" y="{y}" width="{WIDTH}" height="{ROW_HEIGHT}" fill="#f6f6f6"/>')
        parts.append(f'<text x="6" y="{y + ROW_HEIGHT / 2 + 4:.1f}" fill="#333">'
                     f'{escape(f"#{row.index} {row.label}"[:34])}<title>{escape(row.label)}</title></text>')
    for bar in bars:
        if bar.step_index not in row_of:
            continue
        y = AXIS_HEIGHT + row_of[bar.step_index] * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) / 2
        left, right = x(bar.start), x(bar.end)
        width = max(right - left, MIN_BAR_PX)
        thin = bar.kind == RETRY_WAIT
        bar_y, bar_h = (y + BAR_HEIGHT / 2 - 2, 4) if thin else (y, BAR_HEIGHT)
        colour = OUTCOME_COLOURS.get(bar.outcome, ("#999", ""))[0]
        stroke = ' stroke="#3e2723" stroke-dasharray="3 2"' if bar.kind == COMPENSATION else ""
        parts.append(
            f'<rect class="bar bar-{bar.kind} outcome-{bar.outcome}" data-kind="{bar.kind}" '
            f'data-outcome="{bar.outcome}" data-step="{bar.step_index}" x="{left:.1f}" y="{bar_y:.1f}" '
            f'width="{width:.1f}" height="{bar_h}" rx="2" fill="{colour}"{stroke}>'
            f'<title>{escape(bar.text)} ({bar.seconds:.3f} s)</title></rect>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


def legend() -> SafeString:
    items = "".join(
        f'<span style="white-space:nowrap;margin-right:12px"><span style="display:inline-block;width:12px;'
        f'height:12px;vertical-align:middle;background:{colour};border-radius:2px"></span> {escape(text)}</span>'
        for colour, text in OUTCOME_COLOURS.values())
    return mark_safe(f'<div class="saga-timeline-legend" style="margin:4px 0 8px">{items}'
                     '<span style="white-space:nowrap">dashed outline: compensation</span></div>')


def timeline_svg(events: Iterable[SagaEvent], records: Iterable[StepRecord], *, start: datetime,
                 end: datetime | None, now: datetime, pivot: int | None = None) -> SafeString:
    """The saga's timeline from ``start`` to ``end`` (or now, while it runs), with its legend."""
    records = list(records)
    bars = build_bars(events, records, now=now)
    last = max([end or now, *(b.end for b in bars)])
    if last <= start:
        last = start + timedelta(milliseconds=1)
    return mark_safe(render_svg(bars, rows_of(records, pivot), start=start, end=last) + legend())
