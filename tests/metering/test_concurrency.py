"""Rating under concurrency on real PostgreSQL: 8 to 24 threads, each with its own
connection, committing for real (``transaction=True``: a TestCase transaction would hide
every locking bug).

Retries of one event; the first usage of many customers at once; batches spanning several
customers in different orders; many spenders on one prepaid wallet; overlapping batches
against graduated tiers; holds placed, released and settled while usage is rated (at random,
and in the two orders forced step by step); one retry storm through real HTTP. Expected
figures are computed here by hand, never by the code under test."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime
from decimal import Decimal

import pytest
from django.db import connections, transaction
from django.db.models import Sum
from django.utils import timezone

from billing import services
from billing.models import Customer, Meter, Wallet
from billing.services import ChargeSpec, PlanSpec, TierSpec
from ledger import errors as ledger_errors
from ledger import selectors
from ledger import services as ledger
from ledger.models import Account, Balance, Entry, Hold
from ledger.models import Transaction as LedgerTransaction
from metering import rating
from metering.models import DailyUsage, Event, ModelUsage, PeriodUsage
from metering.rating import ingest as rating_ingest
from tests.conftest import unique
from tests.threads import run_concurrently

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

THREADS = 16


# --- set-up through the services ------------------------------------------------------------------


def make_meter(event_name: str, *, prop: str = "units", aggregation: str = "sum") -> Meter:
    return services.create_meter(
        code=unique("meter"), event_name=event_name, aggregation=aggregation, property=prop
    )


def subscribe(*charges: ChargeSpec, funds: Decimal) -> Customer:
    """A prepaid customer with ``funds`` in its USD wallet, subscribed to a plan of ``charges``."""
    plan, _ = services.publish_plan(
        spec=PlanSpec(code=unique("plan"), name="Usage", charges=tuple(charges))
    )
    customer = services.create_customer(external_id=unique("cus"), name="Acme Robotics")
    services.top_up(customer=customer, amount=funds)
    services.create_subscription(customer=customer, plan=plan)
    return customer


def wallet_of(customer: Customer) -> Wallet:
    return services.wallet_for(customer=customer)


def event(customer: Customer, key: str, name: str, at: datetime, **properties) -> rating.EventIn:
    return rating.EventIn(
        idempotency_key=key,
        customer=customer.external_id,
        event_name=name,
        timestamp=at,
        properties=properties,
    )


def unexpected(results: list[object]) -> list[BaseException]:
    return [r for r in results if isinstance(r, BaseException)]


def usage_references(customer: Customer):
    return LedgerTransaction.objects.filter(reference__startswith=f"usage:{customer.pk}:")


def period_usage(meter: Meter) -> PeriodUsage:
    return PeriodUsage.objects.get(meter=meter)


# --- one event, many retries ----------------------------------------------------------------------


def test_one_event_retried_by_many_threads_at_once_is_stored_and_charged_once(model_prices):
    name = unique("llm")
    tokens = make_meter(name, prop="llm.total_tokens")
    calls = make_meter(name, prop="", aggregation="count")
    customer = subscribe(
        ChargeSpec(meter=tokens.code, margin_percent=Decimal(20)),
        ChargeSpec(meter=calls.code, unit_price=Decimal("0.001")),
        funds=Decimal(100),
    )
    key = unique("req")
    retry = event(
        customer,
        key,
        name,
        timezone.now(),
        model="gpt-4o-2024-08-06",
        provider="openai",
        usage={
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024},
        },
    )
    # gpt-4o: 176 uncached input at 2.5/M, 1,024 cached at 1.25/M, 300 output at 10/M
    cost = Decimal(176) * Decimal("2.5") / 10**6 + Decimal(1024) * Decimal("1.25") / 10**6
    cost += Decimal(300) * 10 / Decimal(10**6)
    assert cost == Decimal("0.00472")
    token_charge = cost * Decimal("1.2")  # 20 % margin: 0.005664
    charge = token_charge + Decimal("0.001")  # and one call

    results = run_concurrently(lambda i: rating.ingest_events([retry])[0], threads=24)

    assert unexpected(results) == []
    assert Counter(r.status for r in results) == {"accepted": 1, "duplicate": 23}
    stored = Event.objects.get(customer=customer)
    assert {r.event["id"] for r in results} == {stored.pk}
    assert {r.event["amount"] for r in results} == {charge}
    assert (stored.idempotency_key, stored.amount, stored.cost) == (key, charge, cost)
    assert (stored.input_tokens, stored.cache_read_tokens, stored.output_tokens) == (176, 1024, 300)

    # One ledger transaction: the wallet debited once, 1,500 tokens served once.
    posted = usage_references(customer)
    assert list(posted.values_list("reference", flat=True)) == [f"usage:{customer.pk}:{key}"]
    assert stored.ledger_transaction_id == posted.get().pk
    wallet = wallet_of(customer).account
    assert selectors.get_balance(account=wallet).posted == Decimal(100) - charge
    assert selectors.balance_from_entries(account=wallet) == Decimal(100) - charge
    assert Entry.objects.filter(account=wallet, amount__gt=0).count() == 1
    token_account = Account.objects.get(code=f"tokens:{customer.pk}", currency="TOKENS")
    assert selectors.get_balance(account=token_account).posted == 1500

    # The counters moved once.
    tokens_usage, calls_usage = period_usage(tokens), period_usage(calls)
    assert (tokens_usage.quantity, tokens_usage.event_count) == (1500, 1)
    assert (tokens_usage.amount, tokens_usage.charged) == (token_charge, token_charge)
    assert (calls_usage.quantity, calls_usage.event_count, calls_usage.charged) == (
        1,
        1,
        Decimal("0.001"),
    )
    daily = DailyUsage.objects.get(meter=tokens)
    assert (daily.quantity, daily.event_count, daily.amount) == (1500, 1, token_charge)
    model_usage = ModelUsage.objects.get(customer=customer)
    assert (model_usage.event_count, model_usage.input_tokens, model_usage.cache_read_tokens) == (
        1,
        176,
        1024,
    )
    assert (model_usage.output_tokens, model_usage.amount, model_usage.cost) == (300, charge, cost)


# --- many customers -------------------------------------------------------------------------------


def test_the_first_usage_of_many_customers_at_once_creates_each_shared_account_once(
    model_prices,
):
    """On a fresh ledger, the first rated events create @Revenue, @TokensServed and each
    customer's token account inside concurrent rating transactions: each exactly once."""
    name = unique("llm")
    tokens = make_meter(name, prop="llm.total_tokens")
    plan_charge = ChargeSpec(meter=tokens.code, margin_percent=Decimal(50))
    customers = [subscribe(plan_charge, funds=Decimal(1)) for _ in range(THREADS)]
    assert not Account.objects.filter(code__in=[rating.REVENUE, "@TokensServed"]).exists()
    at = timezone.now()
    # gpt-4o-mini: 1,000 input at 0.15/M and 200 output at 0.6/M = 0.00027; +50 %
    charge = (Decimal(1000) * Decimal("0.15") + Decimal(200) * Decimal("0.6")) / 10**6 * 3 / 2

    def first_call(i: int) -> rating.Outcome:
        usage = {"prompt_tokens": 1000, "completion_tokens": 200}
        e = event(customers[i], "first", name, at, model="gpt-4o-mini", usage=usage)
        return rating.ingest_events([e])[0]

    results = run_concurrently(first_call, THREADS)

    assert unexpected(results) == []
    assert {(r.status, r.event["amount"]) for r in results} == {("accepted", charge)}
    revenue = Account.objects.get(code=rating.REVENUE, currency="USD")
    served = Account.objects.get(code="@TokensServed", currency="TOKENS")
    assert selectors.get_balance(account=revenue).posted == charge * THREADS
    assert selectors.get_balance(account=served).posted == 1200 * THREADS
    for customer in customers:
        token_account = Account.objects.get(code=f"tokens:{customer.pk}", currency="TOKENS")
        assert selectors.get_balance(account=token_account).posted == 1200
        wallet = wallet_of(customer).account
        assert selectors.get_balance(account=wallet).posted == 1 - charge


