"""The finance lists on a laptop screen (1280 px) with the admin's navigation sidebar open:
the list's filters go above it, so the table has the page's width (about 900 px, not the
630 px left beside the filters) and the finance lists fit without scrolling sideways.
Screenshot: tests/artifacts/admin-invoices-list.png."""

from __future__ import annotations

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
