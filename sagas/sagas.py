"""Sagas that ship with the orchestrator itself: the benchmark and chaos sagas."""
from .bench import bench_saga
from .chaos import chaos_saga
from .definitions import registry

registry.register(bench_saga)
registry.register(chaos_saga)
