"""Failure injection for demos and staging: off unless switched on.

The engine calls ``maybe_fail(saga_type, step, phase)`` before every action.
When injection is on and a rule matches, the attempt fails on purpose: an
injected *transient* failure is an ordinary exception, retried by the step's
``Retry`` policy; an injected *permanent* one is a ``PermanentError`` and
fails the step at once. Compensations are never failed on purpose.

Rules map a saga type (or ``"*"``) to a step (or ``"*"``) to rates::

    {"corporate.order_fulfillment": {"charge_payment": {"transient": 0.2, "permanent": 0.05, "seed": 7}}}

The most specific rule wins: (type, step), (type, ``*``), (``*``, step),
(``*``, ``*``). They come from ``settings.SAGAS_FAILURE_INJECTION`` and from
run-time sources registered with ``register_source`` (a callable returning
rules in the same shape; a run-time rule overrides a settings rule for the
same type and step). Workers are separate processes, so a run-time source is
how a command such as ``saga_demo --failure-rate`` reaches them; sources are
read at most once per ``SAGAS_FAILURE_INJECTION_CACHE_SECONDS``.

The master switch is ``settings.SAGAS_FAILURE_INJECTION_ENABLED``; when it is
not set it follows ``DEBUG``, so production settings (``DEBUG`` off) never
inject unless the switch is set explicitly.

With a ``seed`` and the step's context, each decision is a hash of the seed,
the saga type, the saga's identity (its input's ``reference`` when present,
else the whole input), the step and the attempt: the same sagas fail the same
way on every run, in whatever worker they land.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from django.conf import settings

from .errors import PermanentError

logger = logging.getLogger(__name__)

WILDCARD = "*"
TRANSIENT = "transient"
PERMANENT = "permanent"

Rules = dict[str, dict[str, dict[str, Any]]]


class InjectedFailure(Exception):
    """A transient failure injected on purpose: retried like any other error."""


class InjectedPermanentFailure(PermanentError):
    """A permanent failure injected on purpose: the step fails at once."""


@dataclass(frozen=True)
class Rates:
    transient: float = 0.0
    permanent: float = 0.0
    seed: int | None = None

    def __bool__(self) -> bool:
        return self.transient > 0 or self.permanent > 0

    @classmethod
    def from_mapping(cls, data: dict) -> "Rates":
        seed = data.get("seed")
        return cls(
            transient=float(data.get(TRANSIENT, 0.0) or 0.0),
            permanent=float(data.get(PERMANENT, 0.0) or 0.0),
            seed=int(seed) if seed is not None else None,
        )


# --- the switch and the rules ----------------------------------------------------------


def is_enabled() -> bool:
    explicit = getattr(settings, "SAGAS_FAILURE_INJECTION_ENABLED", None)
    return bool(settings.DEBUG if explicit is None else explicit)


_sources: list[Callable[[], Rules]] = []
_cache_lock = threading.Lock()
_cache: dict[str, Any] = {"rules": None, "expires": 0.0}


def register_source(source: Callable[[], Rules]) -> None:
    """Add a run-time source of rules (read in every worker, cached briefly)."""
    if source not in _sources:
        _sources.append(source)
        clear_cache()


def unregister_source(source: Callable[[], Rules]) -> None:
    if source in _sources:
        _sources.remove(source)
        clear_cache()


def clear_cache() -> None:
    with _cache_lock:
        _cache["rules"] = None
        _cache["expires"] = 0.0


def cache_seconds() -> float:
    return float(getattr(settings, "SAGAS_FAILURE_INJECTION_CACHE_SECONDS", 1.0))


def current_rules() -> Rules:
    """Settings rules overlaid with every run-time source's rules."""
    now = time.monotonic()
    with _cache_lock:
        if _cache["rules"] is not None and now < _cache["expires"]:
            return _cache["rules"]
    merged: Rules = {}
    for layer in [getattr(settings, "SAGAS_FAILURE_INJECTION", None) or {}, *(src() for src in _sources)]:
        for saga_type, steps in layer.items():
            merged.setdefault(saga_type, {}).update(steps or {})
    with _cache_lock:
        _cache["rules"] = merged
        _cache["expires"] = now + cache_seconds()
    return merged


def rates_for(saga_type: str, step: str, rules: Rules | None = None) -> Rates:
    """The most specific rule for this saga type and step (no rule: zero rates)."""
    rules = current_rules() if rules is None else rules
    for saga_key in (saga_type, WILDCARD):
        steps = rules.get(saga_key) or {}
        for step_key in (step, WILDCARD):
            if step_key in steps:
                return Rates.from_mapping(steps[step_key] or {})
    return Rates()


# --- deciding ---------------------------------------------------------------------------


def roll(rates: Rates, context: Any = None) -> float:
    """A number in [0, 1): reproducible when the rule has a seed and the context is known."""
    if rates.seed is None or context is None:
        return random.random()
    material = json.dumps(
        [rates.seed, context.saga_type, _identity(context), context.step, context.attempt],
        sort_keys=True, default=str,
    )
    digest = hashlib.sha256(material.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _identity(context: Any) -> Any:
    """What names the saga across runs: its input's ``reference`` when it has one, else its whole input."""
    data = context.input
    if isinstance(data, dict) and data.get("reference"):
        return data["reference"]
    return data


def decide(rates: Rates, context: Any = None) -> str | None:
    """``"permanent"``, ``"transient"`` or ``None`` for one attempt."""
    if not rates:
        return None
    value = roll(rates, context)
    if value < rates.permanent:
        return PERMANENT
    if value < rates.permanent + rates.transient:
        return TRANSIENT
    return None


def maybe_fail(saga_type: str, step: str, phase: str, context: Any = None) -> None:
    """The engine's hook before each action: raise an injected failure if a rule says so.

    ``context`` is the step's ``StepContext``; without it decisions are random
    even when the rule has a seed.
    """
    if phase != "action" or not is_enabled():
        return
    outcome = decide(rates_for(saga_type, step), context)
    attempt = f" (attempt {context.attempt})" if context is not None else ""
    if outcome == PERMANENT:
        raise InjectedPermanentFailure(f"injected permanent failure in {saga_type}.{step}{attempt}")
    if outcome == TRANSIENT:
        raise InjectedFailure(f"injected transient failure in {saga_type}.{step}{attempt}")
