"""What ``saga_bench`` and ``saga_chaos`` run: a three-step saga and the same three steps as a bare Celery chain.

Both do the same (no) work per step, so the difference is what the
orchestrator adds: claiming, recording and auditing each step, and the saga's
state in the database.
"""
import time

import redis
from celery import shared_task
from django.conf import settings

from .definitions import Parallel, Retry, Saga, Step
from .errors import PermanentError

BENCH_SAGA = "sagas.bench"
BENCH_STEPS = 3


def _work(ctx):
    if ctx.input.get("sleep"):
        time.sleep(ctx.input["sleep"])  # saga_chaos: time for workers to die mid-step
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


CHAOS_SAGA = "sagas.chaos"

# The same work with a Parallel stage in the middle: chaos also hits joins.
chaos_saga = Saga(
    name=CHAOS_SAGA,
    description="Chaos saga used by `manage.py saga_chaos` (no-op steps, a parallel stage).",
    steps=[
        Step("s0", _work, compensation=_undo, retry=Retry(max_attempts=1)),
        Parallel("fan", *[Step(f"s1{m}", _work, compensation=_undo, retry=Retry(max_attempts=1)) for m in "ab"]),
        Step(f"s{BENCH_STEPS - 1}", _work, compensation=_undo, retry=Retry(max_attempts=1)),
    ],
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
