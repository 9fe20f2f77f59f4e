"""Ledger posting throughput: the service against itself and against raw PostgreSQL.

    make bench-ledger                                  # 3 rounds of 5 s runs, 1, 4, 16 writers
    make bench-ledger BENCH_ARGS="--quick"             # 1 round of 1 s runs (smoke test)
    .venv/bin/python -m billing.devservices exec -- .venv/bin/python bench/ledger.py \
        --seconds 10 --writers 1,8,32 --keep

Everything happens in a throw-away database, ``billing_bench``, created next to the one
``DATABASE_URL`` names and dropped at the end (``--keep`` leaves it). Scenarios, each run
with every writer count; a writer is an OS process (spawned, its own ``django.setup()``
and its own connection) that posts for a fixed time after a common start barrier:

    shared     post_transaction: debit a random wallet, credit the hot @Revenue account
    no-shared  the same, crediting the wallet's own revenue account (nothing is shared)
    raw-plain  the issue's raw ceiling: plain psycopg, no Django, no checks: INSERT the
               transaction row, INSERT its two entry rows, COMMIT, into trigger-less
               copies of the ledger tables
    raw        a stricter ceiling: the same rows in one statement (a data-modifying CTE)
               per posting, then COMMIT

Every scenario runs once per round (3 rounds by default) at each writer count, the
scenarios' order rotating from round to round so that none always runs first after the
checkpoint. A ratio is taken within a round (runs seconds apart, on the same machine
state) and the figure reported is the median of the rounds, with each round's value
beside it; postings/s are the median of the rounds too.

It prints postings/s, the ratios the issue sets targets for (shared ÷ no-shared ≥ 0.8 and
service ÷ raw ≥ 0.5, both at 16 writers), where the writers' backends spent their time
(sampled from pg_stat_activity), checks the books balance and the row counts match, and
ends with one JSON line holding every figure. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import multiprocessing as mp
import os
import queue
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# This file is called ledger.py: with its own folder first on sys.path (how Python runs a
# script) ``import ledger`` would import this file instead of the ledger app.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(REPO_DIR))

from bench.common import (  # noqa: E402
    bench_database,
    checkpoint,
    database_origin,
    fmt,
    machine_facts,
    progress,
    ratio,
    server_facts,
    with_database,
)
from billing import devservices  # noqa: E402  (imports no Django; sys.path must be fixed first)

BENCH_DB = "billing_bench"
WALLETS = 1_000
CURRENCY = "USD"
FUNDING_PER_WALLET = Decimal("1000000.00")  # a posting moves at most 0.9999: never refused
FUNDING_CHUNK = 250  # funding postings per post_transactions() call
SCENARIOS = ("shared", "no-shared", "raw-plain", "raw")
SCENARIO_LABELS = {
    "shared": "(i)   service, shared @Revenue",
    "no-shared": "(ii)  service, no shared account",
    "raw-plain": "(iii) raw ceiling: plain inserts",
    "raw": "(iv)  raw, one statement each",
}
RAW_SCENARIOS = ("raw-plain", "raw")
TARGET_WRITERS = 16
TARGET_SHARED_VS_NO_SHARED = 0.8
TARGET_SERVICE_VS_RAW = 0.5
SAMPLE_INTERVAL = 0.05  # seconds between pg_stat_activity samples during a run
START_TIMEOUT = 120.0  # for writers to start (django.setup) and to reach a barrier


# --- configuration -----------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument(
        "--writers", default="1,4,16", help="comma-separated writer counts (default 1,4,16)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of every scenario at every writer count"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s runs: a smoke test")
    parser.add_argument("--keep", action="store_true", help=f"do not drop {BENCH_DB} at the end")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 1.0
        args.rounds = 1
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        args.writer_counts = sorted({int(w) for w in args.writers.split(",") if w.strip()})
    except ValueError:
        parser.error(f"--writers must be comma-separated integers, got {args.writers!r}")
    if not args.writer_counts or min(args.writer_counts) < 1:
        parser.error("--writers needs at least one count, each ≥ 1")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    return args


# --- the database ------------------------------------------------------------------------


RAW_TABLES = {"ledger_transaction": "bench_raw_transaction", "ledger_entry": "bench_raw_entry"}


def create_raw_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Trigger-less copies of the ledger tables for the raw scenario.

    Same columns (and NOT NULLs and defaults) and the same indexes, read from the catalog so
    they follow the models; but no triggers, foreign keys or CHECKs, and no unique index
    except the primary keys and the transaction reference. Returns the indexes created.
    """
    created = []
    for source, target in RAW_TABLES.items():
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING IDENTITY)").format(
                sql.Identifier(target), sql.Identifier(source)
            )
        )
        indexes = conn.execute(
            "SELECT i.indisprimary, pg_get_indexdef(i.indexrelid),"
            "       array(SELECT a.attname::text FROM unnest(i.indkey) AS k(attnum)"
            "             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)"
            "  FROM pg_index i WHERE i.indrelid = %s::regclass ORDER BY i.indexrelid",
            [source],
        ).fetchall()
        for number, (primary, definition, columns) in enumerate(indexes):
            if primary:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                        sql.Identifier(target), sql.SQL(", ").join(map(sql.Identifier, columns))
                    )
                )
                created.append(f"{target} PRIMARY KEY ({', '.join(columns)})")
                continue
            unique = (
                source == "ledger_transaction"
                and columns == ["reference"]
                and (definition.startswith("CREATE UNIQUE"))
            )
            # "CREATE [UNIQUE] INDEX name ON public.table USING btree (cols) [WHERE …]"
            method_and_columns = definition.split(" USING ", 1)[1]
            name = f"{target}_{number}"
            conn.execute(
                sql.SQL("CREATE {unique}INDEX {name} ON {table} USING {rest}").format(
                    unique=sql.SQL("UNIQUE " if unique else ""),
                    name=sql.Identifier(name),
                    table=sql.Identifier(target),
                    rest=sql.SQL(method_and_columns),  # straight from pg_get_indexdef
                )
            )
            created.append(f"{name}{' UNIQUE' if unique else ''} USING {method_and_columns}")
    return created


