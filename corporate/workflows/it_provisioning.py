"""corporate.it_provisioning: IT opens the accounts, gives them licence seats, hands out a laptop.

A saga of its own so that IT's work is one thing a parent can start, wait
for and undo as a whole: the employee onboarding (version 7 on) starts it as
a ``ChildSaga`` while the contract is out for signature, and a declined
contract undoes it through these compensations, in reverse. Each step is
local and ``transactional``: its rows commit with the step's success,
exactly once. The laptop comes from the pool under the pool's lock, as in
the onboarding's own IT step (versions 2 to 5), so two provisionings never
take the same one.
"""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from rest_framework import serializers

from sagas import PermanentError, Saga, Step

from ..models import Account, AccountSystem, Employee, EmployeeStatus, Laptop, LaptopAssignment
from .common import COMPENSATION_RETRY, STEP_RETRY, STEP_TIMEOUT, free_asset, reference_field

NAME = "corporate.it_provisioning"
VERSION = 1
SYSTEMS = (AccountSystem.EMAIL, AccountSystem.SSO)


class ProvisioningInput(serializers.Serializer):
    employee = serializers.PrimaryKeyRelatedField(queryset=Employee.objects.all())
    laptop_model = serializers.CharField(max_length=100, required=False, allow_blank=True)
    reference = reference_field()

    def validate_employee(self, value: Employee) -> Employee:
        if value.status == EmployeeStatus.WITHDRAWN:
            raise serializers.ValidationError("the offer to this employee was withdrawn: nothing to provision")
        return value


def _employee(ctx) -> Employee:
    return Employee.objects.get(pk=ctx.input["employee"])


# --- 1. the accounts --------------------------------------------------------------------------


def open_accounts(ctx) -> dict:
    """E-mail and single sign-on, under the employee's user name (no licence seat yet: the next step)."""
    employee = _employee(ctx)
    username = employee.email.split("@")[0].lower()
    accounts = []
    for system in SYSTEMS:
        account, _ = Account.objects.update_or_create(
            employee=employee, system=system,
            defaults={"username": username, "active": True, "holds_licence": False, "disabled_at": None})
        accounts.append(account.pk)
    return {"accounts": accounts}  # not the user name: it is the e-mail address's, shown masked in the onboarding


def close_accounts(ctx) -> None:
    Account.objects.filter(pk__in=ctx.result["accounts"], active=True).update(
        active=False, holds_licence=False, disabled_at=timezone.now())


# --- 2. the licences --------------------------------------------------------------------------


def assign_licences(ctx) -> dict:
    accounts = ctx.results["open_accounts"]["accounts"]
    if Account.objects.filter(pk__in=accounts, active=False).exists():
        raise PermanentError("IT refused: an account to licence was closed meanwhile")
    Account.objects.filter(pk__in=accounts).update(holds_licence=True)
    return {"licences": len(accounts)}


def revoke_licences(ctx) -> None:
    Account.objects.filter(pk__in=ctx.results["open_accounts"]["accounts"], holds_licence=True).update(
        holds_licence=False)


# --- 3. the laptop ----------------------------------------------------------------------------


def hand_out_laptop(ctx) -> dict:
    employee = _employee(ctx)
    model = ctx.input.get("laptop_model") or ""
    with transaction.atomic():
        laptop = free_asset(Laptop, LaptopAssignment, "laptop", **({"model": model} if model else {}))
        if laptop is None:
            raise PermanentError(f"IT refused: no {model + ' ' if model else ''}laptop left in the pool")
        LaptopAssignment.objects.create(laptop=laptop, employee=employee)
    return {"laptop": laptop.asset_tag}


def take_laptop_back(ctx) -> None:
    LaptopAssignment.objects.filter(employee_id=ctx.input["employee"], laptop__asset_tag=ctx.result["laptop"],
                                    returned_at__isnull=True).update(returned_at=timezone.now())


saga = Saga(
    name=NAME,
    version=VERSION,
    description="IT provisions a new hire: e-mail and SSO accounts, a licence seat for each, a laptop from "
                "the pool. Started by the employee onboarding as its child saga, and undone with it.",
    input_schema=ProvisioningInput,
    steps=[
        Step("open_accounts", open_accounts, compensation=close_accounts, transactional=True,
             retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
             description="IT opens the e-mail and SSO accounts. Undo: disable them."),
        Step("assign_licences", assign_licences, compensation=revoke_licences, transactional=True,
             retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
             description="A software licence seat for each account. Undo: the seats go back to the pool."),
        Step("hand_out_laptop", hand_out_laptop, compensation=take_laptop_back, transactional=True,
             retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
             description="A laptop of the model asked for (any, when none is) from the pool; refuses when none "
                         "is free. Undo: take the laptop back."),
    ],
)
definitions = (saga,)  # every registered version; ``saga`` is the latest
