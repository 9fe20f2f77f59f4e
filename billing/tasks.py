"""Billing tasks: thin wrappers over services, safe to run twice."""

from celery import shared_task

from billing import services
from billing.webhooks import tasks as webhook_tasks  # noqa: F401 - registers its tasks


@shared_task(acks_late=True)
def purge_idempotency_records() -> int:
    """Beat, hourly: forget Idempotency-Keys older than the retention (48 hours)."""
    return services.purge_idempotency_records()


@shared_task(acks_late=True)
def check_low_balances() -> int:
    """The balance and credits alerts (``billing.alerts``). Beat now runs every kind with
    ``metering.tasks.evaluate_alerts``; this name stays for messages queued before."""
    from billing import alerts

    return alerts.check_low_balances()


@shared_task(acks_late=True)
def expire_credit_grants() -> int:
    """Beat, every minute: what is left of credit grants past their expiry leaves the
    wallet for @CreditsExpired (idempotent: an ended grant is left alone)."""
    from billing import credits

    return credits.expire_due_grants()


@shared_task(acks_late=True)
def grant_plan_credits() -> int:
    """Beat, every minute: plans' recurring credits due now, granted once per subscription
    and grant period (billing.plan_credits; a unique constraint decides a race)."""
    from billing import plan_credits

    return plan_credits.grant_due()


@shared_task(acks_late=True)
def notify_expiring_credits() -> int:
    """Beat: credits.expiring, once per grant, CREDITS_EXPIRING_NOTICE_DAYS ahead."""
    from billing import credits

    return credits.notify_expiring()
