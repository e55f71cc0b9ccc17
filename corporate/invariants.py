"""The business invariants the corporate sagas must keep, checked over the stored rows.

Each check returns an ``Invariant`` (a named tuple: name, passed, detail), so
callers may unpack it as ``(name, passed, detail)``. Run them once the sagas
of interest have finished or paused: the checks of finished sagas pick them
by their final status (so an active or paused saga is never counted as
succeeded or compensated), the checks of paused sagas take only those paused
past their pivot (from there nothing is ever undone, so what they hold cannot
change under the check), and the balance checks read several tables one
after another and could catch a running saga between two of its writes.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
from typing import Iterable, NamedTuple

from django.contrib.auth import get_user_model
from django.db.models import Count, Q, Sum

from sagas import registry
from sagas.errors import UnknownSagaType
from sagas.invariants import tree_problems
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus

from .models import (
    Account,
    Approval,
    BudgetRequest,
    ContractRequest,
    ContractStatus,
    BudgetRequestStatus,
    Department,
    Deployment,
    DeploymentStatus,
    DeskAssignment,
    Employee,
    EmployeeStatus,
    FundReservation,
    LaptopAssignment,
    Order,
    Payment,
    PayrollRecord,
    Product,
    Refund,
    Service,
    Shipment,
    ShipmentStatus,
)
from .sagas import (
    ALL_TYPES,
    BUDGET_APPROVAL,
    EMPLOYEE_ONBOARDING,
    GATED_TYPES,
    IT_PROVISIONING,
    ORDER_FULFILLMENT,
    SYSTEM_DEPLOYMENT,
)

MAX_EXAMPLES = 3


class Invariant(NamedTuple):
    name: str
    passed: bool
    detail: str


def _result(name: str, problems: list[str], checked: str) -> Invariant:
    if not problems:
        return Invariant(name, True, checked)
    shown = "; ".join(problems[:MAX_EXAMPLES])
    more = f" (and {len(problems) - MAX_EXAMPLES} more)" if len(problems) > MAX_EXAMPLES else ""
    return Invariant(name, False, f"{len(problems)} violation(s): {shown}{more}")


def _saga_ids(saga_type: str, status: str, saga_ids: Iterable | None) -> list:
    sagas = SagaInstance.objects.filter(saga_type=saga_type, status=status)
    if saga_ids is not None:
        sagas = sagas.filter(pk__in=list(saga_ids))
    return list(sagas.values_list("pk", flat=True))


def _paused_past_pivot(saga_type: str, saga_ids: Iterable | None) -> list:
    """The sagas of ``saga_type`` paused on their way forward after their pivot succeeded."""
    sagas = SagaInstance.objects.filter(saga_type=saga_type, status=SagaStatus.PAUSED,
                                        paused_from=SagaStatus.RUNNING)
    if saga_ids is not None:
        sagas = sagas.filter(pk__in=list(saga_ids))
    found = []
    for version in sorted(set(sagas.values_list("version", flat=True))):
        try:
            definition = registry.get(saga_type, version)
        except UnknownSagaType:
            continue
        if definition.pivot_index is None:
            continue
        found += StepRecord.objects.filter(saga__in=sagas.filter(version=version), status=StepStatus.SUCCEEDED,
                                           name=definition.step_at(definition.pivot_index).name).values_list(
            "saga_id", flat=True)
    return found


def _undone(saga_ids: list) -> list[str]:
    """Past a pivot nothing is compensated: the steps of these sagas that were (or are being) undone."""
    return [f"saga {sid}: step {name} {status}" for sid, name, status in StepRecord.objects.filter(
        saga_id__in=saga_ids, status__in=(StepStatus.COMPENSATING, StepStatus.COMPENSATED,
                                          StepStatus.COMPENSATION_FAILED)).values_list("saga_id", "name", "status")]


# --- stock ------------------------------------------------------------------------------


def stock_balances() -> Invariant:
    problems = []
    products = list(Product.objects.all())
    held = dict(
        Order.objects.filter(stock_released_at__isnull=True).values_list("product").annotate(n=Sum("quantity"))
    )
    for p in products:
        if p.on_hand < 0 or p.reserved < 0:
            problems.append(f"{p.sku} negative (on hand {p.on_hand}, reserved {p.reserved})")
        if p.on_hand + p.reserved != p.initial_stock:
            problems.append(f"{p.sku}: {p.on_hand} on hand + {p.reserved} reserved != {p.initial_stock}")
        if held.get(p.pk, 0) != p.reserved:
            problems.append(f"{p.sku}: reserved {p.reserved} but orders hold {held.get(p.pk, 0)}")
    return _result("stock: on hand + reserved = initial stock, none negative", problems,
                   f"{len(products)} products")


# --- orders -----------------------------------------------------------------------------


def _net_charges(saga_ids: list) -> dict:
    """saga id -> (payments, payments - refunds) for the orders of these sagas."""
    paid = defaultdict(Decimal)
    count = Counter()
    for saga_id, amount in Payment.objects.filter(order__saga_id__in=saga_ids).values_list("order__saga_id", "amount"):
        paid[saga_id] += amount
        count[saga_id] += 1
    for saga_id, amount in Refund.objects.filter(payment__order__saga_id__in=saga_ids).values_list(
            "payment__order__saga_id", "amount"):
        paid[saga_id] -= amount
    return {sid: (count[sid], paid[sid]) for sid in saga_ids}


def compensated_orders_refunded(saga_ids: Iterable | None = None) -> Invariant:
    ids = _saga_ids(ORDER_FULFILLMENT, SagaStatus.COMPENSATED, saga_ids)
    problems = [f"order saga {sid}: net charge {net}" for sid, (_, net) in _net_charges(ids).items() if net != 0]
    return _result("compensated orders: payments - refunds = 0", problems, f"{len(ids)} compensated orders")


def succeeded_orders_charged_once(saga_ids: Iterable | None = None) -> Invariant:
    ids = _saga_ids(ORDER_FULFILLMENT, SagaStatus.SUCCEEDED, saga_ids)
    amounts = dict(Order.objects.filter(saga_id__in=ids).values_list("saga_id", "amount"))
    problems = []
    for sid, (payments, net) in _net_charges(ids).items():
        if payments != 1 or net != amounts.get(sid):
            problems.append(f"order saga {sid}: {payments} payment(s), net {net}, order amount {amounts.get(sid)}")
    return _result("succeeded orders: exactly one net charge", problems, f"{len(ids)} succeeded orders")


def paused_orders_hold_charge_and_shipment(saga_ids: Iterable | None = None) -> Invariant:
    """An order paused past its pivot (shipped, its confirmation failed) keeps everything it did."""
    ids = _paused_past_pivot(ORDER_FULFILLMENT, saga_ids)
    orders = {o.saga_id: o for o in Order.objects.filter(saga_id__in=ids)}
    shipments = dict(Shipment.objects.filter(order__saga_id__in=ids).values_list("order__saga_id", "status"))
    refunded = set(Refund.objects.filter(payment__order__saga_id__in=ids).values_list("payment__order__saga_id",
                                                                                       flat=True))
    problems = _undone(ids)
    for sid, (payments, net) in _net_charges(ids).items():
        order = orders.get(sid)
        if order is None:
            problems.append(f"order saga {sid}: no order")
            continue
        if payments != 1 or net != order.amount or sid in refunded:
            problems.append(f"order saga {sid}: {payments} payment(s), net {net}, order amount {order.amount}"
                            + (", refunded" if sid in refunded else ""))
        if shipments.get(sid) != ShipmentStatus.SCHEDULED:
            problems.append(f"order saga {sid}: shipment {shipments.get(sid) or 'missing'}")
        if order.stock_released_at is not None:
            problems.append(f"order saga {sid}: stock released")
    return _result("paused orders: one charge, no refund, shipment kept", problems,
                   f"{len(ids)} orders paused past the pivot")


# --- onboarding -------------------------------------------------------------------------


def assets_not_shared() -> Invariant:
    problems = []
    for model, asset in ((LaptopAssignment, "laptop"), (DeskAssignment, "desk")):
        open_ = model.objects.filter(returned_at__isnull=True)
        for row in open_.values(asset).annotate(n=Count("id")).filter(n__gt=1):
            problems.append(f"{asset} {row[asset]} assigned to {row['n']} employees")
        for row in open_.values("employee").annotate(n=Count("id")).filter(n__gt=1):
            problems.append(f"employee {row['employee']} holds {row['n']} {asset}s")
    return _result("no laptop or desk assigned to two employees", problems, "laptops and desks")


def compensated_onboardings_clean(saga_ids: Iterable | None = None) -> Invariant:
    ids = _saga_ids(EMPLOYEE_ONBOARDING, SagaStatus.COMPENSATED, saga_ids)
    employees = Employee.objects.filter(saga_id__in=ids)
    problems = []
    for label, rows in (
        ("active account", Account.objects.filter(employee__in=employees, active=True)),
        ("licence held", Account.objects.filter(employee__in=employees, holds_licence=True)),
        ("laptop", LaptopAssignment.objects.filter(employee__in=employees, returned_at__isnull=True)),
        ("desk", DeskAssignment.objects.filter(employee__in=employees, returned_at__isnull=True)),
        ("open payroll", PayrollRecord.objects.filter(employee__in=employees, active=True)),
        ("contract still out for signature", ContractRequest.objects.filter(employee__in=employees,
                                                                            status=ContractStatus.SENT)),
    ):
        for employee_id in rows.values_list("employee", flat=True):
            problems.append(f"employee {employee_id}: {label} left")
    return _result("compensated onboardings: no active account, laptop or desk left", problems,
                   f"{len(ids)} compensated onboardings")


def compensated_onboardings_undo_their_provisioning(saga_ids: Iterable | None = None) -> Invariant:
    """A compensated onboarding (version 7 on) leaves its IT provisioning child compensated, never succeeded."""
    ids = _saga_ids(EMPLOYEE_ONBOARDING, SagaStatus.COMPENSATED, saga_ids)
    children = SagaInstance.objects.filter(parent_id__in=ids, saga_type=IT_PROVISIONING)
    problems = [f"onboarding {parent}: its provisioning {child} is {status}" for child, parent, status in
                children.exclude(status=SagaStatus.COMPENSATED).values_list("pk", "parent_id", "status")]
    return _result("compensated onboardings: their IT provisioning compensated too", problems,
                   f"{len(ids)} compensated onboardings, {children.count()} provisioning children")


def compensated_provisionings_clean(saga_ids: Iterable | None = None) -> Invariant:
    """A compensated IT provisioning leaves its employee no active account, licence seat or laptop (unless a
    later provisioning of the same employee succeeded)."""
    sagas = SagaInstance.objects.filter(saga_type=IT_PROVISIONING)
    if saga_ids is not None:
        ids = list(saga_ids)
        sagas = sagas.filter(Q(pk__in=ids) | Q(parent_id__in=ids))  # the onboardings' children too
    compensated = list(sagas.filter(status=SagaStatus.COMPENSATED).values_list("pk", "input"))
    provisioned = {(data or {}).get("employee") for data in SagaInstance.objects.filter(
        saga_type=IT_PROVISIONING, status=SagaStatus.SUCCEEDED).values_list("input", flat=True)}
    employees = {(data or {}).get("employee"): pk for pk, data in compensated}
    employees = {e: pk for e, pk in employees.items() if e is not None and e not in provisioned}
    problems = []
    for label, rows in (
        ("active account", Account.objects.filter(employee__in=list(employees), active=True)),
        ("licence held", Account.objects.filter(employee__in=list(employees), holds_licence=True)),
        ("laptop", LaptopAssignment.objects.filter(employee__in=list(employees), returned_at__isnull=True)),
    ):
        for employee_id in rows.values_list("employee", flat=True):
            problems.append(f"provisioning {employees[employee_id]}: employee {employee_id}: {label} left")
    return _result("compensated IT provisionings: no active account, licence or laptop left", problems,
                   f"{len(compensated)} compensated provisionings")


def trees_consistent(saga_ids: Iterable | None = None) -> Invariant:
    """The engine's rules between parents and children (``sagas.invariants.tree_problems``), over these sagas."""
    parents = SagaInstance.objects.filter(saga_type__in=ALL_TYPES)
    if saga_ids is not None:
        parents = parents.filter(pk__in=list(saga_ids))
    broken = tree_problems(parents)
    problems = [f"saga {parent}: {problem}" for parent, found in broken.items() for problem in found]
    children = SagaInstance.objects.filter(parent__in=parents).count()
    return _result("parents agree with their child sagas (a compensated one has no succeeded child)", problems,
                   f"{children} child sagas")


