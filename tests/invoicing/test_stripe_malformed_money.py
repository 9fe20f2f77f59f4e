"""Signed Stripe events whose amounts or currencies no real Stripe event carries — a
fraction of a minor unit, a negative or absurd amount, an unknown currency, a succeeded
PaymentIntent that received nothing — book nothing and are flagged ``needs_review``: money
is never guessed from them (issue 13, item 5: a verification pass booked each of these)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.models import BillingMode, Customer
from invoicing import payments
from invoicing.models import Invoice, InvoiceStatus, Payment
from ledger.models import Account
from tests.invoicing.conftest import plan, subscribe, wallet_posted
from tests.invoicing.test_stripe import invoice_of, post_event
from tests.invoicing.test_stripe_trust import forged, paid_on_checkout, stripe_server  # noqa: F401

pytestmark = pytest.mark.django_db
D = Decimal


def nothing_booked_for(invoice: Invoice) -> None:
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN and invoice.amount_paid == D(0)
    assert not Payment.objects.exists()
    assert not Account.objects.filter(code__startswith="@UnappliedPayments").exists()


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"amount_received": 0, "amount": 3000}, "nothing was received"),
        ({"amount_received": 100.5}, "amount"),
        ({"amount_received": "3000"}, "amount"),
        ({"amount_received": -3000}, "amount"),
        ({"amount_received": 10**20}, "amount"),
        ({"amount_received": True}, "amount"),
        ({"currency": "xyz"}, "currency"),
        ({"currency": 840}, "currency"),
    ],
    ids=["received-0", "fraction", "text", "negative", "absurd", "bool", "xyz", "number"],
)
def test_a_payment_that_no_stripe_event_would_carry_books_nothing(stripe_server, changes, why):  # noqa: F811
    invoice = invoice_of("30")
    _, succeeded = paid_on_checkout(stripe_server, invoice)
    answer = post_event(stripe_server, forged(succeeded, "bad", **changes))
    assert answer["status"] == "needs_review", answer
    assert why in answer["outcome"] and "nothing booked" in answer["outcome"]
    nothing_booked_for(invoice)


@pytest.mark.parametrize(
    "changes",
    [{"amount_total": -5}, {"amount_total": 10**20}, {"amount_total": 1.5}, {"currency": "xyz"}],
    ids=["negative", "absurd", "fraction", "xyz"],
)
def test_a_top_up_that_no_stripe_event_would_carry_credits_nothing(stripe_server, changes):  # noqa: F811
    subscription = subscribe(plan(), billing_mode=BillingMode.PREPAID)
    customer = Customer.objects.get(pk=subscription.customer_id)
    start = payments.checkout_top_up(
        customer=customer,
        amount=D("25"),
        currency="USD",
        success_url="/ok",
        cancel_url="/no",
        request_id="r-bad",
    )
    completed = stripe_server.complete_checkout(start.session_id)
    answer = post_event(stripe_server, forged(completed, "bad", **changes))
    assert answer["status"] == "needs_review" and "nothing booked" in answer["outcome"], answer
    assert wallet_posted(subscription) == D(0)
    assert not Account.objects.filter(code__startswith="@UnappliedPayments").exists()


def test_a_paid_checkout_without_a_payment_intent_books_nothing(stripe_server):  # noqa: F811
    """Found by the type checker (issue 15): the session's PaymentIntent id may be null, and
    a payment was recorded under it as if it were an id."""
    invoice = invoice_of("30")
    completed, _ = paid_on_checkout(stripe_server, invoice)
    answer = post_event(stripe_server, forged(completed, "no-intent", payment_intent=None))
    assert answer["status"] == "needs_review", answer
    assert "without a payment intent" in answer["outcome"]
    assert "nothing booked" in answer["outcome"]
    nothing_booked_for(invoice)


def test_the_real_payment_still_books(stripe_server):  # noqa: F811
    invoice = invoice_of("30")
    completed, _ = paid_on_checkout(stripe_server, invoice)
    assert post_event(stripe_server, completed)["status"] == "processed"
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID
