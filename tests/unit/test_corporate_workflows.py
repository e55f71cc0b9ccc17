"""The corporate steps and compensations called directly, without the engine or a worker.

A small driver runs a saga's actions in order and its compensations in
reverse, the way the engine would, so each test can look at the rows between
the two and check that every compensation is idempotent.
"""
import uuid
from decimal import Decimal

import pytest
from django.forms.models import model_to_dict

from corporate import fixtures, invariants, models
from corporate.fixtures import Inputs
from corporate.sagas import BUDGET_APPROVAL, EMPLOYEE_ONBOARDING, ORDER_FULFILLMENT, SYSTEM_DEPLOYMENT
from corporate.workflows.order_fulfillment import PaymentGatewayTimeout
from sagas import PermanentError, registry
from sagas.definitions import StepContext

DOMAIN_MODELS = [
    models.Product, models.Order, models.Payment, models.Refund, models.Shipment, models.Notification,
    models.Employee, models.Account, models.LaptopAssignment, models.DeskAssignment, models.PayrollRecord,
    models.Department, models.BudgetRequest, models.Approval, models.FundReservation,
    models.Service, models.Build, models.TestRun, models.Deployment, models.HealthCheck,
]


class Run:
    """One saga instance driven by hand: ``forward()`` then ``compensate()``."""

    def __init__(self, saga_type: str, data: dict):
        self.definition = registry.get(saga_type)
        self.saga_id = uuid.uuid4()
        self.input = data
        self.results: dict = {}

    def _ctx(self, step, *, attempt=1, compensation=False) -> StepContext:
        before = {s.name for s in self.definition.steps[:self.definition.steps.index(step)]}
        return StepContext(
            saga_id=self.saga_id, saga_type=self.definition.name, input=self.input,
            results={k: v for k, v in self.results.items() if k in before}, step=step.name, attempt=attempt,
            idempotency_key=f"{self.saga_id}:{step.name}" + (":compensation" if compensation else ""),
            result=self.results.get(step.name) if compensation else None, is_compensation=compensation,
        )

    def step(self, name: str, *, attempt: int = 1):
        step = next(s for s in self.definition.steps if s.name == name)
        self.results[name] = step.action(self._ctx(step, attempt=attempt))
        return self.results[name]

    def forward(self, upto: int | None = None) -> "Run":
        for step in self.definition.steps[:upto]:
            self.step(step.name)
        return self

    def compensate(self) -> None:
        for step in reversed(self.definition.steps):
            if step.name in self.results and step.compensation is not None:
                step.compensation(self._ctx(step, compensation=True))


def snapshot() -> dict:
    return {m.__name__: [model_to_dict(row) for row in m.objects.order_by("pk")] for m in DOMAIN_MODELS}


def assert_global_invariants_hold():
    for name, passed, detail in invariants.check_all():
        assert passed, f"{name}: {detail}"


def compensate_twice(run: Run) -> None:
    run.compensate()
    once = snapshot()
    run.compensate()
    assert snapshot() == once, "running the compensations a second time changed something"


# --- order fulfillment ------------------------------------------------------------------


def test_order_moves_stock_charges_ships_and_confirms(db):
    product = fixtures.product(stock=5, price="20.00")
    run = Run(ORDER_FULFILLMENT, Inputs.order(product_=product, quantity=2)).forward()

    product.refresh_from_db()
    assert (product.on_hand, product.reserved, product.initial_stock) == (3, 2, 5)
    order = models.Order.objects.get(saga_id=run.saga_id)
    assert order.status == models.OrderStatus.CONFIRMED and order.amount == Decimal("40.00")
    assert [p.amount for p in order.payments.all()] == [Decimal("40.00")]
    assert order.shipment.carrier == "DHL"
    assert order.notifications.count() == 1
    assert_global_invariants_hold()


def test_order_compensations_put_stock_back_refund_and_cancel_once(db):
    product = fixtures.product(stock=5)
    run = Run(ORDER_FULFILLMENT, Inputs.order(product_=product, quantity=2)).forward(upto=3)

    compensate_twice(run)

    product.refresh_from_db()
    assert (product.on_hand, product.reserved) == (5, 0)
    order = models.Order.objects.get(saga_id=run.saga_id)
    assert order.status == models.OrderStatus.CANCELLED
    payment = order.payments.get()
    assert payment.refund.amount == payment.amount  # a refund row; the payment stays
    assert order.shipment.status == models.ShipmentStatus.CANCELLED
    assert_global_invariants_hold()


def test_short_stock_is_refused_and_changes_nothing(db):
    product = fixtures.product(stock=1)
    before = snapshot()
    with pytest.raises(PermanentError, match="out of stock"):
        Run(ORDER_FULFILLMENT, Inputs.order(product_=product, quantity=2)).step("reserve_stock")
    assert snapshot() == before


