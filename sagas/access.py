"""Who may do what: every read and every move a person makes, decided here for the API and the admin alike.

Django permissions on ``sagas.SagaInstance`` decide (superusers hold them
all; groups are the usual way to grant them), one per move (``MOVES``); a
saga type may ask for one more (``Saga(..., permission=...)``), needed for
anything on sagas of that type, reading included. The user who started a
saga may always read it. Signals keep their own ``signal_permission``
(``sagas.engine.may_signal``). Sensitive fields (``Saga(..., sensitive=...)``)
are masked for users without ``sagas.view_sensitive_data`` (``masked``).
"""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from .definitions import Saga, registry
from .errors import UnknownSagaType

# A move -> the permission it needs (besides the saga type's own).
MOVES = {
    "view": "sagas.view_sagainstance",
    "start": "sagas.start_saga",
    "cancel": "sagas.cancel_saga",
    "pause": "sagas.pause_saga",
    "resume": "sagas.pause_saga",
    "skip": "sagas.pause_saga",
    "resubmit": "sagas.resubmit_saga",
    "retry_compensation": "sagas.retry_compensation",
    "release": "sagas.retry_compensation",
    "bulk": "sagas.run_bulk_actions",
}
VIEW_SENSITIVE = "sagas.view_sensitive_data"
MASK = "•••"


def _authenticated(user: Any) -> bool:
    return bool(getattr(user, "is_authenticated", False) and getattr(user, "is_active", True))


def definition_named(saga_type: str) -> Saga | None:
    """The latest registered definition of ``saga_type`` (its permission and sensitive fields), or None."""
    try:
        return registry.get(saga_type)
    except UnknownSagaType:
        return None


def may_use_type(user: Any, saga_type: str | None) -> bool:
    """The saga type asks for no permission of its own, or ``user`` holds it."""
    definition = definition_named(saga_type) if saga_type else None
    return definition is None or definition.permission is None or user.has_perm(definition.permission)


def may(user: Any, move: str, saga: Any = None, *, saga_type: str | None = None) -> bool:
    """Whether ``user`` may make ``move`` (a key of ``MOVES``) on ``saga``, or on sagas of ``saga_type``.

    Without a saga or a type: whether the move's own permission is held
    (what a list or a menu asks before any saga is named).
    """
    if not _authenticated(user):
        return False
    saga_type = saga.saga_type if saga is not None else saga_type
    if not may_use_type(user, saga_type):
        return False
    if move == "view" and saga is not None and saga.started_by_id is not None and saga.started_by_id == user.pk:
        return True  # who started a saga may always read it
    return user.has_perm(MOVES[move])


def forbidden_types(user: Any) -> list[str]:
    """The registered saga types whose own permission ``user`` lacks."""
    return sorted({d.name for d in registry if d.permission and not user.has_perm(d.permission)})


def readable_types(user: Any) -> list[str] | None:
    """The registered saga types ``user`` may read, or None for all (what analytics and metrics count)."""
    forbidden = forbidden_types(user)
    if not forbidden and user.has_perm(MOVES["view"]):
        return None
    if not user.has_perm(MOVES["view"]):
        return []
    return sorted({d.name for d in registry} - set(forbidden))


def visible(user: Any, sagas: QuerySet, *, prefix: str = "") -> QuerySet:
    """``sagas`` narrowed to those ``user`` may read (``prefix``: the path to the saga, ``"saga__"`` for steps)."""
    if not _authenticated(user):
        return sagas.none()
    if user.has_perm(MOVES["view"]):
        rows = sagas
    else:  # their own sagas only
        rows = sagas.filter(**{f"{prefix}started_by": user.pk})
    forbidden = forbidden_types(user)
    if forbidden:
        rows = rows.exclude(**{f"{prefix}saga_type__in": forbidden})
    return rows


# --- sensitive fields ------------------------------------------------------------------------


def sensitive_fields(saga_type: str) -> frozenset[str]:
    definition = definition_named(saga_type)
    return frozenset(definition.sensitive) if definition else frozenset()


