"""corporate.employee_onboarding: HR -> IT (a child saga) -> signed contract (waits) -> Finance -> Facilities.

HR sends the contract to the e-signature service with the wait's one-time
callback (``ctx.signal_token``); the service calls
``POST /api/signals/{token}/complete/`` when the hire signs (``.../fail/``
when they decline). Up to version 5 nothing is provisioned before that. HR may also
record a contract signed on paper (``corporate.record_signed_contract``).

Laptops and desks come from limited pools. Picking one locks the pool's rows
(``select_for_update``; on SQLite the IMMEDIATE transaction does the same) so
two onboardings never take the same asset; the partial unique constraints on
open assignments back that up in the database. Every step here is local, so
each runs ``transactional``: its writes commit together with the step's
success, exactly once.

Version 7 (what ``start_saga`` runs; version 6 is its rehearsal, with a
contract deadline of seconds) hands IT's work to a saga of its own,
``corporate.it_provisioning`` (accounts, licence seats, a laptop), started as
a child saga before the contract goes out: the onboarding waits for it, and
undoing the onboarding before the signature (a declined or unanswered
contract) undoes the child as a whole. Past the signature it is as in
version 5.

Version 5 (version 4 its rehearsal) makes the signed contract its pivot: a hire
whose contract is signed is not undone because no laptop or desk is free.
HR checks the salary band before the contract goes out; IT, Finance and
Facilities come after the signature, are retried with growing waits, and
one that fails for good pauses the onboarding for a person (its effects and
the earlier steps' are kept): they fix the cause (free a laptop or a desk)
and resume, resume with corrected input (another laptop model, any floor),
or do the step by hand and skip it with its result. Version 5 also takes the
laptop model and the floor asked for. Versions 3 and 2 (no pivot: a refusal
after the signature withdraws the offer) stay registered for the onboardings
started on them.
"""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from rest_framework import serializers

from sagas import ChildSaga, PermanentError, Saga, Step
from sagas.models import SagaInstance, SagaStatus

from .. import esignature
from . import it_provisioning
from ..models import (
    Account,
    AccountSystem,
    ContractRequest,
    ContractStatus,
    Department,
    Desk,
    DeskAssignment,
    Employee,
    EmployeeStatus,
    Laptop,
    LaptopAssignment,
    PayrollRecord,
)
from .common import (
    COMPENSATION_RETRY,
    DAY,
    FORWARD_RETRY,
    REHEARSAL_DEADLINE,
    REHEARSAL_VERSION,
    STEP_RETRY,
    STEP_TIMEOUT,
    VERSION,
    free_asset,
    money,
    positive_amount_field,
    reference_field,
)

NAME = "corporate.employee_onboarding"
CONTRACT_PERMISSION = "corporate.record_signed_contract"
PIVOT_VERSION = 5  # the signed contract is the pivot
PIVOT_REHEARSAL_VERSION = 4  # the same flow with a contract deadline of seconds
CHILD_VERSION = 7  # IT's provisioning is a child saga, before the pivot; start_saga's default
CHILD_REHEARSAL_VERSION = 6  # the same flow with a contract deadline of seconds


class OnboardingInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    email = serializers.EmailField()
    department = serializers.PrimaryKeyRelatedField(queryset=Department.objects.all())
    salary = positive_amount_field()
    role = serializers.CharField(max_length=100, required=False, allow_blank=True)
    reference = reference_field()

    def validate_email(self, value: str) -> str:
        # A person resuming a paused onboarding with corrected input has it checked again, address
        # included: the record its own HR step created is no clash. (A new start for that address is
        # still refused, by HR's step.)
        paused = SagaInstance.objects.filter(saga_type=NAME, status=SagaStatus.PAUSED).values("pk")
        if Employee.objects.filter(email__iexact=value).exclude(status=EmployeeStatus.WITHDRAWN).exclude(
                saga_id__in=paused).exists():
            raise serializers.ValidationError("an employee with this e-mail address already exists")
        return value


class PivotOnboardingInput(OnboardingInput):
    """Version 4 on: the laptop model and the floor the hiring manager asked for (any, when left out)."""

    laptop_model = serializers.CharField(max_length=100, required=False, allow_blank=True)
    floor = serializers.IntegerField(min_value=1, required=False, allow_null=True)


def _employee(ctx) -> Employee:
    return Employee.objects.get(pk=ctx.results["create_employee_record"]["employee"])


_free_asset = free_asset  # the shared helper (``corporate.workflows.common``), under its earlier name


# --- 1. HR creates the employee record -------------------------------------------------


