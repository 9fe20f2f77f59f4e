"""Usage previews of a model price change (``invoicing.preview``): the days a catalog row
priced, priced again at new prices, per customer and model. Writes nothing.

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

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from billing.models import (
    ConsumptionModel,
    Customer,
    MarginOverride,
    Meter,
    Subscription,
    SubscriptionPhase,
)
from invoicing import errors
from invoicing.preview.common import (
    HUNDRED,
    ZERO,
    PreviewUnsupported,
    Totals,
    margin_of,
    read_only,
    totals_of,
)
from metering import catalog, rating
from metering import errors as metering_errors
from metering.models import ModelPrice, ModelUsage
from metering.rating.base import exact

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
        return totals_of((r.currency, r.old_amount, r.new_amount) for r in self.rows)

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
                margin = margin_of(charge, overrides.get(customer_id, {}))
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
