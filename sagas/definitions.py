"""The definition DSL: ``Saga``, ``Step``, ``Parallel``, ``Retry`` and the registry.

Definitions are plain data, validated when registered, so a bad one fails at
start-up with a message naming the saga and the problem.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .errors import SagaDefinitionError, UnknownSagaType

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Retry:
    """Retry policy of one step: exponential backoff, capped.

    ``max_attempts`` counts the first attempt: ``Retry(max_attempts=1)`` never
    retries; the default ``Retry()`` makes three attempts. The delay before attempt ``n + 1`` is ``backoff * 2 ** (n - 1)``
    seconds, capped at ``max_backoff``.
    """

    max_attempts: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise SagaDefinitionError(f"Retry.max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise SagaDefinitionError("Retry.backoff and Retry.max_backoff must be >= 0")

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next."""
        return min(self.backoff * (2 ** max(attempt - 1, 0)), self.max_backoff)

    def allows_another(self, attempts_made: int) -> bool:
        return attempts_made < self.max_attempts

    def as_dict(self) -> dict:
        return {"max_attempts": self.max_attempts, "backoff": self.backoff, "max_backoff": self.max_backoff}


DEFAULT_COMPENSATION_RETRY = Retry(max_attempts=5, backoff=1.0, max_backoff=60.0)


@dataclass(frozen=True)
class StepContext:
    """What an action or a compensation receives."""

    saga_id: uuid.UUID
    saga_type: str
    input: dict
    results: dict
    step: str
    attempt: int
    idempotency_key: str
    result: Any = None
    is_compensation: bool = False


@dataclass(frozen=True)
class Step:
    """One local transaction of a saga and, optionally, the compensation that undoes it."""

    name: str
    action: Callable[[Any], Any]
    compensation: Callable[[Any], Any] | None = None
    retry: Retry = field(default_factory=Retry)
    timeout: float | None = None
    compensation_retry: Retry = DEFAULT_COMPENSATION_RETRY
    compensation_timeout: float | None = None
    transactional: bool = False
    description: str = ""

    @property
    def has_compensation(self) -> bool:
        return self.compensation is not None

    def validate(self, saga_name: str) -> None:
        where = f"saga {saga_name!r}, step {self.name!r}"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SagaDefinitionError(f"saga {saga_name!r}: step name {self.name!r} is not a valid identifier")
        if not callable(self.action):
            raise SagaDefinitionError(f"{where}: action must be callable, got {self.action!r}")
        if self.compensation is not None and not callable(self.compensation):
            raise SagaDefinitionError(f"{where}: compensation must be callable or None, got {self.compensation!r}")
        for label, policy in (("retry", self.retry), ("compensation_retry", self.compensation_retry)):
            if not isinstance(policy, Retry):
                raise SagaDefinitionError(f"{where}: {label} must be a Retry, got {policy!r}")
        for label, limit in (("timeout", self.timeout), ("compensation_timeout", self.compensation_timeout)):
            if limit is not None and (not isinstance(limit, (int, float)) or limit <= 0):
                raise SagaDefinitionError(f"{where}: {label} must be a positive number of seconds, got {limit!r}")


class Parallel:
    """Steps that run at once, standing where one ``Step`` may.

    Not executed yet: registering a saga that uses it raises
    ``SagaDefinitionError`` so nobody believes it runs.
    """

    def __init__(self, name: str, *steps: Step):
        self.name = name
        self.steps = tuple(steps)


@dataclass
class Saga:
    """A named, versioned sequence of steps."""

    name: str
    steps: list
    version: int = 1
    input_schema: Any = None
    description: str = ""

    def __post_init__(self) -> None:
        self.steps = list(self.steps)

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    def validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name or ""):
            raise SagaDefinitionError(f"saga name {self.name!r} is not a valid identifier")
        if not isinstance(self.version, int) or self.version < 1:
            raise SagaDefinitionError(f"saga {self.name!r}: version must be an int >= 1, got {self.version!r}")
        if not self.steps:
            raise SagaDefinitionError(f"saga {self.name!r}: a saga needs at least one step")
        seen: set[str] = set()
        for step in self.steps:
            if isinstance(step, Parallel):
                raise SagaDefinitionError(
                    f"saga {self.name!r}: Parallel({step.name!r}) is not supported by this engine yet"
                )
            if not isinstance(step, Step):
                raise SagaDefinitionError(f"saga {self.name!r}: {step!r} is not a Step")
            step.validate(self.name)
            if step.name in seen:
                raise SagaDefinitionError(f"saga {self.name!r}: duplicate step name {step.name!r}")
            seen.add(step.name)
        if self.input_schema is not None and not callable(self.input_schema):
            raise SagaDefinitionError(f"saga {self.name!r}: input_schema must be a serializer class or callable")

    def step_at(self, index: int) -> Step:
        return self.steps[index]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "steps": [
                {
                    "index": i,
                    "name": s.name,
                    "description": s.description,
                    "has_compensation": s.has_compensation,
                    "retry": s.retry.as_dict(),
                    "timeout": s.timeout,
                    "compensation_retry": s.compensation_retry.as_dict(),
                    "transactional": s.transactional,
                }
                for i, s in enumerate(self.steps)
            ],
        }


class Registry:
    """All saga definitions of this process, by name and version."""

    def __init__(self) -> None:
        self._sagas: dict[tuple[str, int], Saga] = {}

    def register(self, saga: Saga) -> Saga:
        if not isinstance(saga, Saga):
            raise SagaDefinitionError(f"only Saga objects can be registered, got {saga!r}")
        saga.validate()
        if saga.key in self._sagas and self._sagas[saga.key] is not saga:
            raise SagaDefinitionError(f"saga {saga.name!r} version {saga.version} is already registered")
        self._sagas[saga.key] = saga
        return saga

    def unregister(self, name: str, version: int | None = None) -> None:
        for key in [k for k in self._sagas if k[0] == name and (version is None or k[1] == version)]:
            del self._sagas[key]

    def get(self, name: str, version: int | None = None) -> Saga:
        """The definition of ``name``: the given version, or the latest one."""
        if version is not None:
            try:
                return self._sagas[(name, version)]
            except KeyError:
                raise UnknownSagaType(name, version) from None
        versions = [v for (n, v) in self._sagas if n == name]
        if not versions:
            raise UnknownSagaType(name)
        return self._sagas[(name, max(versions))]

    def __contains__(self, name: str) -> bool:
        return any(n == name for (n, _) in self._sagas)

    def __iter__(self) -> Iterator[Saga]:
        return iter(sorted(self._sagas.values(), key=lambda s: s.key))

    def __len__(self) -> int:
        return len(self._sagas)


registry = Registry()
