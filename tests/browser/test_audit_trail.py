"""The audit trail in a real browser: a finance operator renames a customer and asks for a
large adjustment of its balance in the admin; the customer's "Audit trail" shows who
changed what (before → after), and another staff user searches the whole trail for the
request's reason and filters it by the operator; a small top-up and adjustment (no
approval) read there as well. Screenshots: tests/artifacts/audit-trail-customer.png,
audit-trail-search.png, audit-trail-small-money.png."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.browser.test_approvals import PASSWORD, sign_in
from tests.factories import CustomerFactory, staff_user


@pytest.mark.django_db(transaction=True)
def test_a_customers_changes_read_in_its_audit_trail(page, server_url, screenshot, settings):
    settings.ADJUSTMENT_APPROVAL_THRESHOLD = {"*": Decimal("1000")}
    staff_user("olga", "Finance operator", password=PASSWORD)
    staff_user("admin2", "Administrator", password=PASSWORD)
    customer = CustomerFactory(name="Initech", funds=100)

    sign_in(page, server_url, "olga")
    change = f"{server_url}/admin/billing/customer/{customer.pk}/change/"
    page.goto(change)
    page.fill("#id_name", "Initech Corp")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist")
    page.click("text=Adjust balance")
    page.fill("#id_amount", "2500")  # above the threshold: a request, tracked
    page.fill("#id_reason", "Goodwill credit (ticket 5150)")
    page.click("input[type=submit]")
    page.wait_for_selector(".messagelist")

    page.goto(change)
    page.click("a.audit-trail-link")
    trail = page.inner_text("#result_list")
    assert "olga" in trail
    assert "name: Initech → Initech Corp" in trail
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    screenshot(page, "audit-trail-customer")

    # Another staff user searches the whole trail for the reason, then filters by olga.
    page.context.clear_cookies()
    sign_in(page, server_url, "admin2")
    page.goto(f"{server_url}/admin/billing/auditevent/")
    page.fill("#searchbar", "ticket 5150")
    page.press("#searchbar", "Enter")
    page.wait_for_selector("#result_list")
    found = page.inner_text("#result_list")
    assert "Goodwill credit (ticket 5150)" in found and "olga" in found
    assert "Initech Corp" not in found  # the rename had no such reason
    page.goto(f"{server_url}/admin/billing/auditevent/")
    page.locator("#changelist-filter a", has_text="olga").click()
    mine = page.inner_text("#result_list")
    assert "name: Initech → Initech Corp" in mine and "Goodwill credit (ticket 5150)" in mine
    screenshot(page, "audit-trail-search")


@pytest.mark.django_db(transaction=True)
def test_a_small_top_up_and_adjustment_read_in_the_trail(page, server_url, screenshot, settings):
    """Below the threshold nothing waits, and yet each is a row of the trail: an applied
    adjustment request with who, the amount and why (the top-up's description)."""
    settings.ADJUSTMENT_APPROVAL_THRESHOLD = {"*": Decimal("1000")}
    staff_user("olga", "Finance operator", password=PASSWORD)
    staff_user("admin2", "Administrator", password=PASSWORD)
    customer = CustomerFactory(name="Initech", funds=100)

    sign_in(page, server_url, "olga")
    change = f"{server_url}/admin/billing/customer/{customer.pk}/change/"
    page.goto(change)
    page.click("a:text-is('Top up')")
    page.fill("#id_amount", "40")
    page.fill("#id_description", "wire REF-77")
    page.click("input[type=submit]")
    page.wait_for_selector(".messagelist")
    page.click("text=Adjust balance")
    page.fill("#id_amount", "-12.5")
    page.fill("#id_reason", "Duplicate charge (ticket 6160)")
    page.click("input[type=submit]")
    page.wait_for_selector(".messagelist")

    page.context.clear_cookies()
    sign_in(page, server_url, "admin2")
    page.goto(f"{server_url}/admin/billing/auditevent/")
    page.locator("#changelist-filter a", has_text="olga").click()
    rows = page.inner_text("#result_list")
    assert "wire REF-77" in rows and "top_up" in rows and "40" in rows
    assert "Duplicate charge (ticket 6160)" in rows and "-12.5" in rows
    assert rows.count("applied") == 2
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    screenshot(page, "audit-trail-small-money")
