"""The definition DSL: ``Saga``, ``Step``, ``Parallel``, ``Retry`` and the registry.

Definitions are plain data, validated when registered, so a bad one fails at
start-up with a message naming the saga and the problem.
"""
from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .errors import SagaDefinitionError, UnknownSagaType

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
# A Django permission as ``user.has_perm`` takes it: "app_label.codename".
_PERMISSION_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z0-9_]+$")


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
    # A waiting step's token for this attempt's wait (``sagas.engine.waiting``); None for other steps.
    signal_token: str | None = None

    @property
    def action_key(self) -> str:
        """The idempotency key the step's action was given.

        A compensation whose ``result`` is None (the action may have run but its
        output is unknown: its attempt was lost or killed, or its output could not
        be stored) finds what the action did through this key.
        """
        return f"{self.saga_id}:{self.step}"


@dataclass(frozen=True)
class SkipWait:
    """What a waiting step's action returns when no signal is needed this time (it decided itself).

    ``return SkipWait({"executive_required": False})``: the step succeeds with
    that output at once, as a step without ``wait_for_signal`` would, and the
    saga goes on. Its ``step_succeeded`` event says ``wait_skipped``.
    """

    result: Any = None


def validate_condition(when: Any, where: str) -> None:
    """A ``when`` is a callable taking the step's context, or None (no condition)."""
    if when is not None and not callable(when):
        raise SagaDefinitionError(f"{where}: when must be a callable (ctx -> bool) or None, got {when!r}")


@dataclass(frozen=True)
class Step:
    """One local transaction of a saga and, optionally, the compensation that undoes it.

    With ``wait_for_signal`` the step waits, once its action succeeded, for
    ``complete_step`` or ``fail_step`` (a person or another system) up to
    ``signal_timeout`` seconds; ``signal_permission`` names who may signal it.
    """

    name: str
    action: Callable[[Any], Any] | None = None
    compensation: Callable[[Any], Any] | None = None
    retry: Retry = field(default_factory=Retry)
    timeout: float | None = None
    compensation_retry: Retry = DEFAULT_COMPENSATION_RETRY
    compensation_timeout: float | None = None
    transactional: bool = False
    description: str = ""
    wait_for_signal: bool = False
    signal_timeout: float | None = None
    signal_permission: str | None = None
    # The saga's point of no return: once this step has succeeded, a later step that fails for good
    # pauses the saga for a person instead of compensating (``sagas.engine.compensation.forward_failed``).
    pivot: bool = False
    # ``when(ctx) -> bool``, asked when the step's turn comes, with the context its action would get:
    # false, the step is skipped (never run, never compensated) and the saga goes on.
    when: Callable[[Any], bool] | None = None

    @property
    def has_compensation(self) -> bool:
        return self.compensation is not None

    def validate(self, saga_name: str) -> None:
        where = f"saga {saga_name!r}, step {self.name!r}"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SagaDefinitionError(f"saga {saga_name!r}: step name {self.name!r} is not a valid identifier")
        if self.action is None and not self.wait_for_signal:
            raise SagaDefinitionError(f"{where}: action=None is only allowed for a pure wait (wait_for_signal=True)")
        if self.action is not None and not callable(self.action):
            raise SagaDefinitionError(f"{where}: action must be callable, got {self.action!r}")
        self._validate_wait(where)
        validate_condition(self.when, where)
        if not isinstance(self.pivot, bool):
            raise SagaDefinitionError(f"{where}: pivot must be True or False, got {self.pivot!r}")
        if self.compensation is not None and not callable(self.compensation):
            raise SagaDefinitionError(f"{where}: compensation must be callable or None, got {self.compensation!r}")
        for label, policy in (("retry", self.retry), ("compensation_retry", self.compensation_retry)):
            if not isinstance(policy, Retry):
                raise SagaDefinitionError(f"{where}: {label} must be a Retry, got {policy!r}")
        for label, limit in (("timeout", self.timeout), ("compensation_timeout", self.compensation_timeout)):
            if limit is not None and (not isinstance(limit, (int, float)) or limit <= 0):
                raise SagaDefinitionError(f"{where}: {label} must be a positive number of seconds, got {limit!r}")

    def _validate_wait(self, where: str) -> None:
        if not isinstance(self.wait_for_signal, bool):
            raise SagaDefinitionError(f"{where}: wait_for_signal must be True or False, got {self.wait_for_signal!r}")
        timeout, permission = self.signal_timeout, self.signal_permission
        if not self.wait_for_signal and (timeout is not None or permission is not None):
            raise SagaDefinitionError(f"{where}: signal_timeout and signal_permission need wait_for_signal=True")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0 or timeout == float("inf")):
            raise SagaDefinitionError(
                f"{where}: signal_timeout must be a positive number of seconds (or None: no deadline), got {timeout!r}")
        if permission is not None and (not isinstance(permission, str) or not _PERMISSION_RE.match(permission)):
            raise SagaDefinitionError(
                f"{where}: signal_permission must be shaped 'app_label.codename', got {permission!r}")


