"""Usage ingestion over real HTTP: events accepted and rated per second, beside the raw
PostgreSQL ceiling for the same rows, and the latency of /authorize.

    make bench-ingest                                  # 10 s per run
    make bench-ingest BENCH_ARGS="--quick"             # 2 s per run (smoke test)
    .venv/bin/python -m billing.devservices exec -- .venv/bin/python bench/ingest.py \
        --seconds 20 --workers 5 --worker-class sync --keep

Everything happens in a throw-away database, ``billing_bench_ingest`` (another name with
``--database-name``), created next to the one ``DATABASE_URL`` names, migrated, seeded
through the services (meters on ``llm.completion``, a catalog-priced pay-as-you-go plan
and a graduated one, four catalog rows, 200 customers: postpaid without a credit limit,
every fifth prepaid with ample funds) and dropped at the end (``--keep`` leaves it). The
product runs as it would in production: gunicorn serving ``billing.wsgi:application`` with
several workers on 127.0.0.1, DEBUG off. Clients are OS processes (spawned; plain
``http.client`` with keep-alive, no Django) that send for a fixed time after a common
start barrier. Scenarios:

    single     16 clients POST /api/v1/events, one LLM call each (OpenAI, Anthropic and
               Gemini usage objects as the providers return them; models and customers
               drawn at random; unique idempotency keys)
    batch      2 and 4 clients POST /api/v1/events/batch, 1,000 such events each
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

It prints events/s, latencies and the targets of issue 14, each with its value and
met / not met, all ratios taken in the same run: batches of 1,000 at 4 clients ≥ 0.2 × the
raw ceiling (stretch 0.35) with request p99 ≤ 500 ms; single events at 16 clients ≥ 0.5 ×
the no-op request rate with p99 ≤ 100 ms; /authorize p99 < 20 ms, held to the 1-client run
(the endpoint's own latency; with 8 clients on a 2-core machine a request mostly queues
for a CPU behind the others, which that run shows for information). Then where the
machine's CPU went in each run (server workers, PostgreSQL, the load clients), what the
server's PostgreSQL backends were doing (pg_stat_activity samples), and checks: every
accepted event stored once and charged exactly what the wallets moved in the ledger,
counters = events, balances = Σ entries, and Σ of the events of each usage ledger
transaction = its legs (per currency on the customer's wallet, tokens on its
``tokens:<customer id>`` account), computed independently of the database's own rule.
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
import http.client
import json
import os
import random
import sys
import tempfile
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

from bench.harness.cpu import Classify, CpuMeter, postgres_database  # noqa: E402
from bench.harness.db import (  # noqa: E402
    ACCOUNTS_OFF_THEIR_ENTRIES,
    Databases,
    settle,
    with_database,  # noqa: E402
)
from bench.harness.machine import server_facts, server_url_and_facts  # noqa: E402
from bench.harness.processes import (  # noqa: E402
    REQUEST_TIMEOUT,
    CeleryWorkers,
    HttpClient,
    HttpServer,
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
    at_least,
    cpu_shares,
    finish,
    fmt,
    print_checks,
    print_machine,
    progress,
    target_ceiling,
    target_floor,
)
from bench.harness.seeding import copy_field, create_meters  # noqa: E402
from bench.harness.stats import latency_ms, ratio, sample_activity  # noqa: E402

BENCH_DB = "billing_bench_ingest"
EVENT_NAME = "llm.completion"
CUSTOMERS = 200
PREPAID_EVERY = 5  # customers 0, 5, 10 … are prepaid; the others postpaid without a limit
PREPAID_FUNDS = Decimal("1000000.00")  # an event costs cents: never refused
BATCH_SIZE = 1_000
SINGLE_CLIENTS = 16
WARM_UP_SECONDS = 1.0
# The targets of issue 14, ratios taken in the same run (the raw ceiling itself varies 2×
# between runs on shared machines).
TARGET_BATCH_CLIENTS = 4
TARGET_BATCH_VS_RAW = 0.2
STRETCH_BATCH_VS_RAW = 0.35
TARGET_BATCH_P99_MS = 500.0
TARGET_SINGLE_VS_NOOP = 0.5
# Asynchronous acceptance (Prefer: respond-async): single events answered 202 once stored,
# rated by a Celery worker meanwhile; acceptance → balance moved, p99.
TARGET_ASYNC_VS_NOOP = 0.8
TARGET_ASYNC_RATED_P99_MS = 2000.0
ASYNC_DRAIN_TIMEOUT = 120.0  # seconds to wait after the run for the worker to rate the rest
TARGET_SINGLE_P99_MS = 100.0
TARGET_AUTHORIZE_P99_MS = 20.0
TARGET_AUTHORIZE_CLIENTS = 1
# The HTTP floor: the cheapest authenticated route that touches no usage data. The same
# authentication as POST /events (the API key's row read by its secret's hash, the scope
# check, the Redis rate-limit counter), then one indexed read of at most two rows of a
# configuration table (five meters here) and 236 bytes of JSON: 2 queries a request.
# Counted through the test client on the bench's data (2026-12-06): a customer's detail
# takes 8 queries and about 4× the time, the plans list 4, the subscriptions list 3,
# /models?limit=1 2 but reads the price catalog and answers twice the bytes.
NOOP_PATH = "/api/v1/meters?limit=1"
IN_PROCESS_MIN_BATCHES = 2
RAW_TABLE = "bench_raw_event"
SERVER_APP_NAME = "bench-server"  # application_name of the server's database connections

SCENARIO_LABELS = {
    "warm-up": "warm-up (not counted)",
    "single": "(a) single events, POST /events",
    "async": "(f) single events, Prefer: respond-async",
    "batch": f"(b) batches of {BATCH_SIZE:,}, POST /events/batch",
    "batch-keyed": "    the same, each with an Idempotency-Key",
    "raw-values": "(c) raw INSERT … ON CONFLICT, VALUES",
    "raw-unnest": "(c) raw INSERT … ON CONFLICT, unnest",
    "copy": "    COPY (for scale)",
    "authorize": "(d) POST /authorize",
    "noop": f"(e) no-op: GET {NOOP_PATH}",
    "in-process": f"    batches of {BATCH_SIZE:,} rated in process",
}
INGEST_SCENARIOS = ("warm-up", "single", "async", "batch", "batch-keyed", "in-process")
REQUEST_SCENARIOS = ("authorize", "noop")  # figures per request; they write nothing
RAW_SCENARIOS = ("raw-values", "raw-unnest", "copy")
CEILING_SCENARIOS = ("raw-values", "raw-unnest")  # INSERT … ON CONFLICT: the ceiling

# The meters, as pricing/demo.yaml has them: (code, name, aggregation, property, unit).
METERS = (
    ("input_tokens", "Input tokens", "sum", "llm.input_tokens", "tokens"),
    ("output_tokens", "Output tokens", "sum", "llm.output_tokens", "tokens"),
    ("cached_input_tokens", "Cached input tokens", "sum", "llm.cache_read_tokens", "tokens"),
    ("requests", "API requests", "count", "", "requests"),
)

# Catalog rows, as tests/conftest.py MODEL_PRICES has them (USD per million tokens):
# provider, model, match, input, output, cache read, cache write, tiers.
MODEL_PRICES = (
    (
        "openai",
        "gpt-4o",
        {"or": [{"equals": "gpt-4o"}, {"starts_with": "gpt-4o-2024"}]},
        "2.5",
        "10",
        "1.25",
        None,
        [],
    ),
    ("openai", "gpt-4o-mini", {"starts_with": "gpt-4o-mini"}, "0.15", "0.6", "0.075", None, []),
    (
        "anthropic",
        "claude-sonnet-4-5",
        {"starts_with": "claude-sonnet-4-5"},
        "3",
        "15",
        "0.3",
        "3.75",
        [],
    ),
    (
        "google",
        "gemini-2.5-pro",
        {"starts_with": "gemini-2.5-pro"},
        "1.25",
        "10",
        "0.125",
        None,
        [
            {
                "above_input_tokens": 200000,
                "input_mtok": "2.5",
                "output_mtok": "15",
                "cache_read_mtok": "0.25",
            }
        ],
    ),
)

# What the clients send: (provider, model name as the provider's response gives it, weight).
MODEL_MIX = (
    ("openai", "gpt-4o-mini-2024-07-18", 45),
    ("openai", "gpt-4o-2024-08-06", 25),
    ("anthropic", "claude-sonnet-4-5-20250929", 20),
    ("google", "gemini-2.5-pro", 10),
)
FEATURES = ("chat", "summarize", "agent", "search", "autocomplete")


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
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 2.0
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.workers < 1 or args.threads < 1 or args.single_clients < 1:
        parser.error("--workers, --threads and --single-clients must be ≥ 1")
    args.batch_counts = parse_counts(parser, "--batch-clients", args.batch_clients)
    args.authorize_counts = parse_counts(parser, "--authorize-clients", args.authorize_clients)
    if TARGET_AUTHORIZE_CLIENTS not in args.authorize_counts:
        args.authorize_counts = sorted({TARGET_AUTHORIZE_CLIENTS, *args.authorize_counts})
    return args


# --- the database ------------------------------------------------------------------------


def create_raw_table(conn: psycopg.Connection[Any]) -> list[str]:
    """The raw scenarios' table: metering_event's columns, defaults, identity and indexes
    (LIKE copies no trigger and no foreign key). Returns the indexes it has."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (LIKE metering_event INCLUDING DEFAULTS INCLUDING IDENTITY "
            "INCLUDING INDEXES)"
        ).format(sql.Identifier(RAW_TABLE))
    )
    rows = conn.execute(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass "
        "ORDER BY indexrelid",
        [RAW_TABLE],
    ).fetchall()
    return [definition.split(" ON ", 1)[1] for (definition,) in rows]


