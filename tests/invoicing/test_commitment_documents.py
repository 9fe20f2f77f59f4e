"""A prepaid commitment billed in advance is an invoice of its own beside the period's
invoice (issue 18): its PDF, its e-mail and the portal's invoice list and page say that it
is the period's prepaid commitment, so that a customer seeing two invoices of one period
tells them apart; the period's own invoice says nothing of the kind."""

from __future__ import annotations

from html import unescape

import pytest
from django.core import mail

from billing.portal import services as portal
from invoicing.emails import send_invoice_email
from invoicing.models import InvoiceKind
from invoicing.pdf import render_invoice_pdf
from tests.invoicing.conftest import close, finalize, subscribe, use
from tests.invoicing.test_commitments_in_advance import open_and_finalize, upfront_plan
from tests.invoicing.test_pdf import (  # noqa: F401 - the autouse fixture: media, mail, catalog
    _media_mail_and_catalog,
    flat,
    pdf_text,
)

pytestmark = pytest.mark.django_db

NOTE = "The period's commitment, billed in advance as the period opens"


def the_two_invoices():
    subscription = subscribe(upfront_plan())
    commitment = open_and_finalize(subscription)
    use(subscription, 400)
    period = finalize(close(subscription))
    assert (commitment.kind, period.kind) == (InvoiceKind.COMMITMENT, InvoiceKind.PERIOD)
    return subscription, commitment, period


def test_the_pdf_and_the_email_say_which_invoice_is_the_prepaid_commitment(settings):
    settings.STRIPE_SECRET_KEY = ""
    _, commitment, period = the_two_invoices()
    text = flat(pdf_text(render_invoice_pdf(commitment)))
    assert "Prepaid commitment" in text and NOTE in text
    assert NOTE not in flat(pdf_text(render_invoice_pdf(period)))

    assert send_invoice_email(invoice_id=commitment.pk)
    assert send_invoice_email(invoice_id=period.pk)
    first, second = mail.outbox
    assert f"Invoice {commitment.display_number} (prepaid commitment) from" in first.subject
    assert NOTE in first.body and "(Prepaid commitment)" in first.body
    assert "commitment" not in second.subject and NOTE not in second.body


def test_the_portal_labels_the_commitment_invoice_in_the_list_and_on_its_page(client):
    subscription, commitment, period = the_two_invoices()
    member = portal.invite_member(customer=subscription.customer, email="ap@acme.example")
    client.force_login(member.user)
    listing = unescape(client.get("/portal/invoices/").content.decode())
    assert listing.count('data-testid="invoice-kind"') == 1
    assert "Prepaid commitment" in listing
    page = unescape(client.get(f"/portal/invoices/{commitment.pk}/").content.decode())
    assert 'data-testid="invoice-kind">Prepaid commitment<' in page and NOTE in page
    other = unescape(client.get(f"/portal/invoices/{period.pk}/").content.decode())
    assert "invoice-kind" not in other and NOTE not in other
