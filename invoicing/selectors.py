"""Reads of invoicing: the lines and totals a period would be invoiced with.

``compute_invoice`` is what closing a period, finalizing a draft and the upcoming-invoice
API all use, so that the invoice a customer is shown in advance is the one they get.
It reads the plan phases and the usage counters (``metering.PeriodUsage``), never events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypedDict

from billing.models import Customer, Subscription, SubscriptionPhase
from billing.periods import prorate
from invoicing.models import LineKind, TaxRate
from invoicing.money import to_minor_unit
from metering import rating
from metering.models import PeriodUsage

ZERO = Decimal(0)
HUNDRED = Decimal(100)


@dataclass
class LineDraft:
    kind: str
    description: str
    starts_at: datetime
    ends_at: datetime
    quantity: Decimal = ZERO
    unit_price: Decimal | None = None
    flat_fee: Decimal = ZERO
    amount_precise: Decimal = ZERO
    amount: Decimal = ZERO
    meter_id: int | None = None
    plan_id: int | None = None
    tier: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class InvoiceDraft:
    currency: str
    lines: list[LineDraft]
    subtotal: Decimal
    tax_name: str
    tax_percentage: Decimal
    tax: Decimal
    total: Decimal
    usage_charged: Decimal  # what the ledger recorded for the period's usage, exact
    fees_precise: Decimal

    @property
    def rounding(self) -> Decimal:
        """What presenting moved: posted to @Rounding when the invoice is finalized."""
        return self.total - self.usage_charged - self.fees_precise - self.tax


def tax_rate_for(customer: Customer) -> TaxRate | None:
    """The customer's own rate, else its country and state's, its country's, everyone's."""
    rates = list(TaxRate.objects.filter(active=True).order_by("-created_at", "-id"))
    for matches in (
        lambda r: r.customer_id == customer.pk,
        lambda r: (
            r.customer_id is None
            and r.country == customer.country
            and bool(r.state)
            and r.state == customer.state
        ),
        lambda r: r.customer_id is None and r.country == customer.country and not r.state,
        lambda r: r.customer_id is None and not r.country,
    ):
        found = next((r for r in rates if matches(r)), None)
        if found is not None:
            return found
    return None


def _fmt(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d}"


def _phases(subscription: Subscription, period_end: datetime) -> list[SubscriptionPhase]:
    """The subscription's phases begun before the period's end, with their plans, by start."""
    return list(
        SubscriptionPhase.objects.filter(subscription=subscription, starts_at__lt=period_end)
        .select_related("plan")
        .order_by("starts_at", "id")
    )


def base_fee_lines(
    subscription: Subscription,
    period_start: datetime,
    period_end: datetime,
    phases: list[SubscriptionPhase] | None = None,
) -> list[LineDraft]:
    """The base fee of each plan version that applied in [period_start, period_end),
    prorated by the time it covered; nothing for time in a trial or after the end."""
    lines = []
    not_before = max(period_start, subscription.trial_ends_at or period_start)
    not_after = min(period_end, subscription.ended_at or period_end)
    if phases is None:
        phases = _phases(subscription, period_end)
    for phase in phases:
        starts = max(phase.starts_at, not_before)
        ends = min(phase.ends_at or period_end, not_after)
        if ends <= starts or not phase.plan.base_fee:
            continue
        amount = prorate(
            phase.plan.base_fee,
            used_from=starts,
            used_until=ends,
            period_start=period_start,
            period_end=period_end,
        )
        whole = starts == period_start and ends == period_end
        description = f"{phase.plan.name} — base fee"
        if not whole:
            description += f", prorated {_fmt(starts)} to {_fmt(ends)}"
        lines.append(
            LineDraft(
                kind=LineKind.BASE_FEE,
                description=description,
                starts_at=starts,
                ends_at=ends,
                quantity=Decimal(1),
                unit_price=phase.plan.base_fee,
                amount_precise=amount,
                plan_id=phase.plan_id,
            )
        )
    return lines


def _plan_at_end(
    subscription: Subscription,
    period_end: datetime,
    phases: list[SubscriptionPhase] | None = None,
) -> int:
    """The plan version in force at the end of the period (the last phase begun in it)."""
    if phases is None:
        phases = _phases(subscription, period_end)
    return phases[-1].plan_id if phases else subscription.plan_id


class _MeterLineSpan(TypedDict):
    """What every line of one meter's usage shares."""

    starts_at: datetime
    ends_at: datetime
    meter_id: int


