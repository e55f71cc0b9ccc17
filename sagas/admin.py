"""Django admin for people who watch and steer sagas.

Everything here is read-only: statuses change only through the engine, so the
admin's way to intervene is its actions (resubmit, cancel, retry
compensation), which call ``sagas.engine`` and report what it said.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

from django.contrib import admin, messages
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.defaultfilters import truncatechars
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from . import access, engine
from .bulk_admin import BULK_ACTIONS, BulkActionsMixin
from .list_admin import StatusChipsMixin
from .start_admin import StartSagaMixin
from .errors import InvalidRequest, InvalidSignal, SagaError
from .models import ACTIVE_SAGA_STATUSES, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus
from .selectors import saga_tree, with_current_step
from .live.snapshot import why_it_waits
from .sentences import describe_event
from .run_page import compensation_summary, run_page

# The admin index leads to the live page (/admin/sagas/live/) first.
admin.site.index_template = "admin/sagas/index.html"

STATUS_COLOURS = {
    SagaStatus.PENDING: "#777",
    SagaStatus.RUNNING: "#205067",
    SagaStatus.SUCCEEDED: "#2e7d32",
    SagaStatus.COMPENSATING: "#b26a00",
    SagaStatus.COMPENSATED: "#6d4c41",
    SagaStatus.FAILED: "#ba2121",
    SagaStatus.PAUSED: "#6a1b9a",
}


def _as_uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term.strip())
    except ValueError:
        return None


def _pretty_json(value: Any) -> SafeString:
    return format_html("<pre style='margin:0'>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False))


def _saga_link(saga: SagaInstance) -> SafeString:
    url = reverse("admin:sagas_sagainstance_change", args=[saga.pk])
    return format_html('<a href="{}">{}</a>', url, saga.pk)


def short_id(saga_id: uuid.UUID | str) -> str:
    """The first 8 hex characters of a saga's id: enough to tell sagas apart on one screen."""
    return uuid.UUID(str(saga_id)).hex[:8]


class ReadOnlyMixin:
    """Rows the engine writes: people look; they never add, edit or delete (the audit trail stays whole)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# Who is looking, while one of these admins renders a page: what its fields show (sensitive values
# masked) depends on it, and display methods are not handed the request.
_VIEWER: ContextVar[Any] = ContextVar("sagas_admin_viewer", default=None)


def shown(saga_type: str, value: Any) -> Any:
    """``value`` as the user looking at the page may see it (``sagas.access``; masked when no one is known)."""
    return access.shown(_VIEWER.get(), saga_type, value)


class ReadOnlyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Read-only, and showing only the sagas (and their steps and events) the user may read.

    ``saga_path``: the lookup from the model to its saga ("" for the saga itself).
    """

    saga_path = "saga__"

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        saga = (obj if self.saga_path == "" else obj.saga) if obj is not None else None
        return access.may(request.user, "view", saga) if saga is not None else access.may(request.user, "view")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.may(request.user, "view")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return access.visible(request.user, super().get_queryset(request), prefix=self.saga_path)

    def changeform_view(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        token = _VIEWER.set(request.user)
        try:
            response = super().changeform_view(request, *args, **kwargs)
            return response.render() if hasattr(response, "render") else response
        finally:
            _VIEWER.reset(token)

    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        token = _VIEWER.set(request.user)
        try:
            response = super().changelist_view(request, extra_context)
            return response.render() if hasattr(response, "render") else response
        finally:
            _VIEWER.reset(token)


class SagaIdSearchMixin:
    """A search term that is a UUID matches that saga exactly.

    ``icontains`` on a UUID column does not match the dashed form on every
    database (SQLite stores it as bare hex), so an id is looked up as an id.
    """

    saga_id_lookup = "saga_id"

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str):
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        saga_id = _as_uuid(search_term)
        if saga_id is not None:
            found = found | queryset.filter(**{self.saga_id_lookup: saga_id})
        return found, may_have_duplicates


# --- interventions -------------------------------------------------------------------


def _resubmit(saga: SagaInstance, request: HttpRequest) -> str:
    new = engine.resubmit(saga, by=request.user)
    return f"resubmitted as {new.pk}"


def _cancel(saga: SagaInstance, request: HttpRequest) -> str:
    saga = engine.cancel(saga, reason=f"cancelled in the admin by {request.user.get_username()}", by=request.user)
    return f"cancel requested; it is now {saga.status}"


