"""Part of bench/close.py (not a command): the seed. Meters and a metered plan from the
tests' factories (through the services); then, by COPY, per customer its postpaid wallet, a
subscription whose monthly period has ended, its usage counters and the period's events, in
one of 16 usage patterns whose events add up to the counters as rating would have left them.
The COPY stays raw on purpose: 10,000 customers with 1,000 events each through the services
would take hours; seed_checks proves the rows are what rating would have left."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from bench.harness.report import Check, progress
from bench.harness.seeding import copy_field, copy_rows, create_meters, other_columns, reserve_ids
from bench.harness.stats import Timer

PATTERNS = 16  # usage patterns (and billing anchors): subscription i follows pattern i % 16
CURRENCY = "USD"
EVENT_NAME = "llm.completion"
PLAN_CODE = "bench-close-pro"
BASE_FEE = Decimal("49.00")
SUBSCRIPTIONS_PER_COMMIT = 50  # event COPY: one transaction per this many subscriptions

# (code, name, aggregation, property, unit)
METERS = (
    ("input_tokens", "Input tokens", "sum", "llm.input_tokens", "tokens"),
    ("output_tokens", "Output tokens", "sum", "llm.output_tokens", "tokens"),
    ("requests", "API requests", "count", "", "requests"),
)
MODELS = ("gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06")
FEATURES = ("chat", "summarize", "agent", "search", "autocomplete")


@dataclass
class Step:
    name: str
    seconds: float
    rows: int | None = None
    note: str = ""


@dataclass
class Shared:
    plan_id: int
    meter_ids: dict[str, int]  # code → id
    terms: Any  # metering.rating.PlanTerms


@dataclass
class Pattern:
    """One usage pattern: its billing period and the rows of its events, rendered once."""

    index: int
    scale: float
    anchor: datetime
    period_end: datetime
    next_period_end: datetime
    tails: list[str]  # each event's COPY text after "customer_id\tsubscription_id\t"
    quantity: dict[str, Decimal]  # meter code → the period's quantity
    amount: dict[str, Decimal]  # meter code → its exact worth under the plan
    events_amount: Decimal  # Σ of the events' amounts (= Σ amount)


@dataclass
class Seed:
    subscriptions: int
    events_per_subscription: int
    as_of: datetime
    shared: Shared
    patterns: list[Pattern]
    first_customer: int
    first_subscription: int
    steps: list[Step] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


def seed_shared() -> Shared:
    """The meters and the plan, published through the services (as the pricing file would)
    by the tests' factories."""
    from billing import services
    from billing.models import ConsumptionModel, PriceModel
    from metering import rating
    from tests.factories import PlanFactory

    meter_ids = create_meters(METERS, event_name=EVENT_NAME)
    charge, tier = services.ChargeSpec, services.TierSpec
    plan = PlanFactory(
        code=PLAN_CODE,
        name="Bench Pro",
        currency=CURRENCY,
        base_fee=BASE_FEE,
        consumption_model=ConsumptionModel.METERED,
        charges=(
            charge(
                meter="input_tokens",
                price_model=PriceModel.GRADUATED,
                included_quantity=Decimal(200_000),
                tiers=(
                    tier(up_to=Decimal(1_000_000), unit_price=Decimal("0.0000004")),
                    tier(up_to=None, unit_price=Decimal("0.0000003")),
                ),
            ),
            charge(
                meter="output_tokens",
                price_model=PriceModel.GRADUATED,
                included_quantity=Decimal(50_000),
                tiers=(
                    tier(up_to=Decimal(200_000), unit_price=Decimal("0.0000016")),
                    tier(up_to=None, unit_price=Decimal("0.0000012")),
                ),
            ),
            charge(
                meter="requests",
                included_quantity=Decimal(500),
                unit_price=Decimal("0.001"),
            ),
        ),
    )
    return Shared(plan_id=plan.pk, meter_ids=meter_ids, terms=rating.plan_terms(plan.pk))


