"""Invoicing tasks: thin wrappers over services, safe to run twice (late acknowledgement
and Redis redelivery both run a task again; every service here is idempotent)."""

from __future__ import annotations

from datetime import date, timedelta

from celery import shared_task
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from invoicing import auto_top_up, reconciliation, services


def _as_of(value: str | None):
    return parse_datetime(value) if value else None


def _queue_each(task, ids, as_of: str | None) -> int:
    """One task per id, sent through one broker producer (not one acquired per task)."""
    with task.app.producer_or_acquire() as producer:
        for pk in ids:
            task.apply_async((pk, as_of), producer=producer)
    return len(ids)


@shared_task(acks_late=True)
def close_due_periods(as_of: str | None = None) -> int:
    """Beat: queue one close task per subscription whose period has ended."""
    return _queue_each(
        close_subscription_period, services.due_subscription_ids(as_of=_as_of(as_of)), as_of
    )


# ignore_result: nothing reads a close's return value; storing 10,000 of them in Redis is
# a round trip per close for nothing.
@shared_task(acks_late=True, ignore_result=True)
def close_subscription_period(subscription_id: int, as_of: str | None = None) -> int:
    """Close the subscription's ended periods (one transaction each); a rerun closes none."""
    return services.close_subscription_periods(subscription_id=subscription_id, as_of=_as_of(as_of))


@shared_task(acks_late=True)
def open_due_periods(as_of: str | None = None) -> int:
    """Beat: queue one opening per subscription whose period opened without its commitment
    invoiced in advance (a first period; the close opens the ones it rolls into)."""
    return _queue_each(open_period, services.due_opening_ids(as_of=_as_of(as_of)), as_of)


@shared_task(acks_late=True, ignore_result=True)
def open_period(subscription_id: int, as_of: str | None = None) -> int | None:
    """Invoice the period's commitment in advance; a rerun finds the invoice made."""
    invoice = services.open_period(subscription_id=subscription_id, as_of=_as_of(as_of))
    return invoice.pk if invoice is not None else None


@shared_task(acks_late=True)
def finalize_due_invoices(as_of: str | None = None) -> int:
    """Beat: queue the finalization of every draft whose grace period has passed."""
    return _queue_each(finalize_invoice, services.due_draft_ids(as_of=_as_of(as_of)), as_of)


@shared_task(acks_late=True)
def finalize_invoice(invoice_id: int, as_of: str | None = None) -> str:
    return services.finalize_invoice(invoice_id=invoice_id, now=_as_of(as_of)).status


@shared_task(acks_late=True)
def invoice_finalized(invoice_id: int) -> None:
    """After a finalization has committed: collecting payment (a customer charged
    automatically), then the PDF and the e-mail."""
    services.after_finalization(invoice_id=invoice_id)


@shared_task(acks_late=True)
def follow_up_finalized_invoices() -> int:
    """Beat: queue again the follow-up (payment, PDF, e-mail) of finalized invoices whose
    task never ran (lost while the broker was down); the follow-up is idempotent."""
    return _queue_each_id(invoice_finalized, services.invoices_without_follow_up())


def _queue_each_id(task, ids) -> int:
    with task.app.producer_or_acquire() as producer:
        for pk in ids:
            task.apply_async((pk,), producer=producer)
    return len(ids)


@shared_task(acks_late=True)
def retry_due_payments() -> int:
    """Beat, hourly: charge past-due invoices again on the dunning schedule."""
    from invoicing import payments

    return payments.retry_due_payments()


@shared_task(acks_late=True)
def process_pending_stripe_events() -> int:
    """Beat: handle again the stored Stripe events whose handling failed."""
    from invoicing import webhooks

    return webhooks.process_pending()


@shared_task(acks_late=True)
def run_auto_top_ups() -> int:
    """Beat, every 30 seconds: start an auto top-up attempt for each wallet below its
    threshold, and queue the charge of each (and of attempts a lost task left in flight)."""
    started = auto_top_up.run_due()
    for attempt_id in [*started, *auto_top_up.resume_stalled()]:
        charge_auto_top_up.delay_on_commit(attempt_id)
    return len(started)


@shared_task(
    acks_late=True,
    autoretry_for=auto_top_up.TRANSIENT_STRIPE_ERRORS,
    retry_backoff=True,
    max_retries=5,
)
def charge_auto_top_up(attempt_id: int) -> str:
    """Charge one attempt; safe to run twice (the attempt's Stripe idempotency key)."""
    return auto_top_up.process_attempt(attempt_id=attempt_id).status


@shared_task(acks_late=True)
def retry_pending_credit_refunds() -> int:
    """Beat, every 5 minutes: Stripe refunds of unused credits left pending by a process
    that died between asking Stripe and booking are sent again (the same idempotency key:
    refunded once) and booked."""
    from invoicing import credit_refunds

    return credit_refunds.retry_stale_pending()


@shared_task(acks_late=True)
def reconcile_yesterday(day: str | None = None) -> str:
    """Beat, daily: reconcile yesterday (UTC), or ``day`` (YYYY-MM-DD), every currency. Safe
    to run twice: the run of a day is one row, and an alert is raised once per set of
    differences."""
    the_day = date.fromisoformat(day) if day else timezone.now().date() - timedelta(days=1)
    run = reconciliation.reconcile_day(day=the_day, triggered_by="beat")
    return f"{run.status}: {run.difference_count} difference(s)"


@shared_task(acks_late=True, ignore_result=True)
def refresh_finance_snapshot() -> bool:
    """Beat, every few minutes: compute the finance home's figures into their snapshot
    (``invoicing.finance_snapshot``). False when another refresh was running (it stores
    them); running twice only computes them twice."""
    from invoicing import finance_snapshot

    return finance_snapshot.refresh() is not None