def paused_onboardings_keep_the_hire(saga_ids: Iterable | None = None) -> Invariant:
    """An onboarding paused past its pivot (the contract signed) keeps its employee and contract."""
    ids = _paused_past_pivot(EMPLOYEE_ONBOARDING, saga_ids)
    employees = dict(Employee.objects.filter(saga_id__in=ids).values_list("saga_id", "status"))
    contracts = dict(ContractRequest.objects.filter(saga_id__in=ids).values_list("saga_id", "status"))
    problems = _undone(ids)
    for sid in ids:
        if employees.get(sid) in (None, EmployeeStatus.WITHDRAWN):
            problems.append(f"onboarding {sid}: employee {'record missing' if sid not in employees else 'withdrawn'}")
        if contracts.get(sid) in (None, ContractStatus.VOIDED, ContractStatus.DECLINED):
            problems.append(f"onboarding {sid}: contract {contracts.get(sid) or 'missing'}")
    return _result("paused onboardings: employee and signed contract kept", problems,
                   f"{len(ids)} onboardings paused past the pivot")


# --- budgets ----------------------------------------------------------------------------


def budgets_within_limits() -> Invariant:
    open_reservations = dict(
        FundReservation.objects.filter(released_at__isnull=True).values_list("department").annotate(s=Sum("amount"))
    )
    problems = []
    departments = list(Department.objects.all())
    for d in departments:
        if d.reserved > d.budget or d.reserved < 0:
            problems.append(f"{d.code}: reserved {d.reserved} of a budget of {d.budget}")
        held = open_reservations.get(d.pk) or Decimal("0")
        if held != d.reserved:
            problems.append(f"{d.code}: reserved {d.reserved} but open reservations hold {held}")
    return _result("budgets: reserved never exceeds budget", problems, f"{len(departments)} departments")


