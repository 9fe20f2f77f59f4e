"""invoicing.credit_refunds: what is left of purchased credits refunded — to the card through
Stripe (the official client against tests/stripe_server.py), paid back offline, or credited
to the customer's balance — once, and safely against usage drawing on the same grant.

Credits cost CREDIT_PRICE 0.01 USD each (the default): 1,000 credits bought are 10.00 USD."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing import credits
from billing import services as billing
from billing.models import (
    BillingMode,
    CreditAllocation,
    CreditGrant,
    Customer,
    GrantSource,
    GrantStatus,
    Subscription,
)
from invoicing import credit_refunds, errors, payments, tasks
from invoicing.credit_refunds import refund_unused_credits
from invoicing.models import CreditRefund, CreditRefundMethod, CreditRefundStatus
from ledger import errors as ledger_errors
from tests.billing import conftest as billing_fixtures
from tests.billing.conftest import assert_error
from tests.invoicing import test_stripe
from tests.invoicing.conftest import (
    ChargeSpec,
    account_posted,
    meter,
    plan,
    subscribe,
    wallet_posted,
)
from tests.invoicing.test_stripe import post_event
from tests.threads import run_concurrently

pytestmark = pytest.mark.django_db
D = Decimal
# fixtures of other modules, used here
api, api_key, make_key = billing_fixtures.api, billing_fixtures.api_key, billing_fixtures.make_key
stripe_server = test_stripe.stripe_server


def credits_customer() -> Subscription:
    return subscribe(
        plan(ChargeSpec(meter=meter()), consumption_model="credits", units_per_credit=1),
        billing_mode=BillingMode.PREPAID,
    )


def customer_of(subscription: Subscription) -> Customer:
    return Customer.objects.get(pk=subscription.customer_id)


def bought(subscription: Subscription, amount: str = "1000") -> CreditGrant:
    """Credits bought out of band (a top-up of CREDITS through the API: no card payment)."""
    billing.top_up(customer=customer_of(subscription), amount=D(amount), currency="CREDITS")
    return CreditGrant.objects.filter(
        customer_id=subscription.customer_id, source=GrantSource.PURCHASE
    ).latest("id")


def spend(subscription: Subscription, amount: str) -> None:
    billing.adjust_balance(
        customer=customer_of(subscription),
        amount=-D(amount),
        reason="usage",
        staff_user_id=None,
        currency="CREDITS",
    )


def refunded_credits(grant: CreditGrant) -> Decimal:
    return CreditAllocation.objects.filter(grant=grant, kind="refund").aggregate(s=Sum("amount"))[
        "s"
    ] or D(0)


# --- to the card --------------------------------------------------------------------------------


def test_credits_bought_by_card_are_refunded_to_the_card_once(stripe_server):
    subscription = credits_customer()
    start = payments.checkout_top_up(
        customer=customer_of(subscription),
        amount=D(1000),
        currency="CREDITS",
        success_url="https://x/ok",
        cancel_url="https://x/no",
        request_id="buy-1",
    )
    completed = stripe_server.complete_checkout(start.session_id)
    assert post_event(stripe_server, completed)["outcome"] == "credits credited"
    grant = CreditGrant.objects.get(customer_id=subscription.customer_id)
    assert grant.metadata["payment"]["amount"] == "10.00"
    spend(subscription, "250")

    refund = refund_unused_credits(grant_id=grant.pk, reason="customer asked")
    # 750 of 1,000 credits unused: 10.00 × 750 / 1000 = 7.50 back to the card
    assert (refund.method, refund.status, refund.replayed) == (
        CreditRefundMethod.STRIPE,
        CreditRefundStatus.SUCCEEDED,
        False,
    )
    assert (refund.credits, refund.amount, refund.currency) == (D(750), D("7.50"), "USD")
    (stripe_refund,) = stripe_server.objects("refund")
    assert stripe_refund["amount"] == 750
    assert stripe_refund["payment_intent"] == grant.metadata["payment"]["payment_intent"]
    assert refund.stripe_refund_id == stripe_refund["id"]

    again = refund_unused_credits(grant_id=grant.pk)
    assert (again.pk, again.replayed) == (refund.pk, True)
    assert len(stripe_server.objects("refund")) == 1  # refunded once

    grant.refresh_from_db()
    assert (grant.status, grant.remaining, refunded_credits(grant)) == (
        GrantStatus.REFUNDED,
        D(0),
        D(750),
    )
    assert wallet_posted(subscription, "CREDITS") == D(0)
    # the money: 10.00 received, 7.50 returned; 2.50 still owed as the credits used
    assert account_posted("@StripeClearing") == D("2.50")
    assert account_posted("@CreditsSold") == D("2.50")
    # Stripe's charge.refunded for it books nothing more
    event = stripe_server.events_of("charge.refunded")[-1]
    assert post_event(stripe_server, event)["outcome"] == (
        "refund of unused credits: booked when it was made"
    )
    assert account_posted("@StripeClearing") == D("2.50")


def test_a_refund_stripe_refuses_is_failed_and_a_retry_sends_it_again(stripe_server):
    subscription = credits_customer()
    start = payments.checkout_top_up(
        customer=customer_of(subscription),
        amount=D(1000),
        currency="CREDITS",
        success_url="https://x/ok",
        cancel_url="https://x/no",
        request_id="buy-2",
    )
    post_event(stripe_server, stripe_server.complete_checkout(start.session_id))
    grant = CreditGrant.objects.get(customer_id=subscription.customer_id)
    intent = grant.metadata["payment"]["payment_intent"]
    CreditGrant.objects.filter(pk=grant.pk).update(
        metadata={
            **grant.metadata,
            "payment": {**grant.metadata["payment"], "payment_intent": "pi_x"},
        }
    )
    with pytest.raises(errors.RefundFailed):
        refund_unused_credits(grant_id=grant.pk)
    refund = CreditRefund.objects.get(grant=grant)
    assert refund.status == CreditRefundStatus.FAILED and "pi_x" in refund.error
    assert wallet_posted(subscription, "CREDITS") == D(0)  # taken back, not yet paid back
    assert account_posted("@StripeClearing") == D(10)
    CreditRefund.objects.filter(pk=refund.pk).update(stripe_payment_intent_id=intent)
    retried = refund_unused_credits(grant_id=grant.pk)
    assert (retried.status, retried.amount) == (CreditRefundStatus.SUCCEEDED, D(10))
    assert account_posted("@StripeClearing") == D(0)


# --- without a card: a credit note, or offline ------------------------------------------------


def test_credits_bought_otherwise_are_credited_to_the_balance_as_a_credit_note():
    subscription = credits_customer()
    grant = bought(subscription, "1000")
    spend(subscription, "400")
    refund = refund_unused_credits(grant_id=grant.pk)
    # 600 credits × 0.01 = 6.00 into the customer's USD wallet
    assert (refund.method, refund.status) == (
        CreditRefundMethod.CREDIT_NOTE,
        CreditRefundStatus.SUCCEEDED,
    )
    assert (refund.credits, refund.amount) == (D(600), D("6.00"))
    assert wallet_posted(subscription, "USD") == D("6.00")
    assert wallet_posted(subscription, "CREDITS") == D(0)
    assert account_posted("@Refunds") == D("6.00")
    again = refund_unused_credits(grant_id=grant.pk)
    assert again.replayed and wallet_posted(subscription, "USD") == D("6.00")


def test_with_offline_payments_the_refund_is_paid_back_out_of_band(settings):
    settings.PAYMENTS_OFFLINE = True
    subscription = credits_customer()
    grant = bought(subscription, "1000")
    spend(subscription, "400")
    refund = refund_unused_credits(grant_id=grant.pk)
    assert (refund.method, refund.amount) == (CreditRefundMethod.OFFLINE, D("6.00"))
    assert wallet_posted(subscription, "USD") == D(0)
    assert account_posted("@Refunds") == D("6.00")
    assert account_posted("@OfflinePayments") == D("-6.00")  # debit-normal: money went out


def test_only_purchased_credits_with_something_left_are_refunded():
    subscription = credits_customer()
    promotional = credits.grant_credits(customer=customer_of(subscription), amount=D(100))
    with pytest.raises(errors.NotRefundable):
        refund_unused_credits(grant_id=promotional.pk)
    grant = bought(subscription, "100")
    spend(subscription, "200")  # promotional first (priority 10), then all of the purchase
    with pytest.raises(errors.NotRefundable):
        refund_unused_credits(grant_id=grant.pk)
    assert not CreditRefund.objects.exists()


def test_the_api_refunds_a_grant_once(api):
    subscription = credits_customer()
    grant = bought(subscription, "1000")
    external_id = customer_of(subscription).external_id
    url = f"/api/v1/customers/{external_id}/credit-grants/{grant.pk}/refund"
    first = api.post(url, {"reason": "closing the account"}, format="json")
    assert first.status_code == 201, first.json()
    body = first.json()
    assert (body["method"], body["credits"], body["amount"], body["status"]) == (
        "credit_note",
        "1000.000000000000",
        "10.000000000000",
        "succeeded",
    )
    again = api.post(url, {}, format="json")
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    missing = api.post(f"/api/v1/customers/{external_id}/credit-grants/999999/refund", {})
    assert_error(missing, 404, "credit_grant_not_found", param="grant")


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_refund_racing_usage_on_the_same_grant_refunds_only_what_usage_left():
    subscription = credits_customer()
    grant = bought(subscription, "1000")

    def work(i: int):
        if i == 0:
            return refund_unused_credits(grant_id=grant.pk)
        try:
            spend(subscription, "100")
        except ledger_errors.LedgerError as error:
            return error
        return "spent"

    results = run_concurrently(work, threads=8)
    refunds = [r for r in results if isinstance(r, CreditRefund)]
    spent = results.count("spent")
    assert len(refunds) == 1, results
    assert all(
        r == "spent" or isinstance(r, CreditRefund | ledger_errors.LedgerError) for r in results
    )
    (refund,) = refunds
    # every credit either spent before the refund or refunded; none twice
    assert refund.credits + 100 * spent == D(1000)
    assert refund.amount == refund.credits * D("0.01")
    assert wallet_posted(subscription, "CREDITS") == D(0)
    assert wallet_posted(subscription, "USD") == refund.amount
    assert CreditGrant.objects.get(pk=grant.pk).remaining == D(0)


@pytest.mark.django_db(transaction=True)
def test_refunds_sent_at_once_refund_once():
    subscription = credits_customer()
    grant = bought(subscription, "1000")
    results = run_concurrently(lambda i: refund_unused_credits(grant_id=grant.pk), threads=6)
    assert all(isinstance(r, CreditRefund) for r in results), results
    assert len({r.pk for r in results}) == 1  # type: ignore[union-attr]
    assert sum(not r.replayed for r in results) == 1  # type: ignore[union-attr]
    assert wallet_posted(subscription, "USD") == D(10)


# --- expired credits -----------------------------------------------------------------------------


def test_credits_past_their_expiry_are_expired_not_refunded():
    subscription = credits_customer()
    grant = bought(subscription, "1000")
    # past its expiry; the expiry beat has not run yet (the credits are worthless to rating)
    CreditGrant.objects.filter(pk=grant.pk).update(expires_at=timezone.now() - timedelta(days=1))

    with pytest.raises(errors.NotRefundable) as refused:
        refund_unused_credits(grant_id=grant.pk)

    assert "expired" in str(refused.value)
    grant.refresh_from_db()
    assert (grant.status, grant.remaining) == (GrantStatus.EXPIRED, D(0))
    assert not CreditRefund.objects.filter(grant=grant).exists()
    assert wallet_posted(subscription, "USD") == D(0)  # nothing paid back
    assert wallet_posted(subscription, "CREDITS") == D(0)
    assert account_posted("@CreditsExpired", "CREDITS") == D(1000)


# --- a refund made at Stripe, the process dead before booking it ---------------------------------


def refund_made_then_crash(stripe_server, monkeypatch, request_id: str):
    subscription = credits_customer()
    start = payments.checkout_top_up(
        customer=customer_of(subscription),
        amount=D(1000),
        currency="CREDITS",
        success_url="https://x/ok",
        cancel_url="https://x/no",
        request_id=request_id,
    )
    post_event(stripe_server, stripe_server.complete_checkout(start.session_id))
    grant = CreditGrant.objects.get(customer_id=subscription.customer_id)

    def crash(**kw):
        raise SystemExit("worker killed after Stripe refunded")

    with monkeypatch.context() as patched:
        patched.setattr(credit_refunds, "_refunded_by_stripe", crash)
        with pytest.raises(SystemExit):
            refund_unused_credits(grant_id=grant.pk)
    refund = CreditRefund.objects.get(grant=grant)
    assert refund.status == CreditRefundStatus.PENDING
    assert [r["amount"] for r in stripe_server.objects("refund")] == [1000]
    assert account_posted("@StripeClearing") == D(10)  # not booked yet
    return grant, refund


def test_the_charge_refunded_webhook_books_a_refund_made_but_never_booked(
    stripe_server, monkeypatch
):
    grant, refund = refund_made_then_crash(stripe_server, monkeypatch, "buy-crash-1")
    event = stripe_server.events_of("charge.refunded")[-1]
    assert post_event(stripe_server, event)["outcome"] == (
        "refund of unused credits: booked now (1)"
    )
    refund.refresh_from_db()
    (stripe_refund,) = stripe_server.objects("refund")
    assert (refund.status, refund.stripe_refund_id) == (
        CreditRefundStatus.SUCCEEDED,
        stripe_refund["id"],
    )
    assert refund.money_transaction_id is not None
    assert account_posted("@StripeClearing") == D(0)
    assert account_posted("@CreditsSold") == D(0)
    # the event again, and a retry of the refund: nothing more
    assert not credit_refunds.book_refunded_by_stripe(
        credit_refund_id=refund.pk, stripe_refund_id=stripe_refund["id"]
    )
    post_event(stripe_server, event)
    again = refund_unused_credits(grant_id=grant.pk)
    assert again.replayed and again.status == CreditRefundStatus.SUCCEEDED
    assert len(stripe_server.objects("refund")) == 1
    assert account_posted("@StripeClearing") == D(0)


def test_the_beat_job_finishes_refunds_left_pending_once(stripe_server, monkeypatch):
    grant, refund = refund_made_then_crash(stripe_server, monkeypatch, "buy-crash-2")
    # a refund just made may still be booking: left alone for a few minutes
    assert credit_refunds.stale_pending_grant_ids() == []
    later = timezone.now() + credit_refunds.STALE_PENDING_AFTER
    assert credit_refunds.stale_pending_grant_ids(now=later) == [grant.pk]
    assert credit_refunds.retry_stale_pending(now=later) == 1
    refund.refresh_from_db()
    assert refund.status == CreditRefundStatus.SUCCEEDED
    # sent again with its idempotency key: Stripe refunded once
    (stripe_refund,) = stripe_server.objects("refund")
    assert refund.stripe_refund_id == stripe_refund["id"]
    assert account_posted("@StripeClearing") == D(0)
    assert credit_refunds.retry_stale_pending(now=later) == 0
    assert tasks.retry_pending_credit_refunds() == 0


def test_the_admin_refunds_a_grant_only_with_a_reason(client):
    from django.urls import reverse

    from tests.factories import staff_user

    subscription = credits_customer()
    grant = bought(subscription, "1000")
    client.force_login(staff_user("alice", "Finance operator"))
    action = {"action": "refund_action", "_selected_action": [grant.pk]}
    listing = reverse("admin:billing_creditgrant_changelist")
    asked = client.post(listing, action)
    assert asked.status_code == 200 and 'name="reason"' in asked.content.decode()
    assert client.post(listing, {**action, "post": "yes"}).context["form"].errors["reason"]
    assert not CreditRefund.objects.exists()
    client.post(listing, {**action, "post": "yes", "reason": "Customer left (ticket 12)"})
    refund = CreditRefund.objects.get(grant=grant)
    assert (refund.credits, refund.reason) == (D(1000), "Customer left (ticket 12)")
