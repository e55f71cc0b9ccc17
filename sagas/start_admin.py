"""Starting a saga from the admin: pick a type, fill in a form made from its input, start it.

The form is made from the type's input serializer (the fields its generated
schema shows, ``sagas.input_schemas``, with their descriptions). What was
typed goes, as text, to ``engine.start_saga``, as the API's input does: the
same serializer validates it and the same function starts it, recording the
user as ``started_by``. Bad input starts nothing and shows each field's error.
Needs ``sagas.start_saga`` and the type's own permission (``sagas.access``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from rest_framework import relations, serializers

from . import access, engine
from .definitions import Saga, registry
from .errors import InvalidSagaInput, SagaError, UnknownSagaType
from .input_schemas import MAX_LISTED_IDS, RetiredField, input_fields, input_schema

TEMPLATE = "admin/sagas/sagainstance/start.html"
# A type without input fields: its whole input, as a JSON object.
WHOLE_INPUT = "input"
JSON_FIELDS = (serializers.JSONField, serializers.DictField, serializers.ListField, serializers.Serializer,
               serializers.ListSerializer, serializers.MultipleChoiceField, relations.ManyRelatedField)


@dataclass
class StartForm:
    """The fields of one saga version's start form, what was typed in them and the errors they got."""

    definition: Saga
    fields: list[dict]
    values: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)

    @property
    def rendered(self) -> list[dict]:
        """Each field with its widget (holding what was typed) and its errors, for the template."""
        return [{**spec, "widget": spec["widget"].render(spec["name"], self._shown(spec), attrs={"id": spec["id"]}),
                 "errors": self.errors.get(spec["name"], [])}
                for spec in self.fields]

    def _shown(self, spec: dict) -> Any:
        if spec["kind"] == "boolean":  # posted: ticked or not; else its default
            return spec["name"] in self.values if self.values else spec["initial"]
        return self.values.get(spec["name"], spec["initial"])

    @property
    def other_errors(self) -> list[str]:
        """Errors not about one of the form's fields (the input as a whole, a field the form lacks)."""
        names = {spec["name"] for spec in self.fields}
        return [f"{name}: {message}" if name not in ("non_field_errors", WHOLE_INPUT) else message
                for name, problems in self.errors.items() if name not in names for message in problems]


def startable(user: Any) -> list[Saga]:
    """Every registered version of the types ``user`` may start: the latest of each type first."""
    versions = sorted(registry, key=lambda d: (d.name, -d.version))
    return [d for d in versions if access.may(user, "start", saga_type=d.name)]


def start_form(definition: Saga, user: Any) -> StartForm:
    """The form for ``definition``'s input: one field per serializer field, described as its schema says."""
    described = input_schema(definition, user).get("properties", {})
    specs = []
    for name, drf_field in input_fields(definition):
        if isinstance(drf_field, RetiredField):
            continue
        specs.append(_field_spec(name, drf_field, described.get(name, {})))
    if not specs and not input_fields(definition):
        specs.append({"name": WHOLE_INPUT, "id": "id_input", "label": "Input (a JSON object)", "kind": "json",
                      "required": False, "initial": "{}", "help": "This saga type declares no input fields.",
                      "widget": forms.Textarea(attrs={"rows": 6, "cols": 70, "class": "vLargeTextField"})})
    return StartForm(definition, specs)


def _field_spec(name: str, drf_field: serializers.Field, schema: dict) -> dict:
    spec = {"name": name, "id": f"id_{name}", "label": str(drf_field.label or name.replace("_", " ")).capitalize(),
            "required": drf_field.required, "help": schema.get("description", ""), "kind": "text",
            "initial": "" if drf_field.initial is None else drf_field.initial}
    if isinstance(drf_field, serializers.BooleanField):
        default = getattr(drf_field, "default", serializers.empty)
        spec.update(kind="boolean", widget=forms.CheckboxInput(), initial=default is True)
    elif isinstance(drf_field, JSON_FIELDS):
        spec.update(kind="json", widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
                    help=(spec["help"] + " As JSON.").strip())
    elif isinstance(drf_field, relations.PrimaryKeyRelatedField):
        rows = list(drf_field.get_queryset().order_by("pk")[:MAX_LISTED_IDS + 1])
        if len(rows) <= MAX_LISTED_IDS:
            choices = [("", "---------")] + [(str(row.pk), f"{row.pk}: {row}") for row in rows]
            spec["widget"] = forms.Select(choices=choices)
        else:
            spec["widget"] = forms.TextInput(attrs={"size": 12})
    elif isinstance(drf_field, serializers.ChoiceField):
        spec["widget"] = forms.Select(choices=[("", "---------"), *drf_field.choices.items()])
    elif isinstance(drf_field, serializers.IntegerField):
        spec["widget"] = forms.NumberInput(attrs={"step": 1})
    elif isinstance(drf_field, serializers.EmailField):
        spec["widget"] = forms.EmailInput(attrs={"size": 40})
    else:
        attrs = {"size": 40}
        if getattr(drf_field, "max_length", None):
            attrs["maxlength"] = drf_field.max_length
        spec["widget"] = forms.TextInput(attrs=attrs)
    return spec


