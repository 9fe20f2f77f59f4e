"""Webhook tasks: thin, idempotent (a delivery is claimed before each attempt)."""

from celery import shared_task

from billing.webhooks import delivery


@shared_task(acks_late=True)
def fan_out_event(event_id: int) -> int:
    """After an event's commit: its deliveries made and their sends queued."""
    return len(delivery.fan_out(event_id=event_id))


@shared_task(acks_late=True)
def send_webhook(delivery_id: int) -> str | None:
    """One attempt of a delivery, if it is due and nobody else holds it."""
    sent = delivery.send_delivery(delivery_id=delivery_id)
    return None if sent is None else sent.status


@shared_task(acks_late=True)
def sweep_webhooks() -> dict:
    """Beat, every minute: lost fan-outs, and the deliveries due for an attempt."""
    result = delivery.sweep()
    return {"fanned_out": result.fanned_out, "queued": result.queued}
