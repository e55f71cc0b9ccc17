"""corporate.budget_approval: request -> manager -> Finance reserves funds -> executive sign-off.

Finance reserves the amount from the department's budget under a row lock,
so concurrent requests never reserve more than the budget. Requests above the
executive threshold need an executive's signature; a refusal there undoes the
reservation and revokes the approvals given so far.
"""
from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.utils import timezone
from rest_framework import serializers

from sagas import PermanentError, Saga, Step

from ..models import (
    Approval,
    ApprovalLevel,
    BudgetRequest,
    BudgetRequestStatus,
    Department,
    FundReservation,
)
from .common import COMPENSATION_RETRY, STEP_RETRY, STEP_TIMEOUT, flag, money, positive_amount_field, reference_field

NAME = "corporate.budget_approval"

# Above this amount an executive must sign; above the limit the executive always refuses.
EXECUTIVE_THRESHOLD = Decimal("10000.00")
EXECUTIVE_LIMIT = Decimal("250000.00")


class BudgetInput(serializers.Serializer):
    department = serializers.PrimaryKeyRelatedField(queryset=Department.objects.all())
    amount = positive_amount_field()
    purpose = serializers.CharField(max_length=200)
    executive_threshold = positive_amount_field(required=False,
                                                help_text=f"default {EXECUTIVE_THRESHOLD}")
    manager_approves = serializers.BooleanField(required=False, default=True)
    executive_approves = serializers.BooleanField(required=False, default=True)
    reference = reference_field()


def _request(ctx) -> BudgetRequest:
    return BudgetRequest.objects.select_related("department").get(pk=ctx.results["submit_request"]["request"])


def _revoke(request_id: int, level: str) -> None:
    Approval.objects.filter(request_id=request_id, level=level, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


# --- 1. the department files the request -----------------------------------------------


def submit_request(ctx) -> dict:
    department = Department.objects.get(pk=ctx.input["department"])
    if department.frozen:
        raise PermanentError(f"{department.code} is frozen: no new budget requests")
    request = BudgetRequest.objects.create(
        saga_id=ctx.saga_id, department=department, amount=money(ctx.input["amount"]), purpose=ctx.input["purpose"]
    )
    return {"request": request.pk}


def withdraw_request(ctx) -> None:
    BudgetRequest.objects.filter(pk=ctx.result["request"]).exclude(status=BudgetRequestStatus.WITHDRAWN).update(
        status=BudgetRequestStatus.WITHDRAWN
    )


# --- 2. the manager approves -----------------------------------------------------------


def manager_approval(ctx) -> dict:
    request = _request(ctx)
    if not flag(ctx.input, "manager_approves", True):
        raise PermanentError(f"the manager of {request.department.code} rejected the request")
    approval = Approval.objects.create(request=request, level=ApprovalLevel.MANAGER,
                                       approver=f"manager of {request.department.code}")
    return {"approval": approval.pk}


def revoke_manager_approval(ctx) -> None:
    _revoke(ctx.results["submit_request"]["request"], ApprovalLevel.MANAGER)


# --- 3. Finance reserves the funds -----------------------------------------------------


def reserve_funds(ctx) -> dict:
    request = _request(ctx)
    with transaction.atomic():
        department = Department.objects.select_for_update().get(pk=request.department_id)
        available = department.budget - department.reserved
        if request.amount > available:
            raise PermanentError(
                f"Finance refused: {department.code} has {available} left, {request.amount} requested"
            )
        reservation = FundReservation.objects.create(request=request, department=department, amount=request.amount)
        department.reserved += request.amount
        department.save(update_fields=["reserved"])
    return {"reservation": reservation.pk, "amount": str(request.amount)}


def release_funds(ctx) -> None:
    with transaction.atomic():
        reservation = FundReservation.objects.select_for_update().get(pk=ctx.result["reservation"])
        if reservation.released_at is not None:
            return
        department = Department.objects.select_for_update().get(pk=reservation.department_id)
        department.reserved -= reservation.amount
        department.save(update_fields=["reserved"])
        reservation.released_at = timezone.now()
        reservation.save(update_fields=["released_at"])


# --- 4. an executive signs off above the threshold -------------------------------------


def executive_signoff(ctx) -> dict:
    request = _request(ctx)
    threshold = money(ctx.input.get("executive_threshold") or EXECUTIVE_THRESHOLD)
    required = request.amount > threshold
    if required:
        if request.amount > EXECUTIVE_LIMIT:
            raise PermanentError(f"the executive refused: {request.amount} is above the limit of {EXECUTIVE_LIMIT}")
        if not flag(ctx.input, "executive_approves", True):
            raise PermanentError("the executive refused to sign")
        Approval.objects.create(request=request, level=ApprovalLevel.EXECUTIVE, approver="chief financial officer")
    BudgetRequest.objects.filter(pk=request.pk).update(status=BudgetRequestStatus.APPROVED)
    return {"executive_required": required}


def revoke_executive_signoff(ctx) -> None:
    request_id = ctx.results["submit_request"]["request"]
    with transaction.atomic():
        _revoke(request_id, ApprovalLevel.EXECUTIVE)
        BudgetRequest.objects.filter(pk=request_id, status=BudgetRequestStatus.APPROVED).update(
            status=BudgetRequestStatus.SUBMITTED
        )


saga = Saga(
    name=NAME,
    version=1,
    description="Approve spending: manager approval, funds reserved from the department's budget, "
                "executive sign-off above a threshold.",
    input_schema=BudgetInput,
    steps=[
        Step("submit_request", submit_request, compensation=withdraw_request, transactional=True,
             retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
             description="The department files the request; a frozen department cannot. Undo: withdraw it."),
        Step("manager_approval", manager_approval, compensation=revoke_manager_approval, transactional=True,
             retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
             description="The department's manager approves (or rejects). Undo: revoke the approval."),
        Step("reserve_funds", reserve_funds, compensation=release_funds, transactional=True,
             retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
             description="Finance reserves the amount from the department's budget; refuses when too little "
                         "is left. Undo: release the reservation."),
        Step("executive_signoff", executive_signoff, compensation=revoke_executive_signoff, transactional=True,
             retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
             description=f"Above the threshold (default {EXECUTIVE_THRESHOLD}) an executive signs, or refuses "
                         f"(always above {EXECUTIVE_LIMIT}). Undo: revoke the signature."),
    ],
)