@dataclass(frozen=True, init=False)
class ChildSaga(Step):
    """A step whose work is a whole saga of another type, started as its child when the step's turn comes.

    ``input(ctx)`` gives the child's input (a dict; None: an empty one);
    ``version`` the child's version (None: the latest when it starts);
    ``timeout`` (seconds) how long the child may take before it is cancelled
    and the step fails. The step waits, holding no worker, until the child
    ends: succeeded, the step succeeds with ``{"saga_id", "results"}``;
    compensated, it fails for good. Undoing the step undoes the child as a
    whole. The type need not be registered yet (types register in any
    order): an unknown one fails the step when its turn comes.
    """

    saga_type: str = ""
    input: Callable[[Any], dict] | None = None
    version: int | None = None
    # ``timeout`` as given: how long the child may run (a ``Step``'s ``timeout`` is one attempt's limit).
    child_timeout: float | None = None

    def __init__(self, name: str, saga_type: str, input: Callable[[Any], dict] | None = None,
                 version: int | None = None, timeout: float | None = None,
                 when: Callable[[Any], bool] | None = None, description: str = ""):
        # One attempt: starting the child is one transaction, which commits or leaves nothing behind.
        super().__init__(name=name, when=when, description=description, retry=Retry(max_attempts=1))
        object.__setattr__(self, "saga_type", saga_type)
        object.__setattr__(self, "input", input)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "child_timeout", timeout)

    @property
    def has_compensation(self) -> bool:
        return True  # undone by undoing the child

    def validate(self, saga_name: str) -> None:
        where = f"saga {saga_name!r}, ChildSaga({self.name!r})"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SagaDefinitionError(f"saga {saga_name!r}: step name {self.name!r} is not a valid identifier")
        if not isinstance(self.saga_type, str) or not _NAME_RE.match(self.saga_type):
            raise SagaDefinitionError(f"{where}: saga_type {self.saga_type!r} is not a valid saga name")
        if self.input is not None and not callable(self.input):
            raise SagaDefinitionError(f"{where}: input must be a callable (ctx -> dict) or None, got {self.input!r}")
        if self.version is not None and (isinstance(self.version, bool) or not isinstance(self.version, int)
                                         or self.version < 1):
            raise SagaDefinitionError(f"{where}: version must be an int >= 1 or None, got {self.version!r}")
        limit = self.child_timeout
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                                  or not limit > 0 or limit == float("inf")):
            raise SagaDefinitionError(
                f"{where}: timeout must be a positive number of seconds (or None: no deadline), got {limit!r}")
        validate_condition(self.when, where)

    def describe(self) -> dict:
        return {"saga_type": self.saga_type, "version": self.version, "timeout": self.child_timeout}


@dataclass(frozen=True, init=False)
class Parallel:
    """Steps that run at once, standing where one ``Step`` may.

    Its members start together once every earlier step has succeeded; the
    steps after it start once every member has succeeded. If a member fails,
    the members that succeeded are compensated, then the earlier steps.
    """

    name: str
    steps: tuple
    # Asked once, when the first of its members' turn comes: false skips every member.
    when: Callable[[Any], bool] | None = None

    def __init__(self, name: str, *steps: Step, when: Callable[[Any], bool] | None = None):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "steps", tuple(steps))
        object.__setattr__(self, "when", when)

    def validate(self, saga_name: str) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SagaDefinitionError(f"saga {saga_name!r}: Parallel name {self.name!r} is not a valid identifier")
        where = f"saga {saga_name!r}, Parallel({self.name!r})"
        if not self.steps:
            raise SagaDefinitionError(f"{where}: a Parallel needs at least one step")
        validate_condition(self.when, where)
        for member in self.steps:
            if isinstance(member, Parallel):
                raise SagaDefinitionError(f"{where}: Parallel({member.name!r}) is nested; Parallel members must be Steps")
            if not isinstance(member, Step):
                raise SagaDefinitionError(f"{where}: {member!r} is not a Step")
            if member.pivot:
                raise SagaDefinitionError(
                    f"{where}: step {member.name!r} is a pivot; a pivot must be a plain Step, not a Parallel member")