def sees_sensitive(user: Any) -> bool:
    return _authenticated(user) and user.has_perm(VIEW_SENSITIVE)


def masked(value: Any, fields: frozenset[str]) -> Any:
    """``value`` with the value of every key in ``fields``, at any depth, replaced by ``MASK``."""
    if not fields:
        return value
    if isinstance(value, dict):
        return {k: (MASK if k in fields else masked(v, fields)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, fields) for v in value]
    return value


def masked_saga(data: dict) -> dict:
    """A saga as the API answers it (``SagaInstanceOutputSerializer``'s data) with its sensitive fields
    masked: its input, its results and each step's result (the API's and the command line's)."""
    fields = sensitive_fields(data["saga_type"])
    if not fields:
        return data
    data["input"] = masked(data["input"], fields)
    data["results"] = masked(data["results"], fields)
    for step in data.get("steps", []):
        step["result"] = masked(step["result"], fields)
    return data


def shown(user: Any, saga_type: str, value: Any) -> Any:
    """``value`` (an input, an output, an event's detail) as ``user`` may see it."""
    if sees_sensitive(user):
        return value
    return masked(value, sensitive_fields(saga_type))


def masked_text(text: str, saga_type: str, values: Any) -> str:
    """``text`` (an error, a sentence) with the sensitive values found in ``values`` (an input) written as ``MASK``.

    For text nobody may see unmasked: logs and mails.
    """
    fields = sensitive_fields(saga_type)
    if not fields or not text:
        return text
    for secret in _values_of(values, fields):
        if secret:
            text = text.replace(secret, MASK)
    return text


def _values_of(value: Any, fields: frozenset[str]) -> list[str]:
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k in fields and isinstance(v, (str, int, float)) and not isinstance(v, bool):
                found.append(str(v))
            else:
                found += _values_of(v, fields)
    elif isinstance(value, list):
        for v in value:
            found += _values_of(v, fields)
    return sorted(found, key=len, reverse=True)


def may_signal_in(user: Any, saga: Any) -> bool:
    """Whether ``user`` may signal one of ``saga``'s waiting steps (the admin then shows it the saga's page)."""
    from .selectors import waiting_steps_for

    return _authenticated(user) and waiting_steps_for(user).filter(saga_id=saga.pk).exists()


def visible_or_signallable(user: Any, sagas: QuerySet) -> QuerySet:
    """``visible``, and the sagas with a waiting step ``user`` may signal (signals keep their own permission)."""
    from .selectors import waiting_steps_for

    if not _authenticated(user):
        return sagas.none()
    return visible(user, sagas) | sagas.filter(pk__in=waiting_steps_for(user).values("saga_id"))


def may_signal_in_any(user: Any) -> bool:
    """Whether some step now waiting is one ``user`` may signal."""
    from .selectors import waiting_steps_for

    return _authenticated(user) and waiting_steps_for(user).exists()


# --- bulk actions ------------------------------------------------------------------------------

# Django's own permission on the jobs: who holds it reads every user's bulk actions, not only their own.
VIEW_EVERY_BULK_ACTION = "sagas.view_bulkaction"


def may_read_bulk_action(user: Any, job: Any = None) -> bool:
    """Whether ``user`` may read ``job`` (a ``BulkAction``), or some bulk action at all when ``job`` is None.

    Their own jobs while they hold ``sagas.run_bulk_actions``; every job with ``sagas.view_bulkaction``.
    """
    if not _authenticated(user):
        return False
    if user.has_perm(VIEW_EVERY_BULK_ACTION):
        return True
    return user.has_perm(MOVES["bulk"]) and (job is None or job.requested_by_id == user.pk)


def visible_bulk_actions(user: Any, jobs: QuerySet) -> QuerySet:
    """``jobs`` narrowed to those ``user`` may read (``may_read_bulk_action``)."""
    if not _authenticated(user):
        return jobs.none()
    if user.has_perm(VIEW_EVERY_BULK_ACTION):
        return jobs
    if not user.has_perm(MOVES["bulk"]):
        return jobs.none()
    return jobs.filter(requested_by=user.pk)
