"""Failure injection for demos and staging: off unless configured.

``settings.SAGAS_FAILURE_INJECTION`` maps a saga type (or ``"*"``) to a step
name (or ``"*"``) to ``{"transient": p, "permanent": p}`` probabilities. An
injected transient failure is retried like any other error; an injected
permanent one fails the step at once.
"""
from __future__ import annotations

import random

from django.conf import settings

from .errors import PermanentError


class InjectedFailure(Exception):
    """A transient failure injected on purpose."""


def rates_for(saga_type: str, step: str) -> dict:
    rules = getattr(settings, "SAGAS_FAILURE_INJECTION", None) or {}
    for saga_key in (saga_type, "*"):
        steps = rules.get(saga_key) or {}
        for step_key in (step, "*"):
            if step_key in steps:
                return steps[step_key]
    return {}


def maybe_fail(saga_type: str, step: str, phase: str) -> None:
    if phase != "action":
        return
    rates = rates_for(saga_type, step)
    if not rates:
        return
    roll = random.random()
    permanent = float(rates.get("permanent", 0.0))
    transient = float(rates.get("transient", 0.0))
    if roll < permanent:
        raise PermanentError(f"injected permanent failure in {saga_type}.{step}")
    if roll < permanent + transient:
        raise InjectedFailure(f"injected transient failure in {saga_type}.{step}")
