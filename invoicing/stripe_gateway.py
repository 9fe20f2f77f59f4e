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
from typing import Any

import stripe
from django.conf import settings

from billing.models import Customer
from invoicing.money import from_minor_units_int, to_minor_units_int


def client() -> stripe.StripeClient:
    options: dict[str, Any] = {"max_network_retries": 2}
    if settings.STRIPE_API_BASE:
        options["base_addresses"] = {"api": settings.STRIPE_API_BASE}
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, **options)


def sync_customer(*, customer: Customer) -> str:
    """The customer's Stripe id: created once (a stable idempotency key; the id saved only
    where none is), its name and e-mail updated on later calls."""
    details = {
        "name": customer.name,
        "email": customer.email or None,
        "metadata": {"external_id": customer.external_id, "customer_id": str(customer.pk)},
    }
    details = {k: v for k, v in details.items() if v is not None}
    api = client().v1.customers
    if customer.stripe_customer_id:
        api.update(customer.stripe_customer_id, details)
        return customer.stripe_customer_id
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
    def __init__(self, message: str, payment_intent_id: str | None):
        super().__init__(message)
        self.message = message
        self.payment_intent_id = payment_intent_id


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
    raises ``ChargeDeclined``."""
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
        intent = getattr(error.error, "payment_intent", None)
        raise ChargeDeclined(
            error.user_message or str(error), getattr(intent, "id", None)
        ) from None
    if intent.status != "succeeded":
        raise ChargeDeclined(f"payment {intent.status}", intent.id)
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
    return session.id, session.url
