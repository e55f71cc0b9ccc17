"""Query parameters of ``GET /api/sagas/``."""
import django_filters

from ..models import SagaInstance, SagaStatus


class SagaInstanceFilter(django_filters.FilterSet):
    """``status`` (repeatable), ``saga_type``, and a half-open creation window.

    ``created_after`` is inclusive and ``created_before`` exclusive, so
    consecutive windows never count a saga twice.
    """

    status = django_filters.MultipleChoiceFilter(choices=SagaStatus.choices)
    saga_type = django_filters.CharFilter()
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = SagaInstance
        fields = ["status", "saga_type", "created_after", "created_before"]
