"""The corporate steps and compensations called directly, without the engine or a worker.

A small driver runs a saga's actions in order and its compensations in
reverse, the way the engine would, so each test can look at the rows between
the two and check that every compensation is idempotent. A gate (a waiting
step) takes the signal's result the test gives it, merged over its action's
output as the engine merges them; ``SkipWait`` passes without one, and so
does a step whose condition (``when=``) is false. A ``ChildSaga`` step runs
its child saga the same way, to the end, and its compensation compensates
the child as a whole. A run takes the latest version of its saga unless
given another.
"""
import secrets
import uuid
from decimal import Decimal

import pytest
from django.forms.models import model_to_dict

from corporate import fixtures, invariants, models, services
from corporate.fixtures import Inputs
from corporate.sagas import (
    BUDGET_APPROVAL,
    EMPLOYEE_ONBOARDING,
    GATED_TYPES,
    IT_PROVISIONING,
    ORDER_FULFILLMENT,
    REHEARSAL_VERSIONS,
    SYSTEM_DEPLOYMENT,
)
from corporate.workflows.common import FORWARD_RETRY, STEP_RETRY
from corporate.workflows.order_fulfillment import PaymentGatewayTimeout
from corporate.workflows.employee_onboarding import PIVOT_VERSION
from sagas import ChildSaga, PermanentError, SkipWait, registry
from sagas.definitions import StepContext

APPROVED = {"approved": True, "comment": "fine"}
DOMAIN_MODELS = [
    models.Product, models.Order, models.Payment, models.Refund, models.Shipment, models.Notification,
    models.Employee, models.Account, models.LaptopAssignment, models.DeskAssignment, models.PayrollRecord,
    models.ContractRequest, models.SignatureEnvelope,
    models.Department, models.BudgetRequest, models.Approval, models.FundReservation,
    models.Service, models.Build, models.TestRun, models.Deployment, models.HealthCheck,
]


class Run:
    """One saga instance driven by hand: ``forward()`` then ``compensate()``."""

    def __init__(self, saga_type: str, data: dict, signals: dict | None = None, version: int | None = None):
        self.definition = registry.get(saga_type, version)
        self.saga_id = uuid.uuid4()
        self.input = data
        self.results: dict = {}
        self.signals = signals or {}  # gate -> the signal's result (default: approved)
        self.skipped: set[str] = set()
        self.children: dict[str, "Run"] = {}  # ChildSaga step -> the child's run

    def _ctx(self, step, *, attempt=1, compensation=False) -> StepContext:
        before = {s.name for s in self.definition.steps[:self.definition.steps.index(step)]}
        return StepContext(
            saga_id=self.saga_id, saga_type=self.definition.name, input=self.input,
            results={k: v for k, v in self.results.items() if k in before}, step=step.name, attempt=attempt,
            idempotency_key=f"{self.saga_id}:{step.name}" + (":compensation" if compensation else ""),
            result=self.results.get(step.name) if compensation else None, is_compensation=compensation,
            signal_token=secrets.token_urlsafe(16) if step.wait_for_signal and not compensation else None,
        )

    def step(self, name: str, *, attempt: int = 1):
        step = next(s for s in self.definition.steps if s.name == name)
        ctx = self._ctx(step, attempt=attempt)
        if step.when is not None and not step.when(ctx):
            self.skipped.add(name)  # never run, never compensated: no result
            return None
        if isinstance(step, ChildSaga):
            child = self.children[name] = Run(step.saga_type, step.input(ctx), version=step.version).forward()
            output = self.results[name] = {"saga_id": str(child.saga_id), "results": child.results}
            return output
        output = step.action(ctx)
        if isinstance(output, SkipWait):
            self.skipped.add(name)
            output = output.result
        elif step.wait_for_signal:
            output = {**(output or {}), **self.signals.get(name, APPROVED)}
        self.results[name] = output
        return output

    def forward(self, upto: int | None = None) -> "Run":
        for step in self.definition.steps[:upto]:
            self.step(step.name)
        return self

    def compensate(self) -> None:
        for step in reversed(self.definition.steps):
            if step.name in self.children:
                self.children[step.name].compensate()
            elif step.name in self.results and step.compensation is not None:
                step.compensation(self._ctx(step, compensation=True))


