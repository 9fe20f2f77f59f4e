"""Stripe webhooks: verified, stored once, handled idempotently and in any order.

``receive`` checks the signature (``STRIPE_WEBHOOK_SECRET``; an unsigned or tampered body
is refused), stores the event under its unique id before anything else (a redelivery is
recognised; nothing acknowledged is lost) and handles it. Handling is safe to repeat and
to receive out of order, because every effect is keyed by Stripe's own ids:

    payment_intent.succeeded     an invoice's payment, once per PaymentIntent
    checkout.session.completed   an invoice paid on Checkout (the same PaymentIntent key),
                                 or a top-up credited once per session
    payment_intent.payment_failed  the attempt it names failed (an old or repeated failure
                                 changes nothing; a paid invoice stays paid)
    charge.refunded              the refunded total of a payment (cumulative, so a late or
                                 repeated event adds nothing): Dr @Refunds, Cr @StripeClearing

An event whose handling raised is kept unprocessed and retried by a beat task.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import services as billing_services
from billing.errors import BillingError
from billing.models import Customer
from invoicing import services
from invoicing.models import Payment, PaymentProvider, StripeEvent
from invoicing.money import from_minor_units_int, to_minor_unit
from ledger import services as ledger
from ledger.models import NormalBalance
from ledger.services import Leg, TransactionSpec

log = logging.getLogger(__name__)
REFUNDS = "@Refunds"
CREDITS_SOLD = "@CreditsSold"


class InvalidSignature(BillingError):
    code = "invalid_signature"
    http_status = 400


def receive(*, payload: bytes, signature: str) -> tuple[StripeEvent, bool]:
    """Verify, store and handle one webhook delivery: (stored event, whether it was new)."""
    try:
        stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    except (stripe.SignatureVerificationError, ValueError) as error:
        raise InvalidSignature(f"the Stripe signature does not verify: {error}") from None
    data = json.loads(payload)
    try:
        with transaction.atomic():
            event = StripeEvent.objects.create(
                event_id=data["id"], type=data.get("type", ""), payload=data
            )
        created = True
    except IntegrityError:
        event, created = StripeEvent.objects.get(event_id=data["id"]), False
    if event.processed_at is None:
        process(event_id=event.pk)
        event.refresh_from_db()
    return event, created


def process(*, event_id: int) -> StripeEvent:
    """Handle a stored event once; a failure is recorded and left for the retry task."""
    with transaction.atomic():
        event = StripeEvent.objects.select_for_update().get(pk=event_id)
        if event.processed_at is not None:
            return event
        handler = HANDLERS.get(event.type)
        event.attempts += 1
        try:
            with transaction.atomic():
                outcome = handler(event.payload["data"]["object"]) if handler else "ignored"
        except Exception as error:  # noqa: BLE001 - kept for the retry task, never lost
            log.exception("stripe event %s (%s) failed", event.event_id, event.type)
            event.outcome = f"failed: {error}"[:2000]
            event.save(update_fields=["attempts", "outcome"])
            return event
        event.outcome = outcome
        event.processed_at = timezone.now()
        event.save(update_fields=["attempts", "outcome", "processed_at"])
        return event


def process_pending(*, limit: int = 500) -> int:
    ids = list(
        StripeEvent.objects.filter(processed_at__isnull=True)
        .order_by("received_at")
        .values_list("pk", flat=True)[:limit]
    )
    for pk in ids:
        process(event_id=pk)
    return len(ids)


# --- handlers ------------------------------------------------------------------------------


def _metadata(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata") or {}


def _record_invoice_payment(invoice_id: str, intent_id: str, amount: int, currency: str) -> str:
    payment = services.record_payment(
        invoice_id=int(invoice_id),
        amount=from_minor_units_int(amount, currency.upper()),
        provider=PaymentProvider.STRIPE,
        provider_payment_id=intent_id,
    )
    return "duplicate payment" if payment.replayed else f"payment {payment.pk} recorded"


def payment_intent_succeeded(intent: dict[str, Any]) -> str:
    meta = _metadata(intent)
    if meta.get("kind") != "invoice":
        return "not an invoice payment"
    received = intent.get("amount_received") or intent["amount"]
    return _record_invoice_payment(meta["invoice_id"], intent["id"], received, intent["currency"])


def payment_intent_failed(intent: dict[str, Any]) -> str:
    meta = _metadata(intent)
    if meta.get("kind") != "invoice":
        return "not an invoice payment"
    error = intent.get("last_payment_error") or {}
    services.record_payment_failure(
        invoice_id=int(meta["invoice_id"]),
        attempt=int(meta.get("attempt", "1")),
        message=error.get("message") or "payment failed",
    )
    return "failure recorded"


def checkout_completed(session: dict[str, Any]) -> str:
    meta = _metadata(session)
    if session.get("payment_status") != "paid":
        return f"not paid ({session.get('payment_status')})"
    intent = session.get("payment_intent")
    intent_id = intent["id"] if isinstance(intent, dict) else intent
    if meta.get("kind") == "invoice":
        return _record_invoice_payment(
            meta["invoice_id"], intent_id, session["amount_total"], session["currency"]
        )
    if meta.get("kind") == "top_up":
        return _credit_top_up(session, meta)
    return "not ours"


def _credit_top_up(session: dict[str, Any], meta: dict[str, str]) -> str:
    customer = Customer.objects.get(pk=int(meta["customer_id"]))
    currency, amount = meta["currency"], Decimal(meta["amount"])
    paid = from_minor_units_int(session["amount_total"], session["currency"].upper())
    money = session["currency"].upper()
    if currency == money:
        billing_services.top_up(
            customer=customer,
            amount=amount,
            currency=currency,
            reference=f"stripe-checkout:{session['id']}",
            description=f"Top-up by card ({session['id']})",
            source_code=services.CLEARING["stripe"],
        )
        return "wallet credited"
    # Credits bought for money: the money is received (and owed as credits until used);
    # the credits come into the wallet from the outside world.
    clearing = services.system_account_id(services.CLEARING["stripe"], money, NormalBalance.DEBIT)
    sold = services.system_account_id(CREDITS_SOLD, money)
    ledger.post_transactions(
        transactions=[
            TransactionSpec(
                reference=f"stripe-checkout:{session['id']}:payment",
                legs=[Leg(clearing, paid), Leg(sold, -paid)],
                description=f"Credits bought by card ({session['id']})",
                metadata={"kind": "credits_sale", "customer": customer.external_id},
            )
        ]
    )
    billing_services.top_up(
        customer=customer,
        amount=amount,
        currency=currency,
        reference=f"stripe-checkout:{session['id']}",
        description=f"Credits bought by card ({session['id']})",
    )
    return "credits credited"


def charge_refunded(charge: dict[str, Any]) -> str:
    intent = charge.get("payment_intent")
    intent_id = intent["id"] if isinstance(intent, dict) else intent
    with transaction.atomic():
        payment = (
            Payment.objects.select_for_update()
            .filter(provider=PaymentProvider.STRIPE, provider_payment_id=intent_id)
            .first()
        )
        if payment is None:
            return "no payment of ours"
        total = from_minor_units_int(charge["amount_refunded"], charge["currency"].upper())
        total = min(to_minor_unit(total, payment.currency), payment.amount)
        new = total - payment.amount_refunded
        if new <= 0:
            return "refund already recorded"
        currency = payment.currency
        ledger.post_transactions(
            transactions=[
                TransactionSpec(
                    reference=f"refund:stripe:{intent_id}:{total}",
                    legs=[
                        Leg(
                            services.system_account_id(REFUNDS, currency, NormalBalance.DEBIT), new
                        ),
                        Leg(
                            services.system_account_id(
                                services.CLEARING["stripe"], currency, NormalBalance.DEBIT
                            ),
                            -new,
                        ),
                    ],
                    description=f"Refund of payment {intent_id}",
                    metadata={"kind": "refund", "invoice_id": payment.invoice_id},
                )
            ]
        )
        Payment.objects.filter(pk=payment.pk).update(amount_refunded=total)
    return f"refunded {to_minor_unit(new, currency)}"


HANDLERS = {
    "payment_intent.succeeded": payment_intent_succeeded,
    "payment_intent.payment_failed": payment_intent_failed,
    "checkout.session.completed": checkout_completed,
    "charge.refunded": charge_refunded,
}
