"""Invoices: the list, one invoice as its PDF shows it, the PDF itself, and paying one
(Stripe Checkout, or offline mode). Drafts are not the customer's to see."""

from __future__ import annotations

from django.contrib import messages
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.errors import BillingError
from billing.portal import selectors
from billing.portal.views.common import money, portal_view
from invoicing import payments, pdf
from invoicing.models import Invoice, InvoiceStatus

STATUS_LABELS: dict[str, str] = {
    InvoiceStatus.OPEN: "Open",
    InvoiceStatus.PAST_DUE: "Past due",
    InvoiceStatus.PAID: "Paid",
    InvoiceStatus.VOID: "Void",
    InvoiceStatus.DRAFT: "Draft",
}


def _customer_invoice(request, invoice_id: int) -> Invoice:
    invoice = selectors.customer_invoice(request.customer, invoice_id)
    if invoice is None:
        raise Http404("no such invoice")
    return invoice


@portal_view
def invoices(request):
    return render(
        request,
        "portal/invoices.html",
        {
            "customer": request.customer,
            "invoices": [
                {
                    "invoice": i,
                    "status": STATUS_LABELS[i.status],
                    "kind": pdf.KIND_LABELS.get(i.kind, ""),
                    "total": money(i.total, i.currency),
                    "remaining": money(i.amount_remaining, i.currency),
                }
                for i in selectors.customer_invoices(request.customer)
            ],
        },
    )


@portal_view
def invoice_detail(request, invoice_id: int):
    invoice = _customer_invoice(request, invoice_id)
    context = pdf.invoice_context(invoice)
    return render(
        request,
        "portal/invoice_detail.html",
        {
            "customer": request.customer,
            "invoice": invoice,
            "status": STATUS_LABELS[invoice.status],
            "doc": context,
            "can_pay": invoice.status in (InvoiceStatus.OPEN, InvoiceStatus.PAST_DUE)
            and invoice.amount_remaining > 0,
            "offline": payments.offline_mode(),
            "payments_available": payments.provider_available(),
        },
    )


@portal_view
def invoice_pdf(request, invoice_id: int):
    invoice = pdf.store_invoice_pdf(invoice_id=_customer_invoice(request, invoice_id).pk)
    return FileResponse(
        invoice.pdf.open("rb"),
        content_type="application/pdf",
        as_attachment=True,
        filename=f"{invoice.display_number}.pdf",
    )


@portal_view
@require_POST
def invoice_pay(request, invoice_id: int):
    invoice = _customer_invoice(request, invoice_id)
    back = request.build_absolute_uri(reverse("portal:invoice", args=[invoice.pk]))
    try:
        start = payments.checkout_invoice(
            invoice_id=invoice.pk, success_url=back + "?paid=1", cancel_url=back
        )
    except BillingError as error:
        messages.error(request, error.message)
        return redirect("portal:invoice", invoice.pk)
    if start.offline:
        messages.success(request, "Paid (offline mode: no card was charged).")
    return redirect(start.url)
