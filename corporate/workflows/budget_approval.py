"""corporate.budget_approval: request -> manager (waits) -> Finance reserves funds -> executive (waits) -> approved.

Two gates wait for a person: the department's manager (``corporate.approve_budget``)
and, above the threshold, an executive (``corporate.sign_off_budget``); each
has a deadline. Completing a gate approves (its result, e.g.
``{"approved": true, "comment": "..."}``, is what the person decided); failing
it with a reason rejects, and the saga compensates. A deadline that passes
compensates the same way (the sweeper enforces it). Version 5 (what
``start_saga`` runs; 4 its rehearsal) asks whether the executive is needed
with the step's condition (``when=``: the amount above the department's
threshold): at or below it the step is ``skipped``, never run. Versions 3
and 2 (the step itself passes without a wait, ``SkipWait``) stay registered
for the requests started on them. Finance reserves the
amount from the department's budget under a row lock, so concurrent requests
never reserve more than the budget; any refusal or timeout after it releases
the funds and revokes the approvals given so far.
"""
from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.utils import timezone
from rest_framework import serializers

from sagas import PermanentError, Saga, SkipWait, Step
from sagas.input_schemas import RetiredField

from ..models import (
    Approval,
    ApprovalLevel,
    BudgetRequest,
    BudgetRequestStatus,
    Department,
    FundReservation,
)
from .common import (
    COMPENSATION_RETRY,
    DAY,
    REHEARSAL_DEADLINE,
    REHEARSAL_VERSION,
    STEP_RETRY,
    STEP_TIMEOUT,
    VERSION,
    decision,
    money,
    positive_amount_field,
    reference_field,
)

NAME = "corporate.budget_approval"

# Above this amount an executive must sign; above the limit the executive always refuses.
EXECUTIVE_THRESHOLD = Decimal("10000.00")
EXECUTIVE_LIMIT = Decimal("250000.00")
MANAGER_PERMISSION = "corporate.approve_budget"
EXECUTIVE_PERMISSION = "corporate.sign_off_budget"


class BudgetInput(serializers.Serializer):
    department = serializers.PrimaryKeyRelatedField(queryset=Department.objects.all())
    amount = positive_amount_field()
    purpose = serializers.CharField(max_length=200)
    # Refused: the threshold is the department's (``Department.executive_threshold``, set by finance).
    # A request that named its own could skip the executive (240 000 with a threshold of 249 999).
    executive_threshold = RetiredField(message=(
        "the executive threshold is set per department by finance (Department.executive_threshold), "
        "not by the request"))
    reference = reference_field()


def _request(ctx) -> BudgetRequest:
    return BudgetRequest.objects.select_related("department").get(pk=ctx.results["submit_request"]["request"])


def _comment(decided: dict) -> str:
    return str(decided.get("comment") or "")[:500]


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


# --- 2. the manager approves (a person decides: the saga waits) --------------------------


def ask_manager(ctx) -> dict:
    """Put the request in the manager's queue; the manager answers through the API or the admin."""
    request = _request(ctx)
    return {"asked": f"manager of {request.department.code}", "amount": str(request.amount)}


# Nothing to undo: asking changes no row. The approval is recorded by the step that acts on it.


# --- 3. Finance reserves the funds -----------------------------------------------------


def reserve_funds(ctx) -> dict:
    """Finance acts on the manager's approval: it records it and reserves the amount."""
    approved = decision(ctx, "manager_approval", "the manager")
    request = _request(ctx)
    with transaction.atomic():
        department = Department.objects.select_for_update().get(pk=request.department_id)
        available = department.budget - department.reserved
        if request.amount > available:
            raise PermanentError(
                f"Finance refused: {department.code} has {available} left, {request.amount} requested"
            )
        Approval.objects.create(request=request, level=ApprovalLevel.MANAGER,
                                approver=approved.get("asked", "manager"), comment=_comment(approved))
        reservation = FundReservation.objects.create(request=request, department=department, amount=request.amount)
        department.reserved += request.amount
        department.save(update_fields=["reserved"])
    return {"reservation": reservation.pk, "amount": str(request.amount)}


def release_funds(ctx) -> None:
    with transaction.atomic():
        _revoke(ctx.results["submit_request"]["request"], ApprovalLevel.MANAGER)
        reservation = FundReservation.objects.select_for_update().get(pk=ctx.result["reservation"])
        if reservation.released_at is not None:
            return
        department = Department.objects.select_for_update().get(pk=reservation.department_id)
        department.reserved -= reservation.amount
        department.save(update_fields=["reserved"])
        reservation.released_at = timezone.now()
        reservation.save(update_fields=["released_at"])


# --- 4. an executive signs off above the threshold (a person decides: the saga waits) ----


def ask_executive(ctx) -> dict | SkipWait:
    """Above the threshold, ask an executive; at or below it nobody needs to sign (no wait)."""
    request = _request(ctx)
    threshold = request.department.executive_threshold  # never the requester's input
    if request.amount <= threshold:
        return SkipWait({"executive_required": False})
    if request.amount > EXECUTIVE_LIMIT:
        raise PermanentError(f"the executive refused: {request.amount} is above the limit of {EXECUTIVE_LIMIT}")
    return {"executive_required": True, "asked": "chief financial officer"}


def needs_executive(ctx) -> bool:
    """Version 5 on, the executive step's condition (``when=``): the amount is above the department's threshold."""
    request = _request(ctx)
    return request.amount > request.department.executive_threshold  # never the requester's input


