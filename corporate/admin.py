"""Admin for the corporate domain.

Reference data (departments, products, customers, pools, services, failure
rules) is edited here; the rows the sagas write (orders, payments, employees,
approvals, deployments...) are read-only, because only a saga or its
compensation may change them. Each saga-written row links to its saga.
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from sagas import registry

from . import services
from .models import (
    Account,
    Approval,
    Build,
    BudgetRequest,
    ContractRequest,
    Customer,
    Department,
    Deployment,
    Desk,
    DeskAssignment,
    Employee,
    FailureInjectionRule,
    FundReservation,
    HealthCheck,
    Laptop,
    LaptopAssignment,
    Notification,
    Order,
    Payment,
    PayrollRecord,
    Product,
    Refund,
    Service,
    Shipment,
    TestRun,
)
from .sagas import ORDER_FULFILLMENT


def saga_link(saga_id) -> SafeString | str:
    try:
        url = reverse("admin:sagas_sagainstance_change", args=[saga_id])
    except NoReverseMatch:  # the sagas admin is not installed
        return str(saga_id)
    return format_html('<a href="{}">{}</a>', url, str(saga_id)[:8])


class WrittenBySagas:
    """Rows only sagas write: people look, they do not edit (that would break the invariants)."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class SagaLinked:
    @admin.display(description="saga")
    def saga(self, obj) -> SafeString | str:
        return saga_link(obj.saga_id)


# --- reference data ---------------------------------------------------------------------


@admin.register(Department)
class DepartmentAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "budget", "reserved", "available", "salary_cap", "frozen")
    readonly_fields = ("reserved",)
    search_fields = ("code", "name")

    @admin.display(description="available")
    def available(self, obj: Department):
        return obj.budget - obj.reserved


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("sku", "name", "price", "on_hand", "reserved", "initial_stock")
    readonly_fields = ("on_hand", "reserved", "initial_stock")
    search_fields = ("sku", "name")
    actions = ("receive_ten",)

    def get_readonly_fields(self, request, obj=None):
        return ("on_hand", "reserved") if obj is None else self.readonly_fields

    def save_model(self, request, obj: Product, form, change) -> None:
        if not change:  # a new product starts with all its stock on hand; later, receive more with the action
            obj.on_hand = obj.initial_stock
            obj.reserved = 0
        super().save_model(request, obj, form, change)

    @admin.action(description="Receive 10 units of the selected products")
    def receive_ten(self, request: HttpRequest, queryset: QuerySet[Product]) -> None:
        for product in queryset:
            services.product_restock(product=product, quantity=10)
        messages.success(request, f"received 10 units of {queryset.count()} product(s)")


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ("name", "email", "credit_limit", "card_blocked", "gateway_glitches", "email_bounces")
    search_fields = ("name", "email")


class LaptopAssignmentInline(WrittenBySagas, admin.TabularInline):
    model = LaptopAssignment
    extra = 0
    fields = ("employee", "assigned_at", "returned_at")
    readonly_fields = fields


class DeskAssignmentInline(WrittenBySagas, admin.TabularInline):
    model = DeskAssignment
    extra = 0
    fields = ("employee", "assigned_at", "returned_at")
    readonly_fields = fields


class PoolAdmin(admin.ModelAdmin):
    list_display = ("__str__", "held_by")

    @admin.display(description="held by")
    def held_by(self, obj) -> str:
        open_ = obj.assignments.filter(returned_at__isnull=True).select_related("employee").first()
        return str(open_.employee) if open_ else "free"


@admin.register(Laptop)
class LaptopAdmin(PoolAdmin):
    list_display = ("asset_tag", "model", "held_by")
    search_fields = ("asset_tag",)
    inlines = (LaptopAssignmentInline,)


@admin.register(Desk)
class DeskAdmin(PoolAdmin):
    list_display = ("code", "floor", "held_by")
    search_fields = ("code",)
    inlines = (DeskAssignmentInline,)


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ("name", "live_version", "frozen")
    readonly_fields = ("live_version",)
    search_fields = ("name",)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields  # set the first version; deployments change it


@admin.register(FailureInjectionRule)
class FailureInjectionRuleAdmin(admin.ModelAdmin):
    list_display = ("saga_type", "step", "transient", "permanent", "seed", "note", "created_at")
    list_editable = ("transient", "permanent")


# --- order fulfillment ------------------------------------------------------------------


class PaymentInline(WrittenBySagas, admin.TabularInline):
    model = Payment
    extra = 0
    fields = ("amount", "refunded", "created_at", "idempotency_key")
    readonly_fields = fields

    @admin.display(description="refunded")
    def refunded(self, payment: Payment) -> str:
        refund = Refund.objects.filter(payment=payment).first()
        return f"{refund.amount} at {refund.created_at:%Y-%m-%d %H:%M:%S}" if refund else "no"


class ShipmentInline(WrittenBySagas, admin.StackedInline):
    model = Shipment
    extra = 0


class NotificationInline(WrittenBySagas, admin.TabularInline):
    model = Notification
    extra = 0
    fields = ("recipient", "message", "sent_at")
    readonly_fields = fields