@pytest.mark.parametrize("options, message", [
    ({"card_blocked": True}, "card .* is blocked"),
    ({"credit_limit": 10}, "exceeds the credit limit"),
])
def test_payment_declines_for_good(db, options, message):
    run = Run(ORDER_FULFILLMENT, Inputs.order(customer_=fixtures.customer(**options))).forward(upto=1)
    with pytest.raises(PermanentError, match=message):
        run.step("charge_payment")
    assert not models.Payment.objects.exists()


def test_payment_gateway_timeout_is_transient_and_a_retry_charges_once(db):
    run = Run(ORDER_FULFILLMENT, Inputs.order(customer_=fixtures.customer(gateway_glitches=1))).forward(upto=1)
    with pytest.raises(PaymentGatewayTimeout):
        run.step("charge_payment", attempt=1)
    run.step("charge_payment", attempt=2)
    run.step("charge_payment", attempt=3)  # a redelivered attempt reuses the idempotency key
    assert models.Payment.objects.count() == 1


def test_shipping_refuses_a_country_no_carrier_serves(db):
    run = Run(ORDER_FULFILLMENT, Inputs.order(ship_to="AQ")).forward(upto=2)
    with pytest.raises(PermanentError, match="no carrier ships to AQ"):
        run.step("schedule_shipment")


def test_confirmation_step_has_no_compensation_and_says_why(db):
    step = registry.get(ORDER_FULFILLMENT).steps[-1]
    assert step.name == "send_confirmation"
    assert step.compensation is None
    assert "cannot be unsent" in step.description


# --- employee onboarding ----------------------------------------------------------------


def test_onboarding_gives_accounts_a_laptop_payroll_and_a_desk(db):
    fixtures.pools(laptops=1, desks=1)
    run = Run(EMPLOYEE_ONBOARDING, Inputs.onboarding()).forward()

    employee = models.Employee.objects.get(saga_id=run.saga_id)
    assert employee.status == models.EmployeeStatus.ACTIVE
    assert employee.accounts.filter(active=True, holds_licence=True).count() == 2
    assert employee.laptopassignments.get().returned_at is None
    assert employee.deskassignments.get().returned_at is None
    assert employee.payroll.active
    assert_global_invariants_hold()


def test_onboarding_compensations_disable_accounts_and_return_assets_once(db):
    fixtures.pools(laptops=1, desks=1)
    run = Run(EMPLOYEE_ONBOARDING, Inputs.onboarding()).forward()

    compensate_twice(run)

    employee = models.Employee.objects.get(saga_id=run.saga_id)
    assert employee.status == models.EmployeeStatus.WITHDRAWN
    assert not employee.accounts.filter(active=True).exists()
    assert not employee.accounts.filter(holds_licence=True).exists()
    assert not employee.laptopassignments.filter(returned_at__isnull=True).exists()
    assert not employee.deskassignments.filter(returned_at__isnull=True).exists()
    assert not employee.payroll.active
    # The laptop and the desk are free for the next hire.
    Run(EMPLOYEE_ONBOARDING, Inputs.onboarding()).forward()


def test_two_hires_never_share_a_laptop_and_the_pool_runs_out(db):
    fixtures.pools(laptops=1, desks=2)
    department = fixtures.department()
    Run(EMPLOYEE_ONBOARDING, Inputs.onboarding(department_=department)).forward()
    second = Run(EMPLOYEE_ONBOARDING, Inputs.onboarding(department_=department)).forward(upto=1)

    with pytest.raises(PermanentError, match="no laptop left"):
        second.step("provision_it")
    assert models.LaptopAssignment.objects.count() == 1
    assert models.Account.objects.count() == 2  # the refused step left no half-provisioned accounts


def test_payroll_refuses_salary_above_the_band(db):
    fixtures.pools()
    run = Run(EMPLOYEE_ONBOARDING, Inputs.onboarding(department_=fixtures.department(salary_cap=50000),
                                                     salary="90000")).forward(upto=2)
    with pytest.raises(PermanentError, match="above the .* band"):
        run.step("setup_payroll")


def test_facilities_refuses_when_no_desk_is_free(db):
    fixtures.pools(laptops=1, desks=0)
    run = Run(EMPLOYEE_ONBOARDING, Inputs.onboarding()).forward(upto=3)
    with pytest.raises(PermanentError, match="no desk left"):
        run.step("assign_desk")


# --- budget approval --------------------------------------------------------------------


