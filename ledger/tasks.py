"""Ledger tasks: thin wrappers over services, safe to run twice."""

from celery import shared_task

from ledger import services


@shared_task(acks_late=True)
def release_expired_holds() -> int:
    """Beat, every minute: release pending holds whose expiry has passed."""
    return services.release_expired_holds()
