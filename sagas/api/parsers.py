"""The API's only parser: JSON, bounded in size and depth before anything else sees it.

DRF's own parser reads the whole body and hands it to ``json.load``, which
recurses once per level: ``{"a":`` repeated 100 000 times raised
``RecursionError`` (a 500, and a mail to ``ADMINS``). Here a body over
``SAGAS_MAX_INPUT_BYTES`` is refused (413) without being read past the limit,
and JSON nested deeper than ``SAGAS_MAX_INPUT_DEPTH`` is a 400.
"""
from __future__ import annotations

import codecs
from typing import Any

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser
from rest_framework.settings import api_settings
from rest_framework.utils import json



class PayloadTooLarge(APIException):
    """413: the body is over ``SAGAS_MAX_INPUT_BYTES``; it was not parsed.

    Defined here, not in ``exceptions``: DRF imports this parser while ``exceptions`` loads."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"

    def __init__(self, limit: int):
        super().__init__(f"The request body is over the limit of {limit} bytes (SAGAS_MAX_INPUT_BYTES).")


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` holds objects or arrays more than ``limit`` levels deep (without recursing)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def declared_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except (TypeError, ValueError):
        return 0


class BoundedJSONParser(JSONParser):
    """``JSONParser`` with an explicit size limit (413) and depth limit (400)."""

    strict = api_settings.STRICT_JSON

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        limit = settings.SAGAS_MAX_INPUT_BYTES
        request = parser_context.get("request")
        if request is not None and declared_length(request) > limit:
            raise PayloadTooLarge(limit)
        raw = stream.read(limit + 1)  # a body without (or lying about) its length stops here too
        if len(raw) > limit:
            raise PayloadTooLarge(limit)
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.decode(raw, encoding)
            data = json.loads(text, parse_constant=json.strict_constant if self.strict else None)
        except RecursionError:
            raise ParseError(too_deep(), code="too_deep") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if nested_deeper_than(data, settings.SAGAS_MAX_INPUT_DEPTH):
            raise ParseError(too_deep(), code="too_deep")
        return data


def too_deep() -> str:
    return f"JSON nested more than {settings.SAGAS_MAX_INPUT_DEPTH} levels deep (SAGAS_MAX_INPUT_DEPTH)."
