"""Usage previews: a past period priced again under a draft plan version or a changed model
price, beside what it was priced at, per customer — before anything is published.

Nothing is written. Every preview runs in a transaction that PostgreSQL is told is read only
(``SET TRANSACTION READ ONLY``: any INSERT, UPDATE or DELETE, ours or a trigger's, is
refused) and that is rolled back at the end. The figures come from the usage counters, never
from raw events:

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

``preview_model_price(price=…, prices=…)``
    For one catalog row (a model's price version) and new prices per kind: per customer and
    model, the tokens the ``ModelUsage`` counters hold for the days that row priced, their
    provider cost again at the new prices, and the price of the customer's catalog-priced
    charges moved by that cost × (1 + margin) — the charges of the plan version in force on
    each counter row's day (the subscription's phase then, not its plan now; a day with a
    plan change inside it is priced with the later version and marked approximate). Exact
    for prices without long-context tiers or
    time-of-day windows (refused: those depend on each request) when the charge's allowance
    was used up before the period; otherwise marked approximate. Cost: one pass over the
    counter rows of the range (keyset by id), a few queries per customer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, localcontext
from typing import Any

from django.db import connection, transaction

from billing.models import (
    ConsumptionModel,
    Customer,
    MarginOverride,
    Meter,
    Plan,
    Subscription,
    SubscriptionPhase,
)
from billing.services import PlanSpec, validate_plan_spec
from invoicing import errors
from invoicing.models import FINAL_STATUSES, Invoice, InvoiceKind, InvoiceStatus
from invoicing.money import to_minor_unit
from invoicing.selectors import InvoiceDraft, compute_invoice
from metering import catalog, rating
from metering import errors as metering_errors
from metering.charges import ChargeTerms, Tier
from metering.models import ModelPrice, ModelUsage, PeriodUsage
from metering.rating.base import exact, ledger_round

ZERO = Decimal(0)
HUNDRED = Decimal(100)
BATCH = 500
MAX_SUBSCRIPTIONS = 10_000  # one preview; a larger book is previewed per customer


class PreviewUnsupported(errors.InvoicingError):
    code = "preview_unsupported"
    http_status = 422


@contextmanager
def read_only() -> Iterator[None]:
    """A transaction (a savepoint inside one) in which PostgreSQL refuses every write, rolled
    back when it ends: what runs inside cannot change the database, whatever it calls."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION READ ONLY")
        try:
            yield
        finally:
            transaction.set_rollback(True)


# --- results -------------------------------------------------------------------------------


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
class Totals:
    currency: str
    customers: int = 0
    old: Decimal = ZERO
    new: Decimal = ZERO

    @property
    def delta(self) -> Decimal:
        return self.new - self.old


@dataclass
class PlanPreview:
    code: str
    rows: list[CustomerChange]
    skipped: list[tuple[str, str]]  # (customer external_id, why)
    truncated: bool = False

    @property
    def totals(self) -> list[Totals]:
        return _totals((r.currency, r.old_total, r.new_total) for r in self.rows)


def _totals(figures) -> list[Totals]:
    by: dict[str, Totals] = {}
    for currency, old, new in figures:
        t = by.setdefault(currency, Totals(currency))
        t.customers += 1
        t.old += old
        t.new += new
    return [by[c] for c in sorted(by)]


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
        tiers = tuple(Tier(t.up_to, t.unit_price, t.flat_fee) for t in charge.tiers)
        charges[meter.pk] = ChargeTerms(
            meter_id=meter.pk,
            price_model=charge.price_model,
            included_quantity=charge.included_quantity,
            unit_price=charge.unit_price,
            package_size=charge.package_size,
            tiers=tiers,
            margin_percent=charge.margin_percent,
            catalog_priced=charge.margin_percent is not None
            and meter.property in catalog.CATALOG_KINDS
            and not tiers
            and charge.unit_price == 0,
        )
    terms = rating.PlanTerms(
        plan_id=0,
        currency=spec.currency,
        interval=spec.interval,
        consumption_model=spec.consumption_model,
        units_per_credit=spec.units_per_credit,
        charges=charges,
        interval_count=spec.interval_count,
    )
    return terms, {m.pk: m for m in meters.values()}