@pytest.mark.parametrize("chunk_events", [250, 5], ids=["one-part", "parts"])
def test_batches_spanning_several_customers_in_any_order_neither_deadlock_nor_lose_usage(
    monkeypatch, chunk_events
):
    """With parts of 5 events a batch of 4 customers × 5 events is four transactions."""
    monkeypatch.setattr(rating_ingest, "RATING_CHUNK_EVENTS", chunk_events)
    name = unique("api")
    units = make_meter(name)
    plan_charge = ChargeSpec(meter=units.code, unit_price=Decimal("0.001"))
    customers = [subscribe(plan_charge, funds=Decimal(100)) for _ in range(4)]
    at = timezone.now()
    threads, batches, per_customer = 8, 2, 5

    def batch(i: int, b: int) -> list[rating.EventIn]:
        order = customers[i % 4 :] + customers[: i % 4]  # each thread its own customer order
        if i % 2:
            order.reverse()
        return [
            event(c, f"{i}-{b}-{n}", name, at, units=1 + (i + b + n) % 9)
            for n in range(per_customer)
            for c in order
        ]

    def send(i: int) -> list[str]:
        return [o.status for b in range(batches) for o in rating.ingest_events(batch(i, b))]

    results = run_concurrently(send, threads)

    assert unexpected(results) == []
    assert {s for statuses in results for s in statuses} == {"accepted"}
    for customer in customers:
        expected = sum(
            e.properties["units"]
            for i in range(threads)
            for b in range(batches)
            for e in batch(i, b)
            if e.customer == customer.external_id
        )
        counter = PeriodUsage.objects.get(meter=units, subscription__customer=customer)
        assert counter.quantity == expected
        assert counter.event_count == threads * batches * per_customer
        wallet = wallet_of(customer).account
        assert selectors.get_balance(account=wallet).posted == 100 - expected * Decimal("0.001")
        assert Event.objects.filter(customer=customer).count() == counter.event_count


