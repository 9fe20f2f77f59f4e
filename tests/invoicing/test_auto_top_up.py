"""Auto top-up end to end with the official Stripe client against the local Stripe-compatible
server (tests/stripe_server.py) and real PostgreSQL: a wallet below its threshold is
refilled to its target by one off-session charge, credited once whether the synchronous
answer or the webhook comes first; failures are counted and turn it off; the cool-off and
the monthly cap hold; at most one attempt is in flight under concurrent beat runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import stripe
from django.db import IntegrityError, transaction

from billing import errors, services
from billing.models import (
    AttemptStatus,
    AutoTopUp,
    AutoTopUpAttempt,
    CreditGrant,
    Customer,
    EventType,
    GrantSource,
    OutboundEvent,
    Wallet,
)
from invoicing import auto_top_up, stripe_gateway
from invoicing.credit_refunds import refund_unused_credits
from invoicing.models import CreditRefundMethod, CreditRefundStatus
from ledger import selectors as ledger_selectors
from tests.factories import CustomerFactory, unique
from tests.invoicing.conftest import account_posted
from tests.invoicing.test_stripe import SECRET, post_event
from tests.stripe_server import StripeServer
from tests.threads import run_concurrently

pytestmark = pytest.mark.django_db
D = Decimal
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture
def stripe_server(settings):
    with StripeServer() as server:
        settings.STRIPE_SECRET_KEY = "sk_test_local"
        settings.STRIPE_API_BASE = server.url
        settings.STRIPE_WEBHOOK_SECRET = SECRET
        settings.PAYMENTS_OFFLINE = False
        yield server


def customer_with(funds: str = "0", *, card: str | None = None, server=None, **kw) -> Customer:
    customer = CustomerFactory(
        external_id=unique("att"), email="ap@acme.example", funds=funds, **kw
    )
    if card is not None:
        stripe_id = stripe_gateway.sync_customer(customer=customer)
        server.attach_payment_method(stripe_id, card)
    return customer


def enable(customer: Customer, currency: str = "USD", **kw) -> AutoTopUp:
    values = {
        "threshold": D("10"),
        "target": D("50"),
        "monthly_cap": D("1000"),
        "cool_off_seconds": 60,
        "max_failures": 3,
        **kw,
    }
    wallet = services.ensure_wallet(customer=customer, currency=currency)
    return services.set_auto_top_up(wallet=wallet, enabled=True, **values)


def available(customer: Customer, currency: str = "USD") -> Decimal:
    wallet = Wallet.objects.get(customer=customer, currency=currency)
    return ledger_selectors.get_balance(account=wallet.account).available


def spend(customer: Customer, amount: str, currency: str = "USD") -> None:
    services.adjust_balance(
        customer=customer,
        amount=-D(amount),
        reason="usage stand-in",
        staff_user_id=None,
        currency=currency,
    )


def run(now: datetime) -> list[AutoTopUpAttempt]:
    """One beat run and the charges it queues, as the worker would run them."""
    return [
        auto_top_up.process_attempt(attempt_id=pk, now=now) for pk in auto_top_up.run_due(now=now)
    ]


def events(kind: EventType) -> list[OutboundEvent]:
    return list(OutboundEvent.objects.filter(type=kind).order_by("id"))


def test_a_low_wallet_is_charged_once_to_its_target_and_the_webhook_adds_nothing(
    stripe_server,
):
    customer = customer_with("7.505", card="pm_card_visa", server=stripe_server)
    enable(customer)

    [attempt] = run(NOW)

    # 50 − 7.505 = 42.495, rounded up to the cent: 42.50 charged and credited
    assert attempt.status == AttemptStatus.SUCCEEDED
    assert (attempt.amount, attempt.credit_amount) == (D("42.50"), D("42.50"))
    [intent] = stripe_server.objects("payment_intent")
    assert (intent["amount"], intent["currency"], intent["status"]) == (4250, "usd", "succeeded")
    assert intent["metadata"]["kind"] == "auto_top_up"
    assert attempt.payment_intent_id == intent["id"]
    assert available(customer) == D("50.005")
    assert account_posted("@StripeClearing") == D("42.50")
    # the Stripe request carried the attempt's own key
    [create] = [r for r in stripe_server.requests if r["path"] == "/v1/payment_intents"]
    assert create["idempotency_key"] == f"auto-top-up-attempt-{attempt.pk}"

    [succeeded] = stripe_server.events_of("payment_intent.succeeded")
    assert post_event(stripe_server, succeeded)["outcome"] == "duplicate"
    assert available(customer) == D("50.005")
    [event] = events(EventType.AUTO_TOP_UP_SUCCEEDED)
    assert event.data["amount"] == "42.500000000000" and event.customer_id == customer.pk
    # above the threshold now: the next run charges nothing
    assert run(NOW + timedelta(hours=1)) == []
    assert len(stripe_server.objects("payment_intent")) == 1


def test_webhook_first_then_the_retried_task_credit_once_and_charge_once(stripe_server):
    """A worker charged the card and died before recording it: the webhook credits the
    wallet; the task run again sends the same idempotency key (Stripe answers the first
    PaymentIntent) and finds the attempt done."""
    customer = customer_with("0", card="pm_card_visa", server=stripe_server)
    enable(customer, threshold=D("5"), target=D("20"))
    [attempt_id] = auto_top_up.run_due(now=NOW)
    attempt = AutoTopUpAttempt.objects.get(pk=attempt_id)
    stripe_id = Customer.objects.get(pk=customer.pk).stripe_customer_id
    stripe_gateway.charge(  # what the lost worker sent
        stripe_customer_id=stripe_id,
        payment_method="pm_card_visa",
        amount=attempt.amount,
        currency="USD",
        idempotency_key=attempt.idempotency_key,
        metadata={"kind": "auto_top_up", "attempt_id": str(attempt.pk)},
        description="lost",
    )
    [succeeded] = stripe_server.events_of("payment_intent.succeeded")

    assert post_event(stripe_server, succeeded)["outcome"] == "wallet credited"
    assert available(customer) == D("20")
    # the sweep resumes it once it is stale; the same key: no second charge
    assert auto_top_up.resume_stalled(now=NOW + timedelta(minutes=1)) == []
    assert auto_top_up.resume_stalled(now=NOW + timedelta(minutes=6)) == []  # done already
    done = auto_top_up.process_attempt(attempt_id=attempt.pk)
    assert done.status == AttemptStatus.SUCCEEDED
    assert len(stripe_server.objects("payment_intent")) == 1
    assert available(customer) == D("20")
    assert len(events(EventType.AUTO_TOP_UP_SUCCEEDED)) == 1


def test_a_stalled_attempt_is_sent_again_with_its_key_and_charged_once(stripe_server):
    customer = customer_with("0", card="pm_card_visa", server=stripe_server)
    enable(customer, threshold=D("5"), target=D("20"))
    [attempt_id] = auto_top_up.run_due(now=NOW)
    first = auto_top_up.process_attempt(attempt_id=attempt_id, now=NOW)
    # pretend the first run never recorded its answer: back in flight
    AutoTopUpAttempt.objects.filter(pk=attempt_id).update(status=AttemptStatus.PROCESSING)
    assert auto_top_up.resume_stalled(now=NOW + timedelta(minutes=4)) == []  # not stale yet
    assert auto_top_up.resume_stalled(now=NOW + timedelta(minutes=6)) == [attempt_id]
    # sent again just now: the next beat run leaves it to that task
    assert auto_top_up.resume_stalled(now=NOW + timedelta(minutes=7)) == []
    again = auto_top_up.process_attempt(attempt_id=attempt_id)
    assert again.status == AttemptStatus.SUCCEEDED
    assert again.payment_intent_id == first.payment_intent_id
    assert len(stripe_server.objects("payment_intent")) == 1
    assert available(customer) == D("20")  # the ledger reference posted once


def test_failures_are_counted_and_turn_it_off_after_the_maximum(stripe_server):
    customer = customer_with("1", card="pm_card_chargeDeclined", server=stripe_server)
    auto = enable(customer, max_failures=3, cool_off_seconds=60)

    [first] = run(NOW)
    assert first.status == AttemptStatus.FAILED and first.failure_code == "card_declined"
    assert "declined" in first.failure_message and first.payment_intent_id
    auto.refresh_from_db()
    assert (auto.enabled, auto.consecutive_failures) == (True, 1)
    # the failure's webhook reports the same attempt: nothing more is counted
    [failed] = stripe_server.events_of("payment_intent.payment_failed")
    assert post_event(stripe_server, failed)["outcome"] == "auto top-up failure recorded"
    auto.refresh_from_db()
    assert auto.consecutive_failures == 1

    assert run(NOW + timedelta(seconds=30)) == []  # cool-off
    [second] = run(NOW + timedelta(seconds=60))
    [third] = run(NOW + timedelta(seconds=120))
    assert second.status == third.status == AttemptStatus.FAILED
    auto.refresh_from_db()
    assert (auto.enabled, auto.consecutive_failures) == (False, 3)
    assert auto.disabled_reason.startswith("turned off after 3 failed attempts in a row")
    assert run(NOW + timedelta(hours=1)) == []
    failures = events(EventType.AUTO_TOP_UP_FAILED)
    assert [e.data["disabled"] for e in failures] == [False, False, True]
    assert [e.data["consecutive_failures"] for e in failures] == [1, 2, 3]
    assert available(customer) == D("1")

    # finance fixes the card and turns it on again: the count starts over, and it refills
    stripe_server.set_card_behaviour("pm_card_chargeDeclined", "succeed")
    auto = enable(customer)
    assert (auto.consecutive_failures, auto.disabled_reason) == (0, "")
    [ok] = run(NOW + timedelta(hours=2))
    assert ok.status == AttemptStatus.SUCCEEDED and available(customer) == D("50")


def test_a_success_resets_the_failures_in_a_row(stripe_server):
    customer = customer_with("1", card="pm_card_chargeDeclined", server=stripe_server)
    auto = enable(customer, max_failures=2)
    run(NOW)
    stripe_server.set_card_behaviour("pm_card_chargeDeclined", "succeed")
    run(NOW + timedelta(minutes=2))
    auto.refresh_from_db()
    assert (auto.enabled, auto.consecutive_failures) == (True, 0)


def test_no_saved_payment_method_is_a_clear_failure_not_a_crash(stripe_server):
    customer = customer_with("0")  # no card at Stripe
    enable(customer)
    [attempt] = run(NOW)
    assert attempt.status == AttemptStatus.FAILED
    assert attempt.failure_code == "no_payment_method"
    assert "no saved default payment method" in attempt.failure_message
    assert stripe_server.objects("payment_intent") == []
    [event] = events(EventType.AUTO_TOP_UP_FAILED)
    assert event.data["code"] == "no_payment_method"


def test_the_cool_off_holds_between_attempts(stripe_server):
    customer = customer_with("0", card="pm_card_visa", server=stripe_server)
    enable(customer, cool_off_seconds=600)
    run(NOW)
    spend(customer, "45")  # 50 → 5: below the threshold again at once
    assert run(NOW + timedelta(seconds=599)) == []
    [again] = run(NOW + timedelta(seconds=600))
    assert again.amount == D("45.00") and available(customer) == D("50")


def test_the_monthly_cap_lowers_the_charge_then_skips_until_next_month(stripe_server):
    customer = customer_with("5", card="pm_card_visa", server=stripe_server)
    auto = enable(customer, monthly_cap=D("60"), cool_off_seconds=0)

    [first] = run(NOW)
    assert first.amount == D("45.00")  # 50 − 5
    spend(customer, "48")  # 2 left
    [second] = run(NOW + timedelta(minutes=1))
    assert second.amount == D("15.00")  # 48 needed, 60 − 45 = 15 left under the cap
    assert available(customer) == D("17")
    spend(customer, "10")  # 7 left
    assert run(NOW + timedelta(minutes=2)) == []
    assert run(NOW + timedelta(minutes=3)) == []
    auto.refresh_from_db()
    assert auto.skipped_reason.startswith("monthly cap reached: 60 of 60 USD charged")
    [capped] = events(EventType.AUTO_TOP_UP_FAILED)  # reported once this month
    assert capped.data["code"] == "monthly_cap_reached"
    assert [i["amount"] for i in stripe_server.objects("payment_intent")] == [4500, 1500]

    # a new calendar month: the cap starts over
    [third] = run(datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert third.amount == D("43.00") and available(customer) == D("50")


def test_credits_are_bought_as_a_purchase_grant_priced_per_credit_under_the_cap(
    stripe_server, settings
):
    settings.CREDIT_PRICE = D("0.01")
    customer = customer_with("0", card="pm_card_visa", server=stripe_server)
    services.ensure_wallet(customer=customer, currency="CREDITS")
    services.adjust_balance(
        customer=customer, amount=D("250.5"), reason="seed", staff_user_id=None, currency="CREDITS"
    )
    enable(customer, "CREDITS", threshold=D("1000"), target=D("5000"), monthly_cap=D("30"))

    [attempt] = run(NOW)

    # 5000 − 250.5 = 4749.5 → 4750 credits = 47.50 USD; the cap (30) allows 3000 credits
    assert (attempt.credit_amount, attempt.amount, attempt.charge_currency) == (
        D("3000"),
        D("30.00"),
        "USD",
    )
    assert attempt.status == AttemptStatus.SUCCEEDED
    assert available(customer, "CREDITS") == D("3250.5")
    grant = CreditGrant.objects.get(customer=customer, source=GrantSource.PURCHASE)
    assert grant.amount == D("3000")
    assert account_posted("@CreditsSold") == D("30.00")
    [succeeded] = stripe_server.events_of("payment_intent.succeeded")
    assert post_event(stripe_server, succeeded)["outcome"] == "duplicate"
    assert CreditGrant.objects.filter(customer=customer, source=GrantSource.PURCHASE).count() == 1


def test_offline_mode_credits_without_stripe_only_when_enabled(settings):
    customer = customer_with("0")
    enable(customer)
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = False
    # the default: no payment provider, nothing attempted, nothing credited
    assert run(NOW) == []
    assert AutoTopUpAttempt.objects.count() == 0

    settings.PAYMENTS_OFFLINE = True
    [attempt] = run(NOW)
    assert attempt.status == AttemptStatus.SUCCEEDED and attempt.offline
    assert attempt.payment_intent_id is None
    assert available(customer) == D("50")
    assert account_posted("@OfflinePayments") == D("50")


@pytest.mark.django_db(transaction=True)
def test_concurrent_beat_runs_start_one_attempt_and_charge_once(stripe_server):
    customer = customer_with("0", card="pm_card_visa", server=stripe_server)
    enable(customer, cool_off_seconds=0)

    results = run_concurrently(lambda i: [a.status for a in run(NOW)], threads=8)

    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sorted(s for r in results for s in r) == [AttemptStatus.SUCCEEDED]
    assert AutoTopUpAttempt.objects.count() == 1
    assert len(stripe_server.objects("payment_intent")) == 1
    assert available(customer) == D("50")


@pytest.mark.django_db(transaction=True)
def test_one_attempt_processed_by_several_workers_at_once_charges_and_credits_once(
    stripe_server,
):
    customer = customer_with("0", card="pm_card_visa", server=stripe_server)
    enable(customer)
    [attempt_id] = auto_top_up.run_due(now=NOW)

    results = run_concurrently(
        lambda i: auto_top_up.process_attempt(attempt_id=attempt_id).status, threads=6
    )

    assert results == [AttemptStatus.SUCCEEDED] * 6
    assert len(stripe_server.objects("payment_intent")) == 1
    assert available(customer) == D("50")
    assert len(events(EventType.AUTO_TOP_UP_SUCCEEDED)) == 1


def test_the_database_refuses_a_second_attempt_in_flight_and_bad_settings():
    customer = customer_with("0")
    auto = enable(customer)
    fields = dict(
        auto_top_up=auto,
        wallet_id=auto.wallet_id,
        customer=customer,
        amount=D("1"),
        charge_currency="USD",
        credit_amount=D("1"),
        wallet_currency="USD",
        balance_before=D("0"),
    )
    AutoTopUpAttempt.objects.create(idempotency_key="a", **fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        AutoTopUpAttempt.objects.create(idempotency_key="b", status="processing", **fields)
    AutoTopUpAttempt.objects.create(idempotency_key="c", status="failed", **fields)  # ended: fine
    with pytest.raises(IntegrityError), transaction.atomic():
        AutoTopUp.objects.filter(pk=auto.pk).update(target=D("10"))  # not above the threshold


def test_settings_are_validated(stripe_server):
    customer = customer_with("0")
    wallet = services.wallet_for(customer=customer)
    good = dict(threshold=D("10"), target=D("50"), monthly_cap=D("100"))
    cases = [
        ({"target": D("10")}, "target"),
        ({"threshold": D("-1")}, "threshold"),
        ({"monthly_cap": D("0")}, "monthly_cap"),
        ({"cool_off_seconds": -1}, "cool_off_seconds"),
        ({"max_failures": 0}, "max_failures"),
        ({"threshold": D("0.0000000000001")}, "threshold"),
    ]
    for change, param in cases:
        with pytest.raises(errors.ValidationFailed) as refused:
            services.set_auto_top_up(wallet=wallet, enabled=True, **{**good, **change})
        assert refused.value.param == param
    postpaid = CustomerFactory(billing_mode="postpaid")
    with pytest.raises(services.WalletNotPrepaid):
        services.set_auto_top_up(
            wallet=services.wallet_for(customer=postpaid), enabled=True, **good
        )
    assert AutoTopUp.objects.count() == 0


def test_due_wallets_are_found_from_balance_rows_in_one_query(django_assert_num_queries):
    low, high, off = (customer_with(funds) for funds in ("3", "80", "1"))
    enable(low)
    enable(high)
    services.set_auto_top_up(
        wallet=services.wallet_for(customer=off),
        enabled=False,
        threshold=D("10"),
        target=D("50"),
        monthly_cap=D("100"),
    )
    with django_assert_num_queries(1):
        due = services.due_auto_top_ups(now=NOW)
    assert due == [AutoTopUp.objects.get(customer=low).pk]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_charges_an_attempt_once_though_the_task_is_delivered_twice(
    stripe_server, monkeypatch
):
    from invoicing.tasks import charge_auto_top_up
    from tests.test_celery import start_worker, stop_worker

    customer = customer_with("2", card="pm_card_visa", server=stripe_server)
    enable(customer)
    [attempt_id] = auto_top_up.run_due(now=NOW)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_local")
    monkeypatch.setenv("STRIPE_API_BASE", stripe_server.url)
    monkeypatch.setenv("PAYMENTS_OFFLINE", "0")
    queue = f"test-{unique('q')}"
    worker = start_worker(queue)
    try:
        first = charge_auto_top_up.apply_async((attempt_id,), queue=queue)
        second = charge_auto_top_up.apply_async((attempt_id,), queue=queue)
        assert [first.get(timeout=60), second.get(timeout=60)] == ["succeeded", "succeeded"]
    finally:
        stop_worker(worker)
    assert len(stripe_server.objects("payment_intent")) == 1
    assert available(customer) == D("50")


def test_an_attempt_without_an_answer_for_a_day_is_failed_and_a_late_success_still_credits(
    stripe_server,
):
    customer = customer_with("0", card="pm_card_visa", server=stripe_server)
    enable(customer, threshold=D("5"), target=D("20"))
    [attempt_id] = auto_top_up.run_due(now=NOW)
    assert auto_top_up.resume_stalled(now=NOW + timedelta(hours=23)) == []
    attempt = AutoTopUpAttempt.objects.get(pk=attempt_id)
    assert (attempt.status, attempt.failure_code) == (AttemptStatus.FAILED, "outcome_unknown")
    # the charge had gone through after all: its webhook credits the wallet
    stripe_id = Customer.objects.get(pk=customer.pk).stripe_customer_id
    stripe_gateway.charge(
        stripe_customer_id=stripe_id,
        payment_method="pm_card_visa",
        amount=attempt.amount,
        currency="USD",
        idempotency_key=attempt.idempotency_key,
        metadata={"kind": "auto_top_up", "attempt_id": str(attempt.pk)},
        description="late",
    )
    [succeeded] = stripe_server.events_of("payment_intent.succeeded")
    assert post_event(stripe_server, succeeded)["outcome"] == "wallet credited"
    attempt.refresh_from_db()
    assert attempt.status == AttemptStatus.SUCCEEDED and available(customer) == D("20")
    assert AutoTopUp.objects.get(customer=customer).consecutive_failures == 0


def test_a_success_webhook_saying_nothing_was_received_credits_nothing(stripe_server):
    customer = customer_with("0", card="pm_card_visa", server=stripe_server)
    enable(customer)
    [attempt_id] = auto_top_up.run_due(now=NOW)
    intent = {
        "id": "pi_zero",
        "object": "payment_intent",
        "amount": 5000,
        "amount_received": 0,
        "currency": "usd",
        "status": "succeeded",
        "metadata": {"kind": "auto_top_up", "attempt_id": str(attempt_id)},
    }
    event = {
        "id": "evt_zero",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": intent},
    }
    body = post_event(stripe_server, event)
    assert body["status"] == "needs_review" and "nothing was received" in body["outcome"]
    assert AutoTopUpAttempt.objects.get(pk=attempt_id).status == AttemptStatus.PENDING
    assert available(customer) == D("0")


def test_credits_bought_by_auto_top_up_are_refunded_to_the_card_on_what_was_paid(
    stripe_server, settings
):
    settings.CREDIT_PRICE = D("0.01")
    customer = customer_with("0", card="pm_card_visa", server=stripe_server)
    services.ensure_wallet(customer=customer, currency="CREDITS")
    enable(customer, "CREDITS", threshold=D("1000"), target=D("5000"), monthly_cap=D("30"))
    [attempt] = run(NOW)
    assert (attempt.status, attempt.amount, attempt.credit_amount) == (
        AttemptStatus.SUCCEEDED,
        D("30.00"),
        D("3000"),
    )
    grant = CreditGrant.objects.get(customer=customer, source=GrantSource.PURCHASE)
    assert grant.metadata["payment"] == {
        "provider": "stripe",
        "payment_intent": attempt.payment_intent_id,
        "auto_top_up_attempt": str(attempt.pk),
        "amount": "30.00",
        "currency": "USD",
    }
    spend(customer, "1000", "CREDITS")
    settings.CREDIT_PRICE = D("0.02")  # the list price raised since: not what was paid

    refund = refund_unused_credits(grant_id=grant.pk)

    # 2000 of the 3000 credits left: two thirds of the 30.00 paid, back to the card
    assert (refund.method, refund.status) == (
        CreditRefundMethod.STRIPE,
        CreditRefundStatus.SUCCEEDED,
    )
    assert (refund.credits, refund.amount, refund.currency) == (D("2000"), D("20.00"), "USD")
    [stripe_refund] = stripe_server.objects("refund")
    assert stripe_refund["payment_intent"] == attempt.payment_intent_id
    assert stripe_refund["amount"] == 2000
    assert account_posted("@Refunds") == D("0")


def test_credits_bought_offline_are_never_paid_back_above_what_was_paid(settings):
    settings.CREDIT_PRICE = D("0.01")
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True
    customer = customer_with("0")
    services.ensure_wallet(customer=customer, currency="CREDITS")
    enable(customer, "CREDITS", threshold=D("1000"), target=D("5000"), monthly_cap=D("30"))
    [attempt] = run(NOW)
    assert (attempt.offline, attempt.amount, attempt.credit_amount) == (True, D("30.00"), D("3000"))
    grant = CreditGrant.objects.get(customer=customer, source=GrantSource.PURCHASE)
    settings.CREDIT_PRICE = D("0.02")

    refund = refund_unused_credits(grant_id=grant.pk)

    # 3000 credits at today's price would be 60.00; 30.00 was paid
    assert (refund.method, refund.amount, refund.currency) == (
        CreditRefundMethod.OFFLINE,
        D("30.00"),
        "USD",
    )


def test_an_outcome_unknown_attempt_counts_toward_the_cap_until_it_succeeds_late(stripe_server):
    customer = customer_with("0", card="pm_card_visa", server=stripe_server)
    auto = enable(
        customer, threshold=D("5"), target=D("50"), monthly_cap=D("60"), cool_off_seconds=0
    )
    [a_id] = auto_top_up.run_due(now=NOW)
    first = AutoTopUpAttempt.objects.get(pk=a_id)
    # the charge goes through at Stripe but the answer is lost (a worker crash)
    stripe_id = Customer.objects.get(pk=customer.pk).stripe_customer_id
    stripe_gateway.charge(
        stripe_customer_id=stripe_id,
        payment_method="pm_card_visa",
        amount=first.amount,
        currency="USD",
        idempotency_key=first.idempotency_key,
        metadata={"kind": "auto_top_up", "attempt_id": str(first.pk)},
        description="lost answer",
    )
    later = NOW + timedelta(hours=23)
    auto_top_up.resume_stalled(now=later)
    first.refresh_from_db()
    assert (first.status, first.failure_code) == (AttemptStatus.FAILED, "outcome_unknown")
    assert auto_top_up.charged_this_month(auto_top_up=auto, now=later) == D("50.00")

    # a new attempt is planned in what the cap leaves (10 of 60), not in 60
    [second] = run(later + timedelta(minutes=1))
    assert (second.status, second.amount) == (AttemptStatus.SUCCEEDED, D("10.00"))
    # the first charge's success arrives late and still credits
    [succeeded] = stripe_server.events_of("payment_intent.succeeded")[:1]
    assert post_event(stripe_server, succeeded)["outcome"] == "wallet credited"
    assert auto_top_up.charged_this_month(auto_top_up=auto, now=later) == D("60.00")
    assert available(customer) == D("60.00")


def test_a_409_idempotency_conflict_is_transient_and_the_first_request_still_credits(
    stripe_server, monkeypatch
):
    customer = customer_with("0", card="pm_card_visa", server=stripe_server)
    enable(customer, threshold=D("5"), target=D("50"), max_failures=1)
    [a_id] = auto_top_up.run_due(now=NOW)
    real = stripe_gateway.charge

    def busy(**kw):  # a resumed worker while the first request with the key still runs
        raise stripe.IdempotencyError("There is currently another in-progress request")

    monkeypatch.setattr(stripe_gateway, "charge", busy)
    with pytest.raises(stripe.IdempotencyError):  # raised for the task to retry
        auto_top_up.process_attempt(attempt_id=a_id, now=NOW)
    monkeypatch.setattr(stripe_gateway, "charge", real)
    attempt = AutoTopUpAttempt.objects.get(pk=a_id)
    auto = AutoTopUp.objects.get(customer=customer)
    assert attempt.status == AttemptStatus.PROCESSING and attempt.failure_code == ""
    assert (auto.enabled, auto.consecutive_failures) == (True, 0)
    # the slot stays occupied: no second attempt
    assert auto_top_up.run_due(now=NOW + timedelta(hours=1)) == []

    # the first request's success arrives (its webhook)
    stripe_id = Customer.objects.get(pk=customer.pk).stripe_customer_id
    real(
        stripe_customer_id=stripe_id,
        payment_method="pm_card_visa",
        amount=attempt.amount,
        currency="USD",
        idempotency_key=attempt.idempotency_key,
        metadata={"kind": "auto_top_up", "attempt_id": str(a_id)},
        description="first request",
    )
    [succeeded] = stripe_server.events_of("payment_intent.succeeded")
    assert post_event(stripe_server, succeeded)["outcome"] == "wallet credited"
    auto.refresh_from_db()
    assert available(customer) == D("50") and auto.enabled
    assert AutoTopUpAttempt.objects.get(pk=a_id).status == AttemptStatus.SUCCEEDED


def test_a_charge_still_processing_stays_in_flight_until_its_webhook(stripe_server):
    customer = customer_with("0", card="pm_card_processing", server=stripe_server)
    auto = enable(customer, threshold=D("5"), target=D("50"), max_failures=1, cool_off_seconds=0)
    [attempt] = run(NOW)
    assert attempt.status == AttemptStatus.PROCESSING and attempt.failure_code == ""
    assert attempt.payment_intent_id
    auto.refresh_from_db()
    assert (auto.enabled, auto.consecutive_failures) == (True, 0)
    assert auto_top_up.charged_this_month(auto_top_up=auto, now=NOW) == D("50.00")
    assert run(NOW + timedelta(minutes=1)) == []  # its slot stays occupied
    # Stripe settles it: the success webhook credits the wallet
    intent = stripe_server.get(attempt.payment_intent_id)
    intent.update(status="succeeded", amount_received=intent["amount"])
    event = {
        "id": "evt_processing_done",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": intent},
    }
    assert post_event(stripe_server, event)["outcome"] == "wallet credited"
    assert available(customer) == D("50")


def test_a_charge_asking_for_authentication_off_session_fails_with_a_clear_code(stripe_server):
    customer = customer_with("0", card="pm_card_authenticationRequired", server=stripe_server)
    enable(customer, threshold=D("5"), target=D("50"))
    [attempt] = run(NOW)
    assert (attempt.status, attempt.failure_code) == (
        AttemptStatus.FAILED,
        "authentication_required",
    )
    assert "authenticate" in attempt.failure_message
    assert attempt.payment_intent_id
