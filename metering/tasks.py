"""Metering tasks: thin wrappers over services, safe to run twice."""

from celery import shared_task

from metering import alerts, inbox


@shared_task(acks_late=True, ignore_result=True)
def rate_incoming_events() -> int:
    """Queued by each asynchronous acceptance (at most one waiting), and by beat every 10 s
    as a safety net: rate the pending incoming events (``metering.inbox``)."""
    return inbox.rate_until_empty()


@shared_task(acks_late=True, ignore_result=True)
def evaluate_alerts() -> int:
    """Beat, every minute: every enabled alert evaluated (``metering.alerts``); a crossing
    fires once however many runs overlap. Returns how many fired."""
    return len(alerts.evaluate_alerts().triggered)
