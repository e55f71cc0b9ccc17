"""``saga_bench``: the orchestrator against bare Celery on the same no-op steps, by phase.

- ``workload``: the benchmark sagas (and their sized variants) and the bare tasks;
- ``inprocess``: statements and transactions per step, and the cost of a
  ``Parallel`` member, measured in this process with the broker replaced by a recorder;
- ``runs``: bare chains and sagas through real workers: throughput, latency, worker memory;
- ``api_load``: starting sagas through the REST API under load (gunicorn, locust);
- ``report``: the printed tables and the JSON line.
"""
from ..chaos import CHAOS_SAGA, chaos_saga  # saga_chaos's saga lived here; still importable
from .workload import (
    BENCH_SAGA,
    BENCH_STEPS,
    bench_done,
    bench_member,
    bench_saga,
    bench_saga_v1,
    bench_step,
    build_variant,
    redis_client,
    saga_name,
)

__all__ = [
    "BENCH_SAGA", "BENCH_STEPS", "CHAOS_SAGA", "bench_done", "bench_member", "bench_saga", "bench_saga_v1", "bench_step",
    "build_variant", "chaos_saga", "redis_client", "saga_name",
]