def create_employee_record(ctx) -> dict:
    data = ctx.input
    email = data["email"]
    if Employee.objects.filter(email__iexact=email).exclude(status=EmployeeStatus.WITHDRAWN).exists():
        raise PermanentError(f"HR refused: {email} already belongs to an employee")
    employee = Employee.objects.create(
        saga_id=ctx.saga_id, name=data["name"], email=email, department_id=data["department"],
        role=data.get("role", ""), salary=money(data["salary"]),
    )
    return {"employee": employee.pk}


def create_employee_record_within_band(ctx) -> dict:
    """Version 4 on: the band is checked before the contract goes out; past the signature nothing is undone."""
    department = Department.objects.get(pk=ctx.input["department"])
    salary = money(ctx.input["salary"])
    if salary > department.salary_cap:
        raise PermanentError(f"HR refused: salary {salary} is above the {department.code} band "
                             f"({department.salary_cap})")
    return create_employee_record(ctx)


def withdraw_offer(ctx) -> None:
    with transaction.atomic():
        employee = Employee.objects.select_for_update().get(pk=ctx.result["employee"])
        if employee.status != EmployeeStatus.WITHDRAWN:
            employee.status = EmployeeStatus.WITHDRAWN
            employee.save(update_fields=["status"])


# --- 2. the hire signs the contract (another system answers: the saga waits) -----------


def send_contract(ctx) -> dict:
    """Send the contract for e-signature; the service gets the one-time callback, our row its reference."""
    employee = _employee(ctx)
    envelope_id = f"env-{str(ctx.saga_id).replace('-', '')[:12]}-{ctx.attempt}"
    with transaction.atomic():
        earlier = ContractRequest.objects.filter(saga_id=ctx.saga_id).exclude(envelope_id=envelope_id).first()
        if earlier is not None:  # an earlier attempt's envelope: its token died with that attempt
            esignature.envelope_void(envelope_id=earlier.envelope_id)
        ContractRequest.objects.update_or_create(saga_id=ctx.saga_id, defaults={
            "employee": employee, "envelope_id": envelope_id, "status": ContractStatus.SENT})
        esignature.envelope_send(envelope_id=envelope_id, signer=employee.email,
                                 document=f"employment contract: {employee.name}, {employee.role}",
                                 callback=esignature.callback_url(ctx.signal_token))
    return {"contract": envelope_id, "sent_to": employee.email}


def void_contract(ctx) -> None:
    with transaction.atomic():
        ContractRequest.objects.filter(saga_id=ctx.saga_id).exclude(status=ContractStatus.VOIDED).update(
            status=ContractStatus.VOIDED, voided_at=timezone.now())
        esignature.envelope_void(envelope_id=ctx.result["contract"])


# --- 3. IT provisions accounts and a laptop --------------------------------------------


def provision_it(ctx) -> dict:
    if ctx.results["contract_signature"].get("signed") is False:
        raise PermanentError("IT refused: the contract is not signed")
    employee = _employee(ctx)
    model = ctx.input.get("laptop_model") or ""  # version 4 on; any model when none is named
    with transaction.atomic():
        laptop = _free_asset(Laptop, LaptopAssignment, "laptop", **({"model": model} if model else {}))
        if laptop is None:
            raise PermanentError(f"IT refused: no {model + ' ' if model else ''}laptop left in the pool")
        LaptopAssignment.objects.create(laptop=laptop, employee=employee)
        username = employee.email.split("@")[0].lower()
        accounts = [
            Account.objects.create(employee=employee, system=system, username=username)
            for system in (AccountSystem.EMAIL, AccountSystem.SSO)
        ]
    return {"laptop": laptop.asset_tag, "accounts": [a.pk for a in accounts]}


def deprovision_it(ctx) -> None:
    now = timezone.now()
    with transaction.atomic():
        for account in Account.objects.select_for_update().filter(pk__in=ctx.result["accounts"], active=True):
            account.active = False
            account.holds_licence = False  # the licence seat goes back to the pool
            account.disabled_at = now
            account.save(update_fields=["active", "holds_licence", "disabled_at"])
        LaptopAssignment.objects.filter(
            employee_id=ctx.results["create_employee_record"]["employee"],
            laptop__asset_tag=ctx.result["laptop"], returned_at__isnull=True,
        ).update(returned_at=now)


# --- 4. Finance sets up payroll --------------------------------------------------------


