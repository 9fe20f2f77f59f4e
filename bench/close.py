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
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
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

from bench.harness.cpu import Classify, CpuMeter, CpuUse, postgres_database  # noqa: E402
from bench.harness.db import (  # noqa: E402
    Databases,
    checkpoint,
    migrate_in_subprocess,
    scans_during,
    table_scans,
    with_database,
)
from bench.harness.machine import server_facts, server_url_and_facts  # noqa: E402
from bench.harness.processes import CeleryWorkers, migrate, run_command, setup_django  # noqa: E402
from bench.harness.report import (  # noqa: E402
    Check,
    cpu_shares,
    finish,
    fmt,
    print_checks,
    print_machine,
    progress,
)
from bench.harness.seeding import (  # noqa: E402
    copy_field,
    copy_rows,
    create_meters,
    other_columns,
    reserve_ids,
)
from bench.harness.stats import QueryProfile, Timer, ratio  # noqa: E402

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
class Step:
    name: str
    seconds: float
    rows: int | None = None
    note: str = ""


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

    meter_ids = create_meters(METERS, event_name=EVENT_NAME)
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
                "distinct_values",
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


PG_RUN = "postgresql"  # the live backends of the run's database
PG_ENDED = "postgresql, ended backends"  # any database's: the postmaster's reaped children
PG_OTHER = "postgresql, server and other databases"


def cpu_groups(database: str, worker_groups: set[int] | None = None) -> Classify:
    """This process, the Celery workers (their process groups), the run database's
    PostgreSQL backends, the rest of PostgreSQL, Redis, and everything else; with
    ``ended_backends=PG_ENDED``, the backends that ended during the run (whatever their
    database; the Celery runs' backends end after every task, see the report). Only a
    server on this machine is seen."""
    me = os.getpid()

    def classify(pid: int, proc: Any, processes: dict[int, Any]) -> str:
        if pid == me:
            return "bench process"
        if worker_groups and proc.pgrp in worker_groups:
            return "celery workers"
        if proc.is_postgres:
            return PG_RUN if postgres_database(proc, processes) == database else PG_OTHER
        if proc.command.startswith("redis"):
            return "redis"
        return "other"

    return classify


def cpu_figures(use: CpuUse) -> dict[str, Any]:
    return {
        "machine_busy": use.machine_busy,
        "cpu_seconds": {group: round(s, 2) for group, s in use.seconds.items()},
        "cpu_share": use.share,
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


SCANNED_TABLES = [  # the tables a close reads
    "billing_customer",
    "billing_plan",
    "billing_subscription",
    "billing_subscriptionphase",
    "invoicing_invoice",
    "invoicing_invoiceline",
    "invoicing_taxrate",
    "metering_meter",
    "metering_periodusage",
]


def run_in_process(server_url: str, database: str, seed: Seed) -> RunResult:
    from django.db import connection, connections

    from invoicing import services

    connections.close_all()
    with psycopg.connect(with_database(server_url, database), autocommit=True) as admin:
        checkpoint(admin)
    scans_before = table_scans(with_database(server_url, database), SCANNED_TABLES)
    profile = QueryProfile()
    cpu = CpuMeter(cpu_groups(database), ended_backends=PG_ENDED)
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
    cpu_use = cpu.stop(wall)
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
        cpu=cpu_figures(cpu_use),
        profile=profile.summary(wall, closed, "close"),
        scans=scans_during(scans_before, with_database(server_url, database), SCANNED_TABLES),
    )


def run_celery(
    mode: str, server_url: str, database: str, seed: Seed, args: argparse.Namespace, log_dir: Path
) -> RunResult:
    from billing.celery import app
    from invoicing.tasks import close_due_periods

    count, concurrency = CELERY_MODES[mode]
    queue = f"bench-close-{secrets.token_hex(4)}"
    url = with_database(server_url, database)
    workers = CeleryWorkers(
        database_url=url,
        log_dir=log_dir,
        count=count,
        pool="prefork",
        concurrency=concurrency,
        queue=queue,
        db_reuse_max=args.db_reuse_max,
    )
    error = ""
    dispatch_seconds = None
    invoices, wall, leftover = 0, 0.0, 0
    cpu: dict[str, Any] = {}
    migrations = migrate_in_subprocess(url)
    if migrations:
        progress(f"    applied to the copy first (new in the checkout): {', '.join(migrations)}")
    with psycopg.connect(
        with_database(server_url, database, application_name="bench-close-watch"), autocommit=True
    ) as watch:
        checkpoint(watch)
        progress(f"(b) Celery {mode}: starting {CELERY_LABELS[mode]} on queue {queue} …")
        try:
            workers.start()
            workers.wait_ready()
            meter = CpuMeter(cpu_groups(database, workers.groups), ended_backends=PG_ENDED)
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
            scans_before = table_scans(url, SCANNED_TABLES)
            meter.start()
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
            cpu = cpu_figures(meter.stop(wall))
            try:  # what the dispatcher returned: how many tasks it queued
                queued = dispatcher.get(timeout=30)
                if queued != seed.subscriptions:
                    error = error or f"close_due_periods queued {queued} tasks"
            except Exception as exc:  # reported, the checks will fail
                error = error or f"close_due_periods: {exc!r}"
        finally:
            workers.stop()
            scans = scans_during(scans_before, url, SCANNED_TABLES) if cpu else {}
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
        cpu=cpu,
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
    print_machine(
        machine,
        settings=(
            "synchronous_commit",
            "fsync",
            "shared_buffers",
            "max_connections",
            "autovacuum",
        ),
        lines=[
            (
                "workload",
                f"{n:,} subscriptions × {per:,} events = {n * per:,} events; plan {PLAN_CODE}: "
                f"base fee {BASE_FEE} {CURRENCY}, graduated input/output token charges, "
                "per-request overage; 3 counters per subscription",
            ),
            (
                "not seeded",
                "ledger transactions of the events (the close reads counters, never events), "
                "DailyUsage / ModelUsage rows",
            ),
        ],
    )
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
        shares = cpu_shares(r.cpu.get("cpu_share", {}))
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
    ok = print_checks(checks, failures=[f"{r.name}: {r.error}" for r in runs if r.error])
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


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    server_url, machine = server_url_and_facts()
    prefix = f"bench_close_{secrets.token_hex(4)}"
    seeded_db = f"{prefix}_inproc"
    celery_dbs = {mode: f"{prefix}_celery_{mode}" for mode in args.modes}
    started = Timer()
    runs: list[RunResult] = []
    clone_seconds: list[float] = []

    with Databases(server_url, keep=args.keep) as databases:
        seeded_url = databases.create(seeded_db)
        setup_django(seeded_url)
        from django.db import connections

        now = datetime.now(UTC).replace(microsecond=0)
        timer = Timer()
        progress(f"migrating {seeded_db} …")
        migrate()
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
            clone_seconds.append(databases.clone(seeded_db, name))
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
    progress(f"total {started.seconds:.1f} s")
    return finish(summary)


if __name__ == "__main__":
    run_command(main)