def build_patterns(shared: Shared, events: int, now: datetime, rng: random.Random) -> list[Pattern]:
    """Sixteen usage patterns; each event's amount is the increment of the plan's worth it
    causes (as rating charges it), so the events of a period add up to its counters."""
    from billing.periods import add_months

    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    by_code = {code: shared.terms.charges[shared.meter_ids[code]] for code, *_ in METERS}
    patterns = []
    for k in range(PATTERNS):
        # Period [anchor, anchor + 1 month) ended at least a day ago; the next one has not.
        anchor = today - timedelta(days=32) - timedelta(hours=12 * k)
        period_end = add_months(anchor, 1)
        next_end = add_months(anchor, 2)
        assert period_end < now < next_end
        scale = 0.1 + 0.12 * k
        step = (period_end - anchor) / events
        q = dict.fromkeys(by_code, Decimal(0))
        worth = dict.fromkeys(by_code, Decimal(0))
        tails, total = [], Decimal(0)
        for j in range(events):
            prompt = max(1, int(rng.lognormvariate(7.3, 0.9) * scale)) + 20
            output = max(1, int(rng.lognormvariate(5.5, 0.8) * scale))
            cached = 0
            if prompt >= 1024 and rng.random() < 0.4:
                cached = rng.randrange(1024, prompt + 1) // 128 * 128
            readings = {"input_tokens": prompt - cached, "output_tokens": output, "requests": 1}
            amount = Decimal(0)
            for code, reading in readings.items():
                q[code] += reading
                new = by_code[code].worth(q[code])
                amount += new - worth[code]
                worth[code] = new
            total += amount
            model = MODELS[0] if rng.random() < 0.7 else MODELS[1]
            properties = json.dumps(
                {
                    "provider": "openai",
                    "model": model,
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": output,
                        "total_tokens": prompt + output,
                        "prompt_tokens_details": {"cached_tokens": cached},
                    },
                    "request_id": f"req_{rng.getrandbits(64):016x}",
                    "feature": FEATURES[rng.randrange(len(FEATURES))],
                },
                separators=(",", ":"),
            )
            tails.append(
                "\t".join(
                    (
                        f"bench-{j:07d}",  # idempotency_key
                        EVENT_NAME,
                        copy_field(anchor + step * j + step / 2),  # timestamp, inside the period
                        copy_field(properties),
                        copy_field(anchor),  # period_start
                        "openai",
                        model,
                        str(prompt - cached),  # input_tokens
                        str(cached),  # cache_read_tokens
                        "0",  # cache_write_tokens
                        str(output),  # output_tokens
                        "0",  # reasoning_tokens
                        CURRENCY,
                        copy_field(amount),
                        "0",  # cost (no catalog rows in this database)
                    )
                )
            )
        patterns.append(
            Pattern(
                index=k,
                scale=scale,
                anchor=anchor,
                period_end=period_end,
                next_period_end=next_end,
                tails=tails,
                quantity=q,
                amount=worth,
                events_amount=total,
            )
        )
    return patterns


EVENT_COLUMNS = (
    "customer_id",
    "subscription_id",
    "idempotency_key",
    "event_name",
    "timestamp",
    "properties",
    "period_start",
    "provider",
    "model",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "currency",
    "amount",
    "cost",
)