@dataclass
class Saga:
    """A named, versioned sequence of steps; a ``Parallel`` stands where a step may.

    ``steps`` is the flat list of ``Step`` objects in order (a Parallel's
    members in place of it, one after another): a step's position there is
    its index, as in its ``StepRecord``. ``stages`` groups those indices into
    what runs one after another: one index for a plain step, the members'
    indices for a Parallel.
    """

    name: str
    steps: list
    version: int = 1
    input_schema: Any = None
    description: str = ""
    # The Django permission ("app_label.codename") a user also needs for anything on sagas of this
    # type, reading included (``sagas.access``); None: the general permissions suffice.
    permission: str | None = None
    # Input fields (and the same keys in step outputs and signals) shown masked to users without
    # ``sagas.view_sensitive_data``; stored as given.
    sensitive: tuple = ()
    # A copy of another version's flow for drills (deadlines of seconds, say): listed and documented as a
    # rehearsal (``GET /api/saga-types/``, the API schema, the admin's start form), never for real work.
    rehearsal: bool = False
    layout: list = field(init=False, repr=False, compare=False)
    stages: list = field(init=False, repr=False, compare=False)
    _stage_of: list = field(init=False, repr=False, compare=False)
    _group_of: list = field(init=False, repr=False, compare=False)
    _group_when: list = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # As declared (Steps and Parallels), kept for validation; ``steps`` is flattened.
        self.layout = list(self.steps)
        self.steps, self.stages, self._stage_of, self._group_of, self._group_when = [], [], [], [], []
        for item in self.layout:
            members = item.steps if isinstance(item, Parallel) else (item,)
            group = item.name if isinstance(item, Parallel) else None
            stage = []
            for member in members:
                stage.append(len(self.steps))
                self._stage_of.append(len(self.stages))
                self._group_of.append(group)
                self._group_when.append(getattr(item, "when", None) if group else None)
                self.steps.append(member)
            if stage:
                self.stages.append(stage)

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    def validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name or ""):
            raise SagaDefinitionError(f"saga name {self.name!r} is not a valid identifier")
        if not isinstance(self.version, int) or self.version < 1:
            raise SagaDefinitionError(f"saga {self.name!r}: version must be an int >= 1, got {self.version!r}")
        if not self.layout:
            raise SagaDefinitionError(f"saga {self.name!r}: a saga needs at least one step")
        groups: set[str] = set()
        for item in self.layout:
            if isinstance(item, Parallel):
                item.validate(self.name)
                if item.name in groups:
                    raise SagaDefinitionError(f"saga {self.name!r}: duplicate Parallel name {item.name!r}")
                groups.add(item.name)
            elif not isinstance(item, Step):
                raise SagaDefinitionError(f"saga {self.name!r}: {item!r} is not a Step")
        seen: set[str] = set()
        for step in self.steps:
            step.validate(self.name)
            if step.name in seen:
                raise SagaDefinitionError(f"saga {self.name!r}: duplicate step name {step.name!r}")
            seen.add(step.name)
        clash = groups & seen
        if clash:
            raise SagaDefinitionError(
                f"saga {self.name!r}: {sorted(clash)[0]!r} names both a Parallel and a step")
        self._validate_pivot()
        if self.input_schema is not None and not callable(self.input_schema):
            raise SagaDefinitionError(f"saga {self.name!r}: input_schema must be a serializer class or callable")
        if self.permission is not None and (not isinstance(self.permission, str)
                                            or not _PERMISSION_RE.match(self.permission)):
            raise SagaDefinitionError(
                f"saga {self.name!r}: permission must be 'app_label.codename', got {self.permission!r}")
        if isinstance(self.sensitive, str) or not all(isinstance(k, str) and k for k in self.sensitive):
            raise SagaDefinitionError(
                f"saga {self.name!r}: sensitive must be a tuple of field names, got {self.sensitive!r}")
        self.sensitive = tuple(self.sensitive)
        if not isinstance(self.rehearsal, bool):
            raise SagaDefinitionError(f"saga {self.name!r}: rehearsal must be True or False, got {self.rehearsal!r}")

    def _validate_pivot(self) -> None:
        pivots = [s.name for s in self.steps if s.pivot]
        if len(pivots) > 1:
            raise SagaDefinitionError(f"saga {self.name!r}: at most one pivot step, got {pivots}")
        after = self.steps[self.pivot_index + 1:] if self.pivot_index is not None else []
        # A ChildSaga there is allowed: past the pivot nothing is undone, its child included.
        undoable = [s.name for s in after if s.compensation is not None]
        if undoable:
            raise SagaDefinitionError(
                f"saga {self.name!r}: step {undoable[0]!r} comes after the pivot "
                f"{pivots[0]!r} and may not declare a compensation (past the pivot the saga only goes forward)")

    @property
    def pivot_index(self) -> int | None:
        """The index of the pivot step, or None: a saga without a point of no return."""
        return next((i for i, s in enumerate(self.steps) if s.pivot), None)

    def after_pivot(self, index: int) -> bool:
        """Step ``index`` comes after the pivot (a failure of it, once the pivot succeeded, pauses the saga)."""
        pivot = self.pivot_index
        return pivot is not None and index > pivot

    def step_at(self, index: int) -> Step:
        return self.steps[index]

    def stage_of(self, index: int) -> int:
        """Position of the stage that holds step ``index``."""
        return self._stage_of[index]

    def stage_indices(self, index: int) -> list[int]:
        """Indices of step ``index`` and the members of its Parallel, if it has one."""
        return self.stages[self._stage_of[index]]

    def group_of(self, index: int) -> str | None:
        """Name of the Parallel step ``index`` belongs to; ``None`` for a plain step."""
        return self._group_of[index]

    def is_parallel(self, index: int) -> bool:
        return self._group_of[index] is not None

    def conditions(self, index: int) -> tuple[Callable | None, Callable | None]:
        """The ``when`` of step ``index``, and that of the Parallel it belongs to (None: no condition)."""
        return getattr(self.steps[index], "when", None), self._group_when[index]

    def claims_locked(self, index: int) -> bool:
        """Step ``index`` is claimed only under the saga's lock: it has a condition to ask when its turn
        comes, or it is a child saga to start. The one-statement and unlocked claims leave it to the locked one."""
        return isinstance(self.steps[index], ChildSaga) or any(c is not None for c in self.conditions(index))

    def is_child(self, index: int) -> bool:
        """Step ``index`` is a ``ChildSaga``: its work is its child's."""
        return isinstance(self.steps[index], ChildSaga)

    def next_stage_start(self, index: int) -> int | None:
        """First index of the stage after the one holding ``index``; ``None`` after the last stage."""
        following = self._stage_of[index] + 1
        return self.stages[following][0] if following < len(self.stages) else None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "rehearsal": self.rehearsal,
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
                    "wait_for_signal": s.wait_for_signal,
                    "signal_timeout": s.signal_timeout,
                    "signal_permission": s.signal_permission,
                    "pivot": s.pivot,
                    "conditional": any(c is not None for c in self.conditions(i)),
                    "child_saga": s.describe() if isinstance(s, ChildSaga) else None,
                    "stage": self.stage_of(i),
                    "parallel_group": self.group_of(i),
                }
                for i, s in enumerate(self.steps)
            ],
        }


