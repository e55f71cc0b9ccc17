"""A saga orchestrator on Django and Celery.

The DSL names are importable at any time; the functions that touch the
database (``start_saga`` and friends) are loaded on first use, once Django's
apps are ready.
"""
from .definitions import ChildSaga, Parallel, Retry, Saga, SkipWait, Step, StepContext, registry
from .errors import (
    IdempotencyConflict,
    InvalidSagaInput,
    InvalidTransition,
    PermanentError,
    SagaDefinitionError,
    SignalNotAllowed,
    UnknownSagaType,
    UnknownSignalToken,
    UnknownStep,
)

_ENGINE_FUNCTIONS = {"start_saga", "resubmit", "cancel", "retry_compensation", "complete_step", "fail_step",
                     "pause", "resume", "skip_step"}

__all__ = [
    "ChildSaga", "Parallel", "Retry", "Saga", "SkipWait", "Step", "StepContext", "registry",
    "IdempotencyConflict", "InvalidSagaInput", "InvalidTransition", "PermanentError",
    "SagaDefinitionError", "SignalNotAllowed", "UnknownSagaType", "UnknownSignalToken", "UnknownStep",
    *sorted(_ENGINE_FUNCTIONS),
]


def __getattr__(name: str):
    if name in _ENGINE_FUNCTIONS:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'sagas' has no attribute {name!r}")
