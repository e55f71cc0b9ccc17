"""The API's OpenAPI schema: drf-spectacular's, plus the answers no view declares but any may give.

- 429, with ``Retry-After``, on every operation a throttle applies to
  (``sagas.api.throttles``): the rate that applies is named in its description;
- 413 and 415 on every operation that takes a body (POST, PUT, PATCH):
  ``sagas.api.parsers`` takes JSON only, at most ``SAGAS_MAX_INPUT_BYTES``.

Written once here rather than on each view, so a view added later documents
them too. A view that declares one of these codes itself keeps its own.

And the ``POST /api/sagas/`` body, one schema per saga type generated from
its definition (``saga_start_bodies``, a post-processing hook).
"""
from __future__ import annotations

import json
import re
from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse

from ..definitions import Saga, registry
from ..input_schemas import input_schema
from .serializers import NO_NUL_PATTERN, ErrorOutputSerializer

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


# --- POST /api/sagas/: one body per saga type -------------------------------------------------

START_PATH, START_METHOD = "/api/sagas/", "post"
# A saga type without input fields takes any JSON object whose text holds no NUL character, at any depth.
JSON_VALUE = "JsonValueWithoutNul"
ANY_INPUT = "AnySagaInput"


def saga_start_bodies(result: dict, generator: Any, request: Any, public: bool) -> dict:
    """A ``POSTPROCESSING_HOOKS`` entry: the ``POST /api/sagas/`` body as one schema per saga type.

    ``oneOf`` those schemas with ``saga_type`` as discriminator; each takes its
    type's input as generated from the definition's ``input_schema``
    serializer (``sagas.input_schemas``), with an example, and lists the
    versions that take that input, rehearsals marked. Row ids are listed for
    the user asking who may start the type.
    """
    operation = result.get("paths", {}).get(START_PATH, {}).get(START_METHOD)
    if operation is None:
        return result
    user = getattr(request, "user", None)
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components.update(_any_input_schemas())
    mapping = {}
    for name in sorted({definition.name for definition in registry}):
        base = _component_base(name, components)
        components[f"{base}Input"] = _input_component(registry.get(name), user)
        components[f"{base}Start"] = _start_component(name, f"{base}Input", components[f"{base}Input"])
        mapping[name] = f"#/components/schemas/{base}Start"
    body = {"oneOf": [{"$ref": ref} for ref in mapping.values()],
            "discriminator": {"propertyName": "saga_type", "mapping": mapping}}
    used_before = _referenced(result)
    for media in operation.get("requestBody", {}).get("content", {}).values():
        media["schema"] = body
    # The serializer's own body (SagaStartInput, and its SagaTypeEnum) is what the per-type bodies stand for
    # now: drop the components nothing refers to any more.
    while orphans := (used_before - _referenced(result)) & set(components):
        for name in orphans:
            del components[name]
    return result


def _referenced(result: dict) -> set[str]:
    """The components ``result`` refers to by ``$ref``."""
    return set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(result)))


def _component_base(name: str, taken: dict) -> str:
    base = "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part)
    candidate, n = base, 2
    while f"{candidate}Start" in taken:
        candidate, n = f"{base}{n}", n + 1
    return candidate


def _input_component(definition: Saga, user: Any) -> dict:
    schema = input_schema(definition, user, openapi=True)
    if "properties" not in schema:  # no serializer: any object (whose text holds no NUL)
        return {"allOf": [{"$ref": f"#/components/schemas/{ANY_INPUT}"}], "description": schema["description"]}
    return schema


def _start_component(name: str, input_component: str, input_schema_: dict) -> dict:
    latest = registry.get(name)
    versions = sorted((d for d in registry if d.name == name), key=lambda d: -d.version)
    same = [d for d in versions if d.input_schema is latest.input_schema]
    others = [d.version for d in versions if d.input_schema is not latest.input_schema]
    described = ", ".join(
        f"{d.version}" + (" (the latest: what a start without `version` runs)" if d is latest else "")
        + (" (a rehearsal: the same flow for drills, e.g. with deadlines of seconds; not for real work)"
           if d.rehearsal else "")
        for d in same)
    note = (f" Versions {', '.join(map(str, others))} take another input: see `GET /api/saga-types/`."
            if others else "")
    takes_input = bool(input_schema_.get("required"))
    schema = {
        "type": "object",
        "description": f"Start a {name}. {latest.description}".strip(),
        "properties": {
            "saga_type": {"type": "string", "enum": [name]},
            "version": {"type": "integer", "enum": [d.version for d in same],
                        "description": f"Versions taking this input: {described}.{note}"},
            "input": {"$ref": f"#/components/schemas/{input_component}"},
        },
        "required": ["saga_type", *(["input"] if takes_input else [])],
        "additionalProperties": False,
        "example": {"saga_type": name, "input": input_schema_.get("example", {})},
    }
    rehearsals = [d.version for d in same if d.rehearsal]
    if rehearsals:
        schema["x-rehearsal-versions"] = rehearsals
    return schema


def _any_input_schemas() -> dict:
    value_ref = {"$ref": f"#/components/schemas/{JSON_VALUE}"}
    return {
        ANY_INPUT: {"type": "object", "additionalProperties": value_ref, "propertyNames": {"pattern": NO_NUL_PATTERN},
                    "description": "A JSON object; no NUL character in its keys or text (400)."},
        JSON_VALUE: {"anyOf": [
            {"type": "string", "pattern": NO_NUL_PATTERN}, {"type": "number"}, {"type": "boolean", "nullable": True},
            {"type": "array", "items": value_ref},
            {"type": "object", "additionalProperties": value_ref, "propertyNames": {"pattern": NO_NUL_PATTERN}},
        ]},
    }
