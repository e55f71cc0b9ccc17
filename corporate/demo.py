"""What ``saga_demo`` runs: reference data, the sagas it plans, and how it starts them.

The demo's reference data (departments, products, customers, laptops, desks,
services) is created on first use and topped up before each run, so a run
never fails only because earlier runs used up the stock or the pools.
Planned inputs come from a ``random.Random(seed)``: the same seed plans the
same sagas, each with a ``reference`` that seeded failure injection keys on.

The sagas' gates are answered while the demo runs by ``Approver``, a
simulated person (and e-signature service) that uses the same public calls as
everyone else: ``complete_step`` / ``fail_step`` as a demo user holding the
gates' permissions, and the contract's token callback. Sagas that pause past
their pivot (a confirmation that bounces, no laptop of the model asked for, no
desk on the floor asked for, an injected failure) are looked after by
``Operator``, a simulated person who reads the failed step's error, fixes
what it names (the customer's address, a laptop for the pool) and calls
``resume`` (with corrected input where the input was the cause) or
``skip_step`` with the result of doing the step by hand.
"""
from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from sagas import InvalidTransition, UnknownSignalToken, complete_step, fail_step, resume, skip_step, start_saga
from sagas.analytics import percentile
from sagas.engine.compensation import AFTER_PIVOT
from sagas.engine.forward import CONDITION_FALSE
from sagas.models import EventKind, SagaEvent, SagaInstance, SagaStatus, StepRecord, StepStatus

from . import esignature, invariants, services
from .models import (
    ContractRequest,
    Customer,
    Department,
    FailureInjectionRule,
    Order,
    Product,
    Service,
    SignatureEnvelope,
)
from .sagas import (
    ALL_TYPES,
    BUDGET_APPROVAL,
    EMPLOYEE_ONBOARDING,
    GATED_TYPES,
    ORDER_FULFILLMENT,
    REHEARSAL_VERSIONS,
    SAGA_TYPES,
    SYSTEM_DEPLOYMENT,
)
from .selectors import desks_free_count, laptops_free_count
from .workflows.employee_onboarding import PIVOT_VERSION
from .workflows.order_fulfillment import CARRIERS

DEMO_RULE_NOTE = "saga_demo"
SUCCEEDED, COMPENSATED = SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED

DEPARTMENTS = [("ENG", "Engineering", 500000), ("SAL", "Sales", 300000), ("OPS", "Operations", 200000),
               ("FIN", "Finance", 150000)]
PRODUCTS = [("KB-01", "Mechanical keyboard", "89.00"), ("MS-02", "Wireless mouse", "39.00"),
            ("MN-27", "27-inch monitor", "329.00"), ("HS-05", "Headset", "119.00")]
# name, e-mail, options: the first three buy normally (the third through a flaky gateway, retried).
CUSTOMERS = [
    ("Ada Lovelace", "ada@example.com", {}),
    ("Grace Hopper", "grace@example.com", {}),
    ("Flaky Gateway Ltd", "flaky@example.com", {"gateway_glitches": 1}),
    ("Blocked Card GmbH", "blocked@example.com", {"card_blocked": True}),
    ("Bouncing Mail SA", "bounce@example.com", {"email_bounces": True}),
]
GOOD_CUSTOMERS = ["ada@example.com", "grace@example.com", "flaky@example.com"]
FIRST_NAMES = ["Alex", "Sam", "Robin", "Kim", "Noor", "Lea", "Omar", "Mia", "Jonas", "Ines", "Yuki", "Ravi"]
LAST_NAMES = ["Meyer", "Garcia", "Okafor", "Novak", "Rossi", "Larsen", "Silva", "Kowalski", "Chen", "Dubois"]
PURPOSES = ["conference travel", "cloud credits", "team offsite", "new laptops", "training budget",
            "market research", "office furniture"]
SERVICE_PREFIX = "demo-svc"
MIN_FREE = {"laptops": 5, "desks": 5, "stock": 20}


