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

from billing.models import (
    ConsumptionModel,
    Customer,
    Meter,
    Plan,
    RoundingRule,
    Subscription,
    SubscriptionPhase,
)
from billing.periods import (
    charge_cadence,
    closes_plan_period,
    covers_whole_period,
    plan_period_of,
    prorate_fee,
)
from invoicing import charge_periods
from invoicing.models import LineKind, TaxRate
from invoicing.money import rounding_rule_for, to_minor_unit
from metering import rating
from metering.models import PeriodUsage
from metering.rating.base import ledger_round

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
    # Not rated in real time but invoiced as a fee (recognised with the base fees): a first
    # tier's flat fee at zero usage, a minimum's shortfall.
    fee: bool = False


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
    rounding_rule: str = RoundingRule.HALF_EVEN  # the plan's: how lines and tax are rounded
    commitment_breakage: Decimal = ZERO  # the commitment no usage drew: its own revenue
    # + held on @CommitmentPrepaid (a commitment invoiced in advance), − released at close
    commitment_deferred: Decimal = ZERO

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
    """The base fee of each plan version that applied in the plan period [period_start,
    period_end), prorated by the time it covered; nothing for time in a trial or after the
    end."""
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
        amount = prorate_fee(
            subscription,
            phase.plan.base_fee,
            used_from=starts,
            used_until=ends,
            period_start=period_start,
            period_end=period_end,
            per_plan=True,
        )
        description = f"{phase.plan.name} — base fee"
        description += _prorated_note(
            subscription, starts, ends, period_start, period_end, per_plan=True
        )
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


def period_base_fee_lines(
    subscription: Subscription,
    period_start: datetime,
    period_end: datetime,
    phases: list[SubscriptionPhase] | None = None,
) -> list[LineDraft]:
    """The base fee lines a billing period's invoice carries: its own (a plan billing its
    charges on its own cadence), else — charges billed on a finer cadence — its plan
    period's, in arrears, on the billing period that closes the plan period (or the last
    one, the subscription ending in it); none on the others."""
    if charge_cadence(subscription.plan) == (
        subscription.plan.interval,
        subscription.plan.interval_count,
    ):
        return base_fee_lines(subscription, period_start, period_end, phases)
    if not closes_plan_period(subscription, period_start, period_end):
        return []
    plan_start, plan_end = plan_period_of(subscription, period_start)
    return base_fee_lines(subscription, plan_start, plan_end, phases)


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
    accruing: bool = False,
) -> tuple[list[LineDraft], Decimal]:
    """Lines for the period's usage counters, and the usage the ledger recorded (exact).
    ``accruing``: instead, the lines of the charges on their own cadence whose charge
    period is still running (a later invoice carries them: ``invoicing.charge_periods``).

    Per charged meter: the included quantity (free), then the overage per tier with its unit
    price. Where the counter's exact amount is not the plan's tiers applied to its quantity
    (catalog-priced charges, a plan changed mid-period, a trial) the meter gets one line
    with the amount rating recorded, so the invoice always says what was charged.

    ``terms`` and ``counters`` (a usage preview, ``invoicing.preview``): other plan terms
    and the counters as those terms would have priced them, instead of the plan in force and
    the stored counters."""
    if terms is None:
        terms = rating.plan_terms(_plan_at_end(subscription, period_end, phases))
    # Charges on their own cadence: their charge period's counter, carried by the invoice
    # that ends it (invoicing.charge_periods); ``accruing``: those still running instead.
    own = charge_periods.own_charge_periods(subscription, terms, period_start, period_end)
    if counters is None:
        counters = charge_periods.read_counters(subscription, period_start, own)
    wanted = charge_periods.ACCRUING if accruing else charge_periods.INVOICED
    counters = [c for c in counters if charge_periods.role(c, own, period_start) == wanted]
    meters = {c.meter_id: c.meter for c in counters}
    in_trial = subscription.trial_ends_at is not None and period_end <= subscription.trial_ends_at
    deferred = {m for m, p in own.items() if not p.invoiced_now}
    zero_usage_fees = (
        []
        if in_trial or accruing or terms.consumption_model == ConsumptionModel.CREDITS
        else _zero_usage_fee_lines(terms, counters, period_start, period_end, deferred)
    )
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
        per = "period"
        if counter.meter_id in own and not in_trial:  # its own period (a trial is its own)
            own_period = own[counter.meter_id]
            per = charge_periods.every(own_period.cadence)
            common["starts_at"] = counter.period_start
            common["ends_at"] = min(counter.period_end, own_period.billed_until)
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
                    f"{unit} per {per})",
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
                elif part.package_size is not None:
                    label += f", packages of {part.package_size.normalize():,f}{unit}"
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
    # A first tier's flat fee at zero usage is the charge's amount for the period: prorated
    # with the charge's usage when the charge says so (a stub, a cancellation), never more
    # than a period with one unit in it would cost.
    lines += zero_usage_fees
    if accruing:
        return lines, usage_charged
    prorations = _proration_lines(terms, meters, lines, subscription, period_start, period_end, own)
    return [*lines, *prorations], usage_charged


