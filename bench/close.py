"""Period close at scale: how fast ended billing periods become draft invoices, in-process
and through real Celery workers.

    make bench-close                                   # 10,000 subscriptions × 1,000 events
    make bench-close BENCH_ARGS="--quick"              # 500 × 100 (smoke test)
    .venv/bin/python -m billing.devservices exec -- .venv/bin/python bench/close.py \
        --subscriptions 2000 --events-per-subscription 500 --celery-modes 2x1 --keep

Everything happens in throw-away databases, ``bench_close_<random>_…``, created next to the
one ``DATABASE_URL`` names and dropped at the end (``--keep`` leaves them). The first one is
migrated and seeded:

    through the services  three meters on ``llm.completion`` (input and output tokens, API
                          requests) and one metered plan: a base fee, graduated input and
                          output token charges with allowances, per-request overage
    by COPY (psycopg)     per customer: the customer, its postpaid USD wallet (the ledger
                          account and its balance row, as ledger.services.create_account
                          makes them, and the wallet row), a subscription whose current
                          monthly period has ended (anchors spread over 8 days) with its
                          phase row, one PeriodUsage counter per meter, and the period's
                          events in metering_event (``--events-per-subscription`` each)

Each subscription's events follow one of 16 usage patterns (token counts drawn at random,
scaled from 0.1× to 1.9×, so some stay within the allowances and most cross a tier). Every
event carries what rating would store: the normalised token columns and the amount it was
charged, the increment of the plan's exact worth (``metering.charges``) it caused; the
counters hold the sums (quantity, amount = charged, event count). The events have no
ledger transactions (rating would post one per event; the close never reads them) and
DailyUsage / ModelUsage rows are not seeded (the close reads neither).

Once seeded (and VACUUM ANALYZEd, so that no autovacuum runs during a close) the database
is copied at file level (``CREATE DATABASE … TEMPLATE``) for each Celery run, so every run
closes the same subscriptions from the same state. The runs, each timed on its own after a
CHECKPOINT, with ``as_of`` = the time the seed was made:

    in-process   invoicing.services.close_due_periods(as_of=…) in this process (what
                 ``manage.py close_periods`` does); every statement it sends is timed (an
                 execute wrapper and the commits, a few µs each) to show where the time goes
    celery 2x1   two Celery workers (prefork, concurrency 1 each) on the run's database;
                 invoicing.tasks.close_due_periods is sent to them as beat would send it,
                 and queues one close_subscription_period task per subscription; timed from
                 sending it until every subscription has its invoice
    celery 1x2   the same with one worker, prefork, concurrency 2

The workers consume a queue of their own (``bench-close-<random>``; their default queue is
set to it, so the tasks the dispatcher queues go there too) with the product's settings
(late acknowledgement, prefetch 1, DEBUG off). After each run the checks: exactly one
invoice per subscription, each invoice's usage lines add up (amount_precise) to its
counter's amount, Σ invoice usage_charged = Σ counters' charged, every subscription rolled
to its next period. The target is 120 s for the whole close. The report ends with one
JSON line; exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# As in bench/ledger.py: the repository, not this folder, is where the apps are imported from.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(REPO_DIR))

from bench.common import (  # noqa: E402
    checkpoint,
    database_origin,
    drop_database,
    fmt,
    machine_facts,
    progress,
    ratio,
    server_facts,
    with_database,
)
from billing import devservices  # noqa: E402  (imports no Django; sys.path must be fixed first)

TARGET_SECONDS = 120.0
SUBSCRIPTIONS = 10_000
EVENTS_PER_SUBSCRIPTION = 1_000
QUICK = (500, 100)  # subscriptions, events per subscription
PATTERNS = 16  # usage patterns (and billing anchors): subscription i follows pattern i % 16
CURRENCY = "USD"
EVENT_NAME = "llm.completion"
PLAN_CODE = "bench-close-pro"
BASE_FEE = Decimal("49.00")
SUBSCRIPTIONS_PER_COMMIT = 50  # event COPY: one transaction per this many subscriptions
POLL_INTERVAL = 0.1  # seconds between invoice counts during a Celery run
WORKER_START_TIMEOUT = 90.0
CELERY_MODES = {"2x1": (2, 1), "1x2": (1, 2)}  # workers × prefork concurrency
CELERY_LABELS = {
    "2x1": "2 workers, prefork, concurrency 1 each",
    "1x2": "1 worker, prefork, concurrency 2",
}

# (code, name, aggregation, property, unit)
METERS = (
    ("input_tokens", "Input tokens", "sum", "llm.input_tokens", "tokens"),
    ("output_tokens", "Output tokens", "sum", "llm.output_tokens", "tokens"),
    ("requests", "API requests", "count", "", "requests"),
)
MODELS = ("gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06")
FEATURES = ("chat", "summarize", "agent", "search", "autocomplete")

# A Celery worker whose default queue is the benchmark's own: the tasks it queues itself
# (close_due_periods queues one close per subscription) stay on that queue. Run with -c.
WORKER_BOOT = (
    "import os, sys; from billing.celery import app; "
    "app.conf.task_default_queue = os.environ['BENCH_CLOSE_QUEUE']; "
    "reuse = os.environ.get('BENCH_CLOSE_DB_REUSE_MAX'); "
    "reuse and app.conf.__setitem__('CELERY_DB_REUSE_MAX', int(reuse)); "
    "app.worker_main(sys.argv[1:])"
)


# --- configuration -----------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=None, help="default 10,000")
    parser.add_argument("--events-per-subscription", type=int, default=None, help="default 1,000")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK[0]} subscriptions × {QUICK[1]} events"
    )
    parser.add_argument(
        "--celery-modes",
        default="2x1,1x2",
        help="comma-separated Celery runs: 2x1 (2 workers × concurrency 1), 1x2 "
        "(1 worker × concurrency 2); empty for none (default 2x1,1x2)",
    )
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process close")
    parser.add_argument(
        "--copy-connections",
        type=int,
        default=2,
        help="parallel COPY connections for the events (default 2)",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="give up a Celery run after this (s)"
    )
    parser.add_argument(
        "--db-reuse-max",
        type=int,
        default=None,
        help="experiment: set CELERY_DB_REUSE_MAX in the workers (Celery's Django fixup then "
        "keeps the database connection for that many tasks instead of closing it around "
        "every task, which is what the product's settings do now)",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed of the usage")
    parser.add_argument("--keep", action="store_true", help="do not drop the databases")
    args = parser.parse_args(argv)
    quick_subs, quick_events = QUICK if args.quick else (SUBSCRIPTIONS, EVENTS_PER_SUBSCRIPTION)
    args.subscriptions = args.subscriptions or quick_subs
    args.events_per_subscription = args.events_per_subscription or quick_events
    if args.subscriptions < 1 or args.events_per_subscription < 1:
        parser.error("--subscriptions and --events-per-subscription must be ≥ 1")
    if args.copy_connections < 1:
        parser.error("--copy-connections must be ≥ 1")
    modes = [m.strip() for m in args.celery_modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in CELERY_MODES]
    if unknown:
        parser.error(f"unknown --celery-modes {unknown}; choose from {', '.join(CELERY_MODES)}")
    args.modes = list(dict.fromkeys(modes))
    if args.no_in_process and not args.modes:
        parser.error("nothing to run")
    return args


# --- small helpers -----------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Step:
    name: str
    seconds: float
    rows: int | None = None
    note: str = ""


class Timer:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def ts(moment: datetime) -> str:
    """A timestamptz in COPY text."""
    return moment.isoformat()


def dec(value: Decimal) -> str:
    """A numeric in COPY text: never an exponent."""
    return f"{value:f}"


def field_text(value: Any) -> str | None:
    """A Python value in COPY text (None = NULL)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, Decimal):
        return dec(value)
    if isinstance(value, datetime):
        return ts(value)
    if isinstance(value, dict | list):
        value = json.dumps(value)
    text = str(value)
    for raw, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        text = text.replace(raw, escaped)
    return text