# --- the product's data ------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    customers: list[str]  # external ids
    prepaid: int
    wallet_accounts: list[int]  # every customer's USD wallet (ledger account ids)
    api_secret: str
    plans: dict[str, int]  # plan code → customers on it


def seed() -> Seed:
    """Meters, catalog rows, two plans, the customers and an API key, through the services
    (as the pricing file, the admin and the API would create them)."""
    from billing import services
    from billing.models import APIKey, BillingMode, ConsumptionModel, PriceModel, Wallet
    from metering import catalog
    from metering.models import ModelPrice

    create_meters(METERS, event_name=EVENT_NAME)
    for position, (provider, model, match, inp, out, read, write, tiers) in enumerate(MODEL_PRICES):
        ModelPrice.objects.create(
            provider=provider,
            model=model,
            match=match,
            position=position,
            effective_from=datetime(2000, 1, 1, tzinfo=UTC),
            input_mtok=Decimal(inp),
            output_mtok=Decimal(out),
            cache_read_mtok=Decimal(read),
            cache_write_mtok=Decimal(write) if write else None,
            tiers=tiers,
        )
    catalog.invalidate()

    charge, tier = services.ChargeSpec, services.TierSpec
    # pricing/demo.yaml's payg: the provider's cost per model plus a margin.
    payg, _ = services.publish_plan(
        spec=services.PlanSpec(
            code="bench-payg",
            name="Pay as you go",
            consumption_model=ConsumptionModel.BALANCE,
            charges=(
                charge(meter="input_tokens", margin_percent=Decimal(20)),
                charge(meter="output_tokens", margin_percent=Decimal(20)),
                charge(meter="cached_input_tokens", margin_percent=Decimal("10.5")),
            ),
        )
    )
    # demo.yaml's pro without the trial and with small allowances, so tiers are crossed.
    graduated, _ = services.publish_plan(
        spec=services.PlanSpec(
            code="bench-graduated",
            name="Graduated",
            consumption_model=ConsumptionModel.METERED,
            charges=(
                charge(
                    meter="input_tokens",
                    price_model=PriceModel.GRADUATED,
                    included_quantity=Decimal(100_000),
                    tiers=(
                        tier(up_to=Decimal(10_000_000), unit_price=Decimal("0.00000030")),
                        tier(up_to=None, unit_price=Decimal("0.00000025")),
                    ),
                ),
                charge(
                    meter="output_tokens",
                    price_model=PriceModel.GRADUATED,
                    included_quantity=Decimal(20_000),
                    tiers=(
                        tier(up_to=Decimal(2_000_000), unit_price=Decimal("0.0000012")),
                        tier(up_to=None, unit_price=Decimal("0.000001")),
                    ),
                ),
                charge(meter="cached_input_tokens", unit_price=Decimal("0.000000075")),
                charge(
                    meter="requests",
                    included_quantity=Decimal(100),
                    unit_price=Decimal("0.00001"),
                ),
            ),
        )
    )

    started = datetime.now(UTC) - timedelta(days=10)  # mid-period: no boundary in the runs
    external_ids, plans = [], collections.Counter()
    prepaid = 0
    for i in range(CUSTOMERS):
        is_prepaid = i % PREPAID_EVERY == 0
        customer = services.create_customer(
            external_id=f"bench-cus-{i:04d}",
            name=f"Bench customer {i}",
            billing_mode=BillingMode.PREPAID if is_prepaid else BillingMode.POSTPAID,
        )
        plan = graduated if i % PREPAID_EVERY == 1 else payg
        services.create_subscription(customer=customer, plan=plan, start=started)
        if is_prepaid:
            services.top_up(customer=customer, amount=PREPAID_FUNDS, reference="bench-funding")
            prepaid += 1
        external_ids.append(customer.external_id)
        plans[plan.code] += 1
    key, secret = services.create_api_key(name="bench-ingest", scopes=["read", "ingest"])
    # The per-key rate limit (6,000 a minute by default) would refuse the benchmark's load;
    # the Redis counter it keeps is still incremented on every request, as in production.
    APIKey.objects.filter(pk=key.pk).update(rate_limit_per_minute=2**31 - 1)
    wallet_accounts = sorted(
        Wallet.objects.filter(currency="USD").values_list("account_id", flat=True)
    )
    return Seed(
        customers=external_ids,
        prepaid=prepaid,
        wallet_accounts=wallet_accounts,
        api_secret=secret,
        plans=dict(plans),
    )


