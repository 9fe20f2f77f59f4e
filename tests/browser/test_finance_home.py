"""The finance home in real Chromium: signed in as staff, the figures, charts and the list
of models render on a laptop-sized screen without running off it. Screenshots:
tests/artifacts/finance-home.png, finance-home-refreshed.png, customer-page.png."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from billing import credits as billing_credits
from billing.models import Customer, Meter
from metering.models import PeriodUsage
from tests.browser.test_smoke import PASSWORD, sign_in_to_admin
from tests.factories import MeterFactory, PlanFactory, unique
from tests.invoicing.test_finance import _invoice, _model_usage, _subscription

D = Decimal


def _seed() -> None:
    now = timezone.now()
    today = now.date()
    pro = PlanFactory(name="Pro", base_fee="499", currency="USD")
    team = PlanFactory(name="Team", base_fee="1490", currency="USD")
    meter = Meter.objects.get(code=MeterFactory().code)
    for index, (name, plan) in enumerate(
        [("Acme Robotics", team), ("Globex", pro), ("Initech", pro), ("Umbrella", team)]
    ):
        sub = _subscription(plan=plan, name=name, start=now - timedelta(days=200))
        for back in range(6):
            month = (now.replace(day=1) - timedelta(days=28 * back)).replace(day=1)
            PeriodUsage.objects.create(
                subscription=sub,
                meter=meter,
                period_start=month,
                period_end=month + timedelta(days=28),
                charged=D("137.123456789012") * (index + 1) * (6 - back),
                currency="USD",
            )
            _invoice(
                sub,
                total=str(D(plan.base_fee) + D(137 * (index + 1) * (6 - back))),
                period_start=month,
                status="paid" if back > 1 else "open",
                paid="0" if back <= 1 else str(D(plan.base_fee) + 137 * (index + 1) * (6 - back)),
                due_at=now - timedelta(days=15 + 25 * back * index),
            )
        _model_usage(sub, day=today, model="gpt-4.1", amount=str(120 * (index + 1)), cost="80")
        _model_usage(sub, day=today, model="claude-opus-4", amount="45.5", cost="61.25")
        billing_credits.grant_credits(
            customer=Customer.objects.get(pk=sub.customer_id),
            amount=D(250),
            expires_at=now + timedelta(days=10 * (index + 1)),
            reference=unique("grant"),
        )


@pytest.mark.django_db(transaction=True)
def test_finance_home_in_chromium(page, server_url, screenshot):
    get_user_model().objects.create_superuser("finance", "finance@example.com", PASSWORD)
    _seed()

    sign_in_to_admin(page, server_url, "finance")

    section = page.locator("#finance-USD")
    assert section.locator(".finance-currency-title").inner_text() == "USD"
    assert section.locator("svg.chart").count() >= 2  # revenue and aging
    assert "MRR" in page.locator("#kpi-mrr-USD").inner_text()
    negative = section.locator(".finance-margins tr.negative")
    assert negative.first.inner_text().startswith("openai/claude-opus-4")
    assert page.locator("#finance-reports").is_visible()
    assert page.locator(".app-billing").count() == 1  # the list of models below
    # nothing runs off a laptop screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    assert screenshot(page, "finance-home").stat().st_size > 20_000

    # the figures are a snapshot: "as of", and refreshed on demand (a CSRF-checked POST)
    assert "Figures as of" in page.locator("#finance-asof").inner_text()
    page.get_by_role("button", name="Refresh now").click()
    assert "Figures refreshed" in page.locator(".messagelist").inner_text()
    screenshot(page, "finance-home-refreshed")
    section = page.locator("#finance-USD")

    # a top customer's page leads with its summary
    section.locator(".finance-table a", has_text="Umbrella").first.click()
    summary = page.locator("#customer-summary")
    assert "Team" in summary.inner_text()
    assert summary.locator(".money").first.get_attribute("title").endswith("(exact)")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    screenshot(page, "customer-page")
