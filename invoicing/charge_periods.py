"""Charges billed on their own cadence (``PlanCharge.interval``, Orb's per-price cadence)
as the invoices of a subscription's billing periods see them.

A charge's period is a whole multiple of the billing period, counted from the same anchor
(``billing.services.cadence``), so it ends with one of the billing periods. Rating counts
its meter over the whole charge period, in one counter (``metering.PeriodUsage`` keyed by
the charge period's start: ``metering.rating.terms.charge_period``). The invoice of the
billing period that ends the charge period carries that counter — its allowance, tiers,
minimum, flat fee at zero and proration all per charge period — and so does the invoice of
the billing period the subscription ends in (the charge period billed in part); the
invoices before it carry nothing of it: the usage is *accruing* (the upcoming invoice
shows it apart, with the date it will be invoiced on). Each counter is invoiced exactly
once: an event cannot be rated into a billing period already invoiced, and the invoice
that carries the counter is the last billing period of its charge period."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from billing.models import Subscription
from billing.periods import covers_whole_period, ends_with, prorate_fee
from invoicing.money import rounding_rule_for, to_minor_unit
from metering import rating
from metering.models import PeriodUsage
from metering.rating.terms import charge_period

if TYPE_CHECKING:
    from invoicing.selectors import LineDraft

INVOICED, ACCRUING = "invoiced", "accruing"


@dataclass(frozen=True)
class ChargePeriod:
    """The period of a charge on its own cadence that a billing period lies in."""

    start: datetime
    end: datetime
    cadence: tuple[str, int]
    invoiced_now: bool  # this billing period's invoice carries it (it ends, or the sub)
    # Where what this invoice bills of it ends: its end, or the subscription's — canceled
    # now (``ended_at``), or at period end with this billing period (its end: ``ended_at``
    # is only set when the close rolls the subscription, after the invoice is computed).
    billed_until: datetime


def own_charge_periods(
    subscription: Subscription,
    terms: rating.PlanTerms,
    period_start: datetime,
    period_end: datetime,
) -> dict[int, ChargePeriod]:
    """Meter id → the charge period of each charge of ``terms`` on its own cadence that the
    billing period [period_start, period_end) lies in (none: every charge is billed each
    billing period)."""
    in_trial = subscription.trial_ends_at is not None and period_start < subscription.trial_ends_at
    found: dict[int, ChargePeriod] = {}
    ending: bool | None = None
    for meter_id, charge in terms.charges.items():
        if not charge.interval:
            continue
        start, end = charge_period(
            subscription, charge, (period_start, period_end), in_trial, period_start
        )
        if ending is None:
            ending = ends_with(subscription, period_start, period_end)
        billed_until = end
        if ending:
            billed_until = min(end, subscription.ended_at or period_end)
        found[meter_id] = ChargePeriod(
            start,
            end,
            (charge.interval, charge.interval_count),
            end <= period_end or ending,
            billed_until,
        )
    return found


def read_counters(
    subscription: Subscription, period_start: datetime, own: dict[int, ChargePeriod]
) -> list[PeriodUsage]:
    """The counters a billing period may carry or show: its own, and those of the charge
    periods it lies in (by the counters' unique index: a handful of keys)."""
    starts = {period_start, *(p.start for p in own.values())}
    return list(
        PeriodUsage.objects.filter(subscription=subscription, period_start__in=starts)
        .select_related("meter")
        .order_by("meter_id")
    )


def role(counter: PeriodUsage, own: dict[int, ChargePeriod], period_start: datetime) -> str | None:
    """What a counter is to the billing period starting at ``period_start``: ``INVOICED``
    (its invoice carries it), ``ACCRUING`` (a charge period still running: a later invoice
    carries it), or None (another period's)."""
    period = own.get(counter.meter_id)
    if period is None:
        return INVOICED if counter.period_start == period_start else None
    if counter.period_start != period.start:
        return None
    return INVOICED if period.invoiced_now else ACCRUING


@dataclass(frozen=True)
class OwnMinimum:
    """A charge minimum owed per charge period, by the invoice carrying it."""

    owed: Decimal  # prorated over the charge period when billed in part
    minimum: Decimal
    per: str  # "quarter"
    span: str  # ", prorated … to …" when billed in part, else ""
    starts_at: datetime  # what of the charge period it is owed for, as its usage lines
    ends_at: datetime


def own_minimums(
    subscription: Subscription, terms: rating.PlanTerms, own: dict[int, ChargePeriod]
) -> list[tuple[int, OwnMinimum]]:
    """The minimums of the charges on their own cadence this invoice carries: each owed over
    the part of its charge period the subscription was billed for (after its start and
    trial, before its end), by the rules of any fee (``billing.periods.prorate_fee``)."""
    found = []
    for meter_id, period in sorted(own.items()):
        minimum = terms.charges[meter_id].minimum_amount
        if minimum is None or not period.invoiced_now:
            continue
        starts = max(
            period.start, subscription.started_at, subscription.trial_ends_at or period.start
        )
        ends = max(starts, period.billed_until)
        whole = covers_whole_period(
            subscription,
            used_from=starts,
            used_until=ends,
            period_start=period.start,
            period_end=period.end,
            cadence=period.cadence,
        )
        owed = prorate_fee(
            subscription,
            minimum,
            used_from=starts,
            used_until=ends,
            period_start=period.start,
            period_end=period.end,
            cadence=period.cadence,
        )
        found.append(
            (
                meter_id,
                OwnMinimum(
                    owed=owed,
                    minimum=minimum,
                    per=every(period.cadence),
                    span="" if whole else f", prorated {starts:%Y-%m-%d} to {ends:%Y-%m-%d}",
                    starts_at=period.start,
                    ends_at=period.billed_until,
                ),
            )
        )
    return found


def every(cadence: tuple[str, int]) -> str:
    """ "quarter", "3 months": what an allowance of a charge on its own cadence is per."""
    interval, count = cadence
    return interval if count == 1 else f"{count} {interval}s"


def accruing_lines(
    subscription: Subscription, period_start: datetime, period_end: datetime
) -> list[LineDraft]:
    """What the charges on their own cadence have accrued so far in charge periods still
    running (not on this billing period's invoice): their lines as rated, each with the
    day its charge period ends and is invoiced (``metadata["invoiced_on"]``). Rounded by
    the plan's rule, as the invoice will."""
    from invoicing.selectors import _phases, _plan_at_end, usage_lines  # built on its lines

    phases = _phases(subscription, period_end)
    terms = rating.plan_terms(_plan_at_end(subscription, period_end, phases))
    if not any(c.interval for c in terms.charges.values()):
        return []
    currency = subscription.plan.currency
    lines, _ = usage_lines(
        subscription, period_start, period_end, currency, phases, terms=terms, accruing=True
    )
    rule = rounding_rule_for(
        plan_rounding=(phases[-1].plan if phases else subscription.plan).rounding,
        currency=currency,
    )
    for line in lines:
        line.amount = to_minor_unit(line.amount_precise, currency, rule)
        line.metadata = {**line.metadata, "invoiced_on": line.ends_at.isoformat()}
    return lines