def onboarding_v5(data: dict, signals: dict | None = None) -> Run:
    """An onboarding on version 5: IT is a step of its own, after the signature (the pivot)."""
    return Run(EMPLOYEE_ONBOARDING, data, signals, version=PIVOT_VERSION)


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
    run = onboarding_v5(Inputs.onboarding()).forward()

    employee = models.Employee.objects.get(saga_id=run.saga_id)
    assert employee.status == models.EmployeeStatus.ACTIVE
    assert employee.accounts.filter(active=True, holds_licence=True).count() == 2
    assert employee.laptopassignments.get().returned_at is None
    assert employee.deskassignments.get().returned_at is None
    assert employee.payroll.active
    assert_global_invariants_hold()


def test_onboarding_compensations_disable_accounts_and_return_assets_once(db):
    fixtures.pools(laptops=1, desks=1)
    run = Run(EMPLOYEE_ONBOARDING, Inputs.onboarding(), version=3).forward()  # no pivot: all of it undoable

    compensate_twice(run)

    employee = models.Employee.objects.get(saga_id=run.saga_id)
    assert employee.status == models.EmployeeStatus.WITHDRAWN
    assert not employee.accounts.filter(active=True).exists()
    assert not employee.accounts.filter(holds_licence=True).exists()
    assert not employee.laptopassignments.filter(returned_at__isnull=True).exists()
    assert not employee.deskassignments.filter(returned_at__isnull=True).exists()
    assert not employee.payroll.active
    # The laptop and the desk are free for the next hire.
    Run(EMPLOYEE_ONBOARDING, Inputs.onboarding(), version=3).forward()


def test_onboarding_sends_the_contract_with_the_wait_token_to_the_signature_service_only(db):
    fixtures.pools(laptops=1, desks=1)
    run = onboarding_v5(Inputs.onboarding()).forward(upto=2)

    contract = models.ContractRequest.objects.get(saga_id=run.saga_id)
    envelope = models.SignatureEnvelope.objects.get()
    assert contract.envelope_id == envelope.envelope_id == run.results["contract_signature"]["contract"]
    assert envelope.callback_url.startswith("/api/signals/") and envelope.callback_url.endswith("/complete/")
    token = envelope.callback_url.split("/")[-3]
    assert token not in str(model_to_dict(contract)) and token not in str(run.results)


def test_a_compensated_onboarding_voids_the_contract_once(db):
    fixtures.pools(laptops=1, desks=1)
    run = onboarding_v5(Inputs.onboarding()).forward(upto=2)

    compensate_twice(run)

    assert models.ContractRequest.objects.get(saga_id=run.saga_id).status == models.ContractStatus.VOIDED
    assert models.SignatureEnvelope.objects.get().status == models.ContractStatus.VOIDED
    assert_global_invariants_hold()


def test_it_provisions_nothing_for_an_unsigned_contract(db):
    fixtures.pools(laptops=1, desks=1)
    run = onboarding_v5(Inputs.onboarding(), signals={"contract_signature": {"signed": False}})
    run.forward(upto=2)
    with pytest.raises(PermanentError, match="not signed"):
        run.step("provision_it")
    assert not models.LaptopAssignment.objects.exists()


def test_two_hires_never_share_a_laptop_and_the_pool_runs_out(db):
    fixtures.pools(laptops=1, desks=2)
    department = fixtures.department()
    onboarding_v5(Inputs.onboarding(department_=department)).forward()
    second = onboarding_v5(Inputs.onboarding(department_=department)).forward(upto=2)

    with pytest.raises(PermanentError, match="no laptop left"):
        second.step("provision_it")
    assert models.LaptopAssignment.objects.count() == 1
    assert models.Account.objects.count() == 2  # the refused step left no half-provisioned accounts


