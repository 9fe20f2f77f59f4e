"""Reads of metering: usage events as the API lists them, and a customer's balance with the
allowances its counters have used."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet

from billing.models import Customer
from billing.selectors import customer_credits
from ledger import selectors as ledger_selectors
from metering.models import Event, IncomingEvent, PeriodUsage


def list_events(
    *,
    customer: Customer,
    since: datetime | None = None,
    until: datetime | None = None,
    event_name: str | None = None,
) -> QuerySet[Event]:
    """The customer's events stamped in [``since``, ``until``), newest first: by
    ``timestamp`` then ``id``, both descending (a unique key, so pages neither repeat nor
    skip a row). The (customer, timestamp) index serves the filter and the order."""
    events = (
        Event.objects.filter(customer=customer)
        .select_related("model_price")
        .order_by("-timestamp", "-id")
    )
    if since is not None:
        events = events.filter(timestamp__gte=since)
    if until is not None:
        events = events.filter(timestamp__lt=until)
    if event_name is not None:
        events = events.filter(event_name=event_name)
    return events


def events_after(events: QuerySet[Event], *, after: Event) -> QuerySet[Event]:
    """The events of ``events`` that come after ``after`` in its newest-first order. The
    redundant ``timestamp <= t`` bounds the index scan; the rest breaks ties by id."""
    return events.filter(
        Q(timestamp__lte=after.timestamp)
        & (Q(timestamp__lt=after.timestamp) | Q(timestamp=after.timestamp, id__lt=after.pk))
    )


def event_cursor(*, event_id: int, customer: Customer) -> Event | None:
    """The customer's event a page continues after; None if it has no such event."""
    return Event.objects.filter(pk=event_id, customer=customer).only("id", "timestamp").first()


def event_exists(*, customer: Customer, idempotency_key: str) -> bool:
    return Event.objects.filter(customer=customer, idempotency_key=idempotency_key).exists()


def list_incoming(
    *,
    customer: Customer,
    status: str | None = None,
    idempotency_key: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    event_name: str | None = None,
) -> QuerySet[IncomingEvent]:
    """The customer's events accepted asynchronously and not rated (pending, or refused by
    rating), newest arrival first."""
    rows = IncomingEvent.objects.filter(customer=customer).order_by("-id")
    if status is not None:
        rows = rows.filter(status=status)
    if idempotency_key is not None:
        rows = rows.filter(idempotency_key=idempotency_key)
    if since is not None:
        rows = rows.filter(timestamp__gte=since)
    if until is not None:
        rows = rows.filter(timestamp__lt=until)
    if event_name is not None:
        rows = rows.filter(event_name=event_name)
    return rows


def customer_balance(customer: Customer) -> dict[str, Any]:
    """Wallet balances (posted, held, available), live credit grants and, for the live
    subscription's current period, each metered allowance with what the counters used."""
    balances = []
    credit_wallets = []  # read once: the credits below show the same balance as the list
    for wallet in customer.wallets.select_related("account").order_by("currency"):
        view = ledger_selectors.get_balance(account=wallet.account)
        if wallet.currency == "CREDITS":
            credit_wallets.append((wallet, view))
        balances.append(
            {
                "currency": view.currency,
                "posted": view.posted,
                "held": view.held,
                "available": view.available,
            }
        )
    allowances = []
    live = customer.subscriptions.exclude(status="canceled").select_related("plan").first()
    if live is not None:
        used_by_meter = dict(
            PeriodUsage.objects.filter(
                subscription=live, period_start=live.current_period_start
            ).values_list("meter_id", "quantity")
        )
        for charge in live.plan.charges.select_related("meter").order_by("id"):
            used = min(used_by_meter.get(charge.meter_id, Decimal(0)), charge.included_quantity)
            allowances.append(
                {
                    "meter": charge.meter.code,
                    "included": charge.included_quantity,
                    "used": used,
                    "remaining": max(charge.included_quantity - used, 0),
                }
            )
    credits = []
    for wallet in customer_credits(customer, wallets=credit_wallets):
        credits += [
            {
                "grant_id": g.pk,
                "name": g.name,
                "source": g.source,
                "priority": g.priority,
                "currency": g.currency,
                "granted": g.amount,
                "remaining": g.remaining,
                "expires_at": g.expires_at,
            }
            for g in wallet["live"]
        ]
        if wallet["ungranted"] > 0:
            credits.append(
                {
                    "grant_id": None,
                    "name": "Credits outside any grant",
                    "source": None,
                    "priority": None,
                    "currency": wallet["currency"],
                    "granted": None,
                    "remaining": wallet["ungranted"],
                    "expires_at": None,
                }
            )
    return {
        "customer": customer.external_id,
        "balances": balances,
        "credits": credits,
        "allowances": allowances,
    }
