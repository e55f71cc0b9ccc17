"""Query parameters of ``GET /api/sagas/``."""
from datetime import datetime, timezone

import django_filters
from django import forms
from django_filters.fields import IsoDateTimeField

from ..models import SagaInstance, SagaStatus
from .serializers import BLANK_PARAMETER_ERROR


class NoBlankParametersForm(forms.Form):
    """Refuses a parameter sent empty (``?created_before=``) instead of ignoring it, as the schema says."""

    def clean(self) -> dict:
        cleaned = super().clean()
        for name in self.fields:
            values = self.data.getlist(name) if hasattr(self.data, "getlist") else [self.data.get(name)]
            if name in self.data and "" in values:
                self.add_error(name, BLANK_PARAMETER_ERROR)
        return cleaned


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 date-time, turned into UTC before it reaches a query.

    PostgreSQL refuses offsets beyond 15:59 that ISO 8601 allows, and a
    moment near year 1 or 9999 may leave the calendar in UTC: the first is
    converted, the second is a field error, neither a server error.
    """

    def to_python(self, value) -> datetime | None:
        value = super().to_python(value)
        if value is None:
            return None
        try:
            return value.astimezone(timezone.utc)
        except OverflowError:
            raise forms.ValidationError("out of range once converted to UTC", code="overflow") from None


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class RootFilter(django_filters.ChoiceFilter):
    """``root=true``: only root sagas (started by a person or by code); ``root=false``: only child sagas.

    A child is told by its ``depth``, which never changes: one whose parent
    was pruned since is still a child. Anything but ``true`` or ``false`` is
    a field error, not a filter silently left out.
    """

    CHOICES = [("true", "true"), ("false", "false")]

    def __init__(self, **kwargs) -> None:
        super().__init__(choices=self.CHOICES, **kwargs)

    def filter(self, qs, value):
        if value == "true":
            return qs.filter(depth=0)
        if value == "false":
            return qs.filter(depth__gt=0)
        return qs


class SagaInstanceFilter(django_filters.FilterSet):
    """``status`` (repeatable), ``saga_type``, ``parent`` (a saga's children), ``root`` (only roots, or only
    children), and a half-open creation window.

    ``created_after`` is inclusive and ``created_before`` exclusive, so
    consecutive windows never count a saga twice.
    """

    status = django_filters.MultipleChoiceFilter(choices=SagaStatus.choices)
    saga_type = django_filters.CharFilter(strip=False)
    parent = django_filters.UUIDFilter(field_name="parent", help_text="Only the children of this saga.")
    root = RootFilter(help_text="`true`: only root sagas (no parent); `false`: only child sagas (started by "
                                "a `ChildSaga` step of another saga).")
    created_after = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = SagaInstance
        fields = ["status", "saga_type", "parent", "root", "created_after", "created_before"]
        form = NoBlankParametersForm
