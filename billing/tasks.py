"""Billing tasks: thin wrappers over services, safe to run twice."""

from celery import shared_task

from billing import services


@shared_task(acks_late=True)
def purge_idempotency_records() -> int:
    """Beat, hourly: forget Idempotency-Keys older than the retention (48 hours)."""
    return services.purge_idempotency_records()
