"""The invariant checks pass on consistent rows and name what is wrong on broken ones."""
import uuid
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from corporate import fixtures, invariants, models
from corporate.sagas import (
    BUDGET_APPROVAL,
    EMPLOYEE_ONBOARDING,
    IT_PROVISIONING,
    ORDER_FULFILLMENT,
    SYSTEM_DEPLOYMENT,
)
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus


def saga(saga_type: str, status: str) -> uuid.UUID:
    return SagaInstance.objects.create(saga_type=saga_type, status=status).id


def order(saga_id, *, quantity=1, amount="10.00", released=True) -> models.Order:
    product = fixtures.product(stock=5)
    return models.Order.objects.create(
        saga_id=saga_id, customer=fixtures.customer(), product=product, quantity=quantity,
        amount=Decimal(amount), ship_to="DE", stock_released_at=timezone.now() if released else None,
    )


def pay(order_, amount="10.00", refund=False) -> None:
    payment = models.Payment.objects.create(order=order_, amount=Decimal(amount), idempotency_key=str(uuid.uuid4()))
    if refund:
        models.Refund.objects.create(payment=payment, amount=payment.amount)


def failing(result: invariants.Invariant) -> str:
    name, passed, detail = result
    assert not passed, f"{name} passed but should not"
    return detail


def test_every_invariant_passes_on_an_empty_database(db):
    results = invariants.check_all()
    assert len(results) == 15
    assert all(passed for _, passed, _ in results), results


def test_stock_that_does_not_match_the_orders_holding_it_fails(db):
    product = fixtures.product(stock=5)
    models.Product.objects.filter(pk=product.pk).update(on_hand=3, reserved=2)  # no order holds those 2
    assert "orders hold 0" in failing(invariants.stock_balances())


def test_compensated_order_with_an_unrefunded_payment_fails(db):
    pay(order(saga(ORDER_FULFILLMENT, SagaStatus.COMPENSATED)))
    assert "net charge 10.00" in failing(invariants.compensated_orders_refunded())


def test_compensated_order_with_its_payment_refunded_passes(db):
    pay(order(saga(ORDER_FULFILLMENT, SagaStatus.COMPENSATED)), refund=True)
    assert invariants.compensated_orders_refunded().passed


def test_succeeded_order_charged_twice_fails(db):
    placed = order(saga(ORDER_FULFILLMENT, SagaStatus.SUCCEEDED), released=False)
    pay(placed)
    pay(placed)
    assert "2 payment(s)" in failing(invariants.succeeded_orders_charged_once())


def test_succeeded_order_never_charged_fails(db):
    order(saga(ORDER_FULFILLMENT, SagaStatus.SUCCEEDED), released=False)
    assert "0 payment(s)" in failing(invariants.succeeded_orders_charged_once())


def test_running_order_is_left_out_of_the_per_saga_checks(db):
    pay(order(saga(ORDER_FULFILLMENT, SagaStatus.RUNNING)))
    assert invariants.compensated_orders_refunded().passed
    assert invariants.succeeded_orders_charged_once().passed


def test_compensated_onboarding_with_an_active_account_and_a_desk_fails(db):
    saga_id = saga(EMPLOYEE_ONBOARDING, SagaStatus.COMPENSATED)
    employee = models.Employee.objects.create(saga_id=saga_id, name="A", email="a@corp.example",
                                              department=fixtures.department(), salary=1)
    models.Account.objects.create(employee=employee, system="email", username="a")
    fixtures.pools(laptops=0, desks=1)
    models.DeskAssignment.objects.create(desk=models.Desk.objects.get(), employee=employee)
    detail = failing(invariants.compensated_onboardings_clean())
    assert "active account" in detail and "desk" in detail


def test_budget_reserved_without_a_reservation_fails(db):
    department = fixtures.department(budget=1000)
    models.Department.objects.filter(pk=department.pk).update(reserved=400)
    assert "open reservations hold 0" in failing(invariants.budgets_within_limits())


