"""The invoice e-mail: sent once per finalized invoice, with its stored PDF attached.

"Once" is the row lock and ``emailed_at``: a second call, or a second worker waiting on the
lock, finds ``emailed_at`` set. The message is sent while the lock is held, so that two
workers never both send; if the process dies between sending and committing ``emailed_at``,
a retry sends it again (at least once, never twice at the same time).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from invoicing import errors
from invoicing.models import Invoice, InvoiceStatus
from invoicing.pdf import invoice_context, store_invoice_pdf


def invoice_subject(context: dict[str, Any]) -> str:
    """The subject line: ``Invoice INV-000001 from Acme — 12.34 USD due 15 May 2026``."""
    invoice, company = context["invoice"], context["company"]["name"]
    owed = f"{context['amount_due']} due {context['due_date']}" if context["owes"] else "paid"
    kind = f" ({context['kind_label'].lower()})" if context.get("kind_label") else ""
    return f"Invoice {invoice.display_number}{kind} from {company} — {owed}"


def send_invoice_email(*, invoice_id: int) -> bool:
    """E-mail a finalized invoice to its customer, once. False when it was sent before, the
    customer has no e-mail address, or the invoice is void; a draft raises InvoiceNotFinal."""
    with transaction.atomic():
        invoice = (
            Invoice.objects.select_for_update(of=("self",))
            .select_related("customer")
            .filter(pk=invoice_id)
            .first()
        )
        if invoice is None:
            raise errors.InvoicingNotFound(f"invoice {invoice_id} does not exist")
        if invoice.emailed_at is not None or not invoice.customer.email:
            return False
        if invoice.status == InvoiceStatus.VOID:
            return False
        invoice = store_invoice_pdf(invoice_id=invoice.pk)  # raises for a draft
        with invoice.pdf.open("rb") as stored:
            pdf = stored.read()
        context = invoice_context(invoice)
        message = EmailMultiAlternatives(
            subject=invoice_subject(context),
            body=render_to_string("invoicing/email/invoice.txt", context),
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[invoice.customer.email],
        )
        message.attach_alternative(
            render_to_string("invoicing/email/invoice.html", context), "text/html"
        )
        message.attach(f"{invoice.display_number}.pdf", pdf, "application/pdf")
        message.send()
        Invoice.objects.filter(pk=invoice.pk).update(emailed_at=timezone.now())
    return True
