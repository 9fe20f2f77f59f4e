"""Recurring plan credits: a plan's allowance (``PlanCreditGrant``) granted to each live
subscription once per grant period, and what is left of earlier grants rolled over or
expired by the plan's rule.

    due_grant(subscription, now)      the grant period due now, and the plan that grants it
    grant_for(subscription_id, now)   grant it, exactly once (beat, and subscription creation)
    grant_due(now)                    beat: every live subscription with a grant to make

Grant periods
-------------
``cadence: period`` grants at the start of each billing period; ``month`` at the start of
each month counted from the billing anchor (also on a yearly plan: twelve grants a year);
``once`` at the start of the first billing period only. A recurring grant period cut short
by a calendar anchor (the first, a stub) grants its share by day (``amount_of``), as its
base fee is prorated. A subscription on trial gets
nothing until its trial ends (its anchor: the first paid period). The plan that grants is
the one in force at the start of the grant period: a plan changed mid-period grants by its
own rule from the next grant period on — on a yearly plan with ``month`` cadence, from the
next month (a downgrade stops the bigger monthly grant, an upgrade gets its own). The
cadence is the one of the plan in force at the start of the *billing* period: a change on a
yearly plan from a ``month`` rule to a plan without one, or with a ``period``/``once`` rule,
grants nothing more until the next billing period, where the new plan's rule applies. Past-due
(suspended) and canceled subscriptions get no grants; a cancellation that takes effect now
ends the subscription's live plan grants (``end_with_subscription``: what is left expires),
one at period end leaves them to their own expiry; one made active again within a grant
period gets that period's grant then. Grant periods missed entirely (a subscription
suspended through one, beat down for a whole period) are not granted afterwards: only the
grant period containing now is ever granted.

Exactly once
------------
Granting runs under the customer's usage lock; ``SubscriptionCreditGrant`` is unique on
(subscription, period start), and the ``CreditGrant`` (posted by ``credits.grant_credits``,
source ``plan``, from ``@PlanCredits``) carries the reference
``plan:<subscription>:<period start>``, so a second run — or a second beat worker at the
same time — finds the first grant and returns it.

Expiry and rollover
-------------------
A grant's ``expires_at`` is set when it is made, the soonest of:

- rollover ``none`` (recurring cadences): the end of its grant period — what is left
  expires when the next grant comes;
- rollover ``all``/``capped`` with ``rollover_periods`` N: the end of the N-th grant period
  after its own (it rolls over N times, then expires);
- expiry ``period_end`` on a ``once`` grant: the end of the first billing period;
- expiry ``days``: ``expiry_days`` after its grant period started.

A rollover ``capped`` grant is also trimmed when the next grant is made: the earlier plan
grants of the subscription that are still live, newest first, keep what is left up to the
cap in total; the rest expires then (``credits.expire_part``, to ``@CreditsExpired``, like
any expiry). Held credits are not taken (the expiry run takes them once the hold
resolves).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from billing import credits
from billing.models import (
    ConsumptionModel,
    CreditGrant,
    GrantCadence,
    GrantExpiry,
    GrantSource,
    GrantStatus,
    Plan,
    PlanCreditGrant,
    Rollover,
    Subscription,
    SubscriptionCreditGrant,
    SubscriptionPhase,
    SubscriptionStatus,
)
from billing.periods import (
    midnight,
    period_boundary,
    period_containing,
    period_index,
    period_of,
    prorate,
    utc,
    whole_period,
)
from billing.services.locks import lock_subscription_customer

ZERO = Decimal(0)
GRANTING = (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING)


@dataclass(frozen=True)
class DueGrant:
    plan: Plan
    rule: PlanCreditGrant
    start: datetime
    end: datetime
    unit: str  # the interval grant periods are counted in: the plan's, or "month"
    index: int  # grant period number from the anchor
    count: int = 1  # of ``unit`` a grant period lasts (the plan's interval_count)

    @property
    def currency(self) -> str:
        if self.plan.consumption_model == ConsumptionModel.CREDITS:
            return credits.CREDITS
        return self.plan.currency


def _plan_at(subscription: Subscription, moment: datetime) -> Plan:
    phase = (
        SubscriptionPhase.objects.filter(subscription=subscription, starts_at__lte=moment)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=moment))
        .select_related("plan")
        .order_by("-starts_at", "-id")
        .first()
    )
    return phase.plan if phase is not None else subscription.plan


def due_grant(subscription: Subscription, now: datetime) -> DueGrant | None:
    """The grant period of ``subscription`` containing ``now`` and the plan rule that
    grants it, or None when nothing is due (no rule, trial, not live, close pending)."""
    if subscription.status not in GRANTING:
        return None
    anchor = subscription.billing_anchor
    first = subscription.trial_ends_at or subscription.started_at  # the first period billed
    if now < first:  # on trial
        return None
    if subscription.current_period_end <= now and (
        subscription.scheduled_plan_id is not None or subscription.cancel_at_period_end
    ):
        return None  # the close has a plan change or an end to apply first: wait for it
    interval = subscription.plan.interval  # a change never moves the interval
    count = subscription.plan.interval_count
    billing_start, billing_end = period_of(subscription, now)
    plan = _plan_at(subscription, billing_start)
    rule = PlanCreditGrant.objects.filter(plan=plan).first()
    if rule is None:
        return None
    if rule.cadence == GrantCadence.ONCE:
        if billing_start != first:
            return None
        unit, start, end = interval, billing_start, billing_end
    elif rule.cadence == GrantCadence.MONTH:
        unit, count = "month", 1
        start, end = period_containing(anchor, unit, now)
        start = max(start, first)
        if start != billing_start:
            # a month inside the billing period (a yearly plan): the plan in force at the
            # start of that month grants it, if its rule grants monthly too
            plan = _plan_at(subscription, start)
            rule = PlanCreditGrant.objects.filter(plan=plan).first()
            if rule is None or rule.cadence != GrantCadence.MONTH:
                return None
    else:
        unit, start, end = interval, billing_start, billing_end
    return DueGrant(plan, rule, start, end, unit, period_index(anchor, unit, start, count), count)


def amount_of(subscription: Subscription, due: DueGrant) -> Decimal:
    """What a grant period grants: the rule's amount, or — a recurring grant period cut
    short by a calendar anchor (a first period, a stub) — its share by day over the whole
    grant period it is part of, its first day counted in full, as a base fee is prorated
    (``billing.periods.fee_span``): 100 credits a month from 15 January 09:30, anchored on
    the 1st, grant 100 × 17/31 = 54.838709677419 (12 places). A ``once`` grant is whole."""
    amount = due.rule.amount
    if due.rule.cadence == GrantCadence.ONCE:
        return amount
    whole_start, whole_end = whole_period(
        anchor=subscription.billing_anchor,
        interval=due.unit,
        count=due.count,
        period_start=due.start,
        period_end=due.end,
    )
    if (whole_start, whole_end) == (due.start, due.end):
        return amount
    return prorate(
        amount,
        used_from=max(midnight(due.start), whole_start),
        used_until=due.end,
        period_start=whole_start,
        period_end=whole_end,
    )


def expiry_of(subscription: Subscription, due: DueGrant) -> datetime | None:
    """When what is left of this grant expires (see the module's docstring)."""
    rule = due.rule
    ends: list[datetime] = []
    recurring = rule.cadence != GrantCadence.ONCE
    if recurring and rule.rollover == Rollover.NONE:
        ends.append(due.end)
    if recurring and rule.rollover != Rollover.NONE and rule.rollover_periods:
        ends.append(
            period_boundary(
                subscription.billing_anchor,
                due.unit,
                due.index + 1 + rule.rollover_periods,
                due.count,
            )
        )
    if rule.expiry == GrantExpiry.PERIOD_END and not recurring:
        ends.append(due.end)
    if rule.expiry == GrantExpiry.DAYS:
        assert rule.expiry_days is not None  # a database constraint
        ends.append(due.start + timedelta(days=rule.expiry_days))
    return min(ends) if ends else None


def grant_for(*, subscription_id: int, now: datetime | None = None) -> CreditGrant | None:
    """Grant what the subscription's plan gives for the grant period containing ``now``,
    once: a grant made already is returned with ``replayed`` True. Earlier plan grants are
    rolled over (or expire) by their rule first. None when nothing is due."""
    now = utc(now or timezone.now())
    with transaction.atomic():
        # the usage lock first (as every grant, expiry and debit of the customer's credits)
        if lock_subscription_customer(subscription_id) is None:
            return None
        subscription = Subscription.objects.select_related("plan", "customer").get(
            pk=subscription_id
        )
        due = due_grant(subscription, now)
        if due is None:
            return None
        made = (
            SubscriptionCreditGrant.objects.filter(
                subscription=subscription, period_start=due.start
            )
            .select_related("grant")
            .first()
        )
        if made is not None:
            made.grant.replayed = True
            return made.grant
        expires_at = expiry_of(subscription, due)
        if expires_at is not None and expires_at <= now:
            return None  # it would be worth nothing: its time passed before it was made
        _roll_over(subscription, before=due.start, now=now)
        rule = due.rule
        grant = credits.grant_credits(
            customer=subscription.customer,
            amount=amount_of(subscription, due),
            name=rule.name or f"{due.plan.name} credits",
            source=GrantSource.PLAN,
            priority=rule.priority,
            expires_at=expires_at,
            reference=f"plan:{subscription.pk}:{due.start.isoformat()}",
            currency=due.currency,
            metadata={
                "subscription_id": subscription.pk,
                "plan": due.plan.code,
                "plan_version": due.plan.version,
                "period_start": due.start.isoformat(),
                "period_end": due.end.isoformat(),
            },
            now=now,
        )
        SubscriptionCreditGrant.objects.create(
            subscription=subscription,
            plan=due.plan,
            grant=grant,
            period_start=due.start,
            period_end=due.end,
        )
    return grant


def _roll_over(subscription: Subscription, *, before: datetime, now: datetime) -> Decimal:
    """At a new grant: what is left of the subscription's earlier recurring plan grants
    that their rule does not roll over expires now. Newest first, each ``capped`` grant
    keeps what fits under its cap beside the newer ones kept; ``all`` keeps everything;
    ``none`` grants expire at this moment anyway (their ``expires_at``). Returns what
    expired. The caller holds the usage lock."""
    earlier = list(
        SubscriptionCreditGrant.objects.filter(
            subscription=subscription,
            period_start__lt=before,
            grant__status=GrantStatus.ACTIVE,
            grant__remaining__gt=0,
        )
        .select_related("plan__credit_grant")
        .order_by("-period_start")
    )
    if not earlier:
        return ZERO
    locked = {
        g.pk: g
        for g in CreditGrant.objects.select_for_update(of=("self",))
        .select_related("wallet", "customer")
        .filter(pk__in=[e.grant_id for e in earlier])
        .order_by("id")
    }
    carried: dict[str, Decimal] = {}
    expired = ZERO
    for record in earlier:
        grant, rule = locked[record.grant_id], record.plan.credit_grant
        if grant.status != GrantStatus.ACTIVE or grant.remaining <= 0:
            continue
        if grant.expires_at is not None and grant.expires_at <= now:
            continue  # expiring now in any case (the expiry run, or rating, takes it)
        if rule.cadence == GrantCadence.ONCE:
            continue  # not rolled: it lasts until its own expiry
        kept = carried.get(grant.currency, ZERO)
        if rule.rollover == Rollover.ALL:
            keep = grant.remaining
        elif rule.rollover == Rollover.CAPPED:
            assert rule.rollover_cap is not None  # a database constraint
            keep = min(grant.remaining, max(rule.rollover_cap - kept, ZERO))
        else:
            keep = ZERO
        if grant.remaining > keep:
            expired += credits.expire_part(
                grant=grant, amount=grant.remaining - keep, now=now, reason="rollover"
            )
        carried[grant.currency] = kept + grant.remaining
    return expired


def end_with_subscription(subscription: Subscription, *, now: datetime) -> int:
    """At a cancellation that takes effect now: the subscription's live plan grants end with
    it — their expiry is brought forward to ``now`` and what is left expires
    (``credits.expire_grant``: to ``@CreditsExpired``, with ``credits.expired``; credits held
    wait for the hold, as at any expiry). A cancellation at period end leaves them to their
    own expiry. The caller holds the customer's usage lock and the subscription's row.
    Returns how many grants it ended."""
    grant_ids = list(
        SubscriptionCreditGrant.objects.filter(
            subscription=subscription, grant__status=GrantStatus.ACTIVE
        ).values_list("grant_id", flat=True)
    )
    if not grant_ids:
        return 0
    CreditGrant.objects.filter(pk__in=grant_ids).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    ).update(expires_at=now)
    for grant_id in sorted(grant_ids):
        credits.expire_grant(grant_id=grant_id, now=now)
    return len(grant_ids)


def granting_subscriptions(now: datetime):
    """Live subscriptions that a plan with a recurring grant applies to (now, or in the
    billing period under way)."""
    with_rule = SubscriptionPhase.objects.filter(
        subscription=OuterRef("pk"),
        plan__credit_grant__isnull=False,
    ).filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now - timedelta(days=366)))
    return (
        Subscription.objects.filter(status__in=GRANTING, billing_anchor__lte=now)
        .filter(Exists(with_rule))
        .order_by("id")
    )


def grant_due(*, now: datetime | None = None) -> int:
    """Beat: make every plan grant due now (each subscription in its own transaction).
    Returns how many grants were made. Cheap to run every minute: a subscription whose
    grant for the period exists is skipped before any lock is taken."""
    now = utc(now or timezone.now())
    made = 0
    for subscription in granting_subscriptions(now).select_related("plan"):
        due = due_grant(subscription, now)
        if due is None:
            continue
        if SubscriptionCreditGrant.objects.filter(
            subscription=subscription, period_start=due.start
        ).exists():
            continue  # a fast path only: grant_for decides under the lock
        grant = grant_for(subscription_id=subscription.pk, now=now)
        made += grant is not None and not grant.replayed
    return made