def test_payroll_refuses_salary_above_the_band_in_version_3(db):
    fixtures.pools()
    run = Run(EMPLOYEE_ONBOARDING, Inputs.onboarding(department_=fixtures.department(salary_cap=50000),
                                                     salary="90000"), version=3).forward(upto=3)
    with pytest.raises(PermanentError, match="Finance refused: salary 90000.00 is above the .* band"):
        run.step("setup_payroll")


def test_hr_refuses_a_salary_above_the_band_before_any_contract_goes_out(db):
    before = snapshot()
    run = onboarding_v5(Inputs.onboarding(department_=fixtures.department(salary_cap=50000),
                                                     salary="90000"))
    with pytest.raises(PermanentError, match="HR refused: salary 90000.00 is above the .* band"):
        run.step("create_employee_record")
    after = snapshot()
    assert after["Employee"] == before["Employee"] and after["ContractRequest"] == []


def test_it_hands_out_the_laptop_model_asked_for_and_refuses_when_none_is_free(db):
    fixtures.pools(laptops=2, desks=2)
    services.laptops_add(count=1, prefix="MAC", model="MacBook Pro 16")
    run = onboarding_v5(Inputs.onboarding(laptop_model="MacBook Pro 16")).forward(upto=3)
    assert run.results["provision_it"]["laptop"] == "MAC-00001"

    second = onboarding_v5(Inputs.onboarding(laptop_model="MacBook Pro 16")).forward(upto=2)
    with pytest.raises(PermanentError, match="no MacBook Pro 16 laptop left in the pool"):
        second.step("provision_it")
    assert onboarding_v5(Inputs.onboarding()).forward(upto=3).results["provision_it"]["laptop"] != \
        "MAC-00001"  # any model: one of the others


def test_facilities_assigns_a_desk_on_the_floor_asked_for_and_refuses_when_none_is_free(db):
    fixtures.pools(laptops=2, desks=2)
    models.Desk.objects.filter(code="D-00002").update(floor=7)
    run = onboarding_v5(Inputs.onboarding(floor=7)).forward()
    assert run.results["assign_desk"]["desk"] == "D-00002"

    second = onboarding_v5(Inputs.onboarding(floor=7)).forward(upto=4)
    with pytest.raises(PermanentError, match="no desk left on floor 7"):
        second.step("assign_desk")


def test_onboarding_version_7_provisions_it_through_its_child_and_undoes_it_as_a_whole(db):
    fixtures.pools(laptops=1, desks=1)
    run = Run(EMPLOYEE_ONBOARDING, Inputs.onboarding()).forward(upto=3)  # past the child, the contract sent
    employee = models.Employee.objects.get(saga_id=run.saga_id)
    child = run.children["provision_it"]
    assert run.results["provision_it"] == {"saga_id": str(child.saga_id), "results": child.results}
    assert child.results["open_accounts"]["accounts"] == list(employee.accounts.values_list("pk", flat=True))
    assert employee.accounts.filter(active=True, holds_licence=True).count() == 2
    assert employee.laptopassignments.get().returned_at is None

    compensate_twice(run)  # the contract declined: the child compensated in reverse, then the offer withdrawn

    employee.refresh_from_db()
    assert employee.status == models.EmployeeStatus.WITHDRAWN
    assert not employee.accounts.filter(active=True).exists()
    assert not employee.accounts.filter(holds_licence=True).exists()
    assert not employee.laptopassignments.filter(returned_at__isnull=True).exists()
    assert models.ContractRequest.objects.get(saga_id=run.saga_id).status == models.ContractStatus.VOIDED


