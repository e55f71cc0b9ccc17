"""The onboarding with IT's provisioning as a child saga, and the budget approval's executive condition, end to
end: a real prefork worker, the real broker, the test database.

Version 7 of the onboarding starts ``corporate.it_provisioning`` as a child before the contract goes out; the
contract declined (a failure after the child succeeded) undoes the child as a whole, its steps in reverse.
Version 5 of the budget approval asks for the executive only when its condition (``when=``) holds.
"""
import pytest

from corporate import fixtures, invariants, models
from corporate.fixtures import Inputs
from corporate.sagas import BUDGET_APPROVAL, EMPLOYEE_ONBOARDING, IT_PROVISIONING
from sagas import complete_step, start_saga
from sagas.models import EventKind, SagaInstance, SagaStatus, StepRecord, StepStatus
from tests.helpers import corporate_approver, pass_gates, wait_until

pytestmark = pytest.mark.integration

DECLINED = {"contract_signature": "the candidate declined to sign"}
PROVISIONING_STEPS = ["open_accounts", "assign_licences", "hand_out_laptop"]


@pytest.fixture
def approver(worker):
    return corporate_approver()


def assert_invariants(saga):
    for name, passed, detail in invariants.check_all(saga_ids=[saga.pk]):
        assert passed, f"{name}: {detail}"


def child_of(saga) -> SagaInstance:
    return SagaInstance.objects.get(parent_id=saga.pk)


def step_statuses(saga) -> dict:
    return dict(saga.steps.values_list("name", "status"))


# --- the onboarding and its child -----------------------------------------------------------


def test_onboarding_succeeds_with_its_it_provisioning_child_succeeded(worker, approver):
    fixtures.pools(laptops=1, desks=1)
    saga = pass_gates(start_saga(EMPLOYEE_ONBOARDING, input=Inputs.onboarding()), by=approver)

    assert (saga.status, saga.version) == (SagaStatus.SUCCEEDED, 7), saga.error
    child = child_of(saga)
    assert (child.saga_type, child.status, child.depth) == (IT_PROVISIONING, SagaStatus.SUCCEEDED, 1)
    assert child.parent_step.name == "provision_it" and child.parent_step.saga_id == saga.pk
    assert step_statuses(child) == dict.fromkeys(PROVISIONING_STEPS, StepStatus.SUCCEEDED)
    assert saga.results["provision_it"] == {"saga_id": str(child.pk), "results": child.results}
    laptop = models.Laptop.objects.get().asset_tag
    assert child.results["hand_out_laptop"] == {"laptop": laptop}
    employee = models.Employee.objects.get(saga_id=saga.id)
    assert employee.status == models.EmployeeStatus.ACTIVE
    assert employee.accounts.filter(active=True, holds_licence=True).count() == 2
    assert employee.laptopassignments.get(returned_at__isnull=True).laptop.asset_tag == laptop
    # The contract went out only once IT's child had succeeded.
    provisioned = saga.events.get(kind=EventKind.STEP_SUCCEEDED, step__name="provision_it")
    asked = saga.events.get(kind=EventKind.STEP_WAITING, step__name="contract_signature")
    assert (provisioned.created_at, provisioned.pk) < (asked.created_at, asked.pk)
    assert_invariants(saga)


def test_a_declined_contract_after_the_provisioning_succeeded_undoes_the_child_as_a_whole(worker, approver):
    fixtures.pools(laptops=1, desks=1)
    saga = pass_gates(start_saga(EMPLOYEE_ONBOARDING, input=Inputs.onboarding()), by=approver, reject=DECLINED)

    assert saga.status == SagaStatus.COMPENSATED, saga.error
    assert step_statuses(saga) == {"create_employee_record": "compensated", "provision_it": "compensated",
                                   "contract_signature": "compensated", "setup_payroll": "skipped",
                                   "assign_desk": "skipped"}
    child = child_of(saga)
    assert child.status == SagaStatus.COMPENSATED
    # The child had succeeded; its parent's undoing moved it succeeded -> compensating -> compensated.
    trail = list(child.events.order_by("created_at", "pk").values_list("kind", flat=True))
    assert trail.index(EventKind.SAGA_SUCCEEDED) < trail.index(EventKind.SAGA_COMPENSATING)
    assert trail[-1] == EventKind.SAGA_COMPENSATED
    undone = list(child.events.filter(kind=EventKind.STEP_COMPENSATED).order_by("created_at", "pk")
                  .values_list("step__name", flat=True))
    assert undone == list(reversed(PROVISIONING_STEPS))
    # The parent's step was compensated once its child was; then the offer was withdrawn.
    parent_undone = list(saga.events.filter(kind=EventKind.STEP_COMPENSATED).order_by("created_at", "pk")
                         .values_list("step__name", flat=True))
    assert parent_undone == ["contract_signature", "provision_it", "create_employee_record"]
    employee = models.Employee.objects.get(saga_id=saga.id)
    assert employee.status == models.EmployeeStatus.WITHDRAWN
    assert not employee.accounts.filter(active=True).exists()
    assert not employee.accounts.filter(holds_licence=True).exists()
    assert not employee.laptopassignments.filter(returned_at__isnull=True).exists()
    assert_invariants(saga)
    assert invariants.compensated_onboardings_undo_their_provisioning([saga.pk]).detail == (
        "1 compensated onboardings, 1 provisioning children")