def test_compensated_budget_request_still_holding_funds_fails(db):
    department = fixtures.department(budget=1000)
    request = models.BudgetRequest.objects.create(saga_id=saga(BUDGET_APPROVAL, SagaStatus.COMPENSATED),
                                                  department=department, amount=100, purpose="x")
    models.FundReservation.objects.create(request=request, department=department, amount=100)
    models.Department.objects.filter(pk=department.pk).update(reserved=100)
    assert "funds still reserved" in failing(invariants.compensated_budget_requests_reserve_nothing())
    assert invariants.budgets_within_limits().passed


def test_compensated_deployment_that_left_the_new_version_live_fails(db):
    service = fixtures.service(live_version="2.0.0")
    models.Deployment.objects.create(saga_id=saga(SYSTEM_DEPLOYMENT, SagaStatus.COMPENSATED), service=service,
                                     from_version="1.0.0", to_version="2.0.0",
                                     status=models.DeploymentStatus.ROLLED_BACK)
    assert "expected 1.0.0" in failing(invariants.compensated_deployments_rolled_back())


@pytest.mark.parametrize("status", [models.DeploymentStatus.DEPLOYED, models.DeploymentStatus.VERIFIED])
def test_compensated_deployment_not_rolled_back_fails(db, status):
    service = fixtures.service(live_version="2.0.0")
    models.Deployment.objects.create(saga_id=saga(SYSTEM_DEPLOYMENT, SagaStatus.COMPENSATED), service=service,
                                     from_version="1.0.0", to_version="2.0.0", status=status)
    assert f"still {status}" in failing(invariants.compensated_deployments_rolled_back())


def test_check_all_can_be_limited_to_some_sagas(db):
    broken = saga(ORDER_FULFILLMENT, SagaStatus.COMPENSATED)
    pay(order(broken))
    fine = saga(ORDER_FULFILLMENT, SagaStatus.COMPENSATED)
    assert all(passed for _, passed, _ in invariants.check_all(saga_ids=[fine]))
    assert not all(passed for _, passed, _ in invariants.check_all(saga_ids=[broken]))


# --- gates --------------------------------------------------------------------------------


def passed_gate(saga_type, step, *, amount="20000", skipped=False, signal=None, saga_input=None):
    """A saga (of the gated version) whose ``step`` succeeded, with the events the engine would write."""
    saga_id = SagaInstance.objects.create(saga_type=saga_type, version=3, status=SagaStatus.SUCCEEDED,
                                          input=saga_input or {}).id
    record = StepRecord.objects.create(saga_id=saga_id, index=1, name=step, status="succeeded")
    if saga_type == BUDGET_APPROVAL:
        models.BudgetRequest.objects.create(saga_id=saga_id, department=fixtures.department(), amount=amount,
                                            purpose="x")
    if signal is not None:
        SagaEvent.objects.create(saga_id=saga_id, step=record, kind=EventKind.STEP_SIGNALLED,
                                 detail={"signal": "complete", **signal})
    SagaEvent.objects.create(saga_id=saga_id, step=record, kind=EventKind.STEP_SUCCEEDED,
                             detail={"wait_skipped": True} if skipped else {"signalled": True})
    return saga_id


def user_with(*codenames):
    user = User.objects.create_user(f"user{User.objects.count()}")
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="corporate"))
    return user


def test_a_gate_completed_by_a_user_holding_its_permission_passes(db):
    manager = user_with("approve_budget")
    passed_gate(BUDGET_APPROVAL, "manager_approval", signal={"by": manager.username, "by_user_id": manager.pk})
    assert invariants.gates_passed_with_a_permitted_signal().passed


def test_a_gate_completed_by_a_user_without_its_permission_fails(db):
    clerk = user_with("approve_budget")  # may approve as manager, not sign off as executive
    passed_gate(BUDGET_APPROVAL, "executive_signoff", signal={"by": clerk.username, "by_user_id": clerk.pk})
    assert "without a permitted signal" in failing(invariants.gates_passed_with_a_permitted_signal())


