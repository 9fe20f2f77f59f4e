"""Payment through Stripe with the official client, against the local Stripe-compatible
server the tests start (tests/stripe_server.py): charging finalized invoices, declines and
dunning, Checkout for invoices and top-ups, refunds, and webhooks signed with a test secret,
replayed and reordered."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from billing.models import BillingMode, Customer, Subscription, SubscriptionStatus
from invoicing import payments, services, webhooks
from invoicing.models import Invoice, InvoiceStatus, Payment, StripeEvent
from tests.billing.conftest import make_client
from tests.invoicing.conftest import (
    PERIOD_END,
    ChargeSpec,
    account_posted,
    close,
    finalize,
    meter,
    plan,
    receivable,
    subscribe,
    use,
    wallet_posted,
)
from tests.stripe_server import StripeServer

pytestmark = pytest.mark.django_db
D = Decimal
SECRET = "whsec_test_secret"
WEBHOOK = "/api/v1/webhooks/stripe"


@pytest.fixture
def stripe_server(settings):
    with StripeServer() as server:
        settings.STRIPE_SECRET_KEY = "sk_test_local"
        settings.STRIPE_API_BASE = server.url
        settings.STRIPE_WEBHOOK_SECRET = SECRET
        yield server


def post_event(server: StripeServer, event) -> dict:
    body, headers = server.webhook_request(event, SECRET)
    response = make_client().post(
        WEBHOOK,
        body,
        content_type=headers["Content-Type"],
        headers={"Stripe-Signature": headers["Stripe-Signature"]},
    )
    assert response.status_code == 200, response.content
    return response.json()


def invoice_of(amount: str = "42.50", **subscribe_kw) -> Invoice:
    subscription = subscribe(plan(base_fee=amount), **subscribe_kw)
    return finalize(close(subscription))


def with_card(server: StripeServer, invoice: Invoice, card: str = "pm_card_visa") -> str:
    customer = Customer.objects.get(pk=invoice.customer_id)
    from invoicing import stripe_gateway

    stripe_id = stripe_gateway.sync_customer(customer=customer)
    server.attach_payment_method(stripe_id, card)
    return stripe_id


def intents(server: StripeServer) -> list[dict]:
    return server.objects("payment_intent")


def test_a_finalized_invoice_is_charged_once_and_the_webhook_records_nothing_more(stripe_server):
    invoice = invoice_of("42.50")
    stripe_id = with_card(stripe_server, invoice)
    assert with_card(stripe_server, invoice) == stripe_id  # the customer is created once
    assert len(stripe_server.objects("customer")) == 1

    result = payments.collect(invoice_id=invoice.pk)

    assert result.status == "paid" and result.payment.amount == D("42.50")
    [intent] = intents(stripe_server)
    assert (intent["amount"], intent["currency"], intent["customer"]) == (4250, "usd", stripe_id)
    assert intent["metadata"] == {
        "kind": "invoice",
        "invoice_id": str(invoice.pk),
        "attempt": "1",
        "number": invoice.display_number,
    }
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID and invoice.stripe_payment_intent_id == intent["id"]
    assert account_posted("@StripeClearing") == D("42.50")
    assert receivable(invoice.subscription) == D(0)
    # collecting again does nothing; the webhook of the same payment, twice, adds nothing
    assert payments.collect(invoice_id=invoice.pk).status == "skipped"
    [succeeded] = stripe_server.events_of("payment_intent.succeeded")
    assert post_event(stripe_server, succeeded)["outcome"] == "duplicate payment"
    assert post_event(stripe_server, succeeded)["duplicate"] is True
    assert len(intents(stripe_server)) == 1 and Payment.objects.count() == 1
    assert account_posted("@StripeClearing") == D("42.50")


def test_a_decline_makes_the_invoice_past_due_and_dunning_retries_until_paid(
    stripe_server, settings
):
    settings.DUNNING_RETRY_DAYS = [3, 5]
    invoice = invoice_of("10")
    with_card(stripe_server, invoice, "pm_card_chargeDeclined")

    assert payments.collect(invoice_id=invoice.pk).status == "failed"
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAST_DUE and invoice.payment_attempts == 1
    assert "declined" in invoice.last_payment_error
    first_retry = invoice.next_payment_attempt_at
    assert first_retry - timedelta(days=3) <= invoice.finalized_at + timedelta(days=400)
    # the failure's webhook reports the same attempt: nothing changes
    [failed] = stripe_server.events_of("payment_intent.payment_failed")
    assert post_event(stripe_server, failed)["outcome"] == "failure recorded"
    invoice.refresh_from_db()
    assert (invoice.payment_attempts, invoice.next_payment_attempt_at) == (1, first_retry)
    # not due yet: no charge
    assert payments.retry_due_payments(as_of=first_retry - timedelta(minutes=1)) == 0
    stripe_server.set_card_behaviour("pm_card_chargeDeclined", "succeed")
    assert payments.retry_due_payments(as_of=first_retry) == 1
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID and invoice.next_payment_attempt_at is None
    assert [i["metadata"]["attempt"] for i in intents(stripe_server)] == ["1", "2"]
    # the old failure arriving late does not undo the payment
    post_event(stripe_server, failed["id"])
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID


def test_when_the_last_retry_fails_the_subscription_is_suspended_until_paid(
    stripe_server, settings
):
    settings.DUNNING_RETRY_DAYS = [1]
    code = meter(name="Calls")
    subscription = subscribe(plan(ChargeSpec(meter=code, unit_price=D("1")), base_fee="5"))
    invoice = finalize(close(subscription))
    with_card(stripe_server, invoice, "pm_card_chargeDeclined")
    payments.collect(invoice_id=invoice.pk)
    payments.collect(invoice_id=invoice.pk)  # the one retry
    invoice.refresh_from_db()
    assert invoice.payment_attempts == 2 and invoice.next_payment_attempt_at is None
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE
    refused = use(subscription, 1, at_time=PERIOD_END + timedelta(hours=1))
    assert refused.status == "rejected" and refused.error.code == "subscription_past_due"
    payments.record_offline_payment(invoice_id=invoice.pk, reference="wire-7")
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.ACTIVE
    assert use(subscription, 1, at_time=PERIOD_END + timedelta(hours=1)).status == "accepted"


def test_voiding_the_invoice_that_suspended_a_subscription_makes_it_active_again(
    stripe_server, settings
):
    settings.DUNNING_RETRY_DAYS = []
    code = meter(name="Calls")
    subscription = subscribe(plan(ChargeSpec(meter=code, unit_price=D("1")), base_fee="5"))
    invoice = finalize(close(subscription))
    with_card(stripe_server, invoice, "pm_card_chargeDeclined")
    payments.collect(invoice_id=invoice.pk)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE
    services.void_invoice(invoice_id=invoice.pk, reason="billed in error")
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.ACTIVE
    assert use(subscription, 1, at_time=PERIOD_END + timedelta(hours=1)).status == "accepted"


def test_dunning_can_cancel_instead(stripe_server, settings):
    settings.DUNNING_RETRY_DAYS = []
    settings.DUNNING_FINAL_ACTION = "cancel"
    invoice = invoice_of("5")
    with_card(stripe_server, invoice, "pm_card_chargeDeclined")
    payments.collect(invoice_id=invoice.pk)
    assert Subscription.objects.get(pk=invoice.subscription_id).status == "canceled"


def test_no_saved_card_is_a_failed_attempt_not_an_error(stripe_server):
    invoice = invoice_of("5")
    result = payments.collect(invoice_id=invoice.pk)
    assert (result.status, result.message) == ("failed", "no saved payment method")
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAST_DUE
    assert intents(stripe_server) == []


def test_webhooks_with_a_bad_signature_are_refused_and_store_nothing(stripe_server):
    invoice = invoice_of("5")
    with_card(stripe_server, invoice)
    payments.collect(invoice_id=invoice.pk)
    event = stripe_server.events_of("payment_intent.succeeded")[0]
    body, headers = stripe_server.webhook_request(event, SECRET)
    client = make_client()
    for payload, signature in [
        (body.replace(b'"amount"', b'"amount_x"'), headers["Stripe-Signature"]),  # tampered
        (body, stripe_server.webhook_request(event, "whsec_other")[1]["Stripe-Signature"]),
        (body, ""),
    ]:
        response = client.post(
            WEBHOOK,
            payload,
            content_type="application/json",
            headers={"Stripe-Signature": signature},
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_signature"
    assert StripeEvent.objects.count() == 0


def test_an_invoice_paid_on_checkout_is_recorded_once_whichever_event_comes_first(
    stripe_server,
):
    invoice = invoice_of("30")
    start = payments.checkout_invoice(
        invoice_id=invoice.pk, success_url="https://x/ok", cancel_url="https://x/no"
    )
    assert start.url.startswith(stripe_server.url) and not start.offline
    completed = stripe_server.complete_checkout(start.session_id)
    [succeeded] = stripe_server.events_of("payment_intent.succeeded")
    # reordered: the PaymentIntent's event first, then the session's, then both again
    assert post_event(stripe_server, succeeded)["outcome"].startswith("payment")
    assert post_event(stripe_server, completed)["outcome"] == "duplicate payment"
    post_event(stripe_server, completed)
    post_event(stripe_server, succeeded)
    assert Payment.objects.filter(invoice=invoice).count() == 1
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID
    assert account_posted("@StripeClearing") == D(30)


def test_a_top_up_on_checkout_credits_the_wallet_once(stripe_server):
    subscription = subscribe(plan(), billing_mode=BillingMode.PREPAID)
    customer = Customer.objects.get(pk=subscription.customer_id)
    start = payments.checkout_top_up(
        customer=customer,
        amount=D("25.00"),
        currency="USD",
        success_url="https://x/ok",
        cancel_url="https://x/no",
        request_id="r-1",
    )
    again = payments.checkout_top_up(
        customer=customer,
        amount=D("25.00"),
        currency="USD",
        success_url="https://x/ok",
        cancel_url="https://x/no",
        request_id="r-1",
    )
    assert again.session_id == start.session_id  # a double submit is one checkout
    assert wallet_posted(subscription) == D(0)  # nothing until Stripe says it is paid
    completed = stripe_server.complete_checkout(start.session_id)
    assert post_event(stripe_server, completed)["outcome"] == "wallet credited"
    post_event(stripe_server, completed)
    assert wallet_posted(subscription) == D(25)
    assert account_posted("@StripeClearing") == D(25)  # debit-normal: money held at Stripe


def test_refunds_are_recorded_cumulatively_once(stripe_server):
    invoice = invoice_of("20")
    with_card(stripe_server, invoice)
    payment = payments.collect(invoice_id=invoice.pk).payment
    from invoicing import stripe_gateway

    api = stripe_gateway.client().v1.refunds
    api.create({"payment_intent": payment.provider_payment_id, "amount": 500})
    first = stripe_server.events_of("charge.refunded")[-1]
    assert post_event(stripe_server, first)["outcome"] == "refunded 5.00"
    api.create({"payment_intent": payment.provider_payment_id, "amount": 300})
    second = stripe_server.events_of("charge.refunded")[-1]
    post_event(stripe_server, second)
    post_event(stripe_server, first["id"])  # late and repeated: nothing more
    assert Payment.objects.get(pk=payment.pk).amount_refunded == D(8)
    assert account_posted("@Refunds") == D(8)
    assert account_posted("@StripeClearing") == D(12)


def test_a_failed_handler_keeps_the_event_for_the_retry_task(stripe_server):
    invoice = invoice_of("5")
    with_card(stripe_server, invoice)
    payments.collect(invoice_id=invoice.pk)
    event = dict(stripe_server.events_of("payment_intent.succeeded")[0])
    event["id"] = "evt_broken"
    event["data"] = {
        "object": {
            **event["data"]["object"],
            "id": "pi_other",
            "metadata": {"kind": "invoice", "invoice_id": "999999"},
        }
    }
    answer = post_event(stripe_server, event)
    assert answer["processed"] is False and answer["outcome"].startswith("failed")
    stored = StripeEvent.objects.get(event_id="evt_broken")
    assert stored.attempts == 1 and stored.status == "pending"
    assert webhooks.process_pending() == 0  # not yet: it waits before its next attempt
    assert webhooks.process_pending(now=stored.next_attempt_at) == 1
    assert StripeEvent.objects.get(event_id="evt_broken").attempts == 2


def test_offline_checkout_pays_at_once(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True  # the opt-in
    settings.OFFLINE_AUTO_PAY = False
    invoice = invoice_of("7")
    assert payments.collect(invoice_id=invoice.pk).status == "skipped"
    start = payments.checkout_invoice(invoice_id=invoice.pk, success_url="/ok", cancel_url="/no")
    assert start.offline and start.url == "/ok"
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID
    assert services.CLEARING["offline"] == "@OfflinePayments"
    assert account_posted("@OfflinePayments") == D(7)
