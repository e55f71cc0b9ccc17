"""The saga list's status chips: how many sagas are in each status, as links that filter the list.

Counted over the sagas the list would show without its status filter: the
ones this user may read (``sagas.access``, as the list's own queryset), with
the list's other filters and search applied. One GROUP BY query a page.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.contrib.admin.views.main import ChangeList
from django.db.models import Count
from django.http import HttpRequest

from .models import SagaStatus

STATUS_PARAMETER = "status__exact"


@dataclass(frozen=True)
class Chip:
    label: str
    status: str  # "" for every status
    count: int
    url: str
    active: bool


def status_chips(changelist: ChangeList, request: HttpRequest) -> list[Chip]:
    """"All" and one chip per status, each with its count and the list's URL filtered to it."""
    status_filter = next((spec.expected_parameters() for spec in changelist.filter_specs
                          if STATUS_PARAMETER in spec.expected_parameters()), None)
    rows = changelist.get_queryset(request, exclude_parameters=status_filter)
    counts = dict(rows.order_by().values_list("status").annotate(n=Count("pk")).values_list("status", "n"))
    chosen = request.GET.get(STATUS_PARAMETER, "")
    chips = [Chip("All", "", sum(counts.values()),
                  changelist.get_query_string(remove=[STATUS_PARAMETER, "p"]), chosen == "")]
    for status in SagaStatus:
        chips.append(Chip(status.label, status.value, counts.get(status.value, 0),
                          changelist.get_query_string({STATUS_PARAMETER: status.value}, remove=["p"]),
                          chosen == status.value))
    return chips


class StatusChipsMixin:
    """For the saga list's ``ModelAdmin``: ``cl.status_chips`` for its template."""

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        changelist = super().get_changelist_instance(request)
        changelist.status_chips = status_chips(changelist, request)
        return changelist
