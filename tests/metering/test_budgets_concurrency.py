"""A project's budget under concurrency, on real PostgreSQL with real threads (each its own
connection, committing for real): events, and holds placed for the project, all at once,
cannot take it past its limit. Rating checks the budget under the customer's rating lock
(``pg_advisory_xact_lock``) and placing a project's hold takes the same lock, so each sees
what the others committed; without it, every thread would read the same spend and all
would fit."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing import projects, services
from billing.errors import BillingError
from billing.models import ProjectSpend
from billing.services import ChargeSpec, PlanSpec
from ledger.models import Hold
from metering import rating
from metering import services as metering_services
from metering.models import Event
from metering.selectors import EstimateRequest
from tests.conftest import unique
from tests.threads import run_concurrently

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

THREADS = 12
D = Decimal


@pytest.fixture
def team():
    """A customer with plenty of funds on 1 USD per unit; its project may spend 10."""
    rating.clear_caches()
    meter = services.create_meter(
        code=unique("meter"), event_name="api.call", aggregation="sum", property="units"
    )
    plan, _ = services.publish_plan(
        spec=PlanSpec(
            code=unique("plan"),
            name="Usage",
            charges=(ChargeSpec(meter=meter.code, unit_price=D(1)),),
        )
    )
    customer = services.create_customer(external_id=unique("cus"), name="Acme Robotics")
    services.top_up(customer=customer, amount=D(1000))
    services.create_subscription(customer=customer, plan=plan)
    project = projects.create_project(customer=customer, key="team-a", spend_limit=D(10))
    return customer, project


def _event(customer, i: int) -> rating.EventIn:
    return rating.EventIn(
        idempotency_key=f"e{i}",
        customer=customer.external_id,
        event_name="api.call",
        timestamp=timezone.now(),  # the subscription began just before
        properties={"units": 3},
        project="team-a",
    )


def test_concurrent_events_cannot_pass_the_limit(team):
    customer, project = team

    def send(i: int) -> str:
        outcome = rating.ingest_events([_event(customer, i)])[0]
        return outcome.status if outcome.error is None else outcome.error.code

    results = run_concurrently(send, THREADS)
    assert sorted(map(str, results)) == ["accepted"] * 3 + ["budget_exceeded"] * (THREADS - 3)
    spent = ProjectSpend.objects.get(project=project)
    assert (spent.amount, spent.event_count) == (D(9), 3)
    assert Event.objects.filter(project=project).aggregate(s=Sum("amount"))["s"] == D(9)


def test_concurrent_holds_and_events_cannot_pass_the_limit(team):
    customer, project = team

    def work(i: int) -> str:
        try:
            if i % 2:
                metering_services.place_usage_hold(
                    request=EstimateRequest(
                        customer=customer.external_id, amount=D(3), project="team-a"
                    ),
                    expires_in=600,
                )
                return "held"
            outcome = rating.ingest_events([_event(customer, i)])[0]
            return outcome.status if outcome.error is None else outcome.error.code
        except BillingError as error:
            return error.code

    results = [str(r) for r in run_concurrently(work, THREADS)]
    taken = results.count("held") + results.count("accepted")
    assert taken == 3, results  # 3 × 3 = 9 ≤ 10; a fourth would make 12
    assert set(results) <= {"held", "accepted", "budget_exceeded"}, results
    held = sum(h.amount for h in Hold.objects.filter(project_link__project=project))
    spent = ProjectSpend.objects.filter(project=project).first()
    assert held + (spent.amount if spent else 0) == D(9)
