"""The finance admin takes input as the API does (issue 13): a JSON key written twice is a
form error naming it, unknown keys in a plan's charges are refused, currencies are ISO 4217,
amounts at most the documented maximum (``billing.limits.MAX_AMOUNT``); an invitation whose
e-mail cannot be sent keeps the user and says so (no 500); "Retry payment" counts what
happened; the customer page never shows a Python object's repr."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from billing.models import CreditGrant, Customer, Plan, PortalMember
from ledger.models import Transaction as LedgerTransaction
from tests.billing import test_admin as base
from tests.billing.test_admin import available, message_texts, publish_form, url

# The finance admin's fixtures (a staff client, a catalog with a subscribed customer).
staff = base.staff
staff_client = base.staff_client
catalog = base.catalog

pytestmark = pytest.mark.django_db
TOO_LARGE = "1" + "0" * 17  # 10^17, above the documented 10^15


def customer_form(**changes) -> dict[str, str]:
    form = {
        "external_id": f"adm-{uuid.uuid4().hex[:8]}",
        "name": "Initech",
        "currency": "USD",
        "billing_mode": "prepaid",
        "metadata": "{}",
    }
    form.update(changes)
    return form


# --- duplicate and unknown keys ----------------------------------------------------------------


def test_a_key_written_twice_in_the_charges_is_refused_naming_it(staff_client, catalog):
    plan = catalog["plan"]
    charges = (
        f'[{{"meter": "{catalog["meter"].code}", "price_model": "per_unit", '
        '"unit_price": "1", "unit_price": "0"}]'
    )
    response = staff_client.post(
        url("billing_plan_publish", plan.pk), publish_form(plan, charges=charges)
    )
    assert response.status_code == 200
    errors = " ".join(response.context["form"].errors["charges"])
    assert "charges[0].unit_price" in errors and "more than once" in errors, errors
    assert Plan.objects.filter(code=plan.code).count() == 1


def test_a_key_written_twice_when_adding_a_plan_is_refused(staff_client, catalog):
    response = staff_client.post(
        url("billing_plan_add"),
        {
            "code": "dup-plan",
            "name": "Dup",
            "currency": "USD",
            "interval": "month",
            "consumption_model": "metered",
            "base_fee": "0",
            "trial_days": "0",
            "charges": f'[{{"meter": "x", "meter": "{catalog["meter"].code}"}}]',
        },
    )
    assert response.status_code == 200
    assert "charges[0].meter" in " ".join(response.context["form"].errors["charges"])
    assert not Plan.objects.filter(code="dup-plan").exists()


def test_an_unknown_key_in_the_charges_is_refused(staff_client, catalog):
    plan = catalog["plan"]
    charges = json.dumps(
        [{"meter": catalog["meter"].code, "price_model": "per_unit", "unit_prise": "1"}]
    )
    response = staff_client.post(
        url("billing_plan_publish", plan.pk), publish_form(plan, charges=charges)
    )
    assert response.status_code == 200
    errors = " ".join(response.context["form"].errors["charges"])
    assert "charges[0].unit_prise" in errors, errors
    assert Plan.objects.filter(code=plan.code).count() == 1


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ('{"a": 1, "a": 2}', "'a'"),
        ('{"x": {"b": 1, "b": 2}}', "'x.b'"),
        ('{"a": NaN}', "NaN"),
        ('{"a": "\\u0000"}', "NUL"),
        ('{"a": 1e99999999999999999999}', "exponent"),
    ],
    ids=["duplicate", "nested-duplicate", "nan", "nul", "exponent"],
)
def test_customer_metadata_is_read_strictly_when_adding(staff_client, metadata, expected):
    form = customer_form(metadata=metadata)
    response = staff_client.post(url("billing_customer_add"), form)
    assert response.status_code == 200
    errors = " ".join(response.context["form"].errors["metadata"])
    assert expected in errors, errors
    assert not Customer.objects.filter(external_id=form["external_id"]).exists()


def change_form(customer: Customer, **changes) -> dict[str, str]:
    form = {
        "name": customer.name,
        "email": customer.email,
        "tax_id": customer.tax_id,
        "metadata": "{}",
        "address_line1": "",
        "address_line2": "",
        "city": "",
        "state": "",
        "postal_code": "",
        "country": "",
    }
    for prefix in ("wallets", "subscriptions", "margins", "members"):
        form.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    form.update(changes)
    return form


def test_customer_metadata_with_a_key_twice_is_refused_when_editing(staff_client, catalog):
    customer = catalog["customer"]
    response = staff_client.post(
        url("billing_customer_change", customer.pk),
        change_form(customer, metadata='{"a": 1, "a": 2}', name="Changed"),
    )
    assert response.status_code == 200
    assert "'a'" in " ".join(response.context["adminform"].form.errors["metadata"])
    customer.refresh_from_db()
    assert customer.name == "Acme Robotics" and customer.metadata == {}


def test_meter_filters_with_a_key_twice_are_refused(staff_client):
    from billing.models import Meter

    response = staff_client.post(
        url("billing_meter_add"),
        {
            "code": "dup-filters",
            "event_name": "image.generated",
            "aggregation": "count",
            "filters": '{"size": ["1024"], "size": []}',
            "group_by": "[]",
        },
    )
    assert response.status_code == 200
    assert "'size'" in " ".join(response.context["form"].errors["filters"])
    assert not Meter.objects.filter(code="dup-filters").exists()


def test_a_model_price_match_with_a_key_twice_is_refused(staff_client):
    from metering.models import ModelPrice

    form = {
        "provider": "acme",
        "model": "dup-match",
        "name": "",
        "effective_from_0": "2026-01-01",
        "effective_from_1": "00:00:00",
        "match": '{"model": "a", "model": "b"}',
        "position": "0",
        "notes": "",
    }
    for field in ModelPrice._meta.fields:
        if field.get_internal_type() == "DecimalField":
            form.setdefault(field.name, "1")
    response = staff_client.post(url("metering_modelprice_add"), form)
    assert response.status_code == 200
    assert "'model'" in " ".join(response.context["adminform"].form.errors["match"])
    assert not ModelPrice.objects.filter(model="dup-match").exists()


# --- currencies and amounts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"currency": "ZZZ"}, "currency"),
        ({"currency": "XTS"}, "currency"),
        ({"currency": "CREDITS"}, "currency"),
        ({"billing_mode": "postpaid", "credit_limit": TOO_LARGE}, "credit_limit"),
    ],
    ids=["ZZZ", "XTS", "CREDITS", "credit-limit-1e17"],
)
def test_adding_a_customer_refuses_what_the_api_refuses(staff_client, changes, field):
    form = customer_form(**changes)
    response = staff_client.post(url("billing_customer_add"), form)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not Customer.objects.filter(external_id=form["external_id"]).exists()


def test_the_largest_documented_credit_limit_is_taken(staff_client):
    form = customer_form(billing_mode="postpaid", credit_limit="1" + "0" * 15)
    response = staff_client.post(url("billing_customer_add"), form)
    assert response.status_code == 302
    wallet = Customer.objects.get(external_id=form["external_id"]).wallets.get()
    assert wallet.credit_limit == Decimal(10) ** 15


@pytest.mark.parametrize("page", ["top_up", "adjust"])
def test_top_ups_and_adjustments_above_the_maximum_are_refused(staff_client, catalog, page):
    customer = catalog["customer"]
    response = staff_client.post(
        url(f"billing_customer_{page}", customer.pk),
        {
            "amount": "1000000000000000.000000000001",
            "currency": "USD",
            "reason": "too much",
            "token": uuid.uuid4().hex,
        },
    )
    assert response.status_code == 200
    assert "documented maximum" in " ".join(response.context["form"].errors["amount"])
    assert available(customer) == Decimal(100)


def test_a_grant_above_the_maximum_is_refused(staff_client, catalog):
    customer = catalog["customer"]
    page = url("billing_customer_grant", customer.pk)
    token = staff_client.get(page).context["form"]["token"].value()
    response = staff_client.post(
        page,
        {"amount": TOO_LARGE, "name": "", "source": "promotional", "priority": "", "token": token},
    )
    assert response.status_code == 200
    assert "documented maximum" in " ".join(response.context["form"].errors["amount"])
    assert not CreditGrant.objects.exists()
    assert not LedgerTransaction.objects.filter(reference__startswith="credit-grant:").exists()


def test_a_credit_note_above_the_maximum_is_refused(client, django_user_model):
    from invoicing.models import CreditNote
    from tests.invoicing.conftest import close, finalize, plan, subscribe

    invoice = finalize(close(subscribe(plan(base_fee="7"))))
    client.force_login(django_user_model.objects.create_superuser("fin", "f@x.test", None))
    page = reverse("admin:invoicing_invoice_credit_note", args=[invoice.pk])
    reference = client.get(page).context["form"]["reference"].value()
    response = client.post(
        page, {"amount": TOO_LARGE, "reason": "too much", "reference": reference}
    )
    assert response.status_code == 200
    assert "documented maximum" in " ".join(response.context["form"].errors["amount"])
    assert not CreditNote.objects.exists()


def test_adding_a_plan_in_a_currency_that_is_not_iso_is_refused(staff_client, catalog):
    response = staff_client.post(
        url("billing_plan_add"),
        {
            "code": "zzz-plan",
            "name": "Z",
            "currency": "ZZZ",
            "interval": "month",
            "consumption_model": "metered",
            "base_fee": "0",
            "trial_days": "0",
            "charges": "[]",
        },
    )
    assert response.status_code == 200
    assert "currency" in response.context["form"].errors
    assert not Plan.objects.filter(code="zzz-plan").exists()


# --- inviting without a mail server ------------------------------------------------------------


@pytest.fixture
def no_smtp(settings):
    """Production's mail settings with nothing listening."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = 9  # discard: closed here
    settings.EMAIL_TIMEOUT = 2


