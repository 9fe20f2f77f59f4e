"""Stripe webhooks: verified, stored once, handled idempotently and in any order.

``receive`` checks the signature (``STRIPE_WEBHOOK_SECRET``; an unsigned or tampered body
is refused), stores the event under its unique id before anything else (a redelivery is
recognised; nothing acknowledged is lost) and handles it. Handling is safe to repeat and
to receive out of order, because every effect is keyed by Stripe's own ids:

    payment_intent.succeeded     an invoice's payment, once per PaymentIntent; an auto top-up's
                                 charge, credited once per attempt (invoicing.auto_top_up)
    checkout.session.completed   an invoice paid on Checkout (the same PaymentIntent key),
                                 or a top-up credited once per session
    payment_intent.payment_failed  the attempt it names failed (an old or repeated failure
                                 changes nothing; a paid invoice stays paid; an auto
                                 top-up's attempt is failed and counted once)
    charge.refunded              the refunded total of a payment (cumulative, so a late or
                                 repeated event adds nothing): Dr @Refunds, Cr @StripeClearing

What Stripe says was paid is compared with what we asked for, and what was paid is booked:
    - a currency other than the one asked for is never booked as ours: it is held on
      ``@UnappliedPayments`` in the currency paid (Dr @StripeClearing, Cr @UnappliedPayments);
    - more than an invoice owes is credited to the customer's wallet (``Payment.to_balance``);
    - a top-up credits what was paid (credits in proportion), not what its metadata asked.
Each of these leaves the event ``needs_review`` (the admin lists them) and logs a warning.

An event whose handling raised — or that must wait, as a refund of a payment not yet known —
stays ``pending`` and is retried by a beat task with a growing delay; after
``STRIPE_EVENT_MAX_ATTEMPTS`` it is ``failed`` and waits for finance (the admin's *Retry*).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from billing import limits
from billing import services as billing_services
from billing.errors import BillingError
from billing.models import Customer
from invoicing import auto_top_up, errors, services
from invoicing.models import (
    Invoice,
    InvoiceStatus,
    Payment,
    PaymentProvider,
    StripeEvent,
    StripeEventStatus,
)
from invoicing.money import (
    floor_to_minor_unit,
    from_minor_units_int,
    to_minor_unit,
    to_minor_units_int,
)
from ledger import services as ledger
from ledger.models import NormalBalance
from ledger.services import Leg, TransactionSpec

log = logging.getLogger(__name__)
REFUNDS = "@Refunds"
CREDITS_SOLD = "@CreditsSold"
UNAPPLIED = "@UnappliedPayments"
# Retries of a failed event: 1, 2, 4, … minutes, at most this long apart.
RETRY_FIRST = timedelta(minutes=1)
RETRY_LONGEST = timedelta(hours=12)


class InvalidSignature(BillingError):
    code = "invalid_signature"
    http_status = 400


class InvalidWebhookEvent(BillingError):
    code = "invalid_webhook_event"
    http_status = 400


class NeedsReview(str):
    """A handler's outcome when what Stripe reports differs from what we asked for: booked
    as reported, and the event flagged for finance."""


class NotYet(Exception):
    """The event cannot be handled yet (it refers to something not known yet): retried."""


def receive(*, payload: bytes, signature: str) -> tuple[StripeEvent, bool]:
    """Verify, store and handle one webhook delivery: (stored event, whether it was new)."""
    text = payload.decode("utf-8", errors="replace")
    try:
        # Stripe's default tolerance (300 s): an old signed body replayed later is refused.
        stripe.WebhookSignature.verify_header(
            text,
            signature,
            settings.STRIPE_WEBHOOK_SECRET,
            tolerance=stripe.Webhook.DEFAULT_TOLERANCE,
        )
    except (stripe.SignatureVerificationError, ValueError) as error:
        raise InvalidSignature(f"the Stripe signature does not verify: {error}") from None
    data = _event_body(text)
    try:
        with transaction.atomic():
            event = StripeEvent.objects.create(
                event_id=data["id"], type=data.get("type", ""), payload=data
            )
        created = True
    except IntegrityError:
        event, created = StripeEvent.objects.get(event_id=data["id"]), False
    if event.status in (StripeEventStatus.PENDING, StripeEventStatus.FAILED):
        # Stripe delivering again is a retry: one more attempt, even for a given-up event.
        process(event_id=event.pk, retry_failed=True)
        event.refresh_from_db()
    return event, created


def _event_body(text: str) -> dict[str, Any]:
    """The signed body as a Stripe event: an object with a non-empty text ``id``, a text
    ``type`` and an object ``data.object``. Anything else is refused before it is stored (a
    signed body that is not an event is a sender's bug, not something to retry)."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise InvalidWebhookEvent(f"the body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise InvalidWebhookEvent(f"the body is a JSON {type(data).__name__}, not an event")
    event_id, kind, inner = data.get("id"), data.get("type", ""), data.get("data")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 100:
        raise InvalidWebhookEvent("the event has no id (a non-empty string)")
    if not isinstance(kind, str) or len(kind) > 100:
        raise InvalidWebhookEvent("the event's type is not a string of at most 100 characters")
    if not isinstance(inner, dict) or not isinstance(inner.get("object"), dict):
        raise InvalidWebhookEvent("the event has no data.object")
    return data


def retry_delay(attempts: int) -> timedelta:
    """How long after its ``attempts``-th failed attempt an event is tried again."""
    return min(RETRY_FIRST * 2 ** min(attempts - 1, 30), RETRY_LONGEST)


def process(
    *, event_id: int, retry_failed: bool = False, now: datetime | None = None
) -> StripeEvent:
    """Handle a stored event once. A failure is recorded (``last_error``) and the next
    attempt scheduled; after the last attempt the event is ``failed``. ``retry_failed``
    (a redelivery, the admin's action) gives a failed event one more attempt."""
    now = now or timezone.now()
    with transaction.atomic():
        event = StripeEvent.objects.select_for_update().get(pk=event_id)
        allowed = [StripeEventStatus.PENDING] + ([StripeEventStatus.FAILED] if retry_failed else [])
        if event.status not in allowed:
            return event
        handler = HANDLERS.get(event.type)
        event.attempts += 1
        fields = ["status", "attempts", "outcome", "processed_at", "next_attempt_at", "last_error"]
        try:
            with transaction.atomic():
                outcome = handler(event.payload["data"]["object"]) if handler else "ignored"
        except Exception as error:  # noqa: BLE001 - kept for the retry task, never lost
            waiting = isinstance(error, NotYet)
            if waiting:
                log.info("stripe event %s (%s) waits: %s", event.event_id, event.type, error)
            else:
                log.exception("stripe event %s (%s) failed", event.event_id, event.type)
            message = f"{'waiting' if waiting else 'failed'}: {error}"[:2000]
            event.last_error = message
            event.outcome = message
            if event.attempts >= settings.STRIPE_EVENT_MAX_ATTEMPTS:
                event.status, event.next_attempt_at = StripeEventStatus.FAILED, None
                log.error(
                    "stripe event %s (%s) given up after %s attempts: %s",
                    event.event_id,
                    event.type,
                    event.attempts,
                    error,
                )
            else:
                event.status = StripeEventStatus.PENDING
                event.next_attempt_at = now + retry_delay(event.attempts)
            event.save(update_fields=fields)
            return event
        if isinstance(outcome, NeedsReview):
            event.status = StripeEventStatus.NEEDS_REVIEW
            log.warning("stripe event %s (%s): %s", event.event_id, event.type, outcome)
        else:
            event.status = StripeEventStatus.PROCESSED
        event.outcome = str(outcome)
        event.processed_at, event.next_attempt_at = now, None
        event.save(update_fields=fields)
        return event


def due_event_ids(*, limit: int = 500, now: datetime | None = None) -> list[int]:
    """Pending events whose next attempt has come, the longest waiting first: an event that
    keeps failing waits longer and longer, so it never holds back newer ones."""
    now = now or timezone.now()
    return list(
        StripeEvent.objects.filter(status=StripeEventStatus.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .order_by(F("next_attempt_at").asc(nulls_first=True), "received_at")
        .values_list("pk", flat=True)[:limit]
    )


def process_pending(*, limit: int = 500, now: datetime | None = None) -> int:
    ids = due_event_ids(limit=limit, now=now)
    for pk in ids:
        process(event_id=pk, now=now)
    return len(ids)


# --- handlers ------------------------------------------------------------------------------


def _metadata(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata") or {}


def _object_id(value: Any) -> str | None:
    return value["id"] if isinstance(value, dict) else value


def _hold_unapplied(*, reference: str, amount: Decimal, currency: str, why: str) -> None:
    """Money Stripe holds for us that we cannot apply as asked (another currency, a voided
    invoice): booked in the currency paid — never as ours — for finance to settle by hand."""
    clearing = services.system_account_id(
        services.CLEARING["stripe"], currency, NormalBalance.DEBIT
    )
    ledger.post_transactions(
        transactions=[
            TransactionSpec(
                reference=f"unapplied:{reference}",
                legs=[
                    Leg(clearing, amount),
                    Leg(services.system_account_id(UNAPPLIED, currency), -amount),
                ],
                description=f"Unapplied payment {reference}: {why}",
                metadata={"kind": "unapplied_payment"},
            )
        ]
    )


# The most one Stripe amount may say, in minor units of any currency: the API's maximum
# amount (billing.limits.MAX_AMOUNT) at the finest minor unit (3 decimals).
MAX_MINOR_UNITS = int(limits.MAX_AMOUNT) * 1000


def _malformed_money(amount: Any, currency: Any, what: str) -> NeedsReview | None:
    """Stripe's amounts are non-negative integers of minor units, its currencies ISO 4217
    codes. A signed event that says otherwise (a fraction, a negative or absurd amount, an
    unknown currency) is booked nowhere and flagged: nothing is guessed from it."""
    if not isinstance(currency, str) or limits.currency_problem(currency.upper()):
        return NeedsReview(f"malformed event: {what} currency {currency!r}; nothing booked")
    if type(amount) is not int or not 0 <= amount <= MAX_MINOR_UNITS:
        return NeedsReview(f"malformed event: {what} amount {amount!r}; nothing booked")
    return None


def _record_invoice_payment(invoice_id: str, intent_id: str, amount: Any, currency: Any) -> str:
    """Book what Stripe says was paid for an invoice, compared with what the invoice owes.
    ``amount`` and ``currency`` as the event has them: checked here."""
    malformed = _malformed_money(amount, currency, "payment")
    if malformed:
        return malformed
    if amount == 0:
        return NeedsReview(f"payment {intent_id} says nothing was received; nothing booked")
    paid_currency = currency.upper()
    received = from_minor_units_int(amount, paid_currency)
    invoice = Invoice.objects.filter(pk=int(invoice_id)).first()
    if invoice is None:
        raise errors.InvoicingNotFound(f"invoice {invoice_id} does not exist")
    known = Payment.objects.filter(
        provider=PaymentProvider.STRIPE, provider_payment_id=intent_id
    ).exists()
    if known:
        return "duplicate payment"
    if paid_currency != invoice.currency or invoice.status in (
        InvoiceStatus.DRAFT,
        InvoiceStatus.VOID,
    ):
        why = (
            f"{received} {paid_currency} paid for invoice {invoice} in {invoice.currency}"
            if paid_currency != invoice.currency
            else f"{received} {paid_currency} paid for invoice {invoice}, which is {invoice.status}"
        )
        _hold_unapplied(
            reference=f"stripe:{intent_id}", amount=received, currency=paid_currency, why=why
        )
        kind = "currency mismatch" if paid_currency != invoice.currency else "not payable"
        return NeedsReview(f"{kind}: {why}; held on {UNAPPLIED} ({paid_currency}), not applied")
    payment = services.record_payment(
        invoice_id=invoice.pk,
        amount=received,
        provider=PaymentProvider.STRIPE,
        provider_payment_id=intent_id,
    )
    if payment.replayed:
        return "duplicate payment"
    done = f"payment {payment.pk} recorded"
    if payment.to_balance:
        return NeedsReview(
            f"{done}; overpaid: {received} {paid_currency} received, "
            f"{payment.to_balance} {paid_currency} more than invoice {invoice} owed, "
            "credited to the customer's wallet"
        )
    left = Invoice.objects.get(pk=invoice.pk).amount_remaining
    if left > 0:
        return NeedsReview(
            f"{done}; underpaid: {received} {paid_currency} received, "
            f"{left} {paid_currency} still owed on invoice {invoice}"
        )
    return done


def payment_intent_succeeded(intent: dict[str, Any]) -> str:
    meta = _metadata(intent)
    if meta.get("kind") == "auto_top_up":
        return _auto_top_up_paid(intent)
    if meta.get("kind") != "invoice":
        return "not an invoice payment"
    # What was received, never what was asked (``amount``): a PaymentIntent always has it.
    received = intent.get("amount_received")
    return _record_invoice_payment(meta["invoice_id"], intent["id"], received, intent["currency"])


def _auto_top_up_paid(intent: dict[str, Any]) -> str:
    """An auto top-up's charge succeeded: the attempt credits its wallet once, whether the
    synchronous answer (``invoicing.auto_top_up.process_attempt``) came first or not."""
    attempt = auto_top_up.attempt_of(intent)
    if attempt is None:
        return NeedsReview(
            f"auto top-up payment {intent.get('id')} names no known attempt; nothing booked"
        )
    malformed = _malformed_money(intent.get("amount_received"), intent.get("currency"), "payment")
    if malformed:
        return malformed
    if intent["amount_received"] == 0:
        return NeedsReview(f"payment {intent['id']} says nothing was received; nothing booked")
    paid_currency = intent["currency"].upper()
    received = from_minor_units_int(intent["amount_received"], paid_currency)
    if paid_currency != attempt.charge_currency:
        why = (
            f"{received} {paid_currency} paid for auto top-up attempt {attempt.pk} "
            f"charged in {attempt.charge_currency}"
        )
        _hold_unapplied(
            reference=f"stripe:{intent['id']}", amount=received, currency=paid_currency, why=why
        )
        return NeedsReview(f"currency mismatch: {why}; held on {UNAPPLIED}, not credited")
    _, outcome = auto_top_up.complete_attempt(
        attempt_id=attempt.pk,
        payment_intent_id=intent["id"],
        received=received,
        currency=paid_currency,
    )
    return NeedsReview(outcome) if outcome.startswith("amount mismatch") else outcome


def payment_intent_failed(intent: dict[str, Any]) -> str:
    meta = _metadata(intent)
    error = intent.get("last_payment_error") or {}
    if meta.get("kind") == "auto_top_up":
        attempt = auto_top_up.attempt_of(intent)
        if attempt is None:
            return NeedsReview(f"auto top-up payment {intent.get('id')} names no known attempt")
        auto_top_up.fail_attempt(
            attempt_id=attempt.pk,
            code=str(error.get("code") or "payment_failed"),
            message=str(error.get("message") or "payment failed"),
            payment_intent_id=intent.get("id"),
        )
        return "auto top-up failure recorded"
    if meta.get("kind") != "invoice":
        return "not an invoice payment"
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
    intent_id = _object_id(session.get("payment_intent"))
    if meta.get("kind") == "invoice":
        if intent_id is None:
            return NeedsReview(
                f"malformed event: checkout session {session.get('id')} paid without a "
                "payment intent; nothing booked"
            )
        return _record_invoice_payment(
            meta["invoice_id"], intent_id, session["amount_total"], session["currency"]
        )
    if meta.get("kind") == "top_up":
        return _credit_top_up(session, meta)
    return "not ours"


def _asked_price(meta: dict[str, str], customer: Customer) -> tuple[int, str]:
    """What we asked Stripe to collect for a top-up, in minor units: recorded on the session
    when it was made (``price``, ``price_currency``); for sessions made before that, the
    price the amount asked for has."""
    if meta.get("price") and meta.get("price_currency"):
        return int(meta["price"]), meta["price_currency"]
    money = customer.currency
    amount = Decimal(meta["amount"])
    price = amount if meta["currency"] == money else amount * settings.CREDIT_PRICE
    return to_minor_units_int(to_minor_unit(price, money), money), money


def _credit_top_up(session: dict[str, Any], meta: dict[str, str]) -> str:
    customer = Customer.objects.get(pk=int(meta["customer_id"]))
    currency, asked_amount = meta["currency"], Decimal(meta["amount"])
    malformed = _malformed_money(session.get("amount_total"), session.get("currency"), "top-up")
    if malformed:
        return malformed
    money = session["currency"].upper()
    paid_minor = int(session["amount_total"])
    paid = from_minor_units_int(paid_minor, money)
    asked_minor, asked_currency = _asked_price(meta, customer)
    if money != asked_currency:
        why = f"{paid} {money} paid for a top-up priced in {asked_currency}"
        _hold_unapplied(
            reference=f"stripe-checkout:{session['id']}", amount=paid, currency=money, why=why
        )
        return NeedsReview(f"currency mismatch: {why}; held on {UNAPPLIED} ({money}), not credited")
    review = ""
    amount = asked_amount
    if paid_minor != asked_minor:
        # What was paid is what is credited: the money itself, or credits in proportion.
        if currency == money:
            amount = paid
        else:
            amount = floor_to_minor_unit(asked_amount * paid_minor / asked_minor, currency)
        asked = from_minor_units_int(asked_minor, money)
        review = (
            f"amount mismatch: {paid} {money} paid, {asked} {money} asked for "
            f"{asked_amount} {currency}; {amount} {currency} credited"
        )
    if amount <= 0:
        _hold_unapplied(
            reference=f"stripe-checkout:{session['id']}", amount=paid, currency=money, why=review
        )
        return NeedsReview(f"{review}; held on {UNAPPLIED} ({money})")
    if currency == money:
        billing_services.top_up(
            customer=customer,
            amount=amount,
            currency=currency,
            reference=f"stripe-checkout:{session['id']}",
            description=f"Top-up by card ({session['id']})",
            source_code=services.CLEARING["stripe"],
        )
        return NeedsReview(review) if review else "wallet credited"
    intent_id = _object_id(session.get("payment_intent"))
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
        # what was paid, and how: a refund of unused credits returns its share to the card
        metadata={
            "payment": {
                "provider": "stripe",
                "payment_intent": intent_id,
                "checkout_session": session["id"],
                "amount": str(paid),
                "currency": money,
            }
        },
    )
    return NeedsReview(review) if review else "credits credited"


def _book_credit_refunds(charge: dict[str, Any]) -> int:
    """The refunds of unused credits listed on the charge (by their metadata) that were
    made but not booked: booked now; how many."""
    from invoicing import credit_refunds

    booked = 0
    for refund in (charge.get("refunds") or {}).get("data") or []:
        metadata = refund.get("metadata") or {}
        raw = str(metadata.get("credit_refund_id", ""))
        if metadata.get("kind") != "credit_refund" or not raw.isdigit():
            continue
        if refund.get("status") not in ("succeeded", "pending"):
            continue
        booked += credit_refunds.book_refunded_by_stripe(
            credit_refund_id=int(raw), stripe_refund_id=str(refund.get("id") or "")
        )
    return booked


def charge_refunded(charge: dict[str, Any]) -> str:
    intent_id = _object_id(charge.get("payment_intent"))
    kind = _metadata(charge).get("kind")
    with transaction.atomic():
        payment = (
            Payment.objects.select_for_update()
            .filter(provider=PaymentProvider.STRIPE, provider_payment_id=intent_id)
            .first()
        )
        if payment is None:
            if kind in ("top_up", "auto_top_up"):
                from invoicing import credit_refunds

                if credit_refunds.is_credit_refund(intent_id):
                    # booked by invoicing.credit_refunds when it was made, unless the
                    # process died in between: then booked now
                    booked = _book_credit_refunds(charge)
                    if booked:
                        return f"refund of unused credits: booked now ({booked})"
                    return "refund of unused credits: booked when it was made"
                return NeedsReview(f"refund of top-up payment {intent_id}: not booked")
            if kind not in (None, "invoice"):
                return "no payment of ours"
            # The refund's payment may not be recorded yet (events arrive in any order):
            # wait for it, retried with the other pending events, never marked done.
            raise NotYet(f"payment {intent_id} is not known yet")
        malformed = _malformed_money(
            charge.get("amount_refunded"), charge.get("currency"), "refund"
        )
        if malformed:
            return malformed
        refunded_currency = charge["currency"].upper()
        if refunded_currency != payment.currency:
            return NeedsReview(
                f"currency mismatch: refund in {refunded_currency} of payment {intent_id} "
                f"in {payment.currency}: not booked"
            )
        total = from_minor_units_int(charge["amount_refunded"], refunded_currency)
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
