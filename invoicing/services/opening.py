"""Opening a period: a commitment billed in advance (``commitment_billing: in_advance``)
becomes an invoice of its own when its period opens, exactly once (the unique
(subscription, period_start) constraint of commitment invoices decides between two racing
openers). The close opens the next period in the transaction that rolls the subscription
on; a beat sweep opens the periods nothing rolled into (a subscription's first). The
draft is finalized by the finalize sweep (its grace ends as the period opens), through
the same finalization as any invoice: numbered, posted (Dr receivable, Cr
@CommitmentPrepaid), paid from the balance or collected."""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef

from billing import services as billing_services
from billing.models import CommitmentBilling, EventType, Subscription, SubscriptionStatus
from invoicing import errors
from invoicing.commitments import advance_draft, opens_in_advance
from invoicing.events import emit_invoice_event
from invoicing.models import Invoice, InvoiceKind
from invoicing.services.invoices import apply_figures, resolve_now, write_lines

LIVE = (SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)


def open_commitment_invoice(subscription: Subscription, as_of: datetime) -> Invoice | None:
    """The commitment invoice of the subscription's current period, made if the period has
    opened by ``as_of`` and bills its commitment in advance, and not closed yet. The
    caller holds the subscription's row lock (``open_period``, ``close_period``)."""
    if subscription.status not in LIVE or subscription.current_period_start > as_of:
        return None
    if subscription.plan.commitment_billing != CommitmentBilling.IN_ADVANCE:
        return None  # the plan a new period opens on (no query more per close for others)
    period_start, period_end = subscription.current_period_start, subscription.current_period_end
    existing = Invoice.objects.filter(
        subscription=subscription, period_start=period_start, kind=InvoiceKind.COMMITMENT
    ).first()
    if existing is not None:
        return existing
    if Invoice.objects.filter(
        subscription=subscription, period_start=period_start, kind=InvoiceKind.PERIOD
    ).exists():
        return None  # closed already (in arrears, then): never billed twice
    phases = opens_in_advance(subscription, period_start, period_end)
    if phases is None:
        return None
    draft = advance_draft(subscription, period_start, period_end, phases)
    if not draft.lines:
        return None
    invoice = Invoice(
        customer_id=subscription.customer_id,
        subscription=subscription,
        period_start=period_start,
        period_end=period_end,
        kind=InvoiceKind.COMMITMENT,
        currency=draft.currency,
        grace_ends_at=max(period_start, min(as_of, period_end)),  # finalized as it opens
    )
    apply_figures(invoice, draft)
    try:
        with transaction.atomic():
            invoice.save()
    except IntegrityError:  # opened by another worker since we looked
        return Invoice.objects.get(
            subscription=subscription, period_start=period_start, kind=InvoiceKind.COMMITMENT
        )
    write_lines(invoice, draft.lines)
    emit_invoice_event(EventType.INVOICE_CREATED, invoice, f"invoice.created:{invoice.pk}")
    return invoice


@transaction.atomic
def open_period(*, subscription_id: int, as_of: datetime | None = None) -> Invoice | None:
    """Open the subscription's current period: its commitment invoiced in advance when its
    plan says so (``open_commitment_invoice``). Safe to call again: the existing invoice."""
    as_of = resolve_now(as_of)
    # The lock order of the close: the rating lock first, then the subscription row.
    if billing_services.lock_subscription_customer(subscription_id) is None:
        raise errors.InvoicingNotFound(f"subscription {subscription_id} does not exist")
    subscription = (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("plan", "customer")
        .get(pk=subscription_id)
    )
    return open_commitment_invoice(subscription, as_of)


def due_opening_ids(*, as_of: datetime | None = None) -> list[int]:
    """Live subscriptions on a plan billing its commitment in advance whose current period
    has opened by ``as_of`` without a commitment invoice or a period invoice (a candidate:
    ``open_commitment_invoice`` decides on the plan in force where the period starts)."""
    as_of = resolve_now(as_of)
    invoiced = Invoice.objects.filter(
        subscription=OuterRef("pk"), period_start=OuterRef("current_period_start")
    )
    return list(
        Subscription.objects.filter(
            status__in=LIVE,
            current_period_start__lte=as_of,
            current_period_end__gt=as_of,
            plan__commitment_billing=CommitmentBilling.IN_ADVANCE,
        )
        .exclude(Exists(invoiced))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
