"""The four corporate sagas end to end: a real prefork worker, the real broker, the test database.

Every saga's success path, then a failure at every step position of every
saga (driven by its input or reference data, by a person's rejection at a
gate, or by failure injection where no business rule can refuse that step),
each compensation chain checked against the business invariants: before a
pivot in the latest versions, and after it in the versions without one
(still registered for the sagas started on them). Past a pivot a failure
pauses the saga instead: an order whose confirmation bounces, a hire with no
desk or laptop model free, each resumed or skipped by an operator. Gates are
answered as their owners would: a user holding the gate's permission, or the
e-signature service calling the contract's token callback over the API.
"""
import time
from decimal import Decimal

import pytest

from corporate import fixtures, invariants, models, services
from corporate.fixtures import Inputs
from corporate.sagas import BUDGET_APPROVAL, EMPLOYEE_ONBOARDING, ORDER_FULFILLMENT, SYSTEM_DEPLOYMENT
from corporate.workflows.employee_onboarding import PIVOT_VERSION
from sagas import InvalidTransition, cancel, complete_step, failure_injection, registry, resume, skip_step, start_saga
from sagas.engine import sweep
from sagas.models import FINAL_SAGA_STATUSES, EventKind, SagaStatus, StepRecord, StepStatus
from tests.helpers import corporate_approver, pass_gates, saga_user, wait_for_saga, wait_until

pytestmark = pytest.mark.integration


def assert_invariants(saga):
    for name, passed, detail in invariants.check_all(saga_ids=[saga.pk]):
        assert passed, f"{name}: {detail}"


@pytest.fixture
def approver(worker):
    return corporate_approver()


def waiting_at(saga, step: str) -> StepRecord:
    return wait_until(lambda: (r := StepRecord.objects.get(saga_id=saga.pk, name=step)).status == StepStatus.WAITING
                      and r, timeout=30)


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


def test_onboarding_succeeds_once_the_signature_service_calls_back(worker, approver):
    fixtures.pools(laptops=1, desks=1)
    saga = start_saga(EMPLOYEE_ONBOARDING, input=Inputs.onboarding(), version=PIVOT_VERSION)
    waiting_at(saga, "contract_signature")
    assert not models.LaptopAssignment.objects.exists()  # nothing provisioned before the signature
    saga = pass_gates(saga, by=approver)

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    employee = models.Employee.objects.get(saga_id=saga.id)
    assert employee.status == models.EmployeeStatus.ACTIVE
    assert employee.accounts.filter(active=True).count() == 2
    assert saga.results["provision_it"]["laptop"] == models.Laptop.objects.get().asset_tag
    assert saga.results["assign_desk"]["desk"] == models.Desk.objects.get().code
    assert employee.payroll.active
    assert saga.results["contract_signature"]["signed"] is True
    assert saga.events.get(kind=EventKind.STEP_SIGNALLED).detail["by"] == "token"
    assert_invariants(saga)


def test_budget_approval_succeeds_once_manager_and_executive_signal(worker, approver):
    department = fixtures.department(budget=100000)
    saga = start_saga(BUDGET_APPROVAL, input=Inputs.budget(department_=department, amount="25000"))
    waiting_at(saga, "manager_approval")
    department.refresh_from_db()
    assert department.reserved == 0  # nothing reserved before the manager approves
    saga = pass_gates(saga, by=approver)

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    department.refresh_from_db()
    assert department.reserved == Decimal("25000")
    request = models.BudgetRequest.objects.get(saga_id=saga.id)
    assert request.status == models.BudgetRequestStatus.APPROVED
    assert request.approvals.filter(revoked_at__isnull=True).count() == 2
    signallers = set(saga.events.filter(kind=EventKind.STEP_SIGNALLED).values_list("detail__by_user_id", flat=True))
    assert signallers == {approver.pk}
    assert_invariants(saga)


def test_budget_below_the_threshold_skips_the_executive(worker, approver):
    # Version 3: the step passes without a wait (SkipWait); version 5 skips it by its condition
    # (tests/integration/test_corporate_children.py).
    saga = pass_gates(start_saga(BUDGET_APPROVAL, input=Inputs.budget(amount="900"), version=3), by=approver)

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    assert saga.events.filter(kind=EventKind.STEP_SIGNALLED).count() == 1  # the manager's only
    skipped = saga.events.get(kind=EventKind.STEP_SUCCEEDED, step__name="executive_signoff")
    assert skipped.detail["wait_skipped"] is True
    assert_invariants(saga)