def compensated_budget_requests_reserve_nothing(saga_ids: Iterable | None = None) -> Invariant:
    ids = _saga_ids(BUDGET_APPROVAL, SagaStatus.COMPENSATED, saga_ids)
    requests = BudgetRequest.objects.filter(saga_id__in=ids)
    problems = [f"request {pk}: funds still reserved" for pk in FundReservation.objects.filter(
        request__in=requests, released_at__isnull=True).values_list("request", flat=True)]
    problems += [f"request {pk}: {level} approval not revoked" for pk, level in Approval.objects.filter(
        request__in=requests, revoked_at__isnull=True).values_list("request", "level")]
    problems += [f"request {pk}: still {status}" for pk, status in requests.exclude(
        status=BudgetRequestStatus.WITHDRAWN).values_list("pk", "status")]
    return _result("compensated approvals reserve nothing", problems, f"{len(ids)} compensated requests")


# --- gates ------------------------------------------------------------------------------


def _gates(saga_type: str, version: int) -> dict[str, str | None]:
    """The gate steps of a definition: name -> the permission that may signal it."""
    try:
        definition = registry.get(saga_type, version)
    except UnknownSagaType:
        return {}
    return {step.name: step.signal_permission for step in definition.steps if step.wait_for_signal}


def _may_skip(gate: str, request: tuple | None) -> bool:
    """Only the executive sign-off may be skipped, and only at or below its department's threshold.

    ``request``: the saga's budget request, as (amount, the department's threshold).
    """
    if gate != "executive_signoff" or request is None:
        return False
    amount, threshold = request
    return amount <= threshold


