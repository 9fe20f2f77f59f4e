"""PostgreSQL refuses events whose ledger transaction's legs are not their sums (metering
migration 0006), whoever writes the rows: one usage transaction per customer per rating
pass is only trustworthy if Σ of its events is its legs, exactly."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import DatabaseError, connection, transaction

from billing import services as billing_services
from ledger import services as ledger
from metering.models import Event
from tests.metering.test_rating import DAY, event, ingest, make_meter, per_unit, subscribe

pytestmark = pytest.mark.django_db

D = Decimal


@pytest.fixture
def rated():
    """Two events of acme rated together: one transaction, wallet debited 3.5."""
    units = make_meter("units")
    customer = subscribe(per_unit(units, "0.01"), funds="10")
    outcomes = ingest(event("a", units=100), event("b", units=250))
    assert [o.status for o in outcomes] == ["accepted", "accepted"]
    return customer, outcomes[0].event["ledger_transaction_id"]


def add_event(customer, transaction_id, key, *, amount="0", currency="USD", **tokens) -> Event:
    template = Event.objects.filter(customer=customer).first()
    return Event.objects.create(
        customer=customer,
        idempotency_key=key,
        event_name="api.call",
        timestamp=DAY,
        properties={},
        subscription_id=template.subscription_id if template else None,
        currency=currency,
        amount=D(amount),
        ledger_transaction_id=transaction_id,
        **tokens,
    )


def refused(callable_) -> None:
    with pytest.raises(DatabaseError) as caught, transaction.atomic():
        callable_()
    assert caught.value.__cause__.sqlstate == "MT002"
    assert "sum to" in str(caught.value)


def test_an_extra_event_for_a_complete_transaction_is_refused(rated):
    customer, transaction_id = rated
    refused(lambda: add_event(customer, transaction_id, "late", amount="1"))
    # even one that would move nothing in money but claims tokens the legs do not have
    refused(lambda: add_event(customer, transaction_id, "tokens", output_tokens=10))
    assert Event.objects.filter(customer=customer).count() == 2


def posting(customer, *, money: str, tokens: int = 0):
    wallet = billing_services.ensure_wallet(customer=customer, currency="USD")
    revenue = ledger.ensure_system_account(code="@Revenue", currency="USD")
    legs = [ledger.debit(wallet.account_id, money), ledger.credit(revenue, money)]
    if tokens:
        usage = billing_services.usage_account(customer=customer)
        served = ledger.ensure_system_account(code="@TokensServed", currency="TOKENS")
        legs += [ledger.debit(usage, tokens), ledger.credit(served, tokens)]
    return ledger.post_transaction(reference=f"usage:{customer.pk}:hand", legs=legs)


def test_events_that_do_not_sum_to_the_legs_are_refused_and_those_that_do_are_kept():
    customer = subscribe(per_unit(make_meter("units"), "0.01"), funds="10")
    posted = posting(customer, money="5", tokens=300)
    refused(lambda: add_event(customer, posted.pk, "x", amount="4", output_tokens=300))
    refused(lambda: add_event(customer, posted.pk, "x", amount="5", output_tokens=299))
    refused(lambda: add_event(customer, posted.pk, "x", amount="5", currency="EUR"))

    def two_that_sum() -> None:  # one statement, as rating writes them
        Event.objects.bulk_create(
            [
                Event(
                    customer=customer,
                    idempotency_key=key,
                    event_name="api.call",
                    timestamp=DAY,
                    currency="USD",
                    amount=D(amount),
                    input_tokens=inp,
                    output_tokens=out,
                    ledger_transaction_id=posted.pk,
                )
                for key, amount, inp, out in (("y1", "1.25", 100, 50), ("y2", "3.75", 0, 150))
            ]
        )

    with transaction.atomic():
        two_that_sum()
    assert Event.objects.filter(ledger_transaction_id=posted.pk).count() == 2


def test_rating_itself_passes_the_rule_for_every_transaction(rated):
    customer, transaction_id = rated
    rows = Event.objects.filter(ledger_transaction_id=transaction_id)
    assert sum(r.amount for r in rows) == D("3.5")


@pytest.mark.django_db
def test_the_rule_reads_by_index_whatever_plan_a_connection_cached():
    """Migration 0008: a plan cached while the tables were empty scanned them whole for
    every transaction (0.4-2.3 ms per event in bench-ingest); the function forbids it
    (since 0016 the one function that checks both the references and the sums)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT proconfig FROM pg_proc WHERE proname = 'metering_event_checks'")
        (config,) = cursor.fetchone()
    assert "enable_seqscan=off" in config and "jit=off" in config
