"""Part of bench/close.py (not a command): what a run measured, the checks of what it
wrote (one invoice per subscription, lines = counters, every period rolled) and the
report."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from bench.close_seed import BASE_FEE, CURRENCY, PLAN_CODE, Seed
from bench.harness.report import Check, cpu_shares, fmt, print_checks, print_machine

TARGET_SECONDS = 120.0
CELERY_LABELS = {
    "2x1": "2 workers, prefork, concurrency 1 each",
    "1x2": "1 worker, prefork, concurrency 2",
}

PG_RUN = "postgresql"  # the live backends of the run's database
PG_ENDED = "postgresql, ended backends"  # any database's: the postmaster's reaped children
PG_OTHER = "postgresql, server and other databases"


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
