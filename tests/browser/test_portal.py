"""The customer portal in a real browser: both ways of signing in, the overview and usage
pages updating live as events arrive through the API, the charts and the CSV export,
invoices (PDF, offline payment), a top-up, the alert settings, and the phone layout.
Every test saves screenshots as tests/artifacts/portal-<page>-desktop|phone.png."""

from __future__ import annotations

import csv
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.utils import timezone
from playwright.sync_api import expect

from billing import services as billing
from billing.models import BillingMode, Subscription
from billing.portal import services as portal
from invoicing import services as invoicing
from invoicing.models import Invoice, InvoiceStatus
from tests.factories import APIKeyFactory
from tests.invoicing.conftest import ChargeSpec, meter, plan, subscribe, use

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = "ann@acme.example"
PASSWORD = "correct horse battery staple"
# an OpenAI chat completion's usage: what the product backend forwards for a model chart
CHAT = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}
LIVE_TIMEOUT_MS = 3_000  # the fragments poll every second


@pytest.fixture(autouse=True)
def _offline(settings, tmp_path, server_url):
    settings.STRIPE_SECRET_KEY = ""  # offline mode: top-ups and payments succeed at once
    settings.PAYMENTS_OFFLINE = True  # the opt-in, as make run's demo
    settings.OFFLINE_AUTO_PAY = False  # a postpaid invoice stays open until paid in the portal
    settings.MEDIA_ROOT = tmp_path
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.PORTAL_BASE_URL = server_url  # e-mailed links point at the live server
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast


def customer_with_usage(billing_mode=BillingMode.PREPAID, funds="50") -> Subscription:
    """acme on Pro (9 USD a month, 10 calls included, then 0.25 USD a call), 14 calls used:
    a prepaid wallet of 50 has 49.00 USD available."""
    calls = meter(name="Calls", unit="calls")
    now = timezone.now()
    subscription = subscribe(
        plan(
            ChargeSpec(meter=calls, unit_price=Decimal("0.25"), included_quantity=10), base_fee="9"
        ),
        external_id="acme",
        billing_mode=billing_mode,
        funds=funds,
        start=now - timedelta(days=3),
    )
    assert use(subscription, 14, at_time=now - timedelta(hours=1), now=now).status == "accepted"
    return subscription


def member(subscription: Subscription) -> str:
    user = portal.invite_member(customer=subscription.customer, email=EMAIL).user
    user.set_password(PASSWORD)
    user.save()
    return EMAIL


def sign_in(page, server_url: str, email: str = EMAIL) -> None:
    page.goto(f"{server_url}/portal/login/")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server_url}/portal/")


def post_event(server_url: str, secret: str, units: int, **properties) -> None:
    """One api.call event through the real API, as a product backend sends it."""
    body = {
        "idempotency_key": uuid.uuid4().hex,
        "customer": "acme",
        "event_name": "api.call",
        "properties": {"units": units, **properties},
    }
    request = urllib.request.Request(
        f"{server_url}/api/v1/events",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{error}: {error.read().decode()}") from None


def finalized_invoice(subscription: Subscription) -> Invoice:
    """The current period closed (9 USD base fee + 4 calls over the allowance) and final."""
    draft = invoicing.close_period(
        subscription_id=subscription.pk, as_of=subscription.current_period_end
    ).invoice
    return invoicing.finalize_invoice(invoice_id=draft.pk)


def ingest_key() -> str:
    return APIKeyFactory(name="product backend", scopes=["ingest"]).secret


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_password_sign_in_overview_and_sign_out(page, server_url, screenshot):
    member(customer_with_usage())
    page.goto(f"{server_url}/portal/")
    page.wait_for_url(f"{server_url}/portal/login/?next=/portal/")
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("p.error")).to_contain_text("did not match")
    screenshot(page, "portal-login-desktop")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server_url}/portal/")

    expect(page.get_by_role("heading", level=1)).to_have_text("Acme Robotics")
    expect(page.get_by_test_id("available-USD")).to_have_text("49.00 USD")  # 50 − 4 × 0.25
    expect(page.get_by_test_id("used-1")).to_have_text("14 of 10 calls")
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    screenshot(page, "portal-overview-desktop")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{server_url}/portal/login/")
    page.goto(f"{server_url}/portal/usage/")
    page.wait_for_url(f"{server_url}/portal/login/?next=/portal/usage/")


