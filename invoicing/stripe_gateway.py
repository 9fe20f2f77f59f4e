"""Stripe, through the official client: customers, charging finalized invoices, Checkout.

Every call carries an idempotency key derived from our own rows (a customer's id, an
invoice's id and attempt number, a checkout's purpose), so a retried task or a double click
reaches Stripe as one request. No call is made inside an open database transaction: the
result is written afterwards by a service, which is itself idempotent (a payment is unique
on its PaymentIntent id, so the webhook and the synchronous answer record it once).

``STRIPE_API_BASE`` points the client at another server (the tests' local Stripe).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import stripe
from django.conf import settings

from billing.models import Customer
from invoicing.money import from_minor_units_int, to_minor_units_int

if TYPE_CHECKING:  # the client's request types, for the type checker only
    from stripe.params import CustomerCreateParams, CustomerUpdateParams


def client() -> stripe.StripeClient:
    options: dict[str, Any] = {"max_network_retries": 2}
    if settings.STRIPE_API_BASE:
        options["base_addresses"] = {"api": settings.STRIPE_API_BASE}
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, **options)


def sync_customer(*, customer: Customer) -> str:
    """The customer's Stripe id: created once (a stable idempotency key; the id saved only
    where none is), its name and e-mail updated on later calls."""
    metadata = {"external_id": customer.external_id, "customer_id": str(customer.pk)}
    api = client().v1.customers
    if customer.stripe_customer_id:
        changes: CustomerUpdateParams = {"name": customer.name, "metadata": metadata}
        if customer.email:  # an e-mail removed here is left at Stripe
            changes["email"] = customer.email
        api.update(customer.stripe_customer_id, changes)
        return customer.stripe_customer_id
    details: CustomerCreateParams = {"name": customer.name, "metadata": metadata}
    if customer.email:
        details["email"] = customer.email
    created = api.create(details, {"idempotency_key": f"billing-customer-{customer.pk}"})
    Customer.objects.filter(pk=customer.pk, stripe_customer_id="").update(
        stripe_customer_id=created.id
    )
    customer.refresh_from_db(fields=["stripe_customer_id"])
    return customer.stripe_customer_id


def default_payment_method(stripe_customer_id: str) -> str | None:
    """The card the customer saved as its default for invoices, if any."""
    found = client().v1.customers.retrieve(stripe_customer_id)
    invoice_settings = getattr(found, "invoice_settings", None)
    method = getattr(invoice_settings, "default_payment_method", None)
    return method if isinstance(method, str) or method is None else method.id


class ChargeDeclined(Exception):
    def __init__(self, message: str, payment_intent_id: str | None, code: str = "card_declined"):
        super().__init__(message)
        self.message = message
        self.payment_intent_id = payment_intent_id
        self.code = code


class ChargeInFlight(ChargeDeclined):
    """Stripe accepted the charge and is still processing it (``processing``): its outcome
    arrives by webhook (``payment_intent.succeeded`` / ``payment_failed``). A subclass of
    ``ChargeDeclined`` so that a caller not told apart keeps treating it as not paid now."""

    def __init__(self, message: str, payment_intent_id: str | None):
        super().__init__(message, payment_intent_id, code="processing")


def charge(
    *,
    stripe_customer_id: str,
    payment_method: str,
    amount: Decimal,
    currency: str,
    idempotency_key: str,
    metadata: dict[str, str],
    description: str,
) -> tuple[str, Decimal]:
    """Charge a saved card off-session: (PaymentIntent id, amount received). A decline
    raises ``ChargeDeclined`` (``code``: ``card_declined``, ``authentication_required`` when
    the card asks for authentication, which off-session cannot give); a charge Stripe is
    still processing raises ``ChargeInFlight`` (the outcome comes by webhook)."""
    try:
        intent = client().v1.payment_intents.create(
            {
                "amount": to_minor_units_int(amount, currency),
                "currency": currency.lower(),
                "customer": stripe_customer_id,
                "payment_method": payment_method,
                "off_session": True,
                "confirm": True,
                "metadata": metadata,
                "description": description,
            },
            {"idempotency_key": idempotency_key},
        )
    except stripe.CardError as error:
        declined = getattr(error.error, "payment_intent", None)
        raise ChargeDeclined(
            error.user_message or str(error), getattr(declined, "id", None)
        ) from None
    if intent.status == "processing":
        raise ChargeInFlight("payment processing: its outcome arrives by webhook", intent.id)
    if intent.status == "requires_action":  # off-session: the customer cannot authenticate
        raise ChargeDeclined(
            "the card asks the customer to authenticate the payment, which an off-session "
            "charge cannot do",
            intent.id,
            code="authentication_required",
        )
    if intent.status != "succeeded":
        raise ChargeDeclined(f"payment {intent.status}", intent.id, code=f"payment_{intent.status}")
    received = getattr(intent, "amount_received", None) or intent.amount
    return intent.id, from_minor_units_int(received, currency)


def checkout(
    *,
    stripe_customer_id: str,
    amount: Decimal,
    currency: str,
    product: str,
    success_url: str,
    cancel_url: str,
    metadata: dict[str, str],
    idempotency_key: str,
) -> tuple[str, str]:
    """A hosted Checkout page for one payment: (session id, URL to send the customer to).
    ``metadata`` is put on the session and on its PaymentIntent, so either webhook tells
    what the payment was for."""
    session = client().v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": stripe_customer_id,
            "line_items": [
                {
                    "price_data": {
                        "currency": currency.lower(),
                        "unit_amount": to_minor_units_int(amount, currency),
                        "product_data": {"name": product},
                    },
                    "quantity": 1,
                }
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
        },
        {"idempotency_key": idempotency_key},
    )
    if session.url is None:  # only an embedded session has none; this one is hosted
        raise RuntimeError(f"Stripe returned the checkout session {session.id} without a URL")
    return session.id, session.url


class RefundError(Exception):
    pass


def refund(
    *,
    payment_intent_id: str,
    amount: Decimal,
    currency: str,
    idempotency_key: str,
    metadata: dict[str, str],
) -> tuple[str, Decimal]:
    """Refund part of a payment: (refund id, amount refunded). A refusal or an outage
    raises ``RefundError`` (the same key sent again refunds at most once)."""
    try:
        created = client().v1.refunds.create(
            {
                "payment_intent": payment_intent_id,
                "amount": to_minor_units_int(amount, currency),
                "metadata": metadata,
            },
            {"idempotency_key": idempotency_key},
        )
    except stripe.StripeError as error:
        raise RefundError(getattr(error, "user_message", None) or str(error)) from None
    if created.status not in ("succeeded", "pending"):
        raise RefundError(f"refund {created.id} is {created.status}")
    return created.id, from_minor_units_int(created.amount, currency)
