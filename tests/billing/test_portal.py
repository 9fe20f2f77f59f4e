"""The customer portal: sign-in (password and e-mailed link), every page with another
customer's ids (404, nothing leaks), CSRF on every form, the live fragments, CSV export,
top-ups and invoice payment in offline mode, alert settings and low-balance alerts."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.utils import timezone

from billing import alerts
from billing.models import BillingMode, Customer, PortalMember
from billing.portal import services as portal
from invoicing import services as invoicing
from invoicing.models import Invoice, InvoiceStatus
from tests.invoicing.conftest import ChargeSpec, meter, plan, subscribe, use, wallet_posted

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture(autouse=True)
def _mail_and_media(settings, tmp_path):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.MEDIA_ROOT = tmp_path
    settings.STRIPE_SECRET_KEY = ""
    settings.PORTAL_BASE_URL = "http://portal.test"


def customer_with_usage(external_id: str, *, billing_mode=BillingMode.PREPAID, funds="50"):
    code = meter(name="Calls", unit="calls")
    now = timezone.now()
    subscription = subscribe(
        plan(ChargeSpec(meter=code, unit_price=D("0.25"), included_quantity=D(10)), base_fee="9"),
        external_id=external_id,
        billing_mode=billing_mode,
        funds=funds,
        start=now - timedelta(days=3),
    )
    assert use(subscription, 14, at_time=now - timedelta(hours=1), now=now).status == "accepted"
    return subscription


def member_client(customer: Customer, email: str) -> Client:
    member = portal.invite_member(customer=customer, email=email)
    client = Client()
    client.force_login(member.user)
    return client


def finalized_invoice(subscription) -> Invoice:
    draft = invoicing.close_period(
        subscription_id=subscription.pk, as_of=subscription.current_period_end
    ).invoice
    return invoicing.finalize_invoice(invoice_id=draft.pk)


def test_the_overview_shows_balance_allowance_and_the_period_figures():
    subscription = customer_with_usage("acme")
    client = member_client(subscription.customer, "ann@acme.example")
    page = client.get("/portal/").content.decode()
    # 50 funds − (14 − 10 included) × 0.25 = 49.00 available
    assert 'data-testid="available-USD">49.00 USD<' in page
    assert "14 of 10 calls" in page
    assert 'data-testid="spent">1.00 USD<' in page
    assert 'data-testid="upcoming">10.00 USD<' in page  # 9 base fee + 1 usage


def test_live_fragments_answer_304_until_something_changes():
    subscription = customer_with_usage("acme")
    client = member_client(subscription.customer, "ann@acme.example")
    first = client.get("/portal/live/overview")
    assert first.status_code == 200 and "49.00 USD" in first.content.decode()
    etag = first["ETag"]
    assert client.get("/portal/live/overview", headers={"If-None-Match": etag}).status_code == 304
    use(subscription, 4, at_time=timezone.now() - timedelta(minutes=1))
    changed = client.get("/portal/live/overview", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and "48.00 USD" in changed.content.decode()
    events = client.get("/portal/live/events").content.decode()
    assert events.count("<tr>") == 3  # the header and two events
    assert "usage:" in events  # each event's ledger transaction


def test_usage_data_and_csv_export():
    subscription = customer_with_usage("acme")
    client = member_client(subscription.customer, "ann@acme.example")
    data = client.get("/portal/usage/data").json()
    assert [d["amount"] for d in data["days"]] == ["1.000000000000000000000000"]
    assert data["currency"] == "USD"
    response = client.get("/portal/usage/events.csv")
    assert response["Content-Type"] == "text/csv"
    rows = b"".join(response.streaming_content).decode().splitlines()
    assert rows[0].startswith("timestamp,idempotency_key,event_name")
    assert len(rows) == 2 and rows[1].split(",")[10] == "1.000000000000"


def test_another_customers_pages_and_ids_are_not_found_and_nothing_leaks():
    acme = customer_with_usage("acme")
    globex = customer_with_usage("globex", billing_mode=BillingMode.POSTPAID, funds="0")
    theirs = finalized_invoice(globex)
    mine = finalized_invoice(acme)
    client = member_client(acme.customer, "ann@acme.example")
    for path in (
        f"/portal/invoices/{theirs.pk}/",
        f"/portal/invoices/{theirs.pk}/pdf",
        "/portal/invoices/999999/",
    ):
        assert client.get(path).status_code == 404, path
    assert client.post(f"/portal/invoices/{theirs.pk}/pay").status_code == 404
    assert Invoice.objects.get(pk=theirs.pk).amount_paid == 0
    for path in (
        "/portal/",
        "/portal/usage/",
        "/portal/invoices/",
        "/portal/live/events",
        "/portal/usage/events.csv",
        "/portal/credits/",
    ):
        response = client.get(path)
        body = (
            b"".join(response.streaming_content) if response.streaming else response.content
        ).decode()
        assert "globex" not in body.lower() and theirs.display_number not in body, path
    assert mine.display_number in client.get("/portal/invoices/").content.decode()


def test_pages_need_a_portal_member():
    anonymous = Client()
    response = anonymous.get("/portal/usage/")
    assert response.status_code == 302 and response["Location"].startswith("/portal/login/")
    staff = get_user_model().objects.create_user("finance", "f@x.example", "pw", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get("/portal/").status_code == 403


def test_a_sign_in_link_works_once_and_expires(settings):
    subscription = customer_with_usage("acme")
    portal.invite_member(customer=subscription.customer, email="Ann@Acme.example", name="Ann B")
    invitation = mail.outbox[-1] if mail.outbox else None
    portal.send_sign_in_link(email="ann@acme.example")
    assert not portal.send_sign_in_link(email="nobody@acme.example")  # no hint either way
    link = re.search(r"http://portal\.test(/portal/login/link/\S+/)", mail.outbox[-1].body)[1]
    client = Client()
    confirm = client.get(link)
    assert confirm.status_code == 200 and "ann@acme.example" in confirm.content.decode()
    assert client.post(link).status_code == 302  # signed in
    assert client.get("/portal/").status_code == 200
    assert Client().post(link).status_code == 400  # used: last_login moved
    settings.PORTAL_LINK_MAX_AGE = -1
    portal.send_sign_in_link(email="ann@acme.example")
    expired = re.search(r"http://portal\.test(/portal/login/link/\S+/)", mail.outbox[-1].body)[1]
    assert "expired" in Client().get(expired).content.decode()
    assert invitation is None or "invited" in invitation.body


def test_password_sign_in_after_setting_one():
    subscription = customer_with_usage("acme")
    client = member_client(subscription.customer, "ann@acme.example")
    response = client.post(
        "/portal/settings/",
        {
            "form": "password",
            "new_password1": "correct horse 42",
            "new_password2": "correct horse 42",
        },
    )
    assert response.status_code == 302
    fresh = Client()
    wrong = fresh.post("/portal/login/", {"username": "ann@acme.example", "password": "nope"})
    assert wrong.status_code == 200 and "did not match" in wrong.content.decode()
    right = fresh.post(
        "/portal/login/", {"username": "ann@acme.example", "password": "correct horse 42"}
    )
    assert right.status_code == 302 and right["Location"] == "/portal/"


def test_every_form_needs_the_csrf_token():
    subscription = customer_with_usage("acme")
    member = portal.invite_member(customer=subscription.customer, email="ann@acme.example")
    client = Client(enforce_csrf_checks=True)
    client.force_login(member.user)
    invoice = finalized_invoice(subscription)
    before = wallet_posted(subscription)
    for path, data in (
        ("/portal/top-up/", {"amount": "5", "currency": "USD", "request_id": "x"}),
        ("/portal/settings/", {"form": "alert", "threshold": "5", "email": "a@b.example"}),
        (f"/portal/invoices/{invoice.pk}/pay", {}),
        ("/portal/logout/", {}),
        ("/portal/login/link/", {"email": "ann@acme.example"}),
    ):
        assert client.post(path, data).status_code == 403, path
    assert wallet_posted(subscription) == before
    assert Customer.objects.get(pk=subscription.customer_id).low_balance_threshold is None


def test_top_up_and_invoice_payment_in_offline_mode(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True  # the opt-in
    settings.OFFLINE_AUTO_PAY = False
    subscription = customer_with_usage("acme", funds="1")  # the usage takes it all
    client = member_client(subscription.customer, "ann@acme.example")
    page = client.get("/portal/top-up/").content.decode()
    request_id = re.search(r'name="request_id" value="(\w+)"', page)[1]
    form = {"amount": "20.00", "currency": "USD", "request_id": request_id}
    assert client.post("/portal/top-up/", form).status_code == 302
    assert client.post("/portal/top-up/", form).status_code == 302  # a double submit
    assert wallet_posted(subscription) == D(20)
    invoice = finalized_invoice(subscription)
    assert invoice.status == InvoiceStatus.PAID  # the wallet paid it at finalization
    assert wallet_posted(subscription) == D(11)  # 1 + 20 funds − 10 invoiced (9 fee + 1 usage)
    detail = client.get(f"/portal/invoices/{invoice.pk}/").content.decode()
    assert invoice.display_number in detail and "Download PDF" in detail
    pdf = client.get(f"/portal/invoices/{invoice.pk}/pdf")
    assert pdf["Content-Type"] == "application/pdf"


def test_an_open_invoice_is_paid_from_the_portal_in_offline_mode(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True  # the opt-in
    settings.OFFLINE_AUTO_PAY = False
    subscription = customer_with_usage("globex", billing_mode=BillingMode.POSTPAID, funds="0")
    invoice = finalized_invoice(subscription)
    assert invoice.status == InvoiceStatus.OPEN
    client = member_client(subscription.customer, "bo@globex.example")
    assert "Pay 10.00 USD" in client.get(f"/portal/invoices/{invoice.pk}/").content.decode()
    response = client.post(f"/portal/invoices/{invoice.pk}/pay")
    assert response.status_code == 302
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID


def test_low_balance_alert_is_sent_once_until_the_balance_recovers(
    django_capture_on_commit_callbacks,
):
    subscription = customer_with_usage("acme", funds="12")  # 11.00 left
    client = member_client(subscription.customer, "ann@acme.example")
    client.post(
        "/portal/settings/", {"form": "alert", "threshold": "20", "email": "ops@acme.example"}
    )
    customer = Customer.objects.get(pk=subscription.customer_id)
    assert customer.low_balance_threshold == D(20)
    setting = alerts.portal_low_balance(customer)
    assert setting is not None and setting.recipients == ["ops@acme.example"]
    before = len(mail.outbox)
    with django_capture_on_commit_callbacks(execute=True):  # the e-mail goes after commit
        assert alerts.check_low_balances() == 1
        assert alerts.check_low_balances() == 0  # once
    assert mail.outbox[-1].to == ["ops@acme.example"] and len(mail.outbox) == before + 1
    assert [state.alert_id for state in alerts.active_alerts(customer)] == [setting.pk]
    from billing import services as billing

    billing.top_up(customer=customer, amount=D(50), reference="refill")
    assert alerts.check_low_balances() == 0
    assert alerts.active_alerts(customer) == []


def test_invitations_refuse_an_address_of_another_customer():
    acme = customer_with_usage("acme")
    globex = customer_with_usage("globex")
    portal.invite_member(customer=acme.customer, email="x@example.com")
    again = portal.invite_member(customer=acme.customer, email="X@example.com")
    assert PortalMember.objects.filter(customer=acme.customer).count() == 1
    assert again.customer_id == acme.customer_id
    from billing.errors import ValidationFailed

    with pytest.raises(ValidationFailed):
        portal.invite_member(customer=globex.customer, email="x@example.com")


def test_the_admin_invites_a_portal_user(admin_client):
    subscription = customer_with_usage("acme")
    url = f"/admin/billing/customer/{subscription.customer_id}/invite/"
    assert "Invite a portal user" in admin_client.get(url).content.decode()
    response = admin_client.post(url, {"email": "new@acme.example", "name": "New Person"})
    assert response.status_code == 302
    member = PortalMember.objects.get(user__email="new@acme.example")
    assert member.customer_id == subscription.customer_id
    assert member.user.first_name == "New" and not member.user.has_usable_password()


def test_production_settings_pass_check_deploy():
    import os
    import secrets
    import subprocess
    import sys
    from pathlib import Path

    env = {
        **os.environ,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "billing.example.com",
        # a production deployment has a payment provider and no offline payments
        "STRIPE_SECRET_KEY": "sk_live_example",
        "STRIPE_WEBHOOK_SECRET": "whsec_example",
        "PAYMENTS_OFFLINE": "0",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_credits_page_lists_grants_in_drain_order_with_what_is_left_and_expiry():
    from billing import credits, services

    subscription = customer_with_usage("acme")
    customer = subscription.customer
    services.ensure_wallet(customer=customer, currency="CREDITS")
    services.top_up(customer=customer, amount=D(500), currency="CREDITS", description="Pack")
    now = timezone.now()
    welcome = credits.grant_credits(
        customer=customer, amount=D(100), name="Welcome", expires_at=now + timedelta(days=3)
    )
    short = credits.grant_credits(
        customer=customer, amount=D(40), name="Flash promo", expires_at=now + timedelta(hours=2)
    )
    # 60 credits taken: the flash promo (priority 10, soonest expiry) first, then Welcome
    services.adjust_balance(
        customer=customer, amount=D(-60), reason="test", staff_user_id=None, currency="CREDITS"
    )
    short.refresh_from_db()
    assert short.status == "depleted"
    credits.expire_grant(grant_id=welcome.pk, now=now + timedelta(days=4))

    client_page = member_client(customer, "ann@acme.example").get("/portal/credits/")
    page = client_page.content.decode()
    assert 'data-testid="credits-left">500<' in page
    live = page[
        page.index('data-testid="grants"') : page.index(
            "</table>", page.index('data-testid="grants"')
        )
    ]
    assert "Pack" in live and "Welcome" not in live and "Flash promo" not in live
    ended = page[page.index('data-testid="ended-grants"') :]
    # Welcome: 100 granted, 20 used, 80 expired; the promo: 40 used, nothing expired
    assert re.search(r"Welcome.*?>100<.*?>20<.*?>80<", ended, re.S)
    assert re.search(r"Flash promo.*?>40<.*?>40<.*?>—<", ended, re.S)

    # Another customer sees none of it.
    other = customer_with_usage("globex")
    other_page = member_client(other.customer, "bo@globex.example").get("/portal/credits/")
    assert "Welcome" not in other_page.content.decode()
    assert "does not use credits" in other_page.content.decode()
