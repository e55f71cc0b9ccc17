"""Reads of the corporate domain that more than one caller needs."""
from __future__ import annotations

import logging

from django.db import DatabaseError, transaction

from .models import Desk, DeskAssignment, FailureInjectionRule, Laptop, LaptopAssignment

logger = logging.getLogger(__name__)


def failure_injection_rules() -> dict:
    """The stored failure-injection rules, shaped like ``settings.SAGAS_FAILURE_INJECTION``.

    A database that cannot answer (tables not migrated yet) means no rules:
    injection is a demo aid and must never stop a real step.
    """
    def read() -> list:
        return list(FailureInjectionRule.objects.values_list("saga_type", "step", "transient", "permanent", "seed"))

    try:
        if transaction.get_connection().in_atomic_block:
            with transaction.atomic():  # a savepoint: an error here must not break the caller's transaction
                rows = read()
        else:
            rows = read()
    except DatabaseError as exc:
        logger.warning("failure-injection rules could not be read (%s); none applied", exc)
        return {}
    rules: dict = {}
    for saga_type, step, transient, permanent, seed in rows:
        rules.setdefault(saga_type, {})[step] = {"transient": transient, "permanent": permanent, "seed": seed}
    return rules


def laptops_free_count() -> int:
    return Laptop.objects.exclude(pk__in=LaptopAssignment.objects.filter(returned_at__isnull=True)
                                  .values("laptop")).count()


def desks_free_count() -> int:
    return Desk.objects.exclude(pk__in=DeskAssignment.objects.filter(returned_at__isnull=True)
                                .values("desk")).count()