# --- the accounts ------------------------------------------------------------------------


@dataclass(frozen=True)
class Accounts:
    world: int
    revenue: int
    wallets: list[int]
    wallet_revenues: list[int]  # wallet_revenues[i] is wallets[i]'s own revenue account
    funded: Decimal


def create_accounts() -> Accounts:
    """1,000 funded prepaid wallets, the hot @World and @Revenue, and a revenue account per
    wallet for the no-shared scenario. Runs in the main process, through the services."""
    from ledger import services
    from ledger.models import NormalBalance

    world = services.ensure_system_account(
        code="@World", currency=CURRENCY, normal_balance=NormalBalance.DEBIT
    )
    revenue = services.ensure_system_account(code="@Revenue", currency=CURRENCY)
    wallets, wallet_revenues = [], []
    for i in range(WALLETS):
        wallets.append(
            services.create_account(
                code=f"bench:wallet:{i}",
                currency=CURRENCY,
                allow_negative=False,
                owner_type="bench.customer",
                owner_id=str(i),
            ).pk
        )
        wallet_revenues.append(
            services.create_account(
                code=f"bench:revenue:{i}",
                currency=CURRENCY,
                allow_negative=True,
                owner_type="bench.customer",
                owner_id=str(i),
            ).pk
        )
    for start in range(0, WALLETS, FUNDING_CHUNK):
        services.post_transactions(
            transactions=[
                services.TransactionSpec(
                    reference=f"bench:fund:{i}",
                    legs=[
                        services.debit(world, FUNDING_PER_WALLET),
                        services.credit(wallets[i], FUNDING_PER_WALLET),
                    ],
                    description="bench funding",
                )
                for i in range(start, min(start + FUNDING_CHUNK, WALLETS))
            ]
        )
    return Accounts(
        world=world.pk,
        revenue=revenue.pk,
        wallets=wallets,
        wallet_revenues=wallet_revenues,
        funded=FUNDING_PER_WALLET * WALLETS,
    )


