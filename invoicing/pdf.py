"""Invoice PDFs: ``templates/invoicing/invoice_pdf.html`` rendered by WeasyPrint (A4).

Every figure is formatted here, in Python, from the invoice's own ``Decimal`` fields, and the
template receives strings: amounts exactly as the invoice presents them (already rounded to
the minor unit by ``invoicing.money.to_minor_unit``; formatting only adds separators and the
currency code), never through ``float`` or ``floatformat``.

A finalized invoice's PDF is rendered once per state and kept (``store_invoice_pdf``): the
document a customer received is the document we hold, and once a payment, a credit note or a
void changes what the invoice says is owed, the next request renders it again under a new
name (``INV-000042-paid.pdf``), so no PDF says "Amount due" on a settled invoice. A draft
renders as a preview, watermarked.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import weasyprint
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from billing.models import Customer
from invoicing import errors
from invoicing.models import Invoice, InvoiceKind, InvoiceLine, InvoiceStatus, LineKind
from invoicing.money import format_amount, minor_unit_exponent

# WeasyPrint's font subsetting logs dozens of INFO lines per PDF; workers log at INFO.
logging.getLogger("fontTools").setLevel(logging.WARNING)

TEMPLATE = "invoicing/invoice_pdf.html"
MILLION = Decimal(1_000_000)
# A unit price below this reads per million units, as LLM prices are quoted (2.50 USD / 1M).
PER_MILLION_BELOW = Decimal("0.001")
STAMPS: dict[str, str] = {InvoiceStatus.PAID: "Paid", InvoiceStatus.VOID: "Void"}
# What an invoice that is not the period's own says it is, on the PDF, in the e-mail and in
# the portal: a customer sees two invoices of one period and must tell them apart.
KIND_LABELS: dict[str, str] = {InvoiceKind.COMMITMENT: "Prepaid commitment"}
KIND_NOTES: dict[str, str] = {
    InvoiceKind.COMMITMENT: "The period's commitment, billed in advance as the period opens: "
    "usage in the period draws it down, and usage beyond it is invoiced when the period closes."
}


# --- formatting ------------------------------------------------------------------------------


def format_money(amount: Decimal, currency: str) -> str:
    """``Decimal("1234.5"), "USD"`` → ``"1,234.50 USD"``: separators, the minor unit's places
    (``invoicing.money.format_amount``, what the admin and the portal show too)."""
    return format_amount(amount, currency)


def format_quantity(quantity: Decimal) -> str:
    """``Decimal("12345678.000000000000")`` → ``"12,345,678"``: no trailing zeros."""
    return f"{quantity.normalize():,f}"


def format_unit_price(price: Decimal, currency: str, unit: str = "") -> str:
    """At least the minor unit's places and as many more as the price has (unit prices are
    exact, not rounded); a tiny per-token price is shown per million units."""
    suffix = ""
    if 0 < price < PER_MILLION_BELOW:
        price, suffix = price * MILLION, f" / 1M {unit}".rstrip()
    exponent = price.normalize().as_tuple().exponent
    assert isinstance(exponent, int), "a stored price is finite"
    places = max(minor_unit_exponent(currency), -exponent)
    return f"{price:,.{places}f} {currency}{suffix}"


def format_date(moment: datetime | None) -> str:
    if moment is None:
        return ""
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%B %Y}"


def format_period(start: datetime, end: datetime) -> str:
    """The half-open [start, end) as the days it covers: 1 April 2026 – 30 April 2026."""
    return f"{format_date(start)} – {format_date(end - timedelta(microseconds=1))}"


def css_string(text: str) -> str:
    """``text`` as a quoted CSS string for the page footer: everything but letters, digits
    and spaces hex-escaped, so no quote, backslash or ``</style>`` can end it."""
    escaped = "".join(c if c.isalnum() or c == " " else f"\\{ord(c):x} " for c in text)
    return mark_safe(f'"{escaped}"')  # noqa: S308 - escaped above


def _percentage(value: Decimal) -> str:
    return f"{value.normalize():f} %"


# --- the document ----------------------------------------------------------------------------


def _line_row(line: InvoiceLine, currency: str) -> dict[str, str]:
    unit = line.meter.unit if line.meter is not None else ""
    if line.kind == LineKind.INCLUDED:
        price = "Included"
    elif line.unit_price is None:
        price = "—"
    else:
        price = format_unit_price(line.unit_price, currency, unit)
    if line.flat_fee:
        price += f" + {format_money(line.flat_fee, currency)} flat"
    return {
        "description": line.description,
        "quantity": format_quantity(line.quantity),
        "unit": unit,
        "unit_price": price,
        "amount": format_money(line.amount, currency),
    }


def _address(customer: Customer) -> list[str]:
    place = " ".join(p for p in (customer.postal_code, customer.city) if p)
    place = ", ".join(p for p in (place, customer.state) if p)
    return [
        part
        for part in (customer.address_line1, customer.address_line2, place, customer.country)
        if part
    ]


def invoice_context(invoice: Invoice) -> dict[str, Any]:
    """What the PDF and the e-mail show, every figure already a string."""
    currency = invoice.currency
    draft = invoice.status == InvoiceStatus.DRAFT

    def money(amount: Decimal) -> str:
        return format_money(amount, currency)

    lines = invoice.lines.select_related("meter").order_by("position")
    totals = [("Subtotal", money(invoice.subtotal))]
    if invoice.tax_name or invoice.tax:
        label = invoice.tax_name or "Tax"
        totals.append((f"{label} ({_percentage(invoice.tax_percentage)})", money(invoice.tax)))
    totals.append(("Total", money(invoice.total)))
    for label, amount in (
        ("Paid from balance", invoice.balance_applied),
        ("Payments", invoice.amount_paid),
        ("Credits", invoice.amount_credited),
    ):
        if amount:
            totals.append((label, money(-amount)))
    # A draft owes nothing yet (amount_remaining is zero); its preview shows what it would.
    due = invoice.amount_due if draft else max(invoice.amount_remaining, Decimal(0))
    paid_total = invoice.balance_applied + invoice.amount_paid
    settled = invoice.status == InvoiceStatus.PAID
    customer = invoice.customer
    footer = settings.BILLING_COMPANY["name"]
    if not draft:
        footer += f" · Invoice {invoice.display_number}"
    return {
        "invoice": invoice,
        "company": settings.BILLING_COMPANY,
        "customer": customer,
        "customer_address": _address(customer),
        "draft": draft,
        "title": "Draft — not a tax document" if draft else f"Invoice {invoice.display_number}",
        "stamp": STAMPS.get(invoice.status, ""),
        "kind_label": KIND_LABELS.get(invoice.kind, ""),
        "kind_note": KIND_NOTES.get(invoice.kind, ""),
        "issued": format_date(invoice.finalized_at),
        "due_date": format_date(invoice.due_at),
        "period": format_period(invoice.period_start, invoice.period_end),
        "lines": [_line_row(line, currency) for line in lines],
        "totals": totals,
        "amount_due": money(due),
        "owes": due > 0,
        "settled": settled,
        "amount_paid": money(paid_total),
        "paid_date": format_date(invoice.paid_at),
        "footer_css": css_string(footer),
    }


def render_invoice_pdf(invoice: Invoice) -> bytes:
    """The invoice as an A4 PDF (a draft: a watermarked preview)."""
    html = render_to_string(TEMPLATE, invoice_context(invoice))
    return weasyprint.HTML(string=html, base_url=str(settings.BASE_DIR)).write_pdf()


def pdf_state(invoice: Invoice) -> str:
    """What a finalized invoice's PDF shows, as a key: "paid", "void", or what is still owed
    ("due:97.11"). A stored PDF of another state is out of date."""
    if invoice.status in (InvoiceStatus.PAID, InvoiceStatus.VOID):
        return str(invoice.status)
    return f"due:{max(invoice.amount_remaining, Decimal(0)):f}"


def _state_slug(state: str) -> str:
    return state.replace(":", "-")


@transaction.atomic
def store_invoice_pdf(*, invoice_id: int) -> Invoice:
    """Render a finalized invoice's PDF once per state and keep it: the first as
    ``invoices/<number>.pdf``, one rendered after the state changed (a payment, a credit note,
    a void) as ``invoices/<number>-<state>.pdf`` — the earlier file is kept. A second call (or
    a second worker, which waits on the row lock) finds it stored."""
    invoice = (
        Invoice.objects.select_for_update(of=("self",))
        .select_related("customer")
        .filter(pk=invoice_id)
        .first()
    )
    if invoice is None:
        raise errors.InvoicingNotFound(f"invoice {invoice_id} does not exist")
    if invoice.status == InvoiceStatus.DRAFT:
        raise errors.InvoiceNotFinal(f"invoice {invoice} is a draft: it has no PDF yet")
    storage = invoice.pdf.storage
    state = pdf_state(invoice)
    current = invoice.pdf.name if invoice.pdf else ""
    # A PDF stored before states were kept ("") showed the invoice as finalized.
    as_finalized = "paid" if invoice.amount_due <= 0 else f"due:{invoice.amount_due:f}"
    up_to_date = invoice.pdf_state == state or (not invoice.pdf_state and state == as_finalized)
    if current and up_to_date and storage.exists(current):
        return invoice
    if current and up_to_date:  # the file went missing: the same document, the same name
        filename = current.rsplit("/", 1)[-1]
    elif current:
        filename = f"{invoice.display_number}-{_state_slug(state)}.pdf"
    else:
        filename = f"{invoice.display_number}.pdf"
    # A file without a row pointing to it was left by a transaction that rolled back after
    # writing it: replace it, so the name stays as chosen.
    orphan = invoice.pdf.field.generate_filename(invoice, filename)
    if storage.exists(orphan):
        storage.delete(orphan)
    invoice.pdf.save(filename, ContentFile(render_invoice_pdf(invoice)), save=False)
    invoice.pdf_state = state
    # Only the PDF columns: the frozen-invoice trigger allows them, and refuses the figures.
    Invoice.objects.filter(pk=invoice.pk).update(pdf=invoice.pdf.name, pdf_state=state)
    return invoice
