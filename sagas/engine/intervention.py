"""People intervening: cancel, retry a failed compensation, resubmit, release a held saga."""
from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from ..errors import InvalidTransition
from ..models import ACTIVE_SAGA_STATUSES, EventKind, SagaInstance, SagaStatus, StepStatus
from .compensation import compensation_order, start_compensating
from .core import (
    actor,
    dispatch_compensation,
    event,
    locked_saga,
    move_saga,
    move_step,
    no_such_saga,
    release,
    saga_id_of,
    stall_deadline,
    steps_of,
)
from .start import start_saga


def cancel(saga: SagaInstance | uuid.UUID | str, *, reason: str = "cancelled", by: Any = None) -> SagaInstance:
    """Stop a pending or running saga and compensate what it did.

    The saga moves to ``compensating`` at once. A step attempt in progress
    finishes; its effects are then compensated too, before the earlier steps'.
    The saga's error keeps ``reason``; its event, who (``by``: the user).
    """
    reason = (reason or "").strip() or "cancelled"
    with locked_saga(saga_id_of(saga)) as instance:
        if instance is None:
            raise no_such_saga(saga)
        if instance.status not in (SagaStatus.PENDING, SagaStatus.RUNNING):
            raise InvalidTransition(
                f"saga {instance.id} is {instance.status}; only a pending or running saga can be cancelled")
        instance.cancel_requested_at = instance.db_now
        event(instance, EventKind.CANCEL_REQUESTED, reason=reason, **actor(by))
        instance.error = reason
        start_compensating(instance, steps_of(instance), reason)
    return SagaInstance.objects.get(pk=instance.pk)


def retry_compensation(saga: SagaInstance | uuid.UUID | str, *, by: Any = None) -> SagaInstance:
    """Re-run the compensations that failed, with a fresh retry budget (``by``: who asked)."""
    with locked_saga(saga_id_of(saga)) as instance:
        if instance is None:
            raise no_such_saga(saga)
        if instance.status != SagaStatus.FAILED:
            raise InvalidTransition(
                f"saga {instance.id} is {instance.status}; only a failed saga can retry compensation")
        event(instance, EventKind.COMPENSATION_RETRY_REQUESTED, **actor(by))
        records = steps_of(instance)
        for record in records:
            if record.status == StepStatus.COMPENSATION_FAILED:
                record.compensation_attempts = 0
                release(record)
                move_step(instance, record, StepStatus.COMPENSATING, EventKind.COMPENSATION_RETRY_REQUESTED)
        move_saga(instance, SagaStatus.COMPENSATING, EventKind.SAGA_COMPENSATING, reason="compensation retried")
        instance.due_at = stall_deadline(instance)
        dispatch_compensation(instance, compensation_order(records))
    return SagaInstance.objects.get(pk=instance.pk)


def resubmit(saga: SagaInstance | uuid.UUID | str, *, by: Any = None) -> SagaInstance:
    """Start a new instance of the latest version with the same input, linked to this one.

    Idempotent: a saga already resubmitted answers the instance it started
    (``created_now`` False), so a double click starts one saga, not two.
    """
    with locked_saga(saga_id_of(saga)) as original:
        if original is None:
            raise no_such_saga(saga)
        if original.status in ACTIVE_SAGA_STATUSES:
            raise InvalidTransition(
                f"saga {original.id} is still {original.status}; resubmit it once it has finished")
        earlier = SagaInstance.objects.filter(resubmitted_from=original).order_by("created_at").first()
        if earlier is not None:
            earlier.created_now = False
            return earlier
        new = start_saga(original.saga_type, input=original.input, resubmitted_from=original, by=by)
        event(original, EventKind.RESUBMITTED, new_saga=str(new.id), **actor(by))
    return new


def release_held(saga: SagaInstance | uuid.UUID | str, *, note: str = "", by: Any = None) -> SagaInstance:
    """Give a saga the sweeper held for a person back to the sweeper, once its cause is fixed."""
    with locked_saga(saga_id_of(saga)) as instance:
        if instance is None:
            raise no_such_saga(saga)
        if instance.status not in ACTIVE_SAGA_STATUSES or instance.due_at is not None:
            raise InvalidTransition(f"saga {instance.id} is not held by the sweeper")
        # Due now (a millisecond back: SQLite's clock reads to the millisecond only).
        instance.due_at = instance.db_now - timedelta(milliseconds=1)
        event(instance, EventKind.SAGA_RESUMED, phase="released", note=note or "released for the sweeper",
              **actor(by))
    return SagaInstance.objects.get(pk=instance.pk)
