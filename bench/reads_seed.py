# ruff: noqa: E501  (the SQL reads better in long lines than split mid-clause)
"""Part of bench/reads.py (not a command): the seed, set-based SQL into the real tables.

At scale 1: 100,000 prepaid customers, each with its USD wallet (ledger account, balance
row, wallet), a subscription to one metered plan in its current period, 100 usage events,
one top-up and 100 usage postings (10.1 million ledger transactions, 20.2 million entries),
one finalized invoice for the previous period, and the counters and rollups rating keeps
(``PeriodUsage``, ``DailyUsage``, ``ModelUsage``, ``MarginUsage``), all computed from the events by GROUP BY.

What the services would write, and what differs (docs/benchmarks.md, *Session 11*):

- The meters, the plan, the system accounts (``@World``, ``@Revenue`` with their balance
  buckets), the API key and the users come from the services (the tests' factories).
- Rows are interleaved in time the way live traffic leaves them: event ``n`` and usage
  transaction ``n`` belong to customer ``n mod C``, ids and times rising with ``n``; a
  customer's rows are spread over the whole table, never in one block.
- Ledger rows go through INSERT … SELECT, so every constraint and trigger of the ledger
  holds for them: each INSERT of entries balances per transaction (the statement trigger
  ledger_entry_balanced), entries' (account, currency) match their accounts and their
  transactions exist (the same trigger, since ledger 0009), references are unique. Usage posting ``C + m`` moves exactly event ``m``'s
  amount from the wallet to ``@Revenue`` (as prepaid rating does, one transaction per
  rating pass; here a pass is one event), so Σ a customer's event amounts = its wallet's
  usage debits. The top-up is ``@World`` → wallet.
- Balances are then set from the entries (posted = Σ entries in the normal direction,
  version = the number of entries), on bucket 0 of each hot account.
- What is not what the services would write: events are not linked to their usage
  transactions (``ledger_transaction_id`` NULL: metering's sum rule needs a TOKENS leg on a
  per-customer tokens account for every linked transaction, which doubles the entries);
  payload hashes are sha256 over the legs, not byte-for-byte the services' JSON; the
  invoice is a zero-total statement of the previous period with no ledger posting.

Seeding is skipped when ``bench_reads_seed`` (a table of this seed's own) says the
database holds this scale already.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg

from bench.harness.report import progress
from bench.harness.stats import Timer

CUSTOMERS_AT_SCALE_1 = 100_000
EVENTS_PER_CUSTOMER = 100
TOP_UP = Decimal(50)
INPUT_PRICE = Decimal("0.0000004")  # USD per input token (the plan's charge)
OUTPUT_PRICE = Decimal("0.0000016")
INPUT_COST = Decimal("0.00000015")  # what the provider charges us
OUTPUT_COST = Decimal("0.0000006")
PLAN_CODE = "bench-reads"
EXTERNAL_PREFIX = "bench-reads-"
FIRST_PART = 2_000  # customers per transaction (the first part: before any ANALYZE)
CHUNK = 1_000_000  # rows of events / transactions per INSERT statement (and transaction)

# SQL expressions of event n's token counts (deterministic, varied)
INPUT_SQL = "(500 + (n * 7919) %% 20000)"
OUTPUT_SQL = "(100 + (n * 104729) %% 2000)"
MODEL_SQL = "CASE WHEN n %% 3 = 0 THEN 'gpt-4o-2024-08-06' ELSE 'gpt-4o-mini-2024-07-18' END"


@dataclass
class SeedInfo:
    scale: float
    customers: int
    events: int
    transactions: int
    first_customer: int
    seconds: float
    steps: list[tuple[str, float]] = field(default_factory=list)


def sizes(scale: float) -> tuple[int, int, int]:
    customers = max(2, round(CUSTOMERS_AT_SCALE_1 * scale))
    events = customers * EVENTS_PER_CUSTOMER
    return customers, events, customers + events


def existing(conn: psycopg.Connection[Any]) -> SeedInfo | None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS bench_reads_seed (scale float8 PRIMARY KEY, customers int,"
        " events bigint, transactions bigint, first_customer bigint, seconds float8,"
        " seeded_at timestamptz DEFAULT now())"
    )
    row = conn.execute(
        "SELECT scale, customers, events, transactions, first_customer, seconds "
        "FROM bench_reads_seed"
    ).fetchone()
    conn.commit()
    return SeedInfo(*row) if row else None


def seed_shared() -> dict[str, int]:
    """Meters, the plan and the system accounts, through the services."""
    from billing import services
    from billing.models import Plan
    from ledger.models import NormalBalance
    from ledger.services import ensure_system_account
    from tests.factories import MeterFactory, PlanFactory

    meters = {}
    for code, prop in (
        ("input_tokens", "usage.prompt_tokens"),
        ("output_tokens", "usage.completion_tokens"),
    ):
        meters[code] = MeterFactory(
            code=f"bench_reads_{code}",
            name=code,
            event_name="llm.completion",
            aggregation="sum",
            property=prop,
            unit="tokens",
        ).pk
    plan = Plan.objects.filter(code=PLAN_CODE).order_by("-version").first() or PlanFactory(
        code=PLAN_CODE,
        name="Bench reads",
        currency="USD",
        base_fee=Decimal(0),
        charges=(
            services.ChargeSpec(meter="bench_reads_input_tokens", unit_price=INPUT_PRICE),
            services.ChargeSpec(meter="bench_reads_output_tokens", unit_price=OUTPUT_PRICE),
        ),
    )
    world = ensure_system_account(code="@World", currency="USD", normal_balance=NormalBalance.DEBIT)
    revenue = ensure_system_account(code="@Revenue", currency="USD")
    return {"plan": plan.pk, "world": world.pk, "revenue": revenue.pk, **meters}


def _reserve(conn: psycopg.Connection[Any], table: str, count: int) -> int:
    first = conn.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [table]).fetchone()[0]
    conn.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", [table, first + count])
    return first


def seed(conn: psycopg.Connection[Any], scale: float, shared: dict[str, int]) -> SeedInfo:
    """The whole seed at ``scale``; one step per committed transaction, each printed."""
    c, n_events, n_tx = sizes(scale)
    total = Timer()
    steps: list[tuple[str, float]] = []

    def step(
        name: str, statements: list[tuple[str, dict[str, Any]]], *, analyze: bool = True
    ) -> None:
        timer = Timer()
        with conn.transaction():
            for text, params in statements:
                conn.execute(text, params)
                # Statistics of the table now, before the foreign-key checks (deferred to the
                # commit) and the next statements are planned: planned on an empty table's
                # statistics, each check is a sequential scan, once per row — hours at
                # 100,000 customers. (ANALYZE also invalidates the plans already cached.)
                table = re.match(r"\s*INSERT INTO (\w+)", text)
                if table and analyze:
                    conn.execute(f"ANALYZE {table.group(1)}")
        steps.append((name, timer.seconds))
        progress(f"  seed: {name} in {timer.seconds:.1f} s")

    cust0 = _reserve(conn, "billing_customer", c)
    acct0 = _reserve(conn, "ledger_account", c)
    wallet0 = _reserve(conn, "billing_wallet", c)
    sub0 = _reserve(conn, "billing_subscription", c)
    tx0 = _reserve(conn, "ledger_transaction", n_tx)
    conn.commit()
    p: dict[str, Any] = {
        "c": c,
        "cust0": cust0,
        "acct0": acct0,
        "wallet0": wallet0,
        "sub0": sub0,
        "tx0": tx0,
        "n_events": n_events,
        "plan": shared["plan"],
        "world": shared["world"],
        "revenue": shared["revenue"],
        "top_up": TOP_UP,
        "prefix": EXTERNAL_PREFIX,
        "in_price": INPUT_PRICE,
        "out_price": OUTPUT_PRICE,
        "in_cost": INPUT_COST,
        "out_cost": OUTPUT_COST,
        "in_meter": shared["input_tokens"],
        "out_meter": shared["output_tokens"],
    }
    # The current period began 20 days ago (midnight UTC); events run from then to now.
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS bench_clock AS SELECT"
        " date_trunc('day', now()) - interval '20 days' AS anchor, now() AS until"
    )
    clock = "(SELECT anchor FROM bench_clock)"
    step_sql = f"((SELECT until FROM bench_clock) - {clock}) / %(n_events)s"
    event_at = f"{clock} + {step_sql} * n"

    # Customers in parts of FIRST_PART, each its own transaction, ANALYZE after the first:
    # the history triggers (django-pghistory) open two subtransactions per row, and past a
    # few thousand in one transaction every row check of its own rows slows (PostgreSQL's
    # subtransaction cache overflows): 100,000 customers in one transaction took longer
    # than the whole seed should. The foreign-key checks of the first part run on empty
    # tables' statistics (sequential scans), of the others on an index.
    for lo in range(0, c, FIRST_PART):
        hi = min(lo + FIRST_PART, c) - 1
        q = {**p, "lo": lo, "hi": hi}
        step(
            f"customers {lo:,}–{hi:,}, their wallets, subscriptions and invoices",
            [
                (
                    "INSERT INTO billing_customer (id, external_id, name, email, currency, billing_mode,"
                    " address_line1, address_line2, city, state, postal_code, country, tax_id, metadata,"
                    " stripe_customer_id, created_at, updated_at)"
                    " SELECT %(cust0)s + i, %(prefix)s || lpad(i::text, 6, '0'), 'Bench customer ' || i,"
                    " 'billing+' || i || '@example.com', 'USD', 'prepaid', '', '', '', '', '', '', '',"
                    " '{}', '', now() - (%(c)s - i) * interval '1 minute', now()"
                    " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) i",
                    q,
                ),
                (
                    "INSERT INTO ledger_account (id, code, name, currency, normal_balance, is_hot,"
                    " allow_negative, negative_limit, owner_type, owner_id, metadata)"
                    " SELECT %(acct0)s + i, 'wallet:' || (%(cust0)s + i) || ':USD',"
                    " 'Bench customer ' || i || ' — USD wallet', 'USD', 'credit', false, false, NULL,"
                    " 'billing.customer', (%(cust0)s + i)::text, '{}' FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) i",
                    q,
                ),
                (
                    "INSERT INTO billing_wallet (id, customer_id, currency, account_id, billing_mode,"
                    " credit_limit) SELECT %(wallet0)s + i, %(cust0)s + i, 'USD', %(acct0)s + i,"
                    " 'prepaid', NULL FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) i",
                    q,
                ),
                (
                    "INSERT INTO billing_subscription (id, customer_id, plan_id, status, started_at,"
                    " billing_anchor, current_period_start, current_period_end, trial_ends_at,"
                    " cancel_at_period_end, canceled_at, ended_at, scheduled_plan_id, invoiced_through,"
                    " metadata, billing_time)"
                    f" SELECT %(sub0)s + i, %(cust0)s + i, %(plan)s, 'active', {clock} - interval '1 month',"
                    f" {clock} - interval '1 month', {clock}, {clock} + interval '1 month', NULL, false,"
                    f" NULL, NULL, NULL, {clock}, '{{}}', 'anniversary'"
                    " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) i",
                    q,
                ),
                (
                    "INSERT INTO billing_subscriptionphase (subscription_id, plan_id, starts_at, ends_at)"
                    f" SELECT %(sub0)s + i, %(plan)s, {clock} - interval '1 month', NULL"
                    " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) i",
                    q,
                ),
                (
                    "INSERT INTO invoicing_invoice (customer_id, subscription_id, period_start,"
                    " period_end, currency, status, number, display_number, subtotal, tax_name,"
                    " tax_percentage, tax, total, balance_applied, amount_due, usage_charged,"
                    " fees_precise, rounding, amount_paid, amount_credited, grace_ends_at, finalized_at,"
                    " due_at, paid_at, void_reason, pdf, payment_attempts, last_payment_error,"
                    " stripe_payment_intent_id, metadata, pdf_state, rounding_rule, commitment_breakage)"
                    f" SELECT %(cust0)s + i, %(sub0)s + i, {clock} - interval '1 month', {clock}, 'USD',"
                    f" 'paid', 900000000 + i, 'BR-' || i, 0, '', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,"
                    f" {clock}, {clock}, {clock} + interval '14 days', {clock}, '', '', 0, '', '', '{{}}',"
                    " 'none', 'half_even', 0 FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) i",
                    q,
                ),
            ],
            analyze=lo == 0,
        )
        if lo == 0:
            conn.execute("ANALYZE")
            conn.commit()
    for start in range(0, n_events, CHUNK):
        q = {**p, "lo": start, "hi": min(start + CHUNK, n_events) - 1}
        step(
            f"events {start:,}–{q['hi']:,}",
            [
                (
                    "INSERT INTO metering_event (customer_id, subscription_id, idempotency_key,"
                    " event_name, timestamp, properties, received_at, period_start, provider, model,"
                    " input_tokens, cache_read_tokens, cache_write_tokens, output_tokens,"
                    " reasoning_tokens, currency, amount, cost)"
                    f" SELECT %(cust0)s + n %% %(c)s, %(sub0)s + n %% %(c)s, 'bench-' || n,"
                    f" 'llm.completion', {event_at}, jsonb_build_object('provider', 'openai',"
                    f" 'model', {MODEL_SQL}, 'usage', jsonb_build_object('prompt_tokens', {INPUT_SQL},"
                    f" 'completion_tokens', {OUTPUT_SQL})), {event_at}, {clock}, 'openai', {MODEL_SQL},"
                    f" {INPUT_SQL}, 0, 0, {OUTPUT_SQL}, 0, 'USD',"
                    f" {INPUT_SQL} * %(in_price)s + {OUTPUT_SQL} * %(out_price)s,"
                    f" {INPUT_SQL} * %(in_cost)s + {OUTPUT_SQL} * %(out_cost)s"
                    " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) n",
                    q,
                )
            ],
        )
    # Ledger transactions: k < C: the top-up of customer k; k = C + m: the usage of event m.
    for start in range(0, n_tx, CHUNK):
        q = {**p, "lo": start, "hi": min(start + CHUNK, n_tx) - 1}
        amount = (
            f"CASE WHEN k < %(c)s THEN %(top_up)s ELSE"
            f" (SELECT {INPUT_SQL} * %(in_price)s + {OUTPUT_SQL} * %(out_price)s"
            f" FROM (SELECT k - %(c)s AS n) e) END"
        )
        step(
            f"ledger transactions {start:,}–{q['hi']:,} and their entries",
            [
                (
                    "INSERT INTO ledger_transaction (id, reference, payload_hash, description,"
                    " metadata, effective_at)"
                    " SELECT %(tx0)s + k, CASE WHEN k < %(c)s"
                    "   THEN 'top-up:' || (%(cust0)s + k %% %(c)s) || ':bench-reads'"
                    "   ELSE 'usage:' || (%(cust0)s + k %% %(c)s) || ':bench-reads-' || (k - %(c)s) END,"
                    f" encode(sha256(convert_to(k::text || ':' || ({amount})::text, 'UTF8')), 'hex'),"
                    " CASE WHEN k < %(c)s THEN 'Top-up of 50 USD' ELSE 'Usage' END,"
                    " jsonb_build_object('kind', CASE WHEN k < %(c)s THEN 'top_up' ELSE 'usage' END,"
                    "   'customer', %(prefix)s || lpad((k %% %(c)s)::text, 6, '0')),"
                    f" CASE WHEN k < %(c)s THEN {clock} - interval '1 day' + k * interval '1 ms'"
                    f"   ELSE {clock} + {step_sql} * (k - %(c)s) END"
                    " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) k",
                    q,
                ),
                (
                    # Two legs per transaction, in one statement: the balance trigger sees both.
                    "INSERT INTO ledger_entry (transaction_id, account_id, currency, amount)"
                    " SELECT %(tx0)s + k, CASE WHEN leg = 0 THEN"
                    "   CASE WHEN k < %(c)s THEN %(world)s ELSE %(acct0)s + k %% %(c)s END"
                    "   ELSE CASE WHEN k < %(c)s THEN %(acct0)s + k %% %(c)s ELSE %(revenue)s END END,"
                    f" 'USD', CASE WHEN leg = 0 THEN 1 ELSE -1 END * ({amount})"
                    " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) k CROSS JOIN (VALUES (0), (1)) AS legs(leg)"
                    " ORDER BY k, leg",
                    q,
                ),
            ],
        )
    step(
        "balances from the entries",
        [
            (
                "INSERT INTO ledger_balance (account_id, bucket, posted, held, floor, version)"
                " SELECT a.id, 0, -coalesce(s.signed, 0), 0, 0, coalesce(s.n, 0)"
                " FROM ledger_account a LEFT JOIN (SELECT account_id, sum(amount) AS signed,"
                "   count(*) AS n FROM ledger_entry WHERE account_id BETWEEN %(acct0)s"
                "   AND %(acct0)s + %(c)s - 1 GROUP BY account_id) s ON s.account_id = a.id"
                " WHERE a.id BETWEEN %(acct0)s AND %(acct0)s + %(c)s - 1",
                p,
            ),
            (
                # The hot accounts: what this seed added, on bucket 0.
                "UPDATE ledger_balance b SET posted = b.posted + CASE WHEN b.account_id = %(world)s"
                "   THEN %(top_up)s * %(c)s ELSE (SELECT sum(amount) FROM metering_event"
                "   WHERE customer_id BETWEEN %(cust0)s AND %(cust0)s + %(c)s - 1) END,"
                " version = b.version + CASE WHEN b.account_id = %(world)s THEN %(c)s"
                "   ELSE %(n_events)s END"
                " WHERE b.account_id IN (%(world)s, %(revenue)s) AND b.bucket = 0",
                p,
            ),
        ],
    )
    step(
        "counters and rollups from the events",
        [
            (
                "INSERT INTO metering_periodusage (subscription_id, meter_id, period_start,"
                " period_end, quantity, amount, charged, currency, event_count, latest_at)"
                " SELECT e.subscription_id, m.meter, e.period_start,"
                " e.period_start + interval '1 month', sum(CASE WHEN m.meter = %(in_meter)s THEN"
                " e.input_tokens ELSE e.output_tokens END), sum(CASE WHEN m.meter = %(in_meter)s"
                " THEN e.input_tokens * %(in_price)s ELSE e.output_tokens * %(out_price)s END),"
                " sum(CASE WHEN m.meter = %(in_meter)s THEN e.input_tokens * %(in_price)s"
                " ELSE e.output_tokens * %(out_price)s END), 'USD', count(*), max(e.timestamp)"
                " FROM metering_event e CROSS JOIN (VALUES (%(in_meter)s), (%(out_meter)s)) m(meter)"
                " WHERE e.customer_id BETWEEN %(cust0)s AND %(cust0)s + %(c)s - 1"
                " GROUP BY e.subscription_id, m.meter, e.period_start",
                p,
            ),
            (
                "INSERT INTO metering_dailyusage (subscription_id, customer_id, meter_id,"
                " period_start, day, dimension_key, dimensions, quantity, included_quantity, amount,"
                " currency, event_count)"
                " SELECT e.subscription_id, e.customer_id, m.meter, e.period_start,"
                " (e.timestamp AT TIME ZONE 'UTC')::date, '', '{}', sum(CASE WHEN m.meter ="
                " %(in_meter)s THEN e.input_tokens ELSE e.output_tokens END), 0,"
                " sum(CASE WHEN m.meter = %(in_meter)s THEN e.input_tokens * %(in_price)s"
                " ELSE e.output_tokens * %(out_price)s END), 'USD', count(*)"
                " FROM metering_event e CROSS JOIN (VALUES (%(in_meter)s), (%(out_meter)s)) m(meter)"
                " WHERE e.customer_id BETWEEN %(cust0)s AND %(cust0)s + %(c)s - 1"
                " GROUP BY 1, 2, 3, 4, 5",
                p,
            ),
            (
                "INSERT INTO metering_modelusage (customer_id, subscription_id, period_start, day,"
                " provider, model, currency, event_count, input_tokens, cache_read_tokens,"
                " cache_write_tokens, output_tokens, reasoning_tokens, amount, cost)"
                " SELECT customer_id, subscription_id, period_start,"
                " (timestamp AT TIME ZONE 'UTC')::date, provider, model, currency, count(*),"
                " sum(input_tokens), 0, 0, sum(output_tokens), 0, sum(amount), sum(cost)"
                " FROM metering_event WHERE customer_id BETWEEN %(cust0)s AND %(cust0)s + %(c)s - 1"
                " GROUP BY 1, 2, 3, 4, 5, 6, 7",
                p,
            ),
            (
                # MarginUsage's two grains, from the rows just made (rating keeps them with
                # ModelUsage); the model rows in slot 0
                "INSERT INTO metering_marginusage (customer_id, day, provider, model, currency,"
                " slot, event_count, amount, cost)"
                " SELECT customer_id, date_trunc('month', day)::date, '', '', currency, 0,"
                " sum(event_count), sum(amount), sum(cost) FROM metering_modelusage"
                " WHERE customer_id BETWEEN %(cust0)s AND %(cust0)s + %(c)s - 1 GROUP BY 1, 2, 5"
                " UNION ALL SELECT NULL, day, provider, model, currency, 0, sum(event_count),"
                " sum(amount), sum(cost) FROM metering_modelusage"
                " WHERE customer_id BETWEEN %(cust0)s AND %(cust0)s + %(c)s - 1 GROUP BY 2, 3, 4, 5",
                p,
            ),
        ],
    )
    info = SeedInfo(scale, c, n_events, n_tx, cust0, total.seconds, steps)
    with conn.transaction():
        conn.execute("DELETE FROM bench_reads_seed")
        conn.execute(
            "INSERT INTO bench_reads_seed (scale, customers, events, transactions,"
            " first_customer, seconds) VALUES (%s, %s, %s, %s, %s, %s)",
            [scale, c, n_events, n_tx, cust0, info.seconds],
        )
    return info


def checks(conn: psycopg.Connection[Any], info: SeedInfo) -> list[tuple[str, bool, str]]:
    """The seed is consistent: balances = Σ entries, Σ events = Σ usage debits, counters =
    events. Each check reads the seeded customers only (index-driven where it can)."""
    p = {"cust0": info.first_customer, "c": info.customers}
    off = conn.execute(
        "SELECT count(*) FROM billing_wallet w JOIN ledger_balance b ON b.account_id ="
        " w.account_id WHERE w.customer_id BETWEEN %(cust0)s AND %(cust0)s + %(c)s - 1"
        " AND b.posted <> -(SELECT coalesce(sum(amount), 0) FROM ledger_entry e"
        "                    WHERE e.account_id = w.account_id)",
        p,
    ).fetchone()[0]
    events, debits = conn.execute(
        "SELECT (SELECT sum(amount) FROM metering_event WHERE customer_id BETWEEN %(cust0)s"
        " AND %(cust0)s + %(c)s - 1), (SELECT sum(e.amount) FROM ledger_entry e JOIN"
        " billing_wallet w ON w.account_id = e.account_id WHERE w.customer_id BETWEEN"
        " %(cust0)s AND %(cust0)s + %(c)s - 1 AND e.amount > 0)",
        p,
    ).fetchone()
    counters = conn.execute(
        "SELECT sum(charged) FROM metering_periodusage u JOIN billing_subscription s ON"
        " s.id = u.subscription_id WHERE s.customer_id BETWEEN %(cust0)s AND %(cust0)s + %(c)s - 1",
        p,
    ).fetchone()[0]
    return [
        ("seed: wallet balances = Σ their entries", off == 0, f"{off} wallets off"),
        (
            "seed: Σ event amounts = Σ wallets' usage debits = Σ counters",
            events == debits == counters,
            f"{events} / {debits} / {counters} USD",
        ),
    ]