def _proration_lines(
    terms: rating.PlanTerms,
    meters: dict[int, Meter],
    lines: list[LineDraft],
    subscription: Subscription,
    period_start: datetime,
    period_end: datetime,
    own: dict[int, charge_periods.ChargePeriod],
) -> list[LineDraft]:
    """For a period billed in part, each prorated charge's usage brought down to the time
    billed: the tiers were chosen on the whole quantity (and rated so), the amount is
    prorated as the base fee is (Lago's prorated charges). A first tier's flat fee charged
    at zero usage is the charge's amount too, prorated alike (zero usage never costs more
    than one unit). One negative fee line per charge, so the usage lines still say what was
    rated."""
    prorated = sorted(m for m, c in terms.charges.items() if c.prorated)
    adjustments = []
    for meter_id in prorated:
        # A charge on its own cadence: its charge period (invoiced now, or no lines here).
        own_period = own.get(meter_id)
        start, end = (
            (own_period.start, own_period.end) if own_period else (period_start, period_end)
        )
        cadence = own_period.cadence if own_period else None
        starts, ends = _live_span(subscription, start, end)
        if own_period:  # canceled at period end inside it: billed until this period's end
            ends = max(starts, min(ends, own_period.billed_until))
        if ends <= starts or covers_whole_period(
            subscription,
            used_from=starts,
            used_until=ends,
            period_start=start,
            period_end=end,
            cadence=cadence,
        ):
            continue
        rated = sum(
            (
                ln.amount_precise
                for ln in lines
                if ln.meter_id == meter_id and ln.kind == LineKind.USAGE
            ),
            ZERO,
        )
        if not rated:
            continue
        share = prorate_fee(
            subscription,
            rated,
            used_from=starts,
            used_until=ends,
            period_start=start,
            period_end=end,
            cadence=cadence,
        )
        meter = meters.get(meter_id) or Meter.objects.get(pk=meter_id)  # no counter: a fee
        adjustments.append(
            LineDraft(
                kind=LineKind.USAGE,
                description=f"{meter.name or meter.code}, prorated: billed {_fmt(starts)} "
                f"to {_fmt(ends)}",
                starts_at=starts,
                ends_at=ends,
                quantity=ZERO,
                amount_precise=ledger_round(share - rated),  # a fee: the ledger's 12 places
                meter_id=meter_id,
                fee=True,
                # a fee, not rated usage: the reconciliation's invoice_usage leaves it out
                metadata={"rated": str(rated), "prorated": str(share), "fee": True},
            )
        )
    return adjustments


def _zero_usage_fee_lines(
    terms: rating.PlanTerms,
    counters: list[PeriodUsage],
    period_start: datetime,
    period_end: datetime,
    deferred: set[int],
) -> list[LineDraft]:
    """The first tier's flat fee of each charge that invoices it at zero usage, for the
    charges without a billable unit this period (with or without a counter); none for a
    charge on its own cadence whose charge period is still running (``deferred``)."""
    quantities = {c.meter_id: c.quantity for c in counters}
    fees = {
        meter_id: fee
        for meter_id, charge in terms.charges.items()
        if meter_id not in deferred
        and (fee := charge.zero_usage_fee(quantities.get(meter_id, ZERO)))
    }
    if not fees:
        return []
    meters = Meter.objects.in_bulk(list(fees))
    lines = []
    for meter_id in sorted(fees):
        meter = meters[meter_id]
        first = terms.charges[meter_id].tiers[0]
        lines.append(
            LineDraft(
                kind=LineKind.USAGE,
                description=f"{meter.name or meter.code}, tier 1: flat fee (charged at zero usage)",
                starts_at=period_start,
                ends_at=period_end,
                quantity=ZERO,
                unit_price=first.unit_price,
                flat_fee=fees[meter_id],
                amount_precise=fees[meter_id],
                meter_id=meter_id,
                tier=1,
                fee=True,
                metadata={"fee": True},  # not rated usage (see the proration lines)
            )
        )
    return lines