def test_sign_in_with_an_emailed_link(page, server_url, screenshot):
    member(customer_with_usage())
    page.goto(f"{server_url}/portal/login/")
    page.get_by_role("link", name="E-mail me a sign-in link").click()
    page.wait_for_url(f"{server_url}/portal/login/link/")
    screenshot(page, "portal-link-request-desktop")
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_role("button", name="Send the link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    screenshot(page, "portal-link-sent-desktop")

    assert mail.outbox[-1].to == [EMAIL] and "Here is your link" in mail.outbox[-1].body
    link = re.search(rf"{re.escape(server_url)}/portal/login/link/\S+/", mail.outbox[-1].body)
    assert link, mail.outbox[-1].body
    page.goto(link[0])
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Sign in as {EMAIL}")
    screenshot(page, "portal-link-confirm-desktop")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server_url}/portal/")
    expect(page.get_by_test_id("available-USD")).to_have_text("49.00 USD")

    assert page.goto(link[0]).status == 400  # the link worked once
    expect(page.locator("main")).to_contain_text("already used")


def wait_live(page, condition: str) -> float:
    """Seconds from now until ``condition`` (JS) holds on the page, polled every frame."""
    start = time.monotonic()
    page.wait_for_function(condition, timeout=LIVE_TIMEOUT_MS, polling="raf")
    return time.monotonic() - start


def test_balance_allowance_and_events_update_live(page, server_url, screenshot):
    member(customer_with_usage())
    secret = ingest_key()
    sign_in(page, server_url)
    page.evaluate("window.notReloaded = true")

    post_event(server_url, secret, 2)  # 2 calls over the allowance: 0.50 USD
    overview_latency = wait_live(
        page,
        """window.notReloaded
        && document.querySelector('[data-testid=available-USD]').textContent === '48.50 USD'
        && document.querySelector('[data-testid=used-1]').textContent === '16 of 10 calls'""",
    )
    screenshot(page, "portal-overview-live-desktop")

    page.get_by_role("link", name="Usage").click()
    page.wait_for_url(f"{server_url}/portal/usage/")
    rows = page.locator("#events-live tbody tr")
    expect(rows).to_have_count(2)
    page.evaluate("window.notReloaded = true")
    post_event(server_url, secret, 3)
    events_latency = wait_live(
        page,
        "window.notReloaded && document.querySelectorAll('#events-live tbody tr').length === 3",
    )
    expect(rows.first).to_contain_text("0.75")  # the newest first, priced 3 × 0.25
    screenshot(page, "portal-usage-live-desktop")
    print(f"live update latency: overview {overview_latency:.3f} s, events {events_latency:.3f} s")
    assert overview_latency < 1.5 and events_latency < 1.5


def test_usage_charts_and_csv_export(page, server_url, screenshot, model_prices):
    member(customer_with_usage())
    post_event(server_url, ingest_key(), 2, provider="openai", model="gpt-4o", usage=CHAT)
    sign_in(page, server_url)
    page.get_by_role("link", name="Usage").click()

    for chart in ("#chart-days canvas", "#chart-models canvas"):
        expect(page.locator(chart)).to_be_visible()
        box = page.locator(chart).bounding_box()
        assert box["width"] > 0 and box["height"] > 0, chart
        drawn = page.evaluate(
            "(s) => Chart.getChart(document.querySelector(s)).data.datasets.length", chart
        )
        assert drawn > 0, chart
    # gpt-4o's call (2 × 0.25), then the calls no model carries (4 beyond the included)
    expect(page.locator("#models-table tbody tr")).to_have_count(2)
    expect(page.locator("#models-table tbody tr").first).to_contain_text("gpt-4o")
    expect(page.locator("#models-table tbody tr").last).to_contain_text("Other usage")
    expect(page.locator("#usage-total")).to_have_text("1.50 USD")
    screenshot(page, "portal-usage-desktop")

    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    assert download.value.suggested_filename.startswith("usage-acme-")
    with open(download.value.path(), newline="") as exported:
        rows = list(csv.reader(exported))
    assert rows[0][:3] == ["timestamp", "idempotency_key", "event_name"]
    assert [(row[2], row[4], row[10]) for row in rows[1:]] == [
        ("api.call", "", "1.000000000000"),
        ("api.call", "gpt-4o", "0.500000000000"),
    ]


