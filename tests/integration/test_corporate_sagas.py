"""The four corporate sagas end to end: a real prefork worker, the real broker, the test database.

Every saga's success path, then a failure at every step position of every
saga (driven by its input or reference data, or by failure injection where
no business rule can refuse that step), each compensation chain checked
against the business invariants.
"""
import time
from decimal import Decimal

import pytest

from corporate import fixtures, invariants, models, services
from corporate.fixtures import Inputs
from corporate.sagas import BUDGET_APPROVAL, EMPLOYEE_ONBOARDING, ORDER_FULFILLMENT, SYSTEM_DEPLOYMENT
from sagas import failure_injection, registry, start_saga
from sagas.models import SagaStatus, StepStatus
from tests.helpers import wait_for_saga

pytestmark = pytest.mark.integration


def assert_invariants(saga):
    for name, passed, detail in invariants.check_all(saga_ids=[saga.pk]):
        assert passed, f"{name}: {detail}"


@pytest.fixture
def inject():
    """Store a failure-injection rule the worker reads; remove it and let the worker's cache expire after."""
    wait = failure_injection.cache_seconds() + 0.3

    def install(saga_type, step, **rates):
        services.failure_rule_set(saga_type=saga_type, step=step, **rates)
        time.sleep(wait)

    yield install
    services.failure_rules_clear()
    time.sleep(wait)


# --- success paths ----------------------------------------------------------------------


def test_order_succeeds_with_one_charge_and_stock_reserved(worker):
    product = fixtures.product(stock=5, price="12.50")
    saga = wait_for_saga(start_saga(ORDER_FULFILLMENT, input=Inputs.order(product_=product, quantity=2)))

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    product.refresh_from_db()
    assert (product.on_hand, product.reserved) == (3, 2)
    order = models.Order.objects.get(saga_id=saga.id)
    assert order.status == models.OrderStatus.CONFIRMED
    assert list(order.payments.values_list("amount", flat=True)) == [Decimal("25.00")]
    assert saga.results["send_confirmation"]["notification"] == order.notifications.get().pk
    assert_invariants(saga)


def test_onboarding_succeeds_with_accounts_laptop_payroll_and_desk(worker):
    fixtures.pools(laptops=1, desks=1)
    saga = wait_for_saga(start_saga(EMPLOYEE_ONBOARDING, input=Inputs.onboarding()))

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    employee = models.Employee.objects.get(saga_id=saga.id)
    assert employee.status == models.EmployeeStatus.ACTIVE
    assert employee.accounts.filter(active=True).count() == 2
    assert saga.results["provision_it"]["laptop"] == models.Laptop.objects.get().asset_tag
    assert saga.results["assign_desk"]["desk"] == models.Desk.objects.get().code
    assert employee.payroll.active
    assert_invariants(saga)


def test_budget_approval_succeeds_with_funds_reserved_and_executive_signature(worker):
    department = fixtures.department(budget=100000)
    saga = wait_for_saga(start_saga(BUDGET_APPROVAL, input=Inputs.budget(department_=department, amount="25000")))

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    department.refresh_from_db()
    assert department.reserved == Decimal("25000")
    request = models.BudgetRequest.objects.get(saga_id=saga.id)
    assert request.status == models.BudgetRequestStatus.APPROVED
    assert request.approvals.filter(revoked_at__isnull=True).count() == 2
    assert_invariants(saga)


def test_deployment_succeeds_and_the_new_version_is_live(worker):
    service = fixtures.service(live_version="1.4.0")
    saga = wait_for_saga(start_saga(SYSTEM_DEPLOYMENT, input=Inputs.deployment(service_=service, version="1.5.0")))

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    service.refresh_from_db()
    assert service.live_version == "1.5.0"
    assert saga.results["deploy"]["previous_version"] == "1.4.0"
    assert models.Deployment.objects.get(saga_id=saga.id).status == models.DeploymentStatus.VERIFIED
    assert_invariants(saga)


def test_payment_gateway_timeouts_are_retried_and_charge_once(worker):
    customer = fixtures.customer(gateway_glitches=2)
    saga = wait_for_saga(start_saga(ORDER_FULFILLMENT, input=Inputs.order(customer_=customer)))

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    assert saga.steps.get(name="charge_payment").attempts == 3
    assert models.Payment.objects.count() == 1
    assert_invariants(saga)


# --- a failure at every step position ---------------------------------------------------
# Each case: (saga type, failing step, a function that prepares the world and returns the input).


def _order(**customer_options):
    return lambda: Inputs.order(customer_=fixtures.customer(**customer_options), quantity=2)


