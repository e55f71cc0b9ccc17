"""corporate.order_fulfillment: Inventory -> Payment -> Shipping -> Notification.

Stock moves from ``on_hand`` to ``reserved`` under a row lock, so concurrent
orders never oversell. Payment behaves like an external provider: it is not
transactional, it keys each charge by the step's idempotency key, and it may
decline for good (card blocked, over the credit limit) or time out and be
retried. The confirmation message is the point of no return: it has no
compensation.
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
from .common import COMPENSATION_RETRY, STEP_RETRY, STEP_TIMEOUT, reference_field

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
    ship_to = serializers.RegexField(r"^[A-Z]{2}$", error_messages={"invalid": "an ISO country code such as DE"})
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


# --- 4. Notification tells the customer (no compensation) ------------------------------


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


saga = Saga(
    name=NAME,
    version=1,
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
             retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
             description="Shipping books a carrier for the destination; refuses countries no carrier serves. "
                         "Undo: cancel the shipment."),
        Step("send_confirmation", send_confirmation, compensation=None,
             retry=STEP_RETRY, timeout=STEP_TIMEOUT,
             description="Notification e-mails the customer. No compensation: a sent message cannot be "
                         "unsent, so this is the last step and nothing after it can fail."),
    ],
)
