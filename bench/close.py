"""Period close at scale: how fast ended billing periods become draft invoices, in-process
and through real Celery workers.

    make bench-close                                   # 10,000 subscriptions × 1,000 events
    make bench-close BENCH_ARGS="--quick"              # 500 × 100 (smoke test)
    .venv/bin/python -m billing.devtools.servers exec -- .venv/bin/python bench/close.py \
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
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# As in bench/ledger.py: the repository, not this folder, is where the apps are imported from.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(REPO_DIR))

from bench.close_report import (  # noqa: E402
    CELERY_LABELS,
    PG_ENDED,
    PG_OTHER,
    PG_RUN,
    TARGET_SECONDS,
    RunResult,
    report,
    verify,
)
from bench.close_seed import (  # noqa: E402
    PATTERNS,
    Seed,
    Step,
    build_patterns,
    seed_checks,
    seed_customers,
    seed_events,
    seed_shared,
)
from bench.harness.cpu import Classify, CpuMeter, CpuUse, Proc, postgres_database  # noqa: E402
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
from bench.harness.report import Check, finish, progress  # noqa: E402
from bench.harness.stats import QueryProfile, Timer, ratio  # noqa: E402

SUBSCRIPTIONS = 10_000
EVENTS_PER_SUBSCRIPTION = 1_000
QUICK = (500, 100)  # subscriptions, events per subscription
POLL_INTERVAL = 0.1  # seconds between invoice counts during a Celery run
CELERY_MODES = {"2x1": (2, 1), "1x2": (1, 2)}  # workers × prefork concurrency


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


# --- the runs ----------------------------------------------------------------------------


def cpu_groups(database: str, worker_groups: set[int] | None = None) -> Classify:
    """This process, the Celery workers (their process groups), the run database's
    PostgreSQL backends, the rest of PostgreSQL, Redis, and everything else; with
    ``ended_backends=PG_ENDED``, the backends that ended during the run (whatever their
    database; the Celery runs' backends end after every task, see the report). Only a
    server on this machine is seen."""
    me = os.getpid()

    def classify(pid: int, proc: Proc, processes: dict[int, Proc]) -> str:
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
    from billing.project.celery import app
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
