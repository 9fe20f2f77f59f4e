"""A customer's collection method (Stripe's ``collection_method``): charge_automatically
(the default) collects at finalization; send_invoice does not — neither Stripe's charge nor
the demo's offline auto-pay — and the invoice is due ``days_until_due`` after its
finalization, which the e-mail says and the finance home's aging reads."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail

from billing import services as billing
from billing.models import CollectionMethod, Customer
from invoicing import finance, payments, services
from invoicing.models import Invoice, InvoiceStatus, Payment
from tests.invoicing.conftest import PERIOD_END, account_posted, close, finalize, plan, subscribe
from tests.invoicing.test_stripe import intents, stripe_server, with_card

pytestmark = pytest.mark.django_db
D = Decimal
SEND_INVOICE = {"collection_method": CollectionMethod.SEND_INVOICE, "days_until_due": 45}

__all__ = ["stripe_server"]  # the fixture, shared with test_stripe


@pytest.fixture
def offline_auto_pay(settings, tmp_path):
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True
    settings.OFFLINE_AUTO_PAY = True
    settings.MEDIA_ROOT = tmp_path


def test_offline_auto_pay_leaves_a_send_invoice_customers_invoice_owed(offline_auto_pay):
    invoice = finalize(close(subscribe(plan(base_fee="7"), **SEND_INVOICE)))
    services.after_finalization(invoice_id=invoice.pk)  # the worker's follow-up
    services.after_finalization(invoice_id=invoice.pk)  # redelivered
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN and invoice.amount_remaining == D(7)
    assert not Payment.objects.exists() and account_posted("@OfflinePayments") == D(0)
    assert invoice.pdf  # the PDF and the e-mail follow as for any invoice
    # the control: a customer charged automatically is paid by the same follow-up
    charged = finalize(close(subscribe(plan(base_fee="7"))))
    services.after_finalization(invoice_id=charged.pk)
    assert Invoice.objects.get(pk=charged.pk).status == InvoiceStatus.PAID


def test_a_send_invoice_customer_pays_when_it_chooses(offline_auto_pay):
    invoice = finalize(close(subscribe(plan(base_fee="7"), **SEND_INVOICE)))
    services.after_finalization(invoice_id=invoice.pk)
    start = payments.checkout_invoice(invoice_id=invoice.pk, success_url="/ok", cancel_url="/no")
    assert start.offline  # the portal's pay button, in offline mode: paid at once
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID


def test_stripe_does_not_charge_a_send_invoice_customer_at_finalization(stripe_server):
    invoice = finalize(close(subscribe(plan(base_fee="42.50"), **SEND_INVOICE)))
    with_card(stripe_server, invoice)  # a saved card, which charge_automatically would use
    services.after_finalization(invoice_id=invoice.pk)
    assert intents(stripe_server) == []
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN and invoice.payment_attempts == 0
    assert account_posted("@StripeClearing") == D(0)
    # the control: the same with charge_automatically is charged
    charged = finalize(close(subscribe(plan(base_fee="42.50"))))
    with_card(stripe_server, charged)
    services.after_finalization(invoice_id=charged.pk)
    assert len(intents(stripe_server)) == 1
    assert Invoice.objects.get(pk=charged.pk).status == InvoiceStatus.PAID


def test_the_due_date_is_finalization_plus_days_until_due(offline_auto_pay, settings):
    settings.INVOICE_PAYMENT_TERMS_DAYS = 14
    invoice = finalize(close(subscribe(plan(base_fee="7"), **SEND_INVOICE)))
    assert invoice.finalized_at == PERIOD_END
    assert invoice.due_at == PERIOD_END + timedelta(days=45)
    services.after_finalization(invoice_id=invoice.pk)
    [message] = mail.outbox
    assert message.subject.endswith("7.00 USD due 15 June 2026"), message.subject
    assert "is due by 15 June 2026" in message.alternatives[0][0]
    # charge_automatically keeps the installation's terms
    charged = finalize(close(subscribe(plan(base_fee="7"))))
    assert charged.due_at == PERIOD_END + timedelta(days=14)


def test_aging_reads_the_send_invoice_due_date(offline_auto_pay):
    invoice = finalize(close(subscribe(plan(base_fee="7"), **SEND_INVOICE)))
    # 50 days after finalization: 5 days past its 45-day due date (1–30); with the
    # installation's 14 days it would be 36 days past due (31–60)
    aging = finance.receivables(now=invoice.finalized_at + timedelta(days=50))["USD"]
    assert {b.key: b.amount for b in aging if b.amount} == {"d1_30": D(7)}


def test_switching_collection_method_sets_and_clears_the_terms():
    customer = billing.create_customer(external_id="acme", name="Acme")
    assert (customer.collection_method, customer.days_until_due) == ("charge_automatically", None)
    customer = billing.edit_customer(customer=customer, collection_method="send_invoice")
    assert customer.days_until_due == 30  # the default
    customer = billing.edit_customer(customer=customer, days_until_due=10)
    assert customer.days_until_due == 10
    customer = billing.edit_customer(customer=customer, collection_method="charge_automatically")
    assert Customer.objects.get(pk=customer.pk).days_until_due is None
