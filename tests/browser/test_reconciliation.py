"""A reconciliation run from the admin in a real browser finds a planted difference: an
event whose amount no longer matches its ledger transaction (set with the database's
triggers off, as only a bug or a hand edit could). Screenshots: the run's report and the
history list."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from metering.models import Event
from tests.browser.test_smoke import PASSWORD, sign_in_to_admin
from tests.invoicing.recon_books import make_books, triggers_off


@pytest.mark.django_db(transaction=True)
def test_run_now_finds_the_planted_difference(page, server_url, screenshot):
    get_user_model().objects.create_superuser("finance", "finance@example.com", PASSWORD)
    invoice = make_books()
    event = Event.objects.filter(amount__gt=0).order_by("id").first()
    with triggers_off() as cursor:
        cursor.execute("UPDATE metering_event SET amount = amount + 1 WHERE id = %s", [event.pk])

    sign_in_to_admin(page, server_url, "finance")
    page.goto(f"{server_url}/admin/invoicing/reconciliationrun/")
    page.click("text=Run now…")
    page.fill("#id_first_day", "2026-04-01")
    page.fill("#id_last_day", "2026-05-01")
    page.click("input[name=_submit]")

    page.wait_for_selector("#check-usage_ledger")
    assert "/admin/invoicing/reconciliationrun/" in page.url
    assert "3 difference(s)" in page.inner_text(".messagelist")
    usage = page.inner_text("#check-usage_ledger")
    assert "FAILED" in usage
    assert f"transaction {event.ledger_transaction_id} usage:" in usage
    assert "Σ events ≠ the transaction's leg" in usage
    assert invoice.display_number in page.inner_text("#check-invoice_usage")
    assert "PASSED" in page.inner_text("#check-balances")
    assert screenshot(page, "reconciliation-run-difference").stat().st_size > 10_000

    page.goto(f"{server_url}/admin/invoicing/reconciliationrun/")
    row = page.inner_text("#result_list tbody tr")
    assert "FAILED" in row and "2026-04-01 – 2026-05-01" in row
    screenshot(page, "reconciliation-history")
