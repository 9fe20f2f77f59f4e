"""GET /events: a customer's events newest first (timestamp, then id), each with its price,
cost, tokens, catalog price version and ledger transaction; pages that neither repeat nor
skip an event while events are ingested between requests; every filter; unknown and
invalid parameters; scopes; a page's query count. Amounts as in test_api_usage (gpt-4o
2.5 / 10 / cached 1.25 USD per million tokens, at cost + 20 %)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import Customer
from metering.models import Event
from tests.billing import conftest as billing_fixtures
from tests.billing import test_schema
from tests.billing.conftest import ChargeSpec, assert_error, iso, make_client
from tests.factories import SubscriptionFactory

api = billing_fixtures.api
api_key = billing_fixtures.api_key
make_key = billing_fixtures.make_key
make_customer = billing_fixtures.make_customer
make_meter = billing_fixtures.make_meter
make_plan = billing_fixtures.make_plan
seeded = test_schema.seeded  # the schema test's seeded data and in-process requests
in_process_requests = test_schema.in_process_requests

pytestmark = pytest.mark.django_db

D = Decimal
START = datetime.combine(timezone.now().date() - timedelta(days=10), time(), tzinfo=UTC)
CHAT = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024},
}


@pytest.fixture
def plan(make_meter, make_plan, model_prices):
    """LLM tokens at catalog cost + 20 %, and API calls at 0.01 each."""
    make_meter("tokens", property="llm.total_tokens", group_by=["model"], unit="tokens")
    make_meter("calls", event_name="api.call", aggregation="count", property="")
    return make_plan(
        "ai",
        charges=[
            ChargeSpec(meter="tokens", margin_percent=D(20)),
            ChargeSpec(meter="calls", unit_price=D("0.01")),
        ],
    )


def customer_on(make_customer, plan, external_id: str) -> Customer:
    customer = make_customer(external_id, funds=100)
    SubscriptionFactory(customer=customer, plan=plan, start=START)
    return customer


@pytest.fixture
def acme(make_customer, plan) -> Customer:
    return customer_on(make_customer, plan, "acme")


def ingest(api, key: str, when: datetime, *, name: str = "api.call", customer: str = "acme"):
    body = {
        "idempotency_key": key,
        "customer": customer,
        "event_name": name,
        "timestamp": iso(when),
    }
    if name == "llm.completion":
        body["properties"] = {"model": "gpt-4o", "provider": "openai", "usage": CHAT}
    response = api.post("/api/v1/events", body)
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def keys(response) -> list[str]:
    assert response.status_code == 200, response.json()
    return [row["idempotency_key"] for row in response.json()["data"]]


def at(hours: float) -> datetime:
    return START + timedelta(hours=hours)


def test_an_event_with_its_price_cost_tokens_price_version_and_transaction(api, acme, model_prices):
    ingest(api, "req-1", at(30), name="llm.completion")
    event = Event.objects.get()
    response = api.get("/api/v1/events", {"customer": "acme"})
    assert response.status_code == 200, response.json()
    price = model_prices["gpt-4o"]
    assert response.json() == {
        "data": [
            {
                "id": event.pk,
                "idempotency_key": "req-1",
                "status": "accepted",
                "customer": "acme",
                "event_name": "llm.completion",
                "timestamp": iso(at(30)),
                "received_at": iso(event.received_at),
                "properties": {"model": "gpt-4o", "provider": "openai", "usage": CHAT},
                "project": None,
                "subscription": event.subscription_id,
                "period_start": iso(START),
                "provider": "openai",
                "model": "gpt-4o",
                "tokens": {
                    "input": 176,
                    "cache_read": 1024,
                    "cache_write": 0,
                    "output": 300,
                    "reasoning": 0,
                },
                # 176 × 2.5/M + 1024 × 1.25/M + 300 × 10/M = 0.00472 cost; × 1.2 charged
                "amount": "0.005664000000",
                "currency": "USD",
                "cost": "0.004720000000",
                "model_price": {
                    "id": price.pk,
                    "provider": price.provider,
                    "model": "gpt-4o",
                    "effective_from": iso(price.effective_from),
                },
                "ledger_transaction": event.ledger_transaction_id,
            }
        ],
        "has_more": False,
    }
    assert event.ledger_transaction.reference == f"usage:{acme.pk}:req-1"


def test_an_event_without_a_catalog_price_has_none(api, acme):
    ingest(api, "call-1", at(1))
    row = api.get("/api/v1/events", {"customer": "acme"}).json()["data"][0]
    assert row["model_price"] is None
    assert row["amount"] == "0.010000000000"
    assert row["cost"] == "0.000000000000"
    assert row["tokens"] == {
        "input": 0,
        "cache_read": 0,
        "cache_write": 0,
        "output": 0,
        "reasoning": 0,
    }


def test_events_are_newest_first_by_timestamp_then_id(api, acme):
    ingest(api, "b", at(5))
    ingest(api, "c", at(9))
    ingest(api, "a", at(1))
    ingest(api, "d", at(5))  # same timestamp as b, a higher id
    assert keys(api.get("/api/v1/events", {"customer": "acme"})) == ["c", "d", "b", "a"]


def test_pages_neither_repeat_nor_skip_events_ingested_between_requests(api, acme):
    existing = []
    for n in range(9):
        existing.append(f"e{n}")
        ingest(api, f"e{n}", at(10 + n // 2))  # pairs share a timestamp
    expected = list(reversed(existing))  # same timestamps: the higher id first
    inserted = []

    seen, after = [], None
    while True:
        params = {"customer": "acme", "limit": 2} | ({"starting_after": after} if after else {})
        body = api.get("/api/v1/events", params).json()
        seen += [row["idempotency_key"] for row in body["data"]]
        # between two requests: a newer event, one stamped in the pages already read, one
        # stamped at the cursor's own time, and one older than everything
        n = len(inserted)
        for key, when in (
            (f"new{n}", at(100)),
            (f"mid{n}", at(13)),
            (f"tie{n}", datetime.fromisoformat(body["data"][-1]["timestamp"])),
            (f"old{n}", at(0.5)),
        ):
            ingest(api, key, when)
            inserted.append(key)
        if not body["has_more"]:
            break
        after = body["data"][-1]["id"]
    assert len(seen) == len(set(seen))  # no event twice
    assert [key for key in seen if key in existing] == expected  # none skipped, in order
    assert all(key.startswith("old") for key in seen if key not in existing)


def test_events_from_inclusive_to_exclusive(api, acme):
    for hour in (1, 2, 3):
        ingest(api, f"h{hour}", at(hour))
    get = lambda **params: keys(api.get("/api/v1/events", {"customer": "acme", **params}))  # noqa: E731
    assert get(**{"from": iso(at(2))}) == ["h3", "h2"]
    assert get(to=iso(at(2))) == ["h1"]
    assert get(**{"from": iso(at(2)), "to": iso(at(3))}) == ["h2"]
    day = START.date().isoformat()
    assert get(**{"from": day, "to": (START.date() + timedelta(days=1)).isoformat()}) == [
        "h3",
        "h2",
        "h1",
    ]
    assert get(to=day) == []


def test_events_by_name(api, acme):
    ingest(api, "call", at(1))
    ingest(api, "chat", at(2), name="llm.completion")
    assert keys(api.get("/api/v1/events", {"customer": "acme", "event_name": "api.call"})) == [
        "call"
    ]
    assert keys(
        api.get("/api/v1/events", {"customer": "acme", "event_name": "llm.completion"})
    ) == ["chat"]
    assert keys(api.get("/api/v1/events", {"customer": "acme", "event_name": "other"})) == []


def test_only_the_customers_own_events(api, acme, make_customer, plan):
    customer_on(make_customer, plan, "beta")
    ingest(api, "acme-1", at(1))
    beta_id = ingest(api, "beta-1", at(2), customer="beta")
    assert keys(api.get("/api/v1/events", {"customer": "acme"})) == ["acme-1"]
    assert keys(api.get("/api/v1/events", {"customer": "beta"})) == ["beta-1"]
    # another customer's event is no cursor
    assert_error(
        api.get("/api/v1/events", {"customer": "acme", "starting_after": beta_id}),
        400,
        "invalid_parameter",
        param="starting_after",
    )


@pytest.mark.parametrize(
    "params, status, code, param",
    [
        ({}, 400, "parameter_missing", "customer"),
        ({"customer": "nobody"}, 404, "customer_not_found", "customer"),
        ({"customer": "acme", "state": "accepted"}, 400, "unknown_parameter", "state"),
        ({"customer": "acme", "status": "rated"}, 400, "invalid_parameter", "status"),
        ({"customer": "acme", "start": "2026-01-01"}, 400, "unknown_parameter", "start"),
        ({"customer": "acme", "from": "2026-13-01"}, 400, "invalid_parameter", "from"),
        ({"customer": "acme", "to": "1700000000"}, 400, "invalid_parameter", "to"),
        (
            {"customer": "acme", "from": "2026-03-02", "to": "2026-03-02"},
            400,
            "invalid_parameter",
            "to",
        ),
        ({"customer": "acme", "event_name": ""}, 400, "invalid_parameter", "event_name"),
        ({"customer": "a\x00"}, 400, "invalid_parameter", "customer"),
        ({"customer": "acme", "limit": "0"}, 400, "invalid_parameter", "limit"),
        ({"customer": "acme", "limit": "101"}, 400, "invalid_parameter", "limit"),
        ({"customer": "acme", "starting_after": "x"}, 400, "invalid_parameter", "starting_after"),
        (
            {"customer": "acme", "starting_after": "999999999"},
            400,
            "invalid_parameter",
            "starting_after",
        ),
    ],
)
def test_bad_event_list_parameters(api, acme, params, status, code, param):
    assert_error(api.get("/api/v1/events", params), status, code, param=param)


def test_listing_events_needs_the_read_scope(make_key, api, acme):
    ingest(api, "e1", at(1))
    ingest_only = make_client(make_key(("ingest",))[1])
    assert_error(ingest_only.get("/api/v1/events", {"customer": "acme"}), 403, "insufficient_scope")
    read_only = make_client(make_key(("read",))[1])
    assert keys(read_only.get("/api/v1/events", {"customer": "acme"})) == ["e1"]
    # and ingesting still needs ingest, not read
    assert_error(
        read_only.post(
            "/api/v1/events", {"idempotency_key": "x", "customer": "acme", "event_name": "api.call"}
        ),
        403,
        "insufficient_scope",
    )


def test_a_page_of_events_costs_the_same_queries_whatever_its_size(api, acme):
    for n in range(12):
        ingest(api, f"e{n}", at(n), name="llm.completion" if n % 2 else "api.call")

    def count(limit: int) -> int:
        first = api.get("/api/v1/events", {"customer": "acme", "limit": 1}).json()["data"][0]
        with CaptureQueriesContext(connection) as queries:
            response = api.get(
                "/api/v1/events",
                {"customer": "acme", "limit": limit, "starting_after": first["id"]},
            )
        assert len(response.json()["data"]) == limit
        return len(queries)

    assert count(2) == count(11) <= 4


def test_the_lists_and_the_update_conform_to_the_schema_with_data(seeded):
    """Schemathesis' generated requests reach the lists' data only by chance (a random
    ``customer`` is not found): check a page of each, and an update, with real rows."""
    from tests.billing.test_schema import CHECKS, SEEDED_CUSTOMER, schema

    # through schemathesis too: Django's test client would reconnect the signals that
    # close the test's connection after a request
    body = {"idempotency_key": "schema-1", "customer": SEEDED_CUSTOMER}
    body |= {"event_name": "llm.completion", "properties": {"model": "gpt-4o", "usage": CHAT}}
    ingest = schema["/api/v1/events"]["POST"].Case(body=body, media_type="application/json")
    assert ingest.call(headers=seeded["headers"]).status_code == 201
    for path, method, kwargs in [
        ("/api/v1/events", "GET", {"query": {"customer": SEEDED_CUSTOMER}}),
        ("/api/v1/customers", "GET", {}),
        ("/api/v1/subscriptions", "GET", {"query": {"customer": SEEDED_CUSTOMER}}),
        (
            "/api/v1/customers/{external_id}",
            "PATCH",
            {
                "path_parameters": {"external_id": SEEDED_CUSTOMER},
                "body": {"address": {"country": "FR"}, "credit_limit": None},
                "media_type": "application/json",
            },
        ),
    ]:
        case = schema[path][method].Case(**kwargs)
        response = case.call_and_validate(headers=seeded["headers"], checks=CHECKS)
        assert response.status_code == 200, response.text
        if method == "GET":
            assert response.json()["data"], path