APPROVE, REJECT, IGNORE = "approve", "reject", "ignore"
DEMO_APPROVER = "demo-approver"
GATE_PERMISSIONS = ("approve_budget", "sign_off_budget", "release_deploy", "record_signed_contract")

# The operator's moves on a saga paused past its pivot, named as its report shows them.
RESUME = "resumed"  # the cause has passed (an injected failure): the step runs again, with a fresh budget
FIX_ADDRESS = "address corrected, resumed"
CONFIRM_BY_PHONE = "confirmed by phone, step skipped"
ADD_LAPTOP = "IT added a laptop, resumed"
ADD_DESK = "Facilities added a desk, resumed"
ANY_FLOOR = "resumed for any floor (corrected input)"
BY_HAND = "done by hand, step skipped"
DEMO_OPERATOR = "demo-operator"
OPERATOR_PERMISSIONS = ("view_sagainstance", "pause_saga")
MAX_RESUMES = 3  # a step that fails again after this many resumes is done by hand
SCARCE_LAPTOP = "MacBook Pro 16"  # IT keeps none in the pool: it buys one when a hire asks for it
UNSTOCKED_LAPTOP = "Framework 16"  # IT never stocks it: a hire asking for it is refused by IT's child saga
NEW_FLOOR = 40  # no desk there yet
TYPO_DOMAIN, MAIL_DOMAIN = "exmaple.com", "example.com"  # a customer's mistyped address, and the right one


@dataclass
class Planned:
    saga_type: str
    input: dict
    label: str = ""
    expected: str | None = None  # the final status an example must reach
    decisions: dict = field(default_factory=dict)  # gate -> APPROVE / REJECT / IGNORE (else the approver's dice)
    version: int | None = None  # None: the latest (REHEARSAL_VERSIONS: deadlines of seconds)
    remedy: str | None = None  # what the operator does when it pauses (an example's must be done)
    child: str | None = None  # the final status its child saga must reach (an onboarding's IT provisioning)


@dataclass
class Started:
    plan: Planned
    saga: SagaInstance


@dataclass
class World:
    """The demo's reference rows, by natural key."""

    departments: dict[str, Department] = field(default_factory=dict)
    products: dict[str, Product] = field(default_factory=dict)
    customers: dict[str, Customer] = field(default_factory=dict)


def ensure_reference_data() -> World:
    """Create the demo's departments, products and customers if missing (idempotent)."""
    world = World()
    for code, name, budget in DEPARTMENTS:
        world.departments[code] = (Department.objects.filter(code=code).first()
                                   or services.department_create(code=code, name=name, budget=budget))
    for sku, name, price in PRODUCTS:
        world.products[sku] = (Product.objects.filter(sku=sku).first()
                               or services.product_create(sku=sku, name=name, price=price, stock=100))
    for name, email, options in CUSTOMERS:
        world.customers[email] = (Customer.objects.filter(email=email).first()
                                  or services.customer_create(name=name, email=email, **options))
    return world


def ensure_capacity(world: World, plans: list[Planned]) -> None:
    """Top up stock, pools, budgets and services so that ``plans`` can all succeed."""
    needed_stock: Counter = Counter()
    needed_budget: dict[int, Decimal] = defaultdict(Decimal)
    hires = deployments = 0
    for plan in plans:
        if plan.saga_type == ORDER_FULFILLMENT and plan.expected != COMPENSATED:
            needed_stock[plan.input["product"]] += plan.input["quantity"]
        elif plan.saga_type == EMPLOYEE_ONBOARDING:
            hires += 1
        elif plan.saga_type == BUDGET_APPROVAL:
            needed_budget[plan.input["department"]] += Decimal(plan.input["amount"])
        elif plan.saga_type == SYSTEM_DEPLOYMENT:
            deployments += 1
    for product in world.products.values():
        product.refresh_from_db()
        missing = needed_stock[product.pk] + MIN_FREE["stock"] - product.on_hand
        if missing > 0:
            services.product_restock(product=product, quantity=missing)
    for department in world.departments.values():
        services.department_ensure_available(department=department, available=needed_budget[department.pk])
    if (missing := hires + MIN_FREE["laptops"] - laptops_free_count()) > 0:
        services.laptops_add(count=missing, prefix="DEMO-LT")
    if (missing := hires + MIN_FREE["desks"] - desks_free_count()) > 0:
        services.desks_add(count=missing, prefix="DEMO-D")
    ensure_services(deployments)


