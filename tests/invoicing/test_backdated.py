"""A subscription created through the API with a start in the past: usage stamped in its
earlier periods is invoiced by the period close (it was once charged to the wallet and
carried by no invoice)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import Subscription
from invoicing import services as invoicing
from invoicing.models import Invoice
from tests.billing.conftest import (
    ChargeSpec,
    api,
    api_key,
    iso,
    make_customer,
    make_key,
    make_meter,
    make_plan,
)
from tests.reconciliation import assert_reconciled

pytestmark = pytest.mark.django_db
__all__ = ["api", "api_key", "make_customer", "make_key", "make_meter", "make_plan"]  # fixtures

START = datetime.combine(timezone.now().date() - timedelta(days=45), time(), tzinfo=UTC)


@pytest.fixture
def metered(make_customer, make_meter, make_plan):
    make_customer("acme", billing_mode="postpaid")
    make_meter("calls", event_name="api.call", property="units")
    return make_plan("metered", charges=[ChargeSpec(meter="calls", unit_price=Decimal("0.5"))])


def test_usage_in_a_back_dated_period_is_invoiced(api, metered):
    created = api.post(
        "/api/v1/subscriptions", {"customer": "acme", "plan": "metered", "start": iso(START)}
    )
    assert created.status_code == 201, created.json()
    assert created.json()["current_period_start"] == iso(START)
    event = {
        "idempotency_key": "early",
        "customer": "acme",
        "event_name": "api.call",
        "timestamp": iso(START + timedelta(days=2)),
        "properties": {"units": 3},
    }
    accepted = api.post("/api/v1/events", event)
    assert accepted.status_code == 201, accepted.json()
    assert accepted.json()["amount"] == "1.500000000000"

    assert invoicing.close_due_periods() >= 1  # what beat's close runs every five minutes
    first = Invoice.objects.order_by("period_start").first()
    assert first is not None and (first.period_start, first.usage_charged) == (
        START,
        Decimal("1.5"),
    )
    assert first.lines.filter(kind="usage", amount=Decimal("1.50")).exists()
    assert_reconciled(Subscription.objects.get(pk=created.json()["id"]))


@pytest.mark.parametrize(
    "path, body",
    [("cancel", {"at": "period_end"}), ("change", {"plan": "dearer", "at": "period_end"})],
)
def test_a_period_end_change_waits_for_the_close_to_catch_up(api, metered, make_plan, path, body):
    """A back-dated subscription's current period is one that has ended until the close has
    run: "at period end" would mean a period in the past. Refused until then, then applied
    to the period that contains now."""
    make_plan("dearer", charges=[ChargeSpec(meter="calls", unit_price=Decimal("0.75"))])
    created = api.post(
        "/api/v1/subscriptions", {"customer": "acme", "plan": "metered", "start": iso(START)}
    ).json()
    url = f"/api/v1/subscriptions/{created['id']}/{path}"
    refused = api.post(url, body)
    assert refused.status_code == 409, refused.json()
    assert refused.json()["error"]["code"] == "period_close_pending"
    subscription = Subscription.objects.get(pk=created["id"])
    assert (subscription.cancel_at_period_end, subscription.scheduled_plan_id) == (False, None)

    invoicing.close_due_periods()
    accepted = api.post(url, body)
    assert accepted.status_code == 200, accepted.json()
    subscription.refresh_from_db()
    assert subscription.current_period_end > timezone.now()