# --- the writers (each in its own spawned process) ---------------------------------------


@dataclass(frozen=True)
class RunSpec:
    scenario: str
    writers: int
    round: int
    seconds: float
    revenue: int
    wallets: list[int]
    wallet_revenues: list[int]


@dataclass
class WriterResult:
    index: int
    postings: int = 0
    elapsed: float = 0.0
    amount: str = "0"  # Decimal as a string: the total moved by the postings that committed
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str = ""


# A posting's amount: 0.0001 to 0.9999, built from strings (never floats).
AMOUNTS = [Decimal(f"0.{units:04d}") for units in range(1, 10_000)]

# One statement (a data-modifying CTE) then COMMIT: two round trips per posting, the same
# as the service's one function call and COMMIT, so the ratio compares the server-side work.
RAW_POSTING = """
WITH t AS (
    INSERT INTO bench_raw_transaction
           (reference, payload_hash, description, metadata, effective_at, recorded_at)
    VALUES (%s, %s, '', '{}'::jsonb, now(), now())
    RETURNING id
)
INSERT INTO bench_raw_entry (transaction_id, account_id, currency, amount)
SELECT t.id, e.account_id, 'USD', e.amount
  FROM t, (VALUES (%s::bigint, %s::numeric), (%s::bigint, %s::numeric)) AS e(account_id, amount)
"""


# The raw ceiling: plain inserts of a transaction and its entries, then COMMIT.
RAW_PLAIN_TRANSACTION = """
INSERT INTO bench_raw_transaction
       (reference, payload_hash, description, metadata, effective_at, recorded_at)
VALUES (%s, %s, '', '{}'::jsonb, now(), now())
RETURNING id
"""
RAW_PLAIN_ENTRIES = """
INSERT INTO bench_raw_entry (transaction_id, account_id, currency, amount)
VALUES (%s, %s, 'USD', %s), (%s, %s, 'USD', %s)
"""


def backend_names(scenario: str, writers: int) -> list[str]:
    """application_name of the connections a run uses (how the sampler finds them)."""
    kind = "raw" if scenario in RAW_SCENARIOS else "django"
    return [f"bench-{kind}-{i}" for i in range(writers)]


def writer_main(
    index: int,
    server_url: str,
    barriers: dict[int, Barrier],
    commands: Queue[RunSpec | None],
    results: Queue[tuple[str, Any]],
) -> None:
    """A writer process: set Django up, connect, then run each RunSpec it is sent."""
    os.environ["DATABASE_URL"] = with_database(
        server_url, BENCH_DB, application_name=f"bench-django-{index}"
    )
    os.environ["DJANGO_SETTINGS_MODULE"] = "billing.settings"
    # As in production: no debug cursor wrapper recording every query.
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-secret")
    import django

    django.setup()
    from django.db import connection

    connection.ensure_connection()  # Django's connection (the service scenarios)
    # The raw scenario's connection: plain psycopg with its defaults (so statements are
    # prepared after 5 uses), autocommit off: one transaction per posting.
    raw = psycopg.connect(
        with_database(server_url, BENCH_DB, application_name=f"bench-raw-{index}"),
        autocommit=False,
    )
    results.put(("ready", index))
    while (spec := commands.get()) is not None:
        try:
            barriers[spec.writers].wait(timeout=START_TIMEOUT)
            result = run_writer(index, spec, raw)
        except Exception as exc:  # report, do not hang the main process
            result = WriterResult(
                index=index, errors={type(exc).__name__: 1}, first_error=repr(exc)
            )
        results.put(("result", result))
    raw.close()
    connection.close()


