"""Sagas that ship with the orchestrator itself: the benchmark and chaos sagas."""
from .bench import bench_saga, bench_saga_v1, build_variant
from .bench.workload import VARIANTS
from .chaos import chaos_saga, fanout_saga, long_saga
from .definitions import registry

registry.register(bench_saga_v1)
registry.register(bench_saga)
registry.register_family(VARIANTS, build_variant)
registry.register(chaos_saga)
registry.register(fanout_saga)
registry.register(long_saga)
