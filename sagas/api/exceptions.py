"""Every error a client can cause, turned into a response in one place.

The engine raises typed errors (``sagas.errors``); views let them propagate
and this handler, set as ``REST_FRAMEWORK["EXCEPTION_HANDLER"]``, maps them to
DRF exceptions so the answers look like any other DRF error.

Every error under ``/api/`` has one JSON shape: ``{"detail": "...", "code":
"..."}``, and a 400 adds its field errors beside them (field name -> list of
messages, as DRF gives them; no field is named ``detail`` or ``code``). What
Django answers itself before or around DRF (an unknown path, a body Django
refuses, a server error) gets the same shape from ``ApiErrorMiddleware``.
"""
from __future__ import annotations

from http import HTTPStatus
from typing import Any, Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import status
from rest_framework.exceptions import APIException, ErrorDetail, NotFound, PermissionDenied, Throttled, ValidationError
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

from ..definitions import registry
from ..errors import (
    IdempotencyConflict,
    InvalidBulkAction,
    InvalidSagaInput,
    InvalidRequest,
    InvalidSignal,
    InvalidTransition,
    SignalNotAllowed,
    UnknownSagaType,
    UnknownSignalToken,
    UnknownStep,
)
from ..models import BulkAction, SagaInstance

IDEMPOTENCY_HEADER = "Idempotency-Key"


class Conflict(APIException):
    """409: the request is well-formed but the saga's state (or a used key) forbids it."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the saga."
    default_code = "conflict"


class FieldErrors(ValidationError):
    """A 400 with field errors and a ``code`` for the whole answer (DRF's own: ``invalid``)."""

    def __init__(self, detail: dict | list, code: str):
        super().__init__(detail, code=code)
        self.error_code = code


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
        if exc.version is not None and exc.saga_type in registry:  # the type is known, that version is not
            return FieldErrors({"version": [f"saga type {exc.saga_type!r} has no version {exc.version}"]},
                               code="unknown_version")
        return FieldErrors({"saga_type": [str(exc)]}, code="unknown_saga_type")
    if isinstance(exc, InvalidSagaInput):
        return FieldErrors(input_errors(exc.errors), code="invalid_input")
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
        return FieldErrors(exc.errors, code="invalid_signal")
    if isinstance(exc, InvalidRequest):
        return FieldErrors(exc.errors, code="invalid_request")
    if isinstance(exc, InvalidBulkAction):
        return FieldErrors(exc.errors, code="invalid_bulk_action")
    if isinstance(exc, BulkAction.DoesNotExist):
        return NotFound("No bulk action with this id.", code="bulk_action_not_found")
    return exc


INVALID_INPUT = "Invalid input."


def error_body(exc: APIException) -> dict:
    """The JSON of an API error: ``detail`` and ``code``, and for a 400 its field errors."""
    if isinstance(exc, ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {api_settings.NON_FIELD_ERRORS_KEY: exc.detail}
        return {**fields, "detail": INVALID_INPUT, "code": getattr(exc, "error_code", ValidationError.default_code)}
    detail = exc.detail
    if isinstance(detail, dict | list):  # DRF allows it; no exception raised here carries one
        return {"detail": str(exc.default_detail), "code": exc.default_code, "errors": detail}
    return {"detail": str(detail), "code": detail.code if isinstance(detail, ErrorDetail) else exc.default_code}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's handler (its headers: ``Retry-After``, ``WWW-Authenticate``), after mapping the engine's errors."""
    exc = as_api_exception(exc)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, APIException):
        response.data = error_body(exc)
    if isinstance(exc, Throttled) and response is not None and "Retry-After" not in response:
        # DRF leaves it out when its throttles cannot say how long (a wait of 0, or none): the schema
        # promises it on every 429.
        response["Retry-After"] = "1"
    return response


# --- what Django answers itself under /api/ ---------------------------------------------

API_PREFIX = "/api/"
# Django's own answers (no DRF exception behind them) and their codes.
DJANGO_CODES = {
    400: "bad_request", 403: "permission_denied", 404: "not_found", 405: "method_not_allowed",
    413: "request_too_large", 415: "unsupported_media_type", 500: "server_error",
}


def plain_error(status_code: int) -> JsonResponse:
    """The API's error shape for a status Django answered on its own."""
    try:
        detail = HTTPStatus(status_code).phrase
    except ValueError:
        detail = "Error"
    return JsonResponse({"detail": f"{detail}.", "code": DJANGO_CODES.get(status_code, "error")},
                        status=status_code)


class ApiErrorMiddleware:
    """Under ``/api/``, an error answered by Django rather than DRF (an unknown path, a body
    Django refuses, a method a plain view does not take, a server error) is given the API's
    JSON shape instead of an HTML page. With ``DEBUG`` on a 500 keeps Django's debug page.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (response.status_code >= 400 and request.path.startswith(API_PREFIX)
                and not isinstance(response, Response)  # DRF's: shaped by exception_handler
                and not response.get("Content-Type", "").startswith("application/json")
                and not (settings.DEBUG and response.status_code >= 500)):
            answer = plain_error(response.status_code)
            for header in ("Allow", "Retry-After", "WWW-Authenticate"):
                if header in response:
                    answer[header] = response[header]
            return answer
        return response