def test_deployment_succeeds_once_the_release_gate_is_opened(worker, approver):
    service = fixtures.service(live_version="1.4.0")
    saga = start_saga(SYSTEM_DEPLOYMENT, input=Inputs.deployment(service_=service, version="1.5.0"))
    waiting_at(saga, "release_gate")
    service.refresh_from_db()
    assert service.live_version == "1.4.0"  # not deployed before the gate opens
    saga = pass_gates(saga, by=approver)

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


def _budget(*, budget=100000, frozen=False, amount="20000", **extra):
    return lambda: Inputs.budget(department_=fixtures.department(budget=budget, frozen=frozen), amount=amount,
                                 **extra)


def _deployment(*, frozen=False, **extra):
    return lambda: Inputs.deployment(service_=fixtures.service(live_version="1.0.0", frozen=frozen),
                                     version="2.0.0", **extra)


# A gate is refused by a person: (step -> the reason given with fail_step or the declining callback).
REJECTED = {"manager_approval": "the manager rejected: not this quarter",
            "executive_signoff": "the executive refused to sign",
            "release_gate": "release stopped: freeze week",
            "contract_signature": "the candidate declined to sign"}

# The steps after a pivot are undone only in the versions without one (1 for orders, 3 for onboarding).
# Onboarding runs version 5 here (IT a step of its own); version 7's child saga is failed and undone in
# tests/integration/test_corporate_children.py.
FAILURES = [
    (ORDER_FULFILLMENT, "reserve_stock", lambda: Inputs.order(product_=fixtures.product(stock=1), quantity=2),
     "out of stock", None),
    (ORDER_FULFILLMENT, "charge_payment", _order(card_blocked=True), "card", None),
    (ORDER_FULFILLMENT, "schedule_shipment", lambda: Inputs.order(ship_to="AQ"), "no carrier", None),
    (ORDER_FULFILLMENT, "send_confirmation", _order(email_bounces=True), "rejected the confirmation", 1),
    (EMPLOYEE_ONBOARDING, "create_employee_record", _onboarding(), "injected permanent failure", 5),
    (EMPLOYEE_ONBOARDING, "create_employee_record", _onboarding(salary="150000"), "HR refused", 5),
    (EMPLOYEE_ONBOARDING, "contract_signature", _onboarding(), REJECTED["contract_signature"], 5),
    (EMPLOYEE_ONBOARDING, "provision_it", _onboarding(laptops=0), "no laptop left", 3),
    (EMPLOYEE_ONBOARDING, "setup_payroll", _onboarding(salary="150000"), "above the", 3),
    (EMPLOYEE_ONBOARDING, "assign_desk", _onboarding(desks=0), "no desk left", 3),
    (BUDGET_APPROVAL, "submit_request", _budget(frozen=True), "frozen", None),
    (BUDGET_APPROVAL, "manager_approval", _budget(), REJECTED["manager_approval"], None),
    (BUDGET_APPROVAL, "reserve_funds", _budget(budget=15000), "Finance refused", None),
    (BUDGET_APPROVAL, "executive_signoff", _budget(), REJECTED["executive_signoff"], None),
    (BUDGET_APPROVAL, "executive_signoff", _budget(budget=10**6, amount="300000"), "above the limit", None),
    (BUDGET_APPROVAL, "approve_request", _budget(), "injected permanent failure", None),
    (SYSTEM_DEPLOYMENT, "build", _deployment(), "injected permanent failure", None),
    (SYSTEM_DEPLOYMENT, "test", _deployment(tests_pass=False), "tests failed", None),
    (SYSTEM_DEPLOYMENT, "release_gate", _deployment(), REJECTED["release_gate"], None),
    (SYSTEM_DEPLOYMENT, "deploy", _deployment(frozen=True), "change freeze", None),
    (SYSTEM_DEPLOYMENT, "monitor", _deployment(healthy=False), "health check failed", None),
]


@pytest.mark.parametrize("saga_type, failing, prepare, error, version", FAILURES,
                         ids=[f"{t.split('.')[1]}-{s}-{e.split()[-1]}" + (f"-v{v}" if v else "")
                              for t, s, _, e, v in FAILURES])
