"""Pricing per counter (metering.rating.price.Pricer): a batch's events of one counter are
priced by one Pricer that carries the counter's worth from event to event. Every event must
still cost, to the last digit, what it costs rated alone — across allowances, graduated tier
boundaries, a package tier, a catalog-priced allowance straddled, and a refusal mid-batch
(the refused event moves nothing; the next one is priced from where the counter stands)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.services import ChargeSpec, TierSpec
from metering.models import DailyUsage, Event, PeriodUsage
from tests.metering.test_rating import (
    at,
    catalog_charge,
    event,
    ingest,
    llm_event,
    make_meter,
    posted,
    subscribe,
)

pytestmark = pytest.mark.django_db

D = Decimal

TIERS = (
    TierSpec(up_to=D(50), unit_price=D("0.003"), flat_fee=D("0.5")),
    TierSpec(up_to=D(200), unit_price=D("0.0017")),
    TierSpec(up_to=None, unit_price=D("0.011"), package_size=D(7)),
)


def _events(customer: str):
    """Units crossing the allowance (100), tier 1's and 2's tops (150 and 300 used) and
    blocks of 7 in tier 3; LLM calls straddling a 3,000-token allowance; one event no
    wallet of 3 USD covers, between the others."""
    units = [30, 60, 25, 45, 70, 10, 90, 3, 10**6, 150, 40, 1, 6]
    tokens = [(900, 300), (1200, 100), (700, 700), (5000, 10), (10, 5000), (333, 77)]
    out, calls = [], iter(tokens)
    for i, n in enumerate(units):
        out.append(event(f"u{i}", customer=customer, units=n, ts=at(2026, 4, 3 + i % 4, 9)))
        call = next(calls, None)
        if call is not None:
            prompt, completion = call
            usage = {"prompt_tokens": prompt, "completion_tokens": completion}
            out.append(
                llm_event(f"l{i}", usage, model="gpt-4o-mini", customer=customer, ts=at(2026, 4, 5))
            )
    return out


def _plan(total):
    return (
        ChargeSpec(
            meter="units", price_model="graduated", included_quantity=D(100), tiers=TIERS
        ),
        ChargeSpec(meter="requests", unit_price=D("0.0001"), included_quantity=D(3)),
        catalog_charge(total, "12.5", included="3000"),
    )


def test_a_batch_priced_per_counter_costs_each_event_what_it_costs_alone(model_prices):
    make_meter("units")
    make_meter("requests", aggregation="count", prop="")
    total = make_meter("total", event_name="llm.completion", prop="llm.total_tokens")
    batch = subscribe(*_plan(total), external_id="batch", funds="3")
    alone = subscribe(*_plan(total), external_id="alone", funds="3")

    batch_outcomes = ingest(*_events("batch"))
    alone_outcomes = [ingest(e)[0] for e in _events("alone")]

    statuses = [o.status for o in batch_outcomes]
    assert statuses == [o.status for o in alone_outcomes]
    assert statuses.count("rejected") == 1  # the million units: nothing moved
    assert batch_outcomes[statuses.index("rejected")].error.code == "insufficient_funds"

    def amounts(customer):
        return [
            (key, amount, cost)
            for key, amount, cost in Event.objects.filter(customer=customer)
            .order_by("id")
            .values_list("idempotency_key", "amount", "cost")
        ]

    assert amounts(batch) == amounts(alone)
    # the units' whole period, worked out by hand: 430 billable of 530 accepted; tier 1:
    # 50 × 0.003 + 0.5 = 0.65; tier 2: 150 × 0.0017 = 0.255; tier 3: 230 units, 33 started
    # blocks of 7 × 0.011 = 0.363; and 9 requests beyond the 3 included × 0.0001
    units_amounts = [a for key, a, _ in amounts(batch) if key.startswith("u")]
    assert sum(units_amounts) == D("1.268") + D("0.0009")
    # 30 and 60 inside the allowance; 25 cross it (15 billable: 15 × 0.003 + tier 1's fee
    # 0.5); 45 cross tier 1's top (35 × 0.003 + 10 × 0.0017) and are the 4th request
    assert units_amounts[:4] == [D(0), D(0), D("0.545"), D("0.122") + D("0.0001")]

    # gpt-4o-mini at 0.15 and 0.6 USD a million tokens, × 1.125; the third call takes the
    # period from 2,500 to 3,900 tokens: 900 of its 1,400 beyond the allowance
    llm_amounts = [a for key, a, _ in amounts(batch) if key.startswith("l")]
    assert llm_amounts == [
        D(0),
        D(0),
        (700 * D("0.15") + 700 * D("0.6")) / 10**6 * 900 / 1400 * D("1.125"),
        (5000 * D("0.15") + 10 * D("0.6")) / 10**6 * D("1.125"),
        (10 * D("0.15") + 5000 * D("0.6")) / 10**6 * D("1.125"),
        (333 * D("0.15") + 77 * D("0.6")) / 10**6 * D("1.125"),
    ]

    def counters(customer):
        return sorted(
            (u.meter.code, u.quantity, u.amount, u.charged, u.event_count)
            for u in PeriodUsage.objects.filter(subscription__customer=customer)
        )

    assert counters(batch) == counters(alone)
    assert ("units", D(530), D("1.268"), D("1.268"), 12) in counters(batch)

    def daily(customer):
        return sorted(
            (d.meter.code, d.day, d.quantity, d.included_quantity, d.amount, d.event_count)
            for d in DailyUsage.objects.filter(customer=customer)
        )

    assert daily(batch) == daily(alone)
    assert posted(batch) == posted(alone) == D(3) - sum(a for _, a, _ in amounts(batch))