def _live_span(
    subscription: Subscription, period_start: datetime, period_end: datetime
) -> tuple[datetime, datetime]:
    """The part of the period the subscription was billed for (after its start and its
    trial, before its end): what a minimum and a prorated charge are prorated by."""
    starts = max(period_start, subscription.started_at, subscription.trial_ends_at or period_start)
    ends = min(period_end, subscription.ended_at or period_end)
    return starts, max(starts, ends)


@dataclass(frozen=True)
class _Slice:
    """A part of the billed span of a period under one plan version."""

    plan: Plan
    starts_at: datetime
    ends_at: datetime


def _slices(
    subscription: Subscription,
    period_start: datetime,
    period_end: datetime,
    phases: list[SubscriptionPhase],
) -> list[_Slice]:
    """The billed span of the period (``_live_span``: after its start and trial, before its
    end) cut where the plan changed: each part with the plan version in force then. What is
    owed per period whatever the usage (a minimum, a commitment) is prorated slice by
    slice, each by its own plan's terms (as Stripe and Lago prorate a plan change)."""
    starts, ends = _live_span(subscription, period_start, period_end)
    if ends <= starts:
        return []
    if not phases:
        return [_Slice(subscription.plan, starts, ends)]
    parts = []
    for phase in phases:
        s, e = max(phase.starts_at, starts), min(phase.ends_at or period_end, ends)
        if e > s:
            parts.append(_Slice(phase.plan, s, e))
    return parts


def _prorated_note(
    subscription: Subscription,
    starts: datetime,
    ends: datetime,
    period_start: datetime,
    period_end: datetime,
    *,
    per_plan: bool = False,
) -> str:
    """The note ", prorated … to …" for a fee of [starts, ends), unless it is the whole fee
    (``covers_whole_period``: a calendar start on its anchor day after midnight is whole)."""
    if covers_whole_period(
        subscription,
        used_from=starts,
        used_until=ends,
        period_start=period_start,
        period_end=period_end,
        per_plan=per_plan,
    ):
        return ""
    return f", prorated {_fmt(starts)} to {_fmt(ends)}"


