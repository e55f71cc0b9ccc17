"""The admin's bulk actions: one engine move over every saga matching the list's filters, as a background job.

On the saga list each bulk action is an admin action. With "Select all" it
covers every saga matching the list's current filters (status, saga type,
creation date), not just the page; without, the ticked sagas. A confirmation
page shows how many sagas match and asks for an optional reason; confirming
records a ``BulkAction`` (``sagas.bulk``) and opens its page, which shows its
progress until it is done. Jobs are read-only here, as sagas are.
"""
from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from . import access, bulk
from .errors import InvalidBulkAction
from .models import BulkAction, BulkActionKind, BulkActionStatus, SagaInstance

# The saga list's filter parameters a bulk filter can say, and the key it says them with.
LIST_FILTERS = {
    "status__exact": "status",
    "saga_type": "saga_type",
    "saga_type__exact": "saga_type",
    "created_at__gte": "created_after",
    "created_at__lt": "created_before",
}
# The list's own parameters, which filter nothing: ordering, page, facets, the invalid-lookup flag.
NOT_FILTERS = {"o", "p", "_facets", "e"}
# Parameters a bulk filter cannot say, as the list's sidebar names them.
FILTER_NAMES = {"q": "the search", "waiting": "waiting for a person", "held": "held by the sweeper",
                "paused": "paused (by whom)"}
REFUSED_SHOWN = 500
CONFIRMATION_TEMPLATE = "admin/sagas/sagainstance/bulk_confirmation.html"


def list_filter_of(params: QueryDict) -> tuple[dict, list[str]]:
    """The bulk filter saying what the saga list's ``params`` filter, and the filters it cannot say."""
    spec: dict[str, Any] = {}
    unsaid = []
    for name in params:
        if name in NOT_FILTERS:
            continue
        key = LIST_FILTERS.get(name)
        if key is None:
            unsaid.append(FILTER_NAMES.get(name, name))
        elif key == "status":
            spec[key] = params.getlist(name)
        else:
            spec[key] = params[name]
    return spec, unsaid


def _kind_label(kind: str) -> str:
    return BulkActionKind(kind).label


def confirm_bulk_action(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[SagaInstance],
                        kind: str) -> HttpResponse | None:
    """The confirmation page, then (confirmed) the job and a redirect to its page."""
    refusal = bulk.missing_permission(request.user, kind)
    if refusal:
        model_admin.message_user(request, f"You may not: {refusal}.", messages.ERROR)
        return None
    across = request.POST.get("select_across") == "1"
    if across:
        spec, unsaid = list_filter_of(request.GET)
        if unsaid:
            model_admin.message_user(request, "A bulk action takes the status, saga type and creation date "
                                     f"filters only; clear {', '.join(unsaid)} first.", messages.ERROR)
            return None
    else:
        spec = {"ids": [str(pk) for pk in queryset.values_list("pk", flat=True)[:bulk.MAX_IDS]]}
    try:
        if request.POST.get("post") == "yes":
            job = bulk.bulk_action_create(action=kind, filter=spec, reason=request.POST.get("reason", ""),
                                          by=request.user)
            model_admin.message_user(request, f"Bulk {_kind_label(kind)} started over {job.matched} saga(s).",
                                     messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:sagas_bulkaction_change", args=[job.pk]))
        bulk.validate(kind, spec)
    except InvalidBulkAction as exc:
        model_admin.message_user(request, f"Not a filter a bulk action takes: {exc.errors}", messages.ERROR)
        return None
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": f"Bulk {_kind_label(kind)}",
        "kind": kind,
        "kind_label": _kind_label(kind),
        "action_name": f"bulk_{kind}",
        "takes_reason": bool(bulk.MOVES[kind].done),
        "select_across": "1" if across else "0",
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "filter_json": json.dumps(spec, indent=2, sort_keys=True),
        "matching": bulk.matching(spec, request.user, until=timezone.now()).count(),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, CONFIRMATION_TEMPLATE, context)


def _bulk_admin_action(kind: str):
    def run(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[SagaInstance]):
        return confirm_bulk_action(model_admin, request, queryset, kind)

    run.__name__ = f"bulk_{kind}"
    return admin.action(
        description=f"Bulk {_kind_label(kind)} in the background: the selected sagas, or with “Select all” "
                    "every saga matching the filters",
        permissions=[f"bulk_{kind}"])(run)


