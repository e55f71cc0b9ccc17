"""What ``saga_demo`` runs: reference data, the sagas it plans, and how it starts them.

The demo's reference data (departments, products, customers, laptops, desks,
services) is created on first use and topped up before each run, so a run
never fails only because earlier runs used up the stock or the pools.
Planned inputs come from a ``random.Random(seed)``: the same seed plans the
same sagas, each with a ``reference`` that seeded failure injection keys on.
"""
from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from sagas import start_saga
from sagas.models import SagaInstance, SagaStatus

from . import services
from .models import Customer, Department, FailureInjectionRule, Product, Service
from .sagas import BUDGET_APPROVAL, EMPLOYEE_ONBOARDING, ORDER_FULFILLMENT, SAGA_TYPES, SYSTEM_DEPLOYMENT
from .selectors import desks_free_count, laptops_free_count
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


@dataclass
class Planned:
    saga_type: str
    input: dict
    label: str = ""
    expected: str | None = None  # the final status an example must reach


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
        if saga_type == ORDER_FULFILLMENT:
            data = {
                "customer": world.customers[rng.choice(GOOD_CUSTOMERS)].pk,
                "product": world.products[rng.choice(sorted(world.products))].pk,
                "quantity": rng.randint(1, 3),
                "ship_to": rng.choice(sorted(CARRIERS)),
            }
        elif saga_type == EMPLOYEE_ONBOARDING:
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            data = {
                "name": f"{first} {last}",
                "email": f"{first}.{last}.{stamp}.{n + 1}@corp.example".lower(),
                "department": world.departments[rng.choice(sorted(world.departments))].pk,
                "salary": str(rng.randrange(40000, 120000, 500)),
                "role": rng.choice(["engineer", "analyst", "account manager", "designer"]),
            }
        elif saga_type == BUDGET_APPROVAL:
            data = {
                "department": world.departments[rng.choice(sorted(world.departments))].pk,
                "amount": str(rng.randrange(500, 30000, 50)),
                "purpose": rng.choice(PURPOSES),
            }
        else:
            data = {"service": _service(n // len(types)).pk, "version": f"{seed}.{n + 1}.{stamp}"}
        plans.append(Planned(saga_type, {**data, "reference": reference}, label=reference))
    return plans


def plan_examples(world: World) -> list[Planned]:
    """One success and one refusal per saga type, each with the outcome it must reach."""
    stamp = _stamp()
    ensure_services(2)
    eng = world.departments["ENG"].pk
    ada = world.customers["ada@example.com"].pk
    keyboard = world.products["KB-01"].pk

    def order(label, expected, customer, **extra):
        data = {"customer": customer, "product": keyboard, "quantity": 1, "ship_to": "DE", **extra}
        return Planned(ORDER_FULFILLMENT, data, label, expected)

    return [
        order("order ships", SUCCEEDED, ada),
        order("order refused: out of stock", COMPENSATED, ada, quantity=10**6),
        order("order refused: card declined", COMPENSATED, world.customers["blocked@example.com"].pk),
        order("order undone: confirmation bounced", COMPENSATED, world.customers["bounce@example.com"].pk),
        Planned(EMPLOYEE_ONBOARDING, {"name": "Example Hire", "email": f"hire.{stamp}@corp.example",
                                      "department": eng, "salary": "85000", "role": "engineer"},
                "onboarding completes", SUCCEEDED),
        Planned(EMPLOYEE_ONBOARDING, {"name": "Example Star", "email": f"star.{stamp}@corp.example",
                                      "department": eng, "salary": "900000", "role": "chief scientist"},
                "onboarding refused: salary above band", COMPENSATED),
        Planned(BUDGET_APPROVAL, {"department": eng, "amount": "20000", "purpose": "example: GPU cluster"},
                "budget approved by the executive", SUCCEEDED),
        Planned(BUDGET_APPROVAL, {"department": eng, "amount": "40000", "purpose": "example: company yacht",
                                  "executive_approves": False},
                "budget refused by the executive", COMPENSATED),
        Planned(SYSTEM_DEPLOYMENT, {"service": _service(0).pk, "version": f"example-{stamp}-ok"},
                "deployment verified", SUCCEEDED),
        Planned(SYSTEM_DEPLOYMENT, {"service": _service(1).pk, "version": f"example-{stamp}-bad", "healthy": False},
                "deployment rolled back", COMPENSATED),
    ]


def start(plans: list[Planned]) -> list[Started]:
    """Start every planned saga through ``start_saga`` (the normal enqueue path)."""
    return [Started(plan, start_saga(plan.saga_type, input=plan.input)) for plan in plans]


def failure_rules_install(*, rate: float, seed: int | None) -> list[dict]:
    """Every corporate saga type, every step: ``rate / 2`` transient and ``rate / 2`` permanent.

    Returns the rules these replaced, for ``failure_rules_remove`` to put back.
    """
    replaced = list(FailureInjectionRule.objects.filter(saga_type__in=SAGA_TYPES, step="*").exclude(
        note=DEMO_RULE_NOTE).values("saga_type", "step", "transient", "permanent", "seed", "note"))
    for saga_type in SAGA_TYPES:
        services.failure_rule_set(saga_type=saga_type, step="*", transient=rate / 2, permanent=rate / 2,
                                  seed=seed, note=DEMO_RULE_NOTE)
    return replaced


def failure_rules_remove(replaced: list[dict] = ()) -> None:
    services.failure_rules_clear(note=DEMO_RULE_NOTE)
    for rule in replaced:
        services.failure_rule_set(**rule)