def test_it_provisioning_refuses_when_no_laptop_of_the_model_is_free_and_undoes_its_accounts(db):
    fixtures.pools(laptops=1, desks=1)
    hire = Run(EMPLOYEE_ONBOARDING, Inputs.onboarding(laptop_model="MacBook Pro 16"))
    hire.step("create_employee_record")
    employee = models.Employee.objects.get(saga_id=hire.saga_id)
    child = Run(IT_PROVISIONING, {"employee": employee.pk, "laptop_model": "MacBook Pro 16"}).forward(upto=2)

    with pytest.raises(PermanentError, match="no MacBook Pro 16 laptop left in the pool"):
        child.step("hand_out_laptop")
    compensate_twice(child)

    assert not employee.accounts.filter(active=True).exists()
    assert not employee.accounts.filter(holds_licence=True).exists()
    assert not models.LaptopAssignment.objects.exists()


def test_it_provisioning_input_names_an_employee_whose_offer_stands(db):
    serializer = registry.get(IT_PROVISIONING).input_schema
    assert not serializer(data={"employee": 10**6}).is_valid()
    hire = Run(EMPLOYEE_ONBOARDING, Inputs.onboarding())
    hire.step("create_employee_record")
    employee = models.Employee.objects.get(saga_id=hire.saga_id)
    assert serializer(data={"employee": employee.pk, "laptop_model": ""}).is_valid()
    models.Employee.objects.filter(pk=employee.pk).update(status=models.EmployeeStatus.WITHDRAWN)
    refused = serializer(data={"employee": employee.pk})
    assert not refused.is_valid() and "withdrawn" in str(refused.errors["employee"])


def test_facilities_refuses_when_no_desk_is_free(db):
    fixtures.pools(laptops=1, desks=0)
    run = onboarding_v5(Inputs.onboarding()).forward(upto=4)
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
    assert request.approvals.get(level="executive").comment == "fine"
    assert run.results["executive_signoff"]["executive_required"] is True
    assert run.skipped == set()
    assert_global_invariants_hold()


def test_budget_below_threshold_needs_no_executive(db):
    run = Run(BUDGET_APPROVAL, Inputs.budget(amount="900")).forward()
    assert "executive_signoff" not in run.results  # its condition was false: it never ran
    assert run.skipped == {"executive_signoff"}  # no wait: nobody signs
    assert run.results["approve_request"] == {"approved": True, "executive_required": False}
    request = models.BudgetRequest.objects.get(saga_id=run.saga_id)
    assert list(request.approvals.values_list("level", flat=True)) == ["manager"]


def test_executive_refuses_above_the_limit_before_anyone_is_asked(db):
    run = Run(BUDGET_APPROVAL, Inputs.budget(department_=fixtures.department(budget=10**6),
                                             amount="300000")).forward(upto=3)
    with pytest.raises(PermanentError, match="executive refused"):
        run.step("executive_signoff")


@pytest.mark.parametrize("gate, acting_step, who", [
    ("manager_approval", "reserve_funds", "the manager"),
    ("executive_signoff", "approve_request", "the executive"),
])
def test_a_gate_completed_with_approved_false_is_a_rejection(db, gate, acting_step, who):
    department = fixtures.department(budget=50000)
    run = Run(BUDGET_APPROVAL, Inputs.budget(department_=department, amount="20000"),
              signals={gate: {"approved": False, "comment": "not this year"}})
    names = [s.name for s in run.definition.steps]
    run.forward(upto=names.index(acting_step))
    with pytest.raises(PermanentError, match=f"{who} rejected it: not this year"):
        run.step(acting_step)


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


