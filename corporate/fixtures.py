"""Row factories for tests and quick experiments: small, explicit reference data.

Each builder creates fresh rows with unique keys and returns them; the input
builders return the JSON-ready dicts the sagas take.
"""
from __future__ import annotations

import itertools
from . import services
from .models import Customer, Department, Product, Service

_serial = itertools.count(1)


def _n() -> int:
    return next(_serial)


def department(*, budget: int | str = 100000, salary_cap: int | str = 150000, frozen: bool = False) -> Department:
    n = _n()
    return services.department_create(code=f"D{n}", name=f"Department {n}", budget=budget, salary_cap=salary_cap,
                                      frozen=frozen)


def product(*, stock: int = 10, price: int | str = "25.00") -> Product:
    n = _n()
    return services.product_create(sku=f"SKU-{n}", name=f"Product {n}", price=price, stock=stock)


def customer(**options) -> Customer:
    n = _n()
    return services.customer_create(name=f"Customer {n}", email=f"customer{n}@example.com", **options)


def service(*, live_version: str = "1.0.0", frozen: bool = False) -> Service:
    return services.service_create(name=f"service-{_n()}", live_version=live_version, frozen=frozen)


def pools(*, laptops: int = 3, desks: int = 3) -> None:
    services.laptops_add(count=laptops)
    services.desks_add(count=desks)


class Inputs:
    """Valid inputs for each corporate saga, built on fresh reference rows."""

    @staticmethod
    def order(*, customer_: Customer | None = None, product_: Product | None = None, quantity: int = 1,
              ship_to: str = "DE", **extra) -> dict:
        customer_ = customer_ or customer()
        product_ = product_ or product()
        return {"customer": customer_.pk, "product": product_.pk, "quantity": quantity, "ship_to": ship_to, **extra}

    @staticmethod
    def onboarding(*, department_: Department | None = None, salary: str = "60000", **extra) -> dict:
        n = _n()
        department_ = department_ or department()
        return {"name": f"Person {n}", "email": f"person{n}@corp.example", "department": department_.pk,
                "salary": salary, "role": "engineer", **extra}

    @staticmethod
    def budget(*, department_: Department | None = None, amount: str = "5000", **extra) -> dict:
        department_ = department_ or department()
        return {"department": department_.pk, "amount": amount, "purpose": "team offsite", **extra}

    @staticmethod
    def deployment(*, service_: Service | None = None, version: str = "2.0.0", **extra) -> dict:
        service_ = service_ or service()
        return {"service": service_.pk, "version": version, **extra}