def _margin(charge: ChargeTerms | None, overrides: dict[int | None, Decimal]) -> Decimal:
    if charge is None:
        return ZERO
    margin = overrides.get(charge.meter_id, overrides.get(None, charge.margin_percent))
    return margin if margin is not None else ZERO


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
    old_factor = 1 + _margin(old, overrides) / HUNDRED
    new_factor = 1 + _margin(new, overrides) / HUNDRED
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
    counters = list(
        PeriodUsage.objects.filter(subscription=subscription, period_start=start)
        .select_related("meter")
        .order_by("meter_id")
    )
    old_terms = rating.plan_terms(plan_at_end.pk)
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
        draft_plan = Plan(
            code=spec.code,
            version=0,
            name=spec.name,
            currency=spec.currency,
            interval=spec.interval,
            interval_count=spec.interval_count,
            base_fee=spec.base_fee,
            consumption_model=spec.consumption_model,
            units_per_credit=spec.units_per_credit,
            # the draft's own terms, not the current version's (its minimums, its rounding,
            # its commitment: compute_invoice reads them from the phase's plan)
            rounding=spec.rounding,
            minimum_amount=spec.minimum_amount,
            commitment_amount=spec.commitment_amount,
            commitment_billing=spec.commitment_billing,
        )
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


# --- a model price change --------------------------------------------------------------------

PRICE_COLUMNS = (*catalog.TOKEN_COLUMNS, "requests_kcount")


@dataclass
class ModelChange:
    customer: str
    name: str
    provider: str
    model: str
    currency: str
    events: int
    tokens: int
    old_cost: Decimal  # USD, exact
    new_cost: Decimal
    old_amount: Decimal  # what the customer was charged, exact
    new_amount: Decimal
    note: str = ""

    @property
    def delta(self) -> Decimal:
        return self.new_amount - self.old_amount

    @property
    def cost_delta(self) -> Decimal:
        return self.new_cost - self.old_cost

    @property
    def approximate(self) -> bool:
        return bool(self.note)


@dataclass
class PricePreview:
    price: ModelPrice
    start: datetime
    end: datetime
    rows: list[ModelChange]
    notes: list[str] = field(default_factory=list)

    @property
    def totals(self) -> list[Totals]:
        return _totals((r.currency, r.old_amount, r.new_amount) for r in self.rows)

    @property
    def cost_delta(self) -> Decimal:
        return sum((r.cost_delta for r in self.rows), ZERO)


def last_month(now: datetime | None = None) -> tuple[datetime, datetime]:
    """The last whole calendar month (UTC), half-open."""
    now = now or datetime.now(UTC)
    end = datetime(now.year, now.month, 1, tzinfo=UTC)
    previous = end - timedelta(days=1)
    return datetime(previous.year, previous.month, 1, tzinfo=UTC), end


def _first_day(moment: datetime) -> date:
    """The first UTC day whose start is at or after ``moment``."""
    moment = moment.astimezone(UTC)
    day = moment.date()
    return day if moment.time() == time(0) else day + timedelta(days=1)


def _token_deltas(usage: Any, old: catalog.UnitPrices, new: catalog.UnitPrices) -> dict:
    """The change in provider cost of one counter row, per catalog kind."""
    plain_output = usage["output_tokens"] - usage["reasoning_tokens"]
    return {
        "input": usage["input_tokens"] * (new.input - old.input),
        "cache_read": usage["cache_read_tokens"] * (new.cache_read - old.cache_read),
        "cache_write": usage["cache_write_tokens"] * (new.cache_write - old.cache_write),
        "output": plain_output * (new.output - old.output)
        + usage["reasoning_tokens"] * (new.reasoning - old.reasoning),
        "requests": usage["event_count"] * (new.per_request - old.per_request),
    }


def _cost_at(usage: Any, p: catalog.UnitPrices) -> Decimal:
    plain_output = usage["output_tokens"] - usage["reasoning_tokens"]
    return (
        usage["input_tokens"] * p.input
        + usage["cache_read_tokens"] * p.cache_read
        + usage["cache_write_tokens"] * p.cache_write
        + plain_output * p.output
        + usage["reasoning_tokens"] * p.reasoning
        + usage["event_count"] * p.per_request
    )


_USAGE_FIELDS = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "event_count",
)


