"""Celery tasks: thin wrappers that call the engine and turn its decision into Celery terms."""
from __future__ import annotations

from datetime import timedelta
from functools import partial

from celery import shared_task
from celery.signals import task_prerun, worker_process_init, worker_ready
from django.conf import settings
from django.db import connections

from . import bulk, canvas, engine, liveness
from .definitions import Retry
from .engine import INFRASTRUCTURE_ERRORS, Decision, Outcome, ReportPending
from .errors import CompensationFailed, StepFailed
from .retention import prune_finished_sagas

# Retries for a passing infrastructure problem (the database or the soft time
# limit while the engine was at work), counted apart from the step's own
# retries, with a backoff capped at half a minute: about eight minutes in all.
INFRASTRUCTURE_RETRIES = 20


def _follow(task, outcome: Outcome, failure: type[Exception]) -> str:
    if outcome.decision is Decision.RETRY:
        # A step's own retry starts the infrastructure count again; an attempt rolled back by the
        # database (not counted as the step's) adds to it, so a database that never comes back ends it.
        infra = task.request.kwargs.get("infra", 0) + 1 if outcome.infrastructure else 0
        if infra > INFRASTRUCTURE_RETRIES:
            raise failure(f"infrastructure retries exhausted: {outcome.reason}")
        kwargs = {**task.request.kwargs, "infra": infra, "report": None}
        raise task.retry(countdown=outcome.countdown, kwargs=kwargs, max_retries=None)
    if outcome.decision is Decision.FAILED:
        raise failure(outcome.reason)
    if outcome.decision is Decision.STOP:
        task.request.chain = None  # the rest of the chain has nothing to do either
        return f"stopped: {outcome.reason}"
    return outcome.reason or "done"


def _retry_infrastructure(task, exc: BaseException, count: int, **carry):
    """Try again later. A step task carries its count and an attempt's unrecorded report (not run again)."""
    if count >= INFRASTRUCTURE_RETRIES:
        raise exc  # the task fails; its saga is not compensated for it, the sweeper moves it on
    kwargs = {**task.request.kwargs, **carry}
    raise task.retry(exc=exc, countdown=min(2.0 ** count, 30.0), kwargs=kwargs, max_retries=None)


def _run(task, execute, failure: type[Exception], saga_id: str, index: int, retry: dict | None, infra: int,
         report: dict | None) -> str:
    try:
        outcome = execute(saga_id, index, Retry(**retry) if retry else None, report=report)
    except ReportPending as pending:
        _retry_infrastructure(task, pending.cause, infra, infra=infra + 1, report=pending.report.as_dict())
    except INFRASTRUCTURE_ERRORS as exc:
        _retry_infrastructure(task, exc, infra, infra=infra + 1, report=report)
    return _follow(task, outcome, failure)


# A step or compensation that failed for good is an outcome the engine has
# recorded, not a crash: ``throws`` has Celery log it in one line at INFO,
# with no traceback. (A step refused for good does not raise at all: its
# record starts the compensation. What still raises is rarer: a last attempt
# lost, a compensation that ran out of attempts.)
@shared_task(bind=True, name="sagas.run_step", acks_late=True, reject_on_worker_lost=True, max_retries=None,
             throws=(StepFailed,))
def run_step(self, saga_id: str, index: int, retry: dict | None = None, infra: int = 0,
             report: dict | None = None, saga_type: str | None = None, version: int | None = None) -> str:
    execute = partial(engine.execute_step, saga_type=saga_type, version=version)
    return _run(self, execute, StepFailed, saga_id, index, retry, infra, report)


@shared_task(bind=True, name="sagas.compensate_step", acks_late=True, reject_on_worker_lost=True, max_retries=None,
             throws=(CompensationFailed,))
def compensate_step(self, saga_id: str, index: int, retry: dict | None = None, infra: int = 0,
                    report: dict | None = None, saga_type: str | None = None, version: int | None = None) -> str:
    execute = partial(engine.execute_compensation, saga_type=saga_type, version=version)
    return _run(self, execute, CompensationFailed, saga_id, index, retry, infra, report)


# One argument only (bind=True does not count): Celery then sends the error
# callback as a task of its own (an immutable signature ignores the failed
# task's id) instead of calling it inline in the failing worker.
@shared_task(bind=True, name="sagas.compensate_saga", acks_late=True, reject_on_worker_lost=True, max_retries=None)
def compensate_saga(self, saga_id: str) -> str:
    try:
        indices = engine.begin_compensation(
            saga_id, reason="step task ended without reporting (hard time limit or crash)")
    except INFRASTRUCTURE_ERRORS as exc:
        _retry_infrastructure(self, exc, self.request.retries)
    return "already handled" if indices is None else f"compensating steps {indices}"


