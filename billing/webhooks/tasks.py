"""Webhook tasks: thin, idempotent (a delivery is claimed before each attempt)."""

from celery import shared_task
from django.conf import settings

from billing.webhooks import delivery


@shared_task(acks_late=True)
def fan_out_event(event_id: int) -> int:
    """After an event's commit: its deliveries made and their sends queued."""
    return len(delivery.fan_out(event_id=event_id))


# Above the attempt's total deadline (WEBHOOK_TOTAL_TIMEOUT) and below the claim's lease
# (delivery._lease: the deadline + 120 s), so a worker still on the attempt holds the claim.
SEND_SOFT_TIME_LIMIT = settings.WEBHOOK_TOTAL_TIMEOUT + 60
SEND_HARD_TIME_LIMIT = settings.WEBHOOK_TOTAL_TIMEOUT + 90


@shared_task(acks_late=True, soft_time_limit=SEND_SOFT_TIME_LIMIT, time_limit=SEND_HARD_TIME_LIMIT)
def send_webhook(delivery_id: int) -> str | None:
    """One attempt of a delivery, if it is due and nobody else holds it."""
    sent = delivery.send_delivery(delivery_id=delivery_id)
    return None if sent is None else sent.status


@shared_task(acks_late=True)
def sweep_webhooks() -> dict:
    """Beat, every minute: lost fan-outs, and the deliveries due for an attempt."""
    result = delivery.sweep()
    return {"fanned_out": result.fanned_out, "queued": result.queued}