def run_writer(index: int, spec: RunSpec, raw: psycopg.Connection[Any]) -> WriterResult:
    import random

    from ledger import services

    rng = random.Random(f"{spec.scenario}/{spec.writers}/{index}")  # reproducible choices
    result = WriterResult(index=index)
    errors: collections.Counter[str] = collections.Counter()
    moved = Decimal(0)
    prefix = f"bench:{spec.scenario}:{spec.writers}w:r{spec.round}:{index}:"
    started = time.perf_counter()
    deadline = started + spec.seconds
    sequence = 0
    while time.perf_counter() < deadline:
        sequence += 1
        reference = f"{prefix}{sequence}"
        i = rng.randrange(len(spec.wallets))
        wallet = spec.wallets[i]
        amount = AMOUNTS[rng.randrange(len(AMOUNTS))]
        target = spec.revenue if spec.scenario == "shared" else spec.wallet_revenues[i]
        try:
            if spec.scenario in RAW_SCENARIOS:
                payload_hash = hashlib.sha256(
                    f"{wallet}:{amount}:{target}:{-amount}".encode()
                ).hexdigest()
                if spec.scenario == "raw":
                    raw.execute(
                        RAW_POSTING, [reference, payload_hash, wallet, amount, target, -amount]
                    )
                else:
                    row = raw.execute(RAW_PLAIN_TRANSACTION, [reference, payload_hash]).fetchone()
                    raw.execute(
                        RAW_PLAIN_ENTRIES, [row[0], wallet, amount, row[0], target, -amount]
                    )
                raw.commit()
            else:
                services.post_transaction(
                    reference=reference,
                    legs=[services.debit(wallet, amount), services.credit(target, amount)],
                )
        except Exception as exc:  # counted and reported; the checks then fail the run
            if spec.scenario in RAW_SCENARIOS:
                raw.rollback()
            errors[type(exc).__name__] += 1
            result.first_error = result.first_error or repr(exc)
            continue
        result.postings += 1
        moved += amount
    result.elapsed = time.perf_counter() - started
    result.amount = str(moved)
    result.errors = dict(errors)
    return result


# --- the main process: running writers and watching them --------------------------------


@dataclass
class RunResult:
    scenario: str
    writers: int
    round: int
    postings: int
    seconds: float
    per_second: float
    amount: str
    errors: dict[str, int]
    first_error: str
    wait_events: dict[str, float]  # share of writer-backend samples per state/wait event


