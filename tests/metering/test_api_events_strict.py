"""Strict event input: an event with a field it does not take is refused on its own (a batch
keeps its other events); a JSON key written twice anywhere refuses the whole body. The
free-form ``properties`` keep any key."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering.models import Event
from tests.billing import conftest as billing_fixtures
from tests.billing.conftest import ChargeSpec, assert_error, post_raw
from tests.factories import SubscriptionFactory

api = billing_fixtures.api
api_key = billing_fixtures.api_key
make_key = billing_fixtures.make_key
make_customer = billing_fixtures.make_customer
make_meter = billing_fixtures.make_meter
make_plan = billing_fixtures.make_plan

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(make_customer, make_meter, make_plan):
    customer = make_customer("acme", funds=10)
    make_meter("calls", aggregation="count", property="")
    plan = make_plan("calls", charges=[ChargeSpec(meter="calls", unit_price=Decimal("0.01"))])
    SubscriptionFactory(customer=customer, plan=plan)
    return customer


def event(key: str, **extra) -> dict:
    return {
        "idempotency_key": key,
        "customer": "acme",
        "event_name": "llm.completion",
        "properties": {"anything": {"goes": 1}},
        **extra,
    }


def test_an_event_with_a_misspelt_field_is_refused(api, acme):
    response = api.post("/api/v1/events", event("e1", timestmp="2026-01-01T00:00:00Z"))
    assert_error(response, 400, "unknown_parameter", param="timestmp")
    assert not Event.objects.exists()


def test_a_batch_refuses_only_the_event_with_an_unknown_field(api, acme):
    events = [event("b1"), event("b2", idempotency_kee="x"), event("b3")]
    response = api.post("/api/v1/events/batch", {"events": events})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert [item["status"] for item in body["data"]] == ["accepted", "rejected", "accepted"]
    assert body["data"][1]["error"]["code"] == "unknown_parameter"
    assert body["data"][1]["error"]["param"] == "events[1].idempotency_kee"
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert set(Event.objects.values_list("idempotency_key", flat=True)) == {"b1", "b3"}


def test_a_batch_with_an_unknown_top_level_field_is_refused_whole(api, acme):
    response = api.post("/api/v1/events/batch", {"events": [event("t1")], "evnts": []})
    assert_error(response, 400, "unknown_parameter", param="evnts")
    assert not Event.objects.exists()


def test_a_duplicate_key_in_one_event_refuses_the_whole_batch(api, acme):
    body = (
        '{"events": [{"idempotency_key": "d1", "customer": "acme", "event_name": '
        '"llm.completion"}, {"idempotency_key": "d2", "customer": "acme", '
        '"customer": "other", "event_name": "llm.completion"}]}'
    )
    response = post_raw(api, "/api/v1/events/batch", body)
    assert_error(response, 400, "duplicate_key", param="events[1].customer")
    assert not Event.objects.exists()


def test_a_settle_event_with_an_unknown_field_is_refused(api, acme):
    hold = api.post("/api/v1/holds", {"customer": "acme", "amount": "1"}).json()
    response = api.post(f"/api/v1/holds/{hold['id']}/settle", {"event": event("s1", foo=1)})
    assert_error(response, 400, "unknown_parameter", param="event.foo")