def test_failure_at_each_step_compensates_the_steps_before_it(worker, inject, approver, saga_type, failing, prepare,
                                                              error, version):
    data = prepare()
    if error.startswith("injected"):
        inject(saga_type, failing, permanent=1.0)
    reject = {failing: error} if REJECTED.get(failing) == error else None
    saga = pass_gates(start_saga(saga_type, input=data, version=version), by=approver, reject=reject)

    assert saga.status == SagaStatus.COMPENSATED, saga.error
    assert error in saga.error
    definition = registry.get(saga_type, version)
    assert saga.version == definition.version
    names = [s.name for s in definition.steps]
    undoable = {s.name for s in definition.steps if s.compensation is not None}
    position = names.index(failing)
    steps = {s.name: s for s in saga.steps.all()}
    assert steps[failing].status in (StepStatus.FAILED, StepStatus.COMPENSATED) and steps[failing].attempts == 1
    if failing not in undoable:
        assert steps[failing].status == StepStatus.FAILED
    for name in names[:position]:
        # A gate only asked: nothing to undo, it stays succeeded (an event says so).
        assert steps[name].status == (StepStatus.COMPENSATED if name in undoable else StepStatus.SUCCEEDED), name
    for name in names[position + 1:]:
        assert steps[name].status == StepStatus.SKIPPED, name
    compensated = list(saga.events.filter(kind="step_compensated").values_list("step__name", flat=True))
    # Latest first; a refused gate whose action ran (the contract was sent) is undone too.
    expected = [n for n in reversed(names[:position + 1]) if n in undoable
                and (n != failing or steps[failing].status == StepStatus.COMPENSATED)]
    assert compensated == expected
    assert_invariants(saga)


@pytest.mark.parametrize("saga_type, prepare, gate", [
    (BUDGET_APPROVAL, _budget(), "manager_approval"),
    (SYSTEM_DEPLOYMENT, _deployment(), "release_gate"),
    (EMPLOYEE_ONBOARDING, _onboarding(), "contract_signature"),
])
def test_a_gate_whose_deadline_passes_compensates(worker, saga_type, prepare, gate):
    saga = start_saga(saga_type, input=prepare(), version=2)  # the rehearsal version: deadlines of seconds
    record = waiting_at(saga, gate)
    time.sleep(max(0.0, (record.signal_deadline - record.waiting_since).total_seconds()) + 0.3)

    assert sweep().waits_timed_out >= 1
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.COMPENSATED
    assert "SignalTimeout: no signal within" in saga.steps.get(name=gate).error
    assert not saga.events.filter(kind=EventKind.STEP_SIGNALLED).exists()
    assert_invariants(saga)


def test_executive_timeout_after_funds_were_reserved_releases_them(worker, approver):
    department = fixtures.department(budget=100000)
    saga = start_saga(BUDGET_APPROVAL, input=Inputs.budget(department_=department, amount="20000"), version=2)
    complete_step(saga, waiting_at(saga, "manager_approval").name, result={"approved": True}, by=approver)
    waiting_at(saga, "executive_signoff")
    department.refresh_from_db()
    assert department.reserved == Decimal("20000")
    time.sleep(3.3)

    sweep()
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.COMPENSATED
    department.refresh_from_db()
    assert department.reserved == 0
    assert_invariants(saga)


def test_a_user_without_the_gates_permission_cannot_pass_it(worker):
    from sagas import SignalNotAllowed

    clerk = corporate_approver("clerk", permissions=("approve_budget",))
    saga = start_saga(BUDGET_APPROVAL, input=Inputs.budget(amount="20000"))
    complete_step(saga, waiting_at(saga, "manager_approval").name, by=clerk)
    waiting_at(saga, "executive_signoff")

    with pytest.raises(SignalNotAllowed):
        complete_step(saga, "executive_signoff", by=clerk)
    assert StepRecord.objects.get(saga_id=saga.pk, name="executive_signoff").status == StepStatus.WAITING


