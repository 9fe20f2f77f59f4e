"""Part of bench/ingest.py (not a command): what the benchmark puts in its database and
what its clients send. The seed (meters, the tests' catalog rows, two plans, 200 customers
and an API key, from the tests' factories: through the services), the LLM usage the
clients report (OpenAI, Anthropic and Gemini usage objects as the providers return them),
and the client processes: spawned, plain ``http.client`` with keep-alive (no Django), or
plain psycopg for the raw ceiling; the open-loop clients (bench/ingest_open.py) send
from threads on a schedule."""

from __future__ import annotations

import collections
import http.client
import json
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from bench.harness.processes import HttpClient, serve
from bench.harness.seeding import create_meters
from bench.ingest_open import OPEN_SCENARIOS, arrival_offsets, run_schedule, share
from bench.ingest_raw import RAW_COPY, RAW_UNNEST, RawClient

EVENT_NAME = "llm.completion"
BATCH_SIZE = 1_000  # events per POST /events/batch (rows per statement of the raw ceiling)
CUSTOMERS = 200
PREPAID_EVERY = 5  # customers 0, 5, 10 … are prepaid; the others postpaid without a limit
PREPAID_FUNDS = Decimal("1000000.00")  # an event costs cents: never refused

# The HTTP floor: the cheapest authenticated route that touches no usage data. The same
# authentication as POST /events (the API key's row read by its secret's hash, the scope
# check, the Redis rate-limit counter), then one indexed read of at most two rows of a
# configuration table (five meters here) and 236 bytes of JSON: 2 queries a request.
# Counted through the test client on the bench's data (2026-12-06): a customer's detail
# takes 8 queries and about 4× the time, the plans list 4, the subscriptions list 3,
# /models?limit=1 2 but reads the price catalog and answers twice the bytes.
NOOP_PATH = "/api/v1/meters?limit=1"

INGEST_SCENARIOS = (
    "warm-up",
    "single",
    "async",
    "batch",
    "batch-keyed",
    "in-process",
    *OPEN_SCENARIOS,
)
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

# What the clients send: (provider, model name as the provider's response gives it, weight).
MODEL_MIX = (
    ("openai", "gpt-4o-mini-2024-07-18", 45),
    ("openai", "gpt-4o-2024-08-06", 25),
    ("anthropic", "claude-sonnet-4-5-20250929", 20),
    ("google", "gemini-2.5-pro", 10),
)

FEATURES = ("chat", "summarize", "agent", "search", "autocomplete")


# --- the product's data ------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    customers: list[str]  # external ids
    prepaid: int
    wallet_accounts: list[int]  # every customer's USD wallet (ledger account ids)
    api_secret: str
    plans: dict[str, int]  # plan code → customers on it


