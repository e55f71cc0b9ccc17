"""What ``saga_bench`` runs: no-op sagas, and the same steps as bare Celery tasks.

Both sides do the same (no) work per step, so the difference is what the
orchestrator adds: claiming, recording and auditing each step, and the saga's
state in the database.

- ``sagas.bench`` (version 2): four steps ``s0``..``s3``, each with a
  compensation. Version 1 (three steps) stays registered for the rows of
  earlier runs.
- ``sagas.bench.s{N}``: ``N`` plain steps; ``sagas.bench.p{M}``: one
  ``Parallel`` stage of ``M`` members ``m0``..``m{M-1}``. Built on first use
  from the name alone (``registry.register_family``), in the benchmark and in
  its workers alike, and not listed until used.

With ``input["fail"]`` true the last step (the last member) refuses for good,
so the saga is compensated: every other step's compensation runs.

The bare side: a chain of ``bench_step`` tasks ended by ``bench_done`` (the
last step, which also records when the chain ended), or a group of
``bench_member`` tasks joined without a chord: each member counts itself in
Redis and the one that completes the count records the end, as the member
that completes a ``Parallel`` stage sends what follows.
"""
from __future__ import annotations

import re
import time

import redis
from celery import chain, group, shared_task
from celery.canvas import Signature
from django.conf import settings

from ..definitions import Parallel, Retry, Saga, Step
from ..errors import PermanentError

BENCH_SAGA = "sagas.bench"
BENCH_STEPS = 4
VARIANTS = "sagas.bench."
MAX_SIZE = 1000
LATENCY_KEY = "saga-bench:{run_id}:latency"
KEY_TTL = 3600


def _work(ctx) -> dict:
    return {"i": ctx.input.get("i")}


def _work_or_refuse(ctx) -> dict:
    if ctx.input.get("fail"):
        raise PermanentError("benchmark failure")
    return _work(ctx)


def _undo(ctx) -> None:
    return None


def _step(name: str, last: bool) -> Step:
    return Step(name, _work_or_refuse if last else _work, compensation=_undo, retry=Retry(max_attempts=1))


def _plain(name: str, steps: int, version: int = 1, description: str = "") -> Saga:
    return Saga(name=name, version=version, description=description,
                steps=[_step(f"s{i}", i == steps - 1) for i in range(steps)])


def _parallel(name: str, members: int) -> Saga:
    stage = Parallel("stage", *[_step(f"m{i}", i == members - 1) for i in range(members)])
    return Saga(name=name, description=f"Benchmark saga: one Parallel stage of {members} no-op members.",
                steps=[stage])


DESCRIPTION = "Benchmark saga used by `manage.py saga_bench` (no-op steps)."
bench_saga = _plain(BENCH_SAGA, BENCH_STEPS, version=2, description=DESCRIPTION)
bench_saga_v1 = _plain(BENCH_SAGA, 3, version=1, description=DESCRIPTION)

_VARIANT_RE = re.compile(r"^sagas\.bench\.([sp])([1-9][0-9]*)$")


def build_variant(name: str) -> Saga | None:
    """``sagas.bench.s{N}`` or ``sagas.bench.p{M}`` (1..MAX_SIZE); None for any other name."""
    match = _VARIANT_RE.match(name)
    if match is None or int(match[2]) > MAX_SIZE:
        return None
    size = int(match[2])
    if match[1] == "p":
        return _parallel(name, size)
    return _plain(name, size, description=f"Benchmark saga: {size} no-op steps.")


def saga_name(*, steps: int = BENCH_STEPS, parallel: int | None = None) -> str:
    """The benchmark saga of this shape: ``sagas.bench`` for the default four steps."""
    if parallel:
        return f"{VARIANTS}p{parallel}"
    return BENCH_SAGA if steps == BENCH_STEPS else f"{VARIANTS}s{steps}"


# --- the bare side -----------------------------------------------------------------------


def redis_client() -> "redis.Redis":
    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def _record_end(run_id: str, sent_at: float) -> None:
    key = LATENCY_KEY.format(run_id=run_id)
    client = redis_client()
    client.rpush(key, time.time() - sent_at)
    client.expire(key, KEY_TTL)


@shared_task(name="sagas.bench_step", acks_late=True)
def bench_step(i: int) -> dict:
    return {"i": i}


@shared_task(name="sagas.bench_done", acks_late=True)
def bench_done(run_id: str, sent_at: float, i: int | None = None) -> dict:
    """The chain's last step: the same no-op, and when the chain ended."""
    _record_end(run_id, sent_at)
    return {"i": i}


@shared_task(name="sagas.bench_member", acks_late=True)
def bench_member(run_id: str, sent_at: float, i: int, members: int) -> dict:
    """One member of a bare group; the member that completes the count records when the group ended."""
    key = f"saga-bench:{run_id}:{i}:joined"
    client = redis_client()
    joined = client.incr(key)
    client.expire(key, KEY_TTL)
    if joined == members:
        _record_end(run_id, sent_at)
        client.delete(key)
    return {"i": i}


def bare_chain(run_id: str, i: int, steps: int) -> Signature:
    return chain(*[bench_step.si(i) for _ in range(steps - 1)], bench_done.si(run_id, time.time(), i))


def bare_group(run_id: str, i: int, members: int) -> Signature:
    sent_at = time.time()
    return group(bench_member.si(run_id, sent_at, i, members) for _ in range(members))
