"""A large manual adjustment in a real browser: one finance operator asks for it, a second
approves it, and the audit trail shows who asked, who approved and why."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.models import AdjustmentRequest, ApprovalStatus
from tests.factories import CustomerFactory, staff_user

PASSWORD = "correct horse battery staple"


def sign_in(page, server_url: str, username: str) -> None:
    page.goto(f"{server_url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server_url}/admin/")


@pytest.mark.django_db(transaction=True)
def test_a_large_adjustment_approved_by_a_second_person(
    browser, page, server_url, screenshot, settings
):
    settings.ADJUSTMENT_APPROVAL_THRESHOLD = {"*": Decimal("1000")}
    staff_user("alice", "Finance operator", password=PASSWORD)
    staff_user("bob", "Finance operator", password=PASSWORD)
    customer = CustomerFactory(name="Initech", funds=100)

    # Alice asks for 2,500 USD: it waits.
    sign_in(page, server_url, "alice")
    page.goto(f"{server_url}/admin/billing/customer/{customer.pk}/change/")
    page.click("text=Adjust balance")
    page.fill("#id_amount", "2500")
    page.fill("#id_reason", "SLA credit for the March outage (ticket 4711)")
    page.click("input[type=submit]")
    page.wait_for_url(f"{server_url}/admin/billing/adjustmentrequest/*/change/")
    assert "another staff user must approve it" in page.content()
    assert page.locator("a.approve-link").count() == 0
    request = AdjustmentRequest.objects.get()
    assert request.status == ApprovalStatus.PENDING

    # Bob, in a browser of his own, approves it.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    bob = context.new_page()
    sign_in(bob, server_url, "bob")
    bob.goto(f"{server_url}/admin/billing/adjustmentrequest/")  # opens on the pending ones
    bob.click(f"text=adjustment #{request.pk}")
    bob.click("a.approve-link")
    bob.fill("#id_decision_note", "Ticket 4711 checked")
    bob.click("input[type=submit]")
    bob.wait_for_selector("text=posted as ledger transaction")
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED
    assert request.decided_by.username == "bob"

    # The customer's balance has it, and the request's audit trail says who and why.
    bob.goto(f"{server_url}/admin/billing/customer/{customer.pk}/change/")
    assert "2,600.00" in bob.content()
    bob.goto(f"{server_url}/admin/billing/adjustmentrequest/{request.pk}/change/")
    bob.click("a.audit-trail-link")
    rows = bob.locator("#result_list tbody tr")
    assert rows.count() == 2
    trail = bob.inner_text("#result_list")
    assert "alice" in trail and "bob" in trail
    assert "SLA credit for the March outage (ticket 4711)" in trail
    assert "Ticket 4711 checked" in trail
    assert "pending → approved" in trail
    assert screenshot(bob, "admin-approval-audit-trail").stat().st_size > 10_000
    context.close()
