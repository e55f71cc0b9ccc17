"""Sagas that ship with the orchestrator itself: the benchmark and chaos sagas, each set behind a switch.

They exist for ``saga_bench`` and ``saga_chaos``, not for clients: one
``POST /api/sagas/`` of ``sagas.bench.p1000`` would write a thousand step
rows, and every new variant name would cost every process memory for good.
So a process registers them only when ``SAGAS_BENCH_SAGAS`` or
``SAGAS_CHAOS_SAGAS`` is on (off by default); the commands call
``register_bench_sagas`` / ``register_chaos_sagas`` themselves and switch the
setting on for the workers they start (``BENCH_ENV``, ``CHAOS_ENV``).

Every ``Saga`` defined at the top level of ``sagas.chaos`` is a chaos saga:
a new one follows the chaos switch without being listed here.
"""
from django.conf import settings

from .definitions import Saga, registry

BENCH_ENV = {"SAGAS_BENCH_SAGAS": "1"}
CHAOS_ENV = {"SAGAS_CHAOS_SAGAS": "1"}


def register_bench_sagas() -> None:
    """``sagas.bench`` (both versions) and its sized variants ``sagas.bench.s{N}`` / ``p{M}``; again is a no-op."""
    from .bench.workload import VARIANTS, bench_saga, bench_saga_v1, build_variant

    registry.register(bench_saga_v1)
    registry.register(bench_saga)
    registry.register_family(VARIANTS, build_variant)


def register_chaos_sagas() -> None:
    """Every saga ``sagas.chaos`` defines (``sagas.chaos``, and any added there); again is a no-op."""
    from . import chaos

    for saga in vars(chaos).values():
        if isinstance(saga, Saga):
            registry.register(saga)


if settings.SAGAS_BENCH_SAGAS:
    register_bench_sagas()
if settings.SAGAS_CHAOS_SAGAS:
    register_chaos_sagas()