# --- what the clients send ---------------------------------------------------------------


def llm_usage(rng: random.Random, provider: str) -> dict[str, Any]:
    """A usage object as the provider's API returns it."""
    prompt = int(rng.lognormvariate(7.3, 0.9)) + 20  # median ≈ 1,500 tokens
    output = int(rng.lognormvariate(5.5, 0.8)) + 1  # median ≈ 250 tokens
    cached = 0
    if prompt >= 1024 and rng.random() < 0.4:
        cached = rng.randrange(1024, prompt + 1) // 128 * 128  # OpenAI caches in 128s
    if provider == "openai":
        return {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
    if provider == "anthropic":
        written = 0 if cached or rng.random() < 0.8 else min(prompt, 2048)
        return {
            "input_tokens": prompt - cached - written,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": cached,
            "output_tokens": output,
            "service_tier": "standard",
        }
    return {  # Gemini's usageMetadata
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "cachedContentTokenCount": cached,
        "totalTokenCount": prompt + output,
    }


MODEL_CHOICES = [(provider, model) for provider, model, _ in MODEL_MIX]
MODEL_WEIGHTS = [weight for *_, weight in MODEL_MIX]


def utc_now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_event(rng: random.Random, key: str, customers: Sequence[str]) -> dict[str, Any]:
    provider, model = rng.choices(MODEL_CHOICES, MODEL_WEIGHTS)[0]
    return {
        "idempotency_key": key,
        "customer": customers[rng.randrange(len(customers))],
        "event_name": EVENT_NAME,
        "timestamp": utc_now_text(),
        "properties": {
            "provider": provider,
            "model": model,
            "usage": llm_usage(rng, provider),
            "request_id": f"req_{rng.getrandbits(64):016x}",
            "feature": FEATURES[rng.randrange(len(FEATURES))],
            "end_user": f"user-{rng.randrange(10_000)}",
        },
    }


def make_estimate(rng: random.Random, customers: Sequence[str]) -> dict[str, Any]:
    provider, model = rng.choices(MODEL_CHOICES, MODEL_WEIGHTS)[0]
    return {
        "customer": customers[rng.randrange(len(customers))],
        "provider": provider,
        "model": model,
        "input_tokens": int(rng.lognormvariate(7.3, 0.9)) + 20,
        "max_output_tokens": 1024,
    }


def run_prefix(scenario: str, clients: int) -> str:
    """Idempotency keys of a run start with this (no LIKE wildcards in it)."""
    return f"{scenario}-{clients}:"


# --- the clients (each in its own spawned process) ---------------------------------------


@dataclass(frozen=True)
class RunSpec:
    scenario: str
    clients: int
    seconds: float
    port: int = 0
    api_secret: str = ""
    customers: tuple[str, ...] = ()
    raw_url: str = ""  # raw scenarios: the database server
    raw_database: str = ""  # raw scenarios: the bench database on it
    raw_source: str = ""  # raw scenarios: key prefix of the batch run whose rows they insert


@dataclass
class ClientResult:
    index: int
    requests: int = 0
    events: int = 0  # accepted (ingest), authorized (authorize) or rows inserted (raw)
    elapsed: float = 0.0
    cpu_seconds: float = 0.0  # this client's own CPU time during the run
    latencies: list[float] = field(default_factory=list)  # seconds, one per request
    statuses: dict[str, int] = field(default_factory=dict)  # HTTP status → responses
    problems: dict[str, int] = field(default_factory=dict)  # error code → events or requests
    first_error: str = ""


def api_headers(secret: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {secret}",
        "Content-Type": "application/json",
        "User-Agent": "bench-ingest",
        # as the TLS-terminating proxy in front of production says (else the production
        # settings redirect plain HTTP to HTTPS)
        "X-Forwarded-Proto": "https",
    }


RAW_COLUMNS = (
    "customer_id",
    "idempotency_key",
    "event_name",
    "timestamp",
    "properties",
    "subscription_id",
    "period_start",
    "provider",
    "model",
    "model_price_id",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "currency",
    "amount",
    "cost",
    "ledger_transaction_id",
)
RAW_ARRAY_TYPES = (
    "bigint",
    "text",
    "text",
    "timestamptz",
    "jsonb",
    "bigint",
    "timestamptz",
    "text",
    "text",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "text",
    "numeric",
    "numeric",
    "bigint",
)
_COLUMN_LIST = ", ".join(RAW_COLUMNS)
_ON_CONFLICT = " ON CONFLICT (customer_id, idempotency_key) DO NOTHING"
RAW_VALUES = f"INSERT INTO {RAW_TABLE} ({_COLUMN_LIST}) VALUES "  # + 1,000 rows of literals
RAW_UNNEST = (
    f"INSERT INTO {RAW_TABLE} ({_COLUMN_LIST}) SELECT * FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in RAW_ARRAY_TYPES)
    + ")"
    + _ON_CONFLICT
)
RAW_COPY = f"COPY {RAW_TABLE} ({_COLUMN_LIST}) FROM STDIN"
KEY_COLUMN = RAW_COLUMNS.index("idempotency_key")
TRANSACTION_COLUMN = RAW_COLUMNS.index("ledger_transaction_id")
assert KEY_COLUMN == 1 and TRANSACTION_COLUMN == len(RAW_COLUMNS) - 1  # RawRows relies on it


def load_raw_rows(conn: psycopg.Connection[Any], spec: RunSpec, index: int) -> list[tuple]:
    """This client's share of the rows the batch run wrote, exactly as they are stored."""
    columns = ", ".join("properties::text" if c == "properties" else c for c in RAW_COLUMNS)
    rows = conn.execute(
        f"SELECT {columns} FROM metering_event WHERE left(idempotency_key, %s) = %s ORDER BY id",
        [len(spec.raw_source), spec.raw_source],
    ).fetchall()
    conn.commit()
    mine = rows[index :: spec.clients]
    if not mine:
        raise RuntimeError(f"no rows under {spec.raw_source!r} to insert")
    return mine


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def sql_literal(value: Any) -> str:
    text = _text(value)
    if text is None:
        return "NULL"
    if isinstance(value, int | Decimal):
        return text
    return "'" + text.replace("'", "''") + "'"  # standard_conforming_strings is on


def array_element(value: Any) -> str:
    text = _text(value)
    if text is None:
        return "NULL"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RawRows:
    """The rows, rendered once for each way of sending them (SQL literals, array elements,
    COPY text), so that a batch costs the client a few string joins: the ceiling is what
    PostgreSQL takes, not how fast Python adapts 19,000 parameters. After a pass over the
    rows they come again with a new idempotency key and ledger transaction id (both
    unique in the table); those two columns (the second and the last) are rendered per
    batch."""

    def __init__(self, rows: list[tuple]):
        self.keys = [row[KEY_COLUMN] for row in rows]
        self.transactions = [row[TRANSACTION_COLUMN] for row in rows]
        self.literals = [self._around(row, sql_literal, ", ") for row in rows]
        self.copy_lines = [self._around(row, copy_field, "\t") for row in rows]
        self.elements = [[array_element(row[c]) for row in rows] for c in range(len(RAW_COLUMNS))]
        self.position = 0  # rows handed out so far, over all passes

    @staticmethod
    def _around(row: tuple, render: Any, separator: str) -> tuple[str, str]:
        """(what precedes the key, what lies between the key and the transaction id)."""
        parts = [render(value) for value in row]
        return parts[0] + separator, separator + separator.join(parts[2:-1]) + separator

    def next_batch(self) -> list[tuple[int, str, int | None]]:
        """BATCH_SIZE × (row index, idempotency key, ledger transaction id)."""
        batch = []
        for position in range(self.position, self.position + BATCH_SIZE):
            round_, i = divmod(position, len(self.keys))
            key, transaction_id = self.keys[i], self.transactions[i]
            if round_:
                key = f"{key}~{round_}"
                if transaction_id is not None:
                    transaction_id += round_ * 10**12
            batch.append((i, key, transaction_id))
        self.position += BATCH_SIZE
        return batch

    def values_statement(self, batch: list[tuple[int, str, int | None]]) -> str:
        rows = ", ".join(
            f"({self.literals[i][0]}{sql_literal(key)}{self.literals[i][1]}"
            f"{sql_literal(transaction_id)})"
            for i, key, transaction_id in batch
        )
        return RAW_VALUES + rows + _ON_CONFLICT

    def unnest_arrays(self, batch: list[tuple[int, str, int | None]]) -> list[str]:
        arrays = []
        for column, elements in enumerate(self.elements):
            if column == KEY_COLUMN:
                values = [array_element(key) for _, key, _ in batch]
            elif column == TRANSACTION_COLUMN:
                values = [array_element(t) for _, _, t in batch]
            else:
                values = [elements[i] for i, _, _ in batch]
            arrays.append("{" + ",".join(values) + "}")
        return arrays

    def copy_text(self, batch: list[tuple[int, str, int | None]]) -> str:
        return "".join(
            f"{self.copy_lines[i][0]}{copy_field(key)}{self.copy_lines[i][1]}"
            f"{copy_field(transaction_id)}\n"
            for i, key, transaction_id in batch
        )


def client_main(index: int, barriers: Any, commands: Any, results: Any) -> None:
    """A client process: run each RunSpec it is sent, starting at the run's barrier."""
    serve(
        index,
        barriers,
        commands,
        results,
        prepare=lambda spec: prepare_client(index, spec),
        run=lambda spec, prepared: run_client(index, spec, prepared),
        failed=lambda exc: ClientResult(
            index=index, problems={type(exc).__name__: 1}, first_error=repr(exc)
        ),
    )


class RawClient:
    """Plain psycopg with its defaults (statements prepared after 5 uses), autocommit off:
    one transaction per batch."""

    def __init__(self, index: int, spec: RunSpec):
        self.conn = psycopg.connect(
            with_database(spec.raw_url, spec.raw_database, application_name=f"bench-raw-{index}"),
            autocommit=False,
        )
        self.rows = RawRows(load_raw_rows(self.conn, spec, index))

    def close(self) -> None:
        self.conn.close()


def prepare_client(index: int, spec: RunSpec) -> Any:
    if spec.scenario in RAW_SCENARIOS:
        return RawClient(index, spec)
    # a fresh connection per run: no stale keep-alive
    api = HttpClient(spec.port, api_headers(spec.api_secret))
    api.conn.connect()
    return api


def run_client(index: int, spec: RunSpec, prepared: Any) -> ClientResult:
    result = ClientResult(index=index)
    statuses: collections.Counter[str] = collections.Counter()
    problems: collections.Counter[str] = collections.Counter()
    rng = random.Random(f"{spec.scenario}/{spec.clients}/{index}")  # reproducible choices
    prefix = f"{run_prefix(spec.scenario, spec.clients)}{index}:"
    customers = spec.customers
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + spec.seconds
    sequence = 0

    def problem(code: str, message: str) -> None:
        problems[code] += 1
        result.first_error = result.first_error or message[:500]

    while time.perf_counter() < deadline:
        sequence += 1
        if spec.scenario in RAW_SCENARIOS:
            conn, rows = prepared.conn, prepared.rows
            batch = rows.next_batch()
            sent = time.perf_counter()
            try:
                if spec.scenario == "raw-values":
                    conn.execute(rows.values_statement(batch))
                elif spec.scenario == "raw-unnest":
                    conn.execute(RAW_UNNEST, rows.unnest_arrays(batch))
                else:
                    with conn.cursor().copy(RAW_COPY) as copy:
                        copy.write(rows.copy_text(batch))
                conn.commit()
            except psycopg.Error as exc:
                conn.rollback()
                problem(type(exc).__name__, repr(exc))
                continue
            result.latencies.append(time.perf_counter() - sent)
            result.requests += 1
            result.events += len(batch)
            continue

        api: HttpClient = prepared
        if spec.scenario == "noop":
            sent = time.perf_counter()
            try:
                status, answer = api.request("GET", NOOP_PATH)
            except (OSError, http.client.HTTPException) as exc:
                problem(f"connection:{type(exc).__name__}", repr(exc))
                continue
            result.latencies.append(time.perf_counter() - sent)
            result.requests += 1
            statuses[str(status)] += 1
            if status == 200:
                result.events += 1
            else:
                problem(f"{status}", f"{status} {answer[:400]!r}")
            continue
        if spec.scenario in ("batch", "batch-keyed"):
            path = "/api/v1/events/batch"
            payload: Any = {
                "events": [
                    make_event(rng, f"{prefix}{sequence}:{n}", customers) for n in range(BATCH_SIZE)
                ]
            }
        elif spec.scenario == "authorize":
            path, payload = "/api/v1/authorize", make_estimate(rng, customers)
        else:  # single, async, warm-up
            path, payload = "/api/v1/events", make_event(rng, f"{prefix}{sequence}", customers)
        body = json.dumps(payload, separators=(",", ":")).encode()
        extra = (
            {"Prefer": "respond-async"}
            if spec.scenario == "async"
            else {"Idempotency-Key": f"{prefix}{sequence}"}
            if spec.scenario == "batch-keyed"
            else None
        )
        sent = time.perf_counter()
        try:
            status, answer = api.request("POST", path, body, extra)
        except (OSError, http.client.HTTPException) as exc:
            problem(f"connection:{type(exc).__name__}", repr(exc))
            continue
        result.latencies.append(time.perf_counter() - sent)
        result.requests += 1
        statuses[str(status)] += 1
        if status >= 300:
            try:
                code = json.loads(answer)["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "unparsed"
            problem(f"{status}:{code}", f"{status} {answer[:400]!r}")
            continue
        if spec.scenario in ("batch", "batch-keyed"):
            outcome = json.loads(answer)
            result.events += outcome["accepted"]
            if outcome["duplicates"]:
                problem("duplicate", f"{outcome['duplicates']} duplicates in a batch")
                problems["duplicate"] += outcome["duplicates"] - 1
            if outcome["rejected"]:
                for item in outcome["data"]:
                    if item["status"] == "rejected":
                        problem(f"rejected:{item['error']['code']}", json.dumps(item))
        elif spec.scenario == "authorize":
            if json.loads(answer).get("allowed") is True:
                result.events += 1
            else:
                problem("not_allowed", answer.decode(errors="replace"))
        elif status == 201 or (status == 202 and json.loads(answer).get("status") == "pending"):
            result.events += 1
        else:  # 200: an event already stored (keys are unique: should not happen)
            problem("duplicate", answer.decode(errors="replace"))
    result.elapsed = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_started
    result.statuses = dict(statuses)
    result.problems = dict(problems)
    return result


# --- the main process: running clients and watching them --------------------------------


def cpu_groups(server_groups: set[int], clients: set[int], bench_db: str) -> Classify:
    """Who a process is: the server's workers (gunicorn's and the Celery worker's process
    groups), the load clients, PostgreSQL (the bench database's backends and workers, and
    the server's own processes; another database's are someone else's load), Redis, this
    process, or other."""
    me = os.getpid()

    def classify(pid: int, proc: Any, processes: dict[int, Any]) -> str:
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


@dataclass
class RunResult:
    scenario: str
    clients: int
    requests: int
    events: int
    seconds: float
    events_per_second: float
    requests_per_second: float
    latency_ms: dict[str, float | None]
    statuses: dict[str, int]
    problems: dict[str, int]
    first_error: str
    client_cpu_seconds: float
    cpu_share: dict[str, float]  # share of the machine's CPU time during the run, by group
    # CPU milliseconds per event (per request for authorize) of the server's workers, of
    # PostgreSQL and of the clients: what an event costs, whatever else the machine runs
    cpu_ms_per_event: dict[str, float | None]
    machine_busy: float  # share of the machine's CPU time used during the run
    wait_events: dict[str, float]  # share of backend samples per state/wait event
    statements: dict[str, float]  # share of active backend samples per statement
    # async: acceptance (the event's received_at) → its ledger transaction recorded, and
    # how long after the run the worker took to rate what was still waiting
    rated_ms: dict[str, float | None] | None = None
    drain_seconds: float | None = None

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("5"))


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
    meter = CpuMeter(cpu_groups(server_groups, pool.pids, bench_db))
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
    )