def _retry_compensation(saga: SagaInstance, request: HttpRequest) -> str:
    saga = engine.retry_compensation(saga, by=request.user)
    return f"compensation retried; it is now {saga.status}"


def _pause(saga: SagaInstance, request: HttpRequest) -> str:
    saga = engine.pause(saga, reason=(request.POST.get("reason") or "").strip()
                        or f"paused in the admin by {request.user.get_username()}", by=request.user)
    return "paused: nothing more starts until it is resumed"


def _resume(saga: SagaInstance, request: HttpRequest) -> str:
    saga = engine.resume(saga, input=json_object(request.POST.get("input"), "input", InvalidRequest),
                         by=request.user)
    return f"resumed; it is now {saga.status}"


def json_object(text: str | None, field: str, error: type[Exception]) -> dict | None:
    """A form's JSON object field: None when left blank, else the object (or ``error`` naming the field)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise error({field: [f"not JSON: {exc}"]}) from None
    if not isinstance(value, dict):
        raise error({field: ["must be a JSON object"]})
    return value


def skip_step(saga: SagaInstance, step: str, form: dict, user: Any) -> str:
    """Skip a step that failed after the pivot, from its form: the result as JSON text, the reason plain text."""
    engine.skip_step(saga, step, result=json_object(form.get("result"), "result", InvalidRequest),
                     reason=form.get("reason") or "", by=user)
    return f"{step} skipped; the saga goes on"


def _release(saga: SagaInstance, request: HttpRequest) -> str:
    engine.release_held(saga, note=f"released in the admin by {request.user.get_username()}", by=request.user)
    return "released to the sweeper"


Intervention = Callable[[SagaInstance, HttpRequest], str]

# name -> (button label, what it calls, the move it is in ``sagas.access``)
INTERVENTIONS: dict[str, tuple[str, Intervention, str]] = {
    "resubmit": ("Resubmit", _resubmit, "resubmit"),
    "cancel": ("Cancel", _cancel, "cancel"),
    "retry-compensation": ("Retry compensation", _retry_compensation, "retry_compensation"),
    "release": ("Release to the sweeper", _release, "release"),
    "pause": ("Pause", _pause, "pause"),
    "resume": ("Resume", _resume, "resume"),
}


def applicable_interventions(saga: SagaInstance) -> list[str]:
    """The interventions that can apply to the saga as it stands, read from the engine's state machine.

    Cancel and retry compensation both move a saga to ``compensating``: cancel
    from an active saga, retry from a finished (failed) one. Resubmit is for a
    finished saga; release for an active one the sweeper holds (no ``due_at``).
    The engine still has the last word when the button is pressed.
    """
    active = saga.status in ACTIVE_SAGA_STATUSES
    paused = saga.status == SagaStatus.PAUSED
    to_compensating = engine.can_move_saga(saga.status, SagaStatus.COMPENSATING)
    applies = {
        "resubmit": not active,
        # Cancel goes forward -> compensating; a saga paused while compensating is resumed instead.
        "cancel": active and to_compensating and saga.status != SagaStatus.COMPENSATING
        and not (paused and saga.paused_from == SagaStatus.COMPENSATING) and not past_its_pivot(saga),
        "retry-compensation": not active and to_compensating,
        "release": active and saga.due_at is None and not paused,
        "pause": engine.can_move_saga(saga.status, SagaStatus.PAUSED),
        "resume": paused,
    }
    return [name for name in INTERVENTIONS if applies[name]]


def past_its_pivot(saga: SagaInstance) -> bool:
    """The saga's pivot step has succeeded: it only goes forward (no cancel)."""
    try:
        pivot = engine.definition_of(saga).pivot_index
    except SagaError:
        return False
    return pivot is not None and saga.steps.filter(index=pivot, status=StepStatus.SUCCEEDED).exists()


def skippable_steps(saga: SagaInstance) -> list[StepRecord]:
    """The steps a person may skip now: failed for good after the succeeded pivot, of a paused saga."""
    if saga.status != SagaStatus.PAUSED or saga.paused_from != SagaStatus.RUNNING or not past_its_pivot(saga):
        return []
    definition = engine.definition_of(saga)
    return [r for r in saga.steps.filter(status=StepStatus.FAILED) if definition.after_pivot(r.index)]