def seed_customers(conn: psycopg.Connection[Any], seed: Seed) -> None:
    """Customers, their wallets (ledger account, balance row, wallet), subscriptions, phases
    and counters, by COPY, in one transaction."""
    n, shared, patterns = seed.subscriptions, seed.shared, seed.patterns
    now = seed.as_of
    timer = Timer()
    with conn.transaction():
        customer0 = reserve_ids(conn, "billing_customer", n)
        account0 = reserve_ids(conn, "ledger_account", n)
        balance0 = reserve_ids(conn, "ledger_balance", n)
        wallet0 = reserve_ids(conn, "billing_wallet", n)
        subscription0 = reserve_ids(conn, "billing_subscription", n)
        phase0 = reserve_ids(conn, "billing_subscriptionphase", n)
        rows = copy_rows(
            conn,
            "billing_customer",
            (
                "id",
                "external_id",
                "name",
                "email",
                "currency",
                "billing_mode",
                "address_line1",
                "address_line2",
                "city",
                "state",
                "postal_code",
                "country",
                "tax_id",
                "metadata",
                "stripe_customer_id",
                "updated_at",
            ),
            (
                (
                    customer0 + i,
                    f"bench-close-{i:06d}",
                    f"Bench customer {i}",
                    f"billing+{i}@example.com",
                    CURRENCY,
                    "postpaid",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "{}",
                    "",
                    now,
                )
                for i in range(n)
            ),
        )
        seed.steps.append(Step("customers", timer.seconds, rows))
        timer = Timer()
        # What ledger.services.create_account makes for a postpaid wallet without a limit:
        # the account (allow_negative, no limit) and one balance row (bucket 0, no floor).
        rows = copy_rows(
            conn,
            "ledger_account",
            (
                "id",
                "code",
                "name",
                "currency",
                "normal_balance",
                "is_hot",
                "allow_negative",
                "negative_limit",
                "owner_type",
                "owner_id",
                "metadata",
            ),
            (
                (
                    account0 + i,
                    f"wallet:{customer0 + i}:{CURRENCY}",
                    f"Bench customer {i} — {CURRENCY} wallet",
                    CURRENCY,
                    "credit",
                    "f",
                    "t",
                    None,
                    "billing.customer",
                    str(customer0 + i),
                    "{}",
                )
                for i in range(n)
            ),
        )
        rows += copy_rows(
            conn,
            "ledger_balance",
            ("id", "account_id", "bucket", "posted", "held", "floor", "version"),
            ((balance0 + i, account0 + i, 0, "0", "0", None, 0) for i in range(n)),
        )
        rows += copy_rows(
            conn,
            "billing_wallet",
            ("id", "customer_id", "currency", "account_id", "billing_mode", "credit_limit"),
            (
                (wallet0 + i, customer0 + i, CURRENCY, account0 + i, "postpaid", None)
                for i in range(n)
            ),
        )
        seed.steps.append(Step("wallets (accounts, balances, wallets)", timer.seconds, rows))
        timer = Timer()
        rows = copy_rows(
            conn,
            "billing_subscription",
            (
                "id",
                "customer_id",
                "plan_id",
                "status",
                "started_at",
                "billing_anchor",
                "current_period_start",
                "current_period_end",
                "trial_ends_at",
                "cancel_at_period_end",
                "canceled_at",
                "ended_at",
                "scheduled_plan_id",
                "invoiced_through",
                "metadata",
            ),
            (
                (
                    subscription0 + i,
                    customer0 + i,
                    shared.plan_id,
                    "active",
                    p.anchor,
                    p.anchor,
                    p.anchor,
                    p.period_end,
                    None,
                    "f",
                    None,
                    None,
                    None,
                    None,
                    "{}",
                )
                for i in range(n)
                for p in (patterns[i % PATTERNS],)
            ),
        )
        rows += copy_rows(
            conn,
            "billing_subscriptionphase",
            ("id", "subscription_id", "plan_id", "starts_at", "ends_at"),
            (
                (
                    phase0 + i,
                    subscription0 + i,
                    shared.plan_id,
                    patterns[i % PATTERNS].anchor,
                    None,
                )
                for i in range(n)
            ),
        )
        seed.steps.append(Step("subscriptions and phases", timer.seconds, rows))
        timer = Timer()
        rows = copy_rows(
            conn,
            "metering_periodusage",
            (
                "subscription_id",
                "meter_id",
                "period_start",
                "period_end",
                "quantity",
                "amount",
                "charged",
                "currency",
                "event_count",
            ),
            (
                (
                    subscription0 + i,
                    shared.meter_ids[code],
                    p.anchor,
                    p.period_end,
                    p.quantity[code],
                    p.amount[code],
                    p.amount[code],
                    CURRENCY,
                    seed.events_per_subscription,
                )
                for i in range(n)
                for p in (patterns[i % PATTERNS],)
                for code, *_ in METERS
            ),
        )
        seed.steps.append(Step("usage counters (PeriodUsage)", timer.seconds, rows))
    seed.first_customer, seed.first_subscription = customer0, subscription0


def copy_events(
    url: str,
    seed: Seed,
    subscriptions: Sequence[int],
    sent: list[int],
    extra: tuple[list[str], list[str]],
) -> None:
    """COPY the events of these subscriptions (indexes 0…n-1), one transaction per
    SUBSCRIPTIONS_PER_COMMIT of them; ``extra``: the other columns and their values."""
    statement = sql.SQL("COPY metering_event ({}) FROM STDIN").format(
        sql.SQL(", ").join(map(sql.Identifier, [*EVENT_COLUMNS, *extra[0]]))
    )
    suffix = "".join("\t" + v for v in extra[1])
    with psycopg.connect(url) as conn:
        for start in range(0, len(subscriptions), SUBSCRIPTIONS_PER_COMMIT):
            with conn.cursor().copy(statement) as copy:
                for i in subscriptions[start : start + SUBSCRIPTIONS_PER_COMMIT]:
                    prefix = f"{seed.first_customer + i}\t{seed.first_subscription + i}\t"
                    tails = seed.patterns[i % PATTERNS].tails
                    block = (prefix + (suffix + "\n" + prefix).join(tails) + suffix + "\n").encode()
                    copy.write(block)
                    sent[0] += len(block)
            conn.commit()