def test_invoice_list_detail_pdf_and_offline_payment(page, phone_page, server_url, screenshot):
    subscription = customer_with_usage(BillingMode.POSTPAID, funds="0")
    member(subscription)
    invoice = finalized_invoice(subscription)
    assert invoice.status == InvoiceStatus.OPEN  # postpaid, and OFFLINE_AUTO_PAY is off
    sign_in(page, server_url)

    page.get_by_role("link", name="Invoices").click()
    row = page.get_by_role("row").filter(has_text=invoice.display_number)
    expect(row).to_contain_text("Open")
    expect(row).to_contain_text("10.00 USD")
    screenshot(page, "portal-invoices-desktop")
    row.get_by_role("link", name=invoice.display_number).click()

    page.wait_for_url(f"{server_url}/portal/invoices/{invoice.pk}/")
    expect(page.locator("h1 .status")).to_have_text(re.compile("^Open"))
    lines = page.locator("main tbody tr")
    expect(lines).to_have_count(3)
    expect(lines).to_contain_text(["Pro — base fee", "Calls: included", "Calls"])
    expect(lines.last).to_contain_text("0.25 USD")  # 4 calls over the allowance: 1.00 USD
    expect(page.locator("dl.totals")).to_contain_text("Total")
    expect(page.get_by_test_id("amount-due")).to_have_text("10.00 USD")
    screenshot(page, "portal-invoice-desktop")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download PDF").click()
    with open(download.value.path(), "rb") as document:
        assert document.read(4) == b"%PDF"

    page.get_by_role("button", name="Pay 10.00 USD (offline mode)").click()
    expect(page.locator("h1 .status")).to_have_text(re.compile("^Paid"))
    expect(page.locator(".messages")).to_contain_text("Paid (offline mode")
    expect(page.get_by_test_id("amount-due")).to_have_text("0.00 USD")
    expect(page.get_by_role("button", name=re.compile("^Pay"))).to_have_count(0)
    screenshot(page, "portal-invoice-paid-desktop")
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.PAID

    sign_in(phone_page, server_url)
    for path, name in (("", "invoice-list"), (f"{invoice.pk}/", "invoice")):
        phone_page.goto(f"{server_url}/portal/invoices/{path}")
        assert no_horizontal_overflow(phone_page), name
        screenshot(phone_page, f"portal-{name}-phone")


def test_top_up_in_offline_mode(page, server_url, screenshot):
    member(customer_with_usage())
    sign_in(page, server_url)
    page.get_by_role("link", name="Top up").click()
    expect(page.locator(".notice")).to_contain_text("Offline mode")
    page.get_by_label("Amount").fill("20.00")
    screenshot(page, "portal-top-up-desktop")
    page.get_by_role("button", name="Add funds").click()

    page.wait_for_url(f"{server_url}/portal/?topped_up=1")
    expect(page.locator(".messages .success")).to_have_text(
        "Added 20.00 USD (offline mode: no card was charged)."
    )
    expect(page.get_by_test_id("available-USD")).to_have_text("69.00 USD")
    screenshot(page, "portal-overview-topped-up-desktop")


def test_low_balance_alert_threshold_is_saved(page, server_url, screenshot):
    member(customer_with_usage())
    sign_in(page, server_url)
    page.get_by_role("link", name="Settings").click()
    page.get_by_label("Alert me when").fill("15")
    page.get_by_label("Send the alert to").fill("ops@acme.example")
    page.get_by_role("button", name="Save alert").click()
    expect(page.locator(".messages .success")).to_have_text("Alert saved.")

    page.reload()
    screenshot(page, "portal-settings-desktop")
    # as the customer typed it (or in cents), not the ledger's twelve decimal places
    expect(page.get_by_label("Alert me when")).to_have_value(
        re.compile(r"^15(\.00)?$"), timeout=1_000
    )
    expect(page.get_by_label("Send the alert to")).to_have_value("ops@acme.example")