def ensure_services(count: int) -> None:
    """At least ``count`` demo services (and two, for the examples)."""
    existing = Service.objects.filter(name__startswith=f"{SERVICE_PREFIX}-").count()
    for n in range(existing, max(count, 2)):
        services.service_create(name=f"{SERVICE_PREFIX}-{n + 1:02d}")


def _service(n: int) -> Service:
    return Service.objects.get(name=f"{SERVICE_PREFIX}-{n + 1:02d}")


def _stamp() -> str:
    return f"{int(time.time() * 1000) % 10**9:09d}"


def plan_random(world: World, count: int, rng: random.Random, seed: int) -> list[Planned]:
    """``count`` sagas spread over the four types; inputs that succeed unless a failure is injected."""
    types = list(SAGA_TYPES)
    rng.shuffle(types)
    stamp = _stamp()  # keeps e-mail addresses and versions unique across runs; not part of ``reference``
    ensure_services(sum(1 for n in range(count) if types[n % len(types)] == SYSTEM_DEPLOYMENT))
    plans = []
    for n in range(count):
        saga_type = types[n % len(types)]
        reference = f"demo-{seed}-{n + 1:04d}"
        remedy = None
        if saga_type == ORDER_FULFILLMENT:
            # One order in four goes to a customer who mistyped their address: it pauses once shipped.
            typo = rng.random() < 0.25
            data = {
                "customer": (typo_customer(f"{stamp}.{n + 1}") if typo
                             else world.customers[rng.choice(GOOD_CUSTOMERS)]).pk,
                "product": world.products[rng.choice(sorted(world.products))].pk,
                "quantity": rng.randint(1, 3),
                "ship_to": rng.choice(sorted(CARRIERS)),
            }
            remedy = rng.choice([FIX_ADDRESS, CONFIRM_BY_PHONE]) if typo else None
        elif saga_type == EMPLOYEE_ONBOARDING:
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            data = {
                "name": f"{first} {last}",
                "email": f"{first}.{last}.{stamp}.{n + 1}@corp.example".lower(),
                "department": world.departments[rng.choice(sorted(world.departments))].pk,
                "salary": str(rng.randrange(40000, 120000, 500)),
                "role": rng.choice(["engineer", "analyst", "account manager", "designer"]),
                # One hire in four asks for a floor with no desk: it pauses after the signature.
                **({"floor": NEW_FLOOR} if rng.random() < 0.25 else {}),
            }
        elif saga_type == BUDGET_APPROVAL:
            data = {
                "department": world.departments[rng.choice(sorted(world.departments))].pk,
                "amount": str(rng.randrange(500, 30000, 50)),
                "purpose": rng.choice(PURPOSES),
            }
        else:
            data = {"service": _service(n // len(types)).pk, "version": f"{seed}.{n + 1}.{stamp}"}
        plans.append(Planned(saga_type, {**data, "reference": reference}, label=reference, remedy=remedy))
    return plans


def typo_customer(tag: str) -> Customer:
    """A new customer whose address has a typo in its domain: mail to it bounces until a person corrects it."""
    return services.customer_create(name=f"Typo Customer {tag}", email=f"orders.{tag}@{TYPO_DOMAIN}",
                                    email_bounces=True)


def plan_examples(world: World) -> list[Planned]:
    """A success and refusals per saga type, and pauses past a pivot the operator must resolve, each with
    the outcome it must reach."""
    stamp = _stamp()
    ensure_services(2)
    eng = world.departments["ENG"].pk
    ada = world.customers["ada@example.com"].pk
    keyboard = world.products["KB-01"].pk

    def order(label, expected, customer, *, version=None, remedy=None, **extra):
        data = {"customer": customer, "product": keyboard, "quantity": 1, "ship_to": "DE", **extra}
        return Planned(ORDER_FULFILLMENT, data, label, expected, version=version, remedy=remedy)

    def hire(label, expected, first, salary="85000", remedy=None, decision=APPROVE, version=None, child=None,
             **extra):
        data = {"name": f"Example {first}", "email": f"{first.lower()}.{stamp}@corp.example", "department": eng,
                "salary": salary, "role": "engineer", **extra}
        return Planned(EMPLOYEE_ONBOARDING, data, label, expected, decisions={"contract_signature": decision},
                       remedy=remedy, version=version, child=child)

    def budget(label, expected, amount, version=None, **decisions):
        data = {"department": eng, "amount": amount, "purpose": f"example: {label}"}
        return Planned(BUDGET_APPROVAL, data, label, expected, decisions=decisions, version=version)

    return [
        order("order ships", SUCCEEDED, ada),
        order("order refused: out of stock", COMPENSATED, ada, quantity=10**6),
        order("order refused: card declined", COMPENSATED, world.customers["blocked@example.com"].pk),
        order("order on version 1 undone: mail bounced", COMPENSATED, world.customers["bounce@example.com"].pk,
              version=1),
        order("order paused: mail bounced; address fixed", SUCCEEDED, typo_customer(stamp).pk, remedy=FIX_ADDRESS),
        order("order paused: mail bounced; phoned instead", SUCCEEDED, world.customers["bounce@example.com"].pk,
              remedy=CONFIRM_BY_PHONE),
        # The latest onboarding: IT's provisioning is a child saga, undone with its parent before the signature.
        hire("onboarding completes: IT child, contract signed", SUCCEEDED, "Hire", child=SUCCEEDED),
        hire("onboarding undone with its IT child: declined", COMPENSATED, "Doubter", salary="70000",
             decision=REJECT, child=COMPENSATED),
        hire("onboarding undone: IT child found no laptop", COMPENSATED, "Picky", child=COMPENSATED,
             laptop_model=UNSTOCKED_LAPTOP),
        hire("onboarding refused: salary above band", COMPENSATED, "Star", salary="900000"),
        # Version 5, still registered: IT after the signature, where an empty pool pauses the hire.
        hire("onboarding paused: no laptop of its model", SUCCEEDED, "Coder", remedy=ADD_LAPTOP,
             version=PIVOT_VERSION, laptop_model=SCARCE_LAPTOP),
        hire("onboarding paused: no desk on its floor", SUCCEEDED, "Newcomer", remedy=ANY_FLOOR, floor=NEW_FLOOR,
             child=SUCCEEDED),
        budget("budget approved by the executive", SUCCEEDED, "20000",
               manager_approval=APPROVE, executive_signoff=APPROVE),
        budget("budget below the threshold: no executive", SUCCEEDED, "900", manager_approval=APPROVE),
        budget("budget below the threshold, version 3", SUCCEEDED, "800", version=3, manager_approval=APPROVE),
        budget("budget refused by the executive", COMPENSATED, "40000",
               manager_approval=APPROVE, executive_signoff=REJECT),
        Planned(SYSTEM_DEPLOYMENT, {"service": _service(0).pk, "version": f"example-{stamp}-ok"},
                "deployment verified", SUCCEEDED, decisions={"release_gate": APPROVE}),
        Planned(SYSTEM_DEPLOYMENT, {"service": _service(1).pk, "version": f"example-{stamp}-bad", "healthy": False},
                "deployment rolled back", COMPENSATED, decisions={"release_gate": APPROVE}),
        Planned(SYSTEM_DEPLOYMENT, {"service": _service(1).pk, "version": f"example-{stamp}-stop"},
                "deployment stopped at the release gate", COMPENSATED, decisions={"release_gate": REJECT}),
    ]


def plan_timeout_example(world: World) -> Planned:
    """A request nobody answers, in the rehearsal version: its deadline passes and it compensates."""
    data = {"department": world.departments["ENG"].pk, "amount": "700", "purpose": "example: nobody answers"}
    return Planned(BUDGET_APPROVAL, data, "budget withdrawn: manager never answered", COMPENSATED,
                   decisions={"manager_approval": IGNORE}, version=REHEARSAL_VERSIONS[BUDGET_APPROVAL])


def start(plans: list[Planned]) -> list[Started]:
    """Start every planned saga through ``start_saga`` (the normal enqueue path)."""
    return [Started(plan, start_saga(plan.saga_type, input=plan.input, version=plan.version)) for plan in plans]


# --- the simulated approver ------------------------------------------------------------------


def approver_user():
    """The demo's approver: a user holding every corporate gate's permission (created on first use)."""
    user, created = get_user_model().objects.get_or_create(username=DEMO_APPROVER)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    user.user_permissions.add(*Permission.objects.filter(codename__in=GATE_PERMISSIONS,
                                                         content_type__app_label="corporate"))
    return get_user_model().objects.get(pk=user.pk)  # fresh: no stale permission cache


@dataclass
class Approver:
    """Answers the waiting gates of the demo's sagas, after ``delay`` ± ``jitter`` seconds.

    Each wait is approved with probability ``rate`` and rejected otherwise
    (an example's ``decisions`` fix the answer); with ``silence`` > 0 that
    fraction of waits is never answered, so their deadlines pass. ``tick()``
    is called from the demo's polling loop: no thread, no lock held.
    """

    user: object
    rng: random.Random
    rate: float = 1.0
    delay: float = 0.2
    jitter: float = 0.0
    silence: float = 0.0
    plans: dict = field(default_factory=dict)  # saga id -> Planned
    _due: dict = field(default_factory=dict)  # (saga id, step, attempt) -> (monotonic time, decision) or None
    answered: Counter = field(default_factory=Counter)

    def watch(self, started: list[Started]) -> None:
        self.plans.update({s.saga.pk: s.plan for s in started})

    def tick(self) -> None:
        now = time.monotonic()
        # A ChildSaga step waits for its child saga, not for a person: its child's end moves it.
        waiting = StepRecord.objects.filter(saga_id__in=list(self.plans), status=StepStatus.WAITING).exclude(
            pk__in=SagaInstance.objects.filter(parent_id__in=list(self.plans)).values("parent_step")).values_list(
            "saga_id", "name", "attempts")
        for saga_id, step, attempt in waiting:
            key = (saga_id, step, attempt)
            if key not in self._due:
                self._due[key] = self._decide(self.plans[saga_id], step, now)
            due = self._due[key]
            if due is not None and now >= due[0]:
                self._due[key] = None
                self._answer(saga_id, step, due[1])

    def _decide(self, plan: Planned, step: str, now: float):
        decision = plan.decisions.get(step)
        if decision is None:
            if self.silence and self.rng.random() < self.silence:
                decision = IGNORE
            else:
                decision = APPROVE if self.rng.random() < self.rate else REJECT
        if decision == IGNORE:
            return None
        return (now + max(0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter)), decision)

    def _answer(self, saga_id, step: str, decision: str) -> None:
        try:
            if step == "contract_signature":
                self._signature_service(saga_id, decision)
            elif decision == APPROVE:
                complete_step(saga_id, step, result={"approved": True, "comment": "approved by the demo"},
                              by=self.user)
            else:
                fail_step(saga_id, step, error=f"rejected by the demo approver at {step}", by=self.user)
        except (InvalidTransition, UnknownSignalToken):
            self.answered["too late"] += 1  # its deadline passed, or the saga was cancelled, first
            return
        self.answered[decision] += 1

    @staticmethod
    def _signature_service(saga_id, decision: str) -> None:
        """The e-signature service calls the contract's one-time callback (the token path)."""
        contract = ContractRequest.objects.get(saga_id=saga_id)
        envelope = SignatureEnvelope.objects.get(envelope_id=contract.envelope_id)
        if decision == APPROVE:
            esignature.envelope_sign(envelope=envelope)
        else:
            esignature.envelope_decline(envelope=envelope, reason="the candidate declined to sign (demo)")


# --- the simulated operator --------------------------------------------------------------------


def operator_user():
    """The demo's operator: a user who may read, pause and resume sagas (created on first use)."""
    user, created = get_user_model().objects.get_or_create(username=DEMO_OPERATOR)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    user.user_permissions.add(*Permission.objects.filter(codename__in=OPERATOR_PERMISSIONS,
                                                         content_type__app_label="sagas"))
    return get_user_model().objects.get(pk=user.pk)


@dataclass
class Operator:
    """Looks after the demo's sagas that paused past their pivot, ``delay`` ± ``jitter`` seconds after each pause.

    It reads the failed step's error as a person would and picks a move
    (``diagnose``): correct the customer's address and resume, or confirm by
    phone and skip; have IT add a laptop of the model asked for, or resume
    for any floor (corrected input); a step that failed for a passing cause
    runs again (``resume``), and one that keeps failing is done by hand and
    skipped. ``tick()`` is called from the demo's polling loop.
    """

    user: object
    rng: random.Random
    delay: float = 0.2
    jitter: float = 0.0
    plans: dict = field(default_factory=dict)  # saga id -> Planned
    _due: dict = field(default_factory=dict)  # (saga id, step, attempts) -> monotonic time, or None once acted
    pauses: Counter = field(default_factory=Counter)  # saga id -> its pauses acted on
    applied: dict = field(default_factory=lambda: defaultdict(list))  # saga id -> the moves made, in order
    moves: Counter = field(default_factory=Counter)
    held_checked: int = 0  # pauses whose sagas were checked to hold what they did, before the move
    held_problems: list = field(default_factory=list)

    def watch(self, started: list[Started]) -> None:
        self.plans.update({s.saga.pk: s.plan for s in started})

    def tick(self) -> None:
        now = time.monotonic()
        paused = SagaInstance.objects.filter(pk__in=list(self.plans), status=SagaStatus.PAUSED,
                                             pause_cause=AFTER_PIVOT).values("pk")
        failed = StepRecord.objects.filter(saga_id__in=paused, status=StepStatus.FAILED).values_list(
            "saga_id", "name", "attempts", "error")
        for saga_id, step, attempts, error in failed:
            key = (saga_id, step, attempts)
            if key not in self._due:
                self._due[key] = now + max(0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter))
            due = self._due[key]
            if due is not None and now >= due:
                self._due[key] = None
                self._act(saga_id, step, error)

    def diagnose(self, saga_id, error: str) -> str:
        """The move a person would make for this failure."""
        if "rejected the confirmation" in error:
            return self.plans[saga_id].remedy or FIX_ADDRESS
        if "laptop left" in error:
            return ADD_LAPTOP
        if "no desk left on floor" in error:
            return ANY_FLOOR
        if "no desk left" in error:
            return ADD_DESK
        return BY_HAND if self.pauses[saga_id] > MAX_RESUMES else RESUME

    def _act(self, saga_id, step: str, error: str) -> None:
        self.pauses[saga_id] += 1
        self._check_held(saga_id)
        move = self.diagnose(saga_id, error)
        try:
            self.MOVES[move](self, saga_id, step, self.plans[saga_id])
        except InvalidTransition:
            self.moves["too late"] += 1  # someone else moved it first
            return
        self.applied[saga_id].append(move)
        self.moves[move] += 1

    def _check_held(self, saga_id) -> None:
        """While it is paused, before anyone acts: a saga past its pivot still holds all it did."""
        for check in (invariants.paused_orders_hold_charge_and_shipment, invariants.paused_onboardings_keep_the_hire):
            name, passed, detail = check([saga_id])
            if not passed:
                self.held_problems.append(detail)
        self.held_checked += 1

    def held_invariant(self) -> invariants.Invariant:
        """The paused-saga invariants as checked at each pause the operator acted on."""
        name = "paused past the pivot, checked at each pause: nothing undone"
        if self.held_problems:
            return invariants.Invariant(name, False, "; ".join(self.held_problems[:invariants.MAX_EXAMPLES]))
        return invariants.Invariant(name, True, f"{self.held_checked} pauses checked")

    def _resume(self, saga_id, step: str, plan: Planned) -> None:
        resume(saga_id, by=self.user)

    def _fix_address(self, saga_id, step: str, plan: Planned) -> None:
        customer = Order.objects.select_related("customer").get(saga_id=saga_id).customer
        services.customer_email_correct(customer=customer, email=customer.email.replace(TYPO_DOMAIN, MAIL_DOMAIN))
        resume(saga_id, by=self.user)

    def _confirm_by_phone(self, saga_id, step: str, plan: Planned) -> None:
        skip_step(saga_id, step, result={"confirmed_by": "phone", "notification": None},
                  reason="the customer's mail bounces: confirmed by phone", by=self.user)

    def _add_laptop(self, saga_id, step: str, plan: Planned) -> None:
        services.laptops_add(count=1, prefix="DEMO-LT", model=plan.input.get("laptop_model") or None)
        resume(saga_id, by=self.user)

    def _add_desk(self, saga_id, step: str, plan: Planned) -> None:
        services.desks_add(count=1, prefix="DEMO-D")
        resume(saga_id, by=self.user)

    def _any_floor(self, saga_id, step: str, plan: Planned) -> None:
        resume(saga_id, input={"floor": None}, by=self.user)

    def _by_hand(self, saga_id, step: str, plan: Planned) -> None:
        skip_step(saga_id, step, result={"done_by_hand": True},
                  reason=f"{step} kept failing after the pivot: done by hand", by=self.user)

    MOVES = {RESUME: _resume, FIX_ADDRESS: _fix_address, CONFIRM_BY_PHONE: _confirm_by_phone,
             ADD_LAPTOP: _add_laptop, ADD_DESK: _add_desk, ANY_FLOOR: _any_floor, BY_HAND: _by_hand}


