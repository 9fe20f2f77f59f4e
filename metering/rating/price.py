"""Pricing moves: what one event does to one period counter (``_move``) — the counter's
new quantity, its exact worth and the rounded charge — with the catalog-priced delta (the
provider's cost × (1 + margin)) and the margin a customer's overrides give."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext
from operator import attrgetter
from typing import Any, NamedTuple

from billing.models import (
    Aggregation,
    ConsumptionModel,
    Meter,
)
from metering import catalog
from metering.charges import ChargeTerms
from metering.rating.base import EXACT_QUANTUM, LEDGER_QUANTUM, ROUNDING, ZERO
from metering.rating.prepare import Prepared, _quantity
from metering.rating.terms import PlanTerms


@dataclass(slots=True)
class Counter:
    """A PeriodUsage row being moved by this batch (slots: a part moves a few an event)."""

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


_UNIQUE_COUNT = Aggregation.UNIQUE_COUNT.value  # asked per event and meter: a str


def _distinct_keys(p: Prepared) -> list[tuple[int, str]]:
    """The (meter id, key) of each value the event's unique_count meters would count: what
    rating looks up in PeriodDistinctValue before pricing it (more than it will count, if a
    filter or the plan then leaves a meter out; an unreadable value has no key)."""
    keys = []
    for meter in p.meters:
        if meter.aggregation == _UNIQUE_COUNT:
            value = _quantity(meter, p, charged=False)
            if value is not None:
                keys.append((meter.pk, _distinct_key(value)))
    return keys


def _margin(terms: ChargeTerms, overrides: dict[int | None, Decimal]) -> Decimal:
    margin = overrides.get(terms.meter_id, overrides.get(None, terms.margin_percent))
    return margin if margin is not None else ZERO


# How a counter's events are priced (``Pricer.how``): not at all (no charge, or a trial),
# in credits, from the catalog (the provider's cost × (1 + margin)), or by the charge's worth.
FREE, IN_CREDITS, FROM_CATALOG, BY_WORTH = range(4)
TOKEN_FIELDS = {
    "input": "input_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write": "cache_write_tokens",
    "output": "output_tokens",
}


class Pricer:
    """How the events of one counter are priced under one plan: what does not change from
    event to event — the charge, how it prices, the included quantity, the catalog's token
    kinds and the margin's factor — resolved once per counter of a rating part instead of
    once per event, and the worth of the counter's quantity kept from one event to the next
    (an event that takes the quantity from q₀ to q₁ costs ``worth(q₁) − worth(q₀)``; its
    q₀ is the q₁ of the counter's previous accepted event, so one ``worth`` an event, not
    two). ``step`` prices one reading against the counter as it stands: the same figures,
    to the last digit, as one event rated alone (tier and allowance crossings included,
    since every step is a difference of the same exact worths)."""

    __slots__ = (
        "_worth",
        "_worth_at",
        "adds",
        "aggregation",
        "charge",
        "counter",
        "factor",
        "how",
        "included",
        "kinds",
        "latest",
        "meter",
        "one_kind",
        "one_token_field",
        "token_fields",
        "tokens_of",
        "units_per_credit",
        "worths_of",
    )

    def __init__(
        self,
        counter: Counter,
        meter: Meter,
        terms: PlanTerms,
        in_trial: bool,
        overrides: dict[int | None, Decimal],
        rules: dict[tuple, _Rule] | None = None,
    ) -> None:
        """``rules``: a cache of what a Pricer resolves, shared by the Pricers of one
        rating part (its meters and plans are the same objects throughout; a part makes a
        Pricer per counter, of a few meters and plans)."""
        self.counter = counter
        self._worth_at: Decimal | None = None
        self._worth = ZERO
        # what decides the rule: the meter, the plan, the trial and the margin override
        key = (meter.id, terms.plan_id, in_trial, overrides.get(meter.id, overrides.get(None)))
        rule = rules.get(key) if rules is not None else None
        if rule is None:
            rule = _rule(meter, terms, in_trial, overrides)
            if rules is not None:
                rules[key] = rule
        (  # the rule's fields, in its order
            self.meter,
            self.aggregation,
            self.charge,
            self.included,
            self.units_per_credit,
            self.kinds,
            self.token_fields,
            self.factor,
            self.how,
            self.tokens_of,
            self.worths_of,
            self.adds,
            self.latest,
            self.one_token_field,
            self.one_kind,
        ) = rule

    def step(
        self, reading: Any, prepared: Prepared
    ) -> tuple[Decimal, Decimal, Decimal, str | None, Decimal]:
        """What the event does to the counter: (quantity, exact amount, rounded amount,
        the distinct value it counts now or None, its included quantity) after it."""
        counter = self.counter
        q0 = counter.quantity
        distinct_value = None
        if self.adds:
            q1 = q0 + reading
        else:
            aggregation = self.aggregation
            if aggregation == Aggregation.MAX:
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
        charge = self.charge
        if charge is None:
            return q1, counter.amount, counter.charged, distinct_value, ZERO
        included = self.included
        # min(q1, included) - min(q0, included), said without two calls (the same operand
        # kept on a tie, as min keeps the first)
        included_delta = (included if included < q1 else q1) - (included if included < q0 else q0)
        how = self.how
        if how == FROM_CATALOG:
            amount_delta = self._catalog_delta(q0, q1, prepared)
        elif how == BY_WORTH:
            w0 = self._worth if self._worth_at is q0 else charge.worth(q0)
            w1 = charge.worth(q1)
            self._worth_at, self._worth = q1, w1
            amount_delta = w1 - w0
        elif how == FREE:
            amount_delta = ZERO
        else:
            amount_delta = (charge.billable(q1) - charge.billable(q0)) / self.units_per_credit
        # exact() and ledger_round(), inline: two calls an event and counter fewer
        amount = (counter.amount + amount_delta).quantize(EXACT_QUANTUM, context=ROUNDING)
        return (
            q1,
            amount,
            amount.quantize(LEDGER_QUANTUM, context=ROUNDING),
            distinct_value,
            included_delta,
        )

    def _catalog_delta(self, q0: Decimal, q1: Decimal, prepared: Prepared) -> Decimal:
        cost = prepared.cost
        if cost is None:
            return ZERO  # not an LLM event: nothing to price from the catalog
        one = self.one_token_field
        if one is not None:
            tokens = getattr(prepared.usage, one)
        else:
            tokens = sum(self.tokens_of(prepared.usage))
        # charge.billable(q1) - charge.billable(q0), inline (max keeps its first on a tie)
        included = self.included
        b1 = q1 - included
        b0 = q0 - included
        billable = (ZERO if ZERO > b1 else b1) - (ZERO if ZERO > b0 else b0)
        if tokens == 0 or billable <= 0:
            return ZERO
        one = self.one_kind
        if one is not None:
            worth = ZERO + getattr(cost, one)  # sum((w,), ZERO), its one addition
        else:
            worth = sum(self.worths_of(cost), ZERO)
        if billable != tokens:  # the event straddles the included quantity
            with localcontext(prec=80):
                worth = worth * billable / tokens
        return worth * self.factor


class _Rule(NamedTuple):
    """What a Pricer of a meter under a plan's terms resolves once (``_rule``)."""

    meter: Meter
    aggregation: str
    charge: ChargeTerms | None
    included: Decimal  # the charge's included quantity
    units_per_credit: Decimal
    kinds: tuple[str, ...]  # the catalog's kinds the meter's property sums
    token_fields: tuple[str, ...]  # their token fields
    factor: Decimal  # 1 + the margin
    how: int  # FREE, IN_CREDITS, FROM_CATALOG or BY_WORTH
    tokens_of: Callable[[Any], tuple]
    worths_of: Callable[[Any], tuple]
    adds: bool  # a sum or count adds the reading (the common step)
    latest: bool  # the latest reading is kept
    one_token_field: str | None  # one token kind, read alone
    one_kind: str | None


