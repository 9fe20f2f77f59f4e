"""The documents of an invoice tell its state: a PDF rendered before a payment is rendered
again once paid ("Paid", the amount paid, amount due 0.00) while the first one is kept; the
e-mail of an invoice paid at finalization says it is paid; the admin links only to PDFs
that open; and ``close_periods --finalize`` finishes what finalization starts (PDF, e-mail,
payment) in its own process, as the docs say."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.core import mail
from django.core.management import call_command

from invoicing import services as invoicing
from invoicing.models import Invoice, InvoiceStatus
from invoicing.pdf import store_invoice_pdf
from tests.invoicing.conftest import PERIOD_END, plan, subscribe
from tests.invoicing.test_pdf import (  # noqa: F401 - the autouse fixture: media, mail, catalog
    D,
    _media_mail_and_catalog,
    final_invoice,
    flat,
    pdf_text,
)

pytestmark = pytest.mark.django_db


def stored_text(invoice: Invoice) -> str:
    with invoice.pdf.open("rb") as stored:
        return flat(pdf_text(stored.read()))


def test_a_pdf_rendered_before_payment_is_rendered_again_once_paid(settings):
    invoice = store_invoice_pdf(invoice_id=final_invoice().pk)
    first = invoice.pdf.name
    assert "Amount due by 15 May 2026 97.11 USD" in stored_text(invoice)

    invoicing.record_payment(
        invoice_id=invoice.pk, amount=D("97.11"), provider="offline", provider_payment_id="w1"
    )
    paid = store_invoice_pdf(invoice_id=invoice.pk)

    assert paid.pdf.name == f"invoices/{invoice.display_number}-paid.pdf"
    text = stored_text(paid)
    assert "PAID" in text and "Amount due by" not in text
    assert "Amount paid 97.11 USD" in text and "Amount due 0.00 USD" in text
    assert (Path(settings.MEDIA_ROOT) / first).exists()  # the document e-mailed is kept
    assert store_invoice_pdf(invoice_id=invoice.pk).pdf.name == paid.pdf.name  # once


def test_the_email_of_an_invoice_paid_at_finalization_says_paid(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True
    settings.OFFLINE_AUTO_PAY = True
    invoice = final_invoice()
    invoicing.after_finalization(invoice_id=invoice.pk)
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID
    [message] = mail.outbox
    assert message.subject.endswith("— paid")
    assert "is due by" not in message.body and "Amount due: 97.11" not in message.body
    assert "Amount paid: 97.11 USD" in message.body and "Amount due: 0.00 USD" in message.body
    [(_, content, _)] = message.attachments
    text = flat(pdf_text(content))
    assert "PAID" in text and "Amount due by" not in text


def test_the_admin_links_only_to_pdfs_that_open(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("fin", "f@x.test", None))
    invoice = store_invoice_pdf(invoice_id=final_invoice().pk)
    for page in (
        "/admin/invoicing/invoice/",
        f"/admin/invoicing/invoice/{invoice.pk}/change/",
    ):
        content = client.get(page).content.decode()
        links = set(re.findall(r'href="([^"]*pdf[^"]*)"', content, re.IGNORECASE))
        assert links, page
        for href in links:
            response = client.get(href)
            assert response.status_code == 200, href
            assert response["Content-Type"] == "application/pdf"


def test_close_periods_finalize_records_the_offline_payment_at_once(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True
    settings.OFFLINE_AUTO_PAY = True
    settings.INVOICE_GRACE_PERIOD = PERIOD_END - PERIOD_END  # no grace: finalize at the close
    subscription = subscribe(plan(base_fee="12"))
    out = io.StringIO()
    call_command("close_periods", "--as-of", PERIOD_END.isoformat(), "--finalize", stdout=out)
    invoice = Invoice.objects.get(subscription=subscription)
    assert invoice.status == InvoiceStatus.PAID, out.getvalue()
    assert invoice.pdf and len(mail.outbox) == 1
    assert "1 invoice(s) finalized" in out.getvalue() and "1 paid" in out.getvalue()


def test_close_periods_finalize_without_a_provider_leaves_invoices_open(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = False
    settings.INVOICE_GRACE_PERIOD = PERIOD_END - PERIOD_END
    subscription = subscribe(plan(base_fee="12"))
    out = io.StringIO()
    call_command("close_periods", "--as-of", PERIOD_END.isoformat(), "--finalize", stdout=out)
    invoice = Invoice.objects.get(subscription=subscription)
    assert invoice.status == InvoiceStatus.OPEN and invoice.amount_remaining == D(12)
    assert "1 open" in out.getvalue()