def seed_events(url: str, seed: Seed, connections: int) -> Step:
    n = seed.subscriptions
    shares = [list(range(c, n, connections)) for c in range(connections)]
    sent = [[0] for _ in shares]
    errors: list[BaseException] = []

    extra = other_columns("metering_event", EVENT_COLUMNS)

    def run(share: list[int], counter: list[int]) -> None:
        try:
            copy_events(url, seed, share, counter, extra)
        except BaseException as exc:  # reported below
            errors.append(exc)

    timer = Timer()
    threads = [
        threading.Thread(target=run, args=(share, counter), daemon=True)
        for share, counter in zip(shares, sent, strict=True)
    ]
    for thread in threads:
        thread.start()
    total = n * seed.events_per_subscription
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=10)
        mb = sum(c[0] for c in sent) / 1e6
        progress(f"  events: {mb:,.0f} MB sent after {timer.seconds:.0f} s")
    if errors:
        raise errors[0]
    mb = sum(c[0] for c in sent) / 1e6
    return Step(
        f"events (metering_event, {connections} COPY connections)",
        timer.seconds,
        total,
        f"{mb:,.0f} MB of COPY text",
    )


def seed_checks(conn: psycopg.Connection[Any], seed: Seed) -> list[Check]:
    """The seed is what rating would have left: the events add up to the counters."""
    n, per = seed.subscriptions, seed.events_per_subscription
    events, subscriptions = conn.execute(
        "SELECT count(*), count(DISTINCT subscription_id) FROM metering_event"
    ).fetchone()
    mismatched = conn.execute(
        """
        WITH e AS (
            SELECT subscription_id, count(*) AS n, sum(amount) AS amount,
                   sum(input_tokens) AS input, sum(output_tokens) AS output
              FROM metering_event GROUP BY subscription_id
        ), u AS (
            SELECT u.subscription_id,
                   sum(u.charged) AS charged,
                   sum(u.quantity) FILTER (WHERE m.code = 'input_tokens') AS input,
                   sum(u.quantity) FILTER (WHERE m.code = 'output_tokens') AS output,
                   sum(u.quantity) FILTER (WHERE m.code = 'requests') AS requests,
                   min(u.event_count) AS min_count, max(u.event_count) AS max_count
              FROM metering_periodusage u JOIN metering_meter m ON m.id = u.meter_id
             GROUP BY u.subscription_id
        )
        SELECT count(*) FROM u FULL JOIN e USING (subscription_id)
         WHERE e.amount IS DISTINCT FROM u.charged OR e.input IS DISTINCT FROM u.input
            OR e.output IS DISTINCT FROM u.output OR e.n IS DISTINCT FROM u.requests
            OR e.n IS DISTINCT FROM u.min_count OR e.n IS DISTINCT FROM u.max_count
        """
    ).fetchone()[0]
    amount_vs_charged = conn.execute(
        "SELECT count(*) FROM metering_periodusage WHERE amount <> charged"
    ).fetchone()[0]
    total_charged = conn.execute("SELECT sum(charged) FROM metering_periodusage").fetchone()[0]
    return [
        Check(
            "seed: events stored",
            events == n * per and subscriptions == n,
            f"{events:,} events over {subscriptions:,} subscriptions ({per:,} each)",
        ),
        Check(
            "seed: events add up to the counters",
            mismatched == 0,
            f"{mismatched} subscriptions where Σ event amount ≠ Σ counters' charged or a "
            f"token sum / count ≠ the counter's quantity / event_count; Σ charged "
            f"{total_charged:f} {CURRENCY}",
        ),
        Check(
            "seed: counters' amount = charged (prices exact at 12 places)",
            amount_vs_charged == 0,
            f"{amount_vs_charged} counters differ",
        ),
    ]
