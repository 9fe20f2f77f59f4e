"""The browser-test machinery works: chromium starts, signs in to the admin on the live server,
takes screenshots, and loads the portal's vendored JavaScript from /static/."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

PASSWORD = "correct horse battery staple"


def sign_in_to_admin(page, server_url: str, username: str) -> None:
    page.goto(f"{server_url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server_url}/admin/")


@pytest.mark.django_db(transaction=True)
def test_admin_sign_in_on_desktop_and_phone(page, phone_page, server_url, screenshot):
    get_user_model().objects.create_superuser("admin", "admin@example.com", PASSWORD)

    for viewport_page, name in ((page, "admin-index-desktop"), (phone_page, "admin-index-phone")):
        sign_in_to_admin(viewport_page, server_url, "admin")
        assert viewport_page.inner_text("h1") == "Ledger, customers and invoices"
        assert viewport_page.locator("#user-tools").inner_text().upper().startswith("WELCOME")
        assert screenshot(viewport_page, name).stat().st_size > 10_000


@pytest.mark.django_db(transaction=True)
def test_vendored_javascript_is_served_and_runs(page, server_url):
    response = page.goto(f"{server_url}/static/portal/vendor/htmx.min.js")
    assert response.status == 200
    assert "javascript" in response.headers["content-type"]

    page.goto(f"{server_url}/admin/login/")
    page.add_script_tag(url="/static/portal/vendor/htmx.min.js")
    page.add_script_tag(url="/static/portal/vendor/chart.umd.min.js")
    assert page.evaluate("[htmx.version, Chart.version]") == ["2.0.11", "4.6.1"]
