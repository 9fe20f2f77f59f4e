"""The portal's projects page: each project's spend this period against its limit, what is
left, the projects of this customer only."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import projects
from metering import rating
from tests.billing.test_portal import customer_with_usage, member_client

pytestmark = pytest.mark.django_db
D = Decimal


def charge(customer, key: str, units: int, project: str) -> str:
    now = timezone.now()
    outcome = rating.ingest_events(
        [
            rating.EventIn(
                idempotency_key=key,
                customer=customer.external_id,
                event_name="api.call",
                timestamp=now - timedelta(minutes=5),
                properties={"units": D(units)},
                project=project,
            )
        ],
        now=now,
    )[0]
    return outcome.status if outcome.error is None else outcome.error.code


def test_the_page_shows_each_projects_spend_against_its_limit():
    # 0.25 per call past 10 included: customer_with_usage used all 14 already (no project)
    subscription = customer_with_usage("acme")
    customer = subscription.customer
    projects.create_project(customer=customer, key="team-a", name="Search", spend_limit=D(2))
    projects.create_project(customer=customer, key="team-b", name="Chat")
    assert charge(customer, "e1", 6, "team-a") == "accepted"  # 1.50
    assert charge(customer, "e2", 4, "team-a") == "budget_exceeded"  # 1.50 + 1.00 > 2
    assert charge(customer, "e3", 1, "team-b") == "accepted"  # 0.25
    other = customer_with_usage("globex").customer
    projects.create_project(customer=other, key="secret-team")

    page = member_client(customer, "ann@acme.example").get("/portal/projects/")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('data-testid="project"') == 2
    assert "Search" in html and "(team-a)" in html and "Chat" in html
    assert 'data-testid="spent">1.50 USD' in html
    assert 'data-testid="left"><span >0.50</span>' in html
    assert 'aria-valuenow="75"' in html  # 1.50 of 2
    assert "no limit" in html
    assert "secret-team" not in html


def test_without_projects_the_page_says_how_to_make_them():
    customer = customer_with_usage("acme").customer
    html = member_client(customer, "ann@acme.example").get("/portal/projects/").content.decode()
    assert "No projects yet" in html