def usage_lines(
    subscription: Subscription,
    period_start: datetime,
    period_end: datetime,
    currency: str,
    phases: list[SubscriptionPhase] | None = None,
    *,
    terms: rating.PlanTerms | None = None,
    counters: list[PeriodUsage] | None = None,
) -> tuple[list[LineDraft], Decimal]:
    """Lines for the period's usage counters, and the usage the ledger recorded (exact).

    Per charged meter: the included quantity (free), then the overage per tier with its unit
    price. Where the counter's exact amount is not the plan's tiers applied to its quantity
    (catalog-priced charges, a plan changed mid-period, a trial) the meter gets one line
    with the amount rating recorded, so the invoice always says what was charged.

    ``terms`` and ``counters`` (a usage preview, ``invoicing.preview``): other plan terms
    and the counters as those terms would have priced them, instead of the plan in force and
    the stored counters."""
    if counters is None:
        counters = list(
            PeriodUsage.objects.filter(subscription=subscription, period_start=period_start)
            .select_related("meter")
            .order_by("meter_id")
        )
    if not counters:
        return [], ZERO
    if terms is None:
        terms = rating.plan_terms(_plan_at_end(subscription, period_end, phases))
    meters = {c.meter_id: c.meter for c in counters}
    in_trial = subscription.trial_ends_at is not None and period_end <= subscription.trial_ends_at
    lines: list[LineDraft] = []
    usage_charged = ZERO
    for counter in counters:
        charge = terms.charges.get(counter.meter_id)
        if charge is None:
            continue  # counted, not charged by this plan
        meter = meters[counter.meter_id]
        name = meter.name or meter.code
        unit = f" {meter.unit}" if meter.unit else ""
        common: _MeterLineSpan = {
            "starts_at": period_start,
            "ends_at": period_end,
            "meter_id": meter.pk,
        }
        if counter.currency and counter.currency != currency:  # a credits plan
            lines.append(
                LineDraft(
                    kind=LineKind.CREDITS,
                    description=f"{name}: {counter.quantity.normalize():,f}{unit}, "
                    f"{counter.charged.normalize():f} {counter.currency} used",
                    quantity=counter.quantity,
                    metadata={"credits": str(counter.charged), "currency": counter.currency},
                    **common,
                )
            )
            continue
        usage_charged += counter.charged
        included = min(counter.quantity, charge.included_quantity)
        if included > 0:
            lines.append(
                LineDraft(
                    kind=LineKind.INCLUDED,
                    description=f"{name}: included ({charge.included_quantity.normalize():,f}"
                    f"{unit} per period)",
                    quantity=included,
                    unit_price=ZERO,
                    **common,
                )
            )
        parts = [] if charge.catalog_priced else charge.breakdown(counter.quantity)
        if parts and sum((p.amount for p in parts), ZERO) == counter.amount:
            for part in parts:
                label = f", tier {part.tier}" if part.tier is not None and len(charge.tiers) else ""
                if not label and included > 0:
                    label = ", beyond the included"
                if charge.price_model == "package" and charge.package_size is not None:
                    label = f", packages of {charge.package_size.normalize():f}{unit}"
                lines.append(
                    LineDraft(
                        kind=LineKind.USAGE,
                        description=f"{name}{label}",
                        quantity=part.quantity,
                        unit_price=part.unit_price,
                        flat_fee=part.flat_fee,
                        amount_precise=part.amount,
                        tier=part.tier,
                        **common,
                    )
                )
            continue
        billable = charge.billable(counter.quantity)
        if billable <= 0 and not counter.amount:
            continue
        if charge.catalog_priced:
            description = f"{name}: model catalog price"
            margin = charge.margin_percent or ZERO
            if margin:
                description += f" + {margin.normalize():f} %"
        elif in_trial:
            description = f"{name}: during the trial"
        else:
            description = f"{name}: as rated"
        lines.append(
            LineDraft(
                kind=LineKind.USAGE,
                description=description,
                quantity=billable,
                amount_precise=counter.amount,
                metadata={"events": counter.event_count},
                **common,
            )
        )
    return lines, usage_charged


def compute_invoice(
    *,
    subscription: Subscription,
    period_start: datetime,
    period_end: datetime,
    base_fees: list[LineDraft] | None = None,
    phases: list[SubscriptionPhase] | None = None,
    terms: rating.PlanTerms | None = None,
    counters: list[PeriodUsage] | None = None,
) -> InvoiceDraft:
    """The lines and totals of one period. ``base_fees``: lines computed earlier (at close:
    they do not change with late usage, and the subscription has moved on since).
    ``phases``, ``terms``, ``counters``: what a usage preview (``invoicing.preview``) puts in
    place of the stored phases, the plan in force and the counters; nothing else differs."""
    currency = subscription.plan.currency
    if phases is None:
        phases = _phases(subscription, period_end)  # read once for the fees and the usage
    if base_fees is None:
        base_fees = base_fee_lines(subscription, period_start, period_end, phases)
    usage, usage_charged = usage_lines(
        subscription, period_start, period_end, currency, phases, terms=terms, counters=counters
    )
    lines = [*base_fees, *usage]
    for line in lines:
        line.amount = to_minor_unit(line.amount_precise, currency)
    subtotal = sum((line.amount for line in lines), ZERO)
    rate = tax_rate_for(subscription.customer)
    percentage = rate.percentage if rate is not None else ZERO
    tax = to_minor_unit(subtotal * percentage / HUNDRED, currency)
    return InvoiceDraft(
        currency=currency,
        lines=lines,
        subtotal=subtotal,
        tax_name=rate.name if rate is not None else "",
        tax_percentage=percentage,
        tax=tax,
        total=subtotal + tax,
        usage_charged=usage_charged,
        fees_precise=sum((line.amount_precise for line in base_fees), ZERO),
    )
