"""Voiding a credit grant in a real browser: the list's action asks why on a confirmation
page, and the grant's audit trail shows the reason beside who voided it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.models import CreditGrant, GrantStatus
from tests.factories import CreditGrantFactory, CustomerFactory, staff_user

PASSWORD = "correct horse battery staple"


@pytest.mark.django_db(transaction=True)
def test_a_grant_is_voided_with_its_reason_on_the_trail(page, server_url, screenshot):
    staff_user("alice", "Finance operator", password=PASSWORD)
    customer = CustomerFactory(name="Initech")
    grant = CreditGrantFactory(customer=customer, amount=Decimal(250), name="Launch week")

    page.goto(f"{server_url}/admin/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server_url}/admin/")
    page.goto(f"{server_url}/admin/billing/creditgrant/")
    page.check(f"input[name=_selected_action][value='{grant.pk}']")
    page.select_option("select[name=action]", "void_action")
    page.click("button[name=index]")
    page.wait_for_selector("textarea[name=reason]")
    assert "Launch week" in page.inner_text("#content")
    assert screenshot(page, "admin-credit-grant-void-reason").stat().st_size > 5_000
    page.click("input[type=submit][value='Yes, void']")  # no reason: asked again
    page.wait_for_selector("textarea[name=reason]")
    assert CreditGrant.objects.get(pk=grant.pk).status == GrantStatus.ACTIVE
    page.fill("textarea[name=reason]", "Promotion withdrawn (ticket 88)")
    page.click("input[type=submit][value='Yes, void']")
    page.wait_for_selector("text=1 grant(s) voided.")
    assert CreditGrant.objects.get(pk=grant.pk).status == GrantStatus.VOIDED

    page.goto(f"{server_url}/admin/billing/creditgrant/{grant.pk}/change/")
    page.click("a.audit-trail-link")
    trail = page.inner_text("#result_list")
    assert "alice" in trail and "Promotion withdrawn (ticket 88)" in trail
    assert "active → voided" in trail