def ask_executive_above_threshold(ctx) -> dict:
    """Version 5 on: runs only when ``needs_executive`` said so (otherwise the step is skipped, never run)."""
    request = _request(ctx)
    if request.amount > EXECUTIVE_LIMIT:
        raise PermanentError(f"the executive refused: {request.amount} is above the limit of {EXECUTIVE_LIMIT}")
    return {"executive_required": True, "asked": "chief financial officer"}


# Nothing to undo: asking changes no row. The signature is recorded by the next step.


# --- 5. the request is approved ---------------------------------------------------------


def approve_request(ctx) -> dict:
    request = _request(ctx)
    signoff = ctx.results.get("executive_signoff") or {}  # version 5 on: absent when the step was skipped
    if signoff.get("executive_required"):
        signed = decision(ctx, "executive_signoff", "the executive")
        Approval.objects.create(request=request, level=ApprovalLevel.EXECUTIVE,
                                approver=signed.get("asked", "executive"), comment=_comment(signed))
    BudgetRequest.objects.filter(pk=request.pk).update(status=BudgetRequestStatus.APPROVED)
    return {"approved": True, "executive_required": bool(signoff.get("executive_required"))}


def unapprove_request(ctx) -> None:
    request_id = ctx.results["submit_request"]["request"]
    with transaction.atomic():
        _revoke(request_id, ApprovalLevel.EXECUTIVE)
        BudgetRequest.objects.filter(pk=request_id, status=BudgetRequestStatus.APPROVED).update(
            status=BudgetRequestStatus.SUBMITTED
        )


def _executive_step(executive_deadline: float, condition: bool) -> Step:
    gate = (f"Gate: above the department's threshold (default {EXECUTIVE_THRESHOLD}) an executive signs (complete) "
            f"or refuses (fail); needs {EXECUTIVE_PERMISSION}; always refused above {EXECUTIVE_LIMIT}. ")
    if condition:
        return Step("executive_signoff", ask_executive_above_threshold, retry=STEP_RETRY, timeout=STEP_TIMEOUT,
                    wait_for_signal=True, signal_timeout=executive_deadline, signal_permission=EXECUTIVE_PERMISSION,
                    when=needs_executive,
                    description=gate + "At or below the threshold the step is skipped (its condition, when=, is "
                                       "false): it never runs. Nothing to undo.")
    return Step("executive_signoff", ask_executive, retry=STEP_RETRY, timeout=STEP_TIMEOUT,
                wait_for_signal=True, signal_timeout=executive_deadline, signal_permission=EXECUTIVE_PERMISSION,
                description=gate + "At or below the threshold no wait (SkipWait). Nothing to undo.")


def build_saga(*, version: int, manager_deadline: float, executive_deadline: float, condition: bool = False) -> Saga:
    """Versions 3 and 2: ``SkipWait`` at or below the threshold; ``condition`` (versions 5 and 4): ``when=``."""
    return Saga(
        name=NAME,
        version=version,
        description="Approve spending: the manager approves, Finance reserves the funds from the department's "
                    "budget, an executive signs above a threshold.",
        input_schema=BudgetInput,
        rehearsal=version in (REHEARSAL_VERSION, CONDITION_REHEARSAL_VERSION),
        steps=[
            Step("submit_request", submit_request, compensation=withdraw_request, transactional=True,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 description="The department files the request; a frozen department cannot. Undo: withdraw it."),
            Step("manager_approval", ask_manager, retry=STEP_RETRY, timeout=STEP_TIMEOUT,
                 wait_for_signal=True, signal_timeout=manager_deadline, signal_permission=MANAGER_PERMISSION,
                 description=f"Gate: the department's manager approves (complete) or rejects (fail, with a "
                             f"reason); needs {MANAGER_PERMISSION}. No answer in time: the request is withdrawn. "
                             f"Nothing to undo: asking changes no row."),
            Step("reserve_funds", reserve_funds, compensation=release_funds, transactional=True,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 description="Finance records the manager's approval and reserves the amount from the "
                             "department's budget; refuses when too little is left. Undo: release the "
                             "reservation, revoke the approval."),
            _executive_step(executive_deadline, condition),
            Step("approve_request", approve_request, compensation=unapprove_request, transactional=True,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 description="The request is approved, with the executive's signature when one was needed. "
                             "Undo: revoke the signature, the request goes back to submitted."),
        ],
    )


CONDITION_VERSION = 5  # the executive step's condition is ``when=``; start_saga's default
CONDITION_REHEARSAL_VERSION = 4  # the same flow with deadlines of seconds

saga_v3 = build_saga(version=VERSION, manager_deadline=3 * DAY, executive_deadline=5 * DAY)
rehearsal_v2 = build_saga(version=REHEARSAL_VERSION, manager_deadline=REHEARSAL_DEADLINE,
                          executive_deadline=REHEARSAL_DEADLINE)
saga = build_saga(version=CONDITION_VERSION, manager_deadline=3 * DAY, executive_deadline=5 * DAY, condition=True)
rehearsal = build_saga(version=CONDITION_REHEARSAL_VERSION, manager_deadline=REHEARSAL_DEADLINE,
                       executive_deadline=REHEARSAL_DEADLINE, condition=True)
# Every registered version; ``saga`` is the latest, ``rehearsal`` its rehearsal.
definitions = (rehearsal_v2, saga_v3, rehearsal, saga)