@shared_task(bind=True, name="sagas.compensate_late_success", acks_late=True, reject_on_worker_lost=True,
             max_retries=None, throws=(CompensationFailed,))
def compensate_late_success(self, saga_id: str, index: int, attempt: int, result=None) -> str:
    outcome = engine.compensate_late_success(saga_id, index, attempt, result, retries=self.request.retries)
    if outcome.decision is Decision.RETRY:
        raise self.retry(countdown=outcome.countdown, max_retries=None)
    if outcome.decision is Decision.FAILED:
        raise CompensationFailed(outcome.reason)
    return "compensated again"


@shared_task(bind=True, name="sagas.child_ended", acks_late=True, reject_on_worker_lost=True, max_retries=None)
def child_ended(self, parent_id: str, child_id: str) -> str:
    """A child saga ended: its parent's step moves on (sent by the transaction that ended the child)."""
    try:
        moved = engine.child_ended(parent_id, child_id)
    except INFRASTRUCTURE_ERRORS as exc:
        _retry_infrastructure(self, exc, self.request.retries)
    return moved


# The next segment of a long chain (``canvas.forward_chain``): the step before it succeeded and let
# its chain go on. Sending twice is harmless: a step's claim takes it once.
@shared_task(name="sagas.send_forward", acks_late=True)
def send_forward(saga_id: str, from_index: int) -> str:
    canvas.dispatch_forward(saga_id, from_index)
    return f"sent the chain from step {from_index}"


@shared_task(name="sagas.send_compensation", acks_late=True)
def send_compensation(saga_id: str, indices: list[int]) -> str:
    canvas.dispatch_compensation(saga_id, indices)
    return f"sent the compensation of steps {indices}"


# Beat sends it every SAGAS_SWEEP_INTERVAL seconds: its monitoring events (received, started,
# succeeded) would fill Flower's task list, so it sends none (Celery's Task.send_events); beat
# does not announce it either (config.celery). Its work shows in the sagas it moves and its log.
@shared_task(name="sagas.sweep", acks_late=True, send_events=False)
def sweep() -> dict:
    report = engine.sweep()
    return vars(report)


# One batch of a bulk action per message; the batch sends the next. Acknowledged late: a batch
# whose worker died is rolled back and its message comes back (beat's check covers a lost one).
@shared_task(bind=True, name="sagas.run_bulk_action", acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_bulk_action(self, bulk_id: str) -> str:
    try:
        report = bulk.run_batch(bulk_id)
    except INFRASTRUCTURE_ERRORS as exc:
        _retry_infrastructure(self, exc, self.request.retries)
    return str(report)


@shared_task(name="sagas.resume_bulk_actions", acks_late=True)
def resume_bulk_actions() -> list[str]:
    """Beat's check: running bulk actions whose last batch is old are sent again (``bulk.resend_stalled``)."""
    return bulk.resend_stalled()


@shared_task(name="sagas.prune")
def prune() -> dict:
    """Retention, when beat schedules it (``SAGAS_PRUNE_AFTER_DAYS``): what ``saga_prune --older-than`` removes."""
    report = prune_finished_sagas(older_than=timedelta(days=settings.SAGAS_PRUNE_AFTER_DAYS))
    return {"sagas": report.total_sagas, "steps": report.steps, "events": report.events}


# --- liveness: every process that runs steps heartbeats ------------------------------


@worker_process_init.connect
def _heartbeat_from_pool_child(**_) -> None:
    liveness.start_heartbeat()


@worker_ready.connect
def _heartbeat_from_worker_running_tasks_itself(sender=None, **_) -> None:
    pool = getattr(sender, "pool", None)
    if pool is not None and not type(pool).__module__.endswith("prefork"):
        liveness.start_heartbeat()  # solo, threads, gevent, eventlet: this process runs the steps


# --- database connections: kept between tasks, as between requests ---------------------


@task_prerun.connect
def _drop_broken_or_old_connections(**_) -> None:
    """Close a connection that broke or outlived CONN_MAX_AGE, as Django does between requests.

    Without the health check Django would then make on the connection's first
    use: one more round trip per step (6% of a step's time on PostgreSQL). A
    connection that died since raises an infrastructure error on its first
    query, and the task retries, on a new connection.
    """
    for connection in connections.all(initialized_only=True):
        connection.close_if_unusable_or_obsolete()
        connection.health_check_done = True