def test_an_invitation_whose_mail_fails_keeps_the_user_and_says_so(
    staff_client, catalog, no_smtp, mailoutbox, settings
):
    customer = catalog["customer"]
    page = url("billing_customer_invite", customer.pk)
    response = staff_client.post(page, {"email": "Ann@Acme.example", "name": "Ann"}, follow=True)
    assert response.status_code == 200
    texts = message_texts(response)
    assert any("could not be sent" in t and "ann@acme.example" in t for t in texts), texts
    member = PortalMember.objects.get(user__email="ann@acme.example")
    assert member.customer_id == customer.pk

    # Once mail works, inviting the same address again resends the link (one user still).
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    again = staff_client.post(page, {"email": "ann@acme.example", "name": "Ann"}, follow=True)
    assert again.status_code == 200
    assert [m.to for m in mailoutbox] == [["ann@acme.example"]]
    assert any("sign-in link" in t for t in message_texts(again))
    assert get_user_model().objects.filter(email__iexact="ann@acme.example").count() == 1


def test_an_invitation_outside_the_admin_survives_a_mail_failure(
    catalog, no_smtp, django_capture_on_commit_callbacks
):
    from billing.portal import services as portal

    with django_capture_on_commit_callbacks(execute=True) as sent:
        member = portal.invite_member(customer=catalog["customer"], email="bo@acme.example")
    assert len(sent) == 1  # the link was attempted once the invitation committed
    assert PortalMember.objects.filter(pk=member.pk).exists()


