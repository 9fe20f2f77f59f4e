"""Each place that changes an invoice, a credit note, a subscription or a credit grant tells
the seller's systems once (billing.outbox): run twice — as a Celery task delivered twice
would — it records one event, whose data is the resource as the API shows it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import credits
from billing import services as billing_services
from billing.api.webhook_schema import DATA
from billing.models import EventType, GrantStatus, OutboundEvent, SubscriptionStatus
from invoicing import services as invoicing
from invoicing.models import InvoiceStatus
from tests.billing.conftest import at
from tests.factories import CustomerFactory, PlanFactory
from tests.invoicing.conftest import PERIOD_END, START, close, finalize, plan, subscribe

pytestmark = pytest.mark.django_db

D = Decimal


def events(kind: EventType) -> list[OutboundEvent]:
    return list(OutboundEvent.objects.filter(type=kind).order_by("pk"))


def only(kind: EventType) -> dict:
    (event,) = events(kind)
    schema_fields = set(DATA[kind.value]().fields)
    assert set(event.data) == schema_fields, "the payload and its schema differ"
    return event.data


def test_invoice_created_finalized_and_paid_once_each():
    subscription = subscribe(plan(base_fee="20"))
    draft = close(subscription)
    invoicing.close_period(subscription_id=subscription.pk, as_of=PERIOD_END)  # again
    created = only(EventType.INVOICE_CREATED)
    assert (created["id"], created["status"], created["number"]) == (draft.pk, "draft", None)
    assert created["customer"] == subscription.customer.external_id

    invoice = finalize(draft)
    finalize(draft)  # again
    finalized = only(EventType.INVOICE_FINALIZED)
    assert finalized["status"] == "open" and finalized["number"] == invoice.display_number
    assert finalized["total"] == "20.000000000000" and finalized["amount_due"] == finalized["total"]
    assert events(EventType.INVOICE_PAID) == []

    for _ in range(2):
        invoicing.record_payment(
            invoice_id=invoice.pk, amount=D(20), provider="stripe", provider_payment_id="pi_1"
        )
    paid = only(EventType.INVOICE_PAID)
    assert paid["status"] == "paid" and paid["amount_remaining"] == "0.000000000000"
    (event,) = events(EventType.INVOICE_PAID)
    assert event.customer_id == subscription.customer_id


def test_an_invoice_the_balance_pays_at_finalization_is_paid_once():
    subscription = subscribe(plan(base_fee="20"), funds="50")
    invoice = finalize(close(subscription))
    assert invoice.status == InvoiceStatus.PAID
    finalize(invoice)
    assert only(EventType.INVOICE_PAID)["balance_applied"] == "20.000000000000"


def test_payment_failures_suspension_and_reactivation_once_each(settings):
    settings.DUNNING_RETRY_DAYS = [3]
    settings.DUNNING_FINAL_ACTION = "suspend"
    subscription = subscribe(plan(base_fee="20"))
    invoice = finalize(close(subscription))
    for attempt in (1, 1, 2, 2):  # each failure reported twice (the answer and its webhook)
        invoicing.record_payment_failure(
            invoice_id=invoice.pk, attempt=attempt, message="card declined", now=PERIOD_END
        )
    failed = events(EventType.INVOICE_PAYMENT_FAILED)
    assert [e.data["payment_attempts"] for e in failed] == [1, 2]
    assert (
        failed[0].data["status"] == "past_due" and failed[1].data["next_payment_attempt_at"] is None
    )
    suspended = only(EventType.SUBSCRIPTION_SUSPENDED)
    assert (suspended["id"], suspended["status"]) == (subscription.pk, SubscriptionStatus.PAST_DUE)

    for _ in range(2):
        invoicing.record_payment(
            invoice_id=invoice.pk, amount=D(20), provider="offline", provider_payment_id="p-1"
        )
    reactivated = only(EventType.SUBSCRIPTION_REACTIVATED)
    assert reactivated["status"] == SubscriptionStatus.ACTIVE
    only(EventType.INVOICE_PAID)


def test_a_void_and_a_credit_note_once_each():
    first = finalize(close(subscribe(plan(base_fee="20"))))
    invoicing.void_invoice(invoice_id=first.pk, reason="duplicate")
    invoicing.void_invoice(invoice_id=first.pk, reason="duplicate")
    assert only(EventType.INVOICE_VOIDED)["status"] == "void"

    second = finalize(close(subscribe(plan(base_fee="20"))))
    for _ in range(2):
        invoicing.create_credit_note(
            invoice_id=second.pk, amount=D(5), reason="goodwill", reference="cn-1"
        )
    note = only(EventType.CREDIT_NOTE_CREATED)
    assert (note["invoice"], note["amount"], note["total"]) == (
        second.pk,
        "5.000000000000",
        "5.000000000000",
    )
    assert note["created_at"] is not None


def test_subscription_created_changed_and_canceled():
    customer = CustomerFactory()
    basic = PlanFactory(code="basic-wh", base_fee="10")
    pro = PlanFactory(code="pro-wh", base_fee="30")
    subscription = billing_services.create_subscription(customer=customer, plan=basic)
    created = only(EventType.SUBSCRIPTION_CREATED)
    assert (created["plan"], created["status"]) == ("basic-wh", "active")

    billing_services.change_subscription(subscription_id=subscription.pk, plan=pro)
    with pytest.raises(Exception, match="already on this plan"):  # run again: refused
        billing_services.change_subscription(subscription_id=subscription.pk, plan=pro)
    assert only(EventType.SUBSCRIPTION_UPDATED)["plan"] == "pro-wh"

    for _ in range(2):  # asked twice: one change, one event
        billing_services.change_subscription(
            subscription_id=subscription.pk, plan=basic, at_period_end=True
        )
        billing_services.cancel_subscription(subscription_id=subscription.pk, at_period_end=True)
    updates = events(EventType.SUBSCRIPTION_UPDATED)
    assert [e.data["scheduled_plan"] for e in updates][1:] == ["basic-wh@1", "basic-wh@1"]
    assert [e.data["cancel_at_period_end"] for e in updates] == [False, False, True]

    billing_services.cancel_subscription(subscription_id=subscription.pk)
    with pytest.raises(Exception, match="canceled"):
        billing_services.cancel_subscription(subscription_id=subscription.pk)
    canceled = only(EventType.SUBSCRIPTION_CANCELED)
    assert canceled["status"] == "canceled" and canceled["ended_at"] is not None


def test_the_period_close_applies_a_scheduled_plan_and_a_cancellation_once():
    subscription = subscribe(plan(base_fee="10", code="wh-a"))
    other = plan(base_fee="20", code="wh-b")
    billing_services.change_subscription(
        subscription_id=subscription.pk, plan=other, at_period_end=True, now=START
    )
    close(subscription)
    invoicing.close_period(subscription_id=subscription.pk, as_of=PERIOD_END)
    changed = [e.data for e in events(EventType.SUBSCRIPTION_UPDATED)]
    assert [(d["plan"], d["scheduled_plan"]) for d in changed] == [
        ("wh-a", "wh-b@1"),
        ("wh-b", None),
    ]
    billing_services.cancel_subscription(
        subscription_id=subscription.pk, at_period_end=True, now=PERIOD_END
    )
    june = at(2026, 6, 1)
    close(subscription, as_of=june)
    invoicing.close_period(subscription_id=subscription.pk, as_of=june)
    assert only(EventType.SUBSCRIPTION_CANCELED)["ended_at"] == "2026-06-01T00:00:00Z"


def test_credits_granted_and_expired_once_each():
    customer = CustomerFactory(external_id="wh-credits")
    soon = timezone.now() + timedelta(hours=1)
    for _ in range(2):
        grant = credits.grant_credits(
            customer=customer, amount=D(100), expires_at=soon, reference="promo-1"
        )
    granted = only(EventType.CREDITS_GRANTED)
    assert (granted["id"], granted["amount"], granted["customer"]) == (
        grant.pk,
        "100.000000000000",
        "wh-credits",
    )

    later = soon + timedelta(seconds=1)
    credits.expire_grant(grant_id=grant.pk, now=later)
    credits.expire_grant(grant_id=grant.pk, now=later)
    credits.expire_due_grants(now=later)
    (event,) = events(EventType.CREDITS_EXPIRED)
    assert event.data["expired_amount"] == "100.000000000000"
    assert event.data["status"] == GrantStatus.EXPIRED and event.data["remaining"] == (
        "0.000000000000"
    )
    assert set(event.data) == set(DATA[EventType.CREDITS_EXPIRED.value]().fields)
