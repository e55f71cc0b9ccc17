"""Celery tasks: thin wrappers that call the engine and turn its decision into Celery terms."""
from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import engine
from .definitions import Retry
from .engine import Decision, Outcome
from .errors import CompensationFailed, StepFailed

# A database hiccup (locked SQLite file, dropped connection) is not the step's
# fault: the task is retried, and the claim logic keeps the action from
# running twice at once.
INFRASTRUCTURE_ERRORS = (OperationalError, InterfaceError)
INFRASTRUCTURE_RETRIES = 20


def _follow(task, outcome: Outcome, failure: type[Exception]) -> str:
    if outcome.decision is Decision.RETRY:
        raise task.retry(countdown=outcome.countdown, max_retries=None)
    if outcome.decision is Decision.FAILED:
        raise failure(outcome.reason)
    if outcome.decision is Decision.STOP:
        task.request.chain = None  # the rest of the chain has nothing to do either
        return f"stopped: {outcome.reason}"
    return outcome.reason or "done"


@shared_task(bind=True, name="sagas.run_step", acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_step(self, saga_id: str, index: int, retry: dict | None = None) -> str:
    try:
        outcome = engine.execute_step(saga_id, index, Retry(**retry) if retry else None)
    except INFRASTRUCTURE_ERRORS as exc:
        raise self.retry(exc=exc, countdown=1.0, max_retries=INFRASTRUCTURE_RETRIES)
    return _follow(self, outcome, StepFailed)


@shared_task(bind=True, name="sagas.compensate_step", acks_late=True, reject_on_worker_lost=True, max_retries=None)
def compensate_step(self, saga_id: str, index: int, retry: dict | None = None) -> str:
    try:
        outcome = engine.execute_compensation(saga_id, index, Retry(**retry) if retry else None)
    except INFRASTRUCTURE_ERRORS as exc:
        raise self.retry(exc=exc, countdown=1.0, max_retries=INFRASTRUCTURE_RETRIES)
    return _follow(self, outcome, CompensationFailed)


# One argument only (bind=True does not count): Celery then sends the error
# callback as a task of its own (an immutable signature ignores the failed
# task's id) instead of calling it inline in the failing worker.
@shared_task(bind=True, name="sagas.compensate_saga", acks_late=True, reject_on_worker_lost=True, max_retries=None)
def compensate_saga(self, saga_id: str) -> str:
    try:
        indices = engine.begin_compensation(
            saga_id, reason="step task ended without reporting (hard time limit or crash)")
    except INFRASTRUCTURE_ERRORS as exc:
        raise self.retry(exc=exc, countdown=1.0, max_retries=INFRASTRUCTURE_RETRIES)
    return "already handled" if indices is None else f"compensating steps {indices}"


@shared_task(name="sagas.sweep", acks_late=True)
def sweep() -> dict:
    report = engine.sweep()
    return vars(report)
