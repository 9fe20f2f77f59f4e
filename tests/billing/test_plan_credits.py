"""billing.plan_credits: a plan's recurring credits granted once per grant period, rolled
over or expired by the plan's rule; and credits.expiring ahead of an expiry.

The clock is fixed: subscriptions start on 1 January of next year (so what the services
compute against the fixed clock lies in the future of the real one too, where the ledger
and the drain order read real time). Every figure below is worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing import credits, plan_credits, services
from billing.models import (
    CreditAllocation,
    CreditGrant,
    Customer,
    EventType,
    GrantSource,
    GrantStatus,
    OutboundEvent,
    Subscription,
    SubscriptionCreditGrant,
    SubscriptionStatus,
    Wallet,
)
from billing.services import ChargeSpec, CreditGrantSpec
from ledger import selectors as ledger_selectors
from ledger import services as ledger
from ledger.models import NormalBalance
from metering import rating
from metering import services as metering_services
from tests.conftest import unique
from tests.factories import CustomerFactory, MeterFactory, PlanFactory, SubscriptionFactory
from tests.threads import run_concurrently

D = Decimal
YEAR = timezone.now().year + 1


def at(month: int, day: int = 1, hour: int = 0, minute: int = 0, year: int = YEAR) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


JAN, FEB, MAR, APR, MAY = (at(m) for m in range(1, 6))
SOON = timedelta(seconds=30)  # beat runs a little after the boundary


def credits_plan(interval: str = "month", **grant) -> object:
    meter = MeterFactory(code=unique("units"), api_call=True)
    if "rollover_cap" in grant:
        grant["rollover_cap"] = D(grant["rollover_cap"])
    return PlanFactory(
        name="Team",
        interval=interval,
        consumption_model="credits",
        units_per_credit=1,
        charges=(ChargeSpec(meter=meter.code),),
        credit_grant=CreditGrantSpec(**{"amount": D(grant.pop("amount", "1000")), **grant}),
    )


def subscribe(plan, *, start: datetime = JAN, trial_days: int = 0) -> Subscription:
    customer = CustomerFactory(external_id=unique("acme"))
    return SubscriptionFactory(
        customer=customer, plan=plan, start=start, trial_days=trial_days, now=start
    )


def wallet(subscription: Subscription, currency: str = "CREDITS") -> Decimal:
    account = Wallet.objects.get(customer_id=subscription.customer_id, currency=currency).account
    return ledger_selectors.get_balance(account=account).posted


def spend(subscription: Subscription, amount: str) -> None:
    """A debit of the credits wallet, drawn on its grants in drain order."""
    services.adjust_balance(
        customer=Customer.objects.get(pk=subscription.customer_id),
        amount=-D(amount),
        reason="usage",
        staff_user_id=None,
        currency="CREDITS",
    )


def plan_grants(subscription: Subscription) -> list[CreditGrant]:
    return [
        g.grant
        for g in SubscriptionCreditGrant.objects.filter(subscription=subscription)
        .select_related("grant")
        .order_by("period_start")
    ]


def expired(grant: CreditGrant) -> Decimal:
    return CreditAllocation.objects.filter(grant=grant, kind="expiry").aggregate(s=Sum("amount"))[
        "s"
    ] or D(0)


def refreshed(grants: list[CreditGrant]) -> list[CreditGrant]:
    return [CreditGrant.objects.get(pk=g.pk) for g in grants]


pytestmark = pytest.mark.django_db


# --- monthly plans, rollover none ----------------------------------------------------------------


def test_a_monthly_plan_grants_each_period_once_and_what_is_left_expires_at_the_next_grant():
    subscription = subscribe(credits_plan(amount="1000"))
    (january,) = plan_grants(subscription)  # granted with the subscription
    assert (january.amount, january.source, january.priority) == (D(1000), GrantSource.PLAN, 30)
    assert january.expires_at == FEB  # rollover none: at the next grant
    spend(subscription, "300")
    assert plan_credits.grant_due(now=JAN + timedelta(days=10)) == 0  # nothing new in January
    assert plan_credits.grant_due(now=FEB + SOON) == 1
    assert plan_credits.grant_due(now=FEB + SOON) == 0  # a second run grants nothing
    credits.expire_due_grants(now=FEB + SOON)
    january, february = refreshed(plan_grants(subscription))
    assert (january.status, expired(january)) == (GrantStatus.EXPIRED, D(700))
    assert (february.amount, february.remaining, february.expires_at) == (D(1000), D(1000), MAR)
    # 1000 + 1000 granted − 300 spent − 700 expired
    assert wallet(subscription) == D(1000)
    period = SubscriptionCreditGrant.objects.get(grant=february)
    assert (period.period_start, period.period_end) == (FEB, MAR)


def test_granting_twice_for_one_period_returns_the_first_grant():
    subscription = subscribe(credits_plan())
    first = plan_credits.grant_for(subscription_id=subscription.pk, now=JAN + SOON)
    again = plan_credits.grant_for(subscription_id=subscription.pk, now=JAN + timedelta(days=3))
    assert first is not None and again is not None
    assert first.replayed and again.replayed and first.pk == again.pk
    assert CreditGrant.objects.filter(customer_id=subscription.customer_id).count() == 1
    assert wallet(subscription) == D(1000)


# --- yearly plans ---------------------------------------------------------------------------------


def test_a_yearly_plan_with_a_monthly_grant_grants_every_month():
    # 100 a month; rolls over twice: a grant made in January lasts until 1 April
    subscription = subscribe(
        credits_plan("year", amount="100", cadence="month", rollover="all", rollover_periods=2)
    )
    for month in (FEB, MAR, APR, MAY):
        assert plan_credits.grant_due(now=month + SOON) == 1
    credits.expire_due_grants(now=MAY + SOON)
    grants = refreshed(plan_grants(subscription))
    assert [g.expires_at for g in grants] == [APR, MAY, at(6), at(7), at(8)]
    # January's and February's 100 each expired (on 1 April and 1 May); nothing was spent
    assert [expired(g) for g in grants] == [D(100), D(100), D(0), D(0), D(0)]
    assert wallet(subscription) == D(300)


def test_a_yearly_plan_granting_each_period_grants_once_a_year():
    subscription = subscribe(credits_plan("year", amount="1200", expiry="never", rollover="all"))
    for month in (FEB, MAR, at(12, 31, 23)):
        assert plan_credits.grant_due(now=month) == 0
    assert plan_credits.grant_due(now=at(1, year=YEAR + 1) + SOON) == 1
    first, second = plan_grants(subscription)
    assert (first.expires_at, second.expires_at) == (None, None)
    assert wallet(subscription) == D(2400)


# --- once -----------------------------------------------------------------------------------------


def test_a_grant_made_once_comes_with_the_subscription_only():
    subscription = subscribe(credits_plan(amount="5000", cadence="once", expiry="never"))
    for month in (FEB, MAR, APR):
        assert plan_credits.grant_due(now=month + SOON) == 0
    (grant,) = plan_grants(subscription)
    assert (grant.amount, grant.expires_at) == (D(5000), None)
    assert wallet(subscription) == D(5000)


def test_a_grant_made_once_with_expiry_period_end_lasts_the_first_period():
    subscription = subscribe(credits_plan(amount="50", cadence="once"))
    (grant,) = plan_grants(subscription)
    assert grant.expires_at == FEB


# --- rollover -------------------------------------------------------------------------------------


def test_capped_rollover_keeps_up_to_the_cap_for_n_periods():
    # 1000 a month; at each grant what is left of earlier grants is kept up to 500 in
    # total; a grant rolls over once (it expires at the end of the period after its own).
    subscription = subscribe(
        credits_plan(amount="1000", rollover="capped", rollover_cap="500", rollover_periods=1)
    )
    spend(subscription, "200")  # January's grant: 800 left
    plan_credits.grant_due(now=FEB + SOON)
    january, february = refreshed(plan_grants(subscription))
    assert (january.remaining, expired(january)) == (D(500), D(300))  # trimmed to the cap
    assert (january.expires_at, february.expires_at) == (MAR, APR)
    spend(subscription, "100")  # drain order: the sooner expiry first, January's: 400 left
    plan_credits.grant_due(now=MAR + SOON)
    credits.expire_due_grants(now=MAR + SOON)
    january, february, march = refreshed(plan_grants(subscription))
    # January's 400 expired on 1 March (its one rollover used); February's 1000 trimmed to 500
    assert (january.status, expired(january)) == (GrantStatus.EXPIRED, D(700))
    assert (february.remaining, expired(february)) == (D(500), D(500))
    assert march.remaining == D(1000)
    # 3000 granted − 300 spent − (300 + 400 + 500) expired
    assert wallet(subscription) == D(1500)
    assert credits_expired_total() == D(1200)


def credits_expired_total() -> Decimal:
    return CreditAllocation.objects.filter(kind="expiry").aggregate(s=Sum("amount"))["s"] or D(0)


def test_rollover_all_keeps_everything_without_a_limit():
    subscription = subscribe(credits_plan(amount="100", rollover="all", expiry="never"))
    spend(subscription, "30")
    plan_credits.grant_due(now=FEB + SOON)
    plan_credits.grant_due(now=MAR + SOON)
    credits.expire_due_grants(now=MAR + SOON)
    grants = refreshed(plan_grants(subscription))
    assert [g.remaining for g in grants] == [D(70), D(100), D(100)]
    assert [g.expires_at for g in grants] == [None, None, None]
    assert wallet(subscription) == D(270)


def test_the_cap_counts_newer_grants_first():
    # cap 150, no period limit: at March's grant January's 50 and February's 100 are left;
    # February's (newer) is kept whole, January's keeps the 50 that still fit
    subscription = subscribe(credits_plan(amount="100", rollover="capped", rollover_cap="150"))
    spend(subscription, "50")
    plan_credits.grant_due(now=FEB + SOON)
    plan_credits.grant_due(now=MAR + SOON)
    january, february, _ = refreshed(plan_grants(subscription))
    assert (january.remaining, february.remaining) == (D(50), D(100))
    plan_credits.grant_due(now=APR + SOON)  # now 50 + 100 + 100 left: 150 kept
    january, february, march, _ = refreshed(plan_grants(subscription))
    assert (march.remaining, february.remaining, january.remaining) == (D(100), D(50), D(0))
    assert january.status == GrantStatus.EXPIRED
    assert wallet(subscription) == D(250)  # April's 100 + 150 rolled over


def test_an_expiry_in_days_comes_before_the_next_grant():
    subscription = subscribe(credits_plan(amount="100", expiry="days", expiry_days=10))
    (grant,) = plan_grants(subscription)
    assert grant.expires_at == at(1, 11)
    credits.expire_due_grants(now=at(1, 11) + SOON)
    assert wallet(subscription) == D(0)
    plan_credits.grant_due(now=FEB + SOON)
    assert plan_grants(subscription)[1].expires_at == at(2, 11)


# --- trials, cancellation, suspension, plan changes -----------------------------------------------


def test_a_trial_gets_its_first_grant_when_the_trial_ends():
    subscription = subscribe(credits_plan(amount="100"), trial_days=14)
    assert plan_grants(subscription) == []
    assert plan_credits.grant_due(now=at(1, 10)) == 0
    # the trial ended on 15 January (the close may not have rolled the status yet)
    assert Subscription.objects.get(pk=subscription.pk).status == SubscriptionStatus.TRIALING
    assert plan_credits.grant_due(now=at(1, 15) + SOON) == 1
    (grant,) = plan_grants(subscription)
    assert grant.expires_at == at(2, 15)  # periods run from the trial's end


def test_no_grants_after_cancellation_or_while_suspended():
    canceled = subscribe(credits_plan(amount="100"))
    services.cancel_subscription(subscription_id=canceled.pk, now=at(1, 20))
    suspended = subscribe(credits_plan(amount="100"))
    Subscription.objects.filter(pk=suspended.pk).update(status=SubscriptionStatus.PAST_DUE)
    assert plan_credits.grant_due(now=FEB + SOON) == 0
    assert len(plan_grants(canceled)) == len(plan_grants(suspended)) == 1
    # active again within March: March's grant comes then (February's is not made up)
    Subscription.objects.filter(pk=suspended.pk).update(status=SubscriptionStatus.ACTIVE)
    assert plan_credits.grant_due(now=at(3, 5)) == 1
    assert [g.expires_at for g in plan_grants(suspended)] == [FEB, APR]


def test_a_cancellation_now_ends_the_plan_grants_so_resubscribing_does_not_pile_them_up():
    plan = credits_plan(amount="1000", rollover="all")  # rolls over without an expiry
    customer = CustomerFactory(external_id=unique("acme"))
    moment = JAN
    for _ in range(3):  # subscribe, cancel now, subscribe again
        subscription = services.create_subscription(
            customer=customer, plan=plan, start=moment, now=moment
        )
        spend(subscription, "100")
        services.cancel_subscription(subscription_id=subscription.pk, now=moment + SOON)
        moment += timedelta(minutes=2)
    grants = CreditGrant.objects.filter(customer=customer, source=GrantSource.PLAN).order_by("id")
    # each subscription's 1000 - 100 spent expired when it was canceled
    assert [(g.status, g.remaining, expired(g)) for g in grants] == [
        (GrantStatus.EXPIRED, D(0), D(900))
    ] * 3
    assert wallet(subscription) == D(0)
    live = services.create_subscription(customer=customer, plan=plan, start=moment, now=moment)
    assert wallet(live) == D(1000)  # one allowance at a time, not 3000 + 1000
    assert (
        OutboundEvent.objects.filter(customer=customer, type=EventType.CREDITS_EXPIRED).count() == 3
    )


def test_a_cancellation_at_period_end_leaves_the_plan_grants_to_their_expiry():
    subscription = subscribe(credits_plan(amount="1000"))  # rollover none: expires 1 February
    (january,) = plan_grants(subscription)
    spend(subscription, "300")
    services.cancel_subscription(subscription_id=subscription.pk, at_period_end=True, now=at(1, 20))
    january.refresh_from_db()
    assert (january.status, january.remaining, january.expires_at) == (
        GrantStatus.ACTIVE,
        D(700),
        FEB,
    )
    assert wallet(subscription) == D(700)
    credits.expire_due_grants(now=FEB + SOON)
    assert expired(january) == D(700)
    assert wallet(subscription) == D(0)


def test_a_plan_changed_mid_period_grants_by_its_rule_from_the_next_period():
    subscription = subscribe(credits_plan(amount="1000"))
    cheaper = credits_plan(amount="50")
    services.change_subscription(subscription_id=subscription.pk, plan=cheaper, now=at(1, 15))
    assert plan_credits.grant_due(now=at(1, 20)) == 0  # January was granted by the old plan
    plan_credits.grant_due(now=FEB + SOON)
    january, february = plan_grants(subscription)
    assert (january.amount, february.amount) == (D(1000), D(50))
    assert SubscriptionCreditGrant.objects.get(grant=february).plan_id == cheaper.pk


def test_a_yearly_plan_changed_mid_year_grants_the_new_monthly_allowance_from_the_next_month():
    big = credits_plan("year", amount="10000", cadence="month")
    small = credits_plan("year", amount="10", cadence="month")
    bigger = credits_plan("year", amount="500", cadence="month")
    downgraded = subscribe(big)
    upgraded = subscribe(small)
    plan_credits.grant_due(now=FEB + SOON)  # February: each by its first plan
    services.change_subscription(subscription_id=downgraded.pk, plan=small, now=at(2, 15))
    services.change_subscription(subscription_id=upgraded.pk, plan=bigger, now=at(2, 15))
    assert plan_credits.grant_due(now=at(2, 20)) == 0  # February was granted already
    assert plan_credits.grant_due(now=MAR + SOON) == 2
    assert plan_credits.grant_due(now=APR + SOON) == 2
    # January, February by the plan of the year's start; March and April by the new plan
    assert [g.amount for g in plan_grants(downgraded)] == [D(10000), D(10000), D(10), D(10)]
    assert [g.amount for g in plan_grants(upgraded)] == [D(10), D(10), D(500), D(500)]
    march = SubscriptionCreditGrant.objects.get(subscription=downgraded, period_start=MAR)
    assert march.plan_id == small.pk


def test_a_yearly_month_plan_changed_to_a_plan_without_a_monthly_rule_stops_granting():
    monthly = credits_plan("year", amount="100", cadence="month")
    yearly = credits_plan("year", amount="1200", cadence="period")
    subscription = subscribe(monthly)
    services.change_subscription(subscription_id=subscription.pk, plan=yearly, now=at(1, 15))
    assert plan_credits.grant_due(now=FEB + SOON) == 0  # the new rule: next billing period
    assert [g.amount for g in plan_grants(subscription)] == [D(100)]


def test_a_plan_without_a_grant_grants_nothing():
    meter = MeterFactory(code=unique("units"), api_call=True)
    plan = PlanFactory(
        consumption_model="credits", units_per_credit=1, charges=(ChargeSpec(meter=meter.code),)
    )
    subscription = subscribe(plan)
    assert plan_credits.grant_due(now=FEB + SOON) == 0
    assert plan_grants(subscription) == []


# --- balance plans: money -------------------------------------------------------------------------


def test_a_balance_plan_grants_money_into_the_wallet_of_its_currency():
    meter = MeterFactory(code=unique("units"), api_call=True)
    plan = PlanFactory(
        consumption_model="balance",
        charges=(ChargeSpec(meter=meter.code, unit_price=D("0.01")),),
        credit_grant=CreditGrantSpec(amount=D("25.00")),
    )
    customer = CustomerFactory(external_id=unique("acme"), funds="10")  # its own money
    subscription = SubscriptionFactory(customer=customer, plan=plan, start=JAN, now=JAN)
    (grant,) = plan_grants(subscription)
    assert (grant.currency, grant.amount, grant.expires_at) == ("USD", D(25), FEB)
    assert wallet(subscription, "USD") == D(35)
    # 1000 units at 0.01 = 10.00, drawn on the plan's grant before the customer's own money
    (outcome,) = rating.ingest_events(
        [
            rating.EventIn(
                idempotency_key=unique("ev"),
                customer=customer.external_id,
                event_name="api.call",
                timestamp=at(1, 10),
                properties={"units": D(1000)},
            )
        ],
        now=at(1, 10, 0, 1),
    )
    assert outcome.status == "accepted", outcome
    assert CreditGrant.objects.get(pk=grant.pk).remaining == D(15)
    credits.expire_due_grants(now=FEB + SOON)
    assert wallet(subscription, "USD") == D(10)  # the grant's 15 expired; the 10 are kept


def test_a_hold_settled_by_amount_on_a_balance_plan_draws_on_the_plan_grant_first():
    meter = MeterFactory(code=unique("units"), api_call=True)
    plan = PlanFactory(
        consumption_model="balance",
        charges=(ChargeSpec(meter=meter.code, unit_price=D("0.01")),),
        credit_grant=CreditGrantSpec(amount=D("25.00")),
    )
    customer = CustomerFactory(external_id=unique("acme"), funds="10")  # its own money
    subscription = SubscriptionFactory(customer=customer, plan=plan, start=JAN, now=JAN)
    (grant,) = plan_grants(subscription)
    account = Wallet.objects.get(customer=customer, currency="USD").account
    usage = ledger.ensure_system_account(
        code="@UsageRevenue", currency="USD", normal_balance=NormalBalance.CREDIT
    )
    hold = ledger.place_hold(
        reference=unique("hold"), account=account, destination=usage, amount=D(20)
    )
    posted = metering_services.settle_hold_by_amount(hold_id=hold.pk, amount=D(20), final=True)
    # as rating would: the 20 drawn on the plan's 25 before the customer's own 10
    assert CreditGrant.objects.get(pk=grant.pk).remaining == D(5)
    assert [(g, D(a)) for g, a in posted.metadata["grants"]] == [(grant.pk, D(20))]
    assert wallet(subscription, "USD") == D(15)
    credits.expire_due_grants(now=FEB + SOON)
    assert expired(grant) == D(5)
    assert wallet(subscription, "USD") == D(10)  # 35 - 20 used - 5 expired: its own 10 kept


# --- exactly once under concurrent beat runs ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_beat_runs_grant_each_period_exactly_once():
    subscriptions = [subscribe(credits_plan(amount="100")) for _ in range(3)]
    results = run_concurrently(lambda i: plan_credits.grant_due(now=FEB + SOON), threads=8)
    assert all(isinstance(r, int) for r in results), results
    assert sum(results) == 3  # type: ignore[arg-type]  # ints, checked above
    for subscription in subscriptions:
        assert len(plan_grants(subscription)) == 2
        assert wallet(subscription) == D(200)


# --- credits.expiring -----------------------------------------------------------------------------


def test_credits_expiring_is_emitted_once_per_grant_ahead_of_its_expiry(settings):
    settings.CREDITS_EXPIRING_NOTICE_DAYS = 7
    subscription = subscribe(credits_plan(amount="1000"))  # expires 1 February
    assert credits.notify_expiring(now=at(1, 24, 23, 59)) == 0  # more than 7 days ahead
    assert credits.notify_expiring(now=at(1, 25, 0, 1)) == 1
    assert credits.notify_expiring(now=at(1, 26)) == 0  # announced once
    (event,) = OutboundEvent.objects.filter(type=EventType.CREDITS_EXPIRING)
    (grant,) = plan_grants(subscription)
    assert event.customer_id == subscription.customer_id
    assert event.data == {
        "customer": subscription.customer.external_id,
        "grant_id": grant.pk,
        "name": "Team credits",
        "source": "plan",
        "currency": "CREDITS",
        "amount": str(grant.amount),
        "remaining": str(grant.remaining),
        "expires_at": FEB.isoformat(),
    }
    spend(subscription, "1000")  # used up: nothing left to announce
    plan_credits.grant_due(now=FEB + SOON)
    assert credits.notify_expiring(now=at(2, 25)) == 1  # February's grant


# --- the beat task, run by a real worker ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_celery_worker_grants_what_is_due_once():
    from billing.tasks import grant_plan_credits
    from tests.test_celery import start_worker, stop_worker

    # subscribed 40 days ago: its first period's grant was made then, the second is due now
    start = (timezone.now() - timedelta(days=40)).replace(microsecond=0)
    subscription = subscribe(credits_plan(amount="100"), start=start)
    assert len(plan_grants(subscription)) == 1
    queue = f"test-{unique('q')}"
    worker = start_worker(queue)
    try:
        assert grant_plan_credits.apply_async(queue=queue).get(timeout=60) == 1
        assert grant_plan_credits.apply_async(queue=queue).get(timeout=60) == 0  # again
    finally:
        stop_worker(worker)
    first, second = plan_grants(subscription)
    assert second.amount == D(100) and second.expires_at > timezone.now()