def test_a_gate_that_passed_with_no_signal_at_all_fails(db):
    passed_gate(SYSTEM_DEPLOYMENT, "release_gate")
    assert "no signal" in failing(invariants.gates_passed_with_a_permitted_signal())


def test_the_contract_gate_passes_through_its_token(db):
    passed_gate(EMPLOYEE_ONBOARDING, "contract_signature", signal={"by": "token"})
    assert invariants.gates_passed_with_a_permitted_signal().passed


@pytest.mark.parametrize("amount, threshold, saga_input, passes", [
    ("900", None, {}, True),
    ("10000", None, {}, True),
    ("20000", None, {}, False),
    ("900", "500", {}, False),  # the department's threshold
    ("240000", None, {"executive_threshold": "249999"}, False),  # a requester's own never counts
])
def test_only_the_executive_may_be_skipped_and_only_at_or_below_the_threshold(db, amount, threshold, saga_input,
                                                                              passes):
    passed_gate(BUDGET_APPROVAL, "executive_signoff", amount=amount, skipped=True, saga_input=saga_input)
    if threshold:
        models.Department.objects.update(executive_threshold=threshold)
    assert invariants.gates_passed_with_a_permitted_signal().passed is passes


def test_a_manager_gate_cannot_be_skipped(db):
    passed_gate(BUDGET_APPROVAL, "manager_approval", amount="900", skipped=True)
    assert "skipped its wait" in failing(invariants.gates_passed_with_a_permitted_signal())


# --- paused past the pivot, and steps a person skipped ------------------------------------


def paused_saga(saga_type, *, pivot: str, pivot_status="succeeded", version=None, paused_from="running"):
    """A saga paused on its way forward (or ``paused_from``), its pivot step in ``pivot_status``."""
    from sagas import registry

    version = version or registry.get(saga_type).version
    saga_id = SagaInstance.objects.create(saga_type=saga_type, version=version, status=SagaStatus.PAUSED,
                                          paused_from=paused_from, pause_cause="after_pivot").id
    index = [s.name for s in registry.get(saga_type, version).steps].index(pivot)
    StepRecord.objects.create(saga_id=saga_id, index=index, name=pivot, status=pivot_status)
    return saga_id


def shipped_order(saga_id, *, refund=False, shipment=models.ShipmentStatus.SCHEDULED) -> models.Order:
    placed = order(saga_id, amount="10.00", released=False)
    pay(placed, refund=refund)
    models.Shipment.objects.create(order=placed, carrier="DHL", status=shipment)
    return placed


def test_a_paused_order_holding_its_one_charge_and_its_shipment_passes(db):
    shipped_order(paused_saga(ORDER_FULFILLMENT, pivot="schedule_shipment"))
    result = invariants.paused_orders_hold_charge_and_shipment()
    assert result.passed and result.detail == "1 orders paused past the pivot"


def test_a_paused_order_whose_charge_was_refunded_by_hand_fails(db):
    shipped_order(paused_saga(ORDER_FULFILLMENT, pivot="schedule_shipment"), refund=True)
    assert "net 0.00, order amount 10.00, refunded" in failing(invariants.paused_orders_hold_charge_and_shipment())
    assert not all(passed for _, passed, _ in invariants.check_all())


def test_a_paused_order_whose_shipment_was_cancelled_fails(db):
    shipped_order(paused_saga(ORDER_FULFILLMENT, pivot="schedule_shipment"), shipment=models.ShipmentStatus.CANCELLED)
    assert "shipment cancelled" in failing(invariants.paused_orders_hold_charge_and_shipment())


def test_a_paused_order_whose_steps_were_compensated_fails(db):
    saga_id = paused_saga(ORDER_FULFILLMENT, pivot="schedule_shipment")
    shipped_order(saga_id)
    StepRecord.objects.create(saga_id=saga_id, index=0, name="reserve_stock", status="compensated")
    assert "step reserve_stock compensated" in failing(invariants.paused_orders_hold_charge_and_shipment())


