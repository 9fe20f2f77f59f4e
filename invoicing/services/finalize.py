"""Finalizing: a draft becomes a numbered invoice posted to the ledger, its lines computed
once more from the counters, the wallet's own funds applied and the period closed to late
usage; then, after commit, payment is collected and the PDF and e-mail follow. A second
finalize finds the invoice final."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from billing import services as billing_services
from billing.models import CollectionMethod, Customer, EventType, Subscription
from invoicing import errors
from invoicing.events import emit_invoice_event
from invoicing.models import Invoice, InvoiceKind, InvoiceStatus, LineKind
from invoicing.money import floor_to_minor_unit
from invoicing.selectors import LineDraft, compute_invoice
from invoicing.services.accounts import ZERO, nonzero_legs, receivable_account, recognised
from invoicing.services.invoices import (
    INVOICE_SERIES,
    allocate_number,
    apply_figures,
    locked_invoice,
    resolve_now,
    write_lines,
)
from ledger import services as ledger
from ledger.services import Leg, TransactionSpec
from metering import inbox


def _base_fee_drafts(invoice: Invoice) -> list[LineDraft]:
    return [
        LineDraft(
            kind=line.kind,
            description=line.description,
            starts_at=line.starts_at,
            ends_at=line.ends_at,
            quantity=line.quantity,
            unit_price=line.unit_price,
            amount_precise=line.amount_precise,
            plan_id=line.plan_id,
        )
        for line in invoice.lines.filter(kind=LineKind.BASE_FEE).order_by("position")
    ]


@transaction.atomic
def refresh_draft(*, invoice_id: int) -> Invoice:
    """Compute a draft's usage lines again from the counters (late usage has arrived)."""
    invoice = locked_invoice(invoice_id, usage_lock=True)
    if invoice.status != InvoiceStatus.DRAFT:
        raise errors.InvoiceNotDraft(f"invoice {invoice} is {invoice.status}, not a draft")
    if invoice.kind == InvoiceKind.COMMITMENT:
        return invoice  # a commitment in advance: its lines are fixed when its period opens
    _recompute(invoice)
    invoice.save()
    return invoice


def _recompute(invoice: Invoice) -> None:
    draft = compute_invoice(
        subscription=invoice.subscription,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        base_fees=_base_fee_drafts(invoice),
    )
    invoice.lines.all().delete()
    write_lines(invoice, draft.lines)
    apply_figures(invoice, draft)


def payment_terms(customer: Customer) -> timedelta:
    """How long after finalization an invoice is due: a send_invoice customer's own
    ``days_until_due``; ``INVOICE_PAYMENT_TERMS_DAYS`` for one charged automatically."""
    if customer.collection_method == CollectionMethod.SEND_INVOICE:
        return timedelta(days=customer.days_until_due or 0)
    return timedelta(days=settings.INVOICE_PAYMENT_TERMS_DAYS)