def test_budget_request_above_threshold_reserves_funds_with_two_approvals(db):
    department = fixtures.department(budget=50000)
    run = Run(BUDGET_APPROVAL, Inputs.budget(department_=department, amount="20000")).forward()

    department.refresh_from_db()
    assert department.reserved == Decimal("20000")
    request = models.BudgetRequest.objects.get(saga_id=run.saga_id)
    assert request.status == models.BudgetRequestStatus.APPROVED
    assert sorted(request.approvals.values_list("level", flat=True)) == ["executive", "manager"]
    assert run.results["executive_signoff"] == {"executive_required": True}
    assert_global_invariants_hold()


def test_budget_below_threshold_needs_no_executive(db):
    run = Run(BUDGET_APPROVAL, Inputs.budget(amount="900")).forward()
    assert run.results["executive_signoff"] == {"executive_required": False}


@pytest.mark.parametrize("extra", [{"executive_approves": False, "amount": "20000"}, {"amount": "300000"}])
def test_executive_refusal_is_permanent(db, extra):
    run = Run(BUDGET_APPROVAL, Inputs.budget(department_=fixtures.department(budget=10**6), **extra)).forward(upto=3)
    with pytest.raises(PermanentError, match="executive refused"):
        run.step("executive_signoff")


def test_budget_compensations_release_funds_and_revoke_approvals_once(db):
    department = fixtures.department(budget=50000)
    run = Run(BUDGET_APPROVAL, Inputs.budget(department_=department, amount="20000")).forward()

    compensate_twice(run)

    department.refresh_from_db()
    assert department.reserved == 0
    request = models.BudgetRequest.objects.get(saga_id=run.saga_id)
    assert request.status == models.BudgetRequestStatus.WITHDRAWN
    assert not request.approvals.filter(revoked_at__isnull=True).exists()
    assert request.reservation.released_at is not None
    assert_global_invariants_hold()


def test_finance_refuses_more_than_the_budget_left(db):
    department = fixtures.department(budget=1000)
    run = Run(BUDGET_APPROVAL, Inputs.budget(department_=department, amount="1500")).forward(upto=2)
    with pytest.raises(PermanentError, match="has 1000.00 left"):
        run.step("reserve_funds")


# --- system deployment ------------------------------------------------------------------


def test_deployment_goes_live_and_is_verified(db):
    service = fixtures.service(live_version="1.0.0")
    run = Run(SYSTEM_DEPLOYMENT, Inputs.deployment(service_=service, version="1.1.0")).forward()

    service.refresh_from_db()
    assert service.live_version == "1.1.0"
    assert run.results["deploy"]["previous_version"] == "1.0.0"
    assert models.Deployment.objects.get(saga_id=run.saga_id).status == models.DeploymentStatus.VERIFIED


def test_unhealthy_deployment_fails_monitor_and_rollback_restores_previous_version_once(db):
    service = fixtures.service(live_version="1.0.0")
    run = Run(SYSTEM_DEPLOYMENT, Inputs.deployment(service_=service, version="1.1.0", healthy=False)).forward(upto=3)
    with pytest.raises(PermanentError, match="health check failed"):
        run.step("monitor")
    assert models.HealthCheck.objects.get().healthy is False

    compensate_twice(run)

    service.refresh_from_db()
    assert service.live_version == "1.0.0"
    release = models.Deployment.objects.get(saga_id=run.saga_id)
    assert release.status == models.DeploymentStatus.ROLLED_BACK
    assert models.Build.objects.get().status == models.BuildStatus.DISCARDED
    assert models.TestRun.objects.get().status == models.TestRunStatus.INVALIDATED
    assert_global_invariants_hold()


def test_a_second_release_waits_for_the_first_to_be_verified(db):
    service = fixtures.service()
    Run(SYSTEM_DEPLOYMENT, Inputs.deployment(service_=service, version="2.0.0")).forward(upto=3)
    second = Run(SYSTEM_DEPLOYMENT, Inputs.deployment(service_=service, version="3.0.0")).forward(upto=2)
    with pytest.raises(PermanentError, match="still being verified"):
        second.step("deploy")


def test_failing_tests_stop_the_release(db):
    run = Run(SYSTEM_DEPLOYMENT, Inputs.deployment(tests_pass=False)).forward(upto=1)
    with pytest.raises(PermanentError, match="tests failed"):
        run.step("test")


def test_every_corporate_step_but_the_observers_has_a_compensation(db):
    without = {(s.name, st.name) for s in registry if s.name.startswith("corporate.") for st in s.steps
               if st.compensation is None}
    assert without == {(ORDER_FULFILLMENT, "send_confirmation"), (SYSTEM_DEPLOYMENT, "monitor")}


def test_executive_threshold_may_come_with_the_input(db):
    run = Run(BUDGET_APPROVAL, Inputs.budget(amount="900", executive_threshold="500")).forward()
    assert run.results["executive_signoff"] == {"executive_required": True}
