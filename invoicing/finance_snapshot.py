"""The finance home's figures, computed ahead into a stored snapshot.

``invoicing.finance.finance_home`` aggregates counters and invoices over windows whose
rows grow with customers × days (docs/finance.md, *Scale*): too slow for a page at
100,000 customers. So the figures are computed by ``refresh`` — every few minutes by a
Celery beat task (``invoicing.tasks.refresh_finance_snapshot``) and on demand by the
home's *Refresh now* button — into one ``FinanceSnapshot`` row, and the page reads that
row only (``home``: one query), computing inline only when no snapshot exists yet.

- **Exact**: the payload is JSON whose amounts are Decimal strings (``str(Decimal)`` and
  back is exact, exponent included: ``0E-12`` stays ``0E-12``), never floats.
- **One writer**: a refresh takes a transaction-scoped PostgreSQL advisory lock with
  ``pg_try_advisory_xact_lock``; a refresh that finds it taken returns ``None`` at once
  (the one running will write figures as fresh as its own), and the row is keyed uniquely,
  so concurrent refreshes leave one snapshot.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from invoicing import finance
from invoicing.models import FinanceSnapshot

HOME_KEY = "home"
# The advisory lock of the refresh, in the two-integer key space: "fina", 1.
REFRESH_LOCK = (0x66696E61, 1)
# The beat task refreshes every REFRESH_MINUTES; a snapshot older than STALE_AFTER is
# flagged on the page (the beat is not running).
REFRESH_MINUTES = 5
STALE_AFTER = timedelta(minutes=3 * REFRESH_MINUTES)
VERSION = 2  # of the payload's shape: a snapshot of another version is computed again


# --- the payload: FinanceHome ⇄ JSON, amounts as Decimal strings -------------------------------


def _money(value: Decimal) -> str:
    return str(value)


def _margin_out(m: finance.Margin | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {
        "label": m.label,
        "revenue": _money(m.revenue),
        "cost": _money(m.cost),
        "customer_id": m.customer_id,
    }


def _margin_in(data: dict[str, Any] | None) -> finance.Margin | None:
    if data is None:
        return None
    return finance.Margin(
        label=data["label"],
        revenue=Decimal(data["revenue"]),
        cost=Decimal(data["cost"]),
        customer_id=data["customer_id"],
    )


def to_payload(home: finance.FinanceHome) -> dict[str, Any]:
    """The home as JSON-ready data: dates in ISO 8601, every amount a Decimal string."""
    return {
        "version": VERSION,
        "as_of": home.as_of.isoformat(),
        "window_start": home.window_start.isoformat(),
        "margin_since": home.margin_since.isoformat(),
        "margin_month": home.margin_month.isoformat() if home.margin_month else None,
        "currencies": [
            {
                "currency": c.currency,
                "months": [
                    {
                        "start": m.start.isoformat(),
                        "rated": _money(m.rated),
                        "invoiced": _money(m.invoiced),
                    }
                    for m in c.months
                ],
                "mrr": _money(c.mrr),
                "mrr_before": _money(c.mrr_before),
                "aging": [
                    {"key": b.key, "label": b.label, "amount": _money(b.amount), "count": b.count}
                    for b in c.aging
                ],
                "top_customers": [
                    {
                        **asdict(t),
                        "invoiced": _money(t.invoiced),
                        "outstanding": _money(t.outstanding),
                    }
                    for t in c.top_customers
                ],
                "margin_total": _margin_out(c.margin_total),
                "margin_by_customer": [_margin_out(m) for m in c.margin_by_customer],
                "margin_by_model": [_margin_out(m) for m in c.margin_by_model],
                "credits_outstanding": _money(c.credits_outstanding),
                "credits_expiring": _money(c.credits_expiring),
                "grants_expiring": c.grants_expiring,
            }
            for c in home.currencies
        ],
    }


def from_payload(data: dict[str, Any]) -> finance.FinanceHome:
    """The home back from ``to_payload``'s data, equal to the one it was made from."""
    currencies = []
    for c in data["currencies"]:
        currencies.append(
            finance.CurrencyFinance(
                currency=c["currency"],
                months=[
                    finance.Month(
                        start=date.fromisoformat(m["start"]),
                        rated=Decimal(m["rated"]),
                        invoiced=Decimal(m["invoiced"]),
                    )
                    for m in c["months"]
                ],
                mrr=Decimal(c["mrr"]),
                mrr_before=Decimal(c["mrr_before"]),
                aging=[
                    finance.AgingBucket(b["key"], b["label"], Decimal(b["amount"]), b["count"])
                    for b in c["aging"]
                ],
                top_customers=[
                    finance.CustomerFigure(
                        customer_id=t["customer_id"],
                        name=t["name"],
                        external_id=t["external_id"],
                        invoiced=Decimal(t["invoiced"]),
                        outstanding=Decimal(t["outstanding"]),
                    )
                    for t in c["top_customers"]
                ],
                margin_total=_margin_in(c["margin_total"]),
                margin_by_customer=[m for m in map(_margin_in, c["margin_by_customer"]) if m],
                margin_by_model=[m for m in map(_margin_in, c["margin_by_model"]) if m],
                credits_outstanding=Decimal(c["credits_outstanding"]),
                credits_expiring=Decimal(c["credits_expiring"]),
                grants_expiring=c["grants_expiring"],
            )
        )
    return finance.FinanceHome(
        as_of=datetime.fromisoformat(data["as_of"]),
        window_start=datetime.fromisoformat(data["window_start"]),
        margin_since=date.fromisoformat(data["margin_since"]),
        margin_month=date.fromisoformat(data["margin_month"]) if data["margin_month"] else None,
        currencies=currencies,
    )


# --- refresh and read --------------------------------------------------------------------------


def refresh(*, now: datetime | None = None) -> FinanceSnapshot | None:
    """Compute the finance home's figures and store them as the snapshot. Returns the
    snapshot, or ``None`` when another refresh holds the lock (it will store figures at
    least as fresh; nothing is written twice)."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", list(REFRESH_LOCK))
            (locked,) = cursor.fetchone()
        if not locked:
            return None
        started = time.monotonic()
        home = finance.finance_home(now=now)
        duration_ms = round((time.monotonic() - started) * 1000)
        snapshot, _created = FinanceSnapshot.objects.update_or_create(
            key=HOME_KEY,
            defaults={
                "computed_at": home.as_of,
                "duration_ms": duration_ms,
                "payload": to_payload(home),
            },
        )
        return snapshot


def latest() -> FinanceSnapshot | None:
    return FinanceSnapshot.objects.filter(key=HOME_KEY).first()


def home() -> tuple[finance.FinanceHome, FinanceSnapshot | None]:
    """The figures the page shows: the stored snapshot (one query), or — no snapshot yet, or
    one of an older payload version — computed now and stored. The snapshot is ``None``
    only when another refresh was storing it meanwhile (the figures are computed inline)."""
    snapshot = latest()
    if snapshot is not None and snapshot.payload.get("version") == VERSION:
        return from_payload(snapshot.payload), snapshot
    snapshot = refresh()
    if snapshot is None:
        return finance.finance_home(), None
    return from_payload(snapshot.payload), snapshot


def is_stale(snapshot: FinanceSnapshot | None, *, now: datetime | None = None) -> bool:
    if snapshot is None:
        return False
    return (now or timezone.now()) - snapshot.computed_at > STALE_AFTER