@transaction.atomic
def finalize_invoice(*, invoice_id: int, now: datetime | None = None) -> Invoice:
    """Finalize a draft: its lines computed once more from the counters, a gapless number,
    the ledger posting (see the map in ``invoicing.models``), the wallet's own funds
    applied, and the period closed to late usage. Finalizing a final invoice returns it."""
    now = resolve_now(now)
    invoice = locked_invoice(invoice_id, usage_lock=True)
    if invoice.status != InvoiceStatus.DRAFT:
        invoice.replayed = True
        return invoice
    # Events of the period accepted asynchronously and not rated yet are rated now, under
    # the customer's rating lock taken above: once final, the period refuses late usage,
    # and these were acknowledged (metering.inbox).
    # A commitment invoiced in advance has no usage: its lines were fixed as its period
    # opened, and its period stays open to usage (the period's own invoice closes it).
    period_invoice = invoice.kind == InvoiceKind.PERIOD
    if period_invoice:
        inbox.rate_pending_of(customer_id=invoice.customer_id, before=invoice.period_end, now=now)
        _recompute(invoice)
    customer, currency = invoice.customer, invoice.currency
    wallet = billing_services.wallet_for(customer=customer, currency=currency)
    receivable = receivable_account(customer=customer, currency=currency)
    locked = ledger.lock_balances(account_ids=[wallet.account_id])[wallet.account_id]
    specs = []
    legs = nonzero_legs(
        Leg(receivable.pk, invoice.total),
        Leg(wallet.account_id, -invoice.usage_charged),
        *recognised(invoice, sign=-1),
    )
    metadata = {"kind": "invoice", "invoice_id": invoice.pk, "customer": customer.external_id}
    number = allocate_number(INVOICE_SERIES, settings.INVOICE_NUMBER_PREFIX)
    if legs:
        specs.append(
            TransactionSpec(
                reference=f"invoice:{invoice.pk}:finalize",
                legs=legs,
                description=f"Invoice {number.display}",
                metadata=metadata,
                effective_at=now,
            )
        )
    # The wallet's own funds (prepaid money, credit on a postpaid wallet) pay what they can,
    # in whole minor units; overdraft room is not money of the customer's.
    funds = locked.available + invoice.usage_charged
    applied = min(invoice.total, max(ZERO, floor_to_minor_unit(funds, currency)))
    if invoice.total < 0:
        # Owed back (a commitment paid in advance for more of the period than it lasted):
        # to the wallet's balance, as a credit note's rest is; the receivable stays square.
        applied = invoice.total
    if applied:
        specs.append(
            TransactionSpec(
                reference=f"invoice:{invoice.pk}:balance",
                legs=[Leg(wallet.account_id, applied), Leg(receivable.pk, -applied)],
                description=f"Invoice {number.display}: paid from the balance",
                metadata=metadata,
                effective_at=now,
            )
        )
    posted = ledger.post_transactions(transactions=specs) if specs else []
    invoice.series, invoice.number = number.series, number.number
    invoice.display_number = number.display
    invoice.balance_applied = applied
    invoice.amount_due = invoice.total - applied
    invoice.finalized_at = now
    invoice.due_at = now + payment_terms(customer)
    invoice.ledger_transaction_id = posted[0].pk if posted else None
    if invoice.amount_due == 0:
        invoice.status, invoice.paid_at = InvoiceStatus.PAID, now
    else:
        invoice.status = InvoiceStatus.OPEN
    invoice.save()
    if period_invoice:
        Subscription.objects.filter(pk=invoice.subscription_id).filter(
            Q(invoiced_through__isnull=True) | Q(invoiced_through__lt=invoice.period_end)
        ).update(invoiced_through=invoice.period_end)
    emit_invoice_event(EventType.INVOICE_FINALIZED, invoice, f"invoice.finalized:{invoice.pk}")
    if invoice.status == InvoiceStatus.PAID:  # the balance paid it all
        emit_invoice_event(EventType.INVOICE_PAID, invoice, f"invoice.paid:{invoice.pk}")
    invoice.replayed = False
    # robust: a broker that is down must not turn a committed finalization into an error
    # (the admin's 500); the invoice is kept, and the sweep below queues its follow-up.
    transaction.on_commit(lambda: _after_finalize(invoice.pk), robust=True)
    return invoice


def _after_finalize(invoice_id: int) -> None:
    from invoicing import tasks  # tasks import services

    tasks.invoice_finalized.delay(invoice_id)


# A finalized invoice whose follow-up has not run this long after finalization (no PDF
# stored: the follow-up always stores one) lost its task — the broker was down when the
# finalization committed, or the message was lost — and is queued again by the sweep.
FOLLOW_UP_GRACE = timedelta(minutes=10)


def invoices_without_follow_up(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Finalized invoices (not void) whose after-finalization never ran: no PDF stored
    ``FOLLOW_UP_GRACE`` after their finalization, oldest first."""
    return list(
        Invoice.objects.exclude(status__in=[InvoiceStatus.DRAFT, InvoiceStatus.VOID])
        .filter(pdf="", finalized_at__lte=resolve_now(now) - FOLLOW_UP_GRACE)
        .order_by("finalized_at", "id")
        .values_list("pk", flat=True)[:limit]
    )


def after_finalization(*, invoice_id: int) -> None:
    """What follows a committed finalization, each step idempotent: collecting payment (for
    a customer charged automatically; a send_invoice customer's invoice waits for the
    customer to pay by its due date), then the PDF and the e-mail to the customer — in that
    order, so that an invoice charged or paid offline at once is sent as paid, not as
    "Amount due". The PDF and the e-mail follow even when collecting raised (the error is
    raised after them)."""
    from invoicing import emails, payments, pdf

    if not Invoice.objects.filter(pk=invoice_id).exists():
        return  # a task outliving its invoice's database (a test run's): nothing to do
    try:
        payments.collect_automatically(invoice_id=invoice_id)
    finally:
        pdf.store_invoice_pdf(invoice_id=invoice_id)
        emails.send_invoice_email(invoice_id=invoice_id)


def due_draft_ids(*, as_of: datetime | None = None) -> list[int]:
    return list(
        Invoice.objects.filter(status=InvoiceStatus.DRAFT, grace_ends_at__lte=resolve_now(as_of))
        .order_by("grace_ends_at", "id")
        .values_list("pk", flat=True)
    )


def finalize_due_invoices(*, as_of: datetime | None = None) -> int:
    """Finalize every draft whose grace period has passed by ``as_of``."""
    ids = due_draft_ids(as_of=as_of)
    for invoice_id in ids:
        finalize_invoice(invoice_id=invoice_id, now=as_of)
    return len(ids)