def seed() -> Seed:
    """Meters, the tests' catalog rows (tests.factories.MODEL_PRICES), two plans, the
    customers and an API key, from the tests' factories: through the services (as the
    pricing file, the admin and the API would create them)."""
    from billing import services
    from billing.models import BillingMode, ConsumptionModel, PriceModel, Wallet
    from tests.factories import (
        APIKeyFactory,
        CustomerFactory,
        PlanFactory,
        SubscriptionFactory,
        create_model_prices,
    )

    create_meters(METERS, event_name=EVENT_NAME)
    create_model_prices()

    charge, tier = services.ChargeSpec, services.TierSpec
    # pricing/demo.yaml's payg: the provider's cost per model plus a margin.
    payg = PlanFactory(
        code="bench-payg",
        name="Pay as you go",
        consumption_model=ConsumptionModel.BALANCE,
        charges=(
            charge(meter="input_tokens", margin_percent=Decimal(20)),
            charge(meter="output_tokens", margin_percent=Decimal(20)),
            charge(meter="cached_input_tokens", margin_percent=Decimal("10.5")),
        ),
    )
    # demo.yaml's pro without the trial and with small allowances, so tiers are crossed.
    graduated = PlanFactory(
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

    started = datetime.now(UTC) - timedelta(days=10)  # mid-period: no boundary in the runs
    external_ids, plans = [], collections.Counter()
    prepaid = 0
    for i in range(CUSTOMERS):
        is_prepaid = i % PREPAID_EVERY == 0
        customer = CustomerFactory(
            external_id=f"bench-cus-{i:04d}",
            name=f"Bench customer {i}",
            billing_mode=BillingMode.PREPAID if is_prepaid else BillingMode.POSTPAID,
            funds=PREPAID_FUNDS if is_prepaid else 0,
            funds_reference="bench-funding",
        )
        plan = graduated if i % PREPAID_EVERY == 1 else payg
        SubscriptionFactory(customer=customer, plan=plan, start=started)
        if is_prepaid:
            prepaid += 1
        external_ids.append(customer.external_id)
        plans[plan.code] += 1
    # The per-key rate limit (6,000 a minute by default) would refuse the benchmark's load;
    # the Redis counter it keeps is still incremented on every request, as in production.
    key = APIKeyFactory(
        name="bench-ingest", scopes=["read", "ingest"], rate_limit_per_minute=2**31 - 1
    )
    wallet_accounts = sorted(
        Wallet.objects.filter(currency="USD").values_list("account_id", flat=True)
    )
    return Seed(
        customers=external_ids,
        prepaid=prepaid,
        wallet_accounts=wallet_accounts,
        api_secret=key.secret,
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
    open_requests: int = 0  # open loop: requests scheduled, all clients together
    open_threads: int = 0  # open loop: sending threads per client
    open_capacity: float = 0.0  # open loop: requests/s the closed-loop run measured
    open_fraction: float = 0.0  # open loop: the share of that offered


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
    scheduled: int = 0  # open loop: requests this client had to send
    send_lags: list[float] = field(default_factory=list)  # open loop: sent − scheduled, s


def api_headers(secret: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {secret}",
        "Content-Type": "application/json",
        "User-Agent": "bench-ingest",
        # as the TLS-terminating proxy in front of production says (else the production
        # settings redirect plain HTTP to HTTPS)
        "X-Forwarded-Proto": "https",
    }


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


def prepare_client(index: int, spec: RunSpec) -> Any:
    if spec.scenario in RAW_SCENARIOS:
        return RawClient(index, spec, BATCH_SIZE)
    if spec.scenario in OPEN_SCENARIOS:
        return OpenClient(index, spec)
    bodies = prebuilt_batches(index, spec) if spec.scenario in ("batch", "batch-keyed") else []
    # a fresh connection per run: no stale keep-alive
    api = HttpClient(spec.port, api_headers(spec.api_secret))
    api.bodies = bodies
    api.conn.connect()
    return api


# Closed-loop batch clients draw and encode their batches before the run (as the open-loop
# clients and the raw scenarios do): on this 2-core machine the clients share the cores with
# the server and PostgreSQL, and drawing 1,000 events and encoding them cost a client
# 0.025 ms of CPU an event, a tenth of what the server and PostgreSQL spend on it — the
# load generator's cost, not the product's. Enough batches for this many events a second,
# all clients together; a faster run draws the rest in the loop, as before.
PREBUILT_EVENTS_PER_SECOND = 16_000


def prebuilt_batches(index: int, spec: RunSpec) -> list[bytes]:
    """The first batches a closed-loop batch client sends, drawn as ``run_client`` draws
    them (the same keys, customers and usage), encoded."""
    count = math.ceil(PREBUILT_EVENTS_PER_SECOND * spec.seconds / spec.clients / BATCH_SIZE)
    rng = random.Random(f"{spec.scenario}/{spec.clients}/{index}")
    prefix = f"{run_prefix(spec.scenario, spec.clients)}{index}:"
    return [batch_body(rng, prefix, sequence, spec.customers) for sequence in range(1, count + 1)]


def batch_body(rng: random.Random, prefix: str, sequence: int, customers: Sequence[str]) -> bytes:
    payload = {
        "events": [make_event(rng, f"{prefix}{sequence}:{n}", customers) for n in range(BATCH_SIZE)]
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def run_client(index: int, spec: RunSpec, prepared: Any) -> ClientResult:
    if spec.scenario in OPEN_SCENARIOS:
        return prepared.run()
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

    def problem(code: str, message: str, count: int = 1) -> None:
        problems[code] += count
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
            if sequence <= len(api.bodies):
                body = api.bodies[sequence - 1]
            else:  # past the prebuilt ones: drawn now, by a generator of their own
                if sequence == len(api.bodies) + 1:
                    rng = random.Random(f"{spec.scenario}/{spec.clients}/{index}/more")
                body = batch_body(rng, prefix, sequence, customers)
        else:
            if spec.scenario == "authorize":
                path, payload = "/api/v1/authorize", make_estimate(rng, customers)
            else:  # single, async, warm-up
                path = "/api/v1/events"
                payload = make_event(rng, f"{prefix}{sequence}", customers)
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
        result.events += judge(spec.scenario, status, answer, problem)
    result.elapsed = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_started
    result.statuses = dict(statuses)
    result.problems = dict(problems)
    return result


def judge(scenario: str, status: int, answer: bytes, problem: Callable[..., None]) -> int:
    """What an answer to a POST of ``scenario`` counts: the events accepted (authorize:
    allowed); anything else is reported as ``problem(code, message[, count])``."""
    if status >= 300:
        try:
            code = json.loads(answer)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = "unparsed"
        problem(f"{status}:{code}", f"{status} {answer[:400]!r}")
        return 0
    if scenario in ("batch", "batch-keyed", "open-batch"):
        outcome = json.loads(answer)
        if outcome["duplicates"]:
            problem("duplicate", f"{outcome['duplicates']} duplicates in a batch")
            problem("duplicate", "", outcome["duplicates"] - 1)
        if outcome["rejected"]:
            for item in outcome["data"]:
                if item["status"] == "rejected":
                    problem(f"rejected:{item['error']['code']}", json.dumps(item))
        return int(outcome["accepted"])
    if scenario == "authorize":
        if json.loads(answer).get("allowed") is True:
            return 1
        problem("not_allowed", answer.decode(errors="replace"))
        return 0
    if status == 201 or (status == 202 and json.loads(answer).get("status") == "pending"):
        return 1
    # 200: an event already stored (keys are unique: should not happen)
    problem("duplicate", answer.decode(errors="replace"))
    return 0


class OpenClient:
    """An open-loop client process (bench/ingest_open.py): its share of the run's
    requests, their send times and their bodies, all made before the run (so that drawing
    and encoding events costs the run nothing), and one connection per sending thread."""

    def __init__(self, index: int, spec: RunSpec):
        self.index, self.spec = index, spec
        count = share(spec.open_requests, spec.clients, index)
        schedule_rng = random.Random(f"schedule/{spec.scenario}/{spec.clients}/{index}")
        self.offsets = arrival_offsets(schedule_rng, count, spec.seconds)
        rng = random.Random(f"{spec.scenario}/{spec.clients}/{index}")  # reproducible choices
        prefix = f"{run_prefix(spec.scenario, spec.clients)}{index}:"
        if spec.scenario == "open-batch":
            self.path = "/api/v1/events/batch"
            payloads: list[Any] = [
                {
                    "events": [
                        make_event(rng, f"{prefix}{i}:{n}", spec.customers)
                        for n in range(BATCH_SIZE)
                    ]
                }
                for i in range(count)
            ]
        else:
            self.path = "/api/v1/events"
            payloads = [make_event(rng, f"{prefix}{i}", spec.customers) for i in range(count)]
        self.bodies = [json.dumps(p, separators=(",", ":")).encode() for p in payloads]
        headers = api_headers(spec.api_secret)
        self.connections = [
            HttpClient(spec.port, headers) for _ in range(max(1, min(spec.open_threads, count)))
        ]

    def run(self) -> ClientResult:
        result = ClientResult(index=self.index, scheduled=len(self.offsets))
        statuses: collections.Counter[str] = collections.Counter()
        problems: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()

        def problem(code: str, message: str, count: int = 1) -> None:  # under the lock
            problems[code] += count
            result.first_error = result.first_error or message[:500]

        def send(i: int, thread: int) -> bool:
            try:
                status, answer = self.connections[thread].request("POST", self.path, self.bodies[i])
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    problem(f"connection:{type(exc).__name__}", repr(exc))
                return False
            with lock:
                result.requests += 1
                statuses[str(status)] += 1
                result.events += judge(self.spec.scenario, status, answer, problem)
            return True

        cpu_started = time.process_time()
        timings = run_schedule(self.offsets, send, threads=len(self.connections))
        result.cpu_seconds = time.process_time() - cpu_started
        result.elapsed = timings.elapsed
        result.latencies = timings.latencies
        result.send_lags = timings.send_lags
        result.statuses = dict(statuses)
        result.problems = dict(problems)
        return result

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
