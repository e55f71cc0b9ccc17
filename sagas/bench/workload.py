"""What ``saga_bench`` runs: a three-step saga and the same three steps as a bare Celery chain.

Both do the same (no) work per step, so the difference is what the
orchestrator adds: claiming, recording and auditing each step, and the saga's
state in the database.
"""
import time

import redis
from celery import shared_task
from django.conf import settings

from .chaos import CHAOS_SAGA, chaos_saga  # noqa: F401  (saga_chaos's saga lived here; still importable)
from .definitions import Retry, Saga, Step
from .errors import PermanentError

BENCH_SAGA = "sagas.bench"
BENCH_STEPS = 3


def _work(ctx):
    if ctx.input.get("fail") and ctx.step == f"s{BENCH_STEPS - 1}":
        raise PermanentError("benchmark failure")
    return {"i": ctx.input.get("i")}


def _undo(ctx):
    return None


bench_saga = Saga(
    name=BENCH_SAGA,
    description="Benchmark saga used by `manage.py saga_bench` (no-op steps).",
    steps=[Step(f"s{i}", _work, compensation=_undo, retry=Retry(max_attempts=1)) for i in range(BENCH_STEPS)],
)


def redis_client() -> "redis.Redis":
    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


@shared_task(name="sagas.bench_step", acks_late=True)
def bench_step(i: int) -> dict:
    return {"i": i}


@shared_task(name="sagas.bench_done", acks_late=True)
def bench_done(run_id: str, sent_at: float) -> None:
    client = redis_client()
    client.rpush(f"saga-bench:{run_id}:latency", time.time() - sent_at)
