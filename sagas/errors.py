"""Typed errors of the orchestrator. The API maps them to responses in one place."""
from __future__ import annotations


class SagaError(Exception):
    """Base class of every error the orchestrator raises on purpose."""


class PermanentError(SagaError):
    """Raised by a step action to fail the step at once, with no retry.

    Use it for business refusals (payment declined, out of stock): trying again
    would give the same answer.
    """


class StepTimeout(SagaError):
    """An attempt ran past its step's timeout; counts as a failed attempt."""


class SagaDefinitionError(SagaError):
    """A saga definition is malformed; raised when it is registered."""


class UnknownSagaType(SagaError):
    """No saga is registered under that name (and version)."""

    def __init__(self, saga_type: str, version: int | None = None):
        self.saga_type = saga_type
        self.version = version
        label = saga_type if version is None else f"{saga_type} v{version}"
        super().__init__(f"unknown saga type: {label!r}")


class InvalidSagaInput(SagaError):
    """The input does not match the saga's schema; ``errors`` maps field -> messages."""

    def __init__(self, errors: dict):
        self.errors = errors
        super().__init__(f"invalid saga input: {errors}")


class IdempotencyConflict(SagaError):
    """The idempotency key is already used by an instance with another input."""


class InvalidTransition(SagaError):
    """The state machine does not allow this move from the current state."""


class UnknownStep(SagaError):
    """The saga has no step of that name."""


class UnknownSignalToken(SagaError):
    """No step waits for this token: it never existed, was used, or its wait ended."""


class SignalNotAllowed(SagaError):
    """The user lacks the step's ``signal_permission``."""


class InvalidSignal(SagaError):
    """A signal's result or error cannot be stored; ``errors`` maps field -> messages."""

    def __init__(self, errors: dict):
        self.errors = errors
        super().__init__(f"invalid signal: {errors}")


class InvalidRequest(SagaError):
    """A person's move was given values it cannot take (a reason missing, a result not an object);
    ``errors`` maps field -> messages. Nothing changed."""

    def __init__(self, errors: dict):
        self.errors = errors
        super().__init__(f"invalid request: {errors}")


class StepFailed(SagaError):
    """Raised by the ``run_step`` task when a step failed for good, so the chain's error callback runs."""


class CompensationFailed(SagaError):
    """Raised by the ``compensate_step`` task when a compensation is exhausted; the chain stops there."""


class InvalidBulkAction(SagaError):
    """A bulk action's action or filter is not one the orchestrator takes; ``errors`` maps field -> messages."""

    def __init__(self, errors: dict):
        self.errors = errors
        super().__init__(f"invalid bulk action: {errors}")
