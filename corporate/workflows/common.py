"""Small helpers the corporate workflows share: input parsing and retry policies."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from sagas import PermanentError, Retry

# Forward steps: a few quick retries (transient failures are short blips here).
STEP_RETRY = Retry(max_attempts=3, backoff=0.2, max_backoff=2.0)
# Compensations must finish: more attempts, longer waits.
COMPENSATION_RETRY = Retry(max_attempts=6, backoff=0.5, max_backoff=10.0)
# Steps after a pivot cannot be undone, only retried: the first waits as short as the others', then
# more attempts with waits growing to half a minute (a mail server or an asset pool out for a while),
# about 80 s in all; then the saga pauses for a person.
FORWARD_RETRY = Retry(max_attempts=10, backoff=0.2, max_backoff=30.0)
STEP_TIMEOUT = 30.0

_boolean = serializers.BooleanField()

# Saga versions: 1 faked the decisions from the input (retired); the gated flows
# are VERSION. REHEARSAL_VERSION is the same flow with deadlines of seconds
# (``saga_demo --short-deadlines``), so a rehearsal sees waits time out and
# compensate without waiting for days. start_saga runs a saga's highest
# version, so a rehearsal is numbered below the version it rehearses: budget
# approval and system deployment ran VERSION; employee onboarding moved on to
# a flow with a pivot (its module's PIVOT_VERSION, rehearsed by
# PIVOT_REHEARSAL_VERSION), then to one that starts IT's provisioning as a
# child saga (CHILD_VERSION, rehearsed by CHILD_REHEARSAL_VERSION), and budget
# approval to one whose executive step has a condition (its module's
# CONDITION_VERSION and CONDITION_REHEARSAL_VERSION). Every earlier version
# stays registered for the sagas started on it.
VERSION = 3
REHEARSAL_VERSION = 2
REHEARSAL_DEADLINE = 3.0  # seconds
HOUR = 3600.0
DAY = 24 * HOUR


def decision(ctx, gate: str, who: str) -> dict:
    """What the person decided at ``gate`` (the signal's result merged over the ask's output).

    Completing a gate approves. A rejection is a ``fail_step`` with a reason
    (the saga compensates at once); a completion that says
    ``{"approved": false}`` is refused here the same way, so nobody approves
    by mistake.
    """
    result = ctx.results.get(gate) or {}
    if result.get("approved") is False:
        comment = result.get("comment") or "no reason given"
        raise PermanentError(f"{who} rejected it: {comment}")
    return result


def free_asset(pool, assignments, field: str, **wanted):
    """The first asset of ``pool`` nobody holds (matching ``wanted``); the pool stays locked until the
    transaction ends."""
    # Lock the whole pool first: a concurrent pick waits here, then sees our assignment.
    list(pool.objects.select_for_update().order_by("pk").values_list("pk", flat=True))
    taken = assignments.objects.filter(returned_at__isnull=True).values(field)
    return pool.objects.exclude(pk__in=taken).filter(**wanted).order_by("pk").first()


def money(value: Any) -> Decimal:
    """An amount from saga input (a string or a number), to the cent."""
    return Decimal(str(value)).quantize(Decimal("0.01"))


def flag(data: dict, name: str, default: bool) -> bool:
    """A boolean from saga input, read the way the input serializer validated it."""
    if name not in data or data[name] is None:
        return default
    return _boolean.to_internal_value(data[name])


def positive_amount_field(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=14, decimal_places=2, min_value=Decimal("0.01"), **kwargs)


def reference_field() -> serializers.CharField:
    """The caller's own reference (order number, ticket, change id); seeded failure injection keys on it."""
    return serializers.CharField(max_length=60, required=False, allow_blank=True)
