"""Starting a saga: validate its input, write the instance and its steps, send the first stage after commit."""
from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models.functions import Now
from django.utils import timezone

from .. import canvas
from ..definitions import Saga, registry
from ..errors import IdempotencyConflict, InvalidSagaInput
from ..models import EventKind, SagaEvent, SagaInstance, StepRecord
from . import sql
from .core import actor, is_user, json_problem, send_after_commit


def validate_input(definition: Saga, data: Any) -> dict:
    """The input as it will be stored: checked against the saga's schema, or ``InvalidSagaInput`` naming the field.

    The same input is judged the same on SQLite and PostgreSQL: keys must be
    strings, numbers finite and text free of NUL characters. With a serializer
    class as schema, what is stored is its validated data.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidSagaInput({"input": ["must be a JSON object"]})
    _check_storable(data)
    schema = definition.input_schema
    if schema is None:
        return json.loads(json.dumps(data))
    if isinstance(schema, type) and hasattr(schema, "is_valid"):
        serializer = schema(data=data)
        if not serializer.is_valid():
            raise InvalidSagaInput(_plain_errors(serializer.errors))
        # Its representation of the validated data: related rows as keys, dates as text.
        data = json.loads(json.dumps(serializer.data, cls=DjangoJSONEncoder))
        _check_storable(data)
        return data
    schema(data)  # a callable validator raises InvalidSagaInput itself
    return json.loads(json.dumps(data))


def _check_storable(data: dict) -> None:
    for key, value in data.items():
        if not isinstance(key, str):
            raise InvalidSagaInput({"input": [f"keys must be strings, got {key!r}"]})
        problem = json_problem(key, "key") or json_problem(value, key)
        if problem:
            field = key if isinstance(key, str) and "\x00" not in key else "input"
            raise InvalidSagaInput({field: [problem]})


def _plain_errors(errors: Any) -> Any:
    if isinstance(errors, dict):
        return {k: _plain_errors(v) for k, v in errors.items()}
    if isinstance(errors, list):
        return [_plain_errors(v) for v in errors]
    return str(errors)


def _clean_key(idempotency_key: Any) -> str | None:
    if idempotency_key is None:
        return None
    key = str(idempotency_key).strip()
    if not key or len(key) > 255:
        raise InvalidSagaInput({"idempotency_key": ["must be 1 to 255 characters"]})
    if any(ord(c) < 32 for c in key):
        raise InvalidSagaInput({"idempotency_key": ["must not contain control characters"]})
    return key


def start_saga(
    saga_type: str,
    input: dict | None = None,
    idempotency_key: str | None = None,
    *,
    version: int | None = None,
    resubmitted_from: SagaInstance | None = None,
    by: Any = None,
    parent: SagaInstance | None = None,
    parent_step: StepRecord | None = None,
) -> SagaInstance:
    """Create a saga instance and its step records; enqueue it once the transaction commits.

    With an ``idempotency_key`` already used for this saga type, return that
    instance and start nothing (``IdempotencyConflict`` if the input differs).
    ``by``: the user who starts it (``started_by``, and its event). A key is
    scoped to who starts: code's keys (no ``by``) keep their saga for good; a
    user's key answers only that user, for ``SAGAS_IDEMPOTENCY_TTL`` seconds.
    ``parent`` and ``parent_step``: a child saga's (``children.start_child``), which
    is read by whoever may read its parent's (its ``started_by``).
    """
    definition = registry.get(saga_type, version)
    data = validate_input(definition, input)
    idempotency_key = _clean_key(idempotency_key)
    scope = f"user:{by.pk}" if is_user(by) else ""
    if idempotency_key is not None:
        existing = _existing_for_key(saga_type, scope, idempotency_key, data)
        if existing is not None:
            return existing
    try:
        with transaction.atomic():
            # Three INSERTs, each compiled once per process and prepared once per connection (``sql``).
            saga = SagaInstance(
                saga_type=definition.name,
                version=definition.version,
                input=data,
                idempotency_key=idempotency_key,
                idempotency_scope=scope,
                started_by_id=by.pk if is_user(by) else (parent.started_by_id if parent is not None else None),
                resubmitted_from=resubmitted_from,
                parent=parent,
                parent_step=parent_step,
                depth=parent.depth + 1 if parent is not None else 0,
                due_at=Now() + timedelta(seconds=settings.SAGAS_STALL_AFTER),
            )
            sql.insert_rows([saga])
            steps = [StepRecord(saga=saga, index=i, name=s.name, has_compensation=s.has_compensation,
                                stage=definition.stage_of(i), parallel_group=definition.group_of(i))
                     for i, s in enumerate(definition.steps)]
            sql.insert_rows(steps)
            sql.insert_rows([SagaEvent(saga=saga, kind=EventKind.SAGA_CREATED, created_at=Now(), detail={
                "version": definition.version, "idempotency_key": idempotency_key,
                "resubmitted_from": str(resubmitted_from.pk) if resubmitted_from else None, **actor(by),
                **({"parent": str(parent.pk), "parent_step": parent_step.name} if parent is not None else {}),
            })])
            send_after_commit(canvas.dispatch_forward, saga.id, 0, definition=definition)
    except IntegrityError:
        # Another process inserted the same key between our look-up and insert.
        existing = _existing_for_key(saga_type, scope, idempotency_key, data) if idempotency_key else None
        if existing is None:
            raise
        return existing
    del saga.due_at  # a database expression until read back: loaded again if asked for
    saga.created_now = True
    saga.written_steps = steps  # as written: an API answer needs no read back
    return saga


def _existing_for_key(saga_type: str, scope: str, key: str, data: dict) -> SagaInstance | None:
    existing = SagaInstance.objects.filter(saga_type=saga_type, idempotency_scope=scope, idempotency_key=key).first()
    if existing is not None and scope and _expired(existing):
        _forget_key(existing)
        return None
    if existing is not None and existing.input != data:
        # Not naming the other saga: a key guessed with another body must learn nothing of it.
        raise IdempotencyConflict(f"idempotency key {key!r} was already used with another input")
    if existing is not None:
        existing.created_now = False
    return existing


def _expired(saga: SagaInstance) -> bool:
    return saga.created_at < timezone.now() - timedelta(seconds=settings.SAGAS_IDEMPOTENCY_TTL)


def _forget_key(saga: SagaInstance) -> None:
    """A user's key past its lifetime: taken off its saga (with an event), free for a new start."""
    with transaction.atomic():
        if SagaInstance.objects.filter(pk=saga.pk, idempotency_key=saga.idempotency_key).update(
                idempotency_key=None):
            SagaEvent.objects.create(saga=saga, kind=EventKind.IDEMPOTENCY_KEY_EXPIRED, created_at=Now(),
                                     detail={"idempotency_key": saga.idempotency_key,
                                             "ttl_seconds": settings.SAGAS_IDEMPOTENCY_TTL})
