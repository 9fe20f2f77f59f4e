"""Issue 14: a customer's accepted events of one rating part are posted as ONE ledger
transaction whose legs are the sums of its events; each event keeps its own exact amount,
cost and tokens and points at that transaction."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import pytest

from billing.models import BillingMode
from ledger.models import Entry
from ledger.models import Transaction as LedgerTransaction
from metering import rating
from metering.models import Event
from metering.rating import ingest as rating_ingest
from tests.metering.test_rating import (
    event,
    ingest,
    llm_event,
    make_meter,
    per_unit,
    posted,
    statuses,
    subscribe,
    system_posted,
    wallet_of,
)

pytestmark = pytest.mark.django_db

D = Decimal


def legs(transaction_id: int) -> dict[tuple[str, str], Decimal]:
    return {
        (e.account.code, e.currency): e.amount
        for e in Entry.objects.filter(transaction_id=transaction_id).select_related("account")
    }


def by_transaction(customer) -> dict[int | None, list[Event]]:
    grouped: dict[int | None, list[Event]] = defaultdict(list)
    for row in Event.objects.filter(customer=customer).order_by("id"):
        grouped[row.ledger_transaction_id].append(row)
    return dict(grouped)


def test_two_customers_in_one_batch_get_one_transaction_each_with_summed_legs():
    units = make_meter("units")
    acme = subscribe(per_unit(units, "0.01"), funds="10")
    beta = subscribe(per_unit(units, "0.01"), external_id="beta", funds="10")
    outcomes = ingest(
        event("a1", units=100),
        event("b1", units=7, customer="beta"),
        event("a2", units=250),
        event("b2", units=3, customer="beta"),
        event("a3", units=1),
    )
    assert statuses(outcomes) == ["accepted"] * 5
    assert [o.event["amount"] for o in outcomes] == [
        D(1),
        D("0.07"),
        D("2.5"),
        D("0.03"),
        D("0.01"),
    ]
    for customer, total, first in ((acme, D("3.51"), "a1"), (beta, D("0.1"), "b1")):
        [(transaction_id, rows)] = by_transaction(customer).items()
        transaction = LedgerTransaction.objects.get(pk=transaction_id)
        assert transaction.reference == f"usage:{customer.pk}:{first}"
        assert transaction.metadata["events"] == len(rows)
        assert legs(transaction_id) == {
            (f"wallet:{customer.pk}:USD", "USD"): total,
            ("@Revenue", "USD"): -total,
        }
        assert sum(row.amount for row in rows) == total
        assert posted(customer) == D(10) - total
    # the outcome names the shared transaction
    assert outcomes[0].event["ledger_transaction_id"] == outcomes[2].event["ledger_transaction_id"]
    assert outcomes[0].event["ledger_transaction_id"] != outcomes[1].event["ledger_transaction_id"]


def test_llm_events_post_one_token_leg_and_keep_their_own_tokens_and_cost(model_prices):
    output = make_meter("output", event_name="llm.completion", prop="llm.output_tokens")
    customer = subscribe(per_unit(output, "0.00001"), funds="1")
    outcomes = ingest(
        llm_event("r1", {"prompt_tokens": 1000, "completion_tokens": 200}),
        llm_event("r2", {"prompt_tokens": 500, "completion_tokens": 100}),
    )
    assert statuses(outcomes) == ["accepted"] * 2
    rows = Event.objects.filter(customer=customer).order_by("id")
    # each event its own: 200 × 0.00001 and 100 × 0.00001; cost 0.0025 + 0.002, 0.00125 + 0.001
    assert [(r.input_tokens, r.output_tokens, r.amount, r.cost) for r in rows] == [
        (1000, 200, D("0.002"), D("0.0045")),
        (500, 100, D("0.001"), D("0.00225")),
    ]
    [transaction_id] = {r.ledger_transaction_id for r in rows}
    assert legs(transaction_id) == {
        (f"tokens:{customer.pk}", "TOKENS"): D(1800),
        ("@TokensServed", "TOKENS"): D(-1800),
        (f"wallet:{customer.pk}:USD", "USD"): D("0.003"),
        ("@Revenue", "USD"): D("-0.003"),
    }
    metadata = LedgerTransaction.objects.get(pk=transaction_id).metadata
    assert (metadata["model"], metadata["provider"], D(metadata["cost_usd"])) == (
        "gpt-4o",
        "openai",
        D("0.00675"),
    )


def test_a_refused_event_mid_batch_is_in_no_sum_and_the_later_ones_still_fit():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0.01"), funds="3")
    outcomes = ingest(
        event("a", units=200),  # 2
        event("b", units=150),  # 1.5: only 1 left, refused
        event("c", units=100),  # 1
    )
    assert statuses(outcomes) == ["accepted", "rejected", "accepted"]
    assert outcomes[1].error.code == "insufficient_funds"
    [(transaction_id, rows)] = by_transaction(customer).items()
    assert [r.idempotency_key for r in rows] == ["a", "c"]
    assert legs(transaction_id)[(f"wallet:{customer.pk}:USD", "USD")] == D(3)
    assert posted(customer) == D(0)


def test_a_retried_overlapping_batch_posts_only_its_new_events_under_their_own_reference():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0.01"), funds="10")
    first = ingest(event("a", units=100), event("b", units=100))
    again = ingest(event("a", units=100), event("b", units=100), event("c", units=50))
    assert statuses(first) == ["accepted", "accepted"]
    assert statuses(again) == ["duplicate", "duplicate", "accepted"]
    # the duplicates name the first transaction; the new event its own, named after it
    assert again[0].event["ledger_transaction_id"] == first[0].event["ledger_transaction_id"]
    fresh = LedgerTransaction.objects.get(pk=again[2].event["ledger_transaction_id"])
    assert fresh.reference == f"usage:{customer.pk}:c"
    assert legs(fresh.pk)[(f"wallet:{customer.pk}:USD", "USD")] == D("0.5")
    assert posted(customer) == D("7.5")
    assert system_posted("@Revenue", "USD") == D("2.5")
    # a full retry posts nothing
    assert statuses(ingest(event("a", units=100), event("c", units=50))) == ["duplicate"] * 2
    assert posted(customer) == D("7.5")


def test_each_rating_part_posts_its_own_transaction_per_customer(monkeypatch):
    monkeypatch.setattr(rating_ingest, "RATING_CHUNK_EVENTS", 2)
    units = make_meter("units")
    customers = [
        subscribe(per_unit(units, "0.01"), external_id=name, funds="10")
        for name in ("p1", "p2", "p3")
    ]
    outcomes = ingest(
        *(
            event(f"{c.external_id}-{i}", customer=c.external_id, units=10)
            for c in customers
            for i in range(2)
        )
    )
    assert statuses(outcomes) == ["accepted"] * 6
    for customer in customers:
        [(transaction_id, rows)] = by_transaction(customer).items()
        assert len(rows) == 2
        assert legs(transaction_id)[(f"wallet:{customer.pk}:USD", "USD")] == D("0.2")


def test_postpaid_credit_limit_refuses_per_event_inside_one_posting():
    units = make_meter("units")
    customer = subscribe(per_unit(units, "1"), billing_mode=BillingMode.POSTPAID, credit_limit="5")
    outcomes = ingest(event("a", units=3), event("b", units=3), event("c", units=2))
    assert statuses(outcomes) == ["accepted", "rejected", "accepted"]
    assert outcomes[1].error.code == "credit_limit_exceeded"
    [(transaction_id, rows)] = by_transaction(customer).items()
    assert legs(transaction_id)[(f"wallet:{customer.pk}:USD", "USD")] == D(5)
    assert posted(customer) == D(-5)
    assert wallet_of(customer).account.entries.count() == 1


def test_a_batch_across_a_change_to_a_credits_plan_posts_a_money_leg_per_currency():
    """A period's plan decides how it is rated: a customer's batch with events on both
    sides of a change to a credits plan is one transaction with a USD and a CREDITS leg."""
    from billing import services
    from billing.models import SubscriptionPhase
    from billing.services import ChargeSpec, PlanSpec
    from tests.billing.conftest import at
    from tests.conftest import unique

    units = make_meter("units")
    customer = subscribe(per_unit(units, "0.01"), funds="10")
    credits_plan, _ = services.publish_plan(
        spec=PlanSpec(
            code=unique("plan"),
            name="Credits",
            consumption_model="credits",
            units_per_credit=D(1000),
            charges=(ChargeSpec(meter="units", unit_price=D("0.01")),),
        )
    )
    subscription = customer.subscriptions.get()
    SubscriptionPhase.objects.create(
        subscription=subscription, plan=credits_plan, starts_at=at(2026, 5, 1)
    )
    services.ensure_wallet(customer=customer, currency="CREDITS")
    services.top_up(customer=customer, amount=D(5), currency="CREDITS")
    outcomes = rating.ingest_events(
        [
            event("april", units=100),  # 1 USD
            event("may", units=2000, ts=at(2026, 5, 2)),  # 2 credits
            event("april-2", units=50),  # 0.5 USD
        ],
        now=at(2026, 5, 3),
    )
    assert statuses(outcomes) == ["accepted"] * 3
    assert [o.event["currency"] for o in outcomes] == ["USD", "CREDITS", "USD"]
    [(transaction_id, rows)] = by_transaction(customer).items()
    assert len(rows) == 3
    assert legs(transaction_id) == {
        (f"wallet:{customer.pk}:USD", "USD"): D("1.5"),
        ("@Revenue", "USD"): D("-1.5"),
        (f"wallet:{customer.pk}:CREDITS", "CREDITS"): D(2),
        ("@CreditsUsed", "CREDITS"): D(-2),
    }
    assert (posted(customer), posted(customer, "CREDITS")) == (D("8.5"), D(3))
