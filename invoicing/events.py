"""What invoicing's outbound events carry in ``data`` (``billing.outbox.emit``): one
function per resource, JSON-ready, in the API's shape (``GET /invoices/{id}`` without its
lines; money as decimal strings with 12 places)."""

from __future__ import annotations

from typing import Any

from billing import outbox
from billing.models import EventType
from billing.webhooks import moment, money
from invoicing.models import CreditNote, Invoice


def invoice_data(invoice: Invoice) -> dict[str, Any]:
    return {
        "object": "invoice",
        "id": invoice.pk,
        "number": invoice.display_number or None,
        "customer": invoice.customer.external_id,
        "subscription": invoice.subscription_id,
        "status": invoice.status,
        "currency": invoice.currency,
        "period_start": moment(invoice.period_start),
        "period_end": moment(invoice.period_end),
        "subtotal": money(invoice.subtotal),
        "tax_name": invoice.tax_name,
        "tax_percentage": format(invoice.tax_percentage, "f"),
        "tax": money(invoice.tax),
        "total": money(invoice.total),
        "balance_applied": money(invoice.balance_applied),
        "amount_due": money(invoice.amount_due),
        "amount_paid": money(invoice.amount_paid),
        "amount_credited": money(invoice.amount_credited),
        "amount_remaining": money(invoice.amount_remaining),
        "finalized_at": moment(invoice.finalized_at),
        "due_at": moment(invoice.due_at),
        "paid_at": moment(invoice.paid_at),
        "voided_at": moment(invoice.voided_at),
        "payment_attempts": invoice.payment_attempts,
        "next_payment_attempt_at": moment(invoice.next_payment_attempt_at),
    }


def emit_invoice_event(kind: EventType, invoice: Invoice, dedupe_key: str) -> None:
    """Tell the seller's systems (``billing.outbox``), once per ``dedupe_key``."""
    outbox.emit(kind, data=invoice_data(invoice), customer=invoice.customer, dedupe_key=dedupe_key)


def credit_note_data(note: CreditNote) -> dict[str, Any]:
    return {
        "object": "credit_note",
        "id": note.pk,
        "number": note.display_number,
        "invoice": note.invoice_id,
        "invoice_number": note.invoice.display_number or None,
        "customer": note.invoice.customer.external_id,
        "currency": note.invoice.currency,
        "reason": note.reason,
        "amount": money(note.amount),
        "tax": money(note.tax),
        "total": money(note.total),
        "against_receivable": money(note.against_receivable),
        "to_balance": money(note.to_balance),
        "created_at": moment(note.created_at),
    }