def intervene(
    model_admin: admin.ModelAdmin, request: HttpRequest, sagas: Iterable[SagaInstance], run: Intervention,
    move: str | None = None,
) -> None:
    """Call the engine once per saga and report each outcome; one refusal does not stop the others.

    ``move``: checked for each saga (``sagas.access``: a saga type's own permission too).
    """
    for saga in sagas:
        if move is not None and not access.may(request.user, move, saga):
            model_admin.message_user(request, f"Saga {saga.pk}: you may not {move.replace('_', ' ')} it.",
                                     messages.ERROR)
            continue
        try:
            outcome = run(saga, request)
        except (SagaError, SagaInstance.DoesNotExist) as exc:
            model_admin.message_user(request, f"Saga {saga.pk}: {exc}", messages.ERROR)
        else:
            model_admin.message_user(request, f"Saga {saga.pk}: {outcome}.", messages.SUCCESS)


# --- saga instances ----------------------------------------------------------------


class WaitingForPersonFilter(admin.SimpleListFilter):
    """Sagas with a step waiting for a signal (a person's decision, or another system's callback)."""

    title = "waiting for a person"
    parameter_name = "waiting"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "waiting for a signal")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> QuerySet[SagaInstance]:
        if self.value() == "yes":
            waiting = StepRecord.objects.filter(saga=OuterRef("pk"), status=StepStatus.WAITING)
            return queryset.filter(Exists(waiting))
        return queryset


# --- signals: completing or failing a waiting step from its saga's page ------------------------

SIGNALS = ("complete", "fail")


def signal_step(saga: SagaInstance, step: str, signal: str, form: dict, user: Any) -> str:
    """Call the engine as a Python user would: the result is JSON text, the reason plain text."""
    if signal == "complete":
        text = (form.get("result") or "").strip()
        try:
            result = json.loads(text) if text else None
        except ValueError as exc:
            raise InvalidSignal({"result": [f"not JSON: {exc}"]}) from None
        engine.complete_step(saga, step, result=result, by=user)
        return f"{step} completed"
    engine.fail_step(saga, step, error=form.get("error") or "", by=user)
    return f"{step} failed; the saga compensates"


def signallable_steps(saga: SagaInstance, user: Any) -> list[StepRecord]:
    """The saga's waiting steps ``user`` may signal (the buttons shown on its page)."""
    try:
        definition = engine.definition_of(saga)
    except SagaError:
        return []
    return [record for record in saga.steps.filter(status=StepStatus.WAITING)
            if engine.may_signal(user, definition.step_at(record.index).signal_permission)]


class HeldBySweeperFilter(admin.SimpleListFilter):
    """Sagas the sweeper could not move and left for a person (their error says why)."""

    title = "held by the sweeper"
    parameter_name = "held"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "held for a person")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> QuerySet[SagaInstance]:
        if self.value() == "yes":
            return queryset.filter(status__in=ACTIVE_SAGA_STATUSES, due_at__isnull=True).exclude(
                status=SagaStatus.PAUSED)
        return queryset


class PausedFilter(admin.SimpleListFilter):
    """Paused sagas, by why: a person paused them, or a step after their pivot failed for good."""

    title = "paused"
    parameter_name = "paused"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("any", "paused"), ("person", "paused by a person"), ("after_pivot", "paused past its pivot")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> QuerySet[SagaInstance]:
        if self.value() == "any":
            return queryset.filter(status=SagaStatus.PAUSED)
        if self.value() in ("person", "after_pivot"):
            return queryset.filter(status=SagaStatus.PAUSED, pause_cause=self.value())
        return queryset


