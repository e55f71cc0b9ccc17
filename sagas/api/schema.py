"""The API's OpenAPI schema: drf-spectacular's, plus the answers no view declares but any may give.

- 429, with ``Retry-After``, on every operation a throttle applies to
  (``sagas.api.throttles``): the rate that applies is named in its description;
- 413 and 415 on every operation that takes a body (POST, PUT, PATCH):
  ``sagas.api.parsers`` takes JSON only, at most ``SAGAS_MAX_INPUT_BYTES``.

Written once here rather than on each view, so a view added later documents
them too. A view that declares one of these codes itself keeps its own.
"""
from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse

from .serializers import ErrorOutputSerializer

BODY_METHODS = ("POST", "PUT", "PATCH")
RETRY_AFTER = {
    "Retry-After": {
        "schema": {"type": "integer", "minimum": 1},
        "required": True,
        "description": "Seconds to wait before the next request may be answered.",
    },
}


class ApiSchema(AutoSchema):
    """drf-spectacular's ``AutoSchema`` with the API's limits (``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]``)."""

    def get_operation(self, *args: Any, **kwargs: Any) -> dict | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is None:  # not in the schema
            return None
        responses = operation.setdefault("responses", {})
        for code, description, headers in self._limit_answers():
            if code not in responses:
                answer = self._get_response_for_code(OpenApiResponse(ErrorOutputSerializer, description=description),
                                                     code)
                responses[code] = {**answer, "headers": headers} if headers else answer
        return operation

    def _limit_answers(self) -> list[tuple[str, str, dict]]:
        answers = []
        if self.method in BODY_METHODS:
            answers.append(("413", "The body is over `SAGAS_MAX_INPUT_BYTES` (code `request_too_large`); "
                                   "it was not read.", {}))
            answers.append(("415", "The body is not JSON (code `unsupported_media_type`).", {}))
        rates = [getattr(throttle, "rate_setting", type(throttle).__name__) for throttle in self.view.get_throttles()]
        if rates:
            answers.append(("429", "Too many requests (code `throttled`): over the rate of "
                                   + ", ".join(f"`{rate}`" for rate in rates)
                                   + ". Ask again after `Retry-After` seconds.", RETRY_AFTER))
        return answers
