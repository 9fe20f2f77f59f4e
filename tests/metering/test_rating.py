"""metering.rating.ingest_events: each accepted event stored, priced against the period's
counters and posted to the ledger at once. Every figure below is worked out by hand from the
plan's prices (or the catalog's, for LLM usage) and compared exactly, as a Decimal.

The subscription starts on 1 April 2026 (monthly periods from the 1st) and rating runs with
``now`` fixed on 20 April, so periods and the future-timestamp rule are exact."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from django.db import connections
from django.db.models import Sum

from billing import services
from billing.models import BillingMode, Customer, MarginOverride, Meter, Wallet
from billing.services import ChargeSpec, TierSpec
from ledger import selectors as ledger_selectors
from ledger import services as ledger
from ledger.models import Account, Entry, Hold, NormalBalance
from metering import rating
from metering.models import DailyUsage, Event, ModelUsage, PeriodDistinctValue, PeriodUsage
from metering.rating import ingest as rating_ingest
from metering.rating import sql as rating_sql
from metering.rating import write as rating_write
from tests.billing.conftest import at
from tests.conftest import unique
from tests.factories import CustomerFactory, MeterFactory, PlanFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

D = Decimal
START = at(2026, 4, 1)
NOW = at(2026, 4, 20, 12)
DAY = at(2026, 4, 10, 9)


# --- set-up ---------------------------------------------------------------------------------------


def make_meter(
    code: str, *, event_name: str = "api.call", prop: str = "units", aggregation: str = "sum", **kw
) -> Meter:
    return MeterFactory(
        code=code, event_name=event_name, aggregation=aggregation, property=prop, **kw
    )


def subscribe(
    *charges: ChargeSpec,
    external_id: str = "acme",
    funds: str = "0",
    billing_mode: str = BillingMode.PREPAID,
    credit_limit: str | None = None,
    trial_days: int = 0,
    consumption_model: str = "metered",
    units_per_credit: str | None = None,
    start: datetime = START,
) -> Customer:
    """A customer subscribed since START to a plan with ``charges``, its wallet funded."""
    customer = CustomerFactory(
        external_id=external_id, name="Acme", billing_mode=billing_mode, credit_limit=credit_limit
    )
    plan = PlanFactory(
        trial_days=trial_days,
        consumption_model=consumption_model,
        units_per_credit=units_per_credit or None,
        charges=charges,
    )
    SubscriptionFactory(customer=customer, plan=plan, start=start, now=START)
    if D(funds):
        services.top_up(customer=customer, amount=D(funds))
    return customer


def event(key: str, *, customer: str = "acme", name: str = "api.call", ts: datetime = DAY, **props):
    return rating.EventIn(
        idempotency_key=key, customer=customer, event_name=name, timestamp=ts, properties=props
    )


def llm_event(
    key: str,
    usage: dict[str, Any],
    *,
    model: str | None = "gpt-4o",
    customer: str = "acme",
    ts: datetime = DAY,
    **extra: Any,
):
    properties: dict[str, Any] = {"usage": usage, **extra}
    if model is not None:
        properties["model"] = model
    return rating.EventIn(
        idempotency_key=key,
        customer=customer,
        event_name="llm.completion",
        timestamp=ts,
        properties=properties,
    )


def ingest(*events: rating.EventIn, hold_id: int | None = None) -> list[rating.Outcome]:
    return rating.ingest_events(list(events), now=NOW, hold_id=hold_id)


def statuses(outcomes: list[rating.Outcome]) -> list[str]:
    return [o.status for o in outcomes]


def codes(outcomes: list[rating.Outcome]) -> list[str | None]:
    return [o.error.code if o.error is not None else None for o in outcomes]


def wallet_of(customer: Customer, currency: str = "USD") -> Wallet:
    return Wallet.objects.select_related("account").get(customer=customer, currency=currency)


def balance(customer: Customer, currency: str = "USD") -> tuple[Decimal, Decimal, Decimal]:
    view = ledger_selectors.get_balance(account=wallet_of(customer, currency).account)
    return view.posted, view.held, view.available


def posted(customer: Customer, currency: str = "USD") -> Decimal:
    return balance(customer, currency)[0]


def system_posted(code: str, currency: str) -> Decimal:
    account = Account.objects.filter(code=code, currency=currency).first()
    if account is None:
        return D(0)
    return ledger_selectors.get_balance(account=account).posted


def amounts(customer: Customer) -> list[Decimal]:
    return list(
        Event.objects.filter(customer=customer).order_by("id").values_list("amount", flat=True)
    )


def period_usage(meter: Meter) -> PeriodUsage:
    return PeriodUsage.objects.get(meter=meter)


def distinct_values(meter: Meter) -> list[str]:
    """The values a unique_count meter has counted (their canonical keys), in the order seen."""
    return list(
        PeriodDistinctValue.objects.filter(meter=meter)
        .order_by("id")
        .values_list("value", flat=True)
    )


def per_unit(meter: Meter, price: str, included: str = "0") -> ChargeSpec:
    return ChargeSpec(meter=meter.code, unit_price=D(price), included_quantity=D(included))


def catalog_charge(meter: Meter, margin: str, included: str = "0") -> ChargeSpec:
    return ChargeSpec(meter=meter.code, margin_percent=D(margin), included_quantity=D(included))


# --- per unit, the ledger legs and the links ------------------------------------------------------


def test_per_unit_events_debit_the_wallet_and_link_one_transaction_for_the_batch():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0.002"), funds="10")
    outcomes = ingest(event("a", units=100), event("b", units=250), event("c", units=1))
    assert statuses(outcomes) == ["accepted"] * 3
    # 100 × 0.002 = 0.2; 250 × 0.002 = 0.5; 1 × 0.002 = 0.002
    assert amounts(customer) == [D("0.2"), D("0.5"), D("0.002")]
    assert [o.event["amount"] for o in outcomes] == [D("0.2"), D("0.5"), D("0.002")]
    assert posted(customer) == D("9.298")
    assert system_posted("@Revenue", "USD") == D("0.702")

    wallet = wallet_of(customer)
    # One customer's events of one rating pass: one transaction whose legs are their sums,
    # named after the first event (issue 14 replaced one transaction per event).
    rows = list(Event.objects.filter(customer=customer).order_by("id"))
    transaction = rows[0].ledger_transaction
    assert transaction is not None
    assert {row.ledger_transaction_id for row in rows} == {transaction.pk}
    assert transaction.reference == f"usage:{customer.pk}:{rows[0].idempotency_key}"
    assert transaction.metadata["event_id"] == rows[0].pk
    assert transaction.metadata["events"] == 3
    assert transaction.effective_at == DAY
    entries = {(e.account_id, e.amount) for e in Entry.objects.filter(transaction=transaction)}
    revenue = Account.objects.get(code="@Revenue", currency="USD")
    total = sum(row.amount for row in rows)
    assert entries == {(wallet.account_id, total), (revenue.pk, -total)}

    usage = period_usage(units)
    assert (usage.quantity, usage.amount, usage.charged, usage.event_count) == (
        D("351"),
        D("0.702"),
        D("0.702"),
        3,
    )
    assert (usage.period_start, usage.period_end) == (START, at(2026, 5, 1))


def test_llm_event_posts_a_token_leg_beside_the_money_leg(model_prices):
    output = make_meter("output", event_name="llm.completion", prop="llm.output_tokens")
    customer = subscribe(per_unit(output, "0.00001"), funds="1")
    [outcome] = ingest(llm_event("r1", {"prompt_tokens": 1000, "completion_tokens": 200}))
    assert outcome.status == "accepted"
    # 200 output tokens × 0.00001 = 0.002 USD; 1000 + 200 tokens served
    row = Event.objects.get(customer=customer)
    assert (row.input_tokens, row.output_tokens, row.amount) == (1000, 200, D("0.002"))
    # the provider's cost: 1000 × 2.5/M + 200 × 10/M = 0.0025 + 0.002
    assert row.cost == D("0.0045")
    tokens = Account.objects.get(code=f"tokens:{customer.pk}", currency="TOKENS")
    assert ledger_selectors.get_balance(account=tokens).posted == D(1200)
    assert system_posted("@TokensServed", "TOKENS") == D(1200)
    assert posted(customer) == D("0.998")
    legs = {
        (e.account.code, e.currency, e.amount)
        for e in Entry.objects.filter(transaction=row.ledger_transaction).select_related("account")
    }
    assert legs == {
        (f"tokens:{customer.pk}", "TOKENS", D(1200)),
        ("@TokensServed", "TOKENS", D(-1200)),
        (f"wallet:{customer.pk}:USD", "USD", D("0.002")),
        ("@Revenue", "USD", D("-0.002")),
    }
    assert row.ledger_transaction.metadata["model"] == "gpt-4o"
    assert row.ledger_transaction.metadata["provider"] == "openai"


# --- allowance ------------------------------------------------------------------------------------


def test_usage_inside_the_allowance_is_free_and_the_crossing_event_pays_the_rest():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0.01", included="1000"), funds="10")
    day1, day2 = at(2026, 4, 3, 10), at(2026, 4, 4, 10)
    outcomes = ingest(
        event("a", units=600, ts=day1),
        event("b", units=300, ts=day1),
        event("c", units=250, ts=day2),  # 100 inside, 150 beyond: 1.50
        event("d", units=100, ts=day2),  # all beyond: 1.00
    )
    assert statuses(outcomes) == ["accepted"] * 4
    assert amounts(customer) == [D(0), D(0), D("1.5"), D("1")]
    assert posted(customer) == D("7.5")
    daily = {
        row.day.isoformat(): (row.quantity, row.included_quantity, row.amount, row.event_count)
        for row in DailyUsage.objects.filter(meter=units)
    }
    assert daily == {
        "2026-04-03": (D(900), D(900), D(0), 2),
        "2026-04-04": (D(350), D(100), D("2.5"), 2),
    }
    # events inside the allowance have nothing to post
    assert list(
        Event.objects.filter(customer=customer)
        .order_by("id")
        .values_list("ledger_transaction", flat=True)
    )[:2] == [None, None]


def test_the_allowance_starts_again_in_each_period():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0.01", included="100"), funds="10", start=at(2026, 3, 1))
    outcomes = ingest(
        event("march", units=150, ts=at(2026, 3, 20)),  # 50 beyond March's 100: 0.50
        event("april", units=150, ts=at(2026, 4, 10)),  # 50 beyond April's 100: 0.50
    )
    assert statuses(outcomes) == ["accepted", "accepted"]
    assert amounts(customer) == [D("0.5"), D("0.5")]
    periods = {
        (u.period_start, u.period_end): (u.quantity, u.charged)
        for u in PeriodUsage.objects.filter(meter=units)
    }
    assert periods == {
        (at(2026, 3, 1), START): (D(150), D("0.5")),
        (START, at(2026, 5, 1)): (D(150), D("0.5")),
    }


# --- aggregations ---------------------------------------------------------------------------------


def test_latest_max_and_unique_count_meters_are_priced_on_the_period_quantity():
    seats = make_meter("seats", event_name="seats.set", prop="seats", aggregation="latest")
    peak = make_meter("peak", event_name="gpu.peak", prop="gpus", aggregation="max")
    users = make_meter("users", event_name="user.active", prop="user", aggregation="unique_count")
    customer = subscribe(
        per_unit(seats, "10"), per_unit(peak, "2"), per_unit(users, "1"), funds="100"
    )
    outcomes = ingest(
        event("s1", name="seats.set", seats=5, ts=at(2026, 4, 2)),  # 5 seats: 50
        event("s2", name="seats.set", seats=8, ts=at(2026, 4, 4)),  # 8: +30
        event("s3", name="seats.set", seats=2, ts=at(2026, 4, 3)),  # older than s2: no change
        event("s4", name="seats.set", seats=3, ts=at(2026, 4, 5)),  # 3: -50, credited back
        event("p1", name="gpu.peak", gpus=4),  # 4 × 2 = 8
        event("p2", name="gpu.peak", gpus=7),  # +6
        event("p3", name="gpu.peak", gpus=5),  # below the peak: 0
        event("u1", name="user.active", user="ann"),  # 1
        event("u2", name="user.active", user="bob"),  # 1
        event("u3", name="user.active", user="ann"),  # seen: 0
        event("u4", name="user.active", user="cy"),  # 1
    )
    assert statuses(outcomes) == ["accepted"] * 11
    assert amounts(customer) == [
        D(50),
        D(30),
        D(0),
        D(-50),
        D(8),
        D(6),
        D(0),
        D(1),
        D(1),
        D(0),
        D(1),
    ]
    assert (period_usage(seats).quantity, period_usage(seats).charged) == (D(3), D(30))
    assert period_usage(seats).latest_at == at(2026, 4, 5)
    assert (period_usage(peak).quantity, period_usage(peak).charged) == (D(7), D(14))
    assert (period_usage(users).quantity, period_usage(users).charged) == (D(3), D(3))
    # distinct values are kept by type and value (1, 1.0 and 1e0 are one number)
    assert distinct_values(users) == ["s:ann", "s:bob", "s:cy"]
    assert posted(customer) == D(100) - D(30) - D(14) - D(3)


# --- tiers and packages ---------------------------------------------------------------------------


GRADUATED = (
    TierSpec(up_to=D(100), unit_price=D("0.10"), flat_fee=D(1)),
    TierSpec(up_to=D(1000), unit_price=D("0.05"), flat_fee=D(2)),
    TierSpec(up_to=None, unit_price=D("0.01"), flat_fee=D(5)),
)


def test_graduated_tiers_price_both_sides_of_a_boundary_crossed_inside_one_event():
    units = make_meter("units")
    customer = subscribe(
        ChargeSpec(meter="units", price_model="graduated", tiers=GRADUATED), funds="100"
    )
    outcomes = ingest(
        event("a", units=60),  # 60 × 0.10 + tier 1's fee 1 = 7
        event("b", units=60),  # 40 × 0.10 + 20 × 0.05 + tier 2's fee 2 = 7
        event("c", units=900),  # 880 × 0.05 + 20 × 0.01 + tier 3's fee 5 = 49.2
        event("d", units=80),  # 80 × 0.01 = 0.8
    )
    assert statuses(outcomes) == ["accepted"] * 4
    assert amounts(customer) == [D(7), D(7), D("49.2"), D("0.8")]
    # the whole 1100: 100 × 0.10 + 1 + 900 × 0.05 + 2 + 100 × 0.01 + 5 = 64
    usage = period_usage(units)
    assert (usage.quantity, usage.amount, usage.charged) == (D(1100), D(64), D(64))
    assert posted(customer) == D(36)


def test_graduated_tiers_across_two_calls_continue_from_the_counter():
    make_meter("units")
    customer = subscribe(
        ChargeSpec(meter="units", price_model="graduated", tiers=GRADUATED), funds="100"
    )
    ingest(event("a", units=90))  # 9 + 1 = 10
    ingest(event("b", units=20))  # 10 × 0.10 + 10 × 0.05 + 2 = 3.5
    assert amounts(customer) == [D(10), D("3.5")]


VOLUME = (
    TierSpec(up_to=D(100), unit_price=D("0.10")),
    TierSpec(up_to=D(1000), unit_price=D("0.05")),
    TierSpec(up_to=None, unit_price=D("0.02"), flat_fee=D(1)),
)


def test_volume_tiers_reprice_every_unit_and_credit_back_a_negative_increment():
    units = make_meter("units")
    customer = subscribe(ChargeSpec(meter="units", price_model="volume", tiers=VOLUME), funds="100")
    outcomes = ingest(
        event("a", units=80),  # worth(80) = 8
        event("b", units=70),  # worth(150) = 150 × 0.05 = 7.5: 0.5 credited back
        event("c", units=1050),  # worth(1200) = 1200 × 0.02 + 1 = 25: +17.5
    )
    assert statuses(outcomes) == ["accepted"] * 3
    assert amounts(customer) == [D(8), D("-0.5"), D("17.5")]
    assert sum(amounts(customer)) == D(25)
    assert posted(customer) == D(75)
    # b's credit back is its own amount (-0.5, above); the batch's one transaction debits
    # the wallet with the sum of the three (issue 14: one per customer per rating pass).
    credited = Event.objects.get(idempotency_key="b").ledger_transaction
    wallet = wallet_of(customer)
    assert Entry.objects.get(transaction=credited, account_id=wallet.account_id).amount == D(25)
    usage = period_usage(units)
    assert (usage.amount, usage.charged) == (D(25), D(25))


def test_package_pricing_charges_per_started_block():
    units = make_meter("units")
    customer = subscribe(
        ChargeSpec(meter="units", price_model="package", package_size=D(100), unit_price=D(2)),
        funds="100",
    )
    ingest(
        event("a", units=1),  # block 1 started: 2
        event("b", units=99),  # 100: still 1 block
        event("c", units=1),  # 101: block 2: 2
        event("d", units=250),  # 351: blocks 3 and 4: 4
    )
    assert amounts(customer) == [D(2), D(0), D(2), D(4)]
    assert period_usage(units).charged == D(8)
    assert posted(customer) == D(92)


# --- catalog-priced usage -------------------------------------------------------------------------


CHAT = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "prompt_tokens_details": {"cached_tokens": 1024},
}
# gpt-4o: 176 × 2.5/M + 1024 × 1.25/M + 300 × 10/M = 0.00044 + 0.00128 + 0.003
CHAT_COST = D("0.00472")


def test_catalog_priced_charge_is_the_provider_cost_plus_the_margin(model_prices):
    total = make_meter("total", event_name="llm.completion", prop="llm.total_tokens")
    customer = subscribe(catalog_charge(total, "20"), funds="1")
    outcomes = ingest(
        llm_event("r1", CHAT),
        # 2000 × 2.5/M + 1000 × 10/M = 0.015
        llm_event("r2", {"prompt_tokens": 2000, "completion_tokens": 1000}),
    )
    assert statuses(outcomes) == ["accepted", "accepted"]
    rows = list(Event.objects.filter(customer=customer).order_by("id"))
    assert [(r.cost, r.amount) for r in rows] == [
        (CHAT_COST, D("0.005664")),  # × 1.2
        (D("0.015"), D("0.018")),
    ]
    assert (rows[0].input_tokens, rows[0].cache_read_tokens, rows[0].output_tokens) == (
        176,
        1024,
        300,
    )
    assert rows[0].model_price_id == model_prices["gpt-4o"].pk
    [model_usage] = ModelUsage.objects.filter(customer=customer)
    assert (
        model_usage.provider,
        model_usage.model,
        model_usage.event_count,
        model_usage.input_tokens,
        model_usage.cache_read_tokens,
        model_usage.output_tokens,
        model_usage.amount,
        model_usage.cost,
    ) == ("openai", "gpt-4o", 2, 2176, 1024, 1300, D("0.023664"), D("0.01972"))
    assert posted(customer) == D("0.976336")


def test_a_customer_margin_override_replaces_the_plan_margin(model_prices):
    total = make_meter("total", event_name="llm.completion", prop="llm.total_tokens")
    customer = subscribe(catalog_charge(total, "20"), funds="1")
    MarginOverride.objects.create(customer=customer, meter=None, margin_percent=D(50))
    ingest(llm_event("r1", CHAT))
    assert amounts(customer) == [CHAT_COST * D("1.5")]  # 0.00708


def test_a_per_meter_margin_override_wins_over_the_customer_wide_one(model_prices):
    total = make_meter("total", event_name="llm.completion", prop="llm.total_tokens")
    customer = subscribe(catalog_charge(total, "20"), funds="1")
    MarginOverride.objects.create(customer=customer, meter=None, margin_percent=D(50))
    MarginOverride.objects.create(customer=customer, meter=total, margin_percent=D(10))
    ingest(llm_event("r1", CHAT))
    assert amounts(customer) == [D("0.005192")]  # 0.00472 × 1.1


def test_gemini_long_context_prompt_is_priced_at_the_tier_price(model_prices):
    total = make_meter("total", event_name="llm.completion", prop="llm.total_tokens")
    customer = subscribe(catalog_charge(total, "0"), funds="10")
    outcomes = ingest(
        # 250,000-token prompt (> 200k): tier prices 2.5 / 0.25 / 15 per M
        # 200,000 × 2.5/M + 50,000 × 0.25/M + 1,000 × 15/M = 0.5 + 0.0125 + 0.015
        llm_event(
            "long",
            {
                "promptTokenCount": 250_000,
                "cachedContentTokenCount": 50_000,
                "candidatesTokenCount": 1_000,
            },
            model="gemini-2.5-pro",
        ),
        # exactly 200,000 is not above the threshold: base prices 1.25 / 10 per M
        # 200,000 × 1.25/M + 1,000 × 10/M = 0.25 + 0.01
        llm_event(
            "edge",
            {"promptTokenCount": 200_000, "candidatesTokenCount": 1_000},
            model="gemini-2.5-pro",
        ),
    )
    assert statuses(outcomes) == ["accepted", "accepted"]
    rows = list(Event.objects.filter(customer=customer).order_by("id"))
    assert [(r.provider, r.cost, r.amount) for r in rows] == [
        ("google", D("0.5275"), D("0.5275")),
        ("google", D("0.26"), D("0.26")),
    ]


def test_catalog_priced_event_straddling_the_allowance_pays_its_billable_share(model_prices):
    total = make_meter("total", event_name="llm.completion", prop="llm.total_tokens")
    customer = subscribe(catalog_charge(total, "0", included="1000"), funds="1")
    # gpt-4o-mini, 1000 in + 1000 out: 1000 × 0.15/M + 1000 × 0.6/M = 0.00075;
    # 1000 of its 2000 tokens lie beyond the allowance: half the cost
    ingest(llm_event("r1", {"prompt_tokens": 1000, "completion_tokens": 1000}, model="gpt-4o-mini"))
    row = Event.objects.get(customer=customer)
    assert (row.cost, row.amount) == (D("0.00075"), D("0.000375"))


# --- credits --------------------------------------------------------------------------------------


def test_credits_plan_debits_credits_and_refuses_what_no_longer_fits_mid_batch():
    units = make_meter("units")
    customer = subscribe(
        ChargeSpec(meter="units", unit_price=D("0.01")),
        consumption_model="credits",
        units_per_credit="1000",
    )
    services.ensure_wallet(customer=customer, currency="CREDITS")
    services.top_up(customer=customer, amount=D(5), currency="CREDITS")
    outcomes = ingest(
        event("a", units=2000),  # 2 credits: 3 left
        event("b", units=2500),  # 2.5: 0.5 left
        event("c", units=1000),  # 1 > 0.5: refused
        event("d", units=400),  # 0.4: 0.1 left
    )
    assert statuses(outcomes) == ["accepted", "accepted", "rejected", "accepted"]
    assert codes(outcomes) == [None, None, "insufficient_credits", None]
    assert outcomes[2].error.http_status == 402
    assert list(
        Event.objects.filter(customer=customer)
        .values_list("idempotency_key", flat=True)
        .order_by("id")
    ) == ["a", "b", "d"]
    assert amounts(customer) == [D(2), D("2.5"), D("0.4")]
    assert set(Event.objects.filter(customer=customer).values_list("currency", flat=True)) == {
        "CREDITS"
    }
    assert posted(customer, "CREDITS") == D("0.1")
    assert posted(customer, "USD") == D(0)
    assert system_posted("@CreditsUsed", "CREDITS") == D("4.9")
    usage = period_usage(units)
    assert (usage.quantity, usage.amount, usage.charged, usage.event_count, usage.currency) == (
        D(4900),
        D("4.9"),
        D("4.9"),
        3,
        "CREDITS",
    )


# --- what the wallet refuses ----------------------------------------------------------------------


def test_a_prepaid_wallet_refuses_what_it_cannot_cover_and_nothing_changes():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0.01"), funds="1")
    [refused] = ingest(event("big", units=150))  # 1.50 > 1.00
    assert (refused.status, refused.error.code, refused.error.http_status) == (
        "rejected",
        "insufficient_funds",
        402,
    )
    assert refused.error.param == "customer"
    assert not Event.objects.filter(customer=customer).exists()
    assert not PeriodUsage.objects.exists()
    assert not DailyUsage.objects.exists()
    assert balance(customer) == (D(1), D(0), D(1))
    [exact] = ingest(event("fits", units=100))  # exactly the balance
    assert exact.status == "accepted"
    assert balance(customer) == (D(0), D(0), D(0))


def test_a_postpaid_wallet_goes_negative_down_to_its_credit_limit():
    units = make_meter("units")
    customer = subscribe(
        per_unit(units, "0.01"), billing_mode=BillingMode.POSTPAID, credit_limit="5"
    )
    outcomes = ingest(
        event("a", units=300),  # -3
        event("b", units=300),  # -6 < -5: refused
        event("c", units=200),  # -5: exactly the limit
    )
    assert statuses(outcomes) == ["accepted", "rejected", "accepted"]
    assert codes(outcomes) == [None, "credit_limit_exceeded", None]
    assert posted(customer) == D(-5)
    assert period_usage(units).quantity == D(500)


def test_a_postpaid_wallet_without_a_limit_is_never_refused():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0.01"), billing_mode=BillingMode.POSTPAID)
    outcomes = ingest(event("a", units=1_000_000), event("b", units=1_000_000))
    assert statuses(outcomes) == ["accepted", "accepted"]
    assert posted(customer) == D(-20000)


# --- duplicates -----------------------------------------------------------------------------------


def test_the_same_idempotency_key_again_is_a_duplicate_charged_once():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0.5"), funds="10")
    [first] = ingest(event("k1", units=2))
    [again] = ingest(event("k1", units=2))
    assert (first.status, again.status) == ("accepted", "duplicate")
    assert again.event["id"] == first.event["id"]
    assert again.event["amount"] == D(1)
    assert Event.objects.filter(customer=customer).count() == 1
    assert posted(customer) == D(9)
    # a "retry" with another body is still the same event: never charged twice
    [changed] = ingest(event("k1", units=7))
    assert changed.status == "duplicate"
    assert posted(customer) == D(9)


def test_the_same_key_twice_in_one_batch_is_charged_once():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0.5"), funds="10")
    outcomes = ingest(event("k1", units=2), event("k1", units=2), event("k2", units=1))
    assert statuses(outcomes) == ["accepted", "duplicate", "accepted"]
    assert outcomes[1].event["id"] == outcomes[0].event["id"]
    assert Event.objects.filter(customer=customer).count() == 2
    assert posted(customer) == D("8.5")
    assert period_usage(units).quantity == D(3)


def test_the_same_key_for_two_customers_is_two_events():
    units = make_meter("units")
    acme = subscribe(per_unit(units, "1"), funds="10")
    other = services.create_customer(external_id="other", name="Other")
    services.create_subscription(
        customer=other,
        plan=acme.subscriptions.get().plan,
        start=START,
        now=START,
    )
    services.top_up(customer=other, amount=D(10))
    outcomes = ingest(event("k1", units=1), event("k1", units=2, customer="other"))
    assert statuses(outcomes) == ["accepted", "accepted"]
    assert (posted(acme), posted(other)) == (D(9), D(8))


# --- rejections -----------------------------------------------------------------------------------


def test_each_bad_event_is_rejected_alone_with_its_code(model_prices):
    units = make_meter("units")
    make_meter("output", event_name="llm.completion", prop="llm.output_tokens")
    customer = subscribe(
        per_unit(units, "1"), ChargeSpec(meter="output", unit_price=D("0.001")), funds="100"
    )
    services.create_customer(external_id="unsubscribed", name="No plan")
    outcomes = ingest(
        event("ok-1", units=1),
        event("bad-name", name="api.unknown", units=1),
        llm_event("bad-model", {"prompt_tokens": 10, "completion_tokens": 10}, model="gpt-9-ultra"),
        event("future", units=1, ts=NOW + timedelta(minutes=6)),
        event("too-old", units=1, ts=START - timedelta(seconds=1)),
        event("no-sub", customer="unsubscribed", units=1),
        event("nobody", customer="nobody", units=1),
        event("reserved", units=1, llm={"input_tokens": 5}),
        event("missing"),
        event("text", units="12"),
        event("float", units=1.5),
        event("negative", units=-1),
        event("bool", units=True),
        event("ok-2", units=2, ts=NOW + timedelta(minutes=4)),  # inside the 5-minute tolerance
    )
    assert [(o.status, o.error.code if o.error else None) for o in outcomes] == [
        ("accepted", None),
        ("rejected", "unknown_event_name"),
        ("rejected", "unknown_model"),
        ("rejected", "timestamp_in_future"),
        ("rejected", "timestamp_before_subscription"),
        ("rejected", "no_active_subscription"),
        ("rejected", "customer_not_found"),
        ("rejected", "invalid_event"),
        ("rejected", "invalid_event"),
        ("rejected", "invalid_event"),
        ("rejected", "invalid_event"),
        ("rejected", "invalid_event"),
        ("rejected", "invalid_event"),
        ("accepted", None),
    ]
    params = [o.error.param if o.error else None for o in outcomes]
    assert params[1:4] == ["event_name", "properties.model", "timestamp"]
    assert params[7:] == [
        "properties.llm",
        "properties.units",
        "properties.units",
        "properties.units",
        "properties.units",
        "properties.units",
        None,
    ]
    assert [o.error.http_status for o in outcomes if o.error] == [
        422,
        422,
        400,
        422,
        422,
        404,
        400,
        400,
        400,
        400,
        400,
        400,
    ]
    assert sorted(Event.objects.values_list("idempotency_key", flat=True)) == ["ok-1", "ok-2"]
    assert posted(customer) == D(97)
    assert period_usage(units).quantity == D(3)


def test_an_unknown_model_is_never_priced_at_zero(model_prices):
    make_meter("output", event_name="llm.completion", prop="llm.output_tokens")
    customer = subscribe(ChargeSpec(meter="output", unit_price=D(0)), funds="1")
    [outcome] = ingest(
        llm_event("r1", {"prompt_tokens": 10, "completion_tokens": 10}, model="my-own-llm")
    )
    assert (outcome.status, outcome.error.code) == ("rejected", "unknown_model")
    assert not Event.objects.filter(customer=customer).exists()
    assert not ModelUsage.objects.exists()
    assert not Account.objects.filter(code=f"tokens:{customer.pk}").exists()


def test_llm_usage_without_a_model_is_refused(model_prices):
    make_meter("output", event_name="llm.completion", prop="llm.output_tokens")
    subscribe(ChargeSpec(meter="output", unit_price=D(0)), funds="1")
    [outcome] = ingest(llm_event("r1", {"prompt_tokens": 1, "completion_tokens": 1}, model=None))
    assert (outcome.status, outcome.error.code, outcome.error.param) == (
        "rejected",
        "invalid_event",
        "properties.model",
    )


def test_a_huge_reading_is_rejected_alone_and_does_not_fail_the_batch():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0"), funds="1")
    outcomes = ingest(event("ok", units=1), event("huge", units=D("1e48")))
    assert statuses(outcomes) == ["accepted", "rejected"]
    assert codes(outcomes) == [None, "invalid_event"]
    assert outcomes[1].error.param == "properties.units"
    assert Event.objects.filter(customer=customer).count() == 1


def test_a_reading_beyond_the_counter_bound_is_rejected_alone():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0"), funds="1")
    outcomes = ingest(event("ok", units=1), event("big", units=D("1e26")))
    assert codes(outcomes) == [None, "invalid_event"]
    assert Event.objects.filter(customer=customer).count() == 1


def test_a_reading_that_would_overflow_the_period_counter_is_rejected_alone():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0"), funds="1")
    # each reading is below the 1e20 bound; their sum is not
    outcomes = ingest(event("a", units=D("9e19")), event("b", units=D("9e19")))
    assert statuses(outcomes) == ["accepted", "rejected"]
    assert Event.objects.filter(customer=customer).count() == 1


def test_an_event_whose_charge_is_too_large_for_the_ledger_is_rejected_alone():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "100"), billing_mode=BillingMode.POSTPAID)
    # 1e19 units at 100 is a charge of 1e21: past what one event may move (1e18)
    outcomes = ingest(event("ok", units=1), event("huge", units=D("1e19")))
    assert statuses(outcomes) == ["accepted", "rejected"]
    assert amounts(customer) == [D(100)]


# --- trial ----------------------------------------------------------------------------------------


def test_usage_in_the_trial_is_counted_and_costed_but_free(model_prices):
    total = make_meter("total", event_name="llm.completion", prop="llm.total_tokens")
    customer = subscribe(catalog_charge(total, "20"), funds="1", trial_days=14)
    trial_day, after_trial = at(2026, 4, 5), at(2026, 4, 16)
    outcomes = ingest(llm_event("t1", CHAT, ts=trial_day), llm_event("p1", CHAT, ts=after_trial))
    assert statuses(outcomes) == ["accepted", "accepted"]
    rows = list(Event.objects.filter(customer=customer).order_by("id"))
    assert [(r.amount, r.cost, r.period_start) for r in rows] == [
        (D(0), CHAT_COST, START),
        (D("0.005664"), CHAT_COST, at(2026, 4, 15)),
    ]
    trial_usage = PeriodUsage.objects.get(meter=total, period_start=START)
    assert (trial_usage.quantity, trial_usage.amount, trial_usage.period_end) == (
        D(1500),
        D(0),
        at(2026, 4, 15),
    )
    assert posted(customer) == D("0.994336")


# --- sums and rounding ----------------------------------------------------------------------------


def test_event_amounts_counters_and_the_ledger_agree():
    units = make_meter("units")
    calls = make_meter("calls", aggregation="count", prop="")
    customer = subscribe(
        ChargeSpec(meter="units", price_model="graduated", tiers=GRADUATED),
        ChargeSpec(meter="calls", unit_price=D("0.003"), included_quantity=D(2)),
        funds="100",
    )
    ingest(*(event(f"e{i}", units=37 * i) for i in range(1, 9)))
    # units: 37 × (1 + … + 8) = 1332 → 10 + 1 + 45 + 2 + 332 × 0.01 + 5 = 66.32
    # calls: 8, 2 included → 6 × 0.003 = 0.018
    assert period_usage(units).charged == D("66.32")
    assert period_usage(calls).charged == D("0.018")
    total_events = Event.objects.filter(customer=customer).aggregate(t=Sum("amount"))["t"]
    total_counters = PeriodUsage.objects.aggregate(t=Sum("charged"))["t"]
    wallet = wallet_of(customer)
    usage_movement = Entry.objects.filter(
        account_id=wallet.account_id, transaction__reference__startswith="usage:"
    ).aggregate(t=Sum("amount"))["t"]
    assert total_events == total_counters == usage_movement == D("66.338")
    assert posted(customer) == D("33.662")


def test_tiny_amounts_do_not_drift_the_rounded_total_tracks_the_exact_one():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0.000000000001"), funds="1")
    # 0.1 unit × 1e-12 = 1e-13 per event, below the ledger's 1e-12: rounded alone, each
    # would be 0; rounded as a running total, 205 events post round(2.05e-11) = 2.0e-11
    # (half-even), which the exact total keeps beside it.
    outcomes = ingest(*(event(f"e{i}", units=D("0.1")) for i in range(205)))
    assert statuses(outcomes) == ["accepted"] * 205
    usage = period_usage(units)
    assert usage.amount == D("0.0000000000205")
    assert usage.charged == D("0.00000000002")
    assert sum(amounts(customer)) == D("0.00000000002")
    assert posted(customer) == D(1) - D("0.00000000002")
    # each posting is a whole 1e-12: twenty of the 205 events moved the rounded total
    assert sorted(set(amounts(customer))) == [D(0), D("0.000000000001")]
    assert amounts(customer).count(D("0.000000000001")) == 20
    # ten more: exact 2.15e-11 → 2.2e-11 (half-even rounds 21.5 up to 22)
    ingest(*(event(f"f{i}", units=D("0.1")) for i in range(10)))
    usage.refresh_from_db()
    assert (usage.amount, usage.charged) == (D("0.0000000000215"), D("0.000000000022"))
    assert sum(amounts(customer)) == D("0.000000000022")


def test_the_exact_amount_is_exact_for_fine_quantities_and_prices():
    units = make_meter("units")
    subscribe(per_unit(units, "1.234567890123"), billing_mode=BillingMode.POSTPAID)
    ingest(event("a", units=D("123456789.123456789012")))
    # 123456789.123456789012 × 1.234567890123, digit for digit: 33 significant digits
    exact_worth = D("152415787.669506182578905209728476")
    usage = period_usage(units)
    assert usage.amount == exact_worth
    assert usage.charged == D("152415787.669506182579")


# --- holds ----------------------------------------------------------------------------------------


def hold_on(customer: Customer, amount: str) -> Hold:
    revenue = ledger.ensure_system_account(
        code="@Revenue", currency="USD", normal_balance=NormalBalance.CREDIT
    )
    return ledger.place_hold(
        reference=unique("hold"),
        account=wallet_of(customer).account,
        destination=revenue,
        amount=D(amount),
    )


def test_an_event_settles_a_hold_for_less_than_held_and_releases_the_rest():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "1"), funds="10")
    hold = hold_on(customer, "5")
    assert balance(customer) == (D(10), D(5), D(5))
    [outcome] = ingest(event("h1", units=2), hold_id=hold.pk)
    assert outcome.status == "accepted"
    hold.refresh_from_db()
    assert (hold.status, hold.settled_amount) == ("settled", D(2))
    assert balance(customer) == (D(8), D(0), D(8))
    row = Event.objects.get(customer=customer)
    assert row.ledger_transaction.hold_id == hold.pk
    assert row.amount == D(2)


def test_an_event_settles_a_hold_for_more_than_held_from_the_available_balance():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "1"), funds="10")
    hold = hold_on(customer, "5")
    [outcome] = ingest(event("h1", units=7), hold_id=hold.pk)
    assert outcome.status == "accepted"
    hold.refresh_from_db()
    assert (hold.status, hold.settled_amount) == ("settled", D(5))
    assert balance(customer) == (D(3), D(0), D(3))


def test_a_hold_settled_for_more_than_can_be_covered_is_refused_and_stays_pending():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "1"), funds="10")
    hold = hold_on(customer, "8")
    [outcome] = ingest(event("h1", units=12), hold_id=hold.pk)  # 12 > 8 held + 2 available
    assert (outcome.status, outcome.error.code) == ("rejected", "insufficient_funds")
    hold.refresh_from_db()
    assert (hold.status, hold.settled_amount) == ("pending", D(0))
    assert balance(customer) == (D(10), D(8), D(2))
    assert not Event.objects.exists()
    assert not PeriodUsage.objects.exists()
    # the same hold may still be settled by usage it covers: all 10 of the wallet
    [retry] = ingest(event("h2", units=10), hold_id=hold.pk)
    assert retry.status == "accepted"
    assert balance(customer) == (D(0), D(0), D(0))


def test_an_event_cannot_settle_another_customers_hold():
    units = make_meter("units")
    acme = subscribe(per_unit(units, "1"), funds="10")
    other = services.create_customer(external_id="other", name="Other")
    services.top_up(customer=other, amount=D(10))
    hold = hold_on(other, "5")
    [outcome] = ingest(event("a", units=1), hold_id=hold.pk)
    assert (outcome.status, outcome.error.code, outcome.error.param) == (
        "rejected",
        "invalid_event",
        "customer",
    )
    hold.refresh_from_db()
    assert hold.status == "pending"
    assert (balance(acme), balance(other)) == ((D(10), D(0), D(10)), (D(10), D(5), D(5)))
    assert not Event.objects.exists()


def test_unique_count_tells_values_apart_by_type_and_value_not_spelling():
    from metering.rating.price import _distinct_key

    keys = {_distinct_key(v) for v in (1, D("1.0"), D("1E0"), True, "1", D("1.00"), 0, False)}
    assert keys == {"n:1", "b:true", "s:1", "n:0", "b:false"}


# --- a batch in parts -----------------------------------------------------------------------------


def test_a_batch_is_rated_in_parts_of_whole_customers(monkeypatch):
    monkeypatch.setattr(rating_ingest, "RATING_CHUNK_EVENTS", 3)
    by_customer = {7: [None] * 2, 3: [None] * 1, 5: [None] * 4, 9: [None] * 1, 8: [None] * 2}
    # id order; a part closes once it has 3 events; a customer is never split
    assert rating_ingest._chunks(by_customer) == [[3, 5], [7, 8], [9]]
    assert rating_ingest._chunks({}) == []


def test_a_crash_between_parts_keeps_what_was_committed_and_a_retry_charges_once(monkeypatch):
    monkeypatch.setattr(rating_ingest, "RATING_CHUNK_EVENTS", 2)
    units = make_meter("units")
    customers = [subscribe(per_unit(units, "1"), external_id=f"c{i}", funds="10") for i in range(3)]
    batch = [event(f"k{n}", customer=c.external_id, units=1) for c in customers for n in range(2)]
    rate = rating_ingest._rate
    calls = []

    def crash_on_the_second_part(parts, *args, **kwargs):
        calls.append([customer.external_id for customer, _, _ in parts])
        if len(calls) == 2:
            raise RuntimeError("worker killed")
        return rate(parts, *args, **kwargs)

    monkeypatch.setattr(rating_ingest, "_rate", crash_on_the_second_part)
    with pytest.raises(RuntimeError):
        ingest(*batch)
    assert calls == [["c0"], ["c1"]]  # one customer per part (2 events each)
    assert [posted(c) for c in customers] == [D(8), D(10), D(10)]  # the first part stands
    monkeypatch.setattr(rating_ingest, "_rate", rate)
    outcomes = ingest(*batch)  # the client's retry of the whole batch
    assert statuses(outcomes) == ["duplicate"] * 2 + ["accepted"] * 4
    assert [posted(c) for c in customers] == [D(8), D(8), D(8)]
    assert Event.objects.filter(customer__in=customers).count() == 6


# --- what rating reads and how it writes ----------------------------------------------------------


def on_another_connection(work) -> None:
    """Run ``work`` in a thread with its own database connection (as another process would),
    committed before this returns."""
    done: list[object] = []

    def run() -> None:
        try:
            done.append(work())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert done, "the work on the other connection failed"


@pytest.mark.django_db(transaction=True)
def test_a_meter_added_by_another_connection_reads_the_very_next_event():
    """Meters are cached per process; the stamp read with the customers tells a new one."""
    subscribe(per_unit(make_meter("units"), "1"), funds="10")
    assert codes(ingest(event("before", name="api.search", hits=1))) == ["unknown_event_name"]
    on_another_connection(lambda: make_meter("hits", event_name="api.search", prop="hits"))
    assert statuses(ingest(event("after", name="api.search", hits=2))) == ["accepted"]
    assert period_usage(Meter.objects.get(code="hits")).quantity == D(2)


@pytest.mark.django_db(transaction=True)
def test_a_margin_override_set_by_another_connection_prices_the_very_next_event(model_prices):
    total = make_meter("total", event_name="llm.completion", prop="llm.total_tokens")
    customer = subscribe(catalog_charge(total, "20"), funds="1")
    ingest(llm_event("r1", CHAT))
    on_another_connection(
        lambda: MarginOverride.objects.create(customer=customer, meter=None, margin_percent=D(50))
    )
    ingest(llm_event("r2", CHAT))
    assert amounts(customer) == [CHAT_COST * D("1.2"), CHAT_COST * D("1.5")]


def test_usage_of_the_next_period_before_the_renewal_moves_that_periods_counter():
    """Counters are read with the rest for the subscription's current period; an event of
    another period (here May's, sent before the subscription was renewed into May) finds
    its counter by its key, so the period's second event continues what the first began."""
    units = make_meter("units")
    customer = subscribe(per_unit(units, "1"), funds="10")
    may, after = at(2026, 5, 2), at(2026, 5, 3)
    for key, units_sent in (("m1", 2), ("m2", 3)):
        [outcome] = rating.ingest_events([event(key, units=units_sent, ts=may)], now=after)
        assert outcome.status == "accepted"
    counter = PeriodUsage.objects.get(meter=units, period_start=at(2026, 5, 1))
    assert (counter.quantity, counter.event_count, counter.charged) == (D(5), 2, D(5))
    assert posted(customer) == D(5)


def test_an_event_no_meter_reads_is_refused_as_such_before_its_usage_or_customer(model_prices):
    make_meter("output", event_name="llm.completion", prop="llm.output_tokens")
    subscribe(ChargeSpec(meter="output", unit_price=D(0)), funds="1")
    outcomes = ingest(
        rating.EventIn("a", "nobody", "api.unknown", DAY, {"usage": {"prompt_tokens": "x"}}),
        llm_event("b", {"prompt_tokens": 10}, model="gpt-9-ultra", customer="nobody"),
        llm_event("c", {"prompt_tokens": 10, "completion_tokens": 1}, customer="nobody"),
    )
    assert codes(outcomes) == ["unknown_event_name", "unknown_model", "customer_not_found"]


def _stored(customer: Customer) -> dict[str, list[tuple]]:
    """What rating wrote for ``customer``, without ids, times of writing or the customer."""
    events = Event.objects.filter(customer=customer).order_by("idempotency_key")
    return {
        "events": list(
            events.values_list(
                "idempotency_key",
                "event_name",
                "timestamp",
                "properties",
                "period_start",
                "provider",
                "model",
                "model_price_id",
                "input_tokens",
                "cache_read_tokens",
                "output_tokens",
                "currency",
                "amount",
                "cost",
            )
        ),
        "counters": list(
            PeriodUsage.objects.filter(subscription__customer=customer)
            .order_by("meter_id")
            .values_list(
                "meter_id",
                "period_start",
                "period_end",
                "quantity",
                "amount",
                "charged",
                "currency",
                "event_count",
                "latest_at",
            )
        ),
        "distinct": list(
            PeriodDistinctValue.objects.filter(subscription__customer=customer)
            .order_by("meter_id", "value")
            .values_list("meter_id", "period_start", "value")
        ),
        "daily": list(
            DailyUsage.objects.filter(customer=customer)
            .order_by("meter_id", "day", "dimension_key")
            .values_list(
                "meter_id",
                "day",
                "dimension_key",
                "dimensions",
                "quantity",
                "included_quantity",
                "amount",
                "event_count",
            )
        ),
        "models": list(
            ModelUsage.objects.filter(customer=customer).values_list(
                "day", "provider", "model", "event_count", "input_tokens", "amount", "cost"
            )
        ),
    }


def test_rows_sent_as_one_json_document_or_as_arrays_are_stored_alike(monkeypatch, model_prices):
    """A part of a few events sends its rows as JSON, a larger one as arrays (and its events
    by COPY): the same events give the same rows either way, to the last digit."""
    make_meter("units", group_by=["region"])
    make_meter("users", aggregation="unique_count", prop="user")
    make_meter("level", aggregation="latest", prop="level")
    total = make_meter("total", event_name="llm.completion", prop="llm.total_tokens")
    charges = (
        ChargeSpec(meter="units", price_model="graduated", tiers=GRADUATED),
        per_unit(Meter.objects.get(code="users"), "0.000000000001"),
        catalog_charge(total, "12.5"),
    )

    def batch(customer: str) -> list[rating.EventIn]:
        return [
            event("e1", customer=customer, units=D("0.000001"), region="eu", user=7, level=3),
            event("e2", customer=customer, units=D("1E+2"), region="us", user="7", level=D("2.5")),
            event("e3", customer=customer, units=37, user=True, ts=DAY + timedelta(hours=1)),
            llm_event("l1", CHAT, customer=customer, ts=DAY + timedelta(microseconds=1)),
        ]

    stored = []
    for external_id, as_json in (("by-json", 10**6), ("by-arrays", 0)):
        monkeypatch.setattr(rating_sql, "ROWS_AS_JSON", as_json)
        monkeypatch.setattr(rating_write, "EVENTS_BY_INSERT", as_json)
        customer = subscribe(*charges, external_id=external_id, funds="100")
        assert statuses(rating.ingest_events(batch(external_id), now=NOW)) == ["accepted"] * 4
        stored.append(_stored(customer))
    assert stored[0] == stored[1]
    assert len(stored[0]["counters"]) == 4 and len(stored[0]["daily"]) == 6


def test_a_json_document_of_rows_reads_back_what_arrays_read_back():
    """``_rows``' two forms of the same rows, read by PostgreSQL through the same typed
    columns: exact decimals of every size, times with any offset, dates, NULLs, text that
    needs escaping."""
    columns = "n numeric, t timestamptz, d date, s text, b boolean, i bigint"
    offset = timezone(timedelta(hours=5, minutes=30))
    rows = [
        (
            D("1E-12"),
            datetime(2028, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
            date(2028, 2, 29),
            'quote " back \\ new\nline ü €',
            True,
            2**62,
        ),
        (D("-0.000000000001"), datetime(2026, 1, 1, 5, 30, tzinfo=offset), None, "", False, -1),
        (D("123456789012345678.123456789012"), None, date(1999, 12, 31), None, None, None),
        (D("0E-12"), datetime(2026, 12, 7, 0, 0, tzinfo=UTC), date(2026, 12, 7), "x", True, 0),
    ]

    def read_back(as_json: int) -> list[tuple]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(rating_sql, "ROWS_AS_JSON", as_json)
            source, params = rating_sql._rows("r", columns, rows)
        return rating_sql.execute_bound(f"SELECT n, t, d, s, b, i FROM {source}", params)

    by_json, by_arrays = read_back(len(rows)), read_back(0)
    assert by_json == by_arrays
    assert [r[0] for r in by_json] == [r[0] for r in rows]
    assert by_json[1][1] == datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert by_json[0][3] == rows[0][3]


def test_repeated_text_and_times_go_as_positions_and_read_back_as_sent():
    """Of many rows, a text or time column of few distinct values goes as those values and
    each row's position in them (``_rows``); what PostgreSQL reads is what was sent, nasty
    strings (quotes, backslashes, braces, commas, blanks, the word NULL), NULLs, the same
    instant at two offsets and every other column included, as the JSON document reads."""
    columns = "s text, t timestamptz, d date, i bigint, n numeric, u text"
    nasty = ['a "b" \\ c', "", "NULL", "null", " {x,y} ", "ü €\n\t", None, "NULL"]
    noon = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    rows = [
        (
            nasty[k % len(nasty)],
            None if k % 5 == 0 else noon.astimezone(timezone(timedelta(hours=k % 3))),
            None if k % 7 == 0 else date(2026, 12, 1 + k % 2),
            None if k % 11 == 0 else k,
            D(k) / 8,
            f"unique-{k}",  # one value a row: sent as an array of its own
        )
        for k in range(48)
    ]

    def read_back(as_json: int) -> tuple[str, list[tuple]]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(rating_sql, "ROWS_AS_JSON", as_json)
            source, params = rating_sql._rows("r", columns, rows)
        return source, rating_sql.execute_bound(f"SELECT s, t, d, i, n, u FROM {source}", params)

    (by_json_source, by_json), (by_arrays_source, by_arrays) = read_back(len(rows)), read_back(0)
    assert by_json_source.startswith("jsonb_to_recordset")
    assert by_arrays_source.startswith("(SELECT (%s::text[])[s] AS s, (%s::timestamptz[])[t] AS t")
    assert by_arrays == by_json
    assert [r[0] for r in by_arrays] == [r[0] for r in rows]
    assert [r[1] for r in by_arrays] == [r[1] for r in rows]
    assert [r[3:] for r in by_arrays] == [r[3:] for r in rows]