@admin.register(Order)
class OrderAdmin(WrittenBySagas, SagaLinked, admin.ModelAdmin):
    list_display = ("id", "reference", "customer", "product", "quantity", "amount", "status", "saga", "created_at")
    list_filter = ("status",)
    search_fields = ("reference", "saga_id", "customer__name")
    inlines = (PaymentInline, ShipmentInline, NotificationInline)


@admin.register(Payment)
class PaymentAdmin(WrittenBySagas, admin.ModelAdmin):
    list_display = ("id", "order", "amount", "created_at")


@admin.register(Refund)
class RefundAdmin(WrittenBySagas, admin.ModelAdmin):
    list_display = ("id", "payment", "amount", "created_at")


def _undo_note(saga_type: str, step: str) -> str:
    definition = registry.get(saga_type)
    found = next(s for s in definition.steps if s.name == step)
    return "undoable" if found.has_compensation else f"not undoable: {found.description}"


@admin.register(Notification)
class NotificationAdmin(WrittenBySagas, admin.ModelAdmin):
    """Sent by the order saga's last step, which has no compensation: the admin says so on every row."""

    list_display = ("id", "order", "recipient", "sent_at", "undo")
    search_fields = ("recipient",)

    @admin.display(description="compensation")
    def undo(self, obj: Notification) -> SafeString:
        return format_html('<span style="color:#ba2121">{}</span>', _undo_note(ORDER_FULFILLMENT, "send_confirmation"))


# --- employee onboarding ----------------------------------------------------------------


class AccountInline(WrittenBySagas, admin.TabularInline):
    model = Account
    extra = 0
    fields = ("system", "username", "active", "holds_licence", "created_at", "disabled_at")
    readonly_fields = fields


class PayrollInline(WrittenBySagas, admin.StackedInline):
    model = PayrollRecord
    extra = 0


class EmployeeLaptopInline(LaptopAssignmentInline):
    fields = ("laptop", "assigned_at", "returned_at")
    readonly_fields = fields


class EmployeeDeskInline(DeskAssignmentInline):
    fields = ("desk", "assigned_at", "returned_at")
    readonly_fields = fields


class ContractRequestInline(WrittenBySagas, admin.TabularInline):
    model = ContractRequest
    extra = 0
    fields = ("envelope_id", "status", "sent_at", "voided_at")
    readonly_fields = fields


@admin.register(ContractRequest)
class ContractRequestAdmin(WrittenBySagas, SagaLinked, admin.ModelAdmin):
    """What we sent for e-signature. The callback (a one-time token) lives with the service, not here."""

    list_display = ("envelope_id", "employee", "status", "saga", "sent_at", "voided_at")
    list_filter = ("status",)
    search_fields = ("envelope_id", "employee__email", "saga_id")


@admin.register(Employee)
class EmployeeAdmin(WrittenBySagas, SagaLinked, admin.ModelAdmin):
    list_display = ("name", "email", "department", "role", "status", "saga", "created_at")
    list_filter = ("status", "department")
    search_fields = ("name", "email", "saga_id")
    inlines = (ContractRequestInline, AccountInline, EmployeeLaptopInline, EmployeeDeskInline, PayrollInline)


# --- budget approval --------------------------------------------------------------------


class ApprovalInline(WrittenBySagas, admin.TabularInline):
    model = Approval
    extra = 0
    fields = ("level", "approver", "comment", "approved_at", "revoked_at")
    readonly_fields = fields


class ReservationInline(WrittenBySagas, admin.StackedInline):
    model = FundReservation
    extra = 0


@admin.register(BudgetRequest)
class BudgetRequestAdmin(WrittenBySagas, SagaLinked, admin.ModelAdmin):
    list_display = ("id", "department", "amount", "purpose", "status", "saga", "created_at")
    list_filter = ("status", "department")
    search_fields = ("purpose", "saga_id")
    inlines = (ApprovalInline, ReservationInline)


# --- system deployment ------------------------------------------------------------------


class HealthCheckInline(WrittenBySagas, admin.TabularInline):
    model = HealthCheck
    extra = 0
    fields = ("attempt", "healthy", "detail", "checked_at")
    readonly_fields = fields


@admin.register(Deployment)
class DeploymentAdmin(WrittenBySagas, SagaLinked, admin.ModelAdmin):
    list_display = ("id", "service", "from_version", "to_version", "status", "saga", "created_at", "rolled_back_at")
    list_filter = ("status", "service")
    search_fields = ("to_version", "saga_id")
    inlines = (HealthCheckInline,)


@admin.register(Build)
class BuildAdmin(WrittenBySagas, SagaLinked, admin.ModelAdmin):
    list_display = ("artifact", "service", "version", "status", "tests", "saga", "created_at")
    list_filter = ("status", "service")

    @admin.display(description="tests")
    def tests(self, build: Build) -> str:
        run = TestRun.objects.filter(build=build).first()
        return f"{run.tests_run} {run.status}" if run else "-"
