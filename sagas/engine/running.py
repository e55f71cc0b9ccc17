"""Running an attempt's code and handing its report to the transaction that records it."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from celery.exceptions import SoftTimeLimitExceeded
from django.db import DatabaseError, InterfaceError, OperationalError

from .. import failure_injection
from ..canvas import effective_timeout
from ..definitions import Retry, SkipWait
from ..errors import StepTimeout
from .core import Claim, Outcome, Report, ReportPending, UnstorableResult, describe_error, json_problem

# Not the step's fault and passing: a locked SQLite file, a dropped
# connection, the soft time limit firing while the engine (not the action)
# was at work. The task retries; claims keep the action from running twice.
INFRASTRUCTURE_ERRORS = (OperationalError, InterfaceError, SoftTimeLimitExceeded)
# The database's passing errors alone (a transactional attempt they roll back is not counted).
DATABASE_PASSING = (OperationalError, InterfaceError)


def invoke(fn: Callable, claim: Claim, *, phase: str) -> Any:
    failure_injection.maybe_fail(claim.context.saga_type, claim.step.name, phase, context=claim.context)
    result = fn(claim.context) if fn is not None else None  # None: a pure wait
    problem = json_problem(result.result if isinstance(result, SkipWait) else result, "output")
    if problem:
        raise UnstorableResult(f"{phase} returned a value that cannot be stored ({problem})")
    return result


def success_report(claim: Claim, result: Any) -> Report:
    """The report of an action that returned ``result`` (a ``SkipWait`` says its step need not wait)."""
    if isinstance(result, SkipWait):
        return Report(claim.attempt, ok=True, result=result.result, skip_wait=True)
    return Report(claim.attempt, ok=True, result=result)


def attempt_error(claim: Claim, exc: Exception) -> tuple[str, bool]:
    """The error an attempt is recorded with, and whether it was a timeout."""
    if isinstance(exc, (SoftTimeLimitExceeded, StepTimeout)):
        limit = effective_timeout(claim.step, compensation=claim.context.is_compensation)
        return f"StepTimeout: attempt {claim.attempt} exceeded {limit:g}s", True
    return describe_error(exc), False


RecordFn = Callable[[Any, int, Report, Retry | None], Outcome]


def record_or_pending(record: RecordFn, claim: Claim, report: Report, policy: Retry | None) -> Outcome:
    """Record ``report``; raise ``ReportPending`` when that fails for a passing reason.

    When the database refuses what a success carries, the step fails, flagged
    as having applied effects (its action did run), so it is compensated when
    the saga is undone, never left in place.
    """
    try:
        return record(claim.saga_id, claim.index, report, policy)
    except INFRASTRUCTURE_ERRORS as exc:
        raise ReportPending(report, exc) from exc
    except DatabaseError as exc:
        if claim.context.is_compensation:
            raise
        if not report.ok:
            # Its error text is what the database refused (``describe_error`` makes it storable; this
            # is for what it missed): the attempt failed all the same, recorded with a plain error.
            refused = replace(report, error=f"the attempt failed; its error could not be stored ({describe_error(exc)})")
        else:
            refused = Report(claim.attempt, ok=False, permanent=True, effects=not claim.step.transactional,
                             error=f"its output could not be stored: {describe_error(exc)}")
    try:
        return record(claim.saga_id, claim.index, refused, policy)
    except INFRASTRUCTURE_ERRORS as exc:
        raise ReportPending(refused, exc) from exc
