"""Reads of metering: usage events as the API lists them."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q, QuerySet

from billing.models import Customer
from metering.models import Event, IncomingEvent


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
