"""The audit trail in words: one sentence per ``SagaEvent``, for people reading a saga's page.

Each kind of event carries its own ``detail`` (see ``sagas.engine``); the
sentence says what happened with the figures that matter (attempt, error,
retry delay) instead of showing the dictionary. A kind this module does not
know yet (the engine grows) still reads as a sentence built from its name.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.template.defaultfilters import truncatechars

from .models import EventKind, SagaEvent

ERROR_LENGTH = 300


def _error(detail: dict, key: str = "error") -> str:
    return truncatechars(str(detail.get(key) or "no error given"), ERROR_LENGTH)


def _seconds(value: Any) -> str:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"


def _retry(detail: dict) -> str:
    return f"; retry in {_seconds(detail['retry_in'])}" if detail.get("retry_in") is not None else ""


def _timed_out(detail: dict) -> str:
    return " (timed out)" if detail.get("timeout") else ""


def _note(detail: dict) -> str:
    return f" ({detail['note']})" if detail.get("note") else ""


def _who(detail: dict) -> str:
    by = detail.get("by")
    if by == "token":
        return "The holder of the step's signal token"
    if detail.get("by_user_id") is not None:
        return f"User {by} (id {detail['by_user_id']})"
    return f"{by or 'Someone'}"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _attempt(detail: dict) -> str:
    return str(detail.get("attempt") or detail.get("attempts") or "?")


def _waiting(step: str, detail: dict) -> str:
    """A step waiting for its child saga (``ChildSaga``) rather than a signal."""
    child = str(detail.get("child_saga", "?"))[:8]
    if detail.get("note"):
        return f"{step} waits for its child saga {child}: {detail['note']}."
    return f"{step} started its child saga {child} and waits for it to end" + (
        f", until {detail['deadline'][:19].replace('T', ' ')} UTC" if detail.get("deadline") else "") + "."


def _resumed(detail: dict) -> str:
    phase = detail.get("phase", "?")
    if phase == "person":
        changed = detail.get("changed_input")
        return f"{_who(detail)} resumed the saga" + (
            f" with corrected input ({', '.join(changed)})" if changed else "") + "."
    if phase == "skip":
        return f"The saga goes on after {detail.get('skipped', 'a step')} was skipped."
    return "Saga resumed ({}){}{}.".format(
        phase, f" from step {detail['from_step']}" if detail.get("from_step") is not None else "", _note(detail))


# Each writer gets (step name or "", detail) and returns the sentence.
Writer = Callable[[str, dict], str]

_WRITERS: dict[str, Writer] = {
    EventKind.SAGA_CREATED: lambda step, d: "Saga created (version {}){}{}.".format(
        d.get("version", "?"),
        f", idempotency key {d['idempotency_key']}" if d.get("idempotency_key") else "",
        f", resubmitted from saga {str(d['resubmitted_from'])[:8]}" if d.get("resubmitted_from") else ""),
    EventKind.SAGA_STARTED: lambda step, d: "Saga started running.",
    EventKind.SAGA_SUCCEEDED: lambda step, d: "Saga succeeded: every step is done.",
    EventKind.SAGA_COMPENSATING: lambda step, d: f"Saga began compensating: {_error(d, 'reason')}.",
    EventKind.SAGA_COMPENSATED: lambda step, d: f"Saga compensated: what it did is undone{_note(d)}.",
    EventKind.SAGA_FAILED: lambda step, d: f"Saga failed and needs a person: {_error(d, 'reason')}.",
    EventKind.CANCEL_REQUESTED: lambda step, d: f"Cancel requested: {d.get('reason') or 'cancelled'}.",
    EventKind.RESUBMITTED: lambda step, d: f"Resubmitted as saga {str(d.get('new_saga', '?'))[:8]}.",
    EventKind.COMPENSATION_RETRY_REQUESTED: lambda step, d: (
        f"Compensation of {step} will be retried with a fresh budget." if step
        else "A person asked to retry the failed compensations."),
    EventKind.SAGA_RESUMED: lambda step, d: _resumed(d),
    EventKind.SAGA_PAUSED: lambda step, d: (
        f"Saga paused past its pivot: {', '.join(d.get('failed_steps') or ['a step'])} failed for good "
        f"({_error(d)}); it is not undone, a person decides." if d.get("cause") == "after_pivot"
        else f"{_who(d)} paused the saga" + (f": {d['reason']}" if d.get("reason") else "")
        + "; nothing more starts until it is resumed."),
    EventKind.STEP_RETRIED: lambda step, d: (
        f"{step} will run again with a fresh retry budget ({d.get('attempts_before', '?')} attempt(s) before)."),
    EventKind.STEP_STARTED: lambda step, d: f"Attempt {_attempt(d)} of {step} started.",
    EventKind.STEP_ATTEMPT_FAILED: lambda step, d: (
        f"Attempt {_attempt(d)} of {step} failed{_timed_out(d)}: {_error(d)}{_retry(d)}."),
    EventKind.STEP_ATTEMPT_LOST: lambda step, d: (
        f"{'Compensation attempt' if d.get('compensation') else 'Attempt'} {_attempt(d)} of {step} was lost "
        "(killed at its hard time limit, or its worker died)."),
    EventKind.STEP_SUCCEEDED: lambda step, d: "{} succeeded on attempt {}{}.".format(
        step, _attempt(d), " (its action decided no signal was needed)" if d.get("wait_skipped")
        else " (signalled)" if d.get("signalled") else ""),
    EventKind.STEP_WAITING: lambda step, d: _waiting(step, d) if d.get("child_saga") else "{} is waiting for a signal{}{}.".format(
        step, f" (needs {d['permission']})" if d.get("permission") else "",
        f", until {d['deadline'][:19].replace('T', ' ')} UTC" if d.get("deadline") else ", with no deadline"),
    EventKind.STEP_SIGNALLED: lambda step, d: (
        f"{_who(d)} completed {step}" + (f" with {truncatechars(_json(d.get('result')), 200)}"
                                         if d.get("result") else "") + "."
        if d.get("signal") == "complete" else f"{_who(d)} failed {step}: {_error(d)}."),
    EventKind.STEP_FAILED: lambda step, d: "{} failed for good after {} attempt(s){}{}: {}{}.".format(
        step, _attempt(d), " (permanent error)" if d.get("permanent") else "", _timed_out(d), _error(d),
        "; it may have applied effects, so it is compensated" if d.get("may_have_effects") else ""),
    EventKind.STEP_SKIPPED: lambda step, d: (
        f"{step} skipped: its condition (when) was false, so it never ran." if d.get("reason") == "condition false"
        else f"{_who(d)} skipped {step}: {d['reason']}" + (
            f"; its result: {truncatechars(_json(d['result']), 200)}" if d.get("result") is not None else "") + "."
        if d.get("reason") else f"{step} skipped: the saga was undone before it ran."),
    EventKind.COMPENSATION_STARTED: lambda step, d: f"Compensation attempt {_attempt(d)} of {step} started.",
    EventKind.COMPENSATION_ATTEMPT_FAILED: lambda step, d: (
        f"Compensation attempt {_attempt(d)} of {step} failed{_timed_out(d)}: {_error(d)}{_retry(d)}."),
    EventKind.STEP_COMPENSATED: lambda step, d: f"{step} compensated on attempt {_attempt(d)}.",
    EventKind.COMPENSATION_FAILED: lambda step, d: (
        f"Compensation of {step} failed for good after {_attempt(d)} attempt(s): {_error(d)}."),
    EventKind.NOTHING_TO_COMPENSATE: lambda step, d: f"{step} has no compensation: its effects stay as they are.",
    EventKind.SAGA_STUCK: lambda step, d: f"The sweeper held the saga for a person: {_error(d)}.",
    EventKind.ERROR_CALLBACK_IGNORED: lambda step, d: (
        f"The chain's error callback was ignored{_note(d)}."),
    EventKind.REPORT_DROPPED: lambda step, d: (
        f"A late report of {'compensation ' if d.get('compensation') else ''}attempt {_attempt(d)} of {step} "
        f"was dropped{_note(d)}."),
    EventKind.LATE_SUCCESS_COMPENSATED: lambda step, d: (
        f"{step} compensated again: attempt {_attempt(d)}, judged dead, reported a success after the step was "
        f"undone."),
    EventKind.LATE_COMPENSATION_FAILED: lambda step, d: (
        f"Compensating the late success of attempt {_attempt(d)} of {step} failed: {_error(d)}{_retry(d)}."),
}


def _generic(kind: str, step: str, detail: dict) -> str:
    """A kind added to the engine after this module: its name, its step, and its detail in words."""
    words = kind.replace("_", " ")
    text = f"{words[:1].upper()}{words[1:]}" + (f" ({step})" if step else "")
    facts = ", ".join(f"{key.replace('_', ' ')} {truncatechars(str(value), 120)}"
                      for key, value in sorted(detail.items()) if value not in (None, "", [], {}))
    return f"{text}: {facts}." if facts else f"{text}."


def describe(kind: str, detail: dict | None, step: str = "") -> str:
    """One sentence for an event of ``kind`` with ``detail``, concerning step ``step`` (its name, or "")."""
    detail = detail if isinstance(detail, dict) else {}
    writer = _WRITERS.get(kind)
    if writer is None:
        return _generic(kind, step, detail)
    try:
        return writer(step or "the step", detail)
    except (KeyError, TypeError, ValueError):  # a detail written by an older engine: still a sentence
        return _generic(kind, step, detail)


def describe_event(event: SagaEvent) -> str:
    """The sentence for a stored event (its step read from ``event.step``: select it with the event)."""
    return describe(event.kind, event.detail, event.step.name if event.step_id else "")
