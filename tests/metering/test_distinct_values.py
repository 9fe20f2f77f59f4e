"""unique_count meters: the values a period has counted are rows of PeriodDistinctValue, one
per (subscription, meter, period, value); rating looks up only the values of the events it
rates and inserts the new ones with the counter (issue 14). A value is counted once per
period — across batches, inside a batch, under concurrency — and the lists the counters
kept before move into the table (migration 0010)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Sum
from django.utils import timezone

from billing.models import Subscription
from billing.services import ChargeSpec
from ledger import selectors as ledger_selectors
from metering import rating
from metering.models import Event, PeriodDistinctValue, PeriodUsage
from tests.billing.conftest import at
from tests.databases import own_database
from tests.metering import test_concurrency as concurrent
from tests.metering.test_rating import (
    CHAT,
    NOW,
    START,
    D,
    amounts,
    distinct_values,
    event,
    ingest,
    llm_event,
    make_meter,
    per_unit,
    posted,
    statuses,
    subscribe,
)
from tests.threads import run_concurrently


def users_meter():
    return make_meter("users", event_name="user.active", prop="user", aggregation="unique_count")


def active(key: str, user, **kw) -> rating.EventIn:
    return event(key, name="user.active", user=user, **kw)


@pytest.mark.django_db
@pytest.mark.parametrize("size", [2, 40])  # rows as JSON and events inserted; arrays and COPY
def test_a_value_counted_by_an_earlier_batch_is_not_counted_again(size):
    users = users_meter()
    customer = subscribe(per_unit(users, "1"), funds="1000")
    first = [active(f"a{i}", f"user-{i}") for i in range(size)]
    assert statuses(ingest(*first)) == ["accepted"] * size
    # half of the second batch was counted by the first; the other half is new
    second = [active(f"b{i}", f"user-{i + size // 2}") for i in range(size)]
    assert statuses(ingest(*second)) == ["accepted"] * size
    assert amounts(customer) == [D(1)] * size + [D(0)] * (size // 2) + [D(1)] * (size // 2)
    usage = PeriodUsage.objects.get(meter=users)
    assert (usage.quantity, usage.charged, usage.event_count) == (
        D(size + size // 2),
        D(size + size // 2),
        2 * size,
    )
    assert distinct_values(users) == [f"s:user-{i}" for i in range(size + size // 2)]
    assert posted(customer) == D(1000) - D(size + size // 2)


@pytest.mark.django_db
def test_the_same_new_value_twice_in_one_batch_counts_once():
    users = users_meter()
    customer = subscribe(per_unit(users, "1"), funds="10")
    ingest(active("a", "ann"))
    # 7, 7.0 and 7e0 are one number; "7" and true are other values
    outcomes = ingest(
        active("b", "dan"),
        active("c", "dan"),
        active("d", 7),
        active("e", D("7.0")),
        active("f", D("7E0")),
        active("g", "7"),
        active("h", True),
        active("i", "ann"),
    )
    assert statuses(outcomes) == ["accepted"] * 8
    assert amounts(customer)[1:] == [D(1), D(0), D(1), D(0), D(0), D(1), D(1), D(0)]
    assert PeriodUsage.objects.get(meter=users).quantity == D(5)
    assert distinct_values(users) == ["s:ann", "s:dan", "n:7", "s:7", "b:true"]


@pytest.mark.django_db
def test_values_are_counted_once_per_period():
    """March is a past period (its events sent late, their counter looked up apart), April the
    current one (read with the subscription): a value counts once in each."""
    users = users_meter()
    customer = subscribe(per_unit(users, "1"), funds="10", start=at(2026, 3, 1))
    march, april = at(2026, 3, 20), at(2026, 4, 10)
    assert (
        statuses(ingest(active("m1", "ann", ts=march), active("m2", "bob", ts=march)))
        == ["accepted"] * 2
    )
    assert statuses(ingest(active("a1", "ann", ts=april))) == ["accepted"]
    assert (
        statuses(
            ingest(
                active("m3", "ann", ts=march),  # counted in March already
                active("a2", "bob", ts=april),  # counted in March, not in April
                active("a3", "ann", ts=april),  # counted in April already
                active("m4", "cy", ts=march),
            )
        )
        == ["accepted"] * 4
    )
    assert statuses(ingest(active("m5", "bob", ts=march))) == ["accepted"]
    assert amounts(customer) == [D(1), D(1), D(1), D(0), D(1), D(0), D(1), D(0)]
    quantities = {u.period_start: u.quantity for u in PeriodUsage.objects.filter(meter=users)}
    assert quantities == {at(2026, 3, 1): D(3), START: D(2)}
    rows = PeriodDistinctValue.objects.filter(meter=users)
    assert sorted((r.period_start, r.value) for r in rows) == [
        (at(2026, 3, 1), "s:ann"),
        (at(2026, 3, 1), "s:bob"),
        (at(2026, 3, 1), "s:cy"),
        (START, "s:ann"),
        (START, "s:bob"),
    ]


@pytest.mark.django_db
def test_an_estimate_knows_the_values_counted_this_period(model_prices):
    """A meter counting the distinct models a customer used: an estimate for a model used
    this period adds nothing, for another model one."""
    make_meter("models", event_name="llm.completion", prop="model", aggregation="unique_count")
    customer = subscribe(ChargeSpec(meter="models", unit_price=D(1)), funds="10")
    assert statuses(ingest(llm_event("r1", CHAT, model="gpt-4o"))) == ["accepted"]

    def estimate(model: str):
        return rating.estimate(
            customer=customer,
            model=model,
            input_tokens=100,
            output_tokens=10,
            event_name="llm.completion",
            now=NOW,
        ).amount

    assert (estimate("gpt-4o"), estimate("gpt-4o-mini")) == (D(0), D(1))


# --- concurrency ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_two_threads_rating_overlapping_values_of_one_customer_count_each_once():
    users = concurrent.make_meter("user.active", prop="user", aggregation="unique_count")
    customer = concurrent.subscribe(ChargeSpec(meter=users.code, unit_price=D(1)), funds=D(10_000))
    when = timezone.now()
    rounds, size = 6, 40

    def worker(i: int) -> list[str]:
        statuses = []
        for r in range(rounds):
            # thread 0 sends values 0-39 of the round, thread 1 values 20-59: 20 in common
            batch = [
                concurrent.event(customer, f"t{i}-r{r}-{n}", "user.active", when, user=f"r{r}-{n}")
                for n in range(20 * i, 20 * i + size)
            ]
            if r % 2:  # every other round one event at a time (the single-event path)
                statuses += [rating.ingest_events([e])[0].status for e in batch]
            else:
                statuses += [o.status for o in rating.ingest_events(batch)]
        return statuses

    results = run_concurrently(worker, 2)
    assert concurrent.unexpected(results) == []
    assert results == [["accepted"] * rounds * size] * 2
    distinct = rounds * 60
    usage = PeriodUsage.objects.get(meter=users)
    assert (usage.quantity, usage.charged, usage.event_count) == (
        D(distinct),
        D(distinct),
        2 * rounds * size,
    )
    assert PeriodDistinctValue.objects.filter(meter=users).count() == distinct
    charged = Event.objects.filter(customer=customer).aggregate(total=Sum("amount"))["total"]
    assert charged == D(distinct)
    wallet = concurrent.wallet_of(customer)
    assert ledger_selectors.get_balance(account=wallet.account).posted == D(10_000 - distinct)


# --- the migration --------------------------------------------------------------------------------


BEFORE, AFTER = (
    ("metering", "0009_meter_in_core"),
    ("metering", "0011_remove_periodusage_distinct_values"),
)


def migrate(target: tuple[str, str]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    # Forward: to the latest migration of every app (0011 and all after it), as rating, run
    # after it, writes today's columns (metering 0012 added metering_event.project_id); going
    # back to 0009 also unapplied the other apps' migrations that depend on metering (billing
    # 0019_staff_roles and every billing migration after it), which must come back too.
    targets = executor.loader.graph.leaf_nodes() if target == AFTER else [target]
    executor.migrate(targets)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_migration_moves_each_counters_list_into_rows_and_back(migrated_test_database_copy):
    # In a copy of the migrated test database: the test database stays on the latest
    # migrations, and the copy is dropped at the end rather than migrated forward again.
    with own_database(copy_of=migrated_test_database_copy):
        _the_migration_moves_each_counters_list_into_rows_and_back()


def _the_migration_moves_each_counters_list_into_rows_and_back():
    users = users_meter()
    other = make_meter("others", event_name="user.active", prop="other", aggregation="unique_count")
    customer = subscribe(per_unit(users, "1"), funds="10")
    subscription = Subscription.objects.get(customer=customer)
    counters = [
        (users.pk, START, '["s:ann", "n:1", "b:true"]', 3),
        (users.pk, at(2026, 3, 1), '["s:ann"]', 1),  # another period
        (other.pk, START, "[]", 0),
    ]
    migrate(BEFORE)
    with connection.cursor() as cursor:
        for meter_id, start, values, quantity in counters:
            cursor.execute(
                "INSERT INTO metering_periodusage (subscription_id, meter_id, period_start, "
                "period_end, quantity, amount, charged, currency, event_count, "
                "distinct_values, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, 'USD', %s, %s::jsonb, now())",
                [
                    subscription.pk,
                    meter_id,
                    start,
                    start + timedelta(days=31),
                    quantity,
                    quantity,
                    quantity,
                    quantity,
                    values,
                ],
            )
    migrate(AFTER)
    rows = PeriodDistinctValue.objects.order_by("id")
    assert [(r.meter_id, r.period_start, r.value) for r in rows] == [
        (users.pk, START, "s:ann"),
        (users.pk, START, "n:1"),
        (users.pk, START, "b:true"),
        (users.pk, at(2026, 3, 1), "s:ann"),
    ]
    assert all(r.subscription_id == subscription.pk for r in rows)
    # rating reads the moved rows: ann and 1 (spelt 1.0) were counted, bob was not
    assert (
        statuses(ingest(active("a", "ann"), active("b", D("1.0")), active("c", "bob")))
        == ["accepted"] * 3
    )
    assert amounts(customer) == [D(0), D(0), D(1)]
    assert PeriodUsage.objects.get(meter=users, period_start=START).quantity == D(4)
    # reversed, each list is rebuilt from its rows in the order they came
    migrate(BEFORE)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT meter_id, period_start, distinct_values FROM metering_periodusage ORDER BY id"
        )
        lists = [(m, p, json.loads(v)) for m, p, v in cursor.fetchall()]
    assert lists == [
        (users.pk, START, ["s:ann", "n:1", "b:true", "s:bob"]),
        (users.pk, at(2026, 3, 1), ["s:ann"]),
        (other.pk, START, []),
    ]