class WriterPool:
    """max(writers) spawned processes, started once and reused by every run: run n uses
    writers 0..n-1, which meet the main process at the barrier for n before posting."""

    def __init__(self, size: int, writer_counts: Sequence[int], server_url: str):
        # spawn, not fork: each writer starts clean, runs django.setup() and opens its own
        # connections; nothing (least of all a connection) is inherited from this process.
        context = mp.get_context("spawn")
        self.barriers = {n: context.Barrier(n + 1) for n in writer_counts}
        self.results: Queue[tuple[str, Any]] = context.Queue()
        self.commands: list[Queue[RunSpec | None]] = [context.Queue() for _ in range(size)]
        self.processes = [
            context.Process(
                target=writer_main,
                args=(i, server_url, self.barriers, self.commands[i], self.results),
                name=f"bench-writer-{i}",
                daemon=True,
            )
            for i in range(size)
        ]
        for process in self.processes:
            process.start()
        ready = 0
        while ready < size:
            kind, _ = self._get(START_TIMEOUT)
            ready += kind == "ready"

    def _get(self, timeout: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [p.name for p in self.processes if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"writer process(es) died: {', '.join(dead)}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("writers did not answer in time") from None

    def run(self, spec: RunSpec, sampler: psycopg.Connection[Any]) -> RunResult:
        for i in range(spec.writers):
            self.commands[i].put(spec)
        self.barriers[spec.writers].wait(timeout=START_TIMEOUT)
        wait_events = sample_wait_events(
            sampler, backend_names(spec.scenario, spec.writers), spec.seconds
        )
        writer_results: list[WriterResult] = []
        while len(writer_results) < spec.writers:
            kind, payload = self._get(spec.seconds + START_TIMEOUT)
            if kind == "result":
                writer_results.append(payload)
        postings = sum(r.postings for r in writer_results)
        # Every writer started at the barrier; the run lasts until the last one finished.
        seconds = max(r.elapsed for r in writer_results) or spec.seconds
        errors: collections.Counter[str] = collections.Counter()
        for r in writer_results:
            errors.update(r.errors)
        return RunResult(
            scenario=spec.scenario,
            writers=spec.writers,
            round=spec.round,
            postings=postings,
            seconds=round(seconds, 3),
            per_second=round(postings / seconds, 1),
            amount=str(sum((Decimal(r.amount) for r in writer_results), Decimal(0))),
            errors=dict(errors),
            first_error=next((r.first_error for r in writer_results if r.first_error), ""),
            wait_events=wait_events,
        )

    def close(self) -> None:
        for commands in self.commands:
            commands.put(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()


def sample_wait_events(
    conn: psycopg.Connection[Any], names: list[str], seconds: float
) -> dict[str, float]:
    """What the writers' backends are doing, sampled for ``seconds``: the share of samples
    per wait event ("CPU" when active and not waiting; "client" when idle, i.e. the backend
    waits for the writer process: Python, the network, or the posting loop)."""
    counts: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rows = conn.execute(
            "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = ANY(%s)",
            [BENCH_DB, names],
        ).fetchall()
        for state, wait_type, wait_event in rows:
            if state == "active":
                counts[f"{wait_type}:{wait_event}" if wait_type else "CPU"] += 1
            elif state == "idle in transaction":
                counts["client (in transaction)"] += 1
            else:
                counts["client (between transactions)"] += 1
        time.sleep(SAMPLE_INTERVAL)
    total = sum(counts.values()) or 1
    return {label: round(n / total, 3) for label, n in counts.most_common()}


# --- checks ------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def verify(
    accounts: Accounts, runs: list[RunResult], raw_conn: psycopg.Connection[Any]
) -> list[Check]:
    """Cheap end-of-run checks: money is conserved, every reported posting is in the ledger
    (and nothing else is), the balance rows agree with the entries, and no posting failed."""
    from django.db import connection

    from ledger.models import Account, Entry
    from ledger.models import Transaction as LedgerTransaction
    from ledger.selectors import BalanceView, get_balance

    def moved(scenario: str) -> Decimal:
        return sum((Decimal(r.amount) for r in runs if r.scenario == scenario), Decimal(0))

    def count(scenario: str) -> int:
        return sum(r.postings for r in runs if r.scenario == scenario)

    ids = [accounts.world, accounts.revenue, *accounts.wallets, *accounts.wallet_revenues]
    views: dict[int, BalanceView] = {
        account.pk: get_balance(account=account) for account in Account.objects.filter(pk__in=ids)
    }

    def total(account_ids: list[int]) -> Decimal:
        return sum((views[i].posted for i in account_ids), Decimal(0))

    wallets, own_revenue = total(accounts.wallets), total(accounts.wallet_revenues)
    revenue, world = views[accounts.revenue].posted, views[accounts.world].posted
    held = sum((view.held or Decimal(0) for view in views.values()), Decimal(0))
    in_books = wallets + revenue + own_revenue
    checks = [
        Check(
            "wallets + revenue = funded",
            in_books == accounts.funded,
            f"{wallets} + {revenue} + {own_revenue} = {in_books} (funded {accounts.funded})",
        ),
        Check("@World = funded", world == accounts.funded, f"{world}"),
        Check(
            "@Revenue = amounts posted (shared)",
            revenue == moved("shared"),
            f"{revenue} vs {moved('shared')}",
        ),
        Check(
            "own revenue accounts = amounts posted (no-shared)",
            own_revenue == moved("no-shared"),
            f"{own_revenue} vs {moved('no-shared')}",
        ),
        Check("nothing held", held == 0, f"{held}"),
    ]

    expected = WALLETS + count("shared") + count("no-shared")  # funding + service postings
    transactions = LedgerTransaction.objects.count()
    entries = Entry.objects.count()
    checks.append(
        Check(
            "ledger_transaction rows = postings reported",
            transactions == expected,
            f"{transactions} rows, {WALLETS} funding + {expected - WALLETS} postings",
        )
    )
    checks.append(Check("ledger_entry rows = 2 × postings", entries == 2 * expected, f"{entries}"))

    # Reconciliation in one query: each account's balance rows against its entries.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM ledger_account a"
            " LEFT JOIN (SELECT account_id, sum(posted) AS posted FROM ledger_balance"
            "            GROUP BY account_id) b ON b.account_id = a.id"
            " LEFT JOIN (SELECT account_id, sum(amount) AS signed FROM ledger_entry"
            "            GROUP BY account_id) e ON e.account_id = a.id"
            " WHERE coalesce(b.posted, 0) <> coalesce(e.signed, 0)"
            "       * CASE WHEN a.normal_balance = 'debit' THEN 1 ELSE -1 END"
        )
        mismatched = cursor.fetchone()[0]
    checks.append(Check("balance rows = sum of entries", mismatched == 0, f"{mismatched} off"))

    raw_rows = raw_conn.execute("SELECT count(*) FROM bench_raw_transaction").fetchone()[0]
    raw_entries = raw_conn.execute("SELECT count(*) FROM bench_raw_entry").fetchone()[0]
    checks.append(
        Check(
            "bench_raw rows = raw postings reported",
            raw_rows == sum(count(k) for k in RAW_SCENARIOS)
            and raw_entries == 2 * sum(count(k) for k in RAW_SCENARIOS),
            f"{raw_rows} transactions, {raw_entries} entries",
        )
    )
    failed = {f"{r.scenario}×{r.writers}": r.errors for r in runs if r.errors}
    checks.append(Check("no posting failed", not failed, json.dumps(failed) if failed else "0"))
    return checks


# --- the report --------------------------------------------------------------------------


def report(
    *,
    args: argparse.Namespace,
    machine: dict[str, Any],
    runs: list[RunResult],
    checks: list[Check],
    hot_buckets: int,
    raw_indexes: list[str],
) -> dict[str, Any]:
    counts = args.writer_counts
    rounds = sorted({r.round for r in runs})
    by_round = {(r.scenario, r.writers, r.round): r.per_second for r in runs}

    def median_of(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 3) if present else None

    rate = {
        (scenario, n): median_of([by_round.get((scenario, n, k)) for k in rounds])
        for scenario in SCENARIOS
        for n in counts
    }
    pairs = {
        "shared/no-shared": ("shared", "no-shared"),
        "service(shared)/raw-plain": ("shared", "raw-plain"),
        "service(no-shared)/raw-plain": ("no-shared", "raw-plain"),
        "service(shared)/raw-one-statement": ("shared", "raw"),
        "service(no-shared)/raw-one-statement": ("no-shared", "raw"),
    }
    # A ratio is taken within a round (its two runs seconds apart); the figure is the
    # median over the rounds.
    ratios_by_round: dict[str, dict[str, list[float | None]]] = {
        name: {
            str(n): [ratio(by_round.get((top, n, k)), by_round.get((bottom, n, k))) for k in rounds]
            for n in counts
        }
        for name, (top, bottom) in pairs.items()
    }
    ratios: dict[str, dict[str, float | None]] = {
        name: {n: median_of(values) for n, values in by_writers.items()}
        for name, by_writers in ratios_by_round.items()
    }

    print()
    print("Machine")
    print(
        f"  CPUs               {machine['cpu_count']} ({machine['cpus_usable']} usable), "
        f"{machine['cpu_model']}"
    )
    print(f"  PostgreSQL         {machine['postgresql_version']}, {machine['database']}")
    print(
        f"  server settings    synchronous_commit={machine['synchronous_commit']}, "
        f"fsync={machine['fsync']}, shared_buffers={machine['shared_buffers']}"
    )
    print(f"  Python             {machine['python']} on {machine['platform']}")
    print(f"  load average       {machine['load_average_1m']} (1 min, before setup)")
    print(
        f"  run                {len(rounds)} round(s) of {args.seconds:g} s runs, "
        f"{WALLETS:,} wallets, "
        f"{hot_buckets} buckets per hot account, writers = spawned processes"
    )
    print()
    label_width = max(len(label) for label in (*SCENARIO_LABELS.values(), *ratios)) + 4
    header = "".join(f"{f'{n} writer' + ('s' if n > 1 else ''):>14}" for n in counts)
    median = " (median of the rounds)" if len(rounds) > 1 else ""
    print(f"{'postings/s' + median:<{label_width}}{header}")
    for scenario in SCENARIOS:
        cells = "".join(f"{fmt(rate.get((scenario, n))):>14}" for n in counts)
        print(f"{SCENARIO_LABELS[scenario]:<{label_width}}{cells}")
    print(f"{'ratios':<{label_width}}")
    for name, by_writers in ratios.items():
        cells = "".join(f"{fmt(by_writers[str(n)], '{:.2f}'):>14}" for n in counts)
        print(f"{'  ' + name:<{label_width}}{cells}")

    print()
    print(
        "Where the writers' PostgreSQL backends spent their time "
        "(pg_stat_activity samples, mean of the rounds)"
    )
    for n in counts:
        for scenario in SCENARIOS:
            shares: collections.Counter[str] = collections.Counter()
            same = [r for r in runs if r.scenario == scenario and r.writers == n]
            for r in same:
                shares.update({k: v / len(same) for k, v in r.wait_events.items()})
            top = ", ".join(f"{label} {share:.0%}" for label, share in shares.most_common(5))
            print(f"  {scenario:>9} × {n:>2}: {top or 'no samples'}")

    print()
    targets: dict[str, Any] = {}
    checks_at = str(TARGET_WRITERS)
    shared_ratio = ratios["shared/no-shared"].get(checks_at)
    targets["shared/no-shared"] = {
        "writers": TARGET_WRITERS,
        "target": TARGET_SHARED_VS_NO_SHARED,
        "value": shared_ratio,
        "met": None if shared_ratio is None else shared_ratio >= TARGET_SHARED_VS_NO_SHARED,
    }
    for kind in ("service(shared)/raw-plain", "service(no-shared)/raw-plain"):
        value = ratios[kind].get(checks_at)
        targets[kind] = {
            "writers": TARGET_WRITERS,
            "target": TARGET_SERVICE_VS_RAW,
            "value": value,
            "met": None if value is None else value >= TARGET_SERVICE_VS_RAW,
        }
    print(f"Targets at {TARGET_WRITERS} writers")
    verdict = {
        True: "MET",
        False: "NOT MET",
        None: f"not measured (no {TARGET_WRITERS}-writer run)",
    }
    for kind, target in targets.items():
        target["rounds"] = ratios_by_round[kind].get(checks_at, [])
        value = fmt(target["value"], "{:.2f}")
        each = ", ".join(fmt(v, "{:.2f}") for v in target["rounds"])
        each = f"   (rounds: {each})" if len(target["rounds"]) > 1 else ""
        print(f"  {kind:<30} ≥ {target['target']:<4} {value:>6}   {verdict[target['met']]}{each}")

    print()
    print("Checks")
    for check in checks:
        print(f"  {'OK  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    ok = all(check.ok for check in checks)
    print(f"Verification: {'OK' if ok else 'FAILED'}")
    for r in runs:
        if r.first_error:
            print(f"  first error in {r.scenario} × {r.writers}: {r.first_error}")

    return {
        "benchmark": "ledger",
        "seconds_per_run": args.seconds,
        "rounds": len(rounds),
        "writers": counts,
        "wallets": WALLETS,
        "hot_account_buckets": hot_buckets,
        "machine": machine,
        "postings_per_second": {
            scenario: {str(n): rate.get((scenario, n)) for n in counts} for scenario in SCENARIOS
        },
        "runs": [asdict(r) for r in runs],
        "ratios": ratios,
        "ratios_by_round": ratios_by_round,
        "targets": targets,
        "raw_table_indexes": raw_indexes,
        "checks": [asdict(c) for c in checks],
        "verification_ok": ok,
    }


# --- main --------------------------------------------------------------------------------


def run_order(args: argparse.Namespace) -> list[tuple[int, int, str]]:
    """(round, writers, scenario) in the order they run. Writer count first within a round:
    the runs a ratio compares are next to each other, so a change in the machine's load
    skews the ratios less; the scenarios' order rotates from round to round."""
    order = []
    for round_ in range(1, args.rounds + 1):
        shift = (round_ - 1) % len(SCENARIOS)
        scenarios = SCENARIOS[shift:] + SCENARIOS[:shift]
        order += [
            (round_, writers, scenario) for writers in args.writer_counts for scenario in scenarios
        ]
    return order


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    env_url = os.environ.get("DATABASE_URL")
    server_url = env_url or devservices.database_url()
    machine = machine_facts()
    machine["database"] = database_origin(env_url, server_url)
    machine["database_embedded"] = machine["database"].startswith("embedded")
    bench_url = with_database(server_url, BENCH_DB)

    with bench_database(server_url, BENCH_DB, args.keep):
        # The Django parts (here and in every writer) use billing_bench.
        os.environ["DATABASE_URL"] = bench_url
        os.environ["DJANGO_SETTINGS_MODULE"] = "billing.settings"
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        # Writers must not each try to start an embedded Redis if none was given.
        os.environ.setdefault("REDIS_URL", settings.REDIS_URL)

        started = time.monotonic()
        progress(f"migrating {BENCH_DB} …")
        call_command("migrate", interactive=False, verbosity=0)
        progress(f"creating {WALLETS:,} wallets, {WALLETS:,} revenue accounts, funding …")
        accounts = create_accounts()
        with psycopg.connect(
            with_database(server_url, BENCH_DB, application_name="bench-main"), autocommit=True
        ) as admin:
            raw_indexes = create_raw_tables(admin)
            machine.update(server_facts(admin))
            admin.execute("VACUUM ANALYZE")
            progress(f"setup took {time.monotonic() - started:.1f} s; starting writers …")

            pool = WriterPool(max(args.writer_counts), args.writer_counts, server_url)
            runs: list[RunResult] = []
            try:
                for round_, writers, scenario in run_order(args):
                    checkpoint(admin)
                    spec = RunSpec(
                        scenario=scenario,
                        writers=writers,
                        round=round_,
                        seconds=args.seconds,
                        revenue=accounts.revenue,
                        wallets=accounts.wallets,
                        wallet_revenues=accounts.wallet_revenues,
                    )
                    result = pool.run(spec, admin)
                    runs.append(result)
                    errors = f", errors {result.errors}" if result.errors else ""
                    progress(
                        f"  round {round_}  {scenario:>9} × {writers:>2} "
                        f"writer{'s' if writers > 1 else ' '}: "
                        f"{result.per_second:>9,.1f} postings/s{errors}"
                    )
            finally:
                pool.close()

            checks = verify(accounts, runs, admin)
        summary = report(
            args=args,
            machine=machine,
            runs=runs,
            checks=checks,
            hot_buckets=settings.LEDGER_HOT_ACCOUNT_BUCKETS,
            raw_indexes=raw_indexes,
        )
        progress(f"total {time.monotonic() - started:.1f} s")
    print(json.dumps(summary), flush=True)
    if not summary["verification_ok"]:
        print("ledger benchmark: verification FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