# --- many spenders, one prepaid wallet ------------------------------------------------------------


def test_many_threads_spending_one_prepaid_wallet_never_overdraw_it_nor_lose_usage():
    name = unique("api")
    units = make_meter(name)
    funds = Decimal(25)
    customer = subscribe(ChargeSpec(meter=units.code, unit_price=Decimal("0.01")), funds=funds)
    wallet = wallet_of(customer).account
    at = timezone.now()
    per_thread = 8

    def quantity(i: int, n: int) -> int:
        return 20 + (i * 37 + n * 11) % 131  # 20 to 150 units: 0.20 to 1.50 each

    attempted = {
        f"spend-{i}-{n}": quantity(i, n) for i in range(THREADS) for n in range(per_thread)
    }
    assert sum(attempted.values()) * Decimal("0.01") > 4 * funds

    def spend(i: int) -> list[tuple[str, rating.Outcome]]:
        events = [
            event(customer, f"spend-{i}-{n}", name, at, units=quantity(i, n))
            for n in range(per_thread)
        ]
        if i % 2:  # half the threads send one batch, half one event at a time
            outcomes = rating.ingest_events(events)
            return [(e.idempotency_key, o) for e, o in zip(events, outcomes, strict=True)]
        return [(e.idempotency_key, rating.ingest_events([e])[0]) for e in events]

    results = run_concurrently(spend, THREADS)

    assert unexpected(results) == []
    outcomes = dict(pair for result in results for pair in result)
    assert set(outcomes) == set(attempted)
    accepted = {k for k, o in outcomes.items() if o.status == "accepted"}
    rejected = {k for k, o in outcomes.items() if o.status == "rejected"}
    assert accepted | rejected == set(attempted)
    assert accepted and rejected
    assert {outcomes[k].error.code for k in rejected} == {"insufficient_funds"}
    charge = {k: q * Decimal("0.01") for k, q in attempted.items()}
    for k in accepted:
        assert outcomes[k].event["amount"] == charge[k]

    # The wallet: never below zero, debited by exactly what was accepted.
    balance = Balance.objects.get(account=wallet)
    assert balance.posted >= 0 and balance.held == 0
    assert selectors.balance_from_entries(account=wallet) == balance.posted
    spent = sum(charge[k] for k in accepted)
    assert funds - balance.posted == spent
    # Every accepted event points at a usage transaction whose wallet debit is the sum of
    # its events (one per customer per rating pass since issue 14, not one per event).
    linked = Event.objects.filter(customer=customer, ledger_transaction__isnull=False)
    assert linked.count() == len(accepted)
    debits = Entry.objects.filter(account=wallet, amount__gt=0)
    assert set(debits.values_list("transaction_id", flat=True)) == set(
        linked.values_list("ledger_transaction_id", flat=True)
    )
    assert debits.aggregate(total=Sum("amount"))["total"] == spent
    # Each refusal was right: the wallet only shrank, and it cannot cover the refused event now.
    assert all(charge[k] > balance.posted for k in rejected)

    # Events and counters: one row per accepted event, no lost update.
    events = Event.objects.filter(customer=customer)
    assert set(events.values_list("idempotency_key", flat=True)) == accepted
    assert events.aggregate(total=Sum("amount"))["total"] == spent
    # one usage transaction per customer per rating pass (issue 14), each linked
    assert usage_references(customer).count() == len(
        set(events.values_list("ledger_transaction_id", flat=True))
    )
    counter = period_usage(units)
    assert counter.quantity == sum(attempted[k] for k in accepted)
    assert counter.event_count == len(accepted)
    assert counter.charged == counter.amount == spent