# --- checks ------------------------------------------------------------------------------


def wallet_movement(conn: psycopg.Connection[Any], wallet_accounts: list[int]) -> Decimal:
    """Σ of the customers' wallet entries (debits positive): what usage took from them."""
    row = conn.execute(
        "SELECT coalesce(sum(amount), 0) FROM ledger_entry WHERE account_id = ANY(%s)",
        [wallet_accounts],
    ).fetchone()
    return Decimal(row[0])


def ledger_rows(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM metering_event), (SELECT count(*) FROM ledger_entry)"
    ).fetchone()
    return int(row[0]), int(row[1])


def check_ingest_run(conn: psycopg.Connection[Any], run: RunResult, moved: Decimal) -> list[Check]:
    """After an ingest run: its accepted events are stored, each with its ledger
    transaction, and what they were charged is what the wallets moved in the ledger."""
    label = f"{run.scenario} × {run.clients}"
    prefix = run_prefix(run.scenario, run.clients)
    stored, charged, without_transaction = conn.execute(
        "SELECT count(*), coalesce(sum(e.amount), 0), count(*) FILTER (WHERE t.id IS NULL) "
        "FROM metering_event e LEFT JOIN ledger_transaction t ON t.id = e.ledger_transaction_id "
        "WHERE left(e.idempotency_key, %s) = %s",
        [len(prefix), prefix],
    ).fetchone()
    failed = dict(run.problems)
    return [
        Check(
            f"{label}: event rows = events accepted",
            stored == run.events,
            f"{stored:,} rows, {run.events:,} accepted",
        ),
        Check(
            f"{label}: every event has its ledger transaction",
            without_transaction == 0,
            f"{without_transaction} without",
        ),
        Check(
            f"{label}: Σ event amounts = wallets' ledger movement",
            Decimal(charged) == moved,
            f"{Decimal(charged)} charged, wallets moved {moved}",
        ),
        Check(f"{label}: no 5xx", run.server_errors == 0, f"{run.server_errors}"),
        Check(
            f"{label}: nothing refused or failed",
            not failed,
            json.dumps(failed) if failed else "0",
        ),
    ]