def test_a_compensated_gate_holds_no_funds_and_no_approval(db):
    department = fixtures.department(budget=50000)
    run = Run(BUDGET_APPROVAL, Inputs.budget(department_=department, amount="20000")).forward(upto=4)
    # The executive's wait times out (or is rejected, or the saga is cancelled): the engine compensates.
    compensate_twice(run)

    department.refresh_from_db()
    assert department.reserved == 0
    request = models.BudgetRequest.objects.get(saga_id=run.saga_id)
    assert request.status == models.BudgetRequestStatus.WITHDRAWN
    assert not request.approvals.filter(revoked_at__isnull=True).exists()


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
    run = Run(SYSTEM_DEPLOYMENT, Inputs.deployment(service_=service, version="1.1.0", healthy=False)).forward(upto=4)
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
    Run(SYSTEM_DEPLOYMENT, Inputs.deployment(service_=service, version="2.0.0")).forward(upto=4)
    second = Run(SYSTEM_DEPLOYMENT, Inputs.deployment(service_=service, version="3.0.0")).forward(upto=3)
    with pytest.raises(PermanentError, match="still being verified"):
        second.step("deploy")


def test_a_release_stopped_at_the_gate_deploys_nothing(db):
    service = fixtures.service(live_version="1.0.0")
    run = Run(SYSTEM_DEPLOYMENT, Inputs.deployment(service_=service, version="1.1.0"),
              signals={"release_gate": {"approved": False, "comment": "release freeze week"}}).forward(upto=3)
    assert run.results["release_gate"]["artifact"].endswith(":1.1.0")
    with pytest.raises(PermanentError, match="release manager rejected it: release freeze week"):
        run.step("deploy")
    compensate_twice(run)
    service.refresh_from_db()
    assert service.live_version == "1.0.0" and not models.Deployment.objects.exists()
    assert models.Build.objects.get().status == models.BuildStatus.DISCARDED


def test_failing_tests_stop_the_release(db):
    run = Run(SYSTEM_DEPLOYMENT, Inputs.deployment(tests_pass=False)).forward(upto=1)
    with pytest.raises(PermanentError, match="tests failed"):
        run.step("test")


def test_every_corporate_step_but_the_observers_the_askers_and_those_past_a_pivot_has_a_compensation(db):
    observers_and_askers = {(ORDER_FULFILLMENT, "send_confirmation"), (SYSTEM_DEPLOYMENT, "monitor"),
                            (BUDGET_APPROVAL, "manager_approval"), (BUDGET_APPROVAL, "executive_signoff"),
                            (SYSTEM_DEPLOYMENT, "release_gate")}
    for saga in (s for s in registry if s.name.startswith("corporate.")):
        # A ChildSaga step is undone by undoing its child (``has_compensation``), not by a function.
        without = {(saga.name, st.name) for st in saga.steps if not st.has_compensation}
        after = {(saga.name, st.name) for i, st in enumerate(saga.steps) if saga.after_pivot(i)}
        assert without == after | {p for p in observers_and_askers if p[0] == saga.name}, saga.key


def test_order_version_2_ships_as_its_pivot_and_only_retries_the_confirmation(db):
    latest, first = registry.get(ORDER_FULFILLMENT), registry.get(ORDER_FULFILLMENT, version=1)
    assert latest.version == 2
    assert latest.step_at(latest.pivot_index).name == "schedule_shipment"
    confirmation = latest.steps[-1]
    assert confirmation.compensation is None and confirmation.retry == FORWARD_RETRY
    assert confirmation.retry.max_attempts >= 10 and confirmation.retry.max_backoff > STEP_RETRY.max_backoff
    # Version 1 stays registered, unchanged, for the orders started on it.
    assert first.pivot_index is None and first.steps[-1].retry == STEP_RETRY
    assert [s.name for s in first.steps] == [s.name for s in latest.steps]


def test_onboarding_version_5_signs_as_its_pivot_and_keeps_what_follows(db):
    v5 = registry.get(EMPLOYEE_ONBOARDING, version=PIVOT_VERSION)
    assert v5.step_at(v5.pivot_index).name == "contract_signature"
    after = [s for i, s in enumerate(v5.steps) if v5.after_pivot(i)]
    assert [s.name for s in after] == ["provision_it", "setup_payroll", "assign_desk"]
    assert all(s.compensation is None and s.retry == FORWARD_RETRY and s.transactional for s in after)
    assert registry.get(EMPLOYEE_ONBOARDING, version=4).pivot_index == v5.pivot_index  # its rehearsal
    # Versions 3 and 2 stay registered as they were: no pivot, every step after the contract undoable.
    for version in (3, 2):
        old = registry.get(EMPLOYEE_ONBOARDING, version=version)
        assert old.pivot_index is None
        assert all(s.compensation is not None for s in old.steps)