def setup_payroll(ctx) -> dict:
    employee = Employee.objects.select_related("department").get(pk=ctx.results["create_employee_record"]["employee"])
    if employee.salary > employee.department.salary_cap:
        raise PermanentError(
            f"Finance refused: salary {employee.salary} is above the {employee.department.code} band "
            f"({employee.department.salary_cap})"
        )
    record = PayrollRecord.objects.create(employee=employee, salary=employee.salary)
    return {"payroll": record.pk}


def close_payroll(ctx) -> None:
    with transaction.atomic():
        record = PayrollRecord.objects.select_for_update().get(pk=ctx.result["payroll"])
        if record.active:
            record.active = False
            record.closed_at = timezone.now()
            record.save(update_fields=["active", "closed_at"])


# --- 5. Facilities assigns a desk ------------------------------------------------------


def assign_desk(ctx) -> dict:
    employee = _employee(ctx)
    floor = ctx.input.get("floor")  # version 4 on; any floor when none is named
    with transaction.atomic():
        desk = _free_asset(Desk, DeskAssignment, "desk", **({"floor": floor} if floor else {}))
        if desk is None:
            raise PermanentError(f"Facilities refused: no desk left{f' on floor {floor}' if floor else ''}")
        DeskAssignment.objects.create(desk=desk, employee=employee)
        Employee.objects.filter(pk=employee.pk).update(status=EmployeeStatus.ACTIVE)
    return {"desk": desk.code}


def release_desk(ctx) -> None:
    employee_id = ctx.results["create_employee_record"]["employee"]
    with transaction.atomic():
        DeskAssignment.objects.filter(
            employee_id=employee_id, desk__code=ctx.result["desk"], returned_at__isnull=True
        ).update(returned_at=timezone.now())
        Employee.objects.filter(pk=employee_id, status=EmployeeStatus.ACTIVE).update(status=EmployeeStatus.ONBOARDING)


def build_saga(*, version: int, contract_deadline: float) -> Saga:
    """Versions 3 and 2: no pivot; a refusal after the signature undoes the whole hire."""
    return Saga(
        name=NAME,
        version=version,
        description="Hire someone: employee record, signed contract, IT accounts and laptop, payroll, a desk.",
        input_schema=OnboardingInput,
        rehearsal=version == REHEARSAL_VERSION,
        # Personal data: shown masked to whoever lacks sagas.view_sensitive_data.
        sensitive=("salary", "email", "sent_to"),
        steps=[
            Step("create_employee_record", create_employee_record, compensation=withdraw_offer, transactional=True,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 description="HR creates the employee record. Undo: mark the offer withdrawn."),
            Step("contract_signature", send_contract, compensation=void_contract,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 wait_for_signal=True, signal_timeout=contract_deadline, signal_permission=CONTRACT_PERMISSION,
                 description=f"Gate: HR sends the contract for e-signature and waits for the service's callback "
                             f"(the wait's token), or for {CONTRACT_PERMISSION} to record a paper signature. A "
                             f"declined or unsigned contract withdraws the offer. Undo: void the contract."),
            Step("provision_it", provision_it, compensation=deprovision_it, transactional=True,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 description="IT opens e-mail and SSO accounts (a licence seat each) and hands out a laptop from "
                             "the pool; refuses when the pool is empty. Undo: disable the accounts, free their "
                             "licences, take the laptop back."),
            Step("setup_payroll", setup_payroll, compensation=close_payroll, transactional=True,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 description="Finance opens a payroll record; refuses a salary above the department's band. "
                             "Undo: close the payroll record."),
            Step("assign_desk", assign_desk, compensation=release_desk, transactional=True,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 description="Facilities assigns a free desk and the employee becomes active; refuses when no "
                             "desk is free. Undo: free the desk."),
        ],
    )


KEPT = ("Past the pivot: retried with growing waits; a refusal pauses the onboarding for a person, who fixes the "
        "cause and resumes, or does it by hand and skips this step. Never undone (no compensation).")


def _hr_within_band() -> Step:
    return Step("create_employee_record", create_employee_record_within_band, compensation=withdraw_offer,
                transactional=True, retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                description="HR creates the employee record; refuses a salary above the department's band, before "
                            "any contract goes out. Undo: mark the offer withdrawn.")


def _signed_contract_pivot(contract_deadline: float) -> Step:
    return Step("contract_signature", send_contract, compensation=void_contract, pivot=True,
                retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                wait_for_signal=True, signal_timeout=contract_deadline, signal_permission=CONTRACT_PERMISSION,
                description=f"Gate and pivot: HR sends the contract for e-signature and waits for the service's "
                            f"callback (the wait's token), or for {CONTRACT_PERMISSION} to record a paper "
                            f"signature (complete it only for a signed contract). A declined contract (failed at "
                            f"the gate) or no answer in time withdraws the offer; once signed, the hire only goes "
                            f"forward. Undo, before the signature: void the contract.")