@admin.register(SagaInstance)
class SagaInstanceAdmin(StatusChipsMixin, StartSagaMixin, BulkActionsMixin, SagaIdSearchMixin, ReadOnlyAdmin):
    """Sagas start through the API or Python and move only through the engine, which the actions call."""

    saga_id_lookup = "pk"
    list_display = ("short_id", "saga_type_display", "status_badge", "current_step_display", "created_display",
                    "duration_display", "error_excerpt")
    list_display_links = ("short_id",)
    list_filter = ("status", PausedFilter, WaitingForPersonFilter, HeldBySweeperFilter, "saga_type", "created_at")
    search_fields = ("saga_type", "idempotency_key")
    show_full_result_count = False
    actions = ["resubmit_sagas", "cancel_sagas", "pause_sagas", "resume_sagas", "retry_compensation_sagas",
               "release_sagas", *BULK_ACTIONS]
    fieldsets = (
        (None, {"fields": ("id", "saga_type", "version", "status_badge", "error", "idempotency_key",
                           "resubmitted_from_link", "resubmissions_links", "parent_link", "children_tree")}),
        ("Timing", {"fields": ("created_at", "started_at", "finished_at", "duration_display",
                               "cancel_requested_at", "updated_at", "due_at")}),
        ("Data", {"fields": ("input_pretty", "results_pretty")}),
    )
    readonly_fields = (
        "id", "saga_type", "version", "status_badge", "error", "idempotency_key", "resubmitted_from_link",
        "resubmissions_links", "parent_link", "children_tree", "created_at", "started_at", "finished_at", "duration_display",
        "cancel_requested_at", "updated_at", "due_at", "input_pretty", "results_pretty",
    )

    saga_path = ""

    def get_queryset(self, request: HttpRequest) -> QuerySet[SagaInstance]:
        """The sagas this user may read or signal; the current step comes in the list's own query (a
        subquery), not one query per row."""
        rows = access.visible_or_signallable(request.user, admin.ModelAdmin.get_queryset(self, request))
        return with_current_step(rows)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and access.may_signal_in(request.user, obj):
            return True
        return super().has_view_permission(request, obj)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) or access.may_signal_in_any(request.user)

    # Who may use each action: the move's permission (``sagas.access``), asked again per saga.
    def has_resubmit_permission(self, request: HttpRequest) -> bool:
        return access.may(request.user, "resubmit")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return access.may(request.user, "cancel")

    def has_retry_compensation_permission(self, request: HttpRequest) -> bool:
        return access.may(request.user, "retry_compensation")

    def has_release_permission(self, request: HttpRequest) -> bool:
        return access.may(request.user, "release")

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return access.may(request.user, "pause")

    # --- columns and fields ---

    @admin.display(description="status", ordering="status")
    def status_badge(self, saga: SagaInstance) -> SafeString:
        colour = STATUS_COLOURS.get(saga.status, "#777")
        return format_html('<strong style="color:{}">{}</strong>', colour, saga.get_status_display())

    @admin.display(description="id", ordering="created_at")
    def short_id(self, saga: SagaInstance) -> SafeString:
        return format_html('<code title="{}">{}</code>', saga.pk, short_id(saga.pk))

    @admin.display(description="saga type", ordering="saga_type")
    def saga_type_display(self, saga: SagaInstance) -> SafeString:
        return _cut(saga.saga_type, "type")

    @admin.display(description="created (UTC)", ordering="created_at")
    def created_display(self, saga: SagaInstance) -> SafeString:
        return format_html('{} <span class="time">{}</span>', f"{saga.created_at:%Y-%m-%d}",
                           f"{saga.created_at:%H:%M:%S}")

    @admin.display(description="current step")
    def current_step_display(self, saga: SagaInstance) -> SafeString | str:
        name = getattr(saga, "current_step", None)
        if not name:
            return "-"
        status = getattr(saga, "current_step_status", "")
        shown = name if status == StepStatus.PENDING and saga.status in ACTIVE_SAGA_STATUSES else f"{name} ({status})"
        return _cut(shown, "step")

    @admin.display(description="duration")
    def duration_display(self, saga: SagaInstance) -> str:
        duration = saga.duration
        if duration is None and saga.started_at and saga.status in ACTIVE_SAGA_STATUSES:
            return f"{(timezone.now() - saga.started_at).total_seconds():.1f} s so far"
        return "-" if duration is None else f"{duration.total_seconds():.2f} s"

    @admin.display(description="error")
    def error_excerpt(self, saga: SagaInstance) -> SafeString | str:
        """Cut to the column's width (the whole error in its tooltip, and on the saga's page)."""
        if not saga.error:
            return ""
        return _cut(saga.error, "error")

    @admin.display(description="resubmitted from")
    def resubmitted_from_link(self, saga: SagaInstance) -> SafeString | str:
        return _saga_link(saga.resubmitted_from) if saga.resubmitted_from_id else "-"

    @admin.display(description="resubmitted as")
    def resubmissions_links(self, saga: SagaInstance) -> SafeString | str:
        links = [_saga_link(new) for new in saga.resubmissions.order_by("created_at")]
        return format_html_join(", ", "{}", ((link,) for link in links)) if links else "-"

    @admin.display(description="child of")
    def parent_link(self, saga: SagaInstance) -> SafeString | str:
        """The saga that started this one as a child (``ChildSaga``), and the step whose work it is."""
        if not saga.parent_id:
            return "-"
        step = f" (its step {saga.parent_step.name})" if saga.parent_step_id else ""
        return format_html("{}{}", _saga_link(saga.parent), step)

    @admin.display(description="child sagas")
    def children_tree(self, saga: SagaInstance) -> SafeString | str:
        """Its descendants this user may read, as a tree with their statuses (``selectors.saga_tree``)."""
        return children_tree_html(saga_tree(_VIEWER.get(), saga))

    @admin.display(description="input")
    def input_pretty(self, saga: SagaInstance) -> SafeString:
        return _pretty_json(shown(saga.saga_type, saga.input))

    @admin.display(description="results")
    def results_pretty(self, saga: SagaInstance) -> SafeString:
        return _pretty_json(shown(saga.saga_type, saga.current_results))

    # --- actions ---

    @admin.action(description="Resubmit selected sagas (new instances, same input)", permissions=["resubmit"])
    def resubmit_sagas(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> None:
        intervene(self, request, queryset.order_by("created_at"), _resubmit, "resubmit")

    @admin.action(description="Cancel selected sagas (compensate what ran)", permissions=["cancel"])
    def cancel_sagas(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> None:
        intervene(self, request, queryset.order_by("created_at"), _cancel, "cancel")

    @admin.action(description="Pause selected sagas (nothing more starts until resumed)", permissions=["pause"])
    def pause_sagas(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> None:
        intervene(self, request, queryset.order_by("created_at"), _pause, "pause")

    @admin.action(description="Resume selected paused sagas", permissions=["pause"])
    def resume_sagas(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> None:
        intervene(self, request, queryset.order_by("created_at"), _resume, "resume")

    @admin.action(description="Retry compensation of selected failed sagas", permissions=["retry_compensation"])
    def retry_compensation_sagas(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> None:
        intervene(self, request, queryset.order_by("created_at"), _retry_compensation, "retry_compensation")

    @admin.action(description="Release selected sagas the sweeper held back to it (once their cause is fixed)",
                  permissions=["release"])
    def release_sagas(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> None:
        intervene(self, request, queryset.order_by("created_at"), _release, "release")

    # --- the same actions as buttons on one saga's page ---

    def get_urls(self) -> list:
        own = [
            path("<path:object_id>/intervene/<str:name>/", self.admin_site.admin_view(self.intervene_view),
                 name="sagas_sagainstance_intervene"),
            path("<path:object_id>/signal/<str:step>/<str:signal>/", self.admin_site.admin_view(self.signal_view),
                 name="sagas_sagainstance_signal"),
            path("<path:object_id>/skip/<str:step>/", self.admin_site.admin_view(self.skip_view),
                 name="sagas_sagainstance_skip"),
        ]
        return own + super().get_urls()

    def intervene_view(self, request: HttpRequest, object_id: str, name: str) -> HttpResponse:
        """POST from a button on the saga's page: run one intervention, go back to the page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if name not in INTERVENTIONS:
            return self._act_on(request, object_id, None, None)
        _, run, move = INTERVENTIONS[name]
        return self._act_on(request, object_id, run, move)

    def signal_view(self, request: HttpRequest, object_id: str, step: str, signal: str) -> HttpResponse:
        """POST from a waiting step's form on the saga's page: complete or fail it, go back to the page.

        The engine checks the step's permission and that it still waits (a
        second person's click is refused, and said so).
        """
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        saga_id = _as_uuid(object_id)
        saga = SagaInstance.objects.filter(pk=saga_id).first() if saga_id else None  # signals: their own permission
        if saga is None:
            self.message_user(request, f"No saga {object_id}.", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:sagas_sagainstance_changelist"))
        if signal not in SIGNALS:
            self.message_user(request, "You may not do that.", messages.ERROR)
        else:
            intervene(self, request, [saga],
                      lambda s, r: signal_step(s, step, signal, r.POST, r.user))
        return HttpResponseRedirect(reverse("admin:sagas_sagainstance_change", args=[saga.pk]))

    def skip_view(self, request: HttpRequest, object_id: str, step: str) -> HttpResponse:
        """POST from a skippable step's form on the saga's page: skip it with a result and a reason."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        return self._act_on(request, object_id, lambda s, r: skip_step(s, step, r.POST, r.user), "skip")

    def _act_on(self, request: HttpRequest, object_id: str, run: Intervention | None, move: str | None):
        """One move on the saga ``object_id`` names (if this user may read it), then back to its page;
        ``run`` None: a move the page does not offer."""
        saga = self._saga_for(request, object_id)
        if saga is None:
            self.message_user(request, f"No saga {object_id}.", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:sagas_sagainstance_changelist"))
        if run is None:
            self.message_user(request, "You may not do that.", messages.ERROR)
        else:
            intervene(self, request, [saga], run, move)
        return HttpResponseRedirect(reverse("admin:sagas_sagainstance_change", args=[saga.pk]))

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        """The saga's run page (``sagas.run_page``), with only the buttons whose intervention applies to it now."""
        saga = self._saga_for(request, object_id)
        names = [name for name in applicable_interventions(saga)
                 if access.may(request.user, INTERVENTIONS[name][2], saga)] if saga else []
        waiting = signallable_steps(saga, request.user) if saga else []
        pausing = saga is not None and saga.status == SagaStatus.PAUSED and access.may(request.user, "resume", saga)
        extra_context = {
            **(extra_context or {}),
            "saga_interventions": [
                (INTERVENTIONS[name][0], reverse("admin:sagas_sagainstance_intervene", args=[object_id, name]))
                for name in names
            ],
            "waiting_steps": [
                {"record": record,
                 "complete_url": reverse("admin:sagas_sagainstance_signal", args=[object_id, record.name, "complete"]),
                 "fail_url": reverse("admin:sagas_sagainstance_signal", args=[object_id, record.name, "fail"])}
                for record in waiting
            ],
            "paused": {
                "why": why_it_waits(saga),
                "resume_url": reverse("admin:sagas_sagainstance_intervene", args=[object_id, "resume"]),
                "skippable": [{"record": r, "url": reverse("admin:sagas_sagainstance_skip", args=[object_id, r.name])}
                              for r in skippable_steps(saga)],
            } if pausing else None,
            **(self._run_context(saga, request.user) if saga else {}),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def _run_context(self, saga: SagaInstance, user: Any) -> dict:
        """What the run page shows of the saga, as ``user`` may see it."""
        run = run_page(saga, user)
        return {
            "run": run,
            "status_colour": STATUS_COLOURS.get(saga.status, "#777"),
            "parent_link": self.parent_link(saga) if saga.parent_id else "",
            "resubmitted_from_link": self.resubmitted_from_link(saga),
            "resubmissions_links": self.resubmissions_links(saga),
            "children_tree": children_tree_html(run["tree"]),
        }

    def changelist_view(self, request: HttpRequest, extra_context=None):
        start_url = reverse("admin:sagas_sagainstance_start") if access.may(request.user, "start") else ""
        return super().changelist_view(request, {**(extra_context or {}),
                                                 "live_url": reverse("sagas-live"), "start_url": start_url})

    def _saga_for(self, request: HttpRequest, object_id: str) -> SagaInstance | None:
        """The saga ``object_id`` names, if this user may read it (else as unknown as a missing one)."""
        saga_id = _as_uuid(object_id)
        saga = SagaInstance.objects.filter(pk=saga_id).first() if saga_id else None
        if saga is None or not (access.may(request.user, "view", saga) or access.may_signal_in(request.user, saga)):
            return None
        return saga


def _cut(text: str, kind: str) -> SafeString:
    """``text`` in a list column cut to its width with an ellipsis (the change list's CSS), whole in its tooltip."""
    return format_html('<span class="cut cut-{}" title="{}">{}</span>', kind, text, truncatechars(text, 300))


def children_tree_html(tree: dict) -> SafeString | str:
    """A ``selectors.saga_tree`` below its root as nested lists ("-" when the saga has no child)."""
    if not tree["root"]["children"]:
        return "-"
    more = format_html("<p>Only the first {} sagas of the tree are shown.</p>", tree["nodes"]) \
        if tree["truncated"] else ""
    return format_html('<div class="saga-tree">{}{}</div>', _tree_list(tree["root"]["children"]), more)


def _tree_list(nodes: list[dict]) -> SafeString:
    """Nested lists of child sagas: a link, its type, the step of its parent it works for, its status."""
    items = format_html_join("", "<li>{} {} <small>for {}</small> {}{}</li>", (
        (_saga_link_id(node["id"]), node["saga_type"], node["parent_step"] or "-",
         format_html('<strong style="color:{}">{}</strong>', STATUS_COLOURS.get(node["status"], "#777"),
                     node["status"]),
         _tree_list(node["children"]) if node["children"] else "")
        for node in nodes))
    return format_html('<ul style="margin:0 0 0 1.2em;padding:0">{}</ul>', items)


def _saga_link_id(saga_id) -> SafeString:
    """A link to the saga's page by its short id (the whole id in its tooltip)."""
    url = reverse("admin:sagas_sagainstance_change", args=[saga_id])
    return format_html('<a href="{}"><code title="{}">{}</code></a>', url, saga_id, short_id(saga_id))


# --- step records and events ------------------------------------------------------------


@admin.register(StepRecord)
class StepRecordAdmin(SagaIdSearchMixin, ReadOnlyAdmin):
    list_display = ("saga_link", "index", "name_display", "parallel_group", "status", "undoable", "attempts",
                    "compensation_attempts", "started_at", "finished_at")
    list_filter = ("status", "has_compensation", "saga__saga_type")
    search_fields = ("name", "saga__saga_type")
    show_full_result_count = False
    fields = ("saga_link", "index", "name", "stage", "parallel_group", "status", "compensation", "attempts",
              "result_pretty", "error", "started_at", "finished_at", "compensation_attempts", "compensation_error",
              "compensated_at", "lease_expires_at", "next_attempt_at")
    readonly_fields = fields

    @admin.display(description="saga", ordering="saga__created_at")
    def saga_link(self, record: StepRecord) -> SafeString:
        return _saga_link_id(record.saga_id)

    @admin.display(description="name", ordering="name")
    def name_display(self, record: StepRecord) -> SafeString:
        return _cut(record.name, "step")

    @admin.display(description="undoable", boolean=True, ordering="has_compensation")
    def undoable(self, record: StepRecord) -> bool:
        return record.has_compensation

    @admin.display(description="compensation")
    def compensation(self, record: StepRecord) -> str:
        return compensation_summary(record)

    @admin.display(description="result")
    def result_pretty(self, record: StepRecord) -> SafeString:
        return _pretty_json(shown(record.saga.saga_type, record.result))


@admin.register(SagaEvent)
class SagaEventAdmin(SagaIdSearchMixin, ReadOnlyAdmin):
    list_display = ("created_at", "saga_short", "kind", "step_short", "sentence_short")
    list_filter = ("kind", "created_at", "saga__saga_type")
    search_fields = ("kind", "saga__saga_type")
    list_select_related = ("saga", "step")
    show_full_result_count = False
    fields = ("created_at", "saga_link", "kind", "step_name", "sentence", "detail_pretty")
    readonly_fields = fields

    @admin.display(description="saga", ordering="saga__created_at")
    def saga_link(self, event: SagaEvent) -> SafeString:
        return _saga_link(event.saga)

    @admin.display(description="step")
    def step_name(self, event: SagaEvent) -> str:
        return f"#{event.step.index} {event.step.name}" if event.step else ""

    @admin.display(description="what happened")
    def sentence(self, event: SagaEvent) -> str:
        event.detail = shown(event.saga.saga_type, event.detail)  # as this user may see it (never saved)
        return describe_event(event)

    # The list's columns: short ids, and the step and the sentence cut to their width (whole in the tooltip).
    @admin.display(description="saga", ordering="saga__created_at")
    def saga_short(self, event: SagaEvent) -> SafeString:
        return _saga_link_id(event.saga_id)

    @admin.display(description="step")
    def step_short(self, event: SagaEvent) -> SafeString | str:
        return _cut(self.step_name(event), "step") if event.step_id else ""

    @admin.display(description="what happened")
    def sentence_short(self, event: SagaEvent) -> SafeString:
        return _cut(self.sentence(event), "sentence")

    @admin.display(description="detail")
    def detail_pretty(self, event: SagaEvent) -> SafeString:
        return _pretty_json(shown(event.saga.saga_type, event.detail))
