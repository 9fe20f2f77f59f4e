"""Reconciliation: proof, per currency and period, that the books agree with themselves and
with what was rated, invoiced and paid. Read-only: nothing here writes the ledger.

The five checks (each one SQL statement, so each reads one consistent snapshot)
    balances      every ledger balance (the ``ledger_balance`` rows, summed over a hot
                  account's buckets) = Σ its entries, in its normal direction. Balances are
                  "now", not as of the period: this check ignores the period.
    usage_ledger  per usage transaction (reference ``usage:…``) effective in the period and
                  per currency: Σ its events' amounts (tokens: Σ input + cache read + cache
                  write + output) = its legs on the customer's own accounts (the wallet,
                  ``tokens:<id>``); the other side is a hot account the ledger's own balance
                  rule ties to it.
    invoice_usage per invoice finalized in the period: Σ the events rated into its
                  subscription's period (in its currency) = the invoice's ``usage_charged``
                  exactly, and = Σ its usage lines' exact amounts — not those invoiced as
                  fees (metadata "fee": a prorated charge's adjustment, a first tier's flat
                  fee at zero usage), which no event rated — (within 1e-12 per event:
                  rating rounds each event's money to the ledger's 12 places, a line keeps
                  the counter's exact 24-place amount).
    invoice_ledger per invoice finalized in the period: its finalize posting's legs =
                  its figures (receivable = total, wallet = −usage, @Revenue = −(fees −
                  commitment breakage), @CommitmentBreakage = −breakage, @TaxPayable =
                  −tax, @Rounding = −rounding) and the balance applied = the
                  ``invoice:<id>:balance`` posting; per credit note of the period: its
                  @CommitmentBreakage leg = its ``commitment_breakage``, its @Revenue
                  leg = amount − that (breakage first, docs/pricing-file.md).
    stripe_clearing per movement of ``@StripeClearing`` effective in the period: an
                  invoice payment = its ``Payment`` row's amount; a refund of unused credits
                  = −its ``CreditRefund``; a refund of a payment names a payment we recorded;
                  a card top-up or credit sale is its own record (the ledger posting is the
                  top-up); any other movement is unexplained. And every Stripe ``Payment``
                  of the period has its movement.

Query shape (docs/reconciliation.md): each check is ``WITH cmp AS (<one row per compared
item: currency, expected, actual, bad>) SELECT totals GROUP BY currency UNION ALL the bad
rows LIMIT cap``: set-based aggregates (SUM … GROUP BY) driven by the indexed period column
(``ledger_transaction.effective_at``, ``invoicing_invoice.finalized_at``) and then foreign-key
indexes (``metering_event.ledger_transaction_id``, ``ledger_entry.transaction_id``); no event
or entry row comes to Python. The balances check reads every entry once (a hash aggregate):
a daily job's cost, measured in docs/reconciliation.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import connection, transaction
from django.utils import timezone

from billing import outbox
from billing.models import EventType
from invoicing.models import ReconciliationRun, ReconciliationStatus

log = logging.getLogger(__name__)

DIFFERENCES_CAP = 50  # per check, in the stored JSON; difference_count keeps the real number
LEDGER_QUANTUM = Decimal("1e-12")
ZERO = Decimal(0)


@dataclass(frozen=True)
class Check:
    name: str
    label: str
    sql: str  # the body of the ``cmp`` CTE (plus CTEs before it, ending with ``cmp AS (…)``)


# Each cmp row: currency, item (what differs: "account 12 @Revenue"), cause, expected,
# actual, bad. %(start)s / %(end)s bound the period; %(currency)s '' = every currency.
BALANCES = Check(
    "balances",
    "Every ledger balance = Σ its entries",
    """
    b AS (SELECT account_id, sum(posted) AS posted FROM ledger_balance GROUP BY account_id),
    e AS (SELECT account_id, sum(amount) AS signed FROM ledger_entry GROUP BY account_id),
    cmp AS (
        SELECT a.currency,
               'account ' || a.id || ' ' || a.code AS item,
               'balance row differs from the sum of the account''s entries' AS cause,
               CASE WHEN a.normal_balance = 'debit' THEN coalesce(e.signed, 0)
                    ELSE -coalesce(e.signed, 0) END AS expected,
               coalesce(b.posted, 0) AS actual
          FROM ledger_account a
          LEFT JOIN b ON b.account_id = a.id
          LEFT JOIN e ON e.account_id = a.id
    )""",
)

USAGE_LEDGER = Check(
    "usage_ledger",
    "Σ rated events = Σ ledger usage postings",
    """
    t AS (SELECT id, reference FROM ledger_transaction
           WHERE effective_at >= %(start)s AND effective_at < %(end)s
             AND reference LIKE 'usage:%%'),
    ev AS (  -- one pass over the events: money per currency and tokens together
        SELECT t.id, e.currency AS cur, sum(e.amount) AS amount,
               sum(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens
                   + e.output_tokens) AS tokens
          FROM t JOIN metering_event e ON e.ledger_transaction_id = t.id
         GROUP BY t.id, e.currency
    ),
    evs AS (
        SELECT id, cur, sum(total) AS total FROM (
            SELECT id, cur, amount AS total FROM ev WHERE cur <> ''
            UNION ALL SELECT id, 'TOKENS', tokens FROM ev) AS u
         GROUP BY id, cur
    ),
    legs AS (
        SELECT t.id, en.currency AS cur, sum(en.amount) AS total
          FROM t JOIN ledger_entry en ON en.transaction_id = t.id
          JOIN ledger_account a ON a.id = en.account_id AND NOT a.is_hot
         GROUP BY t.id, en.currency
    ),
    cmp AS (
        SELECT coalesce(evs.cur, legs.cur) AS currency,
               'transaction ' || t.id || ' ' || t.reference AS item,
               CASE WHEN legs.id IS NULL THEN 'events with no leg in their transaction'
                    WHEN evs.id IS NULL THEN 'a usage leg no event explains'
                    ELSE 'Σ events ≠ the transaction''s leg' END AS cause,
               coalesce(evs.total, 0) AS expected, coalesce(legs.total, 0) AS actual
          FROM evs FULL JOIN legs ON legs.id = evs.id AND legs.cur = evs.cur
          JOIN t ON t.id = coalesce(evs.id, legs.id)
    )""",
)

_FINALIZED = """
    inv AS (SELECT id, display_number, subscription_id, period_start, currency, total,
                   usage_charged, fees_precise, tax, rounding, balance_applied,
                   commitment_breakage, commitment_deferred, kind, ledger_transaction_id
              FROM invoicing_invoice
             WHERE finalized_at >= %(start)s AND finalized_at < %(end)s)"""

INVOICE_USAGE = Check(
    "invoice_usage",
    "Σ invoice usage lines = Σ rated events of the period",
    _FINALIZED
    + """,
    -- a plan billing a charge on its own cadence (a quarter) invoices that charge's usage
    -- with the period that ends its charge period, not with the period it was rated in:
    -- its invoices are not compared per period (docs/reconciliation.md)
    own AS (SELECT s.id FROM billing_subscription s
             WHERE s.id IN (SELECT subscription_id FROM inv)
               AND EXISTS (SELECT FROM billing_plancharge c
                            WHERE c.plan_id = s.plan_id AND c.interval <> '')),
    ev AS (SELECT inv.id, sum(e.amount) AS total, count(e.id) AS n
             FROM inv LEFT JOIN metering_event e
               ON e.subscription_id = inv.subscription_id
              AND e.period_start = inv.period_start AND e.currency = inv.currency
              AND inv.kind = 'period'  -- a commitment invoiced in advance has no usage
            WHERE inv.subscription_id NOT IN (SELECT id FROM own)
            GROUP BY inv.id),
    ln AS (SELECT l.invoice_id AS id, sum(l.amount_precise) AS precise
             FROM inv JOIN invoicing_invoiceline l ON l.invoice_id = inv.id
            WHERE l.kind = 'usage' AND NOT coalesce((l.metadata->>'fee')::boolean, false)
            GROUP BY l.invoice_id),
    cmp AS (
        SELECT inv.currency, 'invoice ' || inv.id || ' ' || inv.display_number AS item,
               'usage_charged ≠ Σ the period''s rated events' AS cause,
               coalesce(ev.total, 0) AS expected, inv.usage_charged AS actual,
               0 AS tolerance, true AS in_total
          FROM inv JOIN ev ON ev.id = inv.id
        UNION ALL
        SELECT inv.currency, 'invoice ' || inv.id || ' ' || inv.display_number,
               'Σ usage lines ≠ Σ the period''s rated events',
               coalesce(ev.total, 0), coalesce(ln.precise, 0),
               1e-12 * (coalesce(ev.n, 0) + 1), false
          FROM inv JOIN ev ON ev.id = inv.id LEFT JOIN ln ON ln.id = inv.id
    )""",
)

INVOICE_LEDGER = Check(
    "invoice_ledger",
    "Finalized invoices = their ledger postings",
    _FINALIZED
    + """,
    legs AS (
        SELECT inv.id,
               sum(en.amount) FILTER (WHERE a.code LIKE 'receivable:%%') AS receivable,
               sum(en.amount) FILTER (WHERE NOT a.is_hot AND a.code NOT LIKE 'receivable:%%')
                 AS wallet,
               sum(en.amount) FILTER (WHERE a.code = '@Revenue') AS revenue,
               sum(en.amount) FILTER (WHERE a.code = '@CommitmentBreakage') AS breakage,
               sum(en.amount) FILTER (WHERE a.code = '@CommitmentPrepaid') AS prepaid,
               sum(en.amount) FILTER (WHERE a.code = '@TaxPayable') AS tax,
               sum(en.amount) FILTER (WHERE a.code = '@Rounding') AS rounding
          FROM inv JOIN ledger_entry en ON en.transaction_id = inv.ledger_transaction_id
          JOIN ledger_account a ON a.id = en.account_id
         GROUP BY inv.id),
    bal AS (
        SELECT inv.id, -sum(en.amount) AS applied
          FROM inv JOIN ledger_transaction t ON t.reference = 'invoice:' || inv.id || ':balance'
          JOIN ledger_entry en ON en.transaction_id = t.id
          JOIN ledger_account a ON a.id = en.account_id AND a.code LIKE 'receivable:%%'
         GROUP BY inv.id),
    cmp AS (
        SELECT inv.currency, 'invoice ' || inv.id || ' ' || inv.display_number AS item,
               f.cause, f.expected, coalesce(f.actual, 0) AS actual,
               f.cause = 'receivable leg ≠ total' AS in_total
          FROM inv LEFT JOIN legs ON legs.id = inv.id LEFT JOIN bal ON bal.id = inv.id
          CROSS JOIN LATERAL (VALUES
              ('receivable leg ≠ total', inv.total, legs.receivable),
              ('wallet leg ≠ −usage charged', -inv.usage_charged, legs.wallet),
              ('@Revenue leg ≠ −(fees − breakage − deferred)',
               -(inv.fees_precise - inv.commitment_breakage - inv.commitment_deferred),
               legs.revenue),
              ('@CommitmentPrepaid leg ≠ −deferred', -inv.commitment_deferred, legs.prepaid),
              ('@CommitmentBreakage leg ≠ −breakage', -inv.commitment_breakage,
               legs.breakage),
              ('@TaxPayable leg ≠ −tax', -inv.tax, legs.tax),
              ('@Rounding leg ≠ −rounding', -inv.rounding, legs.rounding),
              ('balance posting ≠ balance applied', inv.balance_applied, bal.applied)
          ) AS f(cause, expected, actual)
        UNION ALL  -- credit notes of the period: the breakage they took back, and the rest
        SELECT i.currency, 'credit note ' || cn.id || ' ' || cn.display_number,
               f.cause, f.expected, coalesce(f.actual, 0), false
          FROM invoicing_creditnote cn JOIN invoicing_invoice i ON i.id = cn.invoice_id
          JOIN ledger_transaction t ON t.id = cn.ledger_transaction_id
          CROSS JOIN LATERAL (
              SELECT sum(en.amount) FILTER (WHERE a.code = '@Revenue') AS revenue,
                     sum(en.amount) FILTER (WHERE a.code = '@CommitmentBreakage') AS breakage
                FROM ledger_entry en JOIN ledger_account a ON a.id = en.account_id
               WHERE en.transaction_id = cn.ledger_transaction_id) l
          CROSS JOIN LATERAL (VALUES
              ('credit note @Revenue leg ≠ amount − breakage',
               cn.amount - cn.commitment_breakage, l.revenue),
              ('credit note @CommitmentBreakage leg ≠ breakage', cn.commitment_breakage,
               l.breakage)
          ) AS f(cause, expected, actual)
         WHERE t.effective_at >= %(start)s AND t.effective_at < %(end)s
    )""",
)

STRIPE_CLEARING = Check(
    "stripe_clearing",
    "Payments recorded = the Stripe clearing account's movements",
    """
    mv AS (
        SELECT t.id, t.reference, en.currency, sum(en.amount) AS amount
          FROM ledger_transaction t
          JOIN ledger_entry en ON en.transaction_id = t.id
          JOIN ledger_account a ON a.id = en.account_id AND a.code = '@StripeClearing'
         WHERE t.effective_at >= %(start)s AND t.effective_at < %(end)s
         GROUP BY t.id, t.reference, en.currency),
    rec AS (
        SELECT p.ledger_transaction_id AS id, p.currency, p.amount,
               'payment ' || p.provider_payment_id AS what
          FROM invoicing_payment p JOIN ledger_transaction t ON t.id = p.ledger_transaction_id
         WHERE p.provider = 'stripe' AND t.effective_at >= %(start)s AND t.effective_at < %(end)s
        UNION ALL
        SELECT r.money_transaction_id, r.currency, -r.amount, 'credit refund ' || r.id
          FROM invoicing_creditrefund r JOIN ledger_transaction t ON t.id = r.money_transaction_id
         WHERE r.method = 'stripe' AND t.effective_at >= %(start)s AND t.effective_at < %(end)s
    ),
    refunds AS (  -- refunds of invoice payments: explained by the payment they name
        SELECT mv.id, mv.currency, mv.amount, 'refund of ' || p.provider_payment_id AS what
          FROM mv JOIN invoicing_payment p
            ON p.provider = 'stripe' AND p.provider_payment_id = split_part(mv.reference, ':', 3)
         WHERE mv.reference LIKE 'refund:stripe:%%'
    ),
    own AS (  -- card top-ups and credit sales: the posting is the record
        SELECT mv.id, mv.currency, mv.amount, 'card top-up / credit sale' AS what FROM mv
         WHERE mv.reference ~ '^(top-up:[0-9]+:)?(stripe-checkout|auto-top-up):'
            OR mv.reference LIKE 'unapplied:stripe%%'
    ),
    expected AS (SELECT * FROM rec UNION ALL SELECT * FROM refunds UNION ALL SELECT * FROM own),
    cmp AS (
        SELECT coalesce(x.currency, mv.currency) AS currency,
               coalesce(x.what, 'transaction ' || mv.id)
                 || coalesce(' (' || mv.reference || ')', '') AS item,
               CASE WHEN mv.id IS NULL THEN 'recorded, but no clearing movement'
                    WHEN x.id IS NULL THEN 'clearing movement with no recorded payment'
                    ELSE 'recorded amount ≠ clearing movement' END AS cause,
               coalesce(x.amount, 0) AS expected, coalesce(mv.amount, 0) AS actual
          FROM expected x FULL JOIN mv ON mv.id = x.id AND mv.currency = x.currency
    )""",
)

CHECKS = (BALANCES, USAGE_LEDGER, INVOICE_USAGE, INVOICE_LEDGER, STRIPE_CLEARING)


def _statement(check: Check) -> str:
    # A check may compare several figures per item (an invoice: its total, its usage …):
    # ``in_total`` names the one whose sums the totals show; ``tolerance`` a row's allowance.
    tolerance = "tolerance" if "tolerance" in check.sql else "0"
    in_total = "in_total" if "in_total" in check.sql else "true"
    return f"""
    WITH {check.sql.strip()},
    scoped AS (
        SELECT currency, item, cause, expected, actual,
               abs(expected - actual) > {tolerance} AS bad, {in_total} AS in_total
          FROM cmp WHERE %(currency)s = '' OR currency = %(currency)s
    )
    SELECT 'total', currency, NULL, NULL, sum(expected) FILTER (WHERE in_total),
           sum(actual) FILTER (WHERE in_total), count(*) FILTER (WHERE in_total),
           count(*) FILTER (WHERE bad)
      FROM scoped GROUP BY currency
    UNION ALL
    (SELECT 'diff', currency, item, cause, expected, actual, 1, 1
       FROM scoped WHERE bad ORDER BY currency, item LIMIT %(cap)s)
    """


def _text(value: Decimal | None) -> str:
    value = value if value is not None else ZERO
    return format(value.normalize() if value else ZERO, "f")


def run_check(check: Check, *, start: datetime, end: datetime, currency: str = "") -> dict:
    """One check over [start, end): per-currency totals and its differences (capped)."""
    params: dict[str, datetime | str | int] = {
        "start": start,
        "end": end,
        "currency": currency,
        "cap": DIFFERENCES_CAP,
    }
    with connection.cursor() as cursor:
        cursor.execute(_statement(check), params)
        rows = cursor.fetchall()
    totals: dict[str, dict[str, Any]] = {}
    differences = []
    count = 0
    for kind, cur, item, cause, expected, actual, compared, bad in rows:
        if kind == "total":
            totals[cur] = {
                "expected": _text(expected),
                "actual": _text(actual),
                "compared": compared,
                "differences": bad,
            }
            count += bad
        else:
            differences.append(
                {
                    "currency": cur,
                    "item": item,
                    "cause": cause,
                    "expected": _text(expected),
                    "actual": _text(actual),
                    "difference": _text(actual - expected),
                }
            )
    return {
        "name": check.name,
        "label": check.label,
        "passed": count == 0,
        "difference_count": count,
        "totals": dict(sorted(totals.items())),
        "differences": differences,
    }


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def run_reconciliation(
    *,
    start: datetime,
    end: datetime,
    currency: str = "",
    triggered_by: str = "",
    alert: bool = True,
) -> ReconciliationRun:
    """Run every check over [start, end) for one currency (or all: ``""``) and store the
    result in the period's one ``ReconciliationRun`` (a re-run replaces it). Differences
    raise an alert: a ``reconciliation.failed`` outbound event (once per distinct set of
    differences) and, after commit, an e-mail to finance."""
    if end <= start:
        raise ValueError("the period must end after it starts")
    started = timezone.now()
    clock = time.monotonic()
    results = [run_check(c, start=start, end=end, currency=currency) for c in CHECKS]
    count = sum(r["difference_count"] for r in results)
    status = ReconciliationStatus.FAILED if count else ReconciliationStatus.PASSED
    fields = {
        "status": status,
        "checks": results,
        "difference_count": count,
        "triggered_by": triggered_by[:150],
        "started_at": started,
        "finished_at": timezone.now(),
        "duration_ms": int((time.monotonic() - clock) * 1000),
    }
    with transaction.atomic():
        # The unique (period, scope) decides; the row lock makes two runs queue.
        run, created = ReconciliationRun.objects.select_for_update().get_or_create(
            period_start=start, period_end=end, scope=currency, defaults=fields
        )
        if not created:
            for name, value in fields.items():
                setattr(run, name, value)
            run.runs += 1
        if count and alert:
            _alert(run)
        run.save()
    return run


def reconcile_day(*, day: date, currency: str = "", triggered_by: str = "") -> ReconciliationRun:
    start, end = day_bounds(day)
    return run_reconciliation(start=start, end=end, currency=currency, triggered_by=triggered_by)


def _digest(run: ReconciliationRun) -> str:
    differences = [(c["name"], c["differences"]) for c in run.checks if not c["passed"]]
    return hashlib.sha256(json.dumps(differences, sort_keys=True).encode()).hexdigest()[:16]


def alert_data(run: ReconciliationRun) -> dict[str, Any]:
    return {
        "object": "reconciliation_run",
        "id": run.pk,
        "period_start": run.period_start.isoformat().replace("+00:00", "Z"),
        "period_end": run.period_end.isoformat().replace("+00:00", "Z"),
        "scope": run.scope or None,
        "difference_count": run.difference_count,
        "failed_checks": [c["name"] for c in run.checks if not c["passed"]],
        "differences": [
            {"check": c["name"], **d} for c in run.checks for d in c["differences"][:5]
        ],
    }


def alert_recipients() -> list[str]:
    """``RECONCILIATION_ALERT_EMAILS`` (settings); empty: the active superusers' addresses."""
    configured = list(getattr(settings, "RECONCILIATION_ALERT_EMAILS", []) or [])
    if configured:
        return configured
    users = get_user_model().objects.filter(is_active=True, is_superuser=True).exclude(email="")
    return sorted(set(users.values_list("email", flat=True)))


def _alert(run: ReconciliationRun) -> None:
    if run.pk is None:  # pragma: no cover - get_or_create saved it
        run.save()
    emitted = outbox.emit(
        EventType.RECONCILIATION_FAILED,
        data=alert_data(run),
        dedupe_key=f"reconciliation.failed:{run.pk}:{_digest(run)}",
    )
    if emitted is None:  # these very differences were raised before
        return
    run.alerted_at = timezone.now()
    subject = f"Reconciliation failed: {run}: {run.difference_count} difference(s)"
    lines = [subject, ""]
    for check in run.checks:
        mark = "ok" if check["passed"] else f"FAILED ({check['difference_count']})"
        lines.append(f"{check['label']}: {mark}")
        for d in check["differences"][:10]:
            lines.append(
                f"  {d['currency']} {d['item']}: {d['cause']}; expected {d['expected']}, "
                f"actual {d['actual']}"
            )
    body = "\n".join(lines)
    recipients = alert_recipients()
    if recipients:
        transaction.on_commit(
            lambda: send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients),
            robust=True,
        )
    else:
        log.error("%s (no RECONCILIATION_ALERT_EMAILS and no superuser e-mail)", subject)
