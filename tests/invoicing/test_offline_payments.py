"""Offline payments are an explicit opt-in (``PAYMENTS_OFFLINE``), never the default: with no
payment provider a portal top-up or invoice payment is refused and changes nothing, a
finalized invoice stays open, and ``manage.py check --deploy`` warns. Finance staff may
still record a payment received out of band (a bank transfer) in the admin."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.core import checks
from django.test import Client

from billing.models import BillingMode, Customer
from billing.portal import services as portal
from invoicing import errors, payments, services
from invoicing.models import Invoice, InvoiceStatus, Payment
from ledger.models import Transaction
from tests.invoicing.conftest import (
    account_posted,
    close,
    finalize,
    plan,
    subscribe,
    wallet_posted,
)

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def no_provider(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = ""
    settings.PAYMENTS_OFFLINE = False
    settings.OFFLINE_AUTO_PAY = True  # even so: nothing pays itself without the opt-in


def member_client(customer: Customer, email: str) -> Client:
    member = portal.invite_member(customer=customer, email=email)
    client = Client()
    client.force_login(member.user)
    return client


def test_offline_payments_are_off_by_default():
    from billing.project import settings as project_settings

    assert project_settings.PAYMENTS_OFFLINE is False or (
        # the environment of this run turned them on explicitly
        __import__("os").environ.get("PAYMENTS_OFFLINE")
    )


def test_without_a_provider_a_portal_top_up_is_refused_and_writes_nothing(no_provider):
    subscription = subscribe(plan(), billing_mode=BillingMode.PREPAID, external_id="acme-off")
    customer = Customer.objects.get(pk=subscription.customer_id)
    client = member_client(customer, "ann@acme-off.example")
    page = client.get("/portal/top-up/").content.decode()
    assert "no payment provider" in page.lower()
    request_id = re.search(r'name="request_id" value="(\w+)"', page)[1]
    before = Transaction.objects.count()
    response = client.post(
        "/portal/top-up/",
        {"amount": "999999999999.99", "currency": "USD", "request_id": request_id},
    )
    assert response.status_code == 200  # the form again, with the refusal
    assert "Payments are not available" in response.content.decode()
    assert wallet_posted(subscription) == D(0)
    assert Transaction.objects.count() == before


def test_without_a_provider_the_checkout_services_refuse(no_provider):
    subscription = subscribe(plan(base_fee="7"))
    customer = Customer.objects.get(pk=subscription.customer_id)
    with pytest.raises(errors.PaymentsUnavailable) as refused:
        payments.checkout_top_up(
            customer=customer,
            amount=D(500),
            currency="USD",
            success_url="/ok",
            cancel_url="/no",
            request_id="r1",
        )
    assert refused.value.code == "payments_unavailable"
    invoice = finalize(close(subscription))
    with pytest.raises(errors.PaymentsUnavailable):
        payments.checkout_invoice(invoice_id=invoice.pk, success_url="/ok", cancel_url="/no")
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.OPEN
    assert not Payment.objects.exists() and wallet_posted(subscription) == D(0)


def test_without_a_provider_an_invoice_payment_in_the_portal_is_refused(no_provider):
    subscription = subscribe(plan(base_fee="7"), external_id="globex-off")
    invoice = finalize(close(subscription))
    customer = Customer.objects.get(pk=subscription.customer_id)
    client = member_client(customer, "bo@globex-off.example")
    detail = client.get(f"/portal/invoices/{invoice.pk}/").content.decode()
    assert "Pay 7.00 USD" not in detail
    response = client.post(f"/portal/invoices/{invoice.pk}/pay", follow=True)
    assert "Payments are not available" in response.content.decode()
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.OPEN
    assert not Payment.objects.exists()


def test_without_a_provider_finalization_leaves_the_invoice_open(no_provider):
    invoice = finalize(close(subscribe(plan(base_fee="7"))))
    result = payments.collect(invoice_id=invoice.pk)
    assert result.status == "skipped" and "no payment provider" in result.message
    services.after_finalization(invoice_id=invoice.pk)
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN and invoice.amount_remaining == D(7)
    assert account_posted("@OfflinePayments") == D(0)


def test_finance_may_record_a_payment_received_out_of_band(no_provider):
    invoice = finalize(close(subscribe(plan(base_fee="7"))))
    payment = payments.record_offline_payment(invoice_id=invoice.pk, reference="wire-42")
    assert payment.amount == D(7) and payment.provider == "offline"
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID
    assert account_posted("@OfflinePayments") == D(7)


def test_the_opt_in_pays_offline(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True
    settings.OFFLINE_AUTO_PAY = True
    invoice = finalize(close(subscribe(plan(base_fee="7"))))
    assert payments.collect(invoice_id=invoice.pk).status == "paid"
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID


def _deploy_warnings() -> dict[str, str]:
    found = checks.run_checks(include_deployment_checks=True, tags=["payments"])
    return {message.id: message.msg for message in found}


def test_check_deploy_warns_about_offline_payments_and_missing_stripe_keys(settings):
    settings.PAYMENTS_OFFLINE = True
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = ""
    warnings = _deploy_warnings()
    assert {"invoicing.W001", "invoicing.W002", "invoicing.W003"} <= set(warnings)
    assert "PAYMENTS_OFFLINE" in warnings["invoicing.W001"]
    settings.PAYMENTS_OFFLINE = False
    settings.STRIPE_SECRET_KEY = "sk_live_x"
    settings.STRIPE_WEBHOOK_SECRET = "whsec_x"
    assert not {"invoicing.W001", "invoicing.W002", "invoicing.W003"} & set(_deploy_warnings())
    # not a deployment run: no warning
    settings.PAYMENTS_OFFLINE = True
    assert not checks.run_checks(tags=["payments"])


def test_the_admin_payment_retry_says_nothing_was_collected_without_a_provider(
    no_provider, client, django_user_model
):
    invoice = finalize(close(subscribe(plan(base_fee="7"))))
    client.force_login(django_user_model.objects.create_superuser("fin", "f@x.test", None))
    response = client.post(
        "/admin/invoicing/invoice/",
        {"action": "collect_action", "_selected_action": [invoice.pk]},
        follow=True,
    )
    content = response.content.decode()
    assert f"{invoice.display_number}: skipped (no payment provider" in content
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.OPEN