def check_raw_run(conn: psycopg.Connection[Any], run: RunResult) -> list[Check]:
    """After a raw run: the table holds the rows reported, and its first pass over the
    batch run's rows holds them exactly as metering_event does."""
    label = f"{run.scenario} × {run.clients}"
    rows, different = conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM {table}), (SELECT count(*) FROM"
            " (SELECT {columns} FROM {table} WHERE strpos(idempotency_key, '~') = 0"
            "  EXCEPT SELECT {columns} FROM metering_event) AS d)"
        ).format(
            table=sql.Identifier(RAW_TABLE),
            columns=sql.SQL(", ").join(map(sql.Identifier, RAW_COLUMNS)),
        )
    ).fetchone()
    trouble = f", problems {run.problems}" if run.problems else ""
    return [
        Check(
            f"{label}: rows = rows reported",
            rows == run.events and not run.problems,
            f"{rows:,} rows, {run.events:,} reported{trouble}",
        ),
        Check(
            f"{label}: the batch run's rows, as stored",
            different == 0,
            f"{different} first-pass rows differ from metering_event's",
        ),
    ]


def check_totals(conn: psycopg.Connection[Any]) -> list[Check]:
    """After all runs: the counters rating keeps agree with the events, and every balance
    row with its account's entries."""
    events, period_requests, daily_requests, model_events = conn.execute(
        "SELECT (SELECT count(*) FROM metering_event),"
        " (SELECT coalesce(sum(u.quantity), 0) FROM metering_periodusage u"
        "  JOIN metering_meter m ON m.id = u.meter_id WHERE m.code = 'requests'),"
        " (SELECT coalesce(sum(d.quantity), 0) FROM metering_dailyusage d"
        "  JOIN metering_meter m ON m.id = d.meter_id WHERE m.code = 'requests'),"
        " (SELECT coalesce(sum(event_count), 0) FROM metering_modelusage)"
    ).fetchone()
    mismatched = conn.execute(ACCOUNTS_OFF_THEIR_ENTRIES).fetchone()[0]
    return [
        Check(
            "requests counters = events (period, daily, per model)",
            events == period_requests == daily_requests == model_events,
            f"{events:,} events; {period_requests:,.0f} / {daily_requests:,.0f} / {model_events:,}",
        ),
        Check("balance rows = sum of entries", mismatched == 0, f"{mismatched} accounts off"),
    ]