def _kept_payroll_and_desk() -> list[Step]:
    return [
        Step("setup_payroll", setup_payroll, transactional=True, retry=FORWARD_RETRY, timeout=STEP_TIMEOUT,
             description="Finance opens a payroll record (the band was checked by HR; refused here only if the "
                         "band changed since). " + KEPT),
        Step("assign_desk", assign_desk, transactional=True, retry=FORWARD_RETRY, timeout=STEP_TIMEOUT,
             description="Facilities assigns a free desk (on the floor asked for, if one is) and the employee "
                         "becomes active; refuses when none is free. " + KEPT),
    ]


def build_pivot_saga(*, version: int, contract_deadline: float) -> Saga:
    """Version 5 (and its rehearsal, 4): the signed contract is the pivot; what follows only goes forward."""
    return Saga(
        name=NAME,
        version=version,
        description="Hire someone: employee record, signed contract (the point of no return), IT accounts and "
                    "laptop, payroll, a desk.",
        input_schema=PivotOnboardingInput,
        rehearsal=version == PIVOT_REHEARSAL_VERSION,
        sensitive=("salary", "email", "sent_to"),
        steps=[
            _hr_within_band(),
            _signed_contract_pivot(contract_deadline),
            Step("provision_it", provision_it, transactional=True, retry=FORWARD_RETRY, timeout=STEP_TIMEOUT,
                 description="IT opens e-mail and SSO accounts (a licence seat each) and hands out a laptop of the "
                             "model asked for (any, when none is) from the pool; refuses when none is free. " + KEPT),
            *_kept_payroll_and_desk(),
        ],
    )


# --- version 7: IT's provisioning is a child saga ----------------------------------------


def provisioning_input(ctx) -> dict:
    """What IT's child saga is started with: the new employee, the laptop model asked for, our reference."""
    return {"employee": ctx.results["create_employee_record"]["employee"],
            "laptop_model": ctx.input.get("laptop_model") or "", "reference": ctx.input.get("reference") or ""}


def build_child_saga(*, version: int, contract_deadline: float) -> Saga:
    """Version 7 (and its rehearsal, 6): IT's work is its own saga, ``corporate.it_provisioning``, started as
    a child before the contract goes out, so the hire has accounts and a laptop on day one. Before the
    signature (the pivot) the child is undone as a whole with the onboarding: a declined or unanswered
    contract gives the accounts, licences and laptop back. A child that cannot finish (no laptop of the model
    asked for) is compensated by itself and the offer is withdrawn before any contract goes out."""
    return Saga(
        name=NAME,
        version=version,
        description="Hire someone: employee record, IT's provisioning (a child saga: accounts, licences, "
                    "laptop), signed contract (the point of no return), payroll, a desk.",
        input_schema=PivotOnboardingInput,
        rehearsal=version == CHILD_REHEARSAL_VERSION,
        sensitive=("salary", "email", "sent_to"),
        steps=[
            _hr_within_band(),
            ChildSaga("provision_it", it_provisioning.NAME, input=provisioning_input,
                      description=f"IT's provisioning as a child saga ({it_provisioning.NAME}: accounts, licence "
                                  f"seats, a laptop of the model asked for); the onboarding waits for it. The child "
                                  f"compensated (no laptop left): the offer is withdrawn. Undo: the child is "
                                  f"compensated as a whole, its steps in reverse."),
            _signed_contract_pivot(contract_deadline),
            *_kept_payroll_and_desk(),
        ],
    )


saga_v3 = build_saga(version=VERSION, contract_deadline=14 * DAY)
rehearsal_v2 = build_saga(version=REHEARSAL_VERSION, contract_deadline=REHEARSAL_DEADLINE)
saga_v5 = build_pivot_saga(version=PIVOT_VERSION, contract_deadline=14 * DAY)
rehearsal_v4 = build_pivot_saga(version=PIVOT_REHEARSAL_VERSION, contract_deadline=REHEARSAL_DEADLINE)
saga = build_child_saga(version=CHILD_VERSION, contract_deadline=14 * DAY)
rehearsal = build_child_saga(version=CHILD_REHEARSAL_VERSION, contract_deadline=REHEARSAL_DEADLINE)
# Every registered version; ``saga`` is the latest, ``rehearsal`` its rehearsal.
definitions = (rehearsal_v2, saga_v3, rehearsal_v4, saga_v5, rehearsal, saga)
