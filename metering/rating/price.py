"""Pricing moves: what one event does to one period counter (``_move``) — the counter's
new quantity, its exact worth and the rounded charge — with the catalog-priced delta (the
provider's cost × (1 + margin)) and the margin a customer's overrides give."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any

from billing.models import (
    Aggregation,
    ConsumptionModel,
    Meter,
)
from metering import catalog
from metering.charges import ChargeTerms
from metering.rating.base import ZERO, exact, ledger_round
from metering.rating.prepare import Prepared, _quantity
from metering.rating.terms import PlanTerms


@dataclass
class Counter:
    """A PeriodUsage row being moved by this batch."""

    subscription_id: int
    meter_id: int
    period_start: datetime
    period_end: datetime
    quantity: Decimal = ZERO
    amount: Decimal = ZERO
    charged: Decimal = ZERO
    currency: str = ""
    event_count: int = 0
    # unique_count: of the values this batch reads, those the period has counted already
    # (looked up in PeriodDistinctValue) or counts now; a period's other values are not read
    distinct_values: set[str] = field(default_factory=set)
    new_values: list[str] = field(default_factory=list)  # counted now: rows to insert
    latest_at: datetime | None = None
    changed: bool = False


@dataclass
class Move:
    """What one event does to one counter (applied only if the event is accepted)."""

    counter: Counter
    meter: Meter
    quantity: Decimal
    amount: Decimal
    charged: Decimal
    distinct_value: str | None  # unique_count: the value counted now, by its key
    quantity_delta: Decimal
    included_delta: Decimal
    amount_delta: Decimal


def _distinct_key(value: Any) -> str:
    """One text per distinct value, whatever its JSON spelling: 1, 1.0 and 1e0 are one
    number; true, 1 and "1" are three values."""
    if isinstance(value, bool):
        return f"b:{str(value).lower()}"
    if isinstance(value, int | Decimal):
        number = Decimal(value).normalize()
        return f"n:{number:f}"
    return f"s:{value}"


def _distinct_keys(p: Prepared) -> list[tuple[int, str]]:
    """The (meter id, key) of each value the event's unique_count meters would count: what
    rating looks up in PeriodDistinctValue before pricing it (more than it will count, if a
    filter or the plan then leaves a meter out; an unreadable value has no key)."""
    keys = []
    for meter in p.meters:
        if meter.aggregation == Aggregation.UNIQUE_COUNT:
            value = _quantity(meter, p, charged=False)
            if value is not None:
                keys.append((meter.pk, _distinct_key(value)))
    return keys


def _margin(terms: ChargeTerms, overrides: dict[int | None, Decimal]) -> Decimal:
    margin = overrides.get(terms.meter_id, overrides.get(None, terms.margin_percent))
    return margin if margin is not None else ZERO


def _move(
    counter: Counter,
    meter: Meter,
    reading: Any,
    prepared: Prepared,
    terms: PlanTerms,
    in_trial: bool,
    overrides: dict[int | None, Decimal],
) -> Move:
    q0 = counter.quantity
    distinct_value = None
    aggregation = meter.aggregation
    if aggregation in (Aggregation.SUM, Aggregation.COUNT):
        q1 = q0 + reading
    elif aggregation == Aggregation.MAX:
        q1 = max(q0, reading)
    elif aggregation == Aggregation.LATEST:
        newer = counter.latest_at is None or prepared.source.timestamp >= counter.latest_at
        q1 = reading if newer else q0
    else:  # unique_count
        canonical = _distinct_key(reading)
        if canonical in counter.distinct_values:
            q1 = q0
        else:
            q1, distinct_value = q0 + 1, canonical
    charge = terms.charges.get(meter.pk)
    amount_delta = ZERO
    included_delta = ZERO
    if charge is not None:
        included_delta = min(q1, charge.included_quantity) - min(q0, charge.included_quantity)
        if not in_trial:
            if terms.consumption_model == ConsumptionModel.CREDITS:
                assert terms.units_per_credit is not None, "a credits plan has units per credit"
                amount_delta = (charge.billable(q1) - charge.billable(q0)) / terms.units_per_credit
            elif charge.catalog_priced:
                amount_delta = _catalog_delta(charge, meter, q0, q1, prepared, overrides)
            else:
                amount_delta = charge.worth(q1) - charge.worth(q0)
    amount = exact(counter.amount + amount_delta)
    return Move(
        counter=counter,
        meter=meter,
        quantity=q1,
        amount=amount,
        charged=ledger_round(amount),
        distinct_value=distinct_value,
        quantity_delta=q1 - q0,
        included_delta=included_delta,
        amount_delta=amount - counter.amount,
    )


def _catalog_delta(charge, meter, q0, q1, prepared, overrides) -> Decimal:
    if prepared.cost is None:
        return ZERO  # not an LLM event: nothing to price from the catalog
    kinds = catalog.CATALOG_KINDS[meter.property]
    tokens = catalog.kind_tokens(prepared.usage, kinds)
    billable = charge.billable(q1) - charge.billable(q0)
    if tokens == 0 or billable <= 0:
        return ZERO
    cost = prepared.cost.of_kinds(kinds)
    if billable != tokens:  # the event straddles the included quantity
        with localcontext(prec=80):
            cost = cost * billable / tokens
    return cost * (1 + _margin(charge, overrides) / 100)
