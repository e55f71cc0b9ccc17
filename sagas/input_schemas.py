"""A saga type's input as JSON Schema, with an example, generated from its ``input_schema`` serializer.

Other systems read it (``GET /api/saga-types/``, the ``POST /api/sagas/``
body in ``/api/schema/``) to build starts the type accepts; nothing here is
written by hand per type. The schema says no more than the serializer
checks, and no less where a generator could stumble (blank text, NUL
characters, zero amounts), so a body built from it passes validation: the
rules a serializer applies in code (a row must be in some state, a value
must differ from a stored one) are the ones it cannot show.

Ids of rows (``PrimaryKeyRelatedField``) are listed as an ``enum`` for a
user who may start the type, up to ``MAX_LISTED_IDS`` of them; past that,
or for anyone else, the field says what it takes.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from rest_framework import fields as drf_fields
from rest_framework import relations, serializers

from . import access
from .definitions import Saga

MAX_LISTED_IDS = 200
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# Text the engine stores: no NUL characters (no database column keeps them).
NO_NUL = r"^[^\x00]*$"
# Text a trimming field does not call blank: at least one character that ``str.strip`` keeps (Python's
# whitespace is wider than a JSON Schema ``\s``: the separators \x1c-\x1f and \x85 too).
NOT_BLANK = r"^[^\x00]*[^\x00\s\x1c-\x1f\x85\ufeff][^\x00]*$"


class RetiredField(serializers.Field):
    """An input field no longer accepted: any value is refused with ``message`` (the schema forbids it).

    For a field callers once sent, so that sending it still fails loudly
    instead of being ignored.
    """

    def __init__(self, *, message: str, **kwargs: Any):
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", f"No longer accepted: {message}")
        self.message = message
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        raise serializers.ValidationError(self.message)

    def to_representation(self, value: Any) -> Any:
        return value


def input_schema(definition: Saga, user: Any = None, *, openapi: bool = False) -> dict:
    """The JSON Schema of ``definition``'s input; ``openapi``: in OpenAPI 3.0's form (``nullable``, ``example``).

    A type without a serializer takes any JSON object (its own rules, if any, are a callable's).
    """
    schema_class = definition.input_schema
    if not _is_serializer(schema_class):
        schema = {"type": "object", "description": "Any JSON object: this saga type declares no input fields."
                  + (" Its own validator may refuse some." if schema_class is not None else "")}
    else:
        schema = _object_schema(schema_class(), _Context(definition.name, user, openapi))
        if definition.description:
            schema["description"] = f"The input of {definition.name} version {definition.version}: " \
                                    f"{definition.description}"
        schema["example"] = example_input(definition, user)
    if not openapi:
        schema = {"$schema": JSON_SCHEMA_DIALECT, **schema}
        if "example" in schema:
            schema["examples"] = [schema.pop("example")]
    return schema


def example_input(definition: Saga, user: Any = None) -> dict:
    """An input ``definition``'s serializer accepts: its required fields, each with a value it takes
    (the first listed id for a row; none listed: 1)."""
    if not _is_serializer(definition.input_schema):
        return {}
    context = _Context(definition.name, user, openapi=True)
    return {name: _example(field, context) for name, field in _input_fields(definition.input_schema())
            if field.required}


def input_fields(definition: Saga) -> list[tuple[str, serializers.Field]]:
    """The fields a start's input may carry, in declaration order (none for a type without a serializer)."""
    if not _is_serializer(definition.input_schema):
        return []
    return _input_fields(definition.input_schema())


# --- the mapping ------------------------------------------------------------------------


class _Context:
    def __init__(self, saga_type: str, user: Any, openapi: bool):
        self.saga_type, self.user, self.openapi = saga_type, user, openapi
        self._may_start: bool | None = None

    @property
    def lists_ids(self) -> bool:
        if self._may_start is None:
            self._may_start = self.user is not None and access.may(self.user, "start", saga_type=self.saga_type)
        return self._may_start


def _is_serializer(schema_class: Any) -> bool:
    return isinstance(schema_class, type) and issubclass(schema_class, serializers.BaseSerializer)


def _input_fields(serializer: serializers.Serializer) -> list[tuple[str, serializers.Field]]:
    return [(name, field) for name, field in serializer.fields.items()
            if not field.read_only and not isinstance(field, serializers.HiddenField)]


def _object_schema(serializer: serializers.Serializer, context: _Context) -> dict:
    properties, required = {}, []
    for name, field in _input_fields(serializer):
        properties[name] = _field_schema(field, context)
        if field.required:
            required.append(name)
    # Fields not listed are dropped by the serializer: the schema leaves them out.
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _field_schema(field: serializers.Field, context: _Context) -> dict:
    if isinstance(field, RetiredField):
        return {"not": {}, "deprecated": True, "description": field.help_text}
    schema = _type_schema(field, context)
    label = str(field.help_text or "")
    if label:
        schema["description"] = (f"{label} " + schema["description"]).strip() if "description" in schema else label
    default = getattr(field, "default", drf_fields.empty)
    if default is not drf_fields.empty and not callable(default):
        schema["default"] = default
    if field.allow_null:
        schema = _nullable(schema, context)
    return schema


def _nullable(schema: dict, context: _Context) -> dict:
    if "enum" in schema:
        schema["enum"] = [*schema["enum"], None]
    if context.openapi:
        return {**schema, "nullable": True}
    if "type" in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _type_schema(field: serializers.Field, context: _Context) -> dict:
    """The field's own shape (null and the description apart); the checks are those the field runs."""
    if isinstance(field, serializers.BooleanField):
        return {"type": "boolean"}
    if isinstance(field, relations.ManyRelatedField):
        schema = {"type": "array", "items": _type_schema(field.child_relation, context)}
        return schema if field.allow_empty else {**schema, "minItems": 1}
    if isinstance(field, relations.PrimaryKeyRelatedField):
        return _row_schema(field, context)
    if isinstance(field, serializers.MultipleChoiceField):
        schema = {"type": "array", "items": {"enum": list(field.choices)}, "uniqueItems": True}
        return schema if field.allow_empty else {**schema, "minItems": 1}
    if isinstance(field, serializers.ChoiceField):
        return {"enum": [c for c in field.choices if field.allow_blank or c != ""]}
    if isinstance(field, serializers.DecimalField):
        return _decimal_schema(field)
    if isinstance(field, serializers.IntegerField):
        return _bounded({"type": "integer"}, field)
    if isinstance(field, serializers.FloatField):
        return _bounded({"type": "number"}, field)
    if isinstance(field, serializers.ListSerializer):
        return {"type": "array", "items": _object_schema(field.child, context)}
    if isinstance(field, serializers.Serializer):
        return _object_schema(field, context)
    if isinstance(field, serializers.ListField):
        schema = {"type": "array", "items": _type_schema(field.child, context)}
        schema.update({k: v for k, v in (("minItems", field.min_length), ("maxItems", field.max_length))
                       if v is not None})
        return schema if field.allow_empty or "minItems" in schema else {**schema, "minItems": 1}
    if isinstance(field, serializers.DictField):
        return {"type": "object", "additionalProperties": _type_schema(field.child, context)}
    if isinstance(field, serializers.JSONField):
        return {"description": "Any JSON value."}
    for kind, fmt in ((serializers.DateTimeField, "date-time"), (serializers.DateField, "date"),
                      (serializers.TimeField, "time"), (serializers.UUIDField, "uuid"),
                      (serializers.EmailField, "email"), (serializers.URLField, "uri")):
        if isinstance(field, kind):
            return _text_lengths({"type": "string", "format": fmt}, field)
    if isinstance(field, serializers.CharField):
        return _text_schema(field)
    return {"description": f"A value {type(field).__name__} takes."}


def _bounded(schema: dict, field: serializers.Field) -> dict:
    for key, value in (("minimum", field.min_value), ("maximum", field.max_value)):
        if value is not None:
            schema[key] = value
    return schema


def _text_lengths(schema: dict, field: serializers.CharField) -> dict:
    for key, value in (("minLength", getattr(field, "min_length", None)),
                       ("maxLength", getattr(field, "max_length", None))):
        if value is not None:
            schema[key] = value
    return schema


def _text_schema(field: serializers.CharField) -> dict:
    schema = _text_lengths({"type": "string"}, field)
    regex = next((getattr(v, "regex", None) for v in field.validators if getattr(v, "regex", None) is not None),
                 None)
    if regex is not None:  # a RegexField, a SlugField: its own pattern (searched, as JSON Schema does)
        schema["pattern"] = regex.pattern if hasattr(regex, "pattern") else str(regex)
    elif field.allow_blank or not field.trim_whitespace:
        schema["pattern"] = NO_NUL
        if not field.allow_blank:
            schema.setdefault("minLength", 1)
    else:
        schema["pattern"] = NOT_BLANK
    return schema


def _decimal_schema(field: serializers.DecimalField) -> dict:
    """A decimal as text, shaped as the field takes it: at most its digits and places, and positive when
    its minimum is the smallest step (0.01 for cents) or less; other bounds are described."""
    places = field.decimal_places or 0
    whole = None if field.max_digits is None else field.max_digits - places
    minimum = field.min_value
    step = Decimal(1).scaleb(-places)
    positive = minimum is not None and Decimal(0) < Decimal(minimum) <= step
    non_negative = positive or (minimum is not None and Decimal(minimum) <= 0 <= Decimal(minimum))
    pattern = f"(?:{_decimal_pattern(whole, places, positive)})"
    if not non_negative:
        pattern = f"-?{pattern}"
    notes = [f"A decimal number as text, at most {places} decimal places"
             + (f" and {whole} digits before the point" if whole is not None else "")]
    if minimum is not None and not (positive or Decimal(minimum) == 0):
        notes.append(f"at least {minimum}")
    if field.max_value is not None:
        notes.append(f"at most {field.max_value}")
    return {"type": "string", "format": "decimal", "pattern": f"^{pattern}$", "description": ", ".join(notes) + "."}


def _decimal_pattern(whole: int | None, places: int, positive: bool) -> str:
    more = "*" if whole is None else f"{{0,{max(whole - 1, 0)}}}"
    fraction = f"(?:\\.[0-9]{{1,{places}}})?" if places else ""
    if whole == 0:
        integer_forms = []
    elif positive:
        integer_forms = [f"[1-9][0-9]{more}{fraction}"]
    else:
        integer_forms = [f"(?:0|[1-9][0-9]{more}){fraction}"]
    if positive and places:  # 0.x: a fraction with a digit other than 0
        nonzero = "|".join(f"0{{{k}}}[1-9][0-9]{{0,{places - k - 1}}}" if k else f"[1-9][0-9]{{0,{places - 1}}}"
                           for k in range(places))
        integer_forms.append(f"0?\\.(?:{nonzero})")
    return "|".join(integer_forms) or "0"


def _row_schema(field: relations.PrimaryKeyRelatedField, context: _Context) -> dict:
    queryset = field.get_queryset()
    model = queryset.model
    pk = model._meta.pk
    integer = pk.get_internal_type() in ("AutoField", "BigAutoField", "SmallAutoField", "IntegerField",
                                         "BigIntegerField", "PositiveIntegerField", "SmallIntegerField")
    schema: dict = {"type": "integer" if integer else "string"}
    name = model._meta.verbose_name
    if context.lists_ids:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:MAX_LISTED_IDS + 1])
        if ids and len(ids) <= MAX_LISTED_IDS:
            schema["enum"] = [i if integer else str(i) for i in ids]
            schema["description"] = f"The id of a {name} (those that exist now are listed)."
            return schema
    schema["description"] = f"The id of an existing {name}."
    return schema


