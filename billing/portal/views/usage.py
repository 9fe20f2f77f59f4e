"""Balances and usage: the overview (balances, meters used, spent, the invoice as it
stands and its projection), the usage page with recent events, the chart's data, the
usage export (CSV), and the live fragments.

Live updates: the balance, usage and recent-events fragments are polled by htmx every
second. Polling was chosen over server-sent events because the product runs on WSGI
workers (gunicorn sync): an SSE stream holds a worker for as long as a portal is open, so
a few dozen open portals would exhaust the pool, while a poll is a short request any worker
answers, cheap (a handful of indexed queries on the usage counters, never raw events) and
cached by the browser when nothing changed (ETag → 304).
"""

from __future__ import annotations

import csv
from decimal import Decimal

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render

from billing.portal import selectors
from billing.portal.spreadsheet import safe_cell
from billing.portal.views.common import active_alerts, money, portal_view


def _exact(value: Decimal, currency: str) -> str:
    """An event's price exactly (they are often fractions of a cent), at least to the cent."""
    shown = value.normalize()
    exponent = shown.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:  # (not NaN or an infinity)
        shown = shown.quantize(Decimal("0.01"))
    return f"{shown:,f} {currency}".strip()


def _overview_context(customer) -> dict:
    subscription = selectors.live_subscription(customer)
    context = {"customer": customer, "subscription": subscription, "balances": [], "meters": []}
    for row in selectors.wallet_balances(customer):
        context["balances"].append(
            {
                "currency": row["currency"],
                "posted": money(row["posted"], row["currency"]),
                "held": money(row["held"], row["currency"]),
                "available": money(row["available"], row["currency"]),
                "negative": row["available"] < 0,
            }
        )
    if subscription is None:
        return context
    period = selectors.period_overview(subscription)
    for row in period["meters"]:
        quantity, included, meter = row["quantity"], row["included"], row["meter"]
        share = min(quantity / included * 100, Decimal(100)) if included else None
        context["meters"].append(
            {
                "name": meter.name or meter.code,
                "unit": meter.unit,
                "used": f"{quantity.normalize():,f}",
                "included": f"{included.normalize():,f}" if included else None,
                "percent": int(share) if share is not None else None,
                "over": included and quantity > included,
            }
        )
    currency = period["currency"]
    context.update(
        period_start=period["period_start"],
        period_end=period["period_end"],
        spent=money(period["spent"], currency),
        upcoming=money(period["upcoming"], currency),
        projected=money(period["projected"], currency),
        commitment_left=(
            money(period["commitment_left"], currency)
            if period["commitment_left"] is not None
            else None
        ),
    )
    return context


def _live(request, template: str, build) -> HttpResponse:
    etag = f'"{selectors.live_version(request.customer)}"'
    if request.headers.get("If-None-Match") == etag:
        return HttpResponse(status=304, headers={"ETag": etag})
    response = render(request, template, build(request.customer))
    response["ETag"] = etag
    response["Cache-Control"] = "private, no-cache"
    return response


@portal_view
def overview(request):
    context = _overview_context(request.customer)
    context["alerts"] = active_alerts(request.customer)
    return render(request, "portal/overview.html", context)


@portal_view
def overview_live(request):
    return _live(request, "portal/_overview_live.html", _overview_context)


def _recent_events(customer) -> dict:
    rows = []
    for event in selectors.recent_events(customer):
        prompt = event.input_tokens + event.cache_read_tokens + event.cache_write_tokens
        rows.append(
            {
                "at": event.timestamp,
                "name": event.event_name,
                "model": event.model or "—",
                "input": f"{prompt:,}",
                "cached": f"{event.cache_read_tokens:,}",
                "output": f"{event.output_tokens:,}",
                "amount": _exact(event.amount, event.currency),
                "transaction": event.ledger_transaction.reference
                if event.ledger_transaction
                else "—",
            }
        )
    return {"events": rows}


@portal_view
def usage(request):
    return render(
        request,
        "portal/usage.html",
        {"customer": request.customer, **_recent_events(request.customer)},
    )


@portal_view
def events_live(request):
    return _live(request, "portal/_events_live.html", _recent_events)


@portal_view
def usage_data(request):
    """Chart data: this period's charges by day, and tokens and charges by model, in the
    unit the customer is charged in; the by-model rows (with an "other usage" row for usage
    of meters no model carries) add up to ``total``, the period's usage charged."""
    subscription = selectors.live_subscription(request.customer)
    if subscription is None:
        currency = request.customer.currency
        return JsonResponse(
            {
                "currency": currency,
                "total": money(selectors.ZERO, currency),
                "totals": [],
                "days": [],
                "models": [],
            }
        )
    period = selectors.period_usage(subscription)
    unit, total, rows = period["unit"], period["total"], period["rows"]
    if unit in (selectors.CREDITS, "TOKENS"):  # shown exactly: the parts add up as they are
        shown = [money(row["amount"], unit) for row in rows]
    else:
        parts = selectors.split_to_minor_units([row["amount"] for row in rows], total, unit)
        shown = [f"{part:,} {unit}" for part in parts]
    return JsonResponse(
        {
            "currency": unit,
            "total": money(total, unit),
            "totals": [
                {
                    "model": row["model"],
                    "tokens": "—" if row["tokens"] is None else f"{row['tokens']:,}",
                    "amount": text,
                }
                for row, text in zip(rows, shown, strict=True)
            ],
            # decimal strings: the chart library turns them into screen positions only
            "days": [
                {"day": d["day"].isoformat(), "amount": str(d["amount"]), "events": d["events"]}
                for d in period["days"]
            ],
            "models": [
                {
                    "day": m["day"].isoformat(),
                    "model": m["model"],
                    "amount": str(m["amount"]),
                    "tokens": m["tokens"],
                }
                for m in period["models"]
            ],
        }
    )


class _Echo:
    def write(self, value):
        return value


@portal_view
def usage_csv(request):
    """Every event of the customer's current period (the last 90 days without a live
    subscription), as CSV."""
    since, events = selectors.usage_export(request.customer)
    writer = csv.writer(_Echo())
    header = [
        "timestamp",
        "idempotency_key",
        "event_name",
        "provider",
        "model",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "amount",
        "currency",
        "ledger_transaction",
    ]

    # Tuples, not model instances: building 1,000 Event objects (and their transactions)
    # cost most of the export's time (docs/benchmarks.md, Session 11).
    values = events.values_list(
        "timestamp",
        "idempotency_key",
        "event_name",
        "provider",
        "model",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "amount",
        "currency",
        "ledger_transaction__reference",
    )

    def rows():
        yield writer.writerow(header)
        for (
            at,
            key,
            name,
            provider,
            model,
            prompt,
            cache_read,
            cache_write,
            output,
            reasoning,
            amount,
            currency,
            reference,
        ) in values.iterator(chunk_size=2000):
            yield writer.writerow(
                [
                    at.isoformat(),
                    # text a client sent: never run as a formula by a spreadsheet
                    safe_cell(key),
                    safe_cell(name),
                    safe_cell(provider),
                    safe_cell(model),
                    prompt,
                    cache_read,
                    cache_write,
                    output,
                    reasoning,
                    f"{amount:f}",  # a number: a leading minus stays a minus
                    safe_cell(currency),
                    safe_cell(reference or ""),
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv")
    name = f"usage-{request.customer.external_id}-{since:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