# Added to the saga list's actions (``SagaInstanceAdmin``).
BULK_ACTIONS = [_bulk_admin_action(kind) for kind in BulkActionKind.values]


class BulkActionsMixin:
    """Who may use each bulk action on the saga list: ``sagas.run_bulk_actions`` and the action's own permission."""

    def has_bulk_cancel_permission(self, request: HttpRequest) -> bool:
        return not bulk.missing_permission(request.user, BulkActionKind.CANCEL)

    def has_bulk_pause_permission(self, request: HttpRequest) -> bool:
        return not bulk.missing_permission(request.user, BulkActionKind.PAUSE)

    def has_bulk_resume_permission(self, request: HttpRequest) -> bool:
        return not bulk.missing_permission(request.user, BulkActionKind.RESUME)

    def has_bulk_retry_compensation_permission(self, request: HttpRequest) -> bool:
        return not bulk.missing_permission(request.user, BulkActionKind.RETRY_COMPENSATION)

    def has_bulk_resubmit_permission(self, request: HttpRequest) -> bool:
        return not bulk.missing_permission(request.user, BulkActionKind.RESUBMIT)


@admin.register(BulkAction)
class BulkActionAdmin(admin.ModelAdmin):
    """A job's page: what it does, over which sagas, how far it got and what was refused (refreshed while it runs)."""

    list_display = ("short_id", "action", "status", "progress", "requested_by", "created_at", "finished_at")
    list_filter = ("status", "action")
    list_select_related = ("requested_by",)
    change_form_template = "admin/sagas/bulkaction/change_form.html"
    fields = ("id", "action", "filter_pretty", "reason", "requested_by", "status", "progress", "matched",
              "succeeded", "refused_count", "error", "created_at", "progress_at", "finished_at", "refused_table")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return access.may_read_bulk_action(request.user, obj)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.may_read_bulk_action(request.user)

    def get_queryset(self, request: HttpRequest) -> QuerySet[BulkAction]:
        return access.visible_bulk_actions(request.user, super().get_queryset(request))

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        job = self._job(request, object_id)
        running = job is not None and job.status == BulkActionStatus.RUNNING
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "job_running": running})

    def _job(self, request: HttpRequest, object_id: str) -> BulkAction | None:
        try:
            return self.get_queryset(request).filter(pk=uuid.UUID(object_id)).first()
        except ValueError:
            return None

    @admin.display(description="id", ordering="created_at")
    def short_id(self, job: BulkAction) -> SafeString:
        return format_html('<code title="{}">{}</code>', job.pk, job.pk.hex[:8])

    @admin.display(description="progress")
    def progress(self, job: BulkAction) -> str:
        handled = job.succeeded + len(job.refused)
        return f"{handled} of {job.matched} handled: {job.succeeded} acted on, {len(job.refused)} refused"

    @admin.display(description="refused")
    def refused_count(self, job: BulkAction) -> int:
        return len(job.refused)

    @admin.display(description="filter")
    def filter_pretty(self, job: BulkAction) -> SafeString:
        return format_html("<pre style='margin:0'>{}</pre>", json.dumps(job.filter, indent=2, sort_keys=True))

    @admin.display(description="refused sagas")
    def refused_table(self, job: BulkAction) -> SafeString | str:
        if not job.refused:
            return "-"
        rows = format_html_join(
            "\n", '<tr><td><a href="{}"><code>{}</code></a></td><td>{}</td></tr>',
            ((reverse("admin:sagas_sagainstance_change", args=[item["saga_id"]]), item["saga_id"], item["reason"])
             for item in job.refused[:REFUSED_SHOWN]))
        more = format_html("<p>The first {} of {} are shown.</p>", REFUSED_SHOWN, len(job.refused)) \
            if len(job.refused) > REFUSED_SHOWN else ""
        return format_html('<table class="bulk-refused"><thead><tr><th>saga</th><th>why</th></tr></thead>'
                           "<tbody>{}</tbody></table>{}", rows, more)