def test_unhealthy_release_puts_the_previous_version_back_live(worker, approver):
    service = fixtures.service(live_version="1.0.0")
    saga = pass_gates(start_saga(SYSTEM_DEPLOYMENT, input=Inputs.deployment(service_=service, version="2.0.0",
                                                                             healthy=False)), by=approver)
    assert saga.status == SagaStatus.COMPENSATED
    service.refresh_from_db()
    assert service.live_version == "1.0.0"


def test_injected_transient_failures_are_retried_by_the_step_policy(worker, inject, approver):
    inject(BUDGET_APPROVAL, "reserve_funds", transient=1.0)
    saga = pass_gates(start_saga(BUDGET_APPROVAL, input=Inputs.budget()), by=approver)

    assert saga.status == SagaStatus.COMPENSATED
    reserve = saga.steps.get(name="reserve_funds")
    assert reserve.attempts == registry.get(BUDGET_APPROVAL).steps[2].retry.max_attempts
    assert "InjectedFailure" in reserve.error
    assert_invariants(saga)


# --- past the pivot: paused for a person, resumed or skipped ---------------------------------


PAUSED_OR_FINISHED = (SagaStatus.PAUSED, *FINAL_SAGA_STATUSES)


@pytest.fixture
def operator(worker):
    return saga_user("operator")


def step_statuses(saga) -> dict:
    return dict(saga.steps.values_list("name", "status"))


def test_an_order_whose_confirmation_bounces_pauses_holding_its_charge_and_shipment_then_resumes(worker, operator):
    customer = fixtures.customer(email_bounces=True)
    product = fixtures.product(stock=5, price="12.50")
    saga = wait_for_saga(start_saga(ORDER_FULFILLMENT, input=Inputs.order(customer_=customer, product_=product,
                                                                          quantity=2)), statuses=PAUSED_OR_FINISHED)

    assert (saga.status, saga.pause_cause, saga.version) == (SagaStatus.PAUSED, "after_pivot", 2), saga.error
    assert step_statuses(saga) == {"reserve_stock": "succeeded", "charge_payment": "succeeded",
                                   "schedule_shipment": "succeeded", "send_confirmation": "failed"}
    assert saga.steps.get(name="send_confirmation").attempts == 1  # a bounce is for good: not retried
    order = models.Order.objects.get(saga_id=saga.id)
    assert list(order.payments.values_list("amount", flat=True)) == [Decimal("25.00")]
    assert not models.Refund.objects.exists()
    assert order.shipment.status == models.ShipmentStatus.SCHEDULED and order.stock_released_at is None
    assert invariants.paused_orders_hold_charge_and_shipment([saga.pk]).detail == "1 orders paused past the pivot"
    assert_invariants(saga)
    with pytest.raises(InvalidTransition, match="past its pivot"):
        cancel(saga, by=operator)

    services.customer_email_correct(customer=customer, email="fixed@example.com")
    saga = wait_for_saga(resume(saga, by=operator))

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    order.refresh_from_db()
    assert order.status == models.OrderStatus.CONFIRMED
    assert order.notifications.get().recipient == "fixed@example.com"
    assert order.payments.count() == 1 and not models.Refund.objects.exists()
    assert saga.steps.get(name="send_confirmation").attempts == 2
    assert saga.events.get(kind=EventKind.SAGA_RESUMED, detail__phase="person").detail["by"] == operator.username
    assert_invariants(saga)


def test_a_paused_order_confirmed_by_phone_is_skipped_and_ends_with_the_persons_result(worker, operator):
    saga = wait_for_saga(start_saga(ORDER_FULFILLMENT, input=_order(email_bounces=True)()),
                         statuses=PAUSED_OR_FINISHED)
    assert saga.status == SagaStatus.PAUSED, saga.error
    by_hand = {"confirmed_by": "phone", "notification": None}

    skip_step(saga, "send_confirmation", result=by_hand, reason="the address bounces: phoned the customer",
              by=operator)
    saga = wait_for_saga(saga)

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    assert saga.results["send_confirmation"] == by_hand
    assert step_statuses(saga)["send_confirmation"] == StepStatus.SKIPPED
    skipped = saga.events.get(kind=EventKind.STEP_SKIPPED)
    assert (skipped.detail["result"], skipped.detail["by"]) == (by_hand, operator.username)
    order = models.Order.objects.get(saga_id=saga.id)
    assert order.status == models.OrderStatus.SHIPPING and not order.notifications.exists()
    assert order.payments.count() == 1 and order.shipment.status == models.ShipmentStatus.SCHEDULED
    assert invariants.skipped_steps_hold_the_persons_result([saga.pk]).detail == "1 steps skipped"
    assert_invariants(saga)


