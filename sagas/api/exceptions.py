"""Every error a client can cause, turned into a response in one place.

The engine raises typed errors (``sagas.errors``); views let them propagate
and this handler, set as ``REST_FRAMEWORK["EXCEPTION_HANDLER"]``, maps them to
DRF exceptions so the answers look like any other DRF error.
"""
from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..errors import (
    IdempotencyConflict,
    InvalidSagaInput,
    InvalidSignal,
    InvalidTransition,
    SignalNotAllowed,
    UnknownSagaType,
    UnknownSignalToken,
    UnknownStep,
)
from ..models import SagaInstance

IDEMPOTENCY_HEADER = "Idempotency-Key"


class Conflict(APIException):
    """409: the request is well-formed but the saga's state (or a used key) forbids it."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the saga."
    default_code = "conflict"


def input_errors(errors: dict | list) -> dict:
    """Field errors of a 400 for ``InvalidSagaInput``.

    The engine names the field it checked: ``idempotency_key`` comes from the
    ``Idempotency-Key`` header, ``input`` is the body's ``input`` as a whole,
    any other key is a field inside ``input`` (the saga's own schema).
    """
    if not isinstance(errors, dict):  # a schema callable may give a bare list of messages
        return {"input": errors}
    errors = dict(errors)
    answer: dict[str, Any] = {}
    if "idempotency_key" in errors:
        answer[IDEMPOTENCY_HEADER] = errors.pop("idempotency_key")
    if set(errors) == {"input"}:
        answer["input"] = errors["input"]
    elif errors:
        answer["input"] = errors
    return answer


def as_api_exception(exc: Exception) -> Exception:
    """The DRF exception that stands for one of the engine's errors (or ``exc`` itself)."""
    if isinstance(exc, UnknownSagaType):
        return ValidationError({"saga_type": [str(exc)]}, code="unknown_saga_type")
    if isinstance(exc, InvalidSagaInput):
        return ValidationError(input_errors(exc.errors), code="invalid_input")
    if isinstance(exc, IdempotencyConflict):
        return Conflict(str(exc), code="idempotency_conflict")
    if isinstance(exc, InvalidTransition):
        return Conflict(str(exc), code="invalid_transition")
    if isinstance(exc, SagaInstance.DoesNotExist):
        return NotFound("No saga with this id.", code="saga_not_found")
    if isinstance(exc, UnknownStep):
        return NotFound("The saga has no step of this name.", code="step_not_found")
    if isinstance(exc, UnknownSignalToken):
        return NotFound("Unknown or used signal token.", code="unknown_signal_token")
    if isinstance(exc, SignalNotAllowed):
        return PermissionDenied(str(exc), code="signal_not_allowed")
    if isinstance(exc, InvalidSignal):
        return ValidationError(exc.errors, code="invalid_signal")
    return exc


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's handler, after mapping the engine's errors; a 409 also names its ``code``."""
    exc = as_api_exception(exc)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, Conflict):
        response.data = {"detail": str(exc.detail), "code": exc.detail.code}
    return response
