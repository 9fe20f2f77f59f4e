"""What a plan charge is worth for a quantity: pure, exact functions.

A charge's *billable* quantity is what the period used beyond the charge's included
quantity; tiers count billable units (a tier ``up_to: 100_000_000`` on a charge that
includes 10M is reached at 110M used).

    per_unit    billable × unit_price
    graduated   each tier's units at that tier's price, plus the flat fee of every tier
                reached
    volume      all billable units at the price of the tier the total reached, plus that
                tier's flat fee
    package     unit_price per started block of package_size billable units

A graduated or volume tier with its own ``package_size`` counts the units it prices in
blocks of that size, rounded up (a started block is a whole block), and its unit price is
per block: graduated, the tier's own units (a tier 1,001–3,000 in blocks of 500 prices
1,200 of its units as 3 blocks); volume, all billable units.

Rating prices usage *incrementally*: an event that takes a period's quantity from q₀ to q₁
is worth ``worth(q₁) − worth(q₀)``. Summed over a period this telescopes to the worth of the
whole quantity, so a graduated boundary crossed inside a batch (or inside one event) is
priced on both sides, and the real-time charges add up to exactly what the period's
invoice computes. (Under volume pricing, crossing a boundary can lower the worth of units
already used: that event's increment is negative and is credited back.)
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Tier:
    up_to: Decimal | None
    unit_price: Decimal
    flat_fee: Decimal
    package_size: Decimal | None = None  # unit_price per started block of this many units

    def priced(self, units: Decimal) -> tuple[Decimal, Decimal]:
        """(quantity, amount) of ``units`` in this tier: the quantity counts blocks when the
        tier has a package size (rounded up), units otherwise; the flat fee is included."""
        quantity = units
        if self.package_size is not None:
            quantity = (units / self.package_size).to_integral_value(rounding=ROUND_CEILING)
        return quantity, quantity * self.unit_price + self.flat_fee


@dataclass(frozen=True, slots=True)
class ChargeTerms:
    """The pricing terms of one plan charge, detached from the ORM (plans are immutable, so
    these are cached)."""

    meter_id: int
    price_model: str
    included_quantity: Decimal
    unit_price: Decimal
    package_size: Decimal | None
    tiers: tuple[Tier, ...]
    margin_percent: Decimal | None
    catalog_priced: bool  # priced from the model catalog × (1 + margin)
    flat_fee_at_zero: bool = False  # the first tier's flat fee invoiced without usage
    minimum_amount: Decimal | None = None  # invoiced per period at least (not rated)
    prorated: bool = False  # invoiced prorated for a period billed in part (not rated)
    # Its own cadence (a whole multiple of the billing period): its counter, allowance and
    # tiers span that period ("": the billing period; metering.rating.terms.charge_period)
    interval: str = ""
    interval_count: int = 1

    def zero_usage_fee(self, quantity: Decimal) -> Decimal:
        """The first tier's flat fee when the charge invoices it at zero usage and
        ``quantity`` has no billable unit (Lago's convention). Not rated — rating prices
        units, and there are none — but invoiced by the period's close as a fee."""
        if not self.flat_fee_at_zero or not self.tiers or self.billable(quantity) > 0:
            return ZERO
        return self.tiers[0].flat_fee

    def billable(self, quantity: Decimal) -> Decimal:
        return max(quantity - self.included_quantity, ZERO)

    def worth(self, quantity: Decimal) -> Decimal:
        """The exact worth of a period's ``quantity`` (before the included part is
        subtracted) under the plan's own prices. Not for catalog-priced charges."""
        billable = quantity - self.included_quantity  # self.billable(quantity) when above 0
        if billable <= 0:
            return ZERO
        if self.price_model == "per_unit":
            return billable * self.unit_price
        if self.price_model == "package":
            blocks = self._blocks(billable)
            return blocks * self.unit_price
        if self.price_model == "graduated":
            total, floor = ZERO, ZERO
            for tier in self.tiers:
                top = billable if tier.up_to is None else min(billable, tier.up_to)
                if top <= floor:
                    break
                total += tier.priced(top - floor)[1]
                if tier.up_to is None or billable <= tier.up_to:
                    break
                floor = tier.up_to
            return total
        if self.price_model == "volume":
            for tier in self.tiers:
                if tier.up_to is None or billable <= tier.up_to:
                    return tier.priced(billable)[1]
            return ZERO  # unreachable: the last tier is open-ended
        raise ValueError(f"unknown price model {self.price_model}")

    def _blocks(self, billable: Decimal) -> Decimal:
        """The package blocks started by ``billable`` units."""
        if self.package_size is None:  # the database requires it of a package charge
            raise ValueError(f"the package charge of meter {self.meter_id} has no package size")
        return (billable / self.package_size).to_integral_value(rounding=ROUND_CEILING)

    def breakdown(self, quantity: Decimal) -> list[TierPart]:
        """How ``worth(quantity)`` splits into invoice lines: one per tier used (graduated),
        the tier reached (volume), the blocks (package) or the units (per unit). The parts'
        amounts add up to ``worth(quantity)`` exactly."""
        billable = self.billable(quantity)
        if billable <= 0:
            return []
        if self.price_model == "per_unit":
            return [TierPart(None, billable, self.unit_price, ZERO, billable * self.unit_price)]
        if self.price_model == "package":
            blocks = self._blocks(billable)
            return [TierPart(None, blocks, self.unit_price, ZERO, blocks * self.unit_price)]
        parts, floor = [], ZERO
        for position, tier in enumerate(self.tiers, start=1):
            if self.price_model == "volume":
                if tier.up_to is None or billable <= tier.up_to:
                    units, amount = tier.priced(billable)
                    return [
                        TierPart(
                            position,
                            units,
                            tier.unit_price,
                            tier.flat_fee,
                            amount,
                            tier.package_size,
                        )
                    ]
                continue
            top = billable if tier.up_to is None else min(billable, tier.up_to)
            if top <= floor:
                break
            units, amount = tier.priced(top - floor)
            parts.append(
                TierPart(position, units, tier.unit_price, tier.flat_fee, amount, tier.package_size)
            )
            if tier.up_to is None or billable <= tier.up_to:
                break
            floor = tier.up_to
        return parts


@dataclass(frozen=True, slots=True)
class TierPart:
    """One invoice line of a charge: ``tier`` is 1-based (None without tiers); for the
    package model and a tier with a package size (``package_size``) ``quantity`` counts
    blocks."""

    tier: int | None
    quantity: Decimal
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal
    package_size: Decimal | None = None