# --- examples ---------------------------------------------------------------------------------


def _example(field: serializers.Field, context: _Context) -> Any:
    initial = field.initial() if callable(field.initial) else field.initial
    if initial not in (None, ""):
        return initial
    default = getattr(field, "default", drf_fields.empty)
    if default is not drf_fields.empty and not callable(default):
        return default
    schema = _type_schema(field, context)
    if "enum" in schema:
        return schema["enum"][0]
    if isinstance(field, relations.PrimaryKeyRelatedField):
        return 1
    if isinstance(field, serializers.BooleanField):
        return True
    if isinstance(field, serializers.DecimalField):
        return _decimal_example(field)
    if isinstance(field, (serializers.IntegerField, serializers.FloatField)):
        low, high = field.min_value, field.max_value
        value = max(low, 1) if low is not None else 1
        return min(value, high) if high is not None else value
    if isinstance(field, serializers.EmailField):
        return "someone@example.com"
    if isinstance(field, serializers.Serializer):
        return {name: _example(f, context) for name, f in _input_fields(field) if f.required}
    if isinstance(field, (serializers.ListField, serializers.ListSerializer, relations.ManyRelatedField)):
        return []
    if isinstance(field, serializers.DictField):
        return {}
    if "pattern" in schema and schema["pattern"] not in (NO_NUL, NOT_BLANK):
        return _regex_example(schema["pattern"])
    text = "example"
    return text[:field.max_length] if getattr(field, "max_length", None) else text