@pytest.mark.parametrize("pivot_status, version, paused_from", [
    ("running", None, "running"),  # paused by a person before its pivot succeeded: it may still be undone
    ("succeeded", 1, "running"),  # version 1 has no pivot
    ("succeeded", None, "compensating"),
])
def test_an_order_paused_before_or_without_a_pivot_is_left_out(db, pivot_status, version, paused_from):
    saga_id = paused_saga(ORDER_FULFILLMENT, pivot="schedule_shipment", pivot_status=pivot_status, version=version,
                          paused_from=paused_from)
    shipped_order(saga_id, refund=True)
    result = invariants.paused_orders_hold_charge_and_shipment()
    assert result.passed and result.detail == "0 orders paused past the pivot"


def hire(saga_id, *, status=models.EmployeeStatus.ONBOARDING, contract=models.ContractStatus.SENT):
    employee = models.Employee.objects.create(saga_id=saga_id, name="A", email=f"{saga_id}@corp.example",
                                              department=fixtures.department(), salary=1, status=status)
    models.ContractRequest.objects.create(saga_id=saga_id, employee=employee, envelope_id=f"env-{saga_id}",
                                          status=contract)
    return employee


def test_a_paused_onboarding_keeping_its_employee_and_contract_passes(db):
    hire(paused_saga(EMPLOYEE_ONBOARDING, pivot="contract_signature"))
    result = invariants.paused_onboardings_keep_the_hire()
    assert result.passed and result.detail == "1 onboardings paused past the pivot"


@pytest.mark.parametrize("employee_status, contract_status, message", [
    (models.EmployeeStatus.WITHDRAWN, models.ContractStatus.SENT, "employee withdrawn"),
    (models.EmployeeStatus.ONBOARDING, models.ContractStatus.VOIDED, "contract voided"),
])
def test_a_paused_onboarding_whose_offer_was_withdrawn_or_contract_voided_fails(db, employee_status,
                                                                              contract_status, message):
    hire(paused_saga(EMPLOYEE_ONBOARDING, pivot="contract_signature"), status=employee_status,
         contract=contract_status)
    assert message in failing(invariants.paused_onboardings_keep_the_hire())


def skipped(saga_type=ORDER_FULFILLMENT, *, given, stored, status="skipped"):
    saga_id = SagaInstance.objects.create(saga_type=saga_type, status=SagaStatus.SUCCEEDED).id
    record = StepRecord.objects.create(saga_id=saga_id, index=3, name="send_confirmation", status=status,
                                       result=stored)
    SagaEvent.objects.create(saga_id=saga_id, step=record, kind=EventKind.STEP_SKIPPED,
                             detail={"from": "failed", "to": "skipped", "reason": "phoned", "result": given})
    return saga_id


def test_a_skipped_step_holding_the_persons_result_passes(db):
    skipped(given={"confirmed_by": "phone"}, stored={"confirmed_by": "phone"})
    skipped(given=None, stored=None)
    result = invariants.skipped_steps_hold_the_persons_result()
    assert result.passed and result.detail == "2 steps skipped"


@pytest.mark.parametrize("stored, status", [({"confirmed_by": "mail"}, "skipped"), (None, "skipped"),
                                            ({"confirmed_by": "phone"}, "failed")])
def test_a_skipped_step_whose_result_is_not_the_persons_fails(db, stored, status):
    skipped(given={"confirmed_by": "phone"}, stored=stored, status=status)
    assert "the person gave {'confirmed_by': 'phone'}" in failing(invariants.skipped_steps_hold_the_persons_result())


def test_a_step_skipped_because_the_saga_compensated_is_not_a_persons(db):
    saga_id = SagaInstance.objects.create(saga_type=ORDER_FULFILLMENT, status=SagaStatus.COMPENSATED).id
    record = StepRecord.objects.create(saga_id=saga_id, index=3, name="send_confirmation", status="skipped")
    SagaEvent.objects.create(saga_id=saga_id, step=record, kind=EventKind.STEP_SKIPPED,
                             detail={"from": "pending", "to": "skipped"})
    assert invariants.skipped_steps_hold_the_persons_result().detail == "0 steps skipped"