def _rule(
    meter: Meter, terms: PlanTerms, in_trial: bool, overrides: dict[int | None, Decimal]
) -> _Rule:
    charge = terms.charges.get(meter.pk)
    kinds: tuple[str, ...] = ()
    token_fields: tuple[str, ...] = ()
    factor = ZERO
    if charge is None or in_trial:
        how = FREE
    elif terms.consumption_model == ConsumptionModel.CREDITS:
        assert terms.units_per_credit is not None, "a credits plan has units per credit"
        how = IN_CREDITS
    elif charge.catalog_priced:
        how = FROM_CATALOG
        kinds = tuple(catalog.CATALOG_KINDS[meter.property])
        token_fields = tuple(TOKEN_FIELDS[k] for k in kinds if k in TOKEN_FIELDS)
        factor = 1 + _margin(charge, overrides) / 100
    else:
        how = BY_WORTH
    aggregation = meter.aggregation
    return _Rule(
        meter=meter,
        aggregation=aggregation,
        charge=charge,
        included=charge.included_quantity if charge is not None else ZERO,
        units_per_credit=terms.units_per_credit or ZERO,
        kinds=kinds,
        token_fields=token_fields,
        factor=factor,
        how=how,
        tokens_of=_values_of(token_fields),
        worths_of=_values_of(kinds),
        adds=aggregation in (Aggregation.SUM, Aggregation.COUNT),
        latest=aggregation == Aggregation.LATEST,
        one_token_field=token_fields[0] if len(token_fields) == 1 else None,
        one_kind=kinds[0] if len(kinds) == 1 else None,
    )


@functools.cache
def _values_of(names: tuple[str, ...]) -> Callable[[Any], tuple]:
    """A function giving an object's attributes of these names, as a tuple, in order (an
    ``attrgetter``: a step sums them per event, and a generator of ``getattr`` cost more
    than the sum, py-spy); one per tuple of names (a part makes a Pricer per counter, and
    the catalog's kinds are a few fixed tuples)."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


def _move(
    counter: Counter,
    meter: Meter,
    reading: Any,
    prepared: Prepared,
    terms: PlanTerms,
    in_trial: bool,
    overrides: dict[int | None, Decimal],
) -> Move:
    """One event's move of one counter, priced alone (estimates): ``Pricer.step``."""
    pricer = Pricer(counter, meter, terms, in_trial, overrides)
    quantity, amount, charged, distinct_value, included_delta = pricer.step(reading, prepared)
    return Move(
        counter=counter,
        meter=meter,
        quantity=quantity,
        amount=amount,
        charged=charged,
        distinct_value=distinct_value,
        quantity_delta=quantity - counter.quantity,
        included_delta=included_delta,
        amount_delta=amount - counter.amount,
    )
