"""Plans as rating reads them: their terms, cached per process (a published plan is
immutable), the plan of a subscription at a moment (its phases), and the period an event
falls in (with the refusals of a moment before the start, in an invoiced period, or after a
canceled subscription's end)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cached_property, lru_cache
from typing import Any

from billing.models import (
    ConsumptionModel,
    Meter,
    Plan,
    Subscription,
)
from billing.periods import subscription_period
from metering import catalog, errors
from metering.charges import ChargeTerms, Tier
from metering.rating.base import CREDITS

# --- plans, cached (plans are immutable) ----------------------------------------------------


@dataclass(frozen=True)
class PlanTerms:
    plan_id: int
    currency: str
    interval: str
    consumption_model: str
    units_per_credit: Decimal | None
    charges: dict[int, ChargeTerms]
    llm_event_names: frozenset[str] = frozenset()  # events its LLM-token meters read
    interval_count: int = 1  # a period lasts interval_count intervals
    # The billing periods (usage counters, allowances, tiers): the charges' cadence
    # (billing.periods.charge_cadence), the plan's own interval unless it bills them finer.
    charges_interval: str = ""
    charges_interval_count: int = 1

    @property
    def cadence(self) -> tuple[str, int]:
        if self.charges_interval:
            return self.charges_interval, self.charges_interval_count
        return self.interval, self.interval_count

    @cached_property  # asked per event: said once (the terms are frozen)
    def money_currency(self) -> str:
        return CREDITS if self.consumption_model == ConsumptionModel.CREDITS else self.currency


def charge_terms_of(charge: Any, *, meter: Meter, tiers: Iterable[Any]) -> ChargeTerms:
    """A charge's pricing terms, from a stored charge (``PlanCharge``, its tiers) or a
    draft's (``ChargeSpec``, its ``TierSpec`` list): the same attributes, one rule — rating
    prices a published plan with it, the usage preview a draft, so the two cannot differ."""
    tier_terms = tuple(
        Tier(
            up_to=t.up_to, unit_price=t.unit_price, flat_fee=t.flat_fee, package_size=t.package_size
        )
        for t in tiers
    )
    return ChargeTerms(
        meter_id=meter.pk,
        price_model=charge.price_model,
        included_quantity=charge.included_quantity,
        unit_price=charge.unit_price,
        package_size=charge.package_size,
        tiers=tier_terms,
        margin_percent=charge.margin_percent,
        # catalog-priced: a margin over the catalog's price of a token meter, no own price
        catalog_priced=charge.margin_percent is not None
        and meter.property in catalog.CATALOG_KINDS
        and not tier_terms
        and charge.unit_price == 0,
        flat_fee_at_zero=charge.flat_fee_at_zero,
        minimum_amount=charge.minimum_amount,
        prorated=charge.prorated,
        interval=charge.interval,
        interval_count=charge.interval_count,
    )


@lru_cache(maxsize=4096)
def plan_terms(plan_id: int) -> PlanTerms:
    plan = Plan.objects.prefetch_related("charges__tiers", "charges__meter").get(pk=plan_id)
    charges = {
        charge.meter_id: charge_terms_of(charge, meter=charge.meter, tiers=charge.tiers.all())
        for charge in plan.charges.all()
    }
    return PlanTerms(
        plan_id=plan.pk,
        currency=plan.currency,
        interval=plan.interval,
        interval_count=plan.interval_count,
        charges_interval=plan.charges_interval,
        charges_interval_count=plan.charges_interval_count,
        consumption_model=plan.consumption_model,
        units_per_credit=plan.units_per_credit,
        charges=charges,
        llm_event_names=frozenset(
            c.meter.event_name for c in plan.charges.all() if c.meter.property.startswith("llm.")
        ),
    )


def _plan_at(subscription: Subscription, at: datetime) -> int:
    plan_id = subscription.plan_id
    # phase_starts: set by read on the subscriptions it builds (not a field of the model)
    for starts_at, phase_plan_id in subscription.phase_starts:  # type: ignore[attr-defined]
        if starts_at <= at:
            plan_id = phase_plan_id
    return plan_id


def current_period_window(
    subscription: Subscription,
) -> tuple[datetime, datetime, datetime] | None:
    """(from, until, period start): the moments ``from <= at < until`` for which
    ``_period_for`` answers the subscription's current period, not in a trial, without a
    refusal — after its start, its invoiced part and its trial, inside the current period
    (where a cancellation at period end refuses nothing yet) — so that rating places the
    common event with two comparisons; None if that cannot be said."""
    start, end = subscription.current_period_start, subscription.current_period_end
    if start is None or end is None or subscription.started_at is None:
        return None
    since = max(start, subscription.started_at)
    if subscription.invoiced_through is not None:
        since = max(since, subscription.invoiced_through)
    if subscription.trial_ends_at is not None:
        since = max(since, subscription.trial_ends_at)
    return since, end, start


def _period_for(subscription: Subscription, terms: PlanTerms, at: datetime):
    """(period_start, period_end, in_trial) for an event at ``at``."""
    if at < subscription.started_at:
        raise errors.TimestampTooOld(
            f"timestamp {at.isoformat()} precedes the subscription's start "
            f"{subscription.started_at.isoformat()}",
            param="timestamp",
        )
    if subscription.invoiced_through is not None and at < subscription.invoiced_through:
        raise errors.PeriodClosed(
            f"timestamp {at.isoformat()} lies in a period already invoiced (through "
            f"{subscription.invoiced_through.isoformat()}); send it with a current timestamp",
            param="timestamp",
        )
    if subscription.cancel_at_period_end and at >= subscription.current_period_end:
        # The subscription ends with this (plan) period: a later period is never closed.
        ends = subscription.current_period_end
        if terms.cadence != (terms.interval, terms.interval_count):  # charges billed finer
            ends = subscription_period(
                anchor=subscription.billing_anchor,
                interval=terms.interval,
                count=terms.interval_count,
                started_at=subscription.started_at,
                trial_ends_at=subscription.trial_ends_at,
                at=subscription.current_period_start,
            )[1]
        if at >= ends:
            raise errors.TimestampAfterSubscription(
                f"timestamp {at.isoformat()} lies after the subscription's end "
                f"{ends.isoformat()} (canceled at period end)",
                param="timestamp",
            )
    if subscription.trial_ends_at is not None and at < subscription.trial_ends_at:
        return subscription.started_at, subscription.trial_ends_at, True
    if subscription.current_period_start <= at < subscription.current_period_end:
        return subscription.current_period_start, subscription.current_period_end, False
    interval, count = terms.cadence
    start, end = subscription_period(
        anchor=subscription.billing_anchor,
        interval=interval,
        count=count,
        started_at=subscription.started_at,
        trial_ends_at=subscription.trial_ends_at,
        at=at,
    )
    return start, end, False


def charge_period(
    subscription: Subscription,
    charge: ChargeTerms | None,
    period: tuple[datetime, datetime],
    in_trial: bool,
    at: datetime,
) -> tuple[datetime, datetime]:
    """The period a charge counts an event at ``at`` in: the billing period ``period``, or
    for a charge with its own cadence (``PlanCharge.interval``, a whole multiple of the
    billing period from the same anchor) the charge period containing it — its counter,
    allowance and tiers span that period, and the close invoices it once it ends. A trial
    is its own period, for every charge."""
    if charge is None or not charge.interval or in_trial:
        return period
    return subscription_period(
        anchor=subscription.billing_anchor,
        interval=charge.interval,
        count=charge.interval_count,
        started_at=subscription.started_at,
        trial_ends_at=subscription.trial_ends_at,
        at=at,
    )