# --- the onboarding and its IT provisioning child ------------------------------------------


def onboarding_with_child(onboarding_status: str, step_status: str, child_status: str):
    """An onboarding (version 7) whose provision_it step started an IT provisioning child, as rows."""
    onboarding = SagaInstance.objects.create(saga_type=EMPLOYEE_ONBOARDING, version=7, status=onboarding_status)
    employee = hire(onboarding.pk, contract=models.ContractStatus.VOIDED)
    record = StepRecord.objects.create(saga=onboarding, index=1, name="provision_it", status=step_status)
    child = SagaInstance.objects.create(saga_type=IT_PROVISIONING, status=child_status, parent=onboarding,
                                        parent_step=record, depth=1, input={"employee": employee.pk})
    if step_status == StepStatus.SUCCEEDED:
        StepRecord.objects.filter(pk=record.pk).update(result={"saga_id": str(child.pk), "results": {}})
    return onboarding, employee, child


def test_a_compensated_onboarding_whose_provisioning_was_compensated_passes(db):
    onboarding_with_child(SagaStatus.COMPENSATED, StepStatus.COMPENSATED, SagaStatus.COMPENSATED)
    assert invariants.compensated_onboardings_undo_their_provisioning().passed
    assert invariants.trees_consistent().passed
    assert invariants.compensated_provisionings_clean().passed


def test_a_compensated_onboarding_whose_provisioning_succeeded_fails(db):
    onboarding, _, child = onboarding_with_child(SagaStatus.COMPENSATED, StepStatus.COMPENSATED,
                                                 SagaStatus.SUCCEEDED)
    assert f"onboarding {onboarding.pk}: its provisioning {child.pk} is succeeded" in failing(
        invariants.compensated_onboardings_undo_their_provisioning())
    assert "compensated, but its child" in failing(invariants.trees_consistent())


def test_a_succeeded_onboarding_whose_step_disagrees_with_its_child_fails_the_tree_check(db):
    onboarding_with_child(SagaStatus.SUCCEEDED, StepStatus.SUCCEEDED, SagaStatus.COMPENSATED)
    detail = failing(invariants.trees_consistent())
    assert "succeeded, but its child" in detail and "step provision_it is succeeded, but its child" in detail


def test_a_compensated_provisioning_that_left_accounts_and_a_laptop_fails(db):
    _, employee, child = onboarding_with_child(SagaStatus.COMPENSATED, StepStatus.COMPENSATED,
                                               SagaStatus.COMPENSATED)
    models.Account.objects.create(employee=employee, system="sso", username="a", holds_licence=True)
    fixtures.pools(laptops=1, desks=0)
    models.LaptopAssignment.objects.create(laptop=models.Laptop.objects.get(), employee=employee)

    detail = failing(invariants.compensated_provisionings_clean())
    assert f"provisioning {child.pk}: employee {employee.pk}: active account left" in detail
    assert "licence held" in detail and "laptop left" in detail
    # The onboarding's own check sees the same rows through its employee.
    assert "active account" in failing(invariants.compensated_onboardings_clean())


def test_a_budget_gate_skipped_by_its_condition_above_the_threshold_fails(db):
    department = fixtures.department(budget=10**6)
    saga_id = SagaInstance.objects.create(saga_type=BUDGET_APPROVAL, version=5, status=SagaStatus.SUCCEEDED).id
    models.BudgetRequest.objects.create(saga_id=saga_id, department=department, amount=50000, purpose="x")
    step = StepRecord.objects.create(saga_id=saga_id, index=3, name="executive_signoff", status=StepStatus.SKIPPED)
    SagaEvent.objects.create(saga_id=saga_id, step=step, kind=EventKind.STEP_SKIPPED,
                             detail={"reason": "condition false"})

    assert "executive_signoff skipped by its condition" in failing(invariants.gates_passed_with_a_permitted_signal())
    models.BudgetRequest.objects.filter(saga_id=saga_id).update(amount=900)  # at or below: allowed
    assert invariants.gates_passed_with_a_permitted_signal().passed