def preview_model_price(
    *,
    price: ModelPrice,
    prices: dict[str, Decimal | None],
    start: datetime | None = None,
    end: datetime | None = None,
    customer: Customer | None = None,
) -> PricePreview:
    """The days in [start, end) that catalog row ``price`` priced, priced again with
    ``prices`` (per million tokens, per thousand requests; a missing kind keeps its price):
    per customer and model, the provider cost and the customer's price before and after.
    Writes nothing."""
    unknown = set(prices) - set(PRICE_COLUMNS)
    if unknown:
        raise errors.InvoicingValidation(
            f"unknown price {', '.join(sorted(unknown))}", param=sorted(unknown)[0]
        )
    for column, value in prices.items():
        if value is not None and value < 0:
            raise errors.InvoicingValidation("prices cannot be negative", param=column)
    if price.tiers or price.time_windows:
        raise PreviewUnsupported(
            f"{price}: long-context tiers or time-of-day prices depend on each request, which "
            "the usage counters do not keep; this preview prices linear prices only",
            param="price",
        )
    if start is None or end is None:
        start, end = last_month()
    if end <= start:
        raise errors.InvoicingValidation("to must be after from", param="to")
    with read_only():
        draft = ModelPrice(**{c: getattr(price, c) for c in PRICE_COLUMNS})
        for column, value in prices.items():
            setattr(draft, column, value)
        old_p, new_p = catalog.unit_prices(price, 0), catalog.unit_prices(draft, 0)
        notes: list[str] = []
        later = (
            ModelPrice.objects.filter(
                provider=price.provider, model=price.model, effective_from__gt=price.effective_from
            )
            .order_by("effective_from")
            .values_list("effective_from", flat=True)
            .first()
        )
        # the days this version priced, within the range (whole UTC days: the counters' grain)
        from_day = _first_day(max(start, price.effective_from))
        until_day = _first_day(min(end, later) if later is not None else end)
        if price.effective_from.astimezone(UTC).time() != time(0) and start < price.effective_from:
            notes.append(
                f"the version took effect at {price.effective_from:%Y-%m-%d %H:%M} UTC, inside "
                "a day; that day is left out (the counters are per day)"
            )
        if price.cache_write_1h_mtok is not None or draft.cache_write_1h_mtok is not None:
            notes.append("one-hour cache writes are counted with cache writes (counter grain)")
        rows: list[ModelChange] = []
        if from_day >= until_day:
            return PricePreview(price, start, end, rows, notes)
        names = [
            (provider, model)
            for provider, model in ModelUsage.objects.filter(day__gte=from_day, day__lt=until_day)
            .values_list("provider", "model")
            .distinct()
            if _prices_with(provider, model, price)
        ]
        if not names:
            return PricePreview(price, start, end, rows, notes)
        usage = ModelUsage.objects.filter(
            day__gte=from_day,
            day__lt=until_day,
            provider__in={p for p, _ in names},
            model__in={m for _, m in names},
        )
        if customer is not None:
            usage = usage.filter(customer=customer)
        grouped: dict[tuple[int, int, str, str, str], dict[str, Any]] = {}
        phases: dict[int, list[tuple[datetime, datetime | None, int]]] = {}
        last_id = 0
        while True:  # keyset by id: one pass over the range's counter rows
            batch = list(
                usage.filter(pk__gt=last_id)
                .order_by("pk")
                .values(
                    "pk",
                    "customer_id",
                    "subscription_id",
                    "provider",
                    "model",
                    "currency",
                    "amount",
                    "cost",
                    "day",
                    *_USAGE_FIELDS,
                )[:2000]
            )
            if not batch:
                break
            last_id = batch[-1]["pk"]
            _load_phases(phases, {row["subscription_id"] for row in batch} - phases.keys())
            for row in batch:
                if (row["provider"], row["model"]) not in names:
                    continue
                key = (
                    row["customer_id"],
                    row["subscription_id"],
                    row["provider"],
                    row["model"],
                    row["currency"],
                )
                into = grouped.setdefault(
                    key,
                    {
                        "amount": ZERO,
                        "cost": ZERO,
                        **dict.fromkeys(_USAGE_FIELDS, 0),
                        "plans": {},
                        "unknown_days": set(),
                    },
                )
                for name in ("amount", "cost", *_USAGE_FIELDS):
                    into[name] += row[name]
                # the plan in force on the row's day: its charges priced the row
                plan_id, known = _plan_on(phases[row["subscription_id"]], row["day"])
                if not known:
                    into["unknown_days"].add(row["day"])
                part = into["plans"].setdefault(plan_id, dict.fromkeys(_USAGE_FIELDS, 0))
                for name in _USAGE_FIELDS:
                    part[name] += row[name]
        rows = _price_rows(grouped, old_p, new_p)
        rows.sort(key=lambda r: (r.customer, r.provider, r.model, r.currency))
        return PricePreview(price, start, end, rows, notes)