def input_from(form: StartForm, posted: Any) -> dict:
    """The input the form's fields say: text as typed (the serializer reads it), a box ticked or not,
    JSON parsed; a field left empty is left out. Bad JSON raises ``InvalidSagaInput`` naming the field."""
    data: dict = {}
    for spec in form.fields:
        name = spec["name"]
        if spec["kind"] == "boolean":
            data[name] = name in posted
            continue
        text = posted.get(name, "")
        if text.strip() == "":
            continue
        if spec["kind"] == "json":
            try:
                data[name] = json.loads(text)
            except ValueError as exc:
                raise InvalidSagaInput({name: [f"not JSON: {exc}"]}) from None
        else:
            data[name] = text
    if list(data) == [WHOLE_INPUT] and not input_fields(form.definition):
        whole = data[WHOLE_INPUT]
        if not isinstance(whole, dict):
            raise InvalidSagaInput({WHOLE_INPUT: ["must be a JSON object"]})
        return whole
    return data


class StartSagaMixin:
    """For the saga list's ``ModelAdmin``: a "Start a saga" page (``admin:sagas_sagainstance_start``)."""

    def get_urls(self) -> list:
        own = [path("start/", self.admin_site.admin_view(self.start_view), name="sagas_sagainstance_start")]
        return own + super().get_urls()

    def start_view(self, request: HttpRequest) -> HttpResponse:
        if not access.may(request.user, "start"):
            raise PermissionDenied(f"starting a saga needs the permission {access.MOVES['start']}")
        choices = startable(request.user)
        definition = self._chosen(request, choices)
        form = start_form(definition, request.user) if definition else None
        if request.method == "POST" and form is not None:
            try:
                saga = engine.start_saga(definition.name, input=input_from(form, request.POST),
                                         version=definition.version, by=request.user)
            except SagaError as exc:  # InvalidSagaInput above all
                form.values = {k: v for k, v in request.POST.items() if k != "csrfmiddlewaretoken"}
                form.errors = _field_errors(exc)
            else:
                self.message_user(request, f"Started {definition.name} version {definition.version} as {saga.pk}.",
                                  messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:sagas_sagainstance_change", args=[saga.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Start a saga",
            "choices": [{"value": f"{d.name}:{d.version}", "label": _choice_label(d, choices),
                         "selected": d is definition} for d in choices],
            "definition": definition,
            "form": form,
            "schema_url": reverse("sagas_api:saga-type-list"),
        }
        return TemplateResponse(request, TEMPLATE, context, status=400 if form and form.errors else 200)

    def _chosen(self, request: HttpRequest, choices: list[Saga]) -> Saga | None:
        """The version the page is for (``?type=name:version``, or ``name`` for its latest), if the user
        may start it; PermissionDenied for a type they may not; None when none is chosen."""
        chosen = (request.POST.get("type") or request.GET.get("type") or "").strip()
        if not chosen:
            return None
        name, _, version = chosen.partition(":")
        try:
            definition = registry.get(name, int(version) if version.isdigit() else None)
        except UnknownSagaType:
            return None
        if not access.may(request.user, "start", saga_type=definition.name):
            raise PermissionDenied(f"starting {definition.name} needs its permission {definition.permission}")
        return definition if definition in choices else None


def _choice_label(definition: Saga, choices: list[Saga]) -> str:
    latest = next(d for d in choices if d.name == definition.name)
    notes = ["latest"] if definition is latest else []
    if definition.rehearsal:
        notes.append("rehearsal: for drills, not real work")
    return f"{definition.name} version {definition.version}" + (f" ({'; '.join(notes)})" if notes else "")


def _field_errors(exc: Exception) -> dict[str, list[str]]:
    detail = getattr(exc, "errors", None)
    if isinstance(detail, dict):
        return {name: [_flat(p) for p in (problems if isinstance(problems, list) else [problems])]
                for name, problems in detail.items()}
    return {"non_field_errors": [str(exc)]}


def _flat(problem: Any) -> str:
    return problem if isinstance(problem, str) else json.dumps(problem, ensure_ascii=False)

