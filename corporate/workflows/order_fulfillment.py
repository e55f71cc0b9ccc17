"""corporate.order_fulfillment: Inventory -> Payment -> Shipping (the pivot) -> Notification.

Stock moves from ``on_hand`` to ``reserved`` under a row lock, so concurrent
orders never oversell. Payment behaves like an external provider: it is not
transactional, it keys each charge by the step's idempotency key, and it may
decline for good (card blocked, over the credit limit) or time out and be
retried. A sent confirmation cannot be unsent: it has no compensation.

Version 2 (what ``start_saga`` runs) makes the shipment its pivot: an order
that has shipped is not un-shipped because the confirmation failed. The
confirmation is retried for longer, and one that fails for good (a bouncing
address) pauses the order for a person, who keeps its charge and its
shipment: they correct the customer's address and resume, or confirm another
way and skip the step. Version 1 (same steps, no pivot: a failed confirmation
refunds and cancels) stays registered for the orders started on it.
"""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from rest_framework import serializers

from sagas import PermanentError, Saga, Step

from ..models import (
    Customer,
    Notification,
    Order,
    OrderStatus,
    Payment,
    Product,
    Refund,
    Shipment,
    ShipmentStatus,
)
from .common import COMPENSATION_RETRY, FORWARD_RETRY, STEP_RETRY, STEP_TIMEOUT, reference_field

NAME = "corporate.order_fulfillment"

# Country -> carrier; an order to any other country is refused by Shipping.
CARRIERS = {
    "DE": "DHL", "AT": "DHL", "NL": "PostNL", "BE": "bpost", "FR": "Colissimo", "ES": "Correos",
    "IT": "Poste", "PL": "InPost", "GB": "Royal Mail", "US": "UPS", "CA": "Canada Post",
}


class PaymentGatewayTimeout(Exception):
    """The payment provider did not answer in time: worth another attempt."""


class OrderInput(serializers.Serializer):
    customer = serializers.PrimaryKeyRelatedField(queryset=Customer.objects.all())
    product = serializers.PrimaryKeyRelatedField(queryset=Product.objects.all())
    quantity = serializers.IntegerField(min_value=1)
    ship_to = serializers.RegexField(r"^[A-Z]{2}$", initial="DE",
                                     error_messages={"invalid": "an ISO country code such as DE"})
    reference = reference_field()


# --- 1. Inventory reserves stock -------------------------------------------------------


def reserve_stock(ctx) -> dict:
    quantity = int(ctx.input["quantity"])
    with transaction.atomic():
        product = Product.objects.select_for_update().get(pk=ctx.input["product"])
        if product.on_hand < quantity:
            raise PermanentError(f"out of stock: {product.sku} has {product.on_hand}, {quantity} requested")
        order = Order.objects.create(
            saga_id=ctx.saga_id,
            reference=ctx.input.get("reference", ""),
            customer_id=ctx.input["customer"],
            product=product,
            quantity=quantity,
            amount=product.price * quantity,
            ship_to=ctx.input["ship_to"],
        )
        product.on_hand -= quantity
        product.reserved += quantity
        product.save(update_fields=["on_hand", "reserved"])
    return {"order": order.pk, "amount": str(order.amount), "sku": product.sku, "quantity": quantity}


def release_stock(ctx) -> None:
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=ctx.result["order"])
        if order.stock_released_at is not None:
            return
        product = Product.objects.select_for_update().get(pk=order.product_id)
        product.on_hand += order.quantity
        product.reserved -= order.quantity
        product.save(update_fields=["on_hand", "reserved"])
        order.stock_released_at = timezone.now()
        order.status = OrderStatus.CANCELLED
        order.save(update_fields=["stock_released_at", "status"])


# --- 2. Payment charges the customer ---------------------------------------------------


def charge_payment(ctx) -> dict:
    order = Order.objects.select_related("customer").get(pk=ctx.results["reserve_stock"]["order"])
    customer = order.customer
    if customer.card_blocked:
        raise PermanentError(f"payment declined: the card of {customer.name} is blocked")
    if order.amount > customer.credit_limit:
        raise PermanentError(f"payment declined: {order.amount} exceeds the credit limit of {customer.credit_limit}")
    if ctx.attempt <= customer.gateway_glitches:
        raise PaymentGatewayTimeout(f"payment gateway did not answer (attempt {ctx.attempt})")
    with transaction.atomic():
        payment, _ = Payment.objects.get_or_create(
            idempotency_key=ctx.idempotency_key, defaults={"order": order, "amount": order.amount}
        )
        Order.objects.filter(pk=order.pk).update(status=OrderStatus.PAID)
    return {"payment": payment.pk, "amount": str(payment.amount)}