# --- retry payment -----------------------------------------------------------------------------


def test_retry_payment_counts_what_happened(client, django_user_model, settings):
    from invoicing.models import Invoice, InvoiceStatus
    from tests.invoicing.conftest import close, finalize, plan, subscribe

    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = ""
    settings.PAYMENTS_OFFLINE = False
    the_plan = plan(base_fee="7")
    invoices = [finalize(close(subscribe(the_plan, external_id=f"r{i}"))) for i in range(2)]
    client.force_login(django_user_model.objects.create_superuser("fin", "f@x.test", None))
    response = client.post(
        "/admin/invoicing/invoice/",
        {"action": "collect_action", "_selected_action": [i.pk for i in invoices]},
        follow=True,
    )
    texts = message_texts(response)
    assert not any("sent for payment" in t for t in texts), texts
    assert any(t.startswith("Retried 2 invoice(s): 0 paid, 0 failed, 2 skipped") for t in texts)
    assert all(Invoice.objects.get(pk=i.pk).status == InvoiceStatus.OPEN for i in invoices)


# --- the customer page ------------------------------------------------------------------------


def test_the_customer_page_shows_no_python_object(staff_client, catalog):
    page = staff_client.get(url("billing_customer_change", catalog["customer"].pk))
    assert page.status_code == 200
    html = page.content.decode()
    assert "DatabaseDefault" not in html and "object at 0x" not in html