def _onboarding(*, laptops=1, desks=1, **extra):
    def prepare():
        fixtures.pools(laptops=laptops, desks=desks)
        return Inputs.onboarding(department_=fixtures.department(salary_cap=100000), **extra)
    return prepare


def _budget(*, budget=100000, frozen=False, **extra):
    return lambda: Inputs.budget(department_=fixtures.department(budget=budget, frozen=frozen), amount="20000",
                                 **extra)


def _deployment(*, frozen=False, **extra):
    return lambda: Inputs.deployment(service_=fixtures.service(live_version="1.0.0", frozen=frozen),
                                     version="2.0.0", **extra)


FAILURES = [
    (ORDER_FULFILLMENT, "reserve_stock", lambda: Inputs.order(product_=fixtures.product(stock=1), quantity=2),
     "out of stock"),
    (ORDER_FULFILLMENT, "charge_payment", _order(card_blocked=True), "card"),
    (ORDER_FULFILLMENT, "schedule_shipment", lambda: Inputs.order(ship_to="AQ"), "no carrier"),
    (ORDER_FULFILLMENT, "send_confirmation", _order(email_bounces=True), "rejected the confirmation"),
    (EMPLOYEE_ONBOARDING, "create_employee_record", _onboarding(), "injected permanent failure"),
    (EMPLOYEE_ONBOARDING, "provision_it", _onboarding(laptops=0), "no laptop left"),
    (EMPLOYEE_ONBOARDING, "setup_payroll", _onboarding(salary="150000"), "above the"),
    (EMPLOYEE_ONBOARDING, "assign_desk", _onboarding(desks=0), "no desk left"),
    (BUDGET_APPROVAL, "submit_request", _budget(frozen=True), "frozen"),
    (BUDGET_APPROVAL, "manager_approval", _budget(manager_approves=False), "manager"),
    (BUDGET_APPROVAL, "reserve_funds", _budget(budget=15000), "Finance refused"),
    (BUDGET_APPROVAL, "executive_signoff", _budget(executive_approves=False), "executive refused"),
    (SYSTEM_DEPLOYMENT, "build", _deployment(), "injected permanent failure"),
    (SYSTEM_DEPLOYMENT, "test", _deployment(tests_pass=False), "tests failed"),
    (SYSTEM_DEPLOYMENT, "deploy", _deployment(frozen=True), "change freeze"),
    (SYSTEM_DEPLOYMENT, "monitor", _deployment(healthy=False), "health check failed"),
]


@pytest.mark.parametrize("saga_type, failing, prepare, error", FAILURES,
                         ids=[f"{t.split('.')[1]}-{s}" for t, s, _, _ in FAILURES])
def test_failure_at_each_step_compensates_the_steps_before_it(worker, inject, saga_type, failing, prepare, error):
    data = prepare()
    if error.startswith("injected"):
        inject(saga_type, failing, permanent=1.0)
    saga = wait_for_saga(start_saga(saga_type, input=data))

    assert saga.status == SagaStatus.COMPENSATED, saga.error
    assert error in saga.error
    names = [s.name for s in registry.get(saga_type).steps]
    position = names.index(failing)
    steps = {s.name: s for s in saga.steps.all()}
    assert steps[failing].status == StepStatus.FAILED and steps[failing].attempts == 1
    for name in names[:position]:
        assert steps[name].status == StepStatus.COMPENSATED, name
    for name in names[position + 1:]:
        assert steps[name].status == StepStatus.SKIPPED, name
    compensated = list(saga.events.filter(kind="step_compensated").values_list("step__name", flat=True))
    assert compensated == list(reversed(names[:position]))  # latest first
    assert_invariants(saga)


def test_unhealthy_release_puts_the_previous_version_back_live(worker):
    service = fixtures.service(live_version="1.0.0")
    saga = wait_for_saga(start_saga(SYSTEM_DEPLOYMENT, input=Inputs.deployment(service_=service, version="2.0.0",
                                                                               healthy=False)))
    assert saga.status == SagaStatus.COMPENSATED
    service.refresh_from_db()
    assert service.live_version == "1.0.0"


def test_injected_transient_failures_are_retried_by_the_step_policy(worker, inject):
    inject(BUDGET_APPROVAL, "reserve_funds", transient=1.0)
    saga = wait_for_saga(start_saga(BUDGET_APPROVAL, input=Inputs.budget()))

    assert saga.status == SagaStatus.COMPENSATED
    reserve = saga.steps.get(name="reserve_funds")
    assert reserve.attempts == registry.get(BUDGET_APPROVAL).steps[2].retry.max_attempts
    assert "InjectedFailure" in reserve.error
    assert_invariants(saga)