@dataclass
class OperatorFigures:
    saga_type: str
    paused: int = 0  # pauses past the pivot
    resumed: int = 0  # resumes by a person (corrected input included)
    corrected: int = 0  # of those, with corrected input
    skipped: int = 0  # steps a person skipped with a result


def operator_figures(saga_ids: list) -> list[OperatorFigures]:
    """Per saga type: pauses past the pivot, and the resumes and skips people made, from the sagas' events."""
    rows = SagaEvent.objects.filter(saga_id__in=saga_ids, kind__in=(
        EventKind.SAGA_PAUSED, EventKind.SAGA_RESUMED, EventKind.STEP_SKIPPED)).values_list(
        "saga__saga_type", "kind", "detail")
    figures: dict = {}
    for saga_type, kind, detail in rows:
        detail = detail or {}
        row = figures.setdefault(saga_type, OperatorFigures(saga_type))
        if kind == EventKind.SAGA_PAUSED and detail.get("cause") == AFTER_PIVOT:
            row.paused += 1
        elif kind == EventKind.SAGA_RESUMED and detail.get("phase") == "person":
            row.resumed += 1
            row.corrected += bool(detail.get("changed_input"))
        elif kind == EventKind.STEP_SKIPPED and "result" in detail:
            row.skipped += 1
    return sorted((f for f in figures.values() if f.paused or f.resumed or f.skipped), key=lambda f: f.saga_type)


