"""Sagas that ship with the orchestrator itself: the benchmark saga."""
from .bench import bench_saga
from .definitions import registry

registry.register(bench_saga)