@pytest.mark.parametrize("saga_type, version, prepare", [
    (ORDER_FULFILLMENT, 1, lambda: Inputs.order()),
    (EMPLOYEE_ONBOARDING, 3, _onboarding()),
])
def test_a_saga_started_on_the_version_before_its_pivot_runs_to_the_end_on_it(worker, approver, saga_type, version,
                                                                               prepare):
    saga = pass_gates(start_saga(saga_type, input=prepare(), version=version), by=approver)

    assert (saga.status, saga.version) == (SagaStatus.SUCCEEDED, version), saga.error
    assert registry.get(saga_type).version > version  # a newer one is the default meanwhile
    assert_invariants(saga)


def test_an_onboarding_with_no_desk_free_after_the_signed_contract_pauses_and_resumes_once_one_is_freed(
        worker, approver, operator):
    fixtures.pools(laptops=2, desks=1)
    department = fixtures.department()
    first = pass_gates(start_saga(EMPLOYEE_ONBOARDING, input=Inputs.onboarding(department_=department),
                                  version=PIVOT_VERSION), by=approver)
    assert first.status == SagaStatus.SUCCEEDED, first.error

    saga = pass_gates(start_saga(EMPLOYEE_ONBOARDING, input=Inputs.onboarding(department_=department),
                                 version=PIVOT_VERSION), by=approver, statuses=PAUSED_OR_FINISHED)

    assert (saga.status, saga.pause_cause) == (SagaStatus.PAUSED, "after_pivot"), saga.error
    assert step_statuses(saga) == {"create_employee_record": "succeeded", "contract_signature": "succeeded",
                                   "provision_it": "succeeded", "setup_payroll": "succeeded",
                                   "assign_desk": "failed"}
    assert "no desk left" in saga.steps.get(name="assign_desk").error
    employee = models.Employee.objects.get(saga_id=saga.id)
    assert employee.status == models.EmployeeStatus.ONBOARDING  # kept, not withdrawn
    assert models.ContractRequest.objects.get(saga_id=saga.id).status == models.ContractStatus.SENT
    assert employee.accounts.filter(active=True).count() == 2 and employee.payroll.active
    assert employee.laptopassignments.filter(returned_at__isnull=True).count() == 1
    assert invariants.paused_onboardings_keep_the_hire([saga.pk]).detail == "1 onboardings paused past the pivot"
    assert_invariants(saga)

    services.desk_vacate(desk=models.Desk.objects.get())  # the first hire moves to another site
    saga = wait_for_saga(resume(saga, by=operator))

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    employee.refresh_from_db()
    assert employee.status == models.EmployeeStatus.ACTIVE
    assert saga.results["assign_desk"]["desk"] == models.Desk.objects.get().code
    assert saga.events.filter(kind=EventKind.STEP_RETRIED, step__name="assign_desk").count() == 1
    assert not saga.events.filter(kind=EventKind.STEP_COMPENSATED).exists()
    assert_invariants(saga)


def test_an_onboarding_whose_laptop_model_is_out_pauses_and_resumes_with_corrected_input(worker, approver, operator):
    fixtures.pools(laptops=1, desks=1)
    saga = pass_gates(start_saga(EMPLOYEE_ONBOARDING, input=Inputs.onboarding(laptop_model="MacBook Pro 16"),
                                 version=PIVOT_VERSION), by=approver, statuses=PAUSED_OR_FINISHED)

    assert saga.status == SagaStatus.PAUSED, saga.error
    assert "no MacBook Pro 16 laptop left" in saga.steps.get(name="provision_it").error
    assert not models.LaptopAssignment.objects.exists() and not models.Account.objects.exists()  # nothing half done

    saga = wait_for_saga(resume(saga, input={"laptop_model": ""}, by=operator))  # any model will do

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    assert saga.results["provision_it"]["laptop"] == models.Laptop.objects.get().asset_tag
    resumed = saga.events.get(kind=EventKind.SAGA_RESUMED, detail__phase="person")
    assert resumed.detail["changed_input"] == ["laptop_model"]
    assert_invariants(saga)