def gates_passed_with_a_permitted_signal(saga_ids: Iterable | None = None) -> Invariant:
    """Every gate a saga passed was completed by a user holding its permission, or through its token,
    or skipped where the business allows it (the executive, at or below the threshold)."""
    sagas = SagaInstance.objects.filter(saga_type__in=GATED_TYPES)
    if saga_ids is not None:
        sagas = sagas.filter(pk__in=list(saga_ids))
    passed = list(SagaEvent.objects.filter(saga__in=sagas, kind=EventKind.STEP_SUCCEEDED).values_list(
        "saga_id", "saga__saga_type", "saga__version", "step__name", "detail"))
    signals: dict = defaultdict(list)
    for saga_id, step, detail in SagaEvent.objects.filter(saga__in=sagas, kind=EventKind.STEP_SIGNALLED).values_list(
            "saga_id", "step__name", "detail"):
        if (detail or {}).get("signal") == "complete":
            signals[(saga_id, step)].append(detail)
    requests = {saga_id: (amount, threshold) for saga_id, amount, threshold in BudgetRequest.objects.filter(
        saga_id__in=sagas.values("pk")).values_list("saga_id", "amount", "department__executive_threshold")}
    users = {u.pk: u for u in get_user_model().objects.filter(pk__in={
        d.get("by_user_id") for details in signals.values() for d in details if d.get("by_user_id")})}
    problems, gates_passed = [], 0
    # Version 5 on, the executive step is skipped by its condition (``when=``): allowed only at or below the
    # threshold, as its ``SkipWait`` was before.
    for saga_id, saga_type, version, step in SagaEvent.objects.filter(
            saga__in=sagas, kind=EventKind.STEP_SKIPPED, detail__reason="condition false").values_list(
            "saga_id", "saga__saga_type", "saga__version", "step__name"):
        if _gates(saga_type, version).get(step, False) is False:
            continue
        gates_passed += 1
        if not _may_skip(step, requests.get(saga_id)):
            problems.append(f"saga {saga_id}: {step} skipped by its condition")
    for saga_id, saga_type, version, step, detail in passed:
        permission = _gates(saga_type, version).get(step, False)
        if permission is False:
            continue  # not a gate
        gates_passed += 1
        detail = detail or {}
        if detail.get("wait_skipped"):
            if not _may_skip(step, requests.get(saga_id)):
                problems.append(f"saga {saga_id}: {step} skipped its wait")
            continue
        allowed = [d for d in signals[(saga_id, step)]
                   if d.get("by") == "token" or (d.get("by_user_id") in users and (
                       permission is None or users[d["by_user_id"]].has_perm(permission)))]
        if not allowed:
            who = ", ".join(str(d.get("by")) for d in signals[(saga_id, step)]) or "no signal"
            problems.append(f"saga {saga_id}: {step} passed without a permitted signal ({who})")
    return _result("gates passed only with a permitted signal or an allowed skip",
                   problems, f"{gates_passed} gates passed")