def test_a_provisioning_child_that_finds_no_laptop_compensates_itself_and_the_offer_is_withdrawn(worker, approver):
    fixtures.pools(laptops=1, desks=1)
    saga = pass_gates(start_saga(EMPLOYEE_ONBOARDING, input=Inputs.onboarding(laptop_model="MacBook Pro 16")),
                      by=approver)

    assert saga.status == SagaStatus.COMPENSATED
    assert "no MacBook Pro 16 laptop left" in saga.steps.get(name="provision_it").error
    assert step_statuses(saga)["provision_it"] == StepStatus.FAILED
    child = child_of(saga)
    assert child.status == SagaStatus.COMPENSATED
    assert step_statuses(child) == {"open_accounts": "compensated", "assign_licences": "compensated",
                                    "hand_out_laptop": "failed"}
    assert not models.ContractRequest.objects.filter(saga_id=saga.pk).exists()  # no contract went out
    assert not models.Account.objects.filter(active=True).exists()
    assert_invariants(saga)


# --- the budget approval's executive condition --------------------------------------------------


def test_budget_above_the_threshold_waits_for_the_executive(worker, approver):
    department = fixtures.department(budget=100000)
    saga = start_saga(BUDGET_APPROVAL, input=Inputs.budget(department_=department, amount="20000"))
    assert saga.version == 5
    manager = wait_until(lambda: (r := StepRecord.objects.get(saga_id=saga.pk, name="manager_approval"))
                         .status == StepStatus.WAITING and r, timeout=30)
    complete_step(saga.pk, manager.name, result={"approved": True, "comment": "ok"}, by=approver)
    executive = wait_until(lambda: (r := StepRecord.objects.get(saga_id=saga.pk, name="executive_signoff"))
                           .status == StepStatus.WAITING and r, timeout=30)
    assert executive.result == {"executive_required": True, "asked": "chief financial officer"}

    saga = pass_gates(saga, by=approver)

    assert saga.status == SagaStatus.SUCCEEDED, saga.error
    assert not saga.events.filter(kind=EventKind.STEP_SKIPPED).exists()
    request = models.BudgetRequest.objects.get(saga_id=saga.pk)
    assert sorted(request.approvals.values_list("level", flat=True)) == ["executive", "manager"]
    assert saga.results["approve_request"] == {"approved": True, "executive_required": True}
    assert_invariants(saga)


def test_budget_at_or_below_the_threshold_skips_the_executive_by_its_condition(worker, approver):
    saga = pass_gates(start_saga(BUDGET_APPROVAL, input=Inputs.budget(amount="900")), by=approver)

    assert (saga.status, saga.version) == (SagaStatus.SUCCEEDED, 5), saga.error
    executive = saga.steps.get(name="executive_signoff")
    assert (executive.status, executive.attempts, executive.result) == (StepStatus.SKIPPED, 0, None)
    assert saga.events.get(kind=EventKind.STEP_SKIPPED).detail["reason"] == "condition false"
    assert saga.events.filter(kind=EventKind.STEP_SIGNALLED).count() == 1  # the manager's only
    assert "executive_signoff" not in saga.results
    assert saga.results["approve_request"] == {"approved": True, "executive_required": False}
    request = models.BudgetRequest.objects.get(saga_id=saga.pk)
    assert list(request.approvals.values_list("level", flat=True)) == ["manager"]
    assert_invariants(saga)
