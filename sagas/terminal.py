"""Sagas drawn in a terminal, for ``manage.py saga``: the list, one saga's steps, its timeline, its events.

What is drawn comes from the modules the admin draws from (``timeline``'s
bars, ``sentences``' words), with ``rich`` tables instead of HTML. Every
value that comes from the database goes in as ``Text``, never as markup, so
a ``[`` in an error is printed as it is. What is masked and what is not is
decided before these functions are called (``sagas.access``).
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .models import SagaStatus, StepStatus
from .timeline import COMPENSATION, OUTCOME_COLOURS, RETRY_WAIT, WAITING, Bar, Row, tick_label, tick_step

# Without colour each outcome still reads: its own character (the legend says which).
OUTCOME_CHARS = {
    "succeeded": "█", "retried": "▓", "failed": "X", "lost": "?", "running": ">", "wait": "·",
    "waiting": "~", "compensated": "<", "compensation-retried": "{",
}
# Drawn first, so that an attempt drawn after them covers them where they share a column.
_UNDER = (RETRY_WAIT, WAITING)

STATUS_STYLES = {
    SagaStatus.PENDING: "cyan", SagaStatus.RUNNING: "blue", SagaStatus.SUCCEEDED: "green",
    SagaStatus.COMPENSATING: "yellow", SagaStatus.COMPENSATED: "magenta", SagaStatus.FAILED: "bold red",
    SagaStatus.PAUSED: "bold yellow",
    StepStatus.WAITING: "bold cyan", StepStatus.COMPENSATION_FAILED: "bold red", StepStatus.SKIPPED: "dim",
}
DEFAULT_WIDTH = 160  # into a file or a pipe: wide enough for a list's line
CELL_LENGTH = 60  # a result or an error in a table cell: cut to this many characters


def console(*, colour: bool, width: int | None) -> Console:
    """A console that writes into a buffer (``rendered`` reads it), with or without colour."""
    # With colour asked for, rich still honours the NO_COLOR environment variable (no_color left to it).
    return Console(file=io.StringIO(), force_terminal=colour, no_color=None if colour else True,
                   color_system="auto" if colour else None, width=width or DEFAULT_WIDTH,
                   highlight=False, emoji=False, soft_wrap=False)


def rendered(out: Console, *parts: RenderableType) -> str:
    for part in parts:
        out.print(part)
    text = out.file.getvalue()
    if out.no_color:  # the padding rich adds to the end of lines, which files and diffs do without
        text = "\n".join(line.rstrip() for line in text.split("\n"))
    out.file.seek(0)
    out.file.truncate()
    return text


def when(at: datetime | None) -> str:
    """A moment in UTC, to the second (what the tables show)."""
    return f"{at:%Y-%m-%d %H:%M:%S}" if at else "-"


def status_text(status: str) -> Text:
    return Text(str(status), style=STATUS_STYLES.get(status, ""))


def cut(text: Any, length: int = CELL_LENGTH) -> str:
    text = "" if text is None else (text if isinstance(text, str) else json.dumps(text, sort_keys=True, default=str, ensure_ascii=False))
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1] + "…"


def duration(start: datetime | None, end: datetime | None) -> str:
    if not start or not end:
        return "-"
    seconds = max((end - start).total_seconds(), 0.0)
    return f"{seconds:.3f} s" if seconds < 60 else str(timedelta(seconds=round(seconds)))


# --- the list ------------------------------------------------------------------------------------


def saga_table(rows: Iterable[dict]) -> Table:
    """One line per saga: ``rows`` hold id, saga_type, version, status, current_step(_status), created_at
    and error (already masked as the reader may see it). The id is never cut: it is what the other
    subcommands take."""
    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("saga type", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("current step", overflow="fold")
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("error", overflow="fold")
    for row in rows:
        current = row.get("current_step") or "-"
        if row.get("current_step_status"):
            current = f"{current} ({row['current_step_status']})"
        table.add_row(Text(str(row["id"])), Text(f"{row['saga_type']} v{row['version']}"),
                      status_text(row["status"]), Text(current), Text(when(row["created_at"])[:16]),
                      Text(cut(row["error"], 80), style="red" if row["error"] else ""))
    return table


# --- one saga --------------------------------------------------------------------------------------


def header(facts: list[tuple[str, Any]]) -> Table:
    """``label: value`` lines (a value None is left out)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in facts:
        if value is None or value == "":
            continue
        grid.add_row(Text(label), value if isinstance(value, Text) else Text(str(value)))
    return grid


