"""Usage ingestion over real HTTP: events accepted and rated per second, beside the raw
PostgreSQL ceiling for the same rows, and the latency of /authorize.

    make bench-ingest                                  # 10 s per run
    make bench-ingest BENCH_ARGS="--quick"             # 2 s per run (smoke test)
    make bench-ingest BENCH_ARGS="--open-loop-fraction 0.3 --open-loop-seconds 30"
    make bench-ingest BENCH_ARGS="--no-open-loop"      # the closed-loop runs only
    .venv/bin/python -m billing.devtools.servers exec -- .venv/bin/python bench/ingest.py \
        --seconds 20 --workers 5 --worker-class sync --keep

Everything happens in a throw-away database, ``billing_bench_ingest`` (another name with
``--database-name``), created next to the one ``DATABASE_URL`` names (or copied from an
already migrated one, ``--template-database``: the test suite's smoke run), migrated, seeded
through the services (meters on ``llm.completion``, a catalog-priced pay-as-you-go plan
and a graduated one, four catalog rows, 200 customers: postpaid without a credit limit,
every fifth prepaid with ample funds) and dropped at the end (``--keep`` leaves it). The
product runs as it would in production: gunicorn serving ``billing.project.wsgi:application`` with
several workers on 127.0.0.1, DEBUG off. Clients are OS processes (spawned; plain
``http.client`` with keep-alive, no Django) that send for a fixed time after a common
start barrier. Scenarios:

    single     16 clients POST /api/v1/events, one LLM call each (OpenAI, Anthropic and
               Gemini usage objects as the providers return them; models and customers
               drawn at random; unique idempotency keys)
    batch      2 and 4 clients POST /api/v1/events/batch, 1,000 such events each (each
               client draws and encodes its batches before the run, as the open-loop
               and raw clients do: the load generator's CPU is not the product's)
    raw        the ceiling: the rows the best batch run wrote, read back from
               metering_event, inserted by plain psycopg (no Django, no HTTP) as
               ``INSERT … ON CONFLICT (customer_id, idempotency_key) DO NOTHING`` of 1,000
               rows per statement, one commit each, with as many clients as that batch run,
               into a trigger-less copy of metering_event (same columns, defaults and
               indexes, no foreign keys); once as multi-row VALUES and once as unnest()
               of arrays (the faster is the ceiling: unnest so far, as 1,000 rows of
               literals cost the server a long parse), and COPY of the same rows for scale.
               The rows are rendered to SQL text before the run, so that what is measured
               is PostgreSQL, not psycopg adapting 19,000 parameters in Python
    authorize  POST /api/v1/authorize with a model and token estimates, 1 and 8 clients
    noop       the HTTP floor, just before the single run and with as many clients: an
               authenticated GET /api/v1/meters?limit=1 through the same server and the
               same API-key authentication, touching no usage data (2 queries: the key,
               one row of a five-row table; NOOP_PATH says why this route)
    in process batches of 1,000 rated by metering.rating.ingest_events in the bench
               process itself, one after another, on the same database: what rating and
               posting cost without HTTP, JSON and authentication
    open loop  last, after every run above (which keep their order): single events and
               batches of 1,000 sent on a fixed schedule, not when the last answer came —
               Poisson arrivals at ``--open-loop-fraction`` (0.5) of the requests/s the
               closed-loop single run (16 clients) and the best batch run measured, for
               ``--open-loop-seconds`` (default: ``--seconds``; at least 2 requests), from
               as many client processes as that run, each sending from
               ``--open-loop-threads`` (8) threads. Latency runs from each request's
               SCHEDULED send time, so a stalled server is not hidden (coordinated
               omission); the send lag says whether the clients kept up. Payloads are
               drawn and encoded before the run. bench/ingest_open.py

It prints events/s, latencies and the targets of issue 14, each with its value and
met / not met, all ratios taken in the same run: batches of 1,000 at 4 clients ≥ 0.2 × the
raw ceiling (stretch 0.35) with request p99 ≤ 500 ms; single events at 16 clients ≥ 0.5 ×
the no-op request rate with p99 ≤ 100 ms; /authorize p99 < 20 ms, held to the 1-client run
(the endpoint's own latency; with 8 clients on a 2-core machine a request mostly queues
for a CPU behind the others, which that run shows for information). Beside them, not
among them, the open-loop runs' p50/p95/p99 and achieved rate, labelled "open loop at 0.5 ×
capacity (proposed target, not the issue's)": at saturation a closed loop's mean latency is
clients ÷ throughput (Little's law), so the issue's p99 bounds are also shown at a fixed
offered load (docs/benchmarks.md, "Session 18: open-loop latency"). Then where the
machine's CPU went in each run (server workers, PostgreSQL, the load clients), what the
server's PostgreSQL backends were doing (pg_stat_activity samples), and checks: every
accepted event stored once (the open-loop runs' too, and every scheduled request answered)
and charged exactly what the wallets moved in the ledger, counters = events, balances = Σ
entries, and Σ of the events of each usage ledger transaction = its legs (per currency on
the customer's wallet, tokens on its ``tokens:<customer id>`` account), computed
independently of the database's own rule.
It ends with one JSON line holding every figure, ratio and target. Exit status 1 if any
check fails (a missed target is reported, not a failure).

The server runs sync workers, 2 × cores + 1 of them, by default. gthread workers (5 × 4
threads) were measured beside them on this 2-core machine: the same events/s within the
noise, but 5-20 % more worker CPU per request and a longer single-event p99; the work is
CPU-bound (about 30 ms of worker CPU per single event), so threads add switching and
nothing to overlap, and keep-alive, which sync workers lack, saves little on loopback
(production has a proxy in front for that). ``--worker-class gthread`` measures them.

CPU figures (bench/harness/cpu.py) are grouped as the server's workers (gunicorn's and,
during the asynchronous run, the Celery worker's), PostgreSQL (the bench database's
backends, autovacuum and parallel workers, and the server's own processes), the clients,
and "other" — anything else, e.g. another database's backends. Each run starts with
ANALYZE and a CHECKPOINT (not timed; bench/harness/db.py's settle() says why, and
docs/benchmarks.md what the batch runs measured without the ANALYZE).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# As in bench/ledger.py: the repository, not this folder, is where the apps are imported from.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(REPO_DIR))

from bench.harness.cpu import Classify, CpuMeter, Proc, postgres_database  # noqa: E402
from bench.harness.db import Databases, settle, with_database  # noqa: E402
from bench.harness.machine import server_facts, server_url_and_facts  # noqa: E402
from bench.harness.processes import (  # noqa: E402
    REQUEST_TIMEOUT,
    CeleryWorkers,
    HttpServer,
    SpawnedPool,
    migrate,
    parse_counts,
    run_command,
    setup_django,
)
from bench.harness.report import Check, finish, fmt, progress  # noqa: E402
from bench.harness.stats import latency_ms, sample_activity  # noqa: E402
from bench.ingest_load import (  # noqa: E402
    BATCH_SIZE,
    CUSTOMERS,
    INGEST_SCENARIOS,
    RAW_SCENARIOS,
    REQUEST_SCENARIOS,
    ClientResult,
    RunSpec,
    Seed,
    api_headers,
    client_main,
    make_event,
    run_prefix,
    seed,
)
from bench.ingest_open import (  # noqa: E402
    DEFAULT_FRACTION,
    DEFAULT_THREADS,
    OPEN_SCENARIOS,
    figures,
    plan,
)
from bench.ingest_raw import RAW_TABLE, create_raw_table  # noqa: E402
from bench.ingest_report import (  # noqa: E402
    TARGET_AUTHORIZE_CLIENTS,
    RunResult,
    best,
    check_ingest_run,
    check_raw_run,
    check_totals,
    check_usage_transactions,
    ledger_rows,
    report,
    wallet_movement,
)

BENCH_DB = "billing_bench_ingest"
SINGLE_CLIENTS = 16
WARM_UP_SECONDS = 1.0
ASYNC_DRAIN_TIMEOUT = 120.0  # seconds to wait after the run for the worker to rate the rest
IN_PROCESS_MIN_BATCHES = 2
SERVER_APP_NAME = "bench-server"  # application_name of the server's database connections


# --- configuration -----------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--quick", action="store_true", help="2 s runs: a smoke test")
    parser.add_argument(
        "--database-name",
        default=BENCH_DB,
        help=f"the throw-away database (default {BENCH_DB}; another name lets two runs share"
        " a server)",
    )
    parser.add_argument(
        "--template-database",
        default=None,
        help="create the throw-away database as a copy of this one (migrated, no one connected"
        " to it: the test suite passes its own) rather than empty; migrate then has nothing to do",
    )
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    parser.add_argument(
        "--workers",
        type=int,
        default=2 * cores + 1,
        help=f"server worker processes (default 2 × cores + 1 = {2 * cores + 1})",
    )
    parser.add_argument(
        "--worker-class",
        choices=("sync", "gthread"),
        default="sync",
        help="gunicorn worker class (default sync; see the module docstring for why)",
    )
    parser.add_argument(
        "--threads", type=int, default=4, help="threads per gthread worker (default 4)"
    )
    parser.add_argument(
        "--single-clients", type=int, default=SINGLE_CLIENTS, help="clients of the single run"
    )
    parser.add_argument(
        "--batch-clients", default="2,4", help="comma-separated client counts (default 2,4)"
    )
    parser.add_argument(
        "--authorize-clients", default="1,8", help="comma-separated client counts (default 1,8)"
    )
    parser.add_argument(
        "--open-loop-fraction",
        type=float,
        default=DEFAULT_FRACTION,
        help="open-loop runs: offer this fraction of the rate the closed-loop single and batch"
        f" runs measured (default {DEFAULT_FRACTION})",
    )
    parser.add_argument(
        "--open-loop-seconds",
        type=float,
        default=None,
        help="length of each open-loop run (default: --seconds)",
    )
    parser.add_argument(
        "--open-loop-threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"sending threads per open-loop client process (default {DEFAULT_THREADS})",
    )
    parser.add_argument("--no-open-loop", action="store_true", help="skip the open-loop runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 2.0
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.open_loop_seconds is None:
        args.open_loop_seconds = args.seconds
    if args.open_loop_seconds <= 0 or args.open_loop_fraction <= 0:
        parser.error("--open-loop-seconds and --open-loop-fraction must be positive")
    if args.open_loop_threads < 1:
        parser.error("--open-loop-threads must be ≥ 1")
    if args.workers < 1 or args.threads < 1 or args.single_clients < 1:
        parser.error("--workers, --threads and --single-clients must be ≥ 1")
    args.batch_counts = parse_counts(parser, "--batch-clients", args.batch_clients)
    args.authorize_counts = parse_counts(parser, "--authorize-clients", args.authorize_clients)
    if TARGET_AUTHORIZE_CLIENTS not in args.authorize_counts:
        args.authorize_counts = sorted({TARGET_AUTHORIZE_CLIENTS, *args.authorize_counts})
    return args


# --- the main process: running clients and watching them --------------------------------


def cpu_groups(server_groups: set[int], clients: set[int], bench_db: str) -> Classify:
    """Who a process is: the server's workers (gunicorn's and the Celery worker's process
    groups), the load clients, PostgreSQL (the bench database's backends and workers, and
    the server's own processes; another database's are someone else's load), Redis, this
    process, or other."""
    me = os.getpid()

    def classify(pid: int, proc: Proc, processes: dict[int, Proc]) -> str:
        if proc.pgrp in server_groups:
            return "server workers"
        if pid in clients:
            return "load clients"
        if proc.is_postgres:
            return (
                "PostgreSQL" if postgres_database(proc, processes) in (None, bench_db) else "other"
            )
        if proc.command.startswith("redis"):
            return "Redis"
        return "bench main" if pid == me else "other"

    return classify


def run_scenario(
    pool: SpawnedPool,
    spec: RunSpec,
    sampler: psycopg.Connection[Any],
    server_groups: set[int],
    bench_db: str,
) -> RunResult:
    """One run: clients 0..n-1 send from the barrier on; meanwhile the backends are
    sampled; then their results, the CPU each group used, and the figures."""
    pool.send(spec, spec.clients)
    meter = CpuMeter(cpu_groups(server_groups, pool.pids, bench_db), ended_backends="PostgreSQL")
    pool.start(spec.clients)
    meter.start()
    started = time.monotonic()
    names = (
        [f"bench-raw-{i}" for i in range(spec.clients)]
        if spec.scenario in RAW_SCENARIOS
        else [SERVER_APP_NAME]
    )
    waits, statements = sample_activity(sampler, bench_db, names, spec.seconds)
    client_results: list[ClientResult] = pool.collect(spec.clients, spec.seconds + REQUEST_TIMEOUT)
    cpu = meter.stop(time.monotonic() - started)

    statuses: collections.Counter[str] = collections.Counter()
    problems: collections.Counter[str] = collections.Counter()
    for r in client_results:
        statuses.update(r.statuses)
        problems.update(r.problems)
    requests = sum(r.requests for r in client_results)
    events = sum(r.events for r in client_results)
    units = requests if spec.scenario in REQUEST_SCENARIOS else events
    # Every client started at the barrier; the run lasts until the last one finished.
    seconds = max(r.elapsed for r in client_results) or spec.seconds
    open_loop = None
    if spec.scenario in OPEN_SCENARIOS:
        # at least the schedule's window: what was answered within it, or late after it
        seconds = max(seconds, spec.seconds)
        open_loop = figures(
            [x for r in client_results for x in r.latencies],
            [x for r in client_results for x in r.send_lags],
            scheduled=sum(r.scheduled for r in client_results),
            offered=spec.open_requests / spec.seconds,
            fraction=spec.open_fraction,
            capacity=spec.open_capacity,
            capacity_run=f"{OPEN_SCENARIOS[spec.scenario]} × {spec.clients} (closed loop)",
            threads=spec.open_threads,
        )
    return RunResult(
        scenario=spec.scenario,
        clients=spec.clients,
        requests=requests,
        events=events,
        seconds=round(seconds, 3),
        events_per_second=round(events / seconds, 1),
        requests_per_second=round(requests / seconds, 1),
        latency_ms=latency_ms(x for r in client_results for x in r.latencies),
        statuses=dict(statuses),
        problems=dict(problems),
        first_error=next((r.first_error for r in client_results if r.first_error), ""),
        client_cpu_seconds=round(sum(r.cpu_seconds for r in client_results), 2),
        cpu_share=cpu.share,
        cpu_ms_per_event={
            group: cpu.ms_per(group, units)
            for group in ("server workers", "PostgreSQL", "load clients")
        },
        machine_busy=cpu.machine_busy,
        wait_events=waits,
        statements=statements,
        open_loop=open_loop,
    )


@dataclass
class Bench:
    """What the runs share: the bench database and a connection to it, the seed, the
    HTTP server, the Celery worker (running during the asynchronous run), the clients."""

    database: str
    admin: psycopg.Connection[Any]
    seeded: Seed
    server: HttpServer
    worker: CeleryWorkers
    pool: SpawnedPool | None = None

    @property
    def server_groups(self) -> set[int]:
        return {g for g in (self.server.group, *self.worker.groups) if g is not None}


def run_in_process(bench: Bench, seconds: float) -> RunResult:
    """Batches of BATCH_SIZE rated by metering.rating.ingest_events in this process on the
    bench database: no HTTP, no JSON, no authentication. The events are drawn and parsed
    (billing.api's parse_event, as the batch view does) before each batch's timer starts;
    the rate and the CPU per event are those of ingest_events alone. One process, batches
    one after another, for ``seconds`` (at least IN_PROCESS_MIN_BATCHES)."""
    from django.db import connection
    from django.utils import timezone

    from metering import rating
    from metering.api.ingest import parse_event

    customers = bench.seeded.customers
    rng = random.Random("in-process/1/0")
    prefix = f"{run_prefix('in-process', 1)}0:"
    problems: collections.Counter[str] = collections.Counter()
    first_error = ""
    latencies: list[float] = []
    events = batches = 0
    rating_cpu = 0.0
    clients = bench.pool.pids if bench.pool is not None else set()
    meter = CpuMeter(
        cpu_groups(bench.server_groups, clients, bench.database), ended_backends="PostgreSQL"
    )
    meter.start()
    started = time.monotonic()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or batches < IN_PROCESS_MIN_BATCHES:
        batches += 1
        now = timezone.now()
        parsed = [
            parse_event(make_event(rng, f"{prefix}{batches}:{n}", customers), now=now)
            for n in range(BATCH_SIZE)
        ]
        cpu_started, sent = time.process_time(), time.perf_counter()
        outcomes = rating.ingest_events(parsed)
        latencies.append(time.perf_counter() - sent)
        rating_cpu += time.process_time() - cpu_started
        for outcome in outcomes:
            if outcome.status == "accepted":
                events += 1
            else:
                code = outcome.error.code if outcome.error is not None else ""
                problems[f"{outcome.status}:{code}"] += 1
                first_error = first_error or f"{outcome.status} {outcome.error!r}"
    cpu = meter.stop(time.monotonic() - started)
    connection.close()  # not to hold a backend through the runs that follow
    rated = sum(latencies)
    return RunResult(
        scenario="in-process",
        clients=1,
        requests=batches,
        events=events,
        seconds=round(rated, 3),
        events_per_second=round(events / rated, 1) if rated else 0.0,
        requests_per_second=round(batches / rated, 1) if rated else 0.0,
        latency_ms=latency_ms(latencies),
        statuses={},
        problems=dict(problems),
        first_error=first_error,
        client_cpu_seconds=0.0,
        cpu_share=cpu.share,
        cpu_ms_per_event={
            "rating (this process)": round(rating_cpu * 1000 / events, 3) if events else None,
            "PostgreSQL": cpu.ms_per("PostgreSQL", events),
        },
        machine_busy=cpu.machine_busy,
        wait_events={},
        statements={},
    )


def measure(bench: Bench, spec: RunSpec) -> tuple[RunResult, list[Check]]:
    """One run, and the checks of what it wrote."""
    admin, wallets = bench.admin, bench.seeded.wallet_accounts
    settle(admin)
    if spec.scenario in RAW_SCENARIOS:
        admin.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(RAW_TABLE)))
        result = run_scenario(bench.pool, spec, admin, bench.server_groups, bench.database)
        return result, check_raw_run(admin, result)
    before = wallet_movement(admin, wallets)
    rows_before = ledger_rows(admin)
    if spec.scenario == "in-process":
        result = run_in_process(bench, spec.seconds)
    else:
        result = run_scenario(bench.pool, spec, admin, bench.server_groups, bench.database)
    if result.scenario == "async":
        drain_async(admin, result)
    moved = wallet_movement(admin, wallets) - before
    if result.scenario in INGEST_SCENARIOS:
        return result, check_ingest_run(admin, result, moved)
    rows_after = ledger_rows(admin)
    label = f"{result.scenario} × {result.clients}"
    return result, [
        Check(
            f"{label}: wrote no event or entry",
            rows_after == rows_before and moved == 0,
            f"events, entries {rows_before} → {rows_after}",
        ),
        Check(
            f"{label}: every answer 200" + (", allowed" if result.scenario == "authorize" else ""),
            not result.problems and result.server_errors == 0,
            json.dumps(result.problems) if result.problems else "0",
        ),
    ]


def drain_async(admin: psycopg.Connection[Any], result: RunResult) -> None:
    """After an asynchronous run: wait for the worker to rate what still waits, then read
    how long each event took from acceptance (its received_at, set when the API stored it)
    to its ledger transaction (recorded_at: the start of the rating transaction that
    posted it, so a few milliseconds early)."""
    started = time.monotonic()
    while admin.execute(
        "SELECT EXISTS (SELECT FROM metering_incomingevent WHERE status = 'pending')"
    ).fetchone()[0]:
        if time.monotonic() - started > ASYNC_DRAIN_TIMEOUT:
            break
        time.sleep(0.1)
    result.drain_seconds = round(time.monotonic() - started, 2)
    prefix = run_prefix(result.scenario, result.clients)
    row = admin.execute(
        "SELECT percentile_cont(ARRAY[0.5, 0.99, 1.0]) WITHIN GROUP (ORDER BY "
        "extract(epoch FROM t.recorded_at - e.received_at)) FROM metering_event e "
        "JOIN ledger_transaction t ON t.id = e.ledger_transaction_id "
        "WHERE left(e.idempotency_key, %s) = %s",
        [len(prefix), prefix],
    ).fetchone()
    values = row[0] or [None, None, None]
    result.rated_ms = {
        name: None if v is None else round(max(v, 0.0) * 1000, 1)
        for name, v in zip(("p50", "p99", "max"), values, strict=True)
    }
    refused = admin.execute(
        "SELECT count(*) FROM metering_incomingevent WHERE left(idempotency_key, %s) = %s",
        [len(prefix), prefix],
    ).fetchone()[0]
    if refused:
        result.problems["left in the inbox (pending or refused)"] = refused


def open_loop_spec(
    args: argparse.Namespace, base: RunSpec, closed: RunResult | None
) -> RunSpec | None:
    """The open-loop run after the closed-loop run ``closed``: as many client processes,
    offering ``--open-loop-fraction`` of the requests/s it measured for about
    ``--open-loop-seconds`` (bench/ingest_open.py); None when it answered nothing."""
    if closed is None or closed.requests <= 0 or closed.seconds <= 0:
        return None
    capacity = closed.requests / closed.seconds  # unrounded: batches are a few a second
    rate = capacity * args.open_loop_fraction
    total, window = plan(rate, args.open_loop_seconds)
    return dataclasses.replace(
        base,
        clients=closed.clients,
        seconds=window,
        open_requests=total,
        open_threads=args.open_loop_threads,
        open_capacity=capacity,
        open_fraction=args.open_loop_fraction,
    )


def check_open_run(result: RunResult) -> Check:
    """Every request the schedule held was sent and answered (none dropped to keep up)."""
    scheduled = result.open_loop["scheduled"] if result.open_loop else 0
    return Check(
        f"{result.scenario} × {result.clients}: every scheduled request answered",
        scheduled > 0 and result.requests == scheduled,
        f"{result.requests:,} of {scheduled:,}",
    )


def announce(result: RunResult) -> None:
    trouble = f", problems {result.problems}" if result.problems else ""
    unit = {"authorize": "allowed", "noop": "requests"}.get(result.scenario, "events")
    progress(
        f"  {result.scenario:>10} × {result.clients:>2}: "
        f"{result.events_per_second:>9,.1f} {unit}/s, "
        f"p50 {fmt(result.latency_ms['p50'], '{:.1f}')} ms, "
        f"p99 {fmt(result.latency_ms['p99'], '{:.1f}')} ms{trouble}"
        + (
            f"; accepted → posted p50 {fmt(result.rated_ms['p50'], '{:.0f}')} ms, "
            f"p99 {fmt(result.rated_ms['p99'], '{:.0f}')} ms, drained "
            f"{result.drain_seconds} s after the run"
            if result.rated_ms
            else ""
        )
    )


# --- main --------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    server_url, machine = server_url_and_facts()
    # The machine may be shared: its load when the bench starts says how quiet it was.
    machine["load_average"] = [round(x, 2) for x in os.getloadavg()]
    progress("load average at start: {} / {} / {} (1, 5, 15 min)".format(*machine["load_average"]))
    bench_db = args.database_name

    with (
        Databases(server_url, keep=args.keep) as databases,
        tempfile.TemporaryDirectory() as log_dir,
    ):
        # The Django parts (here, in the server and in the worker) use the bench database.
        setup_django(databases.create(bench_db, template=args.template_database))
        started = time.monotonic()
        progress(f"migrating {bench_db} …")
        migrate()
        progress(f"seeding {CUSTOMERS} customers, meters, plans, catalog rows, an API key …")
        seeded = seed()
        server_db = with_database(server_url, bench_db, application_name=SERVER_APP_NAME)
        server = HttpServer(
            workers=args.workers,
            worker_class=args.worker_class,
            threads=args.threads,
            database_url=server_db,
            log_dir=Path(log_dir),
        )
        # Rates what is accepted asynchronously; its connections count as the server's.
        worker = CeleryWorkers(database_url=server_db, log_dir=Path(log_dir))
        runs: list[RunResult] = []
        checks: list[Check] = []
        with psycopg.connect(
            with_database(server_url, bench_db, application_name="bench-main"), autocommit=True
        ) as admin:
            raw_indexes = create_raw_table(admin)
            machine.update(server_facts(admin))
            admin.execute("VACUUM ANALYZE")
            progress(
                f"setup took {time.monotonic() - started:.1f} s; starting {server.description}"
            )

            client_counts = sorted(
                {args.single_clients, *args.batch_counts, *args.authorize_counts}
            )
            bench = Bench(bench_db, admin, seeded, server, worker)
            finished = False
            try:
                server.start(probe="/api/v1/models", headers=api_headers(seeded.api_secret))
                bench.pool = SpawnedPool(
                    client_main, size=max(client_counts), counts=client_counts, kind="client"
                )
                progress(f"server on port {server.port}; {max(client_counts)} clients ready")

                def run(spec: RunSpec) -> None:
                    result, run_checks = measure(bench, spec)
                    runs.append(result)
                    checks.extend(run_checks)
                    announce(result)

                def http(scenario: str, clients: int, seconds: float) -> RunSpec:
                    return RunSpec(
                        scenario=scenario,
                        clients=clients,
                        seconds=seconds,
                        port=server.port,
                        api_secret=seeded.api_secret,
                        customers=tuple(seeded.customers),
                    )

                # Worker processes load the catalog and plans on their first requests.
                run(http("warm-up", args.single_clients, WARM_UP_SECONDS))
                # The HTTP floor, with as many clients as the single run, just before it.
                run(http("noop", args.single_clients, args.seconds))
                run(http("single", args.single_clients, args.seconds))
                worker.start()
                try:
                    worker.wait_ready()
                    run(http("async", args.single_clients, args.seconds))
                finally:
                    worker.stop()
                for clients in args.batch_counts:
                    run(http("batch", clients, args.seconds))
                # Issue 14: the Idempotency-Key wrapper must not stretch one transaction over
                # a batch; the same batches with the header, at the most clients, beside them.
                run(http("batch-keyed", max(args.batch_counts), args.seconds))
                run(RunSpec(scenario="in-process", clients=1, seconds=args.seconds))
                source = best(runs, ["batch"])
                if source is not None and source.events:
                    for scenario in RAW_SCENARIOS:
                        run(
                            RunSpec(
                                scenario=scenario,
                                clients=source.clients,
                                seconds=args.seconds,
                                raw_url=server_url,
                                raw_database=bench_db,
                                raw_source=run_prefix("batch", source.clients),
                            )
                        )
                else:
                    checks.append(Check("raw ceiling measured", False, "no batch run accepted"))
                for clients in args.authorize_counts:
                    run(http("authorize", clients, args.seconds))
                if not args.no_open_loop:
                    # Last, so that every run above keeps its place and conditions.
                    for scenario, closed in OPEN_SCENARIOS.items():
                        spec = open_loop_spec(args, http(scenario, 1, 0), best(runs, [closed]))
                        if spec is None:
                            checks.append(
                                Check(f"{scenario} measured", False, f"no {closed} run answered")
                            )
                            continue
                        run(spec)
                        checks.append(check_open_run(runs[-1]))
                checks.extend(check_totals(admin))
                checks.extend(check_usage_transactions(admin))
                finished = True
            finally:
                if bench.pool is not None:
                    bench.pool.close(graceful=finished)
                server.stop(graceful=finished)
            if any(r.server_errors for r in runs):
                progress(f"gunicorn log (last lines):\n{server.log_tail()}")
        summary = report(
            args=args,
            machine=machine,
            seeded=seeded,
            server=server.description,
            runs=runs,
            checks=checks,
            raw_indexes=raw_indexes,
        )
        progress(f"total {time.monotonic() - started:.1f} s")
    return finish(summary)


if __name__ == "__main__":
    run_command(main)