def other_columns(table: str, given: Sequence[str]) -> tuple[list[str], list[str | None]]:
    """The columns of ``table`` the seed does not set and the database has no default for,
    with the value the model would give them (its field default, now for auto_now, NULL):
    so that a column added to a model later does not break the COPY."""
    from django.apps import apps

    model = next(m for m in apps.get_models() if m._meta.db_table == table)
    columns, values = [], []
    for f in model._meta.concrete_fields:
        if f.column in given or f.primary_key or f.has_db_default():
            continue
        if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            value: Any = datetime.now(UTC)
        elif f.has_default():
            value = f.get_default()
            if isinstance(value, list | tuple) and f.get_internal_type() == "ArrayField":
                value = "{" + ",".join(map(str, value)) + "}"
        elif f.null:
            value = None
        else:
            raise RuntimeError(f"{table}.{f.column} has no default: the benchmark must set it")
        columns.append(f.column)
        values.append(field_text(value))
    return columns, values


def copy_rows(conn: psycopg.Connection[Any], table: str, columns: Sequence[str], rows) -> int:
    """COPY ``rows`` (tuples of COPY-text fields, None = NULL) into ``table``; the table's
    other columns get their model defaults (``other_columns``)."""
    extra_columns, extra_values = other_columns(table, columns)
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, [*columns, *extra_columns])),
    )
    count = 0
    buffer: list[str] = []
    with conn.cursor().copy(statement) as copy:
        for row in rows:
            buffer.append("\t".join("\\N" if v is None else str(v) for v in (*row, *extra_values)))
            count += 1
            if len(buffer) >= 5_000:
                copy.write("\n".join(buffer) + "\n")
                buffer.clear()
        if buffer:
            copy.write("\n".join(buffer) + "\n")
    return count


def reserve_ids(conn: psycopg.Connection[Any], table: str, count: int) -> int:
    """The first of ``count`` consecutive ids taken from the table's identity sequence."""
    first = conn.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [table]).fetchone()[0]
    if count > 1:
        conn.execute(
            "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", [table, first + count - 1]
        )
    return first


