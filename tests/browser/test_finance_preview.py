"""A usage preview in a real browser, under the Content-Security-Policy: finance staff pick a
plan in the admin, run "Preview a new version against the last period", make the draft
cheaper and read each customer's difference; nothing is written. Screenshot:
tests/artifacts/finance-plan-preview.png.

The figures are tests/invoicing/test_preview.py's: A 33.00 → 25.30 (−7.70), B 22.00 →
16.50 (−5.50), in all 55.00 → 41.80 (−13.20)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from invoicing.models import Invoice, TaxRate
from ledger.models import Entry, Transaction
from tests.browser.conftest import _new_page
from tests.invoicing.conftest import ChargeSpec, close, meter, plan, subscribe, use

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
D = Decimal


@pytest.fixture
def strict_page(browser, request):
    """A desktop page with the Content-Security-Policy enforced (not bypassed)."""
    yield from _new_page(
        browser, request, viewport={"width": 1280, "height": 900}, bypass_csp=False
    )


def test_a_cheaper_draft_previewed_in_the_admin(strict_page, server_url, screenshot, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    page = strict_page
    TaxRate.objects.create(name="VAT", percentage=D(10))
    units = meter(name="API calls", unit="calls")
    pro = plan(
        ChargeSpec(meter=units, included_quantity=D(100), unit_price=D("0.01")),
        base_fee="20",
        code="pro",
    )
    a = subscribe(pro, external_id="acme", name="Acme Corp")
    b = subscribe(pro, external_id="bolt", name="Bolt Ltd")
    use(a, 1100)
    use(b, 50)
    close(a)
    close(b)
    get_user_model().objects.create_superuser("finance", "f@example.com", PASSWORD)
    before = (Transaction.objects.count(), Entry.objects.count(), Invoice.objects.count())
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

    page.goto(f"{server_url}/admin/login/")
    page.fill("#id_username", "finance")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server_url}/admin/")
    page.goto(f"{server_url}/admin/billing/plan/")
    page.locator("input[name=_selected_action]").first.check()
    page.select_option("select[name=action]", "preview_new_version_action")
    page.click("button[name=index]")
    expect(page.locator("h1")).to_contain_text("Preview a new version of pro")

    page.fill("#id_base_fee", "15")
    charges = page.locator("#id_charges")
    charges.fill(charges.input_value().replace('"0.01"', '"0.008"'))
    page.get_by_role("button", name="Preview against last period").click()

    totals = page.locator("#preview-totals tbody tr")
    expect(totals).to_have_count(1)
    expect(totals).to_contain_text("55.00")
    expect(totals).to_contain_text("41.80")
    expect(totals).to_contain_text("-13.20")
    rows = page.locator("#preview-rows")
    expect(rows).to_contain_text("acme")
    expect(rows).to_contain_text("-7.70 USD")
    expect(rows).to_contain_text("-5.50 USD")
    # the stylesheet came through the policy: a saving is green
    saving = page.locator("#preview-totals td.down")
    expect(saving).to_have_css("color", "rgb(0, 119, 0)")
    screenshot(page, "finance-plan-preview")

    assert (Transaction.objects.count(), Entry.objects.count(), Invoice.objects.count()) == before
    assert not [p for p in problems if "Content Security Policy" in p], problems