# --- waits in the report -----------------------------------------------------------------------


@dataclass
class GateFigures:
    saga_type: str
    step: str
    waits: list = field(default_factory=list)  # seconds from waiting to its end, for every ended wait
    approved: int = 0
    rejected: int = 0
    timed_out: int = 0
    cancelled: int = 0
    skipped: int = 0
    open: int = 0

    @property
    def p50(self) -> float | None:
        return percentile(self.waits, 0.5)

    @property
    def p95(self) -> float | None:
        return percentile(self.waits, 0.95)


def gate_figures(saga_ids: list) -> list[GateFigures]:
    """Per gate: how long its waits lasted (p50, p95) and how they ended, from the sagas' events."""
    rows = SagaEvent.objects.filter(saga_id__in=saga_ids, saga__saga_type__in=GATED_TYPES, kind__in=(
        EventKind.STEP_WAITING, EventKind.STEP_SIGNALLED, EventKind.STEP_FAILED, EventKind.STEP_SUCCEEDED,
        EventKind.STEP_SKIPPED,
    )).order_by("created_at", "pk").values_list("saga_id", "saga__saga_type", "step__name", "kind", "detail",
                                                "created_at")
    figures: dict = {}
    began: dict = {}
    for saga_id, saga_type, step, kind, detail, at in rows:
        detail = detail or {}
        key = (saga_id, step)
        if detail.get("child_saga"):
            continue  # a ChildSaga step waits for its child saga: not a gate
        if kind == EventKind.STEP_SKIPPED:
            if detail.get("reason") == CONDITION_FALSE:  # a gate whose condition (when=) was false: no wait
                figures.setdefault((saga_type, step), GateFigures(saga_type, step)).skipped += 1
            continue
        if kind == EventKind.STEP_WAITING:
            began[key] = (at, saga_type)
            figures.setdefault((saga_type, step), GateFigures(saga_type, step))
            continue
        if kind == EventKind.STEP_SUCCEEDED and detail.get("wait_skipped"):
            figures.setdefault((saga_type, step), GateFigures(saga_type, step)).skipped += 1
            continue
        if key not in began:
            continue  # not a wait that ended (an ordinary step's event)
        gate = figures[(saga_type, step)]
        if kind == EventKind.STEP_SIGNALLED:
            if detail.get("signal") == "complete":
                gate.approved += 1
            else:
                gate.rejected += 1
        elif kind == EventKind.STEP_FAILED and detail.get("timeout"):
            gate.timed_out += 1
        elif kind == EventKind.STEP_FAILED and detail.get("waiting"):
            gate.cancelled += 1
        else:
            continue  # the success or failure that follows a signal
        gate.waits.append((at - began.pop(key)[0]).total_seconds())
    for (_, step), (_, saga_type) in began.items():
        figures[(saga_type, step)].open += 1
    return sorted(figures.values(), key=lambda g: (g.saga_type, g.step))


def failure_rules_install(*, rate: float, seed: int | None) -> list[dict]:
    """Every corporate saga type (child sagas included), every step: ``rate / 2`` transient and ``rate / 2``
    permanent.

    Returns the rules these replaced, for ``failure_rules_remove`` to put back.
    """
    replaced = list(FailureInjectionRule.objects.filter(saga_type__in=ALL_TYPES, step="*").exclude(
        note=DEMO_RULE_NOTE).values("saga_type", "step", "transient", "permanent", "seed", "note"))
    for saga_type in ALL_TYPES:  # IT's provisioning too: a child that fails for good undoes its parent
        services.failure_rule_set(saga_type=saga_type, step="*", transient=rate / 2, permanent=rate / 2,
                                  seed=seed, note=DEMO_RULE_NOTE)
    return replaced


def failure_rules_remove(replaced: list[dict] = ()) -> None:
    services.failure_rules_clear(note=DEMO_RULE_NOTE)
    for rule in replaced:
        services.failure_rule_set(**rule)