def minimum_lines(
    subscription: Subscription,
    period_start: datetime,
    period_end: datetime,
    currency: str,
    phases: list[SubscriptionPhase],
    lines: list[LineDraft],
    terms: rating.PlanTerms | None = None,
    drawn: Decimal | None = None,
) -> list[LineDraft]:
    """The shortfall of each minimum: per charge, what its lines come to against its
    minimum; then the subscription's, what all the period's lines (base fees, usage, the
    charges' shortfalls) come to before tax against the plan's. What is owed is prorated
    slice by slice (``_slices``): each part of the period billed owes the minimums of the
    plan version in force then, by its share of the period (a plan changed mid-period owes
    the old plan's minimum until the change, the new one's after it). Exact amounts are
    compared, and a shortfall is a fee line of its own, at the ledger's 12 places (presented
    by ``present_shortfall`` once the lines are rounded). ``terms``:
    the terms of the plan at the period's end in a usage preview (its draft plan is not
    saved). ``drawn``: None, the charges' minimums only; else the plan's minimum only, what
    counts towards it net of what a commitment ``drawn`` (one usage never fills both)."""
    end_plan = phases[-1].plan if phases else subscription.plan
    slices = [
        part
        for part in _slices(subscription, period_start, period_end, phases)
        if part.plan.consumption_model != ConsumptionModel.CREDITS
    ]
    if not slices:
        return []
    span = _prorated_note(
        subscription, slices[0].starts_at, slices[-1].ends_at, period_start, period_end
    )
    known: dict[int | None, rating.PlanTerms] = {}

    def terms_of(plan: Plan) -> rating.PlanTerms:
        if terms is not None and (plan is end_plan or (plan.pk and plan.pk == end_plan.pk)):
            return terms
        if plan.pk not in known:
            known[plan.pk] = rating.plan_terms(plan.pk)
        return known[plan.pk]

    def share(amount: Decimal, part: _Slice) -> Decimal:
        return prorate_fee(
            subscription,
            amount,
            used_from=part.starts_at,
            used_until=part.ends_at,
            period_start=period_start,
            period_end=period_end,
        )

    def note(minimums: set[Decimal], per: str = "period", over: str | None = None) -> str:
        if len(minimums) == 1:
            text = f"minimum {next(iter(minimums)).normalize():,f} {currency} per {per}"
        else:  # a plan change between two minimums
            text = "minimum of each plan version in force, per period"
        return text + (span if over is None else over)

    owed_by_meter: dict[int, Decimal] = {}
    committed_by_meter: dict[int, Decimal] = {}  # owed by versions with a commitment
    minimums_by_meter: dict[int, set[Decimal]] = {}
    # A charge on its own cadence owes its minimum per charge period, on the invoice that
    # carries that period (prorated over it when billed in part), and nothing before.
    own = charge_periods.own_charge_periods(
        subscription, terms_of(end_plan), period_start, period_end
    )
    own_notes: dict[int, tuple[str, str]] = {}
    own_spans: dict[int, tuple[datetime, datetime]] = {}
    if drawn is None:
        for meter_id, due in charge_periods.own_minimums(subscription, terms_of(end_plan), own):
            owed_by_meter[meter_id] = due.owed
            minimums_by_meter[meter_id] = {due.minimum}
            own_notes[meter_id] = (due.per, due.span)
            own_spans[meter_id] = (due.starts_at, due.ends_at)  # as its usage lines
    for part in slices if drawn is None else ():
        for meter_id, charge in terms_of(part.plan).charges.items():
            if charge.minimum_amount is None or meter_id in own:
                continue
            owed = share(charge.minimum_amount, part)
            owed_by_meter[meter_id] = owed_by_meter.get(meter_id, ZERO) + owed
            if part.plan.commitment_amount is not None:
                committed_by_meter[meter_id] = committed_by_meter.get(meter_id, ZERO) + owed
            minimums_by_meter.setdefault(meter_id, set()).add(charge.minimum_amount)
    shortfalls: list[LineDraft] = []
    meters = Meter.objects.in_bulk(list(owed_by_meter)) if owed_by_meter else {}
    starts, ends = slices[0].starts_at, slices[-1].ends_at
    for meter_id in sorted(owed_by_meter):
        owed = owed_by_meter[meter_id]
        used = sum((ln.amount_precise for ln in lines if ln.meter_id == meter_id), ZERO)
        if used < owed:
            meter = meters[meter_id]
            shortfalls.append(
                LineDraft(
                    kind=LineKind.MINIMUM,
                    description=f"{meter.name or meter.code}: "
                    f"{note(minimums_by_meter[meter_id], *own_notes.get(meter_id, ()))}, "
                    "shortfall",
                    starts_at=own_spans.get(meter_id, (starts, ends))[0],
                    ends_at=own_spans.get(meter_id, (starts, ends))[1],
                    quantity=Decimal(1),
                    unit_price=ledger_round(owed - used),
                    amount_precise=ledger_round(owed - used),
                    meter_id=meter_id,
                    fee=True,
                    metadata={
                        "minimum": str(owed),
                        "invoiced": str(used),
                        "minimum_committed": str(committed_by_meter.get(meter_id, ZERO)),
                    },
                )
            )
    with_minimum = [part for part in slices if part.plan.minimum_amount is not None]
    if with_minimum and drawn is not None:
        owed = sum((share(p.plan.minimum_amount or ZERO, p) for p in with_minimum), ZERO)
        used = sum((ln.amount_precise for ln in lines), ZERO) - drawn
        owner = with_minimum[-1].plan  # the plan that owns the minimum, not the final one
        if used < owed:
            shortfalls.append(
                LineDraft(
                    kind=LineKind.MINIMUM,
                    description=f"{owner.name} — "
                    f"{note({p.plan.minimum_amount or ZERO for p in with_minimum})}, shortfall",
                    starts_at=starts,
                    ends_at=ends,
                    quantity=Decimal(1),
                    unit_price=ledger_round(owed - used),
                    amount_precise=ledger_round(owed - used),
                    plan_id=owner.pk,
                    fee=True,
                    metadata={"minimum": str(owed), "invoiced": str(used)},
                )
            )
    return shortfalls