def check_usage_transactions(conn: psycopg.Connection[Any]) -> list[Check]:
    """After all runs, over every event: each usage ledger transaction's legs on the
    customer's side are the sums of its events — per currency on the customer's wallet of
    that currency (a debit, positive), and the events' tokens (input + cache read + cache
    write + output) on its ``tokens:<customer id>`` account. Computed here from the tables,
    independently of the database's own rule (migration metering/0006): a transaction with
    an event and no leg, or a leg and no event, counts as a mismatch. Also: a transaction's
    events are all one customer's."""
    mismatched, transactions, events, example = conn.execute(
        """
        WITH tx AS (
            SELECT DISTINCT ledger_transaction_id AS id FROM metering_event
             WHERE ledger_transaction_id IS NOT NULL
        ), from_events AS (  -- (transaction, account) → what its events say the leg is
            SELECT e.ledger_transaction_id AS id, w.account_id, e.currency,
                   sum(e.amount) AS total
              FROM metering_event e
              LEFT JOIN billing_wallet w
                ON w.customer_id = e.customer_id AND w.currency = e.currency
             WHERE e.ledger_transaction_id IS NOT NULL
             GROUP BY 1, 2, 3
            UNION ALL
            SELECT e.ledger_transaction_id, a.id, 'TOKENS',
                   sum(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens
                       + e.output_tokens)
              FROM metering_event e
              LEFT JOIN ledger_account a
                ON a.code = 'tokens:' || e.customer_id AND a.currency = 'TOKENS'
             WHERE e.ledger_transaction_id IS NOT NULL
             GROUP BY 1, 2
        ), owned AS (  -- every wallet and tokens account
            SELECT account_id AS id FROM billing_wallet
            UNION SELECT id FROM ledger_account WHERE code LIKE 'tokens:%'
        ), legs AS (  -- (transaction, account) → its entries on those accounts
            SELECT en.transaction_id AS id, en.account_id, en.currency,
                   sum(en.amount) AS total
              FROM ledger_entry en JOIN tx ON tx.id = en.transaction_id
             WHERE en.account_id IN (SELECT id FROM owned)
             GROUP BY 1, 2, 3
        ), compared AS (
            SELECT coalesce(f.id, l.id) AS id, coalesce(f.currency, l.currency) AS currency,
                   coalesce(f.total, 0) AS events_total, coalesce(l.total, 0) AS legs_total,
                   f.account_id IS NULL AND coalesce(f.total, 0) <> 0 AS no_account
              FROM from_events f
              FULL JOIN legs l ON l.id = f.id AND l.account_id = f.account_id
        ), one_customer AS (
            SELECT ledger_transaction_id FROM metering_event
             WHERE ledger_transaction_id IS NOT NULL
             GROUP BY 1 HAVING count(DISTINCT customer_id) > 1
        )
        SELECT (SELECT count(*) FROM compared
                 WHERE events_total <> legs_total OR no_account)
               + (SELECT count(*) FROM one_customer),
               (SELECT count(*) FROM tx),
               (SELECT count(*) FROM metering_event WHERE ledger_transaction_id IS NOT NULL),
               (SELECT format('transaction %s: events %s %s, legs %s', id, events_total,
                              currency, legs_total)
                  FROM compared WHERE events_total <> legs_total OR no_account LIMIT 1)
        """
    ).fetchone()
    return [
        Check(
            "Σ events of each usage transaction = its legs (wallet per currency, tokens)",
            mismatched == 0 and transactions > 0,
            f"{transactions:,} transactions of {events:,} events, {mismatched} off"
            + (f" ({example})" if example else ""),
        )
    ]


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

    from billing.api.usage import parse_event
    from metering import rating

    customers = bench.seeded.customers
    rng = random.Random("in-process/1/0")
    prefix = f"{run_prefix('in-process', 1)}0:"
    problems: collections.Counter[str] = collections.Counter()
    first_error = ""
    latencies: list[float] = []
    events = batches = 0
    rating_cpu = 0.0
    clients = bench.pool.pids if bench.pool is not None else set()
    meter = CpuMeter(cpu_groups(bench.server_groups, clients, bench.database))
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


# --- the report --------------------------------------------------------------------------


def best(runs: list[RunResult], scenarios: Sequence[str]) -> RunResult | None:
    candidates = [r for r in runs if r.scenario in scenarios]
    return max(candidates, key=lambda r: r.events_per_second, default=None)