# --- the seed ----------------------------------------------------------------------------


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
    """The meters and the plan, through the services (as the pricing file would)."""
    from billing import services
    from billing.models import ConsumptionModel, PriceModel
    from metering import rating

    meter_ids = {}
    for code, name, aggregation, prop, unit in METERS:
        meter = services.create_meter(
            code=code,
            name=name,
            event_name=EVENT_NAME,
            aggregation=aggregation,
            property=prop,
            group_by=["model"],
            unit=unit,
        )
        meter_ids[code] = meter.pk
    charge, tier = services.ChargeSpec, services.TierSpec
    plan, _ = services.publish_plan(
        spec=services.PlanSpec(
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
                        ts(anchor + step * j + step / 2),  # timestamp, inside the period
                        properties.replace("\\", "\\\\"),
                        ts(anchor),  # period_start
                        "openai",
                        model,
                        str(prompt - cached),  # input_tokens
                        str(cached),  # cache_read_tokens
                        "0",  # cache_write_tokens
                        str(output),  # output_tokens
                        "0",  # reasoning_tokens
                        CURRENCY,
                        dec(amount),
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
    now = ts(seed.as_of)
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
                    ts(p.anchor),
                    ts(p.anchor),
                    ts(p.anchor),
                    ts(p.period_end),
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
                    ts(patterns[i % PATTERNS].anchor),
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
                "distinct_values",
            ),
            (
                (
                    subscription0 + i,
                    shared.meter_ids[code],
                    ts(p.anchor),
                    ts(p.period_end),
                    dec(p.quantity[code]),
                    dec(p.amount[code]),
                    dec(p.amount[code]),
                    CURRENCY,
                    seed.events_per_subscription,
                    "[]",
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
    extra: tuple[list[str], list[str | None]],
) -> None:
    """COPY the events of these subscriptions (indexes 0…n-1), one transaction per
    SUBSCRIPTIONS_PER_COMMIT of them; ``extra``: the other columns and their values."""
    statement = sql.SQL("COPY metering_event ({}) FROM STDIN").format(
        sql.SQL(", ").join(map(sql.Identifier, [*EVENT_COLUMNS, *extra[0]]))
    )
    suffix = "".join("\t" + ("\\N" if v is None else v) for v in extra[1])
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


def clone_database(server_url: str, template: str, name: str, file_copy: bool) -> float:
    """A file-level copy of ``template`` (no one may be connected to it)."""
    timer = Timer()
    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        if file_copy:  # PostgreSQL 15+: WAL_LOG, the default, writes the whole copy to WAL
            statement = sql.SQL("{} STRATEGY FILE_COPY").format(statement)
        conn.execute(statement)
    return timer.seconds


# --- CPU accounting ----------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    command: str
    pgrp: int
    cpu: float  # its own CPU seconds
    children_cpu: float  # CPU seconds of its children that have ended (and were reaped)
    cmdline: str  # PostgreSQL processes only: "postgres: 15/main: user database host …"


def read_processes() -> dict[int, Proc]:
    """Every process we can see."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
            command = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            cmdline = ""
            if command.startswith("postgres"):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        found[int(entry.name)] = Proc(
            command=command,
            pgrp=int(fields[2]),
            cpu=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
            children_cpu=(int(fields[13]) + int(fields[14])) / CLOCK_TICKS,
            cmdline=cmdline,
        )
    return found


def machine_ticks() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS


PG_RUN = "postgresql"  # the live backends of the run's database
PG_ENDED = "postgresql, ended backends"  # any database's: the postmaster's reaped children
PG_OTHER = "postgresql, server and other databases"


class CpuMeter:
    """CPU seconds per group of processes between start() and stop(): this process, the
    Celery workers (their process groups), the run database's PostgreSQL backends, the
    backends that ended during the run (whatever their database: the postmaster's reaped
    children; the Celery runs' backends end after every task, see the report), the rest of
    PostgreSQL, Redis, and everything else. Only a server on this machine is seen."""

    def __init__(self, database: str, worker_groups: Iterable[int] = ()):
        self.database = database
        self.worker_groups = set(worker_groups)
        self.before: dict[int, Proc] = {}
        self.machine_before = (0.0, 0.0)

    def group(self, pid: int, proc: Proc) -> str:
        if pid == os.getpid():
            return "bench process"
        if proc.pgrp in self.worker_groups:
            return "celery workers"
        if proc.command.startswith("postgres"):
            words = proc.cmdline.split()
            # "postgres: 15/main: postgres <database> 127.0.0.1(…) idle" (a backend)
            return PG_RUN if self.database in words[1:5] else PG_OTHER
        if proc.command.startswith("redis"):
            return "redis"
        return "other"

    def start(self) -> None:
        self.before = read_processes()
        self.machine_before = machine_ticks()

    def stop(self, wall: float) -> dict[str, Any]:
        after = read_processes()
        busy, total = machine_ticks()
        used: dict[str, float] = defaultdict(float)
        for pid, proc in after.items():
            start = self.before.get(pid)
            same = start is not None and start.command == proc.command
            used[self.group(pid, proc)] += max(0.0, proc.cpu - (start.cpu if same else 0.0))
            if proc.command.startswith("postgres") and " -D " in f" {proc.cmdline} ":
                ended = proc.children_cpu - (start.children_cpu if same else 0.0)
                used[PG_ENDED] += max(0.0, ended)
        cores = os.cpu_count() or 1
        capacity = wall * cores
        ordered = sorted(used.items(), key=lambda x: -x[1])
        return {
            "machine_busy": round(
                (busy - self.machine_before[0]) / max(1e-9, total - self.machine_before[1]), 3
            ),
            "cpu_seconds": {g: round(s, 2) for g, s in ordered},
            "cpu_share": {g: round(s / capacity, 3) for g, s in ordered},
        }


# --- the runs ----------------------------------------------------------------------------


@dataclass
class RunResult:
    name: str
    label: str
    database: str
    seconds: float
    closed: int
    subscriptions_per_second: float
    ratio_to_target: float | None
    dispatch_seconds: float | None = None  # due_subscription_ids (+ queueing, for Celery)
    cpu: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    migrations_applied: list[str] = field(default_factory=list)
    scans: dict[str, dict[str, int]] = field(default_factory=dict)  # see table_scans
    checks: list[Check] = field(default_factory=list)
    error: str = ""


SAVEPOINT_ID = re.compile(r'"?s\d+_x\d+"?')
SPACES = re.compile(r"\s+")


def statement_label(text: str) -> str:
    text = SPACES.sub(" ", SAVEPOINT_ID.sub("<sp>", text)).strip()
    return text


class QueryProfile:
    """Every statement Django sends on the connection, and every commit, timed (as the
    client sees it: round trip and server time)."""

    def __init__(self) -> None:
        self.stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self.labels: dict[str, str] = {}  # SQL text → label (the regexes run once per text)

    def __call__(self, execute: Callable, sql_text: str, params: Any, many: bool, context: Any):
        started = time.perf_counter()
        try:
            return execute(sql_text, params, many, context)
        finally:
            elapsed = time.perf_counter() - started
            label = self.labels.get(sql_text)
            if label is None:
                label = self.labels[sql_text] = statement_label(sql_text)
            entry = self.stats[label]
            entry[0] += 1
            entry[1] += elapsed

    def wrap_commit(self, commit: Callable[[], None]) -> Callable[[], None]:
        def timed() -> None:
            started = time.perf_counter()
            try:
                commit()
            finally:
                entry = self.stats["COMMIT"]
                entry[0] += 1
                entry[1] += time.perf_counter() - started

        return timed

    def summary(self, wall: float, closed: int) -> dict[str, Any]:
        total_db = sum(s for _, s in self.stats.values())
        queries = sum(n for label, (n, _) in self.stats.items() if label != "COMMIT")
        per = max(closed, 1)
        rows = sorted(self.stats.items(), key=lambda item: -item[1][1])
        return {
            "statements": queries,
            "commits": self.stats["COMMIT"][0] if "COMMIT" in self.stats else 0,
            "statements_per_close": round(queries / per, 2),
            "database_seconds": round(total_db, 2),
            "python_seconds": round(wall - total_db, 2),
            "ms_per_close": round(wall / per * 1000, 3),
            "database_ms_per_close": round(total_db / per * 1000, 3),
            "python_ms_per_close": round((wall - total_db) / per * 1000, 3),
            "by_statement": [
                {
                    "statement": label,
                    "count": n,
                    "per_close": round(n / per, 2),
                    "total_seconds": round(s, 3),
                    "mean_ms": round(s / n * 1000, 3) if n else None,
                    "share_of_wall": round(s / wall, 3) if wall else None,
                }
                for label, (n, s) in rows
            ],
        }


SCANNED_TABLES = (
    "billing_customer",
    "billing_plan",
    "billing_subscription",
    "billing_subscriptionphase",
    "invoicing_invoice",
    "invoicing_invoiceline",
    "invoicing_taxrate",
    "metering_meter",
    "metering_periodusage",
)


def table_scans(url: str) -> dict[str, tuple[int, int, int]]:
    """table → (sequential scans, rows they read, index scans) so far, for the tables a
    close reads. (Backends report their counts when their transactions end, at most once a
    second, and when they exit: read after the run's connections are closed.)"""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0) "
            "FROM pg_stat_user_tables WHERE relname = ANY(%s)",
            [list(SCANNED_TABLES)],
        ).fetchall()
    return {name: (seq, read, idx) for name, seq, read, idx in rows}


def scans_during(before: dict[str, tuple[int, int, int]], url: str) -> dict[str, dict[str, int]]:
    time.sleep(1.5)  # past the statistics flush interval
    after = table_scans(url)
    return {
        table: {
            "seq_scans": after[table][0] - before.get(table, (0, 0, 0))[0],
            "seq_rows_read": after[table][1] - before.get(table, (0, 0, 0))[1],
            "index_scans": after[table][2] - before.get(table, (0, 0, 0))[2],
        }
        for table in sorted(after)
    }


def run_in_process(server_url: str, database: str, seed: Seed) -> RunResult:
    from django.db import connection, connections

    from invoicing import services

    connections.close_all()
    with psycopg.connect(with_database(server_url, database), autocommit=True) as admin:
        checkpoint(admin)
    scans_before = table_scans(with_database(server_url, database))
    profile = QueryProfile()
    cpu = CpuMeter(database)
    progress(f"(a) in-process close of {seed.subscriptions:,} subscriptions …")
    cpu.start()
    timer = Timer()
    connection.ensure_connection()
    connection._commit = profile.wrap_commit(connection._commit)
    try:
        with connection.execute_wrapper(profile):
            dispatch = Timer()
            due = len(services.due_subscription_ids(as_of=seed.as_of))
            dispatch_seconds = dispatch.seconds
            closed = services.close_due_periods(as_of=seed.as_of)
    finally:
        del connection._commit  # the class's own again
    wall = timer.seconds
    cpu_figures = cpu.stop(wall)
    connections.close_all()
    progress(f"    closed {closed:,} in {wall:.1f} s ({closed / wall:,.1f}/s); {due:,} were due")
    # The wrapper also timed the separate due_subscription_ids call above: it is part of the
    # run (the close itself calls it once more), so it stays in the figures.
    return RunResult(
        name="in-process",
        label="(a) in-process, services.close_due_periods",
        database=database,
        seconds=round(wall, 3),
        closed=closed,
        subscriptions_per_second=round(closed / wall, 1),
        ratio_to_target=ratio(wall, TARGET_SECONDS),
        dispatch_seconds=round(dispatch_seconds, 3),
        cpu=cpu_figures,
        profile=profile.summary(wall, closed),
        scans=scans_during(scans_before, with_database(server_url, database)),
    )


def migrate_copy(database_url: str) -> list[str]:
    """Bring a copy up to the checkout's migrations before its workers start (a worker
    imports the models as they are now; a commit may have added a migration since the seed
    was migrated). Returns the migrations applied, normally none."""

    def applied() -> set[str]:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT app || '.' || name FROM django_migrations").fetchall()
        return {name for (name,) in rows}

    before = applied()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "--verbosity", "0"],
        cwd=REPO_DIR,
        env={**os.environ, "DATABASE_URL": database_url, "DJANGO_DEBUG": "0"},
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return sorted(applied() - before)


class Workers:
    """Celery worker processes (each in its own session) on one database and one queue."""

    def __init__(
        self,
        *,
        count: int,
        concurrency: int,
        database_url: str,
        queue: str,
        log_dir: Path,
        db_reuse_max: int | None = None,
    ):
        self.count, self.concurrency, self.db_reuse_max = count, concurrency, db_reuse_max
        self.database_url, self.queue, self.log_dir = database_url, queue, log_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []

    def start(self) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "DJANGO_SETTINGS_MODULE": "billing.settings",
            "DJANGO_DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "BENCH_CLOSE_QUEUE": self.queue,
        }
        if self.db_reuse_max:
            env["BENCH_CLOSE_DB_REUSE_MAX"] = str(self.db_reuse_max)
        host = socket.gethostname()
        for n in range(self.count):
            name = f"{self.queue}-{n + 1}"
            log = (self.log_dir / f"{name}.log").open("ab")
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        WORKER_BOOT,
                        "worker",
                        "--pool",
                        "prefork",
                        "--concurrency",
                        str(self.concurrency),
                        "--queues",
                        self.queue,
                        "--hostname",
                        f"{name}@{host}",
                        "--loglevel",
                        "WARNING",
                        "--without-heartbeat",
                        "--without-gossip",
                        "--without-mingle",
                    ],
                    cwd=REPO_DIR,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # stop() ends it with its pool children
                )
            )
            log.close()
            self.names.append(f"{name}@{host}")

    def wait_ready(self, app: Any) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        waiting = set(self.names)
        while waiting:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"a worker exited ({process.returncode}):\n{self.log_tail()}"
                    )
            for reply in app.control.ping(destination=sorted(waiting), timeout=1.0) or []:
                waiting -= set(reply)
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"workers {sorted(waiting)} did not answer:\n{self.log_tail()}")

    @property
    def groups(self) -> set[int]:
        return {p.pid for p in self.processes}

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def stop(self) -> None:
        """TERM (warm shutdown: running tasks finish), then KILL what is left."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        tails = []
        for path in sorted(self.log_dir.glob(f"{self.queue}-*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(tails)


def run_celery(
    mode: str, server_url: str, database: str, seed: Seed, args: argparse.Namespace, log_dir: Path
) -> RunResult:
    from billing.celery import app
    from invoicing.tasks import close_due_periods

    count, concurrency = CELERY_MODES[mode]
    queue = f"bench-close-{secrets.token_hex(4)}"
    url = with_database(server_url, database)
    workers = Workers(
        count=count,
        concurrency=concurrency,
        database_url=url,
        queue=queue,
        log_dir=log_dir,
        db_reuse_max=args.db_reuse_max,
    )
    error = ""
    dispatch_seconds = None
    invoices, wall, cpu_figures, leftover = 0, 0.0, {}, 0
    migrations = migrate_copy(url)
    if migrations:
        progress(f"    applied to the copy first (new in the checkout): {', '.join(migrations)}")
    with psycopg.connect(
        with_database(server_url, database, application_name="bench-close-watch"), autocommit=True
    ) as watch:
        checkpoint(watch)
        progress(f"(b) Celery {mode}: starting {CELERY_LABELS[mode]} on queue {queue} …")
        try:
            workers.start()
            workers.wait_ready(app)
            cpu = CpuMeter(database, workers.groups)
            progress(f"    workers ready; sending close_due_periods for {seed.subscriptions:,} …")
            # Polling costs next to nothing: the invoice id sequence (one row) until it has
            # handed out an id per subscription, then count(*) until every invoice is there.
            allocated = (
                "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM "
                + watch.execute(
                    "SELECT pg_get_serial_sequence('invoicing_invoice', 'id')"
                ).fetchone()[0]
            )
            first_allocated = watch.execute(allocated).fetchone()[0]
            scans_before = table_scans(url)
            cpu.start()
            timer = Timer()
            dispatcher = close_due_periods.apply_async(args=[seed.as_of.isoformat()], queue=queue)
            invoices = 0
            last_note = time.monotonic()
            while True:
                invoices = watch.execute(allocated).fetchone()[0] - first_allocated
                if invoices >= seed.subscriptions:
                    invoices = watch.execute("SELECT count(*) FROM invoicing_invoice").fetchone()[0]
                if dispatch_seconds is None and dispatcher.ready():
                    dispatch_seconds = timer.seconds
                if invoices >= seed.subscriptions:
                    break
                if not workers.alive():
                    error = "a worker exited during the run"
                    break
                if timer.seconds > args.timeout:
                    error = f"timed out after {args.timeout:g} s with {invoices:,} invoices"
                    break
                if time.monotonic() - last_note > 10:
                    progress(f"    {invoices:,} invoices after {timer.seconds:.0f} s")
                    last_note = time.monotonic()
                time.sleep(POLL_INTERVAL)
            wall = timer.seconds
            cpu_figures = cpu.stop(wall)
            try:  # what the dispatcher returned: how many tasks it queued
                queued = dispatcher.get(timeout=30)
                if queued != seed.subscriptions:
                    error = error or f"close_due_periods queued {queued} tasks"
            except Exception as exc:  # reported, the checks will fail
                error = error or f"close_due_periods: {exc!r}"
        finally:
            workers.stop()
            scans = scans_during(scans_before, url) if cpu_figures else {}
            try:  # the queue is ours alone: nothing must be left on it
                import redis

                leftover = redis.Redis.from_url(app.conf.broker_url).delete(queue)
            except Exception:  # noqa: BLE001  (cleanup only)
                leftover = 0
        if error:
            progress(f"    {error}\n{workers.log_tail()}")
        progress(f"    {invoices:,} invoices in {wall:.1f} s ({invoices / max(wall, 1e-9):,.1f}/s)")
    result = RunResult(
        name=f"celery-{mode}",
        label=f"(b) Celery, {CELERY_LABELS[mode]}"
        + (f", CELERY_DB_REUSE_MAX={args.db_reuse_max}" if args.db_reuse_max else ""),
        database=database,
        seconds=round(wall, 3),
        closed=invoices,
        subscriptions_per_second=round(invoices / max(wall, 1e-9), 1),
        ratio_to_target=ratio(wall, TARGET_SECONDS),
        dispatch_seconds=round(dispatch_seconds, 3) if dispatch_seconds is not None else None,
        cpu=cpu_figures,
        error=error,
        migrations_applied=migrations,
        scans=scans,
    )
    if leftover:
        result.checks.append(Check(f"{result.name}: queue left empty", False, "messages left"))
    return result


# --- verification ------------------------------------------------------------------------


def verify(conn: psycopg.Connection[Any], seed: Seed, run: str) -> list[Check]:
    n = seed.subscriptions
    conn.execute("SET TIME ZONE 'UTC'")  # month arithmetic below as billing.periods does it
    invoices, distinct, wrong = conn.execute(
        """
        SELECT (SELECT count(*) FROM invoicing_invoice),
               (SELECT count(DISTINCT subscription_id) FROM invoicing_invoice),
               (SELECT count(*) FROM billing_subscription s
                 WHERE (SELECT count(*) FROM invoicing_invoice i
                         WHERE i.subscription_id = s.id) <> 1)
        """
    ).fetchone()
    lines_off, counters, compared_lines = conn.execute(
        """
        WITH l AS (
            SELECT i.subscription_id, i.period_start, l.meter_id,
                   sum(l.amount_precise) AS amount, count(*) AS lines
              FROM invoicing_invoiceline l JOIN invoicing_invoice i ON i.id = l.invoice_id
             WHERE l.kind = 'usage'
             GROUP BY 1, 2, 3
        )
        SELECT count(*) FILTER (WHERE coalesce(l.amount, 0) <> coalesce(u.amount, 0)),
               count(u.id), coalesce(sum(l.lines), 0)
          FROM metering_periodusage u
          FULL JOIN l ON l.subscription_id = u.subscription_id AND l.meter_id = u.meter_id
                     AND l.period_start = u.period_start
        """
    ).fetchone()
    usage_charged, charged = conn.execute(
        "SELECT (SELECT coalesce(sum(usage_charged), 0) FROM invoicing_invoice), "
        "(SELECT coalesce(sum(charged), 0) FROM metering_periodusage)"
    ).fetchone()
    rolled, not_rolled = conn.execute(
        """
        SELECT count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok)
          FROM (SELECT coalesce(s.current_period_start = i.period_end
                       AND i.period_start = s.billing_anchor
                       AND s.current_period_end = s.billing_anchor + interval '2 months'
                       AND s.status = 'active', false) AS ok
                  FROM billing_subscription s
                  LEFT JOIN invoicing_invoice i ON i.subscription_id = s.id) AS t
        """
    ).fetchone()
    totals_off, base_fees = conn.execute(
        """
        SELECT count(*) FILTER (WHERE i.total <> coalesce(l.presented, 0)
                                   OR i.subtotal <> coalesce(l.presented, 0)
                                   OR i.fees_precise <> %s OR i.status <> 'draft'),
               count(*) FILTER (WHERE l.base_fees = 1)
          FROM invoicing_invoice i
          LEFT JOIN (SELECT invoice_id, sum(amount) AS presented,
                            count(*) FILTER (WHERE kind = 'base_fee') AS base_fees
                       FROM invoicing_invoiceline GROUP BY invoice_id) l ON l.invoice_id = i.id
        """,
        [BASE_FEE],
    ).fetchone()
    return [
        Check(
            f"{run}: exactly one invoice per subscription",
            invoices == n and distinct == n and wrong == 0,
            f"{invoices:,} invoices for {distinct:,} of {n:,} subscriptions; "
            f"{wrong} subscriptions without exactly one",
        ),
        Check(
            f"{run}: each invoice's usage lines add up (amount_precise) to its counter's amount",
            lines_off == 0,
            f"{counters:,} counters against {compared_lines:,} usage lines; {lines_off} differ",
        ),
        Check(
            f"{run}: Σ invoice usage_charged = Σ counters' charged",
            usage_charged == charged,
            f"{usage_charged:f} = {charged:f} {CURRENCY}",
        ),
        Check(
            f"{run}: every subscription rolled to its next period",
            rolled == n and not_rolled == 0,
            f"{rolled:,} rolled (start = the invoice's period end, end = anchor + 2 months), "
            f"{not_rolled} not",
        ),
        Check(
            f"{run}: invoice totals = Σ presented lines, one base fee each, all drafts",
            totals_off == 0 and base_fees == invoices,
            f"{totals_off} invoices off; {base_fees:,} with one {BASE_FEE} base fee line",
        ),
    ]


# --- the report --------------------------------------------------------------------------


def report(
    *,
    args: argparse.Namespace,
    machine: dict[str, Any],
    seed: Seed,
    runs: list[RunResult],
    database_size: int,
    clone_seconds: list[float],
) -> dict[str, Any]:
    checks = seed.checks + [c for r in runs for c in r.checks]
    n, per = seed.subscriptions, seed.events_per_subscription
    print()
    print("Machine")
    print(
        f"  CPUs               {machine['cpu_count']} ({machine['cpus_usable']} usable), "
        f"{machine['cpu_model']}"
    )
    print(f"  PostgreSQL         {machine['postgresql_version']}, {machine['database']}")
    print(
        f"  server settings    synchronous_commit={machine['synchronous_commit']}, "
        f"fsync={machine['fsync']}, shared_buffers={machine['shared_buffers']}, "
        f"max_connections={machine['max_connections']}, "
        f"autovacuum={machine.get('autovacuum', '?')}"
    )
    print(f"  Python             {machine['python']} on {machine['platform']}")
    print(f"  load average       {machine['load_average_1m']} (1 min, before setup)")
    print(
        f"  workload           {n:,} subscriptions × {per:,} events = {n * per:,} events; "
        f"plan {PLAN_CODE}: base fee {BASE_FEE} {CURRENCY}, graduated input/output token "
        "charges, per-request overage; 3 counters per subscription"
    )
    print(
        "  not seeded         ledger transactions of the events (the close reads counters, "
        "never events), DailyUsage / ModelUsage rows"
    )
    print()
    print("Seeding (not part of any close figure)")
    seed_total = sum(s.seconds for s in seed.steps)
    for s in seed.steps:
        rows = f"{s.rows:>12,} rows" if s.rows is not None else " " * 17
        rate = f"{s.rows / s.seconds:>11,.0f} rows/s" if s.rows and s.seconds > 0 else ""
        note = f"  {s.note}" if s.note else ""
        print(f"  {s.name:<48}{s.seconds:>8.1f} s{rows}{rate}{note}")
    print(f"  {'total':<48}{seed_total:>8.1f} s")
    print(
        f"  database size {database_size / 1e9:,.2f} GB; each file-level copy for a Celery run: "
        + ", ".join(f"{c:.1f} s" for c in clone_seconds)
    )
    print()
    print(f"Close of {n:,} ended periods (target: under {TARGET_SECONDS:g} s)")
    width = max(len(r.label) for r in runs) + 2
    print(f"  {'':<{width}}{'seconds':>9}{'subs/s':>9}{'÷ 120 s':>9}{'dispatch s':>12}")
    for r in runs:
        verdict = "MET" if r.seconds < TARGET_SECONDS and not r.error else "NOT MET"
        print(
            f"  {r.label:<{width}}{r.seconds:>9.1f}{r.subscriptions_per_second:>9,.1f}"
            f"{fmt(r.ratio_to_target, '{:.3f}'):>9}"
            f"{fmt(r.dispatch_seconds, '{:.1f}'):>12}  {verdict}"
        )
    print(
        "  dispatch: (a) the due_subscription_ids query; (b) until close_due_periods (run by a "
        "worker) had queued every task"
    )
    celery = [r for r in runs if r.name.startswith("celery") and not r.error]
    if len(celery) > 1:
        fastest = min(celery, key=lambda r: r.seconds)
        slowest = max(celery, key=lambda r: r.seconds)
        print(
            f"  faster Celery layout: {CELERY_LABELS[fastest.name.split('-', 1)[1]]} "
            f"({fastest.seconds:.1f} s vs {slowest.seconds:.1f} s, "
            f"{(slowest.seconds / fastest.seconds - 1) * 100:.1f} % apart)"
        )
    print()
    print("Where the CPU went (share of all cores during each run)")
    for r in runs:
        shares = ", ".join(
            f"{g} {s:.0%}" for g, s in r.cpu.get("cpu_share", {}).items() if s >= 0.005
        )
        print(f"  {r.name:<12} busy {r.cpu.get('machine_busy', 0):.0%} = {shares}")
        seconds = r.cpu.get("cpu_seconds", {})
        mine = (
            seconds.get("bench process", 0)
            if r.name == "in-process"
            else seconds.get("celery workers", 0)
        )
        if r.closed:
            print(
                f"  {'':<12} CPU ms per close: "
                f"{'this process' if r.name == 'in-process' else 'workers'} "
                f"{mine / r.closed * 1000:.1f}, PostgreSQL "
                f"{(seconds.get(PG_RUN, 0) + seconds.get(PG_ENDED, 0)) / r.closed * 1000:.1f}"
                " (the database's backends + backends ended during the run)"
                + (
                    f", Redis {seconds.get('redis', 0) / r.closed * 1000:.2f}"
                    if r.name != "in-process"
                    else ""
                )
            )
    print()
    print("Table scans during each run (pg_stat_user_tables: the tables a close reads)")
    for r in runs:
        heavy = sorted(
            ((t, v) for t, v in r.scans.items() if v["seq_rows_read"]),
            key=lambda item: -item[1]["seq_rows_read"],
        )
        text = "; ".join(
            f"{t} {v['seq_scans']:,} seq scans reading {v['seq_rows_read']:,} rows"
            for t, v in heavy[:3]
        )
        print(f"  {r.name:<12} {text or 'no sequential scans that read rows'}")
    invoice_rows = max(
        (r.scans.get("invoicing_invoice", {}).get("seq_rows_read", 0) / max(r.closed, 1))
        for r in runs
    )
    if invoice_rows > 10:
        print(
            "  Note: sequential scans of invoicing_invoice growing with the table: plans a "
            "long-lived connection cached while the table was empty (the invoice-line trigger's "
            "lookup of the invoice, the deferred foreign-key checks of the lines at commit) are "
            "never replanned"
            + (
                " — autovacuum is off on this server, so no ANALYZE invalidates them"
                if machine.get("autovacuum") == "off"
                else ""
            )
            + ". A connection per task (Celery's default) plans afresh each time."
        )
    for r in runs:
        if r.migrations_applied:
            print(
                f"  Note: {r.name} ran on newer code than the seed was migrated for; applied "
                f"to its copy first: {', '.join(r.migrations_applied)}"
            )
    crowded = [r.name for r in runs if r.cpu.get("cpu_share", {}).get("other", 0) > 0.1]
    if crowded:
        print(
            "  Note: other work (processes that are not this benchmark's, its workers, "
            f"PostgreSQL or Redis) took more than 10 % of the machine during {', '.join(crowded)}; "
            "those figures are slower than on an idle machine."
        )
    for r in runs:
        if not r.profile:
            continue
        p = r.profile
        print()
        print(f"Where the time goes: {r.label} (every statement timed at the client)")
        print(
            f"  {p['ms_per_close']:.2f} ms per close = {p['database_ms_per_close']:.2f} ms "
            f"waiting on PostgreSQL ({p['statements_per_close']:.1f} statements and "
            f"{p['commits'] / max(r.closed, 1):.1f} commits per close) + "
            f"{p['python_ms_per_close']:.2f} ms in Python"
        )
        print(f"  {'per close':>9} {'mean ms':>8} {'share':>6}  statement")
        for s in p["by_statement"][:20]:
            text = s["statement"]
            text = text if len(text) <= 150 else text[:147] + "…"
            print(
                f"  {s['per_close']:>9.2f} {s['mean_ms']:>8.3f} {s['share_of_wall']:>6.1%}  {text}"
            )
    print()
    print("Checks")
    for check in checks:
        print(f"  {'OK  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    ok = all(c.ok for c in checks) and not any(r.error for r in runs)
    for r in runs:
        if r.error:
            print(f"  FAIL {r.name}: {r.error}")
    print(f"Verification: {'OK' if ok else 'FAILED'}")
    return {
        "benchmark": "close",
        "subscriptions": n,
        "events_per_subscription": per,
        "events": n * per,
        "target_seconds": TARGET_SECONDS,
        "as_of": seed.as_of.isoformat(),
        "machine": machine,
        "seeding": {
            "steps": [asdict(s) for s in seed.steps],
            "total_seconds": round(seed_total, 2),
            "database_bytes": database_size,
            "clone_seconds": [round(c, 2) for c in clone_seconds],
            "events_have_ledger_transactions": False,
        },
        "runs": [{**asdict(r), "checks": [asdict(c) for c in r.checks]} for r in runs],
        "seconds": {r.name: r.seconds for r in runs},
        "subscriptions_per_second": {r.name: r.subscriptions_per_second for r in runs},
        "ratio_to_target": {r.name: r.ratio_to_target for r in runs},
        "target_met": {r.name: (r.seconds < TARGET_SECONDS and not r.error) for r in runs},
        "checks": [asdict(c) for c in checks],
        "verification_ok": ok,
    }


# --- main --------------------------------------------------------------------------------


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: workers stop


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    env_url = os.environ.get("DATABASE_URL")
    server_url = env_url or devservices.database_url()
    machine = machine_facts()
    machine["database"] = database_origin(env_url, server_url)
    machine["database_embedded"] = machine["database"].startswith("embedded")
    prefix = f"bench_close_{secrets.token_hex(4)}"
    seeded_db = f"{prefix}_inproc"
    celery_dbs = {mode: f"{prefix}_celery_{mode}" for mode in args.modes}
    created: list[str] = []
    started = Timer()
    runs: list[RunResult] = []
    clone_seconds: list[float] = []

    try:
        drop_database(server_url, seeded_db, recreate=True)
        created.append(seeded_db)
        seeded_url = with_database(server_url, seeded_db)
        os.environ["DATABASE_URL"] = seeded_url
        os.environ["DJANGO_SETTINGS_MODULE"] = "billing.settings"
        os.environ["DJANGO_DEBUG"] = "0"
        os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-secret")
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command
        from django.db import connections

        # The workers must not try to start an embedded Redis if none was given.
        os.environ.setdefault("REDIS_URL", settings.REDIS_URL)

        now = datetime.now(UTC).replace(microsecond=0)
        timer = Timer()
        progress(f"migrating {seeded_db} …")
        call_command("migrate", interactive=False, verbosity=0)
        steps = [Step("migrate", timer.seconds)]
        timer = Timer()
        shared = seed_shared()
        patterns = build_patterns(
            shared, args.events_per_subscription, now, random.Random(args.seed)
        )
        steps.append(Step(f"meters, plan (services); {PATTERNS} usage patterns", timer.seconds))
        seed = Seed(
            subscriptions=args.subscriptions,
            events_per_subscription=args.events_per_subscription,
            as_of=now,
            shared=shared,
            patterns=patterns,
            first_customer=0,
            first_subscription=0,
            steps=steps,
        )
        connections.close_all()
        with psycopg.connect(
            with_database(server_url, seeded_db, application_name="bench-close"), autocommit=True
        ) as admin:
            machine.update(server_facts(admin))
            machine["autovacuum"] = admin.execute("SHOW autovacuum").fetchone()[0]
            version = admin.execute("SHOW server_version_num").fetchone()[0]
            progress(
                f"seeding {args.subscriptions:,} customers, wallets, subscriptions, counters …"
            )
            seed_customers(admin, seed)
            progress(
                f"seeding {args.subscriptions * args.events_per_subscription:,} events by COPY "
                f"({args.copy_connections} connections) …"
            )
            seed.steps.append(seed_events(seeded_url, seed, args.copy_connections))
            progress("VACUUM ANALYZE …")
            timer = Timer()
            admin.execute("VACUUM ANALYZE")
            seed.steps.append(Step("VACUUM ANALYZE (no autovacuum during the runs)", timer.seconds))
            progress("checking the seed …")
            timer = Timer()
            seed.checks = seed_checks(admin, seed)
            seed.steps.append(Step("seed checks (events vs counters)", timer.seconds))
            (database_size,) = admin.execute(
                "SELECT pg_database_size(current_database())"
            ).fetchone()
        for check in seed.checks:
            progress(f"  {'OK  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
        for name in celery_dbs.values():
            progress(f"copying {seeded_db} to {name} …")
            created.append(name)
            clone_seconds.append(
                clone_database(server_url, seeded_db, name, int(version) >= 150000)
            )
        progress(f"setup took {started.seconds:.1f} s")

        with tempfile.TemporaryDirectory() as log_dir:
            if not args.no_in_process:
                result = run_in_process(server_url, seeded_db, seed)
                with psycopg.connect(with_database(server_url, seeded_db)) as conn:
                    result.checks = verify(conn, seed, result.name)
                runs.append(result)
            for mode, name in celery_dbs.items():
                result = run_celery(mode, server_url, name, seed, args, Path(log_dir))
                with psycopg.connect(with_database(server_url, name)) as conn:
                    result.checks += verify(conn, seed, result.name)
                runs.append(result)
        for r in runs:
            for check in r.checks:
                progress(f"  {'OK  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
        summary = report(
            args=args,
            machine=machine,
            seed=seed,
            runs=runs,
            database_size=database_size,
            clone_seconds=clone_seconds,
        )
    finally:
        from django.apps import apps

        if apps.ready:
            from django.db import connections

            connections.close_all()
        for name in created:
            if args.keep:
                progress(f"kept database {name}")
            else:
                drop_database(server_url, name)
        progress(f"total {started.seconds:.1f} s")
    print(json.dumps(summary, default=str), flush=True)
    if not summary["verification_ok"]:
        print("close benchmark: verification FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # the workers and the databases are gone by now
        progress("interrupted")
        sys.exit(130)