# --- deployments ------------------------------------------------------------------------


def compensated_deployments_rolled_back(saga_ids: Iterable | None = None) -> Invariant:
    ids = _saga_ids(SYSTEM_DEPLOYMENT, SagaStatus.COMPENSATED, saga_ids)
    problems = []
    for release in Deployment.objects.filter(saga_id__in=ids).select_related("service"):
        if release.status != DeploymentStatus.ROLLED_BACK:
            problems.append(f"{release.service.name} {release.to_version}: still {release.status}")
            continue
        later = Deployment.objects.filter(service=release.service_id, pk__gt=release.pk).exists()
        if not later and release.service.live_version != release.from_version:
            problems.append(f"{release.service.name}: live {release.service.live_version}, "
                            f"expected {release.from_version} after rolling back {release.to_version}")
    # Releases go one at a time per service, so the live version is that of its latest release still standing.
    for service in Service.objects.all():
        releases = list(service.deployments.order_by("pk"))
        if not releases:
            continue
        standing = [r for r in releases if r.status != DeploymentStatus.ROLLED_BACK]
        expected = standing[-1].to_version if standing else releases[0].from_version
        if service.live_version != expected:
            problems.append(f"{service.name}: live {service.live_version}, expected {expected}")
    return _result("compensated deployments: the version before is live again", problems,
                   f"{len(ids)} compensated deployments")


# --- steps a person did by hand ---------------------------------------------------------


def skipped_steps_hold_the_persons_result(saga_ids: Iterable | None = None) -> Invariant:
    """A step a person skipped (``skip_step``) holds as its result exactly what they gave."""
    events = SagaEvent.objects.filter(saga__saga_type__in=ALL_TYPES, kind=EventKind.STEP_SKIPPED,
                                      detail__has_key="result")
    if saga_ids is not None:
        events = events.filter(saga_id__in=list(saga_ids))
    given = {step_id: (saga_id, detail["result"]) for step_id, saga_id, detail in events.values_list(
        "step_id", "saga_id", "detail")}
    stored = {pk: (name, status, result) for pk, name, status, result in StepRecord.objects.filter(
        pk__in=list(given)).values_list("pk", "name", "status", "result")}
    problems = []
    for step_id, (saga_id, result) in given.items():
        name, status, kept = stored[step_id]
        if status != StepStatus.SKIPPED or kept != result:
            problems.append(f"saga {saga_id}: {name} is {status} with {kept!r}; the person gave {result!r}")
    return _result("skipped steps: the result is what the person gave", problems, f"{len(given)} steps skipped")


def check_all(saga_ids: Iterable | None = None) -> list[Invariant]:
    """Every invariant; per-saga checks only over ``saga_ids`` when given."""
    ids = list(saga_ids) if saga_ids is not None else None
    return [
        stock_balances(),
        compensated_orders_refunded(ids),
        succeeded_orders_charged_once(ids),
        paused_orders_hold_charge_and_shipment(ids),
        assets_not_shared(),
        compensated_onboardings_clean(ids),
        compensated_onboardings_undo_their_provisioning(ids),
        compensated_provisionings_clean(ids),
        paused_onboardings_keep_the_hire(ids),
        budgets_within_limits(),
        compensated_budget_requests_reserve_nothing(ids),
        compensated_deployments_rolled_back(ids),
        gates_passed_with_a_permitted_signal(ids),
        skipped_steps_hold_the_persons_result(ids),
        trees_consistent(ids),
    ]