def steps_table(steps: Iterable[dict]) -> Table:
    """The steps as the API answers them (``steps`` of a saga), results and errors already masked."""
    table = Table(title="Steps", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name, options in (("#", {"justify": "right"}), ("step", {}), ("status", {"no_wrap": True}),
                          ("tries", {"justify": "right"}), ("undo", {"justify": "center"}),
                          ("result", {"overflow": "fold"}), ("error", {"overflow": "fold"})):
        table.add_column(name, **options)
    for step in steps:
        name = f"{step['parallel_group']} › {step['name']}" if step.get("parallel_group") else step["name"]
        tries = str(step["attempts"]) + (f"+{step['compensation_attempts']}c" if step["compensation_attempts"] else "")
        said = [text for text in (step["error"], step.get("compensation_error") and
                                  f"undo: {step['compensation_error']}") if text]
        if not said and step["status"] == StepStatus.WAITING and step.get("signal_deadline"):
            note = Text(f"waits until {str(step['signal_deadline'])[:19].replace('T', ' ')} UTC", style="dim")
        else:
            note = Text(cut(" / ".join(said)), style="red")
        table.add_row(Text(str(step["index"])), Text(name), status_text(step["status"]), Text(tries),
                      Text("yes" if step["has_compensation"] else "no"),
                      Text(cut(step["result"]) if step["result"] is not None else ""), note)
    return table


def timeline(bars: list[Bar], rows: list[Row], *, start: datetime, end: datetime, width: int) -> Group:
    """The picture of ``sagas.timeline`` in characters: a row per step, a column per slice of time."""
    span = max((end - start).total_seconds(), 0.001)
    label_width = min(max([len(f"#{r.index} {r.label}") for r in rows] + [4]), 32)
    plot = max(width - label_width - 2, 10)

    def column(at: datetime) -> int:
        return min(max(int((at - start).total_seconds() / span * plot), 0), plot - 1)

    cells: dict[int, list[str | None]] = {row.index: [None] * plot for row in rows}
    for bar in sorted(bars, key=lambda b: b.kind not in _UNDER):
        line = cells.get(bar.step_index)
        if line is None:
            continue
        for i in range(column(bar.start), column(bar.end) + 1):
            line[i] = bar.outcome
    lines: list[Text] = []
    step = tick_step(span)
    axis = Text(" " * (label_width + 1) + tick_label(0, step), style="dim")
    right = tick_label(span, step if span < 1 else max(step, 1))
    axis.append(" " * max(plot - len(tick_label(0, step)) - len(right), 1) + right, style="dim")
    lines.append(axis)
    for row in rows:
        text = Text(f"#{row.index} {row.label}"[:label_width].ljust(label_width) + " ")
        for outcome in cells[row.index]:
            if outcome is None:
                text.append(" ")
            else:
                text.append(OUTCOME_CHARS.get(outcome, "?"), style=OUTCOME_COLOURS.get(outcome, ("", ""))[0])
        lines.append(text)
    drawn = {bar.outcome for bar in bars}
    legend = Text("")
    for outcome, (colour, words) in OUTCOME_COLOURS.items():
        if outcome in drawn:  # the legend of what this picture shows
            legend.append(OUTCOME_CHARS.get(outcome, "?"), style=colour)
            legend.append(f" {words}   ")
    if any(bar.kind == COMPENSATION for bar in bars):
        legend.append("(compensations are drawn on their step's row)", style="dim")
    lines.append(legend)
    return Group(*lines)


def events_table(events: Iterable[tuple[datetime, str, str]], *, title: str) -> Table:
    """``(created_at, sentence, kind)`` per event, oldest first."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("what happened", overflow="fold")
    table.add_column("kind", style="dim", no_wrap=True)
    for created_at, sentence, kind in events:
        table.add_row(Text(f"{created_at:%Y-%m-%d %H:%M:%S.%f}"[:-3]), Text(sentence), Text(kind))
    return table