def test_onboarding_version_7_starts_it_provisioning_as_a_child_before_its_pivot(db):
    latest = registry.get(EMPLOYEE_ONBOARDING)
    assert latest.version == 7
    assert [s.name for s in latest.steps] == ["create_employee_record", "provision_it", "contract_signature",
                                               "setup_payroll", "assign_desk"]
    child = latest.steps[1]
    assert isinstance(child, ChildSaga) and child.saga_type == IT_PROVISIONING
    assert latest.step_at(latest.pivot_index).name == "contract_signature"
    assert not latest.after_pivot(1)  # undone as a whole with the onboarding, before the signature
    rehearsal = registry.get(EMPLOYEE_ONBOARDING, version=REHEARSAL_VERSIONS[EMPLOYEE_ONBOARDING])
    assert rehearsal.version == 6 and [s.name for s in rehearsal.steps] == [s.name for s in latest.steps]


def test_budget_version_5_asks_for_the_executive_with_a_condition_and_version_3_with_skipwait(db):
    latest, v3 = registry.get(BUDGET_APPROVAL), registry.get(BUDGET_APPROVAL, version=3)
    assert latest.version == 5 and REHEARSAL_VERSIONS[BUDGET_APPROVAL] == 4
    executive = next(s for s in latest.steps if s.name == "executive_signoff")
    assert executive.when is not None and executive.wait_for_signal
    assert next(s for s in v3.steps if s.name == "executive_signoff").when is None
    for version in (2, 3):  # SkipWait, unchanged, for the requests started on them
        run = Run(BUDGET_APPROVAL, Inputs.budget(amount="900"), version=version).forward()
        assert run.skipped == {"executive_signoff"}
        assert run.results["executive_signoff"] == {"executive_required": False}
        assert run.results["approve_request"] == {"approved": True, "executive_required": False}


@pytest.mark.parametrize("saga_type, gates", [
    (BUDGET_APPROVAL, {"manager_approval": "corporate.approve_budget",
                       "executive_signoff": "corporate.sign_off_budget"}),
    (SYSTEM_DEPLOYMENT, {"release_gate": "corporate.release_deploy"}),
    (EMPLOYEE_ONBOARDING, {"contract_signature": "corporate.record_signed_contract"}),
])
def test_gates_wait_with_a_permission_and_a_deadline_in_every_version(db, saga_type, gates):
    rehearsal = REHEARSAL_VERSIONS[saga_type]
    for version in sorted({None, 2, 3, rehearsal}, key=str):
        definition = registry.get(saga_type, version)
        waiting = {s.name: s for s in definition.steps if s.wait_for_signal}
        assert {name: s.signal_permission for name, s in waiting.items()} == gates
        assert all(s.signal_timeout for s in waiting.values())
    assert registry.get(saga_type).version == {EMPLOYEE_ONBOARDING: 7, BUDGET_APPROVAL: 5}.get(saga_type, 3)
    assert rehearsal < registry.get(saga_type).version  # start_saga runs the highest: never a rehearsal
    for version in (2, rehearsal):
        assert max(s.signal_timeout for s in registry.get(saga_type, version).steps if s.wait_for_signal) <= 10
    assert set(REHEARSAL_VERSIONS) == set(GATED_TYPES)


def test_the_executive_threshold_is_the_departments(db):
    department = fixtures.department()
    department.executive_threshold = "500"
    department.save()

    run = Run(BUDGET_APPROVAL, Inputs.budget(department_=department, amount="900")).forward()

    assert run.results["executive_signoff"]["executive_required"] is True
    assert run.skipped == set()
