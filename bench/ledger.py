"""Ledger posting throughput: the service against itself and against raw PostgreSQL.

    make bench-ledger                                  # 3 rounds of 5 s runs, 1, 4, 16 writers
    make bench-ledger BENCH_ARGS="--quick"             # 1 round of 1 s runs (smoke test)
    .venv/bin/python -m billing.devtools.servers exec -- .venv/bin/python bench/ledger.py \
        --seconds 10 --writers 1,8,32 --keep

Everything happens in a throw-away database, ``billing_bench`` (another name with
``--database-name``), created next to the one ``DATABASE_URL`` names and dropped at the end
(``--keep`` leaves it). Scenarios, each run
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
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
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

from bench.harness.db import (  # noqa: E402
    ACCOUNTS_OFF_THEIR_ENTRIES,
    Databases,
    checkpoint,
    with_database,
)
from bench.harness.machine import server_facts, server_url_and_facts  # noqa: E402
from bench.harness.processes import (  # noqa: E402
    START_TIMEOUT,
    SpawnedPool,
    migrate,
    parse_counts,
    run_command,
    serve,
    setup_django,
)
from bench.harness.report import (  # noqa: E402
    VERDICTS,
    Check,
    finish,
    fmt,
    print_checks,
    print_machine,
    progress,
    target_floor,
)
from bench.harness.stats import median, ratio, sample_activity  # noqa: E402

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
    parser.add_argument(
        "--database-name",
        default=BENCH_DB,
        help=f"the throw-away database (default {BENCH_DB}; another name lets two runs share"
        " a server)",
    )
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 1.0
        args.rounds = 1
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.writer_counts = parse_counts(parser, "--writers", args.writers)
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
    wallet for the no-shared scenario. Runs in the main process, through the services: the
    accounts from the tests' factory; the funding in chunks of FUNDING_CHUNK transactions per
    post_transactions() call (the factory's ``funds`` would post them one at a time)."""
    from ledger import services
    from ledger.models import NormalBalance
    from tests.factories import LedgerAccountFactory

    world = services.ensure_system_account(
        code="@World", currency=CURRENCY, normal_balance=NormalBalance.DEBIT
    )
    revenue = services.ensure_system_account(code="@Revenue", currency=CURRENCY)
    wallets, wallet_revenues = [], []
    owned = {"currency": CURRENCY, "owner_type": "bench.customer"}
    for i in range(WALLETS):
        wallets.append(
            LedgerAccountFactory(
                code=f"bench:wallet:{i}", allow_negative=False, owner_id=str(i), **owned
            ).pk
        )
        wallet_revenues.append(
            LedgerAccountFactory(
                code=f"bench:revenue:{i}", allow_negative=True, owner_id=str(i), **owned
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
    barriers: dict[int, Any],
    commands: Any,
    results: Any,
    server_url: str,
    bench_db: str,
) -> None:
    """A writer process: set Django up, connect, then run each RunSpec it is sent."""
    setup_django(with_database(server_url, bench_db, application_name=f"bench-django-{index}"))
    from django.db import connection

    connection.ensure_connection()  # Django's connection (the service scenarios)
    # The raw scenario's connection: plain psycopg with its defaults (so statements are
    # prepared after 5 uses), autocommit off: one transaction per posting.
    raw = psycopg.connect(
        with_database(server_url, bench_db, application_name=f"bench-raw-{index}"),
        autocommit=False,
    )
    serve(
        index,
        barriers,
        commands,
        results,
        run=lambda spec, _: run_writer(index, spec, raw),
        failed=lambda exc: WriterResult(
            index=index, errors={type(exc).__name__: 1}, first_error=repr(exc)
        ),
    )
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


def run_scenario(
    pool: SpawnedPool, spec: RunSpec, sampler: psycopg.Connection[Any], bench_db: str
) -> RunResult:
    """One run: writers 0..n-1 post from the barrier on; meanwhile their backends are
    sampled."""
    pool.send(spec, spec.writers)
    pool.start(spec.writers)
    wait_events, _ = sample_activity(
        sampler, bench_db, backend_names(spec.scenario, spec.writers), spec.seconds
    )
    writer_results: list[WriterResult] = pool.collect(spec.writers, spec.seconds + START_TIMEOUT)
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


# --- checks ------------------------------------------------------------------------------


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
        cursor.execute(ACCOUNTS_OFF_THEIR_ENTRIES)
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

    rate = {
        (scenario, n): median([by_round.get((scenario, n, k)) for k in rounds])
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
        name: {n: median(values) for n, values in by_writers.items()}
        for name, by_writers in ratios_by_round.items()
    }

    print_machine(
        machine,
        settings=("synchronous_commit", "fsync", "shared_buffers"),
        lines=[
            (
                "run",
                f"{len(rounds)} round(s) of {args.seconds:g} s runs, {WALLETS:,} wallets, "
                f"{hot_buckets} buckets per hot account, writers = spawned processes",
            )
        ],
    )
    label_width = max(len(label) for label in (*SCENARIO_LABELS.values(), *ratios)) + 4
    header = "".join(f"{f'{n} writer' + ('s' if n > 1 else ''):>14}" for n in counts)
    of_rounds = " (median of the rounds)" if len(rounds) > 1 else ""
    print(f"{'postings/s' + of_rounds:<{label_width}}{header}")
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
    checks_at = str(TARGET_WRITERS)
    targets: dict[str, Any] = {
        kind: target_floor(ratios[kind].get(checks_at), target, writers=TARGET_WRITERS)
        for kind, target in (
            ("shared/no-shared", TARGET_SHARED_VS_NO_SHARED),
            ("service(shared)/raw-plain", TARGET_SERVICE_VS_RAW),
            ("service(no-shared)/raw-plain", TARGET_SERVICE_VS_RAW),
        )
    }
    print(f"Targets at {TARGET_WRITERS} writers")
    verdict = {**VERDICTS, None: f"not measured (no {TARGET_WRITERS}-writer run)"}
    for kind, target in targets.items():
        target["rounds"] = ratios_by_round[kind].get(checks_at, [])
        value = fmt(target["value"], "{:.2f}")
        each = ", ".join(fmt(v, "{:.2f}") for v in target["rounds"])
        each = f"   (rounds: {each})" if len(target["rounds"]) > 1 else ""
        print(f"  {kind:<30} ≥ {target['target']:<4} {value:>6}   {verdict[target['met']]}{each}")

    ok = print_checks(checks)
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
    server_url, machine = server_url_and_facts()
    bench_db = args.database_name

    with Databases(server_url, keep=args.keep) as databases:
        # The Django parts (here and in every writer) use the bench database.
        setup_django(databases.create(bench_db))
        from django.conf import settings

        started = time.monotonic()
        progress(f"migrating {bench_db} …")
        migrate()
        progress(f"creating {WALLETS:,} wallets, {WALLETS:,} revenue accounts, funding …")
        accounts = create_accounts()
        with psycopg.connect(
            with_database(server_url, bench_db, application_name="bench-main"), autocommit=True
        ) as admin:
            raw_indexes = create_raw_tables(admin)
            machine.update(server_facts(admin))
            admin.execute("VACUUM ANALYZE")
            progress(f"setup took {time.monotonic() - started:.1f} s; starting writers …")

            pool = SpawnedPool(
                writer_main,
                size=max(args.writer_counts),
                counts=args.writer_counts,
                kind="writer",
                args=(server_url, bench_db),
            )
            runs: list[RunResult] = []
            finished = False
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
                    result = run_scenario(pool, spec, admin, bench_db)
                    runs.append(result)
                    errors = f", errors {result.errors}" if result.errors else ""
                    progress(
                        f"  round {round_}  {scenario:>9} × {writers:>2} "
                        f"writer{'s' if writers > 1 else ' '}: "
                        f"{result.per_second:>9,.1f} postings/s{errors}"
                    )
                finished = True
            finally:
                pool.close(graceful=finished)

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
    return finish(summary)


if __name__ == "__main__":
    run_command(main)
