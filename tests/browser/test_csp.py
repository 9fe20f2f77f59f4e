"""Under the Content-Security-Policy the pages still work in a real browser: the API docs
(Swagger UI and Redoc, from this origin only: they work offline), the admin and the portal
(bars, live fragments, the usage chart), with no policy violation reported and no request
to another origin."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from tests.billing import test_portal as portal_tests
from tests.browser.conftest import _new_page

PASSWORD = "correct horse battery staple"


@pytest.fixture
def page(browser, request):
    """A desktop page that keeps the Content-Security-Policy (the shared fixture bypasses it
    for the other tests' probes)."""
    viewport = {"width": 1280, "height": 900}
    yield from _new_page(browser, request, viewport=viewport, bypass_csp=False)


class Watch:
    """Everything a page reports that the policy would hide: violations, script errors,
    requests to other origins."""

    def __init__(self, page, server_url: str):
        self.problems: list[str] = []
        page.on(
            "console",
            lambda m: self.problems.append(m.text) if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda e: self.problems.append(str(e)))
        page.on(
            "request",
            lambda r: (
                None
                if r.url.startswith((server_url, "data:", "blob:"))
                else self.problems.append(f"request to another origin: {r.url}")
            ),
        )

        page.on(
            "response",
            lambda r: self.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )

    def violations(self) -> list[str]:
        return [
            p
            for p in self.problems
            # Redoc's "API docs by Redocly" footer asks for its logo from cdn.redoc.ly
            # whatever the options; the policy blocks it (nothing leaves) and the page works.
            if REDOC_LOGO not in p
            and ("Content Security Policy" in p or "origin" in p or p[:1] in "45")
        ]


REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.mark.django_db(transaction=True)
def test_the_api_docs_render_offline_under_the_policy(page, server_url):
    watch = Watch(page, server_url)
    page.goto(f"{server_url}/api/docs/")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "AI Billing API" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock")  # the operations, from /api/schema/
    page.goto(f"{server_url}/api/redoc/")
    page.wait_for_selector("h1")
    assert "AI Billing API" in page.inner_text("h1")
    assert watch.violations() == [], watch.problems
    # the policy is in force on this page (the one request it blocks, by design)
    assert any(REDOC_LOGO in p and "Content Security Policy" in p for p in watch.problems)


@pytest.mark.django_db(transaction=True)
def test_the_admin_works_under_the_policy(page, server_url):
    get_user_model().objects.create_superuser("admin", "admin@example.com", PASSWORD)
    watch = Watch(page, server_url)
    page.goto(f"{server_url}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server_url}/admin/")
    for path in ("/admin/billing/customer/", "/admin/billing/customer/add/"):
        page.goto(f"{server_url}{path}")
        page.wait_for_selector("#content")
    assert watch.violations() == [], watch.problems


@pytest.mark.django_db(transaction=True)
def test_the_portal_works_under_the_policy(page, server_url, settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.PORTAL_BASE_URL = server_url
    subscription = portal_tests.customer_with_usage("acme")
    member = portal_tests.portal.invite_member(
        customer=subscription.customer, email="ann@acme.example"
    )
    member.user.set_password(PASSWORD)
    member.user.save()
    watch = Watch(page, server_url)
    page.goto(f"{server_url}/portal/login/")
    page.fill("input[name=username]", "ann@acme.example")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server_url}/portal/")
    bar = page.locator(".bar span").first
    bar.wait_for()
    box, track = bar.bounding_box(), page.locator(".bar").first.bounding_box()
    assert box["width"] == pytest.approx(track["width"], abs=1)  # 14 of 10 included: full
    page.wait_for_timeout(1500)  # a live poll (htmx) under the policy
    page.goto(f"{server_url}/portal/usage/")
    page.wait_for_selector("canvas")
    page.wait_for_timeout(500)
    page.goto(f"{server_url}/portal/credits/")
    assert watch.violations() == [], watch.problems
