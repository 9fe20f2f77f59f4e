"""Collecting payment for finalized invoices, and paying in through Checkout.

With ``STRIPE_SECRET_KEY`` set, a finalized invoice is charged to the customer's saved card
through Stripe (a PaymentIntent, off-session); a decline makes it past due and it is retried
on the dunning schedule (``invoicing.services.record_payment_failure``). Invoices and
top-ups can also be paid on a Stripe Checkout page; the webhook records the payment.

A customer whose collection method is ``send_invoice`` is never charged at finalization
(``collect_automatically``): its invoice is due ``days_until_due`` later and waits for the
customer (the portal's pay button) or for finance to record a transfer.

Without a key, payments run in **offline mode** only when it is asked for
(``PAYMENTS_OFFLINE=1``: the demo, a laptop): a finalized invoice is recorded as paid
through the ``@OfflinePayments`` clearing account at once (or, with ``OFFLINE_AUTO_PAY=0``,
left open for finance staff to record a payment by hand), a "Checkout" pays at once without
leaving the site, and the admin says so on every invoice page.

With neither (the default), there is **no payment provider**: nothing pays itself. A portal
top-up or invoice payment is refused (``payments_unavailable``, nothing written), a
finalized invoice stays open, and finance staff record a payment received out of band (a
bank transfer, with its reference) in the admin — an explicit act, never automatic.

No Stripe call runs inside a database transaction; what it answers is recorded by the
idempotent services afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import stripe
from django.conf import settings
from django.utils import timezone

from billing import services as billing_services
from billing.models import CollectionMethod, Customer
from invoicing import errors, services, stripe_gateway
from invoicing.models import FINAL_STATUSES, Invoice, InvoiceStatus, Payment, PaymentProvider
from invoicing.money import to_minor_unit, to_minor_units_int

COLLECTABLE = (InvoiceStatus.OPEN, InvoiceStatus.PAST_DUE)
STRIPE_CLEARING = services.CLEARING["stripe"]


def stripe_enabled() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def offline_mode() -> bool:
    """Payments without money: only when asked for (``PAYMENTS_OFFLINE``) and no Stripe key."""
    return not stripe_enabled() and bool(settings.PAYMENTS_OFFLINE)


def provider_available() -> bool:
    """Whether a customer can pay here at all (Stripe, or the opted-in offline mode)."""
    return stripe_enabled() or offline_mode()


def has_saved_card(*, customer: Customer) -> bool | None:
    """Whether the customer has a default payment method saved at Stripe (what an auto
    top-up charges): ``None`` when it cannot be known (no Stripe key, or Stripe did not
    answer). A customer Stripe has never seen has none; none is created to ask."""
    if not stripe_enabled():
        return None
    if not customer.stripe_customer_id:
        return False
    try:
        return stripe_gateway.default_payment_method(customer.stripe_customer_id) is not None
    except stripe.StripeError:
        return None


NO_PROVIDER = (
    "Payments are not available: no payment provider is configured. "
    "Please contact us to pay by bank transfer."
)


def _require_provider() -> None:
    if not provider_available():
        raise errors.PaymentsUnavailable(NO_PROVIDER)


@dataclass
class Collection:
    status: str  # "paid", "failed", "skipped"
    payment: Payment | None = None
    message: str = ""


def collect_payment(*, invoice_id: int) -> Payment | None:
    """Try to collect what the invoice still owes; the payment, or None. Safe to call again:
    an attempt is keyed by the invoice and its attempt number, at Stripe and here."""
    return collect(invoice_id=invoice_id).payment


def collect_automatically(*, invoice_id: int) -> Collection:
    """The collection a finalization starts: ``collect`` for a customer charged
    automatically; nothing for a send_invoice customer (Stripe's ``collection_method``),
    whose invoice is sent with a due date and waits for a transfer recorded by finance or
    the portal's pay button — neither the provider's charge nor the offline auto-pay."""
    invoice = Invoice.objects.select_related("customer").get(pk=invoice_id)
    if invoice.customer.collection_method == CollectionMethod.SEND_INVOICE:
        return Collection("skipped", message="send_invoice: the customer pays by the due date")
    return collect(invoice_id=invoice_id)


def collect(*, invoice_id: int) -> Collection:
    invoice = Invoice.objects.select_related("customer").get(pk=invoice_id)
    if invoice.status not in COLLECTABLE or invoice.amount_remaining <= 0:
        return Collection("skipped", message=f"invoice is {invoice.status}")
    if not provider_available():
        return Collection(
            "skipped", message="no payment provider: finance staff record the payment by hand"
        )
    if offline_mode():
        if not settings.OFFLINE_AUTO_PAY:
            return Collection("skipped", message="offline mode: record the payment by hand")
        payment = record_offline_payment(invoice_id=invoice.pk, reference=f"auto-{invoice.pk}")
        return Collection("paid", payment)
    attempt = invoice.payment_attempts + 1
    stripe_customer = stripe_gateway.sync_customer(customer=invoice.customer)
    method = stripe_gateway.default_payment_method(stripe_customer)
    if method is None:
        services.record_payment_failure(
            invoice_id=invoice.pk, attempt=attempt, message="no saved payment method"
        )
        return Collection("failed", message="no saved payment method")
    try:
        intent_id, received = stripe_gateway.charge(
            stripe_customer_id=stripe_customer,
            payment_method=method,
            amount=invoice.amount_remaining,
            currency=invoice.currency,
            idempotency_key=f"invoice-{invoice.pk}-attempt-{attempt}",
            metadata={
                "kind": "invoice",
                "invoice_id": str(invoice.pk),
                "attempt": str(attempt),
                "number": invoice.display_number,
            },
            description=f"Invoice {invoice.display_number}",
        )
    except stripe_gateway.ChargeDeclined as declined:
        services.record_payment_failure(
            invoice_id=invoice.pk, attempt=attempt, message=declined.message
        )
        return Collection("failed", message=declined.message)
    payment = services.record_payment(
        invoice_id=invoice.pk,
        amount=received,
        provider=PaymentProvider.STRIPE,
        provider_payment_id=intent_id,
        metadata={"attempt": attempt},
    )
    Invoice.objects.filter(pk=invoice.pk).update(stripe_payment_intent_id=intent_id)
    return Collection("paid", payment)


def record_offline_payment(*, invoice_id: int, reference: str) -> Payment:
    """What the invoice still owes, recorded as paid out of band (a bank transfer noted by
    finance staff with its reference, or the opted-in offline mode's automatic payment).
    Idempotent on ``reference``."""
    invoice = Invoice.objects.get(pk=invoice_id)
    existing = Payment.objects.filter(
        provider=PaymentProvider.OFFLINE, provider_payment_id=reference
    ).first()
    if existing is None and invoice.status in FINAL_STATUSES and invoice.amount_remaining <= 0:
        raise errors.NothingOwed(f"invoice {invoice} owes nothing")
    return services.record_payment(
        invoice_id=invoice.pk,
        amount=invoice.amount_remaining,
        provider=PaymentProvider.OFFLINE,
        provider_payment_id=reference,
    )


# --- Checkout: the customer pays on a hosted page -------------------------------------------


@dataclass
class CheckoutStart:
    url: str  # where to send the customer
    session_id: str
    offline: bool = False  # paid at once (offline mode): the URL is the success URL


def checkout_invoice(*, invoice_id: int, success_url: str, cancel_url: str) -> CheckoutStart:
    """Pay what an invoice still owes on a Checkout page."""
    invoice = Invoice.objects.select_related("customer").get(pk=invoice_id)
    if invoice.status not in COLLECTABLE or invoice.amount_remaining <= 0:
        raise errors.InvoiceNotFinal(f"invoice {invoice} has nothing to pay")
    _require_provider()
    if offline_mode():
        record_offline_payment(invoice_id=invoice.pk, reference=f"checkout-{invoice.pk}")
        return CheckoutStart(success_url, f"offline-{invoice.pk}", offline=True)
    attempt = invoice.payment_attempts + 1
    session_id, url = stripe_gateway.checkout(
        stripe_customer_id=stripe_gateway.sync_customer(customer=invoice.customer),
        amount=invoice.amount_remaining,
        currency=invoice.currency,
        product=f"Invoice {invoice.display_number}",
        success_url=success_url,
        cancel_url=cancel_url,
        metadata={"kind": "invoice", "invoice_id": str(invoice.pk), "attempt": str(attempt)},
        idempotency_key=f"invoice-{invoice.pk}-checkout-{attempt}-{invoice.amount_remaining}",
    )
    return CheckoutStart(url, session_id)


def checkout_top_up(
    *,
    customer: Customer,
    amount: Decimal,
    currency: str,
    success_url: str,
    cancel_url: str,
    request_id: str,
) -> CheckoutStart:
    """Add funds (or buy credits) on a Checkout page; the wallet is credited when Stripe says
    the payment succeeded. ``request_id`` makes a double submit one checkout."""
    _require_provider()
    billing_services.wallet_for(customer=customer, currency=currency)  # it must exist
    if offline_mode():
        billing_services.top_up(
            customer=customer,
            amount=amount,
            currency=currency,
            reference=f"offline-checkout:{request_id}",
            description=f"Top-up (offline mode) of {amount.normalize():f} {currency}",
            source_code=services.CLEARING["offline"],
        )
        return CheckoutStart(success_url, f"offline-{request_id}", offline=True)
    money_currency = customer.currency
    price = amount if currency == money_currency else amount * settings.CREDIT_PRICE
    price = to_minor_unit(price, money_currency)
    session_id, url = stripe_gateway.checkout(
        stripe_customer_id=stripe_gateway.sync_customer(customer=customer),
        amount=price,
        currency=money_currency,
        product=f"Top-up: {amount.normalize():f} {currency}",
        success_url=success_url,
        cancel_url=cancel_url,
        metadata={
            "kind": "top_up",
            "customer_id": str(customer.pk),
            "amount": str(amount),
            "currency": currency,
            # what we ask Stripe for: the webhook credits what was paid, compared with this
            "price": str(to_minor_units_int(price, money_currency)),
            "price_currency": money_currency,
        },
        idempotency_key=f"top-up-{customer.pk}-{request_id}",
    )
    return CheckoutStart(url, session_id)


def retry_due_payments(*, as_of=None) -> int:
    """Beat: charge again the past-due invoices whose next attempt has come."""
    ids = services.due_payment_retry_ids(as_of=as_of or timezone.now())
    for invoice_id in ids:
        collect(invoice_id=invoice_id)
    return len(ids)