def present_shortfall(
    shortfall: LineDraft,
    compared: list[LineDraft],
    currency: str,
    rule: str,
    drawn: Decimal = ZERO,
) -> None:
    """A minimum's shortfall as presented: the minimum rounded by the invoice's ``rule``
    less what the lines it is compared with were presented at (net of a commitment's
    presented draw, ``drawn``), never below zero — so that a period short of its minimum is
    invoiced the minimum exactly, whatever rounding each line did (20.00, not 19.98 or
    20.03). The exact shortfall stays ``amount_precise``; what presenting moved from it is
    the invoice's rounding (``@Rounding``), as any line's is."""
    owed = to_minor_unit(Decimal(shortfall.metadata["minimum"]), currency, rule)
    presented = sum((line.amount for line in compared), ZERO) - drawn
    shortfall.amount = max(owed - presented, ZERO)


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
    place of the stored phases, the plan in force and the counters; nothing else differs.
    A commitment's lines are ``invoicing.commitments``' (imported here: it builds on this
    module's lines and slices)."""
    from invoicing import commitments

    currency = subscription.plan.currency
    if phases is None:
        phases = _phases(subscription, period_end)  # read once for the fees and the usage
    # The rounding rule of the plan in force at the period's end, as for its usage: its
    # explicit rule, else its currency's, else half even (one decision, invoicing.money).
    rule = rounding_rule_for(
        plan_rounding=(phases[-1].plan if phases else subscription.plan).rounding,
        currency=currency,
    )
    if base_fees is None:
        base_fees = period_base_fee_lines(subscription, period_start, period_end, phases)
    usage, usage_charged = usage_lines(
        subscription, period_start, period_end, currency, phases, terms=terms, counters=counters
    )
    lines = [*base_fees, *usage]
    charge_shortfalls = minimum_lines(
        subscription, period_start, period_end, currency, phases, lines, terms=terms
    )
    lines += charge_shortfalls
    commitment = commitments.commitment_lines(
        subscription,
        period_start,
        period_end,
        currency,
        phases,
        lines,
        prepaid=commitments.prepaid_for(subscription, period_start),
    )
    counted = list(lines)  # what the plan's minimum is compared with (net of the draw)
    plan_shortfalls = minimum_lines(
        subscription,
        period_start,
        period_end,
        currency,
        phases,
        lines,
        terms=terms,
        drawn=commitment.drawn,
    )
    lines += plan_shortfalls
    lines += commitment.lines
    for line in lines:
        line.amount = to_minor_unit(line.amount_precise, currency, rule)
    for shortfall in charge_shortfalls:
        present_shortfall(
            shortfall, [ln for ln in usage if ln.meter_id == shortfall.meter_id], currency, rule
        )
    if commitment.lines:
        commitments.round_commitment(commitment, currency, rule)
    drawn = -commitment.draw.amount if commitment.draw is not None else ZERO
    for shortfall in plan_shortfalls:
        present_shortfall(shortfall, counted, currency, rule, drawn=drawn)
    return taxed_draft(
        subscription.customer,
        currency,
        lines,
        rule,
        usage_charged=usage_charged,
        fees_precise=sum((line.amount_precise for line in lines if line.fee), ZERO)
        + sum((line.amount_precise for line in base_fees), ZERO),
        commitment_breakage=commitment.breakage,
        commitment_deferred=-commitment.released,
    )


def taxed_draft(
    customer: Customer,
    currency: str,
    lines: list[LineDraft],
    rule: str,
    *,
    usage_charged: Decimal,
    fees_precise: Decimal,
    commitment_breakage: Decimal = ZERO,
    commitment_deferred: Decimal = ZERO,
) -> InvoiceDraft:
    """The draft of presented ``lines``: their subtotal, the customer's tax on it rounded
    by ``rule``, the total (the period's invoice and a commitment's invoiced in advance)."""
    subtotal = sum((line.amount for line in lines), ZERO)
    rate = tax_rate_for(customer)
    percentage = rate.percentage if rate is not None else ZERO
    tax = to_minor_unit(subtotal * percentage / HUNDRED, currency, rule)
    return InvoiceDraft(
        currency=currency,
        lines=lines,
        subtotal=subtotal,
        tax_name=rate.name if rate is not None else "",
        tax_percentage=percentage,
        tax=tax,
        total=subtotal + tax,
        usage_charged=usage_charged,
        fees_precise=fees_precise,
        rounding_rule=rule,
        commitment_breakage=commitment_breakage,
        commitment_deferred=commitment_deferred,
    )
