"""Each corporate saga refuses bad input with field errors before anything is written or sent."""
import pytest

from corporate import fixtures
from corporate.fixtures import Inputs
from corporate.sagas import BUDGET_APPROVAL, EMPLOYEE_ONBOARDING, ORDER_FULFILLMENT, SYSTEM_DEPLOYMENT
from sagas import InvalidSagaInput, pause, resume, start_saga
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord

MISSING = 999999


@pytest.fixture
def sent(monkeypatch):
    from sagas import canvas

    messages = []
    monkeypatch.setattr(canvas, "dispatch_forward", lambda saga_id, index=0, **_: messages.append((saga_id, index)))
    return messages


def refused(saga_type, data, sent) -> dict:
    before = (SagaInstance.objects.count(), StepRecord.objects.count(), SagaEvent.objects.count())
    with pytest.raises(InvalidSagaInput) as caught:
        start_saga(saga_type, input=data)
    assert (SagaInstance.objects.count(), StepRecord.objects.count(), SagaEvent.objects.count()) == before
    assert sent == []
    return caught.value.errors


@pytest.mark.parametrize("change, field", [
    ({"quantity": 0}, "quantity"),
    ({"quantity": -3}, "quantity"),
    ({"customer": MISSING}, "customer"),
    ({"product": MISSING}, "product"),
    ({"ship_to": "germany"}, "ship_to"),
])
def test_order_with_bad_field_is_refused(db, sent, change, field):
    errors = refused(ORDER_FULFILLMENT, {**Inputs.order(), **change}, sent)
    assert list(errors) == [field]


def test_order_without_required_fields_names_each_of_them(db, sent):
    errors = refused(ORDER_FULFILLMENT, {}, sent)
    assert set(errors) == {"customer", "product", "quantity", "ship_to"}


@pytest.mark.parametrize("change, field", [
    ({"salary": "0"}, "salary"),
    ({"salary": "-100"}, "salary"),
    ({"salary": "lots"}, "salary"),
    ({"department": MISSING}, "department"),
    ({"email": "not-an-address"}, "email"),
])
def test_onboarding_with_bad_field_is_refused(db, sent, change, field):
    errors = refused(EMPLOYEE_ONBOARDING, {**Inputs.onboarding(), **change}, sent)
    assert list(errors) == [field]


def test_onboarding_of_an_existing_employee_is_refused(db, sent):
    from corporate.models import Employee

    data = Inputs.onboarding()
    Employee.objects.create(saga_id="00000000-0000-0000-0000-000000000001", name="Taken", email=data["email"],
                            department_id=data["department"], salary=1)
    errors = refused(EMPLOYEE_ONBOARDING, data, sent)
    assert "already exists" in errors["email"][0]


@pytest.mark.parametrize("change, field", [({"floor": 0}, "floor"), ({"floor": "top"}, "floor"),
                                           ({"laptop_model": "x" * 101}, "laptop_model")])
def test_onboarding_with_a_bad_floor_or_laptop_model_is_refused(db, sent, change, field):
    errors = refused(EMPLOYEE_ONBOARDING, {**Inputs.onboarding(), **change}, sent)
    assert list(errors) == [field]


def paused_onboarding_with_its_employee(data: dict) -> SagaInstance:
    """An onboarding paused after its HR step created the employee (the record its input names)."""
    from corporate.models import Employee

    saga = start_saga(EMPLOYEE_ONBOARDING, input=data)
    Employee.objects.create(saga_id=saga.pk, name=data["name"], email=data["email"],
                            department_id=data["department"], salary=1)
    return pause(saga, reason="no desk on the floor asked for")


def test_a_paused_onboarding_resumed_with_corrected_input_is_not_refused_for_its_own_employee(db, sent):
    saga = paused_onboarding_with_its_employee(Inputs.onboarding(floor=9))

    saga = resume(saga, input={"floor": None, "laptop_model": "ThinkPad T14"})

    assert saga.status == SagaStatus.PENDING
    assert (saga.input["floor"], saga.input["laptop_model"]) == (None, "ThinkPad T14")
    resumed = saga.events.get(kind=EventKind.SAGA_RESUMED, detail__phase="person")
    assert resumed.detail["changed_input"] == ["floor", "laptop_model"]


def test_a_paused_onboarding_resumed_with_bad_input_is_refused_and_stays_as_it_was(db, sent):
    saga = paused_onboarding_with_its_employee(Inputs.onboarding(floor=9))

    with pytest.raises(InvalidSagaInput) as caught:
        resume(saga, input={"floor": 0})

    assert list(caught.value.errors) == ["floor"]
    saga.refresh_from_db()
    assert saga.status == SagaStatus.PAUSED and saga.input["floor"] == 9


def test_a_new_onboarding_for_the_address_of_a_running_hire_is_still_refused(db, sent):
    saga = paused_onboarding_with_its_employee(Inputs.onboarding())
    resume(saga)
    errors = refused(EMPLOYEE_ONBOARDING, {**Inputs.onboarding(), "email": saga.input["email"]}, sent)
    assert "already exists" in errors["email"][0]


@pytest.mark.parametrize("change, field", [
    ({"amount": "0"}, "amount"),
    ({"amount": "-5"}, "amount"),
    ({"department": MISSING}, "department"),
    ({"purpose": ""}, "purpose"),
    ({"executive_threshold": "0"}, "executive_threshold"),
    ({"executive_threshold": "249999"}, "executive_threshold"),  # the department's, never the requester's
])
def test_budget_request_with_bad_field_is_refused(db, sent, change, field):
    errors = refused(BUDGET_APPROVAL, {**Inputs.budget(), **change}, sent)
    assert list(errors) == [field]


@pytest.mark.parametrize("change, field", [
    ({"service": MISSING}, "service"),
    ({"version": ""}, "version"),
    ({"version": "has spaces"}, "version"),
    ({"healthy": "perhaps"}, "healthy"),
])
def test_deployment_with_bad_field_is_refused(db, sent, change, field):
    errors = refused(SYSTEM_DEPLOYMENT, {**Inputs.deployment(), **change}, sent)
    assert list(errors) == [field]


def test_deployment_of_the_live_version_is_refused(db, sent):
    service = fixtures.service(live_version="3.1.0")
    errors = refused(SYSTEM_DEPLOYMENT, Inputs.deployment(service_=service, version="3.1.0"), sent)
    assert errors == {"version": ["3.1.0 is already live"]}


@pytest.mark.parametrize("saga_type, build", [
    (ORDER_FULFILLMENT, Inputs.order),
    (EMPLOYEE_ONBOARDING, Inputs.onboarding),
    (BUDGET_APPROVAL, Inputs.budget),
    (SYSTEM_DEPLOYMENT, Inputs.deployment),
])
def test_valid_input_starts_the_saga(db, sent, django_capture_on_commit_callbacks, saga_type, build):
    with django_capture_on_commit_callbacks(execute=True):
        saga = start_saga(saga_type, input=build())
    assert SagaInstance.objects.filter(pk=saga.pk).exists()
    assert sent == [(saga.id, 0)]