def test_switching_plan_and_turning_auto_top_up_on(page, server_url, screenshot):
    subscription = customer_with_usage()
    member(subscription)
    team = plan(base_fee="39", name="Team", code="team")
    billing.set_plan_self_serve(code="team", self_serve=True)
    sign_in(page, server_url)
    page.get_by_role("navigation", name="Portal").get_by_role("link", name="Plan").click()
    row = page.get_by_test_id("plan-team")
    expect(row).to_contain_text("39.00 USD")
    row.get_by_role("button", name="Switch now").click()
    expect(page.get_by_test_id("confirm")).to_contain_text("prorated")
    screenshot(page, "portal-plan-confirm-desktop")
    page.get_by_role("button", name="Confirm the switch").click()
    expect(page.locator(".messages .success")).to_have_text("You are now on Team.")
    expect(page.get_by_test_id("current-plan")).to_contain_text("Team")
    screenshot(page, "portal-plan-desktop")
    subscription.refresh_from_db()
    assert subscription.plan_id == team.pk

    page.get_by_role("navigation", name="Portal").get_by_role("link", name="Settings").click()
    section = page.get_by_test_id("auto-top-up-USD")
    section.get_by_label("Top up automatically").check()
    section.get_by_label("When the available balance falls below").fill("20")
    section.get_by_label("Refill up to").fill("100")
    section.get_by_label("Charge at most per month").fill("300")
    section.get_by_role("button", name="Save auto top-up").click()
    expect(page.locator(".messages .success")).to_contain_text("Auto top-up")
    expect(page.get_by_test_id("auto-top-up-state")).to_contain_text("falls below 20.00 USD")
    screenshot(page, "portal-settings-auto-top-up-desktop")


NAV = ["Overview", "Usage", "Credits", "Projects", "Invoices", "Plan", "Top up", "Settings"]


def test_phone_layout_fits_and_the_navigation_works(
    phone_page, server_url, screenshot, model_prices
):
    member(customer_with_usage())
    post_event(server_url, ingest_key(), 2, provider="openai", model="gpt-4o", usage=CHAT)
    page = phone_page
    page.goto(f"{server_url}/portal/login/")
    assert no_horizontal_overflow(page)
    screenshot(page, "portal-login-phone")
    sign_in(page, server_url)
    for name in NAV:
        link = page.get_by_role("navigation", name="Portal").get_by_role("link", name=name)
        box = link.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, name
        hit = page.evaluate(
            "([x, y]) => document.elementFromPoint(x, y).textContent",
            [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
        )
        assert hit == name, f"{name} is covered by {hit!r}"
        link.tap()
        expect(link).to_have_attribute("aria-current", "page")
        if name == "Usage":
            expect(page.locator("#chart-models canvas")).to_be_visible()
        assert no_horizontal_overflow(page), name
        screenshot(page, f"portal-{name.lower().replace(' ', '-')}-phone")


def test_credits_page_shows_grants_with_what_is_left_and_their_expiry(
    page, phone_page, server_url, screenshot
):
    from billing import credits

    subscription = customer_with_usage()
    customer = subscription.customer
    member(subscription)
    billing.ensure_wallet(customer=customer, currency="CREDITS")
    billing.top_up(customer=customer, amount=Decimal(5000), currency="CREDITS", description="Pack")
    credits.grant_credits(
        customer=customer,
        amount=Decimal(300),
        name="Welcome credits",
        expires_at=timezone.now() + timedelta(days=10),
    )
    billing.adjust_balance(
        customer=customer,
        amount=Decimal(-120),
        reason="test",
        staff_user_id=None,
        currency="CREDITS",
    )
    sign_in(page, server_url)
    page.get_by_role("navigation", name="Portal").get_by_role("link", name="Credits").click()
    expect(page.get_by_test_id("credits-left")).to_have_text("5,180")
    rows = page.get_by_test_id("grant")
    expect(rows).to_have_count(2)
    # drawn first, so listed first: the promotional grant, 120 of 300 used, expiring in 10 days
    expect(rows.nth(0)).to_contain_text("Welcome credits")
    expect(rows.nth(0)).to_contain_text("180")
    expect(rows.nth(0)).to_contain_text("in 10 days")
    expect(rows.nth(1)).to_contain_text("Pack")
    expect(rows.nth(1)).to_contain_text("never")
    expect(page.get_by_test_id("next-expiry")).to_have_text("180")
    screenshot(page, "portal-credits-desktop")

    sign_in(phone_page, server_url)
    phone_page.goto(f"{server_url}/portal/credits/")
    assert no_horizontal_overflow(phone_page)
    screenshot(phone_page, "portal-credits-phone")