class Registry:
    """All saga definitions of this process, by name and version."""

    def __init__(self) -> None:
        self._sagas: dict[tuple[str, int], Saga] = {}
        self._families: dict[str, Callable[[str], Saga | None]] = {}
        self._building = threading.Lock()

    def register(self, saga: Saga) -> Saga:
        if not isinstance(saga, Saga):
            raise SagaDefinitionError(f"only Saga objects can be registered, got {saga!r}")
        saga.validate()
        if saga.key in self._sagas and self._sagas[saga.key] is not saga:
            raise SagaDefinitionError(f"saga {saga.name!r} version {saga.version} is already registered")
        self._sagas[saga.key] = saga
        return saga

    def register_family(self, prefix: str, build: Callable[[str], Saga | None]) -> None:
        """Sagas named ``prefix...`` are built by ``build(name)`` on first use (None: no such saga).

        For definitions that follow from their name alone (the benchmark's
        sized variants): every process builds the same one when it first needs
        it, so workers run them too, and none is listed until it is used.
        """
        if prefix in self._families and self._families[prefix] is not build:
            raise SagaDefinitionError(f"a saga family {prefix!r} is already registered")
        self._families[prefix] = build

    def _build(self, name: str) -> bool:
        """Build ``name`` from its family if it is not built yet; whether it is registered now."""
        with self._building:
            if name in self:
                return True
            for prefix, build in self._families.items():
                saga = build(name) if name.startswith(prefix) else None
                if saga is not None:
                    self.register(saga)
                    return True
        return False

    def unregister_family(self, prefix: str) -> None:
        self._families.pop(prefix, None)

    def families(self) -> set[str]:
        """The prefixes of the registered families."""
        return set(self._families)

    def unregister(self, name: str, version: int | None = None) -> None:
        for key in [k for k in self._sagas if k[0] == name and (version is None or k[1] == version)]:
            del self._sagas[key]

    def get(self, name: str, version: int | None = None) -> Saga:
        """The definition of ``name``: the given version, or the latest one."""
        if version is not None:
            saga = self._sagas.get((name, version))
            if saga is None and self._build(name):
                saga = self._sagas.get((name, version))
            if saga is None:
                raise UnknownSagaType(name, version)
            return saga
        versions = [v for (n, v) in self._sagas if n == name]
        if not versions and self._build(name):
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
