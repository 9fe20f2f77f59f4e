"""The transactional outbox: ``emit`` records what happened (``OutboundEvent``) inside the
caller's database transaction, so an event exists exactly when its change committed.

Every part of the product that has something to tell the seller's systems — an invoice
finalized, credits granted, an alert crossing — calls ``emit`` with a JSON-ready ``data``
object and, where the caller may run twice (Celery tasks are delivered at least once), a
``dedupe_key`` naming the occurrence (``"invoice.paid:inv_…"``): the second call then
records nothing and returns ``None``.

Once the caller's transaction commits, the event's fan-out to the webhook endpoints is
queued (``billing.webhooks``); if the broker is down then, the webhooks sweep finds the
event within a minute. Emitting costs one INSERT and one callback: nothing is sent inside
the caller's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from django.db import IntegrityError, transaction

from billing import webhooks
from billing.models import Customer, EventType, OutboundEvent


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def emit(
    event_type: EventType | str,
    *,
    data: Mapping[str, Any],
    customer: Customer | None = None,
    dedupe_key: str | None = None,
) -> OutboundEvent | None:
    """Record one outbound event; ``None`` when ``dedupe_key`` was recorded before."""
    kind = EventType(event_type)  # an unknown type is a programming error: ValueError
    event = OutboundEvent(
        public_id=new_event_id(),
        type=kind.value,
        customer=customer,
        data=dict(data),
        dedupe_key=dedupe_key,
    )
    if dedupe_key is None:
        event.save(force_insert=True)
        _fan_out_after_commit(event)
        return event
    # A savepoint, so that a duplicate leaves the caller's transaction usable.
    try:
        with transaction.atomic():
            event.save(force_insert=True)
    except IntegrityError:
        if OutboundEvent.objects.filter(dedupe_key=dedupe_key).exists():
            return None
        raise
    _fan_out_after_commit(event)
    return event


def _fan_out_after_commit(event: OutboundEvent) -> None:
    # robust: a broker that is down must not turn the caller's committed change into an
    # error; the sweep (beat, every minute) fans the event out instead.
    event_id = event.pk
    transaction.on_commit(lambda: webhooks.queue_fan_out(event_id), robust=True)
