"""Every accepted event lands on an invoice: the usage reconciliation
(``tests.reconciliation``) holds for back-dated, canceled (now and at period end), changed
(plan change mid-period) and trial subscriptions, before and after their periods close."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from billing import services as billing
from billing.models import Subscription, SubscriptionStatus
from invoicing import services as invoicing
from invoicing.models import Invoice
from tests.factories import CustomerFactory, SubscriptionFactory
from tests.invoicing.conftest import START, ChargeSpec, at, close, finalize, meter, plan, use
from tests.invoicing.conftest import subscribe as subscribe_at_start
from tests.reconciliation import assert_reconciled, reconcile

pytestmark = pytest.mark.django_db

D = Decimal
NOW = at(2026, 6, 15, 12)  # two and a half monthly periods after START (Apr 1)


def unit_plan(price: str = "0.10", **kw):
    return plan(ChargeSpec(meter=kw.pop("code", None) or meter(), unit_price=D(price)), **kw)


def new_backdated(the_plan, *, now=NOW, trial_days: int = 0) -> Subscription:
    from billing.models import BillingMode

    return SubscriptionFactory(
        customer=CustomerFactory(
            external_id=f"bd-{the_plan.code}", name="Back Dated", billing_mode=BillingMode.POSTPAID
        ),
        plan=the_plan,
        start=START,
        trial_days=trial_days,
        now=now,
    )


def invoices(subscription) -> list[tuple]:
    return list(
        Invoice.objects.filter(subscription=subscription)
        .order_by("period_start")
        .values_list("period_start", "period_end", "usage_charged")
    )


def test_a_backdated_subscription_invoices_every_period_since_its_start():
    subscription = new_backdated(unit_plan())
    for day in (at(2026, 4, 10), at(2026, 5, 10), at(2026, 6, 10)):
        assert use(subscription, 5, at_time=day, now=NOW).status == "accepted"
    assert_reconciled(subscription)
    assert invoicing.close_due_periods(as_of=NOW) == 2
    assert invoices(subscription) == [
        (at(2026, 4, 1), at(2026, 5, 1), D("0.5")),
        (at(2026, 5, 1), at(2026, 6, 1), D("0.5")),
    ]
    result = assert_reconciled(subscription)
    assert result.open == {"USD": D("0.5")}  # June, still open
    subscription.refresh_from_db()
    assert subscription.current_period_start == at(2026, 6, 1)


def test_canceled_now_after_a_plain_start():
    subscription = subscribe_at_start(unit_plan())
    assert use(subscription, 5, at_time=at(2026, 4, 10)).status == "accepted"
    billing.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 20))
    late = use(subscription, 5, at_time=at(2026, 4, 19), now=at(2026, 4, 21))
    assert late.status == "rejected"  # no live subscription any more
    assert_reconciled(subscription)
    assert invoicing.close_due_periods(as_of=at(2026, 4, 21)) == 1
    result = assert_reconciled(subscription)
    assert result.open == {} and result.invoiced == {"USD": D("0.5")}


def test_canceled_now_while_back_dated_periods_are_still_open():
    subscription = new_backdated(unit_plan())
    for day in (at(2026, 4, 10), at(2026, 5, 10), at(2026, 6, 10)):
        assert use(subscription, 5, at_time=day, now=NOW).status == "accepted"
    billing.cancel_subscription(subscription_id=subscription.pk, now=NOW)
    assert invoicing.close_due_periods(as_of=NOW + timedelta(minutes=5)) == 3
    assert [row[:2] for row in invoices(subscription)] == [
        (at(2026, 4, 1), at(2026, 5, 1)),
        (at(2026, 5, 1), at(2026, 6, 1)),
        (at(2026, 6, 1), at(2026, 7, 1)),  # the last, partial period (fees end at the cancel)
    ]
    result = assert_reconciled(subscription)
    assert result.open == {} and result.invoiced == {"USD": D("1.5")}
    assert invoicing.close_due_periods(as_of=NOW + timedelta(days=60)) == 0


def test_canceled_at_period_end_refuses_usage_after_the_end():
    subscription = subscribe_at_start(unit_plan())
    assert use(subscription, 5, at_time=at(2026, 4, 10)).status == "accepted"
    billing.cancel_subscription(
        subscription_id=subscription.pk, at_period_end=True, now=at(2026, 4, 20)
    )
    # May 1, 00:01: the period has ended, the close has not run yet.
    after = use(
        subscription,
        5,
        at_time=at(2026, 5, 1) + timedelta(seconds=30),
        now=at(2026, 5, 1) + timedelta(minutes=1),
    )
    assert after.status == "rejected"
    assert after.error.code == "timestamp_after_subscription"
    late = use(subscription, 2, at_time=at(2026, 4, 30, 23), now=at(2026, 5, 1, 0, 1))
    assert late.status == "accepted"  # inside the last period: still invoiced
    assert invoicing.close_due_periods(as_of=at(2026, 5, 1, 0, 5)) == 1
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELED
    result = assert_reconciled(subscription)
    assert result.open == {} and result.invoiced == {"USD": D("0.7")}


def test_a_plan_change_mid_period():
    code = meter()
    cheap = plan(ChargeSpec(meter=code, unit_price=D("0.10"), included_quantity=D(10)))
    dear = plan(ChargeSpec(meter=code, unit_price=D("0.25")))
    subscription = subscribe_at_start(cheap)
    assert use(subscription, 30, at_time=at(2026, 4, 5)).status == "accepted"  # 20 × 0.10
    billing.change_subscription(subscription_id=subscription.pk, plan=dear, now=at(2026, 4, 15))
    assert use(subscription, 4, at_time=at(2026, 4, 20)).status == "accepted"  # 4 × 0.25
    assert_reconciled(subscription)
    invoice = finalize(close(subscription))
    assert invoice.usage_charged == D("3")
    result = assert_reconciled(subscription)
    assert result.invoiced == {"USD": D("3")} and result.open == {}


def test_a_plan_change_on_a_back_dated_subscription():
    code = meter()
    cheap, dear = unit_plan("0.10", code=code), unit_plan("0.30", code=code)
    subscription = new_backdated(cheap)
    assert use(subscription, 5, at_time=at(2026, 4, 10), now=NOW).status == "accepted"
    billing.change_subscription(subscription_id=subscription.pk, plan=dear, now=NOW)
    assert use(subscription, 5, at_time=NOW, now=NOW).status == "accepted"
    assert invoicing.close_due_periods(as_of=at(2026, 7, 1)) == 3
    result = assert_reconciled(subscription)
    assert result.invoiced == {"USD": D("2.0")} and result.open == {}


def test_a_trial_then_its_first_period():
    subscription = subscribe_at_start(unit_plan(), trial_days=14)
    assert use(subscription, 5, at_time=at(2026, 4, 5)).status == "accepted"  # free
    assert use(subscription, 5, at_time=at(2026, 4, 20)).status == "accepted"
    assert_reconciled(subscription)
    assert invoicing.close_due_periods(as_of=at(2026, 5, 15)) == 2
    result = assert_reconciled(subscription)
    assert result.invoiced == {"USD": D("0.5")} and result.open == {}


def test_a_back_dated_trial_is_invoiced_from_its_trial_period_on():
    subscription = new_backdated(unit_plan(), trial_days=14)
    assert (subscription.status, subscription.current_period_start) == ("active", START)
    for day in (at(2026, 4, 5), at(2026, 4, 20), at(2026, 6, 1)):
        assert use(subscription, 5, at_time=day, now=NOW).status == "accepted"
    assert invoicing.close_due_periods(as_of=NOW) == 3
    assert [row[:2] for row in invoices(subscription)] == [
        (at(2026, 4, 1), at(2026, 4, 15)),  # the trial: its usage shown, free
        (at(2026, 4, 15), at(2026, 5, 15)),
        (at(2026, 5, 15), at(2026, 6, 15)),
    ]
    result = assert_reconciled(subscription)
    assert result.invoiced == {"USD": D("1.0")} and result.open == {}


def test_the_check_catches_usage_no_invoice_carries():
    """The reconciliation can fail: a counter of a period before the current one, never
    invoiced, is stray."""
    subscription = subscribe_at_start(unit_plan())
    assert use(subscription, 5, at_time=at(2026, 4, 10)).status == "accepted"
    Subscription.objects.filter(pk=subscription.pk).update(
        current_period_start=at(2026, 5, 1), current_period_end=at(2026, 6, 1)
    )
    assert not reconcile(subscription).balanced()


def test_a_back_dated_credits_subscription_reconciles_in_credits():
    from billing.models import BillingMode

    code = meter()
    credits_plan = plan(ChargeSpec(meter=code), consumption_model="credits", units_per_credit=D(1))
    customer = billing.create_customer(
        external_id="bd-credits", name="Credits", billing_mode=BillingMode.PREPAID
    )
    subscription = billing.create_subscription(
        customer=customer, plan=credits_plan, start=START, now=NOW
    )
    billing.ensure_wallet(customer=customer, currency="CREDITS")
    billing.top_up(customer=customer, amount=D(100), currency="CREDITS", reference="pack")
    for day in (at(2026, 4, 10), at(2026, 5, 10)):
        assert use(subscription, 7, at_time=day, now=NOW).status == "accepted"
    assert invoicing.close_due_periods(as_of=NOW) == 2
    result = assert_reconciled(subscription)
    assert result.invoiced == {"CREDITS": D(14)} and result.open == {}