def report(
    *,
    args: argparse.Namespace,
    machine: dict[str, Any],
    seeded: Seed,
    server: str,
    runs: list[RunResult],
    checks: list[Check],
    raw_indexes: list[str],
) -> dict[str, Any]:
    measured = [r for r in runs if r.scenario != "warm-up"]
    single = best(runs, ["single"])
    asynchronous = best(runs, ["async"])
    rated_p99 = asynchronous.rated_ms["p99"] if asynchronous and asynchronous.rated_ms else None
    batches = {r.clients: r for r in runs if r.scenario == "batch"}
    # The target is set at 4 clients; a run without them (--batch-clients) uses its best.
    batch = batches.get(TARGET_BATCH_CLIENTS) or best(runs, ["batch"])
    best_batch = best(runs, ["batch"])
    keyed = best(runs, ["batch-keyed"])
    in_process = best(runs, ["in-process"])
    noop = best(runs, ["noop"])
    ceiling = best(runs, CEILING_SCENARIOS)
    copy = best(runs, ["copy"])
    authorize = {r.clients: r for r in runs if r.scenario == "authorize"}
    target_authorize = authorize.get(TARGET_AUTHORIZE_CLIENTS)
    p99 = target_authorize.latency_ms["p99"] if target_authorize else None

    def rate(run: RunResult | None) -> float | None:
        return run.events_per_second if run else None

    def p99_of(run: RunResult | None) -> float | None:
        return run.latency_ms["p99"] if run else None

    def cpu_text(run: RunResult | None, groups: tuple[str, str]) -> str:
        """'a + b' CPU ms per event of two groups (the first: server or rating process)."""
        if run is None:
            return "—"
        return " + ".join(fmt(run.cpu_ms_per_event.get(g), "{:.3f}") for g in groups)

    noop_rate = noop.requests_per_second if noop else None
    ratios = {
        "batch/raw_ceiling": ratio(rate(batch), rate(ceiling)),
        "single/noop": ratio(rate(single), noop_rate),
        "async/noop": ratio(rate(asynchronous), noop_rate),
        "in_process/raw_ceiling": ratio(rate(in_process), rate(ceiling)),
        "batch/in_process": ratio(rate(batch), rate(in_process)),
        "batch_keyed/batch": ratio(
            rate(keyed), rate(batches.get(keyed.clients) if keyed else None)
        ),
        "single/raw_ceiling": ratio(rate(single), rate(ceiling)),
        "batch/copy": ratio(rate(batch), rate(copy)),
        "raw_ceiling/copy": ratio(rate(ceiling), rate(copy)),
    }

    def floor(run: RunResult | None, value: float | None, target: float) -> dict[str, Any]:
        return target_floor(value, target, clients=run.clients if run else None)

    def ceiling_of(run: RunResult | None, value: float | None, target: float) -> dict[str, Any]:
        return target_ceiling(value, target, clients=run.clients if run else None)

    targets = {
        "batch/raw_ceiling": {
            **floor(batch, ratios["batch/raw_ceiling"], TARGET_BATCH_VS_RAW),
            "stretch": STRETCH_BATCH_VS_RAW,
            "stretch_met": at_least(ratios["batch/raw_ceiling"], STRETCH_BATCH_VS_RAW),
        },
        "batch_p99_ms": ceiling_of(batch, p99_of(batch), TARGET_BATCH_P99_MS),
        "single/noop": floor(single, ratios["single/noop"], TARGET_SINGLE_VS_NOOP),
        "single_p99_ms": ceiling_of(single, p99_of(single), TARGET_SINGLE_P99_MS),
        "async/noop": floor(asynchronous, ratios["async/noop"], TARGET_ASYNC_VS_NOOP),
        "async_accepted_to_posted_p99_ms": ceiling_of(
            asynchronous, rated_p99, TARGET_ASYNC_RATED_P99_MS
        ),
        "authorize_p99_ms": {
            "clients": TARGET_AUTHORIZE_CLIENTS,
            "target": TARGET_AUTHORIZE_P99_MS,
            "value": p99,
            "met": None if p99 is None else p99 < TARGET_AUTHORIZE_P99_MS,
        },
    }
    targets_met = all(t["met"] for t in targets.values())

    print_machine(
        machine,
        settings=("synchronous_commit", "fsync", "shared_buffers", "autovacuum"),
        lines=[
            ("HTTP server", f"{server}, DEBUG off, 127.0.0.1"),
            (
                "run",
                f"{args.seconds:g} s per run; {CUSTOMERS} customers ({seeded.prepaid} prepaid), "
                f"plans {seeded.plans}; clients = spawned processes",
            ),
        ],
    )
    width = max(len(label) for label in SCENARIO_LABELS.values()) + 2
    print(
        f"{'':<{width}}{'clients':>8}{'events/s':>11}{'requests/s':>12}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    )
    for r in measured:
        events = "—" if r.scenario in REQUEST_SCENARIOS else fmt(r.events_per_second)
        mark = " *" if r in (batch, ceiling, noop, single) else ""
        print(
            f"{SCENARIO_LABELS[r.scenario]:<{width}}{r.clients:>8}{events:>11}"
            f"{fmt(r.requests_per_second, '{:,.1f}'):>12}"
            f"{fmt(r.latency_ms['p50'], '{:.1f}'):>9}{fmt(r.latency_ms['p99'], '{:.1f}'):>9}"
            f"{fmt(r.latency_ms['max'], '{:.1f}'):>9}{mark}"
        )
    print("  * the runs the targets compare (batch ÷ raw ceiling, single ÷ no-op)")
    if in_process is not None:
        print(
            f"  in process: {in_process.requests} batches one after another in the bench"
            " process, timed around metering.rating.ingest_events (no HTTP, JSON, auth);"
            " its 'p50/p99' are per batch"
        )
    print()
    print("Targets (issue 14) and ratios, all from this run")

    def verdict_of(key: str) -> str:
        return VERDICTS[targets[key]["met"]]

    stretch = {True: "stretch met", False: "stretch not met", None: ""}[
        targets["batch/raw_ceiling"]["stretch_met"]
    ]
    batch_clients = batch.clients if batch else "—"
    single_clients = single.clients if single else "—"
    lines = [
        (
            f"batch ({batch_clients} clients) ÷ raw ceiling "
            f"({ceiling.scenario if ceiling else '—'}, {fmt(rate(ceiling))}/s)",
            fmt(ratios["batch/raw_ceiling"], "{:.3f}"),
            f"target ≥ {TARGET_BATCH_VS_RAW} (stretch {STRETCH_BATCH_VS_RAW}): "
            f"{verdict_of('batch/raw_ceiling')}, {stretch}",
        ),
        (
            f"batch ({batch_clients} clients) request p99",
            fmt(p99_of(batch), "{:.1f} ms"),
            f"target ≤ {TARGET_BATCH_P99_MS:g} ms: {verdict_of('batch_p99_ms')}",
        ),
        (
            f"batch ({batch_clients} clients) events/s, HTTP",
            fmt(rate(batch)),
            f"in process (1 process, no HTTP): {fmt(rate(in_process))}/s",
        ),
        (
            "CPU ms per event, HTTP batch",
            cpu_text(batch, ("server workers", "PostgreSQL")),
            f"in process: {cpu_text(in_process, ('rating (this process)', 'PostgreSQL'))}",
        ),
        (
            f"batch with Idempotency-Key ({keyed.clients if keyed else '—'} clients) ÷ without",
            fmt(ratios["batch_keyed/batch"], "{:.3f}"),
            f"for information: {fmt(rate(keyed))} events/s, p99 {fmt(p99_of(keyed), '{:.1f}')} ms",
        ),
        (
            "in process ÷ raw ceiling",
            fmt(ratios["in_process/raw_ceiling"], "{:.3f}"),
            "for information (1 process vs the ceiling's clients)",
        ),
        (
            f"single ({single_clients} clients) ÷ no-op "
            f"({noop.clients if noop else '—'} clients, {fmt(noop_rate)} req/s)",
            fmt(ratios["single/noop"], "{:.3f}"),
            f"target ≥ {TARGET_SINGLE_VS_NOOP}: {verdict_of('single/noop')}",
        ),
        (
            f"single ({single_clients} clients) request p99",
            fmt(p99_of(single), "{:.1f} ms"),
            f"target ≤ {TARGET_SINGLE_P99_MS:g} ms: {verdict_of('single_p99_ms')}",
        ),
        (
            f"async single ({single_clients} clients) ÷ no-op",
            fmt(ratios["async/noop"], "{:.3f}"),
            f"target ≥ {TARGET_ASYNC_VS_NOOP}: {verdict_of('async/noop')}",
        ),
        (
            "async: accepted → posted p99",
            fmt(rated_p99, "{:.0f} ms"),
            f"target ≤ {TARGET_ASYNC_RATED_P99_MS:g} ms: "
            f"{verdict_of('async_accepted_to_posted_p99_ms')}",
        ),
        (
            f"/authorize p99, {TARGET_AUTHORIZE_CLIENTS} client",
            fmt(p99, "{:.1f} ms"),
            f"target < {TARGET_AUTHORIZE_P99_MS:g} ms: {verdict_of('authorize_p99_ms')}",
        ),
        (
            f"single ({single_clients} clients) ÷ raw ceiling",
            fmt(ratios["single/raw_ceiling"], "{:.3f}"),
            "for information",
        ),
        ("raw ceiling ÷ COPY", fmt(ratios["raw_ceiling/copy"], "{:.3f}"), "for scale"),
    ]
    if best_batch is not None and best_batch is not batch:
        lines.append(
            (
                f"best batch ({best_batch.clients} clients) ÷ raw ceiling",
                fmt(ratio(rate(best_batch), rate(ceiling)), "{:.3f}"),
                "for information",
            )
        )
    for clients, r in sorted(authorize.items()):
        if clients != TARGET_AUTHORIZE_CLIENTS:
            lines.append(
                (
                    f"/authorize p99, {clients} clients",
                    fmt(r.latency_ms["p99"], "{:.1f} ms"),
                    "for information: mostly queueing for a CPU",
                )
            )
    label_width = max(len(label) for label, _, _ in lines)
    for label, value, note in lines:
        print(f"  {label:<{label_width}}  {value:>9}   {note}")
    print(f"  all targets met: {'yes' if targets_met else 'no'}")
    if batch is not None and targets["batch_p99_ms"]["met"] is False:
        # Little's law: with every client always waiting on one batch, a batch takes
        # clients × size ÷ rate on average, so the p99 bound sets a floor on the rate.
        needed = batch.clients * BATCH_SIZE / (TARGET_BATCH_P99_MS / 1000)
        print(
            f"  note: {batch.clients} clients each with a batch of {BATCH_SIZE:,} in flight: a "
            f"p99 ≤ {TARGET_BATCH_P99_MS:g} ms needs ≥ {needed:,.0f} events/s (Little's law); "
            f"measured {fmt(rate(batch))}"
        )

    crowded = [f"{r.scenario} × {r.clients}" for r in runs if r.cpu_share.get("other", 0) > 0.1]
    if crowded:
        print()
        print(
            "  Note: other work took more than 10 % of the machine during "
            f"{', '.join(crowded)}; those figures are lower than on an idle machine."
        )
    print()
    print("Where the CPU went (share of all cores during each run) and the busiest statements")
    for r in runs:
        print(
            f"  {r.scenario:>10} × {r.clients:>2}: busy {r.machine_busy:.0%} = "
            f"{cpu_shares(r.cpu_share)}"
        )
        unit = "request" if r.scenario in REQUEST_SCENARIOS else "event"
        cost = ", ".join(
            f"{group} {ms:.2f}" for group, ms in r.cpu_ms_per_event.items() if ms is not None
        )
        print(f"  {'':>15} CPU ms per {unit}: {cost}")
        top = ", ".join(f"{label} {share:.0%}" for label, share in list(r.wait_events.items())[:4])
        print(f"  {'':>15} backends: {top or 'no samples'}")
        for statement, share in list(r.statements.items())[:3]:
            print(f"  {'':>15} {share:>4.0%} {statement}")

    ok = print_checks(checks)
    for r in runs:
        if r.first_error:
            print(f"  first error in {r.scenario} × {r.clients}: {r.first_error}")

    return {
        "benchmark": "ingest",
        "seconds_per_run": args.seconds,
        "server": {
            "description": server,
            "workers": args.workers,
            "worker_class": args.worker_class,
            "threads": args.threads if args.worker_class == "gthread" else 1,
        },
        "customers": CUSTOMERS,
        "prepaid_customers": seeded.prepaid,
        "plans": seeded.plans,
        "batch_size": BATCH_SIZE,
        "machine": machine,
        "events_per_second": {
            "single": rate(single),
            "async": rate(asynchronous),
            "batch": rate(batch),
            "batch_keyed": rate(keyed),
            "batch_clients": batch.clients if batch else None,
            "batch_by_clients": {str(n): r.events_per_second for n, r in sorted(batches.items())},
            "in_process": rate(in_process),
            "noop_requests": noop_rate,
            "noop_path": NOOP_PATH,
            "raw_ceiling": rate(ceiling),
            "raw_ceiling_method": ceiling.scenario if ceiling else None,
            "copy": rate(copy),
        },
        "async_accepted_to_posted_ms": asynchronous.rated_ms if asynchronous else None,
        "async_drain_seconds": asynchronous.drain_seconds if asynchronous else None,
        "authorize_latency_ms": {str(n): r.latency_ms for n, r in sorted(authorize.items())},
        "ratios": ratios,
        "targets": targets,
        "targets_met": targets_met,
        "runs": [asdict(r) for r in runs],
        "raw_table_indexes": raw_indexes,
        "checks": [asdict(c) for c in checks],
        "verification_ok": ok,
    }


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
        setup_django(databases.create(bench_db))
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
