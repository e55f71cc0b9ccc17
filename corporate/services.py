"""Writes to the corporate reference data (stock, pools, budgets, services) and to the
failure-injection rules. The sagas' own writes live next to their steps in
``corporate/workflows/``."""
from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from .models import (
    Customer,
    Department,
    Desk,
    DeskAssignment,
    FailureInjectionRule,
    Laptop,
    Product,
    Service,
)


def department_create(*, code: str, name: str, budget: Decimal | str | int, salary_cap: Decimal | str | int = 200000,
                      frozen: bool = False) -> Department:
    return Department.objects.create(code=code, name=name, budget=Decimal(str(budget)),
                                     salary_cap=Decimal(str(salary_cap)), frozen=frozen)


def department_ensure_available(*, department: Department, available: Decimal) -> Department:
    """Raise the budget so at least ``available`` is left to reserve (never lowers it)."""
    with transaction.atomic():
        department = Department.objects.select_for_update().get(pk=department.pk)
        missing = available - (department.budget - department.reserved)
        if missing > 0:
            department.budget += missing
            department.save(update_fields=["budget"])
    return department


def product_create(*, sku: str, name: str, price: Decimal | str | int, stock: int) -> Product:
    return Product.objects.create(sku=sku, name=name, price=Decimal(str(price)), initial_stock=stock, on_hand=stock)


def product_restock(*, product: Product, quantity: int) -> Product:
    """Receive ``quantity`` more units: on hand and the stock received grow together."""
    with transaction.atomic():
        product = Product.objects.select_for_update().get(pk=product.pk)
        product.on_hand += quantity
        product.initial_stock += quantity
        product.save(update_fields=["on_hand", "initial_stock"])
    return product


def customer_create(*, name: str, email: str, credit_limit: Decimal | str | int = 5000, card_blocked: bool = False,
                    gateway_glitches: int = 0, email_bounces: bool = False) -> Customer:
    return Customer.objects.create(name=name, email=email, credit_limit=Decimal(str(credit_limit)),
                                   card_blocked=card_blocked, gateway_glitches=gateway_glitches,
                                   email_bounces=email_bounces)


def customer_email_correct(*, customer: Customer, email: str) -> Customer:
    """The customer gave an address that works: mail to it is delivered (a person fixing a bounce)."""
    Customer.objects.filter(pk=customer.pk).update(email=email, email_bounces=False)
    return Customer.objects.get(pk=customer.pk)


def laptops_add(*, count: int, prefix: str = "LT", model: str | None = None) -> list[Laptop]:
    start = Laptop.objects.filter(asset_tag__startswith=f"{prefix}-").count()
    extra = {"model": model} if model else {}
    return [Laptop.objects.create(asset_tag=f"{prefix}-{start + n + 1:05d}", **extra) for n in range(count)]


def desks_add(*, count: int, prefix: str = "D") -> list[Desk]:
    start = Desk.objects.filter(code__startswith=f"{prefix}-").count()
    return [Desk.objects.create(code=f"{prefix}-{start + n + 1:05d}", floor=1 + (start + n) // 50)
            for n in range(count)]


def desk_vacate(*, desk: Desk) -> int:
    """Whoever sits at ``desk`` moves out: its open assignment is returned and the desk is free again."""
    return DeskAssignment.objects.filter(desk=desk, returned_at__isnull=True).update(returned_at=timezone.now())


def service_create(*, name: str, live_version: str = "1.0.0", frozen: bool = False) -> Service:
    return Service.objects.create(name=name, live_version=live_version, frozen=frozen)


def failure_rule_set(*, saga_type: str = "*", step: str = "*", transient: float = 0.0, permanent: float = 0.0,
                     seed: int | None = None, note: str = "") -> FailureInjectionRule:
    """Create or replace the rule for this saga type and step (read by workers within a second)."""
    rule, _ = FailureInjectionRule.objects.update_or_create(
        saga_type=saga_type, step=step,
        defaults={"transient": transient, "permanent": permanent, "seed": seed, "note": note},
    )
    return rule


def failure_rules_clear(*, note: str | None = None) -> int:
    """Delete the stored rules (only those with this note, when given)."""
    rules = FailureInjectionRule.objects.all()
    if note is not None:
        rules = rules.filter(note=note)
    deleted, _ = rules.delete()
    return deleted
