"""Subscriptions: created (back-dated, with a trial), changed (now, the base fee prorated, or at
period end) and canceled; a change or a cancellation under the customer's usage lock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import errors, outbox
from billing.models import (
    BillingTime,
    ConsumptionModel,
    Customer,
    EventType,
    Plan,
    PlanCharge,
    Subscription,
    SubscriptionPhase,
    SubscriptionStatus,
)
from billing.periods import (
    calendar_anchor,
    charge_cadence,
    plan_period_of,
    prorate_fee,
    subscription_period,
    utc,
)
from billing.services.cadence import validate_billing_cadence
from billing.services.locks import lock_subscription_customer
from billing.services.wallets import CREDITS, ensure_wallet
from billing.webhooks import subscription_data

FUTURE_START_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True)
class ProrationLine:
    plan: Plan
    starts_at: datetime
    ends_at: datetime
    amount: Decimal  # the base fee for [starts_at, ends_at) of the current period


@transaction.atomic
def create_subscription(
    *,
    customer: Customer,
    plan: Plan,
    start: datetime | None = None,
    trial_days: int | None = None,
    now: datetime | None = None,
    billing_time: str | None = None,
    billing_anchor_day: int | None = None,
) -> Subscription:
    """Subscribe ``customer`` to ``plan`` from ``start`` (default now).

    Periods are counted from the start (or the trial's end), or on the calendar
    (``billing_time``, ``billing_anchor_day``; the plan's unless given): then the first
    period runs from the start (or the trial's end) to the first calendar boundary, its fees
    prorated by day (``billing.periods``).

    A start in the past back-dates the subscription, as Stripe's backdated start and Orb's
    past start date do: its first period is the one that begins at the start (a trial
    first, when it has one), and every period that has ended by now is invoiced by the
    period close (beat's ``close_due_periods``, or ``manage.py close_periods``), one
    period after the other. So every event the subscription accepts — whatever its
    timestamp since the start — lands on the invoice of its period; nothing is rated into
    a period no invoice will ever carry. A customer whose past periods were billed
    elsewhere subscribes from now instead."""
    now = utc(now or timezone.now())
    # Subscriptions start on whole seconds: usage timestamps are usually sent to the second
    # (RFC 3339 without a fraction), and an event stamped in the second the subscription
    # started must fall inside it, not be refused as timestamp_before_subscription. The
    # anchor, the periods and a trial's end follow from the start, so they are whole too.
    start = (utc(start) if start else now).replace(microsecond=0)
    if start > now + FUTURE_START_TOLERANCE:
        raise errors.ValidationFailed("start cannot lie in the future", param="start")
    if plan.currency != customer.currency:
        raise errors.CurrencyMismatch(
            f"plan {plan.code} bills in {plan.currency}; the customer uses {customer.currency}",
            param="plan",
        )
    trial_days = plan.trial_days if trial_days is None else trial_days
    if trial_days < 0:
        raise errors.ValidationFailed("trial_days cannot be negative", param="trial_days")
    trial_ends_at = start + timedelta(days=trial_days) if trial_days else None
    anchor, billing_time, billing_anchor_day = _billing_anchor(
        plan, trial_ends_at or start, billing_time, billing_anchor_day
    )
    if trial_ends_at is not None:
        # The trial is the first period (closed, free, like any trial's); a trial that
        # ended in the past is over, so the subscription is active, its trial period due.
        status = SubscriptionStatus.TRIALING if trial_ends_at > now else SubscriptionStatus.ACTIVE
    else:
        status = SubscriptionStatus.ACTIVE
    interval, count = charge_cadence(plan)  # its billing periods: the charges' cadence
    period_start, period_end = subscription_period(
        anchor=anchor,
        interval=interval,
        count=count,
        started_at=start,
        trial_ends_at=trial_ends_at,
        at=start,
    )
    try:
        with transaction.atomic():
            subscription = Subscription.objects.create(
                customer=customer,
                plan=plan,
                status=status,
                started_at=start,
                billing_anchor=anchor,
                billing_time=billing_time,
                billing_anchor_day=billing_anchor_day,
                current_period_start=period_start,
                current_period_end=period_end,
                trial_ends_at=trial_ends_at,
            )
    except IntegrityError:
        raise errors.SubscriptionExists(
            f"customer {customer.external_id} already has a live subscription", param="customer"
        ) from None
    SubscriptionPhase.objects.create(subscription=subscription, plan=plan, starts_at=start)
    if plan.consumption_model == ConsumptionModel.CREDITS:
        ensure_wallet(customer=customer, currency=CREDITS)  # so credits can be bought
    emit_subscription_event(
        EventType.SUBSCRIPTION_CREATED, subscription, f"subscription.created:{subscription.pk}"
    )
    # The plan's recurring credits for the period under way, with the subscription (beat's
    # grant_plan_credits makes the later ones).
    from billing import plan_credits

    plan_credits.grant_for(subscription_id=subscription.pk, now=now)
    return subscription


def _billing_anchor(
    plan: Plan, first: datetime, billing_time: str | None, anchor_day: int | None
) -> tuple[datetime, str, int | None]:
    """Where the subscription counts its periods from: ``first`` (its start, or its trial's
    end), or a calendar boundary at or before it (``billing.periods.calendar_anchor``); with
    the billing time and the anchor day in force (the day the calendar falls on: the 1st or
    Monday when none was named; none when billed from the start, or daily)."""
    if billing_time is None:
        billing_time = plan.billing_time
    if anchor_day is None and billing_time == plan.billing_time:
        # The plan's day, whether or not its billing time was named again: "calendar" alone
        # on a plan billed on the 15th bills on the 15th (not on the 1st).
        anchor_day = plan.billing_anchor_day
    validate_billing_cadence(
        interval=plan.interval,
        interval_count=plan.interval_count,
        billing_time=billing_time,
        billing_anchor_day=anchor_day,
    )
    if billing_time == BillingTime.ANNIVERSARY:
        return first, billing_time, None
    anchor = calendar_anchor(interval=plan.interval, anchor_day=anchor_day, first=first)
    return anchor, billing_time, None if plan.interval == "day" else (anchor_day or 1)


def emit_subscription_event(kind: EventType, subscription: Subscription, dedupe_key: str) -> None:
    """Tell the seller's systems (``billing.outbox``), once per ``dedupe_key``."""
    outbox.emit(
        kind,
        data=subscription_data(subscription),
        customer=subscription.customer,
        dedupe_key=dedupe_key,
    )


def _locked_live_subscription(subscription_id: int) -> Subscription:
    lock_subscription_customer(subscription_id)  # the rating lock first, then the row
    subscription = (
        Subscription.objects.select_for_update()
        .select_related("plan", "customer")
        .filter(pk=subscription_id)
        .first()
    )
    if subscription is None:
        raise errors.SubscriptionNotFound(f"subscription {subscription_id} does not exist")
    if subscription.status == SubscriptionStatus.CANCELED:
        raise errors.SubscriptionCanceled(f"subscription {subscription_id} is canceled")
    return subscription


def _ensure_period_current(subscription: Subscription, now: datetime) -> None:
    """A change at period end means at the end of the period containing now. While the
    close has not caught up (a back-dated subscription's first periods, or beat behind),
    the current period is one that has ended: refuse rather than end or change the
    subscription in the past; the close rolls it on within minutes."""
    if subscription.current_period_end <= now:
        raise errors.PeriodClosePending(
            f"subscription {subscription.pk}'s period ended at "
            f"{subscription.current_period_end.isoformat()} and is not closed yet; a change at "
            "period end applies once the period close has caught up (within minutes)",
        )


def base_fee_proration(*, subscription: Subscription) -> list[ProrationLine]:
    """How the current plan period's base fee splits between the plan versions that applied
    in it: each phase's fee prorated by the time it covered. Trials cost nothing. (A plan
    billing its charges on a finer cadence: the plan period the current one is part of.)"""
    if subscription.status == SubscriptionStatus.TRIALING:
        return []
    start, end = plan_period_of(subscription, subscription.current_period_start)
    lines = []
    for phase in subscription.phases.select_related("plan").filter(starts_at__lt=end):
        phase_end = min(phase.ends_at or end, end)
        phase_start = max(phase.starts_at, start)
        if phase_end <= phase_start:
            continue
        amount = prorate_fee(
            subscription,
            phase.plan.base_fee,
            used_from=phase_start,
            used_until=phase_end,
            period_start=start,
            period_end=end,
            per_plan=True,
        )
        lines.append(ProrationLine(phase.plan, phase_start, phase_end, amount))
    return lines


def _own_cadences(plan: Plan) -> dict[int, tuple[str, int]]:
    """The meters a plan charges on their own cadence, with it (interval, count)."""
    return {
        meter_id: (interval, count)
        for meter_id, interval, count in PlanCharge.objects.filter(plan=plan)
        .exclude(interval="")
        .values_list("meter_id", "interval", "interval_count")
    }


@transaction.atomic
def change_subscription(
    *, subscription_id: int, plan: Plan, at_period_end: bool = False, now: datetime | None = None
) -> Subscription:
    """Move to another plan (version): now, with the base fee prorated by time between the
    two, or at the end of the current period."""
    now = utc(now or timezone.now())
    subscription = _locked_live_subscription(subscription_id)
    if plan.pk == subscription.plan_id:
        raise errors.ValidationFailed("the subscription is already on this plan", param="plan")
    if plan.currency != subscription.plan.currency:
        raise errors.CurrencyMismatch("plans of different currencies", param="plan")
    if (plan.interval, plan.interval_count, charge_cadence(plan)) != (
        subscription.plan.interval,
        subscription.plan.interval_count,
        charge_cadence(subscription.plan),
    ):
        raise errors.ValidationFailed(
            "changing the billing interval (or the charges' interval) is not supported "
            "mid-period; cancel and resubscribe",
            param="plan",
        )
    if _own_cadences(plan) != _own_cadences(subscription.plan):
        # A charge's usage counted over its own period (a quarter) cannot change cadence
        # inside it: the period's counter would be invoiced on neither cadence.
        raise errors.ValidationFailed(
            "changing the charges billed on their own interval (or their intervals) is not "
            "supported; cancel and resubscribe",
            param="plan",
        )
    if plan.consumption_model != subscription.plan.consumption_model and not at_period_end:
        raise errors.ValidationFailed(
            f"a change from a {subscription.plan.consumption_model} plan to a "
            f"{plan.consumption_model} plan takes effect at the end of the period "
            "(at: period_end): a period is rated in one way only",
            param="plan",
        )
    if at_period_end:
        _ensure_period_current(subscription, now)
        if subscription.scheduled_plan_id == plan.pk:
            return subscription  # scheduled already: nothing changes, nothing to tell
        subscription.scheduled_plan = plan
        subscription.save(update_fields=["scheduled_plan"])
        emit_subscription_event(
            EventType.SUBSCRIPTION_UPDATED,
            subscription,
            f"subscription.updated:{subscription.pk}:scheduled:{plan.pk}:{now.isoformat()}",
        )
        return subscription
    change_at = max(now, subscription.current_period_start)
    subscription.phases.filter(ends_at__isnull=True).update(ends_at=change_at)
    phase = SubscriptionPhase.objects.create(
        subscription=subscription, plan=plan, starts_at=change_at
    )
    subscription.plan = plan
    subscription.scheduled_plan = None
    subscription.save(update_fields=["plan", "scheduled_plan"])
    emit_subscription_event(
        EventType.SUBSCRIPTION_UPDATED, subscription, f"subscription.updated:phase:{phase.pk}"
    )
    return subscription


@transaction.atomic
def cancel_subscription(
    *, subscription_id: int, at_period_end: bool = False, now: datetime | None = None
) -> Subscription:
    now = utc(now or timezone.now())
    subscription = _locked_live_subscription(subscription_id)
    if at_period_end:
        _ensure_period_current(subscription, now)
        if subscription.cancel_at_period_end:
            return subscription  # asked already: nothing changes, nothing to tell
        subscription.cancel_at_period_end = True
        subscription.save(update_fields=["cancel_at_period_end"])
        emit_subscription_event(
            EventType.SUBSCRIPTION_UPDATED,
            subscription,
            f"subscription.updated:{subscription.pk}:cancel_at_period_end",
        )
        return subscription
    ended_at = max(now, subscription.started_at)  # a start a moment ahead ends no earlier
    subscription.phases.filter(ends_at__isnull=True).update(ends_at=ended_at)
    subscription.status = SubscriptionStatus.CANCELED
    subscription.canceled_at = now
    subscription.ended_at = ended_at
    subscription.save(update_fields=["status", "canceled_at", "ended_at"])
    # unused plan credits end with the subscription (a new subscription grants its own)
    from billing import plan_credits

    plan_credits.end_with_subscription(subscription, now=ended_at)
    emit_subscription_event(
        EventType.SUBSCRIPTION_CANCELED, subscription, f"subscription.canceled:{subscription.pk}"
    )
    return subscription
