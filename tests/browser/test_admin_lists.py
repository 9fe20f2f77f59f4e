"""The finance lists on a laptop screen (1280 px) with the admin's navigation sidebar open:
the list's filters go above it, so the table has the page's width (about 900 px, not the
630 px left beside the filters) and the finance lists fit without scrolling sideways.
Screenshot: tests/artifacts/admin-invoices-list.png."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from tests.browser.test_smoke import PASSWORD, sign_in_to_admin
from tests.invoicing.recon_books import make_books

LISTS = [
    "/admin/invoicing/invoice/",
    "/admin/invoicing/payment/",
    "/admin/ledger/transaction/",
    "/admin/ledger/entry/",
    "/admin/billing/customer/",
]


@pytest.mark.django_db(transaction=True)
def test_the_finance_lists_fit_a_laptop_screen_beside_the_sidebar(page, server_url, screenshot):
    get_user_model().objects.create_superuser("finance", "finance@example.com", PASSWORD)
    make_books()
    sign_in_to_admin(page, server_url, "finance")
    for path in LISTS:
        page.goto(f"{server_url}{path}")
        assert page.locator("#nav-sidebar").is_visible()
        assert page.locator("#changelist-filter").is_visible()
        width, visible = page.evaluate(
            "(() => { const r = document.querySelector('.results');"
            " return [r.scrollWidth, r.clientWidth]; })()"
        )
        assert visible >= 850, (path, visible)  # the page's width, not what the filters left
        assert width <= visible, (path, width, visible)  # nothing to scroll sideways
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280, path
        if path == LISTS[0]:
            screenshot(page, "admin-invoices-list")


# --- every list, with the demo's rows ------------------------------------------------------------

# Where a list's texts break: per line box a rect, so a word drawn on two lines has two tops.
# A header's words, and every word of letters in a cell, must each be on one line: "INV-000012"
# or "annual-usage-monthly" may wrap at their hyphens, and a long id or hash ("evt_3cacde…",
# whose letters touch digits or "_") may break anywhere, as overflow-wrap: break-word does.
MEASURE = r"""
(() => {
  const lines = (node, start, end) => {
    const range = document.createRange();
    range.setStart(node, start);
    range.setEnd(node, end);
    const tops = [...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top));
    return new Set(tops).size;
  };
  const broken = [];
  for (const cell of document.querySelectorAll('#result_list th, #result_list td')) {
    const words = cell.closest('thead') ? /\S+/g : /(?<![\p{L}\p{N}_])\p{L}{2,}(?![\p{L}\p{N}_])/gu;
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.data.matchAll(words)) {
        if (lines(node, m.index, m.index + m[0].length) > 1) broken.push(m[0]);
      }
    }
  }
  const results = document.querySelector('.results');
  const table = document.querySelector('#result_list');
  return {
    page: document.scrollingElement.scrollWidth,
    rows: table ? table.tBodies[0].rows.length : 0,
    table: table ? Math.ceil(table.getBoundingClientRect().width) : 0,
    box: results ? results.clientWidth : 0,
    scroll: results ? results.scrollWidth : 0,
    broken: [...new Set(broken)],
    columns: [...document.querySelectorAll('#result_list thead th')].map(
      th => `${th.innerText.trim()} ${Math.round(th.getBoundingClientRect().width)}`),
  };
})()
"""
# The lists that scrolled sideways at 1280 px with the sidebar open (943-1,149 px of content in
# the table's 900 px) and the one whose cells broke "Adjustm ent": rows in each, always.
WIDE_BEFORE = {
    "billing/creditgrant",
    "billing/plan",
    "billing/webhookendpoint",
    "ledger/account",
    "metering/event",
    "metering/modelprice",
    "metering/periodusage",
    "billing/adjustmentrequest",
    "billing/autotopup",
}
NO_SIDEBAR = {"billing/auditevent"}


def seed_every_list(live_server, monkeypatch, settings) -> None:
    """The demo (``make run``'s data) and what its beat does in its first minutes (as
    tests/test_demo_webhooks.py), and a row for the lists neither fills."""
    import io
    from urllib.parse import urlsplit

    from axes.models import AccessAttempt, AccessFailureLog
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone
    from django_celery_beat.models import (
        ClockedSchedule,
        CrontabSchedule,
        IntervalSchedule,
        PeriodicTask,
        SolarSchedule,
    )
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from billing import webhooks
    from billing.models import CurrencySetting, Customer
    from invoicing import auto_top_up
    from invoicing import services as invoicing
    from invoicing.models import Invoice, StripeEvent, TaxRate
    from ledger.models import Account
    from ledger.services.holds import place_hold
    from metering import tasks as metering_tasks
    from tests.factories import APIKeyFactory

    settings.DEBUG = True  # as make run: the webhook receiver answers only in development
    settings.WEBHOOK_ALLOW_INSECURE_URLS = True
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True
    server = urlsplit(live_server.url)
    monkeypatch.setenv("HOST", server.hostname)
    monkeypatch.setenv("PORT", str(server.port))
    # the roles' groups (a data migration's, gone after an earlier test's flush): seed_demo
    # makes its staff users, and their adjustment waiting for approval, only in them
    for role in ("Finance operator", "Finance viewer"):
        Group.objects.get_or_create(name=role)
    call_command("seed_demo", stdout=io.StringIO())
    call_command("close_periods", stdout=io.StringIO())
    for draft in Invoice.objects.filter(status="draft"):
        invoice = invoicing.finalize_invoice(invoice_id=draft.pk)
        invoicing.after_finalization(invoice_id=invoice.pk)
    metering_tasks.evaluate_alerts()
    for attempt_id in auto_top_up.run_due():
        auto_top_up.process_attempt(attempt_id=attempt_id)
    webhooks.send_due(now=timezone.now())

    owed = Invoice.objects.filter(status="open").order_by("pk").first()
    assert owed is not None
    invoicing.create_credit_note(
        invoice_id=owed.pk, amount=Decimal("1.00"), reason="Service credit", reference="cn-1"
    )
    acme = Customer.objects.get(external_id="acme")
    wallet = acme.wallets.get(currency="USD")
    place_hold(
        reference="hold-request-7f3c",
        account=wallet.account,
        destination=Account.objects.get(code="@Revenue", currency="USD"),
        amount="1.25",
        expires_at=timezone.now() + timezone.timedelta(minutes=5),
        description="A streaming completion's reservation",
    )
    TaxRate.objects.create(name="VAT 20 %", percentage="20", country="GB")
    CurrencySetting.objects.create(currency="EUR")
    StripeEvent.objects.create(
        event_id="evt_1QxYzAbCdEfGhIjKlMnOpQrS", type="payment_intent.succeeded", payload={}
    )
    # an event sent for rating a moment later (an incoming event), under an Idempotency-Key
    key = APIKeyFactory(name="Production backend", ingest_async=True)
    response = Client().post(
        "/api/v1/events",
        {
            "idempotency_key": "req-2f1d7c8e-4b6a",
            "customer": "acme",
            "event_name": "llm.completion",
            "timestamp": timezone.now().isoformat(),
            "properties": {"model": "claude-sonnet-4-5", "provider": "anthropic"},
        },
        content_type="application/json",
        headers={
            "Authorization": f"Bearer {key.secret}",
            "Idempotency-Key": "2f1d7c8e-4b6a-4f0e-9a53-1c2b3d4e5f60",
        },
    )
    assert response.status_code == 202, response.content
    # a mistyped password from elsewhere, as django-axes records it
    attempt = {
        "username": "finance@example.com",
        "ip_address": "203.0.113.7",
        "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15",
        "http_accept": "text/html",
        "path_info": "/admin/login/",
    }
    AccessAttempt.objects.create(**attempt, get_data="", post_data="", failures_since_start=1)
    AccessFailureLog.objects.create(**attempt)
    demo_admin = get_user_model().objects.get(username="admin")  # (seed_demo's)
    TOTPDevice.objects.create(user=demo_admin, name="Authenticator on a phone")
    every_minute = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.create(
        name="Close due periods", task="invoicing.tasks.close_due_periods", interval=every_minute
    )
    CrontabSchedule.objects.create(minute="0", hour="3")
    ClockedSchedule.objects.create(clocked_time=timezone.now())
    SolarSchedule.objects.create(event="sunrise", latitude="51.5", longitude="-0.12")


@pytest.mark.django_db(transaction=True)
def test_every_admin_list_fits_a_laptop_screen_and_breaks_no_word(
    page, server_url, live_server, monkeypatch, settings, screenshot
):
    from django.contrib import admin

    seed_every_list(live_server, monkeypatch, settings)
    get_user_model().objects.create_superuser("lists", "lists@example.com", PASSWORD)
    sign_in_to_admin(page, server_url, "lists")

    lists = sorted(f"{m._meta.app_label}/{m._meta.model_name}" for m in admin.site._registry)
    measured, failures = {}, []
    for name in lists:
        response = page.goto(f"{server_url}/admin/{name}/")
        assert response is not None and response.status == 200, name
        # (the audit trail is a page of its own, without the sidebar: wider still with it)
        assert page.locator("#nav-sidebar").is_visible() or name in NO_SIDEBAR, name
        measured[name] = m = page.evaluate(MEASURE)
        if m["page"] > 1280 or m["scroll"] > m["box"] or m["table"] > m["box"] or m["broken"]:
            failures.append((name, m))
            screenshot(page, f"admin-list-{name.replace('/', '-')}-failed")
    empty = sorted(name for name, m in measured.items() if m["rows"] == 0)
    assert not WIDE_BEFORE & set(empty), empty
    assert not failures, "\n".join(f"{name}: {m}" for name, m in failures)
    assert empty == [], empty  # every list measured with rows in it
    screenshot(page, "admin-list-last")
