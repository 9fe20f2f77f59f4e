"""Usage previews of a draft plan version (``invoicing.preview``): a past period priced again
under the draft, beside what it was priced at, per customer. Writes nothing.

``preview_plan_version(spec=…)``
    For each subscription whose plan at the end of its last invoiced period is a version of
    ``spec.code``: that period's invoice — as issued when it is finalized (its stored subtotal,
    tax and total, whatever the tax rates are now), else as ``compute_invoice`` computes it (the
    function the close, finalization and the upcoming invoice share) — and ``compute_invoice``
    again with the draft in place of the plan: the draft's base fee over the same phases, its
    charges priced on the period's counters (``PeriodUsage``: the quantity of each meter). A
    charge priced by its own prices is worth ``worth(quantity)`` under the draft, exactly what
    rating would have recorded. A catalog-priced charge (provider cost × (1 + margin)) is priced
    again from what it recorded: ``amount × (1 + new margin) / (1 + old margin)``, exact while
    its included quantity is unchanged; a changed allowance is priced at the period's average
    cost per unit and marked approximate; a charge that becomes catalog-priced needs each
    event's cost, which the counters do not keep: it keeps its recorded amount and is marked.
    The draft's total is taxed at the issued invoice's rate (a draft invoice: the rate now), so
    the difference is the plan's alone. Cost: about six indexed queries per subscription.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext

from billing.models import (
    ConsumptionModel,
    Customer,
    MarginOverride,
    Meter,
    Plan,
    Subscription,
    SubscriptionPhase,
)
from billing.periods import charge_cadence
from billing.services import PlanSpec, plan_version_of, validate_plan_spec
from invoicing import charge_periods, errors
from invoicing.models import FINAL_STATUSES, Invoice, InvoiceKind, InvoiceStatus
from invoicing.money import to_minor_unit
from invoicing.preview.common import (
    HUNDRED,
    ZERO,
    PreviewUnsupported,
    Totals,
    margin_of,
    read_only,
    totals_of,
)
from invoicing.selectors import InvoiceDraft, compute_invoice
from metering import rating
from metering.charges import ChargeTerms
from metering.models import PeriodUsage
from metering.rating.base import exact, ledger_round

BATCH = 500
MAX_SUBSCRIPTIONS = 10_000  # one preview; a larger book is previewed per customer


class PreviewCadenceMismatch(PreviewUnsupported):
    """The draft bills on another cadence (its interval, or its usage charges' interval)
    than the period previewed was billed on: the period's counters hold other periods'
    usage than the draft would have invoiced, so no figure of theirs is the draft's."""

    code = "preview_cadence_mismatch"


@dataclass
class MeterChange:
    meter: str
    quantity: Decimal
    old_amount: Decimal  # exact, as rated
    new_amount: Decimal  # exact, under the draft
    note: str = ""

    @property
    def delta(self) -> Decimal:
        return self.new_amount - self.old_amount


@dataclass
class CustomerChange:
    customer: str  # external_id
    name: str
    subscription_id: int
    plan: str  # the version priced before, "code vN"
    currency: str
    period_start: datetime
    period_end: datetime
    # the invoice's total, tax included: a finalized invoice's as issued (its stored tax and
    # total), a draft's as computed now; the draft is taxed at the same rate
    old_total: Decimal
    new_total: Decimal
    old_subtotal: Decimal
    new_subtotal: Decimal
    meters: list[MeterChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def delta(self) -> Decimal:
        return self.new_total - self.old_total

    @property
    def approximate(self) -> bool:
        return bool(self.notes)


@dataclass
class PlanPreview:
    code: str
    rows: list[CustomerChange]
    skipped: list[tuple[str, str]]  # (customer external_id, why)
    truncated: bool = False

    @property
    def totals(self) -> list[Totals]:
        return totals_of((r.currency, r.old_total, r.new_total) for r in self.rows)


# --- a draft plan version --------------------------------------------------------------------


def draft_terms(spec: PlanSpec) -> tuple[rating.PlanTerms, dict[int, Meter]]:
    """The draft's terms as rating would read them once published (``plan_terms``), with the
    same rule for which charges the catalog prices; nothing is stored."""
    validate_plan_spec(spec)
    meters = {m.code: m for m in Meter.objects.filter(code__in=[c.meter for c in spec.charges])}
    charges: dict[int, ChargeTerms] = {}
    for i, charge in enumerate(spec.charges):
        meter = meters.get(charge.meter)
        if meter is None:
            raise errors.InvoicingValidation(
                f"meter {charge.meter!r} does not exist", param=f"charges[{i}].meter"
            )
        charges[meter.pk] = rating.charge_terms_of(charge, meter=meter, tiers=charge.tiers)
    terms = rating.PlanTerms(
        plan_id=0,
        currency=spec.currency,
        interval=spec.interval,
        consumption_model=spec.consumption_model,
        units_per_credit=spec.units_per_credit,
        charges=charges,
        llm_event_names=frozenset(
            meters[c.meter].event_name
            for c in spec.charges
            if meters[c.meter].property.startswith("llm.")
        ),
        interval_count=spec.interval_count,
        charges_interval=spec.charges_interval,
        charges_interval_count=spec.charges_interval_count,
    )
    return terms, {m.pk: m for m in meters.values()}


def draft_plan_of(spec: PlanSpec) -> Plan:
    """The draft as the plan version it would be published as (``publish_plan``), not
    saved: every term of the spec, not the current version's — its cadence (the charges'
    one too), its minimums, rounding and commitment — since ``compute_invoice`` and the
    period functions read them from the phase's plan. Its charges are ``draft_terms``'."""
    return plan_version_of(spec, version=0)


def _cadence_text(plan: Plan) -> str:
    """'every year, usage every month' / 'every month': how a plan version bills."""

    def every(interval: str, count: int) -> str:
        return f"every {count} {interval}s" if count != 1 else f"every {interval}"

    text = every(plan.interval, plan.interval_count)
    if plan.charges_interval:
        text += f", usage {every(*charge_cadence(plan))}"
    return text


def _same_cadence(plan: Plan, draft: Plan) -> bool:
    return (plan.interval, plan.interval_count, charge_cadence(plan)) == (
        draft.interval,
        draft.interval_count,
        charge_cadence(draft),
    )


def _own_cadences(terms: rating.PlanTerms) -> dict[int, tuple[str, int]]:
    """The charges billed on their own cadence (meter id → (interval, count))."""
    return {m: (c.interval, c.interval_count) for m, c in terms.charges.items() if c.interval}


def _overrides(customer_id: int) -> dict[int | None, Decimal]:
    return {
        meter_id: margin
        for meter_id, margin in MarginOverride.objects.filter(customer_id=customer_id)
        .order_by("id")
        .values_list("meter_id", "margin_percent")
    }


def _repriced(
    counter: PeriodUsage,
    old: ChargeTerms | None,
    new: ChargeTerms | None,
    terms: rating.PlanTerms,
    in_trial: bool,
    overrides: dict[int | None, Decimal],
) -> tuple[Decimal, str]:
    """What the counter's quantity is worth under the draft's charge, and a note when the
    counters cannot say it exactly."""
    q = counter.quantity
    if new is None or in_trial:
        return ZERO, ""
    if terms.consumption_model == ConsumptionModel.CREDITS:
        assert terms.units_per_credit is not None, "a credits plan has units per credit"
        return exact(new.billable(q) / terms.units_per_credit), ""
    if not new.catalog_priced:
        return exact(new.worth(q)), ""
    if old is None or not old.catalog_priced:
        return counter.amount, (
            "newly catalog-priced: the counters keep no provider cost per meter; kept as rated"
        )
    old_factor = 1 + margin_of(old, overrides) / HUNDRED
    new_factor = 1 + margin_of(new, overrides) / HUNDRED
    with localcontext(prec=80):
        cost = counter.amount / old_factor
        if new.included_quantity == old.included_quantity:
            return exact(cost * new_factor), ""
        old_billable = old.billable(q)
        if old_billable <= 0:
            return counter.amount, "allowance changed and nothing was billable before: kept"
        average = cost / old_billable
        return exact(average * new.billable(q) * new_factor), (
            "allowance changed: priced at the period's average cost per unit"
        )


def _last_invoice(subscription: Subscription) -> Invoice | None:
    return (
        Invoice.objects.filter(subscription=subscription, kind=InvoiceKind.PERIOD)
        .exclude(status=InvoiceStatus.VOID)
        .order_by("-period_start")
        .first()
    )


def _preview_subscription(
    subscription: Subscription,
    spec: PlanSpec,
    terms: rating.PlanTerms,
    draft_plan: Plan,
) -> CustomerChange | str:
    invoice = _last_invoice(subscription)
    if invoice is None:
        return "no invoiced period yet"
    start, end = invoice.period_start, invoice.period_end
    phases = list(
        SubscriptionPhase.objects.filter(subscription=subscription, starts_at__lt=end)
        .select_related("plan")
        .order_by("starts_at", "id")
    )
    plan_at_end = phases[-1].plan if phases else subscription.plan
    if plan_at_end.code != spec.code:
        return f"on {plan_at_end.code} at the end of its last period"
    if plan_at_end.currency != spec.currency:
        return f"billed in {plan_at_end.currency}, the draft in {spec.currency}"
    for billed in (plan_at_end, subscription.plan):
        if not _same_cadence(billed, draft_plan):
            param = (
                "interval"
                if (billed.interval, billed.interval_count)
                != (draft_plan.interval, draft_plan.interval_count)
                else "charges_interval"
            )
            raise PreviewCadenceMismatch(
                f"{subscription.customer.external_id}'s last invoiced period ({start:%Y-%m-%d} "
                f"to {end:%Y-%m-%d}) was billed on {billed.code} v{billed.version}'s cadence "
                f"({_cadence_text(billed)}), the draft bills {_cadence_text(draft_plan)}: the "
                "period's usage counters cannot say what the draft's periods would have cost. "
                "Preview a draft on the same cadence (interval, charges_interval); a "
                "subscription on another version's cadence is previewed against that version",
                param=param,
            )
    old_terms = rating.plan_terms(plan_at_end.pk)
    if _own_cadences(old_terms) != _own_cadences(terms):
        raise PreviewCadenceMismatch(
            f"{subscription.customer.external_id}'s last invoiced period was billed on "
            f"{plan_at_end.code} v{plan_at_end.version}, whose charges on their own interval "
            "differ from the draft's: the counters of one charge period cannot say what the "
            "draft's would have cost. Preview a draft with the same charges' intervals",
            param="charges",
        )
    # the period's counters, and those of the charge periods its invoice carried
    own = charge_periods.own_charge_periods(subscription, old_terms, start, end)
    counters = [
        c
        for c in charge_periods.read_counters(subscription, start, own)
        if charge_periods.role(c, own, start) == charge_periods.INVOICED
    ]
    old: InvoiceDraft = compute_invoice(
        subscription=subscription,
        period_start=start,
        period_end=end,
        phases=phases,
        terms=old_terms,
        counters=counters,
    )
    in_trial = subscription.trial_ends_at is not None and end <= subscription.trial_ends_at
    overrides = _overrides(subscription.customer_id)
    meters: list[MeterChange] = []
    notes: list[str] = []
    new_counters = []
    for counter in counters:
        old_charge = old_terms.charges.get(counter.meter_id)
        new_charge = terms.charges.get(counter.meter_id)
        amount, note = _repriced(counter, old_charge, new_charge, terms, in_trial, overrides)
        if (
            not note
            and old_charge is not None
            and not old_charge.catalog_priced
            and old_terms.consumption_model != ConsumptionModel.CREDITS
            and not in_trial
            and counter.amount != old_charge.worth(counter.quantity)
        ):
            note = (
                "rated at other prices than the plan's for part of the period (a plan change or "
                "a trial inside it); the draft prices all of it"
            )
        was = counter.amount if old_charge is not None else ZERO
        if old_charge is None and new_charge is None:
            continue
        copy = PeriodUsage(
            subscription_id=counter.subscription_id,
            meter=counter.meter,
            period_start=counter.period_start,
            period_end=counter.period_end,
            quantity=counter.quantity,
            amount=amount,
            charged=ledger_round(amount),
            currency=counter.currency,
            event_count=counter.event_count,
        )
        new_counters.append(copy)
        meters.append(MeterChange(counter.meter.code, counter.quantity, was, amount, note))
        if note:
            notes.append(f"{counter.meter.code}: {note}")
    draft_phases = [
        SubscriptionPhase(
            subscription=subscription,
            plan=draft_plan if phase.plan.code == spec.code else phase.plan,
            starts_at=phase.starts_at,
            ends_at=phase.ends_at,
        )
        for phase in phases
    ]
    new = compute_invoice(
        subscription=subscription,
        period_start=start,
        period_end=end,
        phases=draft_phases,
        terms=terms,
        counters=new_counters,
    )
    old_total, old_subtotal, new_total = old.total, old.subtotal, new.total
    if invoice.status in FINAL_STATUSES:
        # The customer got this invoice: "old" is it as issued (its tax at the rate of its
        # day), and the draft is taxed at that same rate, so the difference is the plan's
        # alone, not a tax-rate change made since.
        old_total, old_subtotal = invoice.total, invoice.subtotal
        new_total = new.subtotal + to_minor_unit(
            new.subtotal * invoice.tax_percentage / HUNDRED, invoice.currency, new.rounding_rule
        )
        if old.subtotal != invoice.subtotal:
            notes.append(
                f"the invoice as issued ({invoice.subtotal:f} before tax) is not what the "
                f"counters give now ({old.subtotal:f}): the draft prices the counters"
            )
    return CustomerChange(
        customer=subscription.customer.external_id,
        name=subscription.customer.name,
        subscription_id=subscription.pk,
        plan=f"{plan_at_end.code} v{plan_at_end.version}",
        currency=old.currency,
        period_start=start,
        period_end=end,
        old_total=old_total,
        new_total=new_total,
        old_subtotal=old_subtotal,
        new_subtotal=new.subtotal,
        meters=meters,
        notes=notes,
    )


def preview_plan_version(
    *,
    spec: PlanSpec,
    customer: Customer | None = None,
    max_subscriptions: int = MAX_SUBSCRIPTIONS,
) -> PlanPreview:
    """Each subscription of plan ``spec.code`` (or ``customer``'s), its last invoiced period
    priced as it was and as the draft ``spec`` would have priced it. Writes nothing."""
    with read_only():
        if not Plan.objects.filter(code=spec.code).exists():
            raise errors.InvoicingValidation(f"plan {spec.code!r} does not exist", param="code")
        terms, _ = draft_terms(spec)
        draft_plan = draft_plan_of(spec)
        rows: list[CustomerChange] = []
        skipped: list[tuple[str, str]] = []
        subscriptions = Subscription.objects.filter(
            pk__in=SubscriptionPhase.objects.filter(plan__code=spec.code).values("subscription")
        )
        if customer is not None:
            subscriptions = subscriptions.filter(customer=customer)
        last_id, seen = 0, 0
        while True:  # keyset by id: a bounded batch in memory at a time
            batch = list(
                subscriptions.filter(pk__gt=last_id)
                .select_related("customer", "plan")
                .order_by("pk")[:BATCH]
            )
            if not batch:
                break
            for subscription in batch:
                if seen >= max_subscriptions:
                    return PlanPreview(spec.code, rows, skipped, truncated=True)
                seen += 1
                outcome = _preview_subscription(subscription, spec, terms, draft_plan)
                if isinstance(outcome, str):
                    skipped.append((subscription.customer.external_id, outcome))
                else:
                    rows.append(outcome)
            last_id = batch[-1].pk
        return PlanPreview(spec.code, rows, skipped)