def _decimal_example(field: serializers.DecimalField) -> str:
    value = Decimal(100)
    if field.min_value is not None:
        value = max(value, Decimal(field.min_value))
    if field.max_value is not None:
        value = min(value, Decimal(field.max_value))
    return f"{value:.{field.decimal_places or 0}f}"


def _regex_example(pattern: str) -> str:
    """A short text ``pattern`` matches: the first choice of every branch, each repeat at its least."""
    try:
        from re import _parser as sre_parse  # Python 3.11+
    except ImportError:  # pragma: no cover
        import sre_parse  # type: ignore[no-redef]
    try:
        text = _from_parsed(sre_parse.parse(pattern))
    except (ValueError, TypeError, re.error, NotImplementedError):
        return ""
    return text if re.search(pattern, text) else ""


def _from_parsed(parsed) -> str:
    import re._constants as c

    out = []
    for op, arg in parsed:
        if op is c.LITERAL:
            out.append(chr(arg))
        elif op is c.ANY:
            out.append("a")
        elif op is c.IN:
            out.append(_from_class(arg))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
            low, _, item = arg
            out.append(_from_parsed(item) * max(low, 0))
        elif op is c.SUBPATTERN:
            out.append(_from_parsed(arg[-1]))
        elif op is c.BRANCH:
            out.append(_from_parsed(arg[1][0]))
        elif op in (c.AT,):
            continue
        else:
            raise NotImplementedError(op)
    return "".join(out)


def _from_class(items) -> str:
    import re._constants as c

    for op, arg in items:
        if op is c.NEGATE:
            return "a"
        if op is c.LITERAL:
            return chr(arg)
        if op is c.RANGE:
            return chr(arg[0])
        if op is c.CATEGORY:
            return {c.CATEGORY_DIGIT: "0", c.CATEGORY_WORD: "a", c.CATEGORY_SPACE: " "}.get(arg, "a")
    return "a"