def refund_payment(ctx) -> None:
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=ctx.result["payment"])
        Refund.objects.get_or_create(payment=payment, defaults={"amount": payment.amount})


# --- 3. Shipping schedules a shipment --------------------------------------------------


def schedule_shipment(ctx) -> dict:
    order = Order.objects.get(pk=ctx.results["reserve_stock"]["order"])
    carrier = CARRIERS.get(order.ship_to)
    if carrier is None:
        raise PermanentError(f"no carrier ships to {order.ship_to}")
    with transaction.atomic():
        shipment, _ = Shipment.objects.get_or_create(order=order, defaults={"carrier": carrier})
        Order.objects.filter(pk=order.pk).update(status=OrderStatus.SHIPPING)
    return {"shipment": shipment.pk, "carrier": carrier}


def cancel_shipment(ctx) -> None:
    with transaction.atomic():
        shipment = Shipment.objects.select_for_update().get(pk=ctx.result["shipment"])
        if shipment.status != ShipmentStatus.CANCELLED:
            shipment.status = ShipmentStatus.CANCELLED
            shipment.cancelled_at = timezone.now()
            shipment.save(update_fields=["status", "cancelled_at"])


# --- 4. Notification tells the customer (no compensation; after the pivot in version 2) -


def send_confirmation(ctx) -> dict:
    order = Order.objects.select_related("customer", "product").get(pk=ctx.results["reserve_stock"]["order"])
    if order.customer.email_bounces:
        raise PermanentError(f"mail server rejected the confirmation to {order.customer.email}")
    carrier = ctx.results["schedule_shipment"]["carrier"]
    with transaction.atomic():
        message, _ = Notification.objects.get_or_create(
            idempotency_key=ctx.idempotency_key,
            defaults={
                "order": order,
                "recipient": order.customer.email,
                "message": f"Your order of {order.quantity} x {order.product.name} ships with {carrier}.",
            },
        )
        Order.objects.filter(pk=order.pk).update(status=OrderStatus.CONFIRMED)
    return {"notification": message.pk}


# Version 1: the confirmation is the last step, and a failure of it undoes the whole order.
CONFIRMATION_LAST = ("Notification e-mails the customer. No compensation: a sent message cannot be unsent, so "
                     "this is the last step and nothing after it can fail.")
# Version 2: it comes after the pivot, so it is only ever retried, then left to a person.
CONFIRMATION_AFTER_PIVOT = (
    "Notification e-mails the customer, retried with growing waits. No compensation: a sent message cannot be "
    "unsent, and past the pivot nothing is undone: a confirmation that fails for good (a bouncing address) "
    "pauses the order, its charge and shipment held, until a person corrects the address and resumes, or "
    "confirms another way and skips this step.")
SHIPMENT_IS_PIVOT = (" The pivot: once a carrier is booked the order only goes forward; a later failure pauses "
                     "it for a person instead of refunding.")


def build_saga(*, version: int, pivot: bool) -> Saga:
    """The order flow; with ``pivot`` the shipment is its point of no return (version 2 on)."""
    return Saga(
        name=NAME,
        version=version,
        description="Reserve stock, charge the customer, schedule the shipment, confirm by e-mail.",
        input_schema=OrderInput,
        steps=[
            Step("reserve_stock", reserve_stock, compensation=release_stock, transactional=True,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 description="Inventory moves the quantity from on hand to reserved; refuses when stock is short. "
                             "Undo: put the stock back."),
            Step("charge_payment", charge_payment, compensation=refund_payment,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 description="Payment charges the order amount, keyed by the step's idempotency key; declines for "
                             "good on a blocked card or over the credit limit, retries gateway timeouts. "
                             "Undo: a refund row (the payment stays)."),
            Step("schedule_shipment", schedule_shipment, compensation=cancel_shipment, transactional=True,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT, pivot=pivot,
                 description="Shipping books a carrier for the destination; refuses countries no carrier serves. "
                             "Undo: cancel the shipment." + (SHIPMENT_IS_PIVOT if pivot else "")),
            Step("send_confirmation", send_confirmation, compensation=None,
                 retry=FORWARD_RETRY if pivot else STEP_RETRY, timeout=STEP_TIMEOUT,
                 description=CONFIRMATION_AFTER_PIVOT if pivot else CONFIRMATION_LAST),
        ],
    )


saga_v1 = build_saga(version=1, pivot=False)
saga = build_saga(version=2, pivot=True)
definitions = (saga_v1, saga)  # every registered version; ``saga`` is the latest
