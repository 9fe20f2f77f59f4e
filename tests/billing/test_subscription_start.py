"""The timestamp rule between a subscription's start and its usage: subscriptions start on
whole seconds (the microseconds of ``start``, or of now, are dropped at creation), so an
event stamped in the very second the subscription started is inside it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import Subscription
from tests.billing.conftest import ChargeSpec, iso

pytestmark = pytest.mark.django_db


@pytest.fixture
def metered(make_customer, make_meter, make_plan):
    make_customer("acme", billing_mode="postpaid")
    make_meter("calls", event_name="api.call", property="units")
    return make_plan("metered", charges=[ChargeSpec(meter="calls", unit_price=Decimal("0.5"))])


def event(key: str, when: datetime) -> dict:
    return {
        "idempotency_key": key,
        "customer": "acme",
        "event_name": "api.call",
        "timestamp": iso(when),
        "properties": {"units": 1},
    }


def test_an_event_in_the_second_of_an_explicit_start_is_accepted(api, metered):
    second = (timezone.now() - timedelta(minutes=1)).replace(microsecond=0)
    start = second + timedelta(microseconds=654321)
    response = api.post(
        "/api/v1/subscriptions",
        {"customer": "acme", "plan": "metered", "start": start.isoformat()},
    )
    assert response.status_code == 201, response.json()
    assert response.json()["started_at"] == iso(second)
    assert response.json()["current_period_start"] == iso(second)

    accepted = api.post("/api/v1/events", event("same-second", second))
    assert accepted.status_code == 201, accepted.json()
    assert accepted.json()["status"] == "accepted"

    before = api.post("/api/v1/events", event("a-second-early", second - timedelta(seconds=1)))
    assert before.status_code == 422, before.json()
    assert before.json()["error"]["code"] == "timestamp_before_subscription"


def test_a_subscription_started_now_starts_on_a_whole_second(api, metered, monkeypatch):
    from billing.services import subscriptions

    moment = datetime(2026, 4, 1, 9, 30, 15, 999999, tzinfo=UTC)
    monkeypatch.setattr(
        subscriptions, "timezone", type("Clock", (), {"now": staticmethod(lambda: moment)})
    )
    response = api.post("/api/v1/subscriptions", {"customer": "acme", "plan": "metered"})
    assert response.status_code == 201, response.json()
    subscription = Subscription.objects.get()
    whole = moment.replace(microsecond=0)
    assert (
        subscription.started_at,
        subscription.billing_anchor,
        subscription.current_period_start,
        subscription.phases.get().starts_at,
    ) == (whole, whole, whole, whole)