def _load_phases(
    into: dict[int, list[tuple[datetime, datetime | None, int]]], subscription_ids: set[int]
) -> None:
    """The phases (plan versions in force) of ``subscription_ids``, in time order."""
    if not subscription_ids:
        return
    for subscription_id in subscription_ids:
        into[subscription_id] = []
    for subscription_id, starts_at, ends_at, plan_id in (
        SubscriptionPhase.objects.filter(subscription_id__in=subscription_ids)
        .order_by("starts_at", "id")
        .values_list("subscription_id", "starts_at", "ends_at", "plan_id")
    ):
        into[subscription_id].append((starts_at, ends_at, plan_id))


def _plan_on(
    phases: list[tuple[datetime, datetime | None, int]], day: date
) -> tuple[int | None, bool]:
    """The plan version in force on UTC ``day`` and whether it is the only one that day. A
    day with two versions (a change inside it) gives the later one, not known: the counter
    row does not say which tokens each priced. No phase at all: None, not known."""
    day_start = datetime.combine(day, time(0), tzinfo=UTC)
    day_end = day_start + timedelta(days=1)
    plans = [
        plan_id
        for starts_at, ends_at, plan_id in phases
        if starts_at < day_end and (ends_at is None or ends_at > day_start)
    ]
    if not plans:
        return None, False
    return plans[-1], len(set(plans)) == 1


def _prices_with(provider: str, model: str, price: ModelPrice) -> bool:
    """Does the catalog price this model name with ``price``'s model (any version)?"""
    try:
        found = catalog.find_price(provider=provider, model=model, at=price.effective_from)
    except metering_errors.UnknownModel:  # not in the catalog (any more): not this row's
        return False
    return (found.provider, found.model) == (price.provider, price.model)


def _price_rows(grouped, old_p: catalog.UnitPrices, new_p: catalog.UnitPrices):
    customers = {
        c.pk: c
        for c in Customer.objects.filter(pk__in={key[0] for key in grouped}).only(
            "pk", "external_id", "name"
        )
    }
    plans = dict(
        Subscription.objects.filter(pk__in={key[1] for key in grouped}).values_list("pk", "plan")
    )
    meters = {m.pk: m for m in Meter.objects.all()}
    overrides: dict[int, dict[int | None, Decimal]] = {}
    for customer_id, meter_id, margin in MarginOverride.objects.filter(
        customer_id__in=customers
    ).values_list("customer_id", "meter_id", "margin_percent"):
        overrides.setdefault(customer_id, {})[meter_id] = margin
    rows = []
    for (customer_id, subscription_id, provider, model, currency), usage in grouped.items():
        deltas = _token_deltas(usage, old_p, new_p)
        price_delta = ZERO
        note = ""
        # each day's tokens priced by the charges of the plan version in force that day
        for plan_id, part in usage["plans"].items():
            terms = rating.plan_terms(plan_id if plan_id is not None else plans[subscription_id])
            if terms.consumption_model == ConsumptionModel.CREDITS:
                continue
            part_deltas = _token_deltas(part, old_p, new_p)
            for charge in terms.charges.values():
                if not charge.catalog_priced:
                    continue
                meter = meters[charge.meter_id]
                kinds = catalog.CATALOG_KINDS[meter.property]
                margin = _margin(charge, overrides.get(customer_id, {}))
                price_delta += sum((part_deltas[k] for k in kinds), ZERO) * (1 + margin / HUNDRED)
                if charge.included_quantity or meter.filters:
                    note = "the charge has an allowance or filters: tokens inside them counted"
        if usage["unknown_days"]:
            first = min(usage["unknown_days"])
            note = note or (
                f"the plan changed inside a day ({first:%Y-%m-%d}"
                f"{' and others' if len(usage['unknown_days']) > 1 else ''}) or is not known for "
                "it: that day is priced with the later version's charges"
            )
        old_cost = usage["cost"]
        recomputed = _cost_at(usage, old_p)
        if abs(recomputed - old_cost) > Decimal("1e-9") * (usage["event_count"] + 1):
            note = note or (
                f"the counters' cost {old_cost:f} is not these tokens at this version's prices "
                f"({recomputed:f}): other versions or request-dependent prices priced part"
            )
        customer = customers[customer_id]
        rows.append(
            ModelChange(
                customer=customer.external_id,
                name=customer.name,
                provider=provider,
                model=model,
                currency=currency,
                events=usage["event_count"],
                tokens=usage["input_tokens"]
                + usage["cache_read_tokens"]
                + usage["cache_write_tokens"]
                + usage["output_tokens"],
                old_cost=old_cost,
                new_cost=exact(old_cost + sum(deltas.values(), ZERO)),
                old_amount=usage["amount"],
                new_amount=exact(usage["amount"] + price_delta),
                note=note,
            )
        )
    return rows