# --- overlapping batches, graduated tiers ---------------------------------------------------------


def test_overlapping_batches_from_many_threads_charge_each_key_once_at_the_graduated_total():
    name = unique("api")
    units = make_meter(name)
    tiers = (
        TierSpec(up_to=Decimal(200), unit_price=Decimal("0.05")),
        TierSpec(up_to=Decimal(1000), unit_price=Decimal("0.02"), flat_fee=Decimal(2)),
        TierSpec(up_to=None, unit_price=Decimal("0.005"), flat_fee=Decimal(1)),
    )
    funds = Decimal(1000)
    customer = subscribe(
        ChargeSpec(
            meter=units.code,
            price_model="graduated",
            included_quantity=Decimal(50),
            tiers=tiers,
        ),
        funds=funds,
    )
    at = timezone.now()
    threads, batches, size = 8, 4, 50

    def quantity(k: int) -> int:
        return 1 + (k * 7) % 13

    def batch_keys(i: int, b: int) -> list[int]:
        # Round b of thread i overlaps round b of threads i - 1 and i + 1 by half: those
        # batches are sent at the same time.
        start = (b * threads + i) * (size // 2)
        return list(range(start, start + size))

    def send(i: int) -> list[tuple[int, rating.Outcome]]:
        sent = []
        for b in range(batches):
            keys = batch_keys(i, b)
            keys.append(keys[0])  # and one retry inside the batch
            events = [event(customer, f"k{k}", name, at, units=quantity(k)) for k in keys]
            sent += list(zip(keys, rating.ingest_events(events), strict=True))
        return sent

    results = run_concurrently(send, threads)

    assert unexpected(results) == []
    sent = [pair for result in results for pair in result]
    every_key = {k for i in range(threads) for b in range(batches) for k in batch_keys(i, b)}
    assert len(sent) == threads * batches * (size + 1)
    assert {o.status for _, o in sent} == {"accepted", "duplicate"}
    accepted = Counter(k for k, o in sent if o.status == "accepted")
    assert set(accepted) == every_key and set(accepted.values()) == {1}

    stored = dict(Event.objects.filter(customer=customer).values_list("idempotency_key", "pk"))
    assert stored.keys() == {f"k{k}" for k in every_key}
    for k, outcome in sent:  # every duplicate points at the one stored event
        assert outcome.event["id"] == stored[f"k{k}"]

    # worth(total) by hand: 50 included, then 200 at 0.05, 800 at 0.02 (+2), the rest at
    # 0.005 (+1).
    total = sum(quantity(k) for k in every_key)
    billable = total - 50
    assert billable > 1000
    worth = (
        200 * Decimal("0.05") + 800 * Decimal("0.02") + 2 + (billable - 1000) * Decimal("0.005") + 1
    )

    counter = period_usage(units)
    assert (counter.quantity, counter.event_count) == (total, len(every_key))
    assert counter.amount == counter.charged == worth
    events = Event.objects.filter(customer=customer)
    assert events.aggregate(total=Sum("amount"))["total"] == worth
    assert not events.filter(amount__lt=0).exists()
    wallet = wallet_of(customer).account
    assert funds - selectors.get_balance(account=wallet).posted == worth
    assert selectors.balance_from_entries(account=wallet) == funds - worth
    # Every charged event points at a usage transaction (those inside the allowance post
    # nothing); one per customer per rating pass since issue 14, not one per event.
    charged = events.filter(amount__gt=0)
    assert not charged.filter(ledger_transaction__isnull=True).exists()
    assert usage_references(customer).count() == len(
        set(charged.values_list("ledger_transaction_id", flat=True))
    )
    daily = DailyUsage.objects.filter(meter=units).aggregate(q=Sum("quantity"), a=Sum("amount"))
    assert (daily["q"], daily["a"]) == (total, worth)


# --- holds and rating on one wallet ---------------------------------------------------------------


def test_holds_placed_and_settled_while_usage_is_rated_never_take_available_below_zero():
    """Half the threads rate usage; the others place holds on the same wallet and release them,
    or settle them with an event: the available balance moves both ways around what the next
    event needs, and every decision is taken on locked figures (the ledger would refuse a
    posting decided on stale ones, and ingest_events would raise)."""
    name = unique("api")
    units = make_meter(name)
    funds = Decimal(10)
    customer = subscribe(ChargeSpec(meter=units.code, unit_price=Decimal("0.01")), funds=funds)
    wallet = wallet_of(customer).account
    revenue = ledger.ensure_system_account(code=rating.REVENUE, currency="USD")
    event_charge = Decimal("0.7")  # an event of 70 units; holds are of 1.5
    at = timezone.now()
    rounds = 8

    def work(i: int) -> list[tuple[str, object]]:
        done: list[tuple[str, object]] = []
        for n in range(rounds):
            key = f"w-{i}-{n}"
            if i % 2 == 0:  # rate usage
                outcome = rating.ingest_events([event(customer, key, name, at, units=70)])[0]
                done.append(("event", outcome))
                continue
            try:
                hold = ledger.place_hold(
                    reference=unique("hold"), account=wallet, destination=revenue, amount="1.5"
                )
            except ledger_errors.InsufficientFunds:
                done.append(("hold refused", None))
                continue
            if n % 3 == 0:  # settle it with a 70-unit event; release the others
                e = event(customer, key, name, at, units=70)
                done.append(("settled", rating.ingest_events([e], hold_id=hold.pk)[0]))
            else:
                ledger.release_hold(hold_id=hold.pk)
                done.append(("released", hold.pk))
        return done

    results = run_concurrently(work, THREADS)

    assert unexpected(results) == []
    done = [item for result in results for item in result]
    kinds = Counter(kind for kind, _ in done)
    events = [o for kind, o in done if kind == "event"]
    settlements = [o for kind, o in done if kind == "settled"]
    assert {o.status for o in settlements} == {"accepted"}
    assert {o.error.code for o in events if o.status == "rejected"} == {"insufficient_funds"}
    accepted = sum(1 for o in events if o.status == "accepted") + len(settlements)
    assert kinds["released"] and kinds["hold refused"]  # holds came and went, and ran out

    balance = Balance.objects.get(account=wallet)
    assert balance.held == 0  # every hold was released or settled
    assert balance.posted >= 0
    assert balance.posted == funds - event_charge * accepted
    assert selectors.balance_from_entries(account=wallet) == balance.posted
    holds = Hold.objects.filter(account=wallet)
    assert holds.filter(status="pending").count() == 0
    assert holds.filter(status="released").count() == kinds["released"]
    settled = holds.filter(status="settled")
    assert settled.count() == len(settlements)
    assert set(settled.values_list("settled_amount", flat=True)) == {event_charge}
    # Each settlement posted its event against its hold, and released the rest of it.
    assert LedgerTransaction.objects.filter(hold__in=settled).count() == len(settlements)
    assert period_usage(units).quantity == 70 * accepted
    assert Event.objects.filter(customer=customer).count() == accepted
    assert usage_references(customer).count() == accepted


def test_a_hold_placed_while_usage_is_being_rated_waits_for_the_rating_and_sees_its_charge(
    monkeypatch,
):
    """Rating decides on the wallet's locked balance row: a hold placed meanwhile waits for
    the rating to commit, then finds what the charge left (and is refused)."""
    name = unique("api")
    units = make_meter(name)
    customer = subscribe(ChargeSpec(meter=units.code, unit_price=Decimal("0.01")), funds=Decimal(2))
    wallet = wallet_of(customer).account
    revenue = ledger.ensure_system_account(code=rating.REVENUE, currency="USD")
    locked, proceed = threading.Event(), threading.Event()
    # rating locks the balance rows in the statement that reads what it needs (_read_part)
    real_read_part = rating_ingest._read_part

    def lock_then_pause(*args, **kwargs):
        balances = real_read_part(*args, **kwargs)
        locked.set()
        proceed.wait(timeout=30)
        return balances

    monkeypatch.setattr(rating_ingest, "_read_part", lock_then_pause)
    outcome: list[object] = []
    held: list[object] = []

    def rate() -> None:
        try:
            e = event(customer, unique("e"), name, timezone.now(), units=100)  # 1.00
            outcome.append(rating.ingest_events([e])[0])
        except BaseException as error:  # noqa: BLE001 - reported to the test
            outcome.append(error)
        finally:
            connections.close_all()

    def hold() -> None:
        try:
            held.append(
                ledger.place_hold(
                    reference=unique("hold"), account=wallet, destination=revenue, amount="1.5"
                )
            )
        except BaseException as error:  # noqa: BLE001 - reported to the test
            held.append(error)
        finally:
            connections.close_all()

    rater = threading.Thread(target=rate)
    rater.start()
    try:
        assert locked.wait(timeout=30)
        holder = threading.Thread(target=hold)
        holder.start()
        holder.join(timeout=0.5)
        assert holder.is_alive(), "the hold did not wait for the rating's lock"
    finally:
        proceed.set()
        rater.join(timeout=30)
    holder.join(timeout=30)

    assert len(outcome) == 1 and isinstance(outcome[0], rating.Outcome), outcome
    assert outcome[0].status == "accepted"
    assert len(held) == 1 and isinstance(held[0], ledger_errors.InsufficientFunds)
    balance = Balance.objects.get(account=wallet)
    assert (balance.posted, balance.held) == (Decimal(1), Decimal(0))


def test_usage_rated_while_a_hold_is_being_placed_waits_and_sees_the_hold():
    """A hold placed but not yet committed: rating waits for it, then rates against what
    the hold left available (and refuses the event)."""
    name = unique("api")
    units = make_meter(name)
    customer = subscribe(ChargeSpec(meter=units.code, unit_price=Decimal("0.01")), funds=Decimal(2))
    wallet = wallet_of(customer).account
    revenue = ledger.ensure_system_account(code=rating.REVENUE, currency="USD")
    placed, commit = threading.Event(), threading.Event()
    outcome: list[object] = []

    def hold() -> None:
        try:
            with transaction.atomic():
                ledger.place_hold(
                    reference=unique("hold"), account=wallet, destination=revenue, amount="1.5"
                )
                placed.set()
                commit.wait(timeout=30)
        finally:
            connections.close_all()

    def rate() -> None:
        try:
            e = event(customer, unique("e"), name, timezone.now(), units=100)  # 1.00
            outcome.append(rating.ingest_events([e])[0])
        except BaseException as error:  # noqa: BLE001 - reported to the test
            outcome.append(error)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert placed.wait(timeout=30)
        rater = threading.Thread(target=rate)
        rater.start()
        rater.join(timeout=0.5)
        assert rater.is_alive(), "rating did not wait for the hold's lock"
    finally:
        commit.set()
        holder.join(timeout=30)
    rater.join(timeout=30)

    assert len(outcome) == 1 and isinstance(outcome[0], rating.Outcome), outcome
    assert (outcome[0].status, outcome[0].error.code) == ("rejected", "insufficient_funds")
    balance = Balance.objects.get(account=wallet)
    assert (balance.posted, balance.held) == (Decimal(2), Decimal("1.5"))
    assert not Event.objects.filter(customer=customer).exists()


# --- through real HTTP ----------------------------------------------------------------------------


def post_json(url: str, secret: str, body: dict, **headers: str) -> tuple[int, dict, bool]:
    """(status, JSON body, whether the response was an Idempotent-Replayed replay)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {secret}",
            "Content-Type": "application/json",
            **headers,
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            return response.status, json.loads(response.read()), replayed
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), False


def test_one_event_posted_by_many_clients_at_once_over_http_is_charged_once(live_server):
    name = unique("api")
    units = make_meter(name)
    customer = subscribe(ChargeSpec(meter=units.code, unit_price=Decimal("0.25")), funds=Decimal(5))
    _key, secret = services.create_api_key(name=unique("key"), scopes=["ingest"])
    body = {
        "idempotency_key": unique("req"),
        "customer": customer.external_id,
        "event_name": name,
        "properties": {"units": 3},
    }

    def send(i: int) -> tuple[int, dict, bool]:
        # Half the clients also send one shared Idempotency-Key header, half none.
        headers = {"Idempotency-Key": f"retry-{body['idempotency_key']}"} if i % 2 else {}
        return post_json(f"{live_server.url}/api/v1/events", secret, body, **headers)

    results = run_concurrently(send, THREADS)

    assert unexpected(results) == []
    stored = Event.objects.get(customer=customer)
    assert {payload["id"] for _, payload, _ in results} == {stored.pk}
    assert {Decimal(payload["amount"]) for _, payload, _ in results} == {Decimal("0.75")}
    # One request rated the event (201 accepted); the others saw it as a duplicate (200), or,
    # with the shared header, got a stored response again: the first of them replays it.
    first = [(status, payload["status"]) for status, payload, replayed in results if not replayed]
    replays = [(status, payload["status"]) for status, payload, replayed in results if replayed]
    assert Counter(first).get((201, "accepted")) == 1
    assert set(first) <= {(201, "accepted"), (200, "duplicate")}
    assert len(replays) == THREADS // 2 - 1
    header_responses = {
        (status, json.dumps(payload, sort_keys=True))
        for i, (status, payload, _) in enumerate(results)
        if i % 2
    }
    assert len(header_responses) == 1  # every client with the header got the same response
    wallet = wallet_of(customer).account
    assert selectors.get_balance(account=wallet).posted == Decimal("4.25")
    assert usage_references(customer).count() == 1
    assert period_usage(units).quantity == 3
