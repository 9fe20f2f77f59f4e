"""Closing a period: one billing period of one subscription becomes a draft invoice with its
lines, exactly once (the unique constraint decides between two racing closers), and the
subscription rolls on to its next period (which opens: a commitment billed in advance is
invoiced, ``invoicing.services.opening``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from billing import services as billing_services
from billing.models import EventType, Plan, Subscription, SubscriptionPhase, SubscriptionStatus
from billing.periods import charge_cadence, period_of, plan_period_of, subscription_period
from invoicing import errors
from invoicing.events import emit_invoice_event
from invoicing.models import Invoice, InvoiceKind
from invoicing.selectors import compute_invoice
from invoicing.services.invoices import apply_figures, resolve_now, write_lines
from invoicing.services.opening import open_commitment_invoice

LIVE = (SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)


def _is_due(subscription: Subscription, as_of: datetime) -> bool:
    if subscription.status in LIVE:
        return subscription.current_period_end <= as_of
    # canceled now: its last, partial period is invoiced once it has ended
    return (
        subscription.status == SubscriptionStatus.CANCELED
        and subscription.ended_at is not None
        and subscription.ended_at <= as_of
        and not Invoice.objects.filter(
            subscription=subscription,
            period_start=subscription.current_period_start,
            kind=InvoiceKind.PERIOD,
        ).exists()
    )


def _roll(subscription: Subscription, now: datetime) -> None:
    """Move a subscription past the period just closed: end it (cancel at period end), end
    its trial, apply a scheduled plan change, and start the next period."""
    end = subscription.current_period_end
    fields = ["current_period_start", "current_period_end"]
    # "At period end" is the plan period's end: a yearly plan billing its usage monthly is
    # canceled or changed at the year's end, its months rolling on until then.
    at_plan_end = plan_period_of(subscription, subscription.current_period_start)[1] == end
    if subscription.status == SubscriptionStatus.CANCELED:
        # Canceled now: nothing follows its last period, the one containing the end. A
        # subscription canceled while the close was behind (a back-dated one, or beat late)
        # still has periods up to its end to invoice: roll on to the next of them.
        if subscription.ended_at is not None and subscription.ended_at > end:
            subscription.current_period_start, subscription.current_period_end = period_of(
                subscription, end
            )
            subscription.save(update_fields=fields)
        return
    if subscription.cancel_at_period_end and at_plan_end:
        SubscriptionPhase.objects.filter(subscription=subscription, ends_at__isnull=True).update(
            ends_at=end
        )
        subscription.status = SubscriptionStatus.CANCELED
        subscription.canceled_at = subscription.canceled_at or now
        subscription.ended_at = end
        subscription.save(update_fields=["status", "canceled_at", "ended_at"])
        billing_services.emit_subscription_event(
            EventType.SUBSCRIPTION_CANCELED,
            subscription,
            f"subscription.canceled:{subscription.pk}",
        )
        return
    if subscription.status == SubscriptionStatus.TRIALING:
        subscription.status = SubscriptionStatus.ACTIVE
        fields.append("status")
    if subscription.scheduled_plan_id is not None and at_plan_end:
        SubscriptionPhase.objects.filter(subscription=subscription, ends_at__isnull=True).update(
            ends_at=end
        )
        changed = SubscriptionPhase.objects.create(
            subscription=subscription, plan_id=subscription.scheduled_plan_id, starts_at=end
        )
        subscription.plan_id = subscription.scheduled_plan_id
        subscription.scheduled_plan_id = None
        fields += ["plan", "scheduled_plan"]
    else:
        changed = None
    loaded = subscription.plan if Subscription.plan.is_cached(subscription) else None
    if loaded is None or loaded.pk != subscription.plan_id:
        loaded = Plan.objects.only(
            "interval", "interval_count", "charges_interval", "charges_interval_count"
        ).get(pk=subscription.plan_id)
    interval, count = charge_cadence(loaded)  # the billing periods: the charges' cadence
    subscription.current_period_start, subscription.current_period_end = subscription_period(
        anchor=subscription.billing_anchor,
        interval=interval,
        count=count,
        started_at=subscription.started_at,
        trial_ends_at=subscription.trial_ends_at,
        at=end,
    )
    subscription.save(update_fields=fields)
    if changed is not None:  # the plan scheduled for the period end applies now
        billing_services.emit_subscription_event(
            EventType.SUBSCRIPTION_UPDATED, subscription, f"subscription.updated:phase:{changed.pk}"
        )


@dataclass
class CloseResult:
    invoice: Invoice
    created: bool
    more_due: bool = False  # the next period has ended too (an operator catching up)


@transaction.atomic
def close_period(*, subscription_id: int, as_of: datetime | None = None) -> CloseResult | None:
    """Close the subscription's current period if it has ended by ``as_of``: a draft invoice
    with its lines, and the subscription rolled to its next period, in one transaction.
    None when nothing is due; the existing invoice when the period was closed already."""
    as_of = resolve_now(as_of)
    # The rating lock first (as plan changes take it), then the subscription row; the
    # customer found and its lock taken in one statement.
    if billing_services.lock_subscription_customer(subscription_id) is None:
        raise errors.InvoicingNotFound(f"subscription {subscription_id} does not exist")
    subscription = (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("plan", "customer")
        .get(pk=subscription_id)
    )
    period_start, period_end = subscription.current_period_start, subscription.current_period_end
    existing = Invoice.objects.filter(
        subscription=subscription, period_start=period_start, kind=InvoiceKind.PERIOD
    ).first()
    if existing is not None:
        return CloseResult(existing, created=False)
    if not _is_due(subscription, as_of):
        return None
    draft = compute_invoice(
        subscription=subscription, period_start=period_start, period_end=period_end
    )
    invoice = Invoice(
        customer_id=subscription.customer_id,
        subscription=subscription,
        period_start=period_start,
        period_end=period_end,
        currency=draft.currency,
        grace_ends_at=max(period_end, subscription.ended_at or period_end)
        + settings.INVOICE_GRACE_PERIOD,
    )
    apply_figures(invoice, draft)
    try:
        with transaction.atomic():
            invoice.save()
    except IntegrityError:  # closed by another worker since we looked
        return CloseResult(
            Invoice.objects.get(
                subscription=subscription, period_start=period_start, kind=InvoiceKind.PERIOD
            ),
            False,
        )
    write_lines(invoice, draft.lines)
    emit_invoice_event(EventType.INVOICE_CREATED, invoice, f"invoice.created:{invoice.pk}")
    _roll(subscription, as_of)
    # The next period opens now: its commitment, billed in advance, is invoiced (a period
    # already over, an operator catching up, is invoiced too: its close draws on it).
    open_commitment_invoice(subscription, as_of)
    if subscription.status in LIVE:
        more_due = subscription.current_period_end <= as_of
    else:  # canceled: rolled on (above) while periods up to its end are left to invoice
        more_due = subscription.current_period_start != period_start and _is_due(
            subscription, as_of
        )
    return CloseResult(invoice, created=True, more_due=more_due)


def due_subscription_ids(*, as_of: datetime | None = None, limit: int | None = None) -> list[int]:
    """Subscriptions with a period to close by ``as_of`` (read from an index-friendly query:
    live ones past their period end, canceled ones whose last period has no invoice)."""
    as_of = resolve_now(as_of)
    live = Subscription.objects.filter(status__in=LIVE, current_period_end__lte=as_of)
    ended = Subscription.objects.filter(
        status=SubscriptionStatus.CANCELED, ended_at__lte=as_of
    ).exclude(
        pk__in=Invoice.objects.filter(
            period_start=F("subscription__current_period_start"), kind=InvoiceKind.PERIOD
        ).values("subscription_id")
    )
    ids = sorted(set(live.values_list("pk", flat=True)) | set(ended.values_list("pk", flat=True)))
    return ids[:limit] if limit else ids


def close_subscription_periods(*, subscription_id: int, as_of: datetime | None = None) -> int:
    """Close every period of one subscription that has ended by ``as_of`` (an operator
    catching up closes several), each in its own transaction; returns how many were made."""
    made = 0
    for _ in range(1000):  # bounded: a monthly plan 80 years behind
        result = close_period(subscription_id=subscription_id, as_of=as_of)
        if result is None or not result.created:
            break
        made += 1
        if not result.more_due:  # no second transaction just to find nothing due
            break
    return made


def close_due_periods(*, as_of: datetime | None = None) -> int:
    """Close every due period now, in this process (``manage.py close_periods``)."""
    return sum(
        close_subscription_periods(subscription_id=pk, as_of=as_of)
        for pk in due_subscription_ids(as_of=as_of)
    )
