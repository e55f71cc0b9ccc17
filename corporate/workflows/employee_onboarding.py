"""corporate.employee_onboarding: HR -> signed contract (waits) -> IT -> Finance -> Facilities.

HR sends the contract to the e-signature service with the wait's one-time
callback (``ctx.signal_token``); the service calls
``POST /api/signals/{token}/complete/`` when the hire signs (``.../fail/``
when they decline), and nothing is provisioned before that. HR may also
record a contract signed on paper (``corporate.record_signed_contract``).

Laptops and desks come from limited pools. Picking one locks the pool's rows
(``select_for_update``; on SQLite the IMMEDIATE transaction does the same) so
two onboardings never take the same asset; the partial unique constraints on
open assignments back that up in the database. Every step here is local, so
each runs ``transactional``: its writes commit together with the step's
success, exactly once.
"""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from rest_framework import serializers

from sagas import PermanentError, Saga, Step

from .. import esignature
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
    REHEARSAL_DEADLINE,
    REHEARSAL_VERSION,
    STEP_RETRY,
    STEP_TIMEOUT,
    VERSION,
    money,
    positive_amount_field,
    reference_field,
)

NAME = "corporate.employee_onboarding"
CONTRACT_PERMISSION = "corporate.record_signed_contract"


class OnboardingInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    email = serializers.EmailField()
    department = serializers.PrimaryKeyRelatedField(queryset=Department.objects.all())
    salary = positive_amount_field()
    role = serializers.CharField(max_length=100, required=False, allow_blank=True)
    reference = reference_field()

    def validate_email(self, value: str) -> str:
        if Employee.objects.filter(email__iexact=value).exclude(status=EmployeeStatus.WITHDRAWN).exists():
            raise serializers.ValidationError("an employee with this e-mail address already exists")
        return value


def _employee(ctx) -> Employee:
    return Employee.objects.get(pk=ctx.results["create_employee_record"]["employee"])


def _free_asset(pool, assignments, field: str):
    """The first asset of ``pool`` nobody holds; the pool stays locked until the transaction ends."""
    # Lock the whole pool first: a concurrent pick waits here, then sees our assignment.
    list(pool.objects.select_for_update().order_by("pk").values_list("pk", flat=True))
    taken = assignments.objects.filter(returned_at__isnull=True).values(field)
    return pool.objects.exclude(pk__in=taken).order_by("pk").first()


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
    with transaction.atomic():
        laptop = _free_asset(Laptop, LaptopAssignment, "laptop")
        if laptop is None:
            raise PermanentError("IT refused: no laptop left in the pool")
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
    with transaction.atomic():
        desk = _free_asset(Desk, DeskAssignment, "desk")
        if desk is None:
            raise PermanentError("Facilities refused: no desk left")
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
    return Saga(
        name=NAME,
        version=version,
        description="Hire someone: employee record, signed contract, IT accounts and laptop, payroll, a desk.",
        input_schema=OnboardingInput,
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


saga = build_saga(version=VERSION, contract_deadline=14 * DAY)
rehearsal = build_saga(version=REHEARSAL_VERSION, contract_deadline=REHEARSAL_DEADLINE)
