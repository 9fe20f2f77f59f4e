"""Metering tasks: thin wrappers over services, safe to run twice."""

from celery import shared_task

from metering import inbox


@shared_task(acks_late=True, ignore_result=True)
def rate_incoming_events() -> int:
    """Queued by each asynchronous acceptance (at most one waiting), and by beat every 10 s
    as a safety net: rate the pending incoming events (``metering.inbox``)."""
    return inbox.rate_until_empty()
