"""The usage half of the v1 API: events one by one and in batches, the raw usage objects of
each LLM provider end to end, authorize, holds, usage read from the counters, balances and
the model catalog. Every amount is worked out by hand from the ``model_prices`` fixture
(USD per million tokens: gpt-4o 2.5 / 10 / cached 1.25; gpt-4o-mini 0.15 / 0.6 / 0.075;
claude-sonnet-4-5 3 / 15 / read 0.3 / write 3.75; gemini-2.5-pro 1.25 / 10 / 0.125).

The subscription starts at midnight UTC ten days ago, so the current period holds the days
used here whatever the date the suite runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services
from billing.models import Customer
from ledger import selectors as ledger_selectors
from ledger.models import Hold
from metering.models import Event, PeriodUsage
from tests.billing import conftest as billing_fixtures
from tests.billing.conftest import ChargeSpec, assert_error, iso, make_client, post_raw
from tests.factories import SubscriptionFactory

# The API fixtures of tests/billing (an authenticated client, customers, meters, plans).
api = billing_fixtures.api
api_key = billing_fixtures.api_key
make_key = billing_fixtures.make_key
make_customer = billing_fixtures.make_customer
make_meter = billing_fixtures.make_meter
make_plan = billing_fixtures.make_plan

pytestmark = pytest.mark.django_db

D = Decimal
START = datetime.combine(timezone.now().date() - timedelta(days=10), time(), tzinfo=UTC)
DAY1 = START + timedelta(days=1, hours=9)
DAY2 = START + timedelta(days=2, hours=15)

# gpt-4o, 1200-token prompt of which 1024 cached, 300 out:
# 176 × 2.5/M + 1024 × 1.25/M + 300 × 10/M = 0.00044 + 0.00128 + 0.003 = 0.00472; × 1.2
CHAT = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024},
}


def money(value: str) -> str:
    """A decimal string as the API renders money: 12 places."""
    return f"{D(value):.12f}"


def llm_body(key: str, usage: dict, *, model: str | None = "gpt-4o", when=None, **extra) -> dict:
    properties = {"usage": usage, **extra}
    if model is not None:
        properties["model"] = model
    body = {
        "idempotency_key": key,
        "customer": "acme",
        "event_name": "llm.completion",
        "properties": properties,
    }
    if when is not None:
        body["timestamp"] = iso(when)
    return body


def balance(customer: Customer, currency: str = "USD") -> tuple[Decimal, Decimal, Decimal]:
    wallet = customer.wallets.select_related("account").get(currency=currency)
    view = ledger_selectors.get_balance(account=wallet.account)
    return view.posted, view.held, view.available


def subscribe(customer: Customer, plan) -> None:
    SubscriptionFactory(customer=customer, plan=plan, start=START)


def assert_422(response, code: str, *, param: str | None = None) -> None:
    assert_error(response, 422, code, param=param, type="invalid_request_error")


@pytest.fixture
def acme(make_customer) -> Customer:
    return make_customer("acme", funds=10)


@pytest.fixture
def ai_plan(make_meter, make_plan, model_prices):
    """Every token priced from the catalog at cost + 20 %, split by model."""
    make_meter("tokens", property="llm.total_tokens", group_by=["model"], unit="tokens")
    return make_plan("ai", charges=[ChargeSpec(meter="tokens", margin_percent=D(20))])


@pytest.fixture
def ai(acme, ai_plan) -> Customer:
    subscribe(acme, ai_plan)
    return acme


# --- POST /events ---------------------------------------------------------------------------------


def test_an_event_is_created_then_its_retry_is_a_duplicate(api, ai):
    body = llm_body("req-1", CHAT, when=DAY1)
    response = api.post("/api/v1/events", body)
    assert response.status_code == 201, response.json()
    row = Event.objects.get()
    assert response.json() == {
        "id": row.pk,
        "idempotency_key": "req-1",
        "status": "accepted",
        "amount": money("0.005664"),
        "currency": "USD",
        "cost": money("0.00472"),
        "ledger_transaction": row.ledger_transaction_id,
    }
    assert row.ledger_transaction_id is not None
    assert balance(ai) == (D("9.994336"), D(0), D("9.994336"))

    again = api.post("/api/v1/events", body)
    assert again.status_code == 200, again.json()
    replay = again.json()
    assert replay["status"] == "duplicate"
    assert (replay["id"], replay["amount"], replay["ledger_transaction"]) == (
        row.pk,
        money("0.005664"),
        row.ledger_transaction_id,
    )
    assert Event.objects.count() == 1
    assert balance(ai) == (D("9.994336"), D(0), D("9.994336"))


def test_a_duplicate_answers_with_the_same_figures_as_the_first_answer(api, ai):
    body = llm_body("req-1", CHAT, when=DAY1)
    first = api.post("/api/v1/events", body).json()
    again = api.post("/api/v1/events", body).json()
    assert again == {**first, "status": "duplicate"}


def test_an_idempotency_key_header_replays_the_first_answer(api, ai):
    body = llm_body("req-1", CHAT, when=DAY1)
    first = api.post("/api/v1/events", body, HTTP_IDEMPOTENCY_KEY="h-1")
    replay = api.post("/api/v1/events", body, HTTP_IDEMPOTENCY_KEY="h-1")
    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.json() == first.json()
    assert replay["Idempotent-Replayed"] == "true"
    assert Event.objects.count() == 1


def test_a_fractional_json_number_is_read_exactly(api, acme, make_meter, make_plan):
    make_meter("gpu", event_name="gpu.seconds", property="seconds")
    subscribe(acme, make_plan("gpu", charges=[ChargeSpec(meter="gpu", unit_price=D("0.1"))]))
    for key in ("a", "b", "c"):
        body = (
            f'{{"idempotency_key": "{key}", "customer": "acme", "event_name": "gpu.seconds", '
            '"properties": {"seconds": 0.1, "temperature": 0.7}}'
        )
        response = post_raw(api, "/api/v1/events", body)
        assert response.status_code == 201, response.json()
    # 3 × 0.1 s × 0.1 = 0.03 exactly (as floats: 0.030000000000000006)
    usage = PeriodUsage.objects.get()
    assert (usage.quantity, usage.charged) == (D("0.3"), D("0.03"))
    assert balance(acme)[0] == D("9.97")


def test_an_unknown_model_is_422_and_changes_nothing(api, ai):
    response = api.post("/api/v1/events", llm_body("r1", CHAT, model="gpt-9-ultra"))
    assert_422(response, "unknown_model", param="properties.model")
    assert not Event.objects.exists()
    assert balance(ai) == (D(10), D(0), D(10))


def test_an_event_the_wallet_cannot_cover_is_402_and_changes_nothing(
    api, acme, make_meter, make_plan
):
    make_meter("gpu", event_name="gpu.seconds", property="seconds")
    subscribe(acme, make_plan("gpu", charges=[ChargeSpec(meter="gpu", unit_price=D(1))]))
    response = api.post(
        "/api/v1/events",
        {
            "idempotency_key": "r1",
            "customer": "acme",
            "event_name": "gpu.seconds",
            "properties": {"seconds": 11},
        },
    )
    assert_error(response, 402, "insufficient_funds", param="customer")
    assert not Event.objects.exists()
    assert not PeriodUsage.objects.exists()
    assert balance(acme) == (D(10), D(0), D(10))


OK_EVENT = {"idempotency_key": "r1", "customer": "acme", "event_name": "llm.completion"}


@pytest.mark.parametrize(
    ("change", "status", "code", "param"),
    [
        ({"idempotency_key": None}, 400, "parameter_missing", "idempotency_key"),
        ({"customer": None}, 400, "parameter_missing", "customer"),
        ({"idempotency_key": "k" * 256}, 400, "invalid_parameter", "idempotency_key"),
        ({"timestamp": "yesterday"}, 400, "invalid_parameter", "timestamp"),
        ({"timestamp": "2026-01-01T10:00:00"}, 400, "invalid_parameter", "timestamp"),
        ({"properties": ["a"]}, 400, "invalid_parameter", "properties"),
        ({"properties": {"pad": "x" * (32 * 1024)}}, 400, "invalid_parameter", "properties"),
        ({"event_name": "nothing.reads.this"}, 422, "unknown_event_name", "event_name"),
        ({"customer": "nobody"}, 404, "customer_not_found", "customer"),
        ({"properties": {"llm": 1, "usage": CHAT}}, 400, "invalid_event", "properties.llm"),
        (
            {"properties": {"model": "gpt-4o", "usage": {"prompt_tokens": -1}}},
            400,
            "invalid_usage",
            "properties.usage.prompt_tokens",
        ),
    ],
)
def test_malformed_events_are_refused_and_change_nothing(api, ai, change, status, code, param):
    body = {**OK_EVENT, "properties": {"model": "gpt-4o", "usage": CHAT}}
    for key, value in change.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    response = api.post("/api/v1/events", body)
    if status == 422:
        assert_422(response, code, param=param)
    else:
        assert_error(response, status, code, param=param)
    assert not Event.objects.exists()
    assert balance(ai) == (D(10), D(0), D(10))


def test_properties_of_just_under_32_kib_are_accepted(api, ai):
    properties = {"model": "gpt-4o", "usage": CHAT}
    room = 32 * 1024 - len(json.dumps({**properties, "pad": ""}))
    properties["pad"] = "x" * room
    assert len(json.dumps(properties)) == 32 * 1024
    response = api.post("/api/v1/events", {**OK_EVENT, "properties": properties})
    assert response.status_code == 201, response.json()


def test_properties_are_measured_in_bytes_of_json_not_in_ascii_escapes(api, ai):
    properties = {"model": "gpt-4o", "usage": CHAT, "note": "é" * 8000}
    size = len(json.dumps(properties, ensure_ascii=False).encode())
    assert size < 17 * 1024
    response = api.post("/api/v1/events", {**OK_EVENT, "properties": properties})
    assert response.status_code == 201, response.json()


def test_a_timestamp_in_the_future_is_refused(api, ai):
    body = llm_body("r1", CHAT, when=timezone.now() + timedelta(minutes=10))
    assert_error(api.post("/api/v1/events", body), 400, "timestamp_in_future", param="timestamp")
    assert not Event.objects.exists()


def test_a_timestamp_with_an_offset_is_stored_in_utc(api, ai):
    local = (DAY1 + timedelta(hours=2)).replace(tzinfo=None).isoformat() + "+02:00"
    body = {**llm_body("r1", CHAT), "timestamp": local}
    assert api.post("/api/v1/events", body).status_code == 201
    assert Event.objects.get().timestamp == DAY1


def test_ingest_needs_the_ingest_scope(make_key, ai):
    reader = make_client(make_key(("read",))[1])
    response = reader.post("/api/v1/events", llm_body("r1", CHAT))
    assert_error(response, 403, "insufficient_scope")
    ingester = make_client(make_key(("ingest",))[1])
    assert ingester.post("/api/v1/events", llm_body("r1", CHAT)).status_code == 201
    assert_error(ingester.get("/api/v1/customers/acme/usage"), 403, "insufficient_scope")


# --- POST /events/batch ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 40])  # one INSERT; COPY past 32 events
def test_a_batch_stores_each_events_properties_as_parsed(api, ai, size):
    """The properties' JSON text that parse_event dumps to measure them is what the event
    row stores: non-ASCII text, separators, nesting and exact numbers (kept as their
    decimal text) come back as sent."""
    extra = {
        "note": "café ☕ \u2028 \"quoted\" back\\slash",
        "price": "PRICE",
        "count": 7,
        "nested": {"a": [1, None, True, "ü"]},
    }
    events = [llm_body(f"p{i}", CHAT, when=DAY1, **extra) for i in range(size)]
    text = json.dumps({"events": events}, ensure_ascii=False).replace('"PRICE"', "1.50")
    response = post_raw(api, "/api/v1/events/batch", text)
    assert response.json()["accepted"] == size, response.json()
    stored = Event.objects.filter(idempotency_key__startswith="p").values_list(
        "properties", flat=True
    )
    assert list(stored) == [
        {"usage": CHAT, "model": "gpt-4o", **extra, "price": "1.50"}  # a Decimal's text
        for _ in range(size)
    ]


def test_a_batch_answers_per_event(api, ai):
    events = [
        llm_body("b1", CHAT, when=DAY1),
        "not an object",
        llm_body("b2", CHAT, model="gpt-9-ultra"),
        llm_body("b1", CHAT, when=DAY1),  # the first one again
        {"idempotency_key": "b3", "event_name": "llm.completion"},  # no customer
        # gpt-4o-mini: 1000 × 0.15/M + 1000 × 0.6/M = 0.00075; × 1.2 = 0.0009
        llm_body("b4", {"prompt_tokens": 1000, "completion_tokens": 1000}, model="gpt-4o-mini"),
    ]
    response = api.post("/api/v1/events/batch", {"events": events})
    assert response.status_code == 200, response.json()
    body = response.json()
    first, fourth = Event.objects.get(idempotency_key="b1"), Event.objects.get(idempotency_key="b4")
    assert body == {
        "data": [
            {
                "index": 0,
                "status": "accepted",
                "event": {
                    "id": first.pk,
                    "idempotency_key": "b1",
                    "status": "accepted",
                    "amount": money("0.005664"),
                    "currency": "USD",
                    "cost": money("0.00472"),
                    "ledger_transaction": first.ledger_transaction_id,
                },
            },
            {
                "index": 1,
                "status": "rejected",
                "error": {
                    "type": "invalid_request_error",
                    "code": "invalid_parameter",
                    "message": body["data"][1]["error"]["message"],
                    "param": "events[1]",
                },
            },
            {
                "index": 2,
                "status": "rejected",
                "error": {
                    "type": "invalid_request_error",
                    "code": "unknown_model",
                    "message": body["data"][2]["error"]["message"],
                    "param": "properties.model",
                },
            },
            {
                "index": 3,
                "status": "duplicate",
                "event": {
                    "id": first.pk,
                    "idempotency_key": "b1",
                    "status": "duplicate",
                    "amount": money("0.005664"),
                    "currency": "USD",
                    "cost": money("0.00472"),
                    "ledger_transaction": first.ledger_transaction_id,
                },
            },
            {
                "index": 4,
                "status": "rejected",
                "error": {
                    "type": "invalid_request_error",
                    "code": "parameter_missing",
                    "message": body["data"][4]["error"]["message"],
                    "param": "events[4].customer",
                },
            },
            {
                "index": 5,
                "status": "accepted",
                "event": {
                    "id": fourth.pk,
                    "idempotency_key": "b4",
                    "status": "accepted",
                    "amount": money("0.0009"),
                    "currency": "USD",
                    "cost": money("0.00075"),
                    "ledger_transaction": fourth.ledger_transaction_id,
                },
            },
        ],
        "accepted": 2,
        "duplicates": 1,
        "rejected": 3,
    }
    assert all(item.get("error", {"message": "x"})["message"] for item in body["data"])
    assert Event.objects.count() == 2
    assert balance(ai)[0] == D(10) - D("0.005664") - D("0.0009")


def test_a_batch_sent_again_is_all_duplicates(api, ai):
    events = [llm_body(f"b{i}", CHAT, when=DAY1) for i in range(3)]
    api.post("/api/v1/events/batch", {"events": events})
    body = api.post("/api/v1/events/batch", {"events": events}).json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (0, 3, 0)
    assert Event.objects.count() == 3
    assert balance(ai)[0] == D(10) - 3 * D("0.005664")


def test_more_than_1000_events_is_413_and_changes_nothing(api, ai):
    events = [llm_body(f"b{i}", CHAT) for i in range(1001)]
    response = api.post("/api/v1/events/batch", {"events": events})
    assert_error(response, 413, "batch_too_large", param="events", type="invalid_request_error")
    assert not Event.objects.exists()


def test_exactly_1000_events_are_taken(api, ai):
    usage = {"prompt_tokens": 1, "completion_tokens": 0}  # 2.5e-6 × 1.2 = 0.000003 each
    events = [llm_body(f"b{i}", usage) for i in range(1000)]
    body = api.post("/api/v1/events/batch", {"events": events}).json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (1000, 0, 0)
    assert [item["index"] for item in body["data"]] == list(range(1000))
    assert balance(ai)[0] == D("9.997")


@pytest.mark.parametrize("body", [{}, {"events": "x"}, {"events": {"a": 1}}, []])
def test_a_batch_body_without_an_events_list_is_400(api, ai, body):
    assert_error(api.post("/api/v1/events/batch", body), 400, "invalid_parameter", param="events")


# --- provider usage shapes end to end -------------------------------------------------------------


def test_each_providers_usage_object_fills_the_token_columns_and_is_priced(api, ai):
    events = [
        # OpenAI Chat Completions, 100 of the 300 output tokens spent reasoning
        llm_body(
            "chat",
            {**CHAT, "completion_tokens_details": {"reasoning_tokens": 100}},
            provider="openai",
        ),
        # OpenAI Responses: 800 × 0.15/M + 200 × 0.075/M + 500 × 0.6/M = 0.000435
        llm_body(
            "responses",
            {
                "input_tokens": 1000,
                "input_tokens_details": {"cached_tokens": 200},
                "output_tokens": 500,
                "output_tokens_details": {"reasoning_tokens": 300},
                "total_tokens": 1500,
            },
            model="gpt-4o-mini",
        ),
        # Anthropic: 100 × 3/M + 2000 × 0.3/M + 500 × 3.75/M + 400 × 15/M
        #          = 0.0003 + 0.0006 + 0.001875 + 0.006 = 0.008775
        llm_body(
            "anthropic",
            {
                "input_tokens": 100,
                "cache_read_input_tokens": 2000,
                "cache_creation_input_tokens": 500,
                "output_tokens": 400,
            },
            model="claude-sonnet-4-5",
            provider="anthropic",
        ),
        # Gemini, the whole response with the model in modelVersion:
        # 600 × 1.25/M + 400 × 0.125/M + (200 + 50) × 10/M = 0.00075 + 0.00005 + 0.0025
        llm_body(
            "gemini",
            {
                "modelVersion": "gemini-2.5-pro",
                "usageMetadata": {
                    "promptTokenCount": 1000,
                    "cachedContentTokenCount": 400,
                    "candidatesTokenCount": 200,
                    "thoughtsTokenCount": 50,
                    "totalTokenCount": 1250,
                },
            },
            model=None,
        ),
    ]
    body = api.post("/api/v1/events/batch", {"events": events}).json()
    assert body["accepted"] == 4, body
    columns = {
        e.idempotency_key: (
            e.provider,
            e.model,
            e.input_tokens,
            e.cache_read_tokens,
            e.cache_write_tokens,
            e.output_tokens,
            e.reasoning_tokens,
            e.cost,
            e.amount,
        )
        for e in Event.objects.all()
    }
    assert columns == {
        "chat": ("openai", "gpt-4o", 176, 1024, 0, 300, 100, D("0.00472"), D("0.005664")),
        "responses": (
            "openai",
            "gpt-4o-mini",
            800,
            200,
            0,
            500,
            300,
            D("0.000435"),
            D("0.000522"),
        ),
        "anthropic": (
            "anthropic",
            "claude-sonnet-4-5",
            100,
            2000,
            500,
            400,
            0,
            D("0.008775"),
            D("0.01053"),
        ),
        "gemini": ("google", "gemini-2.5-pro", 600, 400, 0, 250, 50, D("0.0033"), D("0.00396")),
    }
    assert [item["event"]["amount"] for item in body["data"]] == [
        money("0.005664"),
        money("0.000522"),
        money("0.01053"),
        money("0.00396"),
    ]
    total = D("0.005664") + D("0.000522") + D("0.01053") + D("0.00396")
    assert balance(ai)[0] == D(10) - total


# --- POST /authorize ------------------------------------------------------------------------------


def test_authorize_an_amount(api, ai):
    response = api.post("/api/v1/authorize", {"customer": "acme", "amount": "4"})
    assert response.status_code == 200, response.json()
    assert response.json() == {
        "allowed": True,
        "customer": "acme",
        "currency": "USD",
        "amount": money("4"),
        "available": money("10"),
        "spendable": money("10"),
        "reason": None,
    }
    refused = api.post("/api/v1/authorize", {"customer": "acme", "amount": "10.000000000001"})
    assert refused.json() == {
        "allowed": False,
        "customer": "acme",
        "currency": "USD",
        "amount": money("10.000000000001"),
        "available": money("10"),
        "spendable": money("10"),
        "reason": "insufficient_funds",
    }


def test_authorize_a_model_call_prices_it_as_rating_would(api, ai):
    # 2000 × 2.5/M + 1000 × 10/M = 0.015; × 1.2 = 0.018
    body = {"customer": "acme", "model": "gpt-4o", "input_tokens": 2000, "max_output_tokens": 1000}
    response = api.post("/api/v1/authorize", body)
    assert response.status_code == 200, response.json()
    assert response.json() == {
        "allowed": True,
        "customer": "acme",
        "currency": "USD",
        "amount": money("0.018"),
        "available": money("10"),
        "spendable": money("10"),
        "reason": None,
    }
    assert not Event.objects.exists()  # nothing written


def test_authorize_reads_the_allowance_left(
    api, make_customer, make_meter, make_plan, model_prices
):
    customer = make_customer("acme")  # no funds at all
    make_meter("out", property="llm.output_tokens")
    plan = make_plan(
        "metered",
        charges=[ChargeSpec(meter="out", unit_price=D("0.00002"), included_quantity=D(10_000))],
    )
    subscribe(customer, plan)
    ask = {"customer": "acme", "model": "gpt-4o", "input_tokens": 500, "max_output_tokens": 1000}
    inside = api.post("/api/v1/authorize", ask).json()
    assert (inside["allowed"], inside["amount"], inside["reason"]) == (True, money("0"), None)
    used = llm_body("u1", {"prompt_tokens": 10, "completion_tokens": 9_500}, when=DAY1)
    assert api.post("/api/v1/events", used).status_code == 201  # inside the allowance: free
    # 500 of the next 1000 lie beyond the 10,000 included: 500 × 0.00002 = 0.01
    beyond = api.post("/api/v1/authorize", ask).json()
    assert beyond == {
        "allowed": False,
        "customer": "acme",
        "currency": "USD",
        "amount": money("0.01"),
        "available": money("0"),
        "spendable": money("0"),
        "reason": "insufficient_funds",
    }


def test_nothing_to_hold_inside_the_allowance(
    api, make_customer, make_meter, make_plan, model_prices
):
    customer = make_customer("acme")
    make_meter("out", property="llm.output_tokens")
    plan = make_plan(
        "metered",
        charges=[ChargeSpec(meter="out", unit_price=D("0.00002"), included_quantity=D(10_000))],
    )
    subscribe(customer, plan)
    ask = {"customer": "acme", "model": "gpt-4o", "input_tokens": 500, "max_output_tokens": 1000}
    assert_error(api.post("/api/v1/holds", ask), 400, "nothing_to_hold", param="model")
    assert not Hold.objects.exists()


def test_authorize_for_a_postpaid_customer_without_limit_has_no_ceiling(
    api, make_customer, ai_plan
):
    customer = make_customer("acme", billing_mode="postpaid")
    subscribe(customer, ai_plan)
    body = api.post("/api/v1/authorize", {"customer": "acme", "amount": "1000000"}).json()
    assert (body["allowed"], body["spendable"], body["reason"]) == (True, None, None)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"customer": "acme"}, 400, "invalid_parameter", "amount"),
        (
            {"customer": "acme", "amount": "1", "model": "gpt-4o"},
            400,
            "invalid_parameter",
            "amount",
        ),
        ({"customer": "acme", "amount": "-1"}, 400, "invalid_parameter", "amount"),
        (
            {"customer": "acme", "amount": "1", "input_tokens": 5},
            400,
            "invalid_parameter",
            "amount",
        ),
        ({"customer": "nobody", "amount": "1"}, 404, "customer_not_found", "customer"),
        ({"customer": "acme", "model": "gpt-9-ultra"}, 422, "unknown_model", "model"),
    ],
)
def test_authorize_refuses_bad_requests(api, ai, body, status, code, param):
    response = api.post("/api/v1/authorize", body)
    if status == 422:
        assert_422(response, code, param=param)
    else:
        assert_error(response, status, code, param=param)


# --- holds ----------------------------------------------------------------------------------------


def place(api, **body) -> dict:
    response = api.post("/api/v1/holds", {"customer": "acme", **body})
    assert response.status_code == 201, response.json()
    return response.json()


def test_a_hold_reserves_an_amount_and_reads_back(api, ai):
    hold = place(api, amount="4", expires_in=600)
    row = Hold.objects.get()
    assert hold == {
        "id": row.pk,
        "customer": "acme",
        "currency": "USD",
        "amount": money("4"),
        "settled_amount": money("0"),
        "status": "pending",
        "expires_at": iso(row.expires_at),
        "created_at": iso(row.created_at),
        "resolved_at": None,
    }
    assert timedelta(seconds=590) < row.expires_at - timezone.now() <= timedelta(seconds=600)
    assert balance(ai) == (D(10), D(4), D(6))
    assert api.get(f"/api/v1/holds/{row.pk}").json() == hold
    assert_error(api.get("/api/v1/holds/999999999"), 404, "hold_not_found")


def test_a_hold_from_a_model_estimate(api, ai):
    hold = place(api, model="gpt-4o", input_tokens=2000, max_output_tokens=1000)
    assert hold["amount"] == money("0.018")
    assert balance(ai) == (D(10), D("0.018"), D("9.982"))


def test_a_hold_larger_than_available_is_402(api, ai):
    assert_error(
        api.post("/api/v1/holds", {"customer": "acme", "amount": "10.5"}),
        402,
        "insufficient_funds",
        param="customer",
    )
    assert not Hold.objects.exists()
    assert balance(ai) == (D(10), D(0), D(10))


def test_settle_a_hold_with_the_event_it_paid_for(api, ai):
    hold = place(api, amount="1")
    response = api.post(
        f"/api/v1/holds/{hold['id']}/settle", {"event": llm_body("r1", CHAT, when=DAY1)}
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    row = Event.objects.get()
    assert body["hold"]["status"] == "settled"
    assert body["hold"]["settled_amount"] == money("0.005664")
    assert body["event"] == {
        "id": row.pk,
        "idempotency_key": "r1",
        "status": "accepted",
        "amount": money("0.005664"),
        "currency": "USD",
        "cost": money("0.00472"),
        "ledger_transaction": row.ledger_transaction_id,
    }
    assert body["ledger_transaction"] == row.ledger_transaction_id
    assert row.ledger_transaction.hold_id == hold["id"]
    assert balance(ai) == (D("9.994336"), D(0), D("9.994336"))


def test_settle_a_hold_with_an_event_holding_a_fractional_number(api, acme, make_meter, make_plan):
    make_meter("gpu", event_name="gpu.seconds", property="seconds")
    subscribe(acme, make_plan("gpu", charges=[ChargeSpec(meter="gpu", unit_price=D("0.1"))]))
    hold = place(api, amount="1")
    body = (
        '{"event": {"idempotency_key": "a", "customer": "acme", "event_name": "gpu.seconds", '
        '"properties": {"seconds": 2.5}}}'
    )
    response = post_raw(api, f"/api/v1/holds/{hold['id']}/settle", body)
    assert response.status_code == 200, response.json()
    # 2.5 s × 0.1 = 0.25
    assert response.json()["hold"]["settled_amount"] == money("0.25")
    assert balance(acme) == (D("9.75"), D(0), D("9.75"))


def test_settle_in_parts_then_final(api, ai):
    hold = place(api, amount="3")
    url = f"/api/v1/holds/{hold['id']}/settle"
    first = api.post(url, {"amount": "1", "final": False}).json()
    assert (first["hold"]["status"], first["hold"]["settled_amount"]) == ("pending", money("1"))
    second = api.post(url, {"amount": "0.5", "final": False}).json()
    assert (second["hold"]["status"], second["hold"]["settled_amount"]) == (
        "pending",
        money("1.5"),
    )
    assert balance(ai) == (D("8.5"), D("1.5"), D(7))
    last = api.post(url, {"amount": "0.25"}).json()
    assert (last["hold"]["status"], last["hold"]["settled_amount"]) == ("settled", money("1.75"))
    assert isinstance(last["ledger_transaction"], int)
    assert balance(ai) == (D("8.25"), D(0), D("8.25"))
    assert_error(api.post(url, {"amount": "0.25"}), 409, "hold_already_resolved")


def test_settle_more_than_is_left_of_a_hold_by_amount_is_refused(api, ai):
    hold = place(api, amount="1")
    response = api.post(f"/api/v1/holds/{hold['id']}/settle", {"amount": "1.5"})
    assert_error(response, 400, "hold_amount_exceeded")
    assert balance(ai) == (D(10), D(1), D(9))


def test_release_then_settle_is_409(api, ai):
    hold = place(api, amount="2")
    released = api.post(f"/api/v1/holds/{hold['id']}/release")
    assert released.status_code == 200, released.json()
    assert released.json()["status"] == "released"
    assert balance(ai) == (D(10), D(0), D(10))
    url = f"/api/v1/holds/{hold['id']}/settle"
    assert_error(api.post(url, {"amount": "1"}), 409, "hold_already_resolved")
    assert_error(
        api.post(url, {"event": llm_body("r1", CHAT, when=DAY1)}), 409, "hold_already_resolved"
    )
    assert not Event.objects.exists()
    assert balance(ai) == (D(10), D(0), D(10))


def test_an_expired_hold_cannot_be_settled(api, ai):
    hold = place(api, amount="2", expires_in=60)
    Hold.objects.filter(pk=hold["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    url = f"/api/v1/holds/{hold['id']}/settle"
    assert_error(api.post(url, {"amount": "1"}), 409, "hold_expired")
    assert_error(api.post(url, {"event": llm_body("r1", CHAT, when=DAY1)}), 409, "hold_expired")
    assert not Event.objects.exists()
    assert Hold.objects.get().status == "pending"
    assert balance(ai) == (D(10), D(2), D(8))


def test_settle_needs_an_event_or_an_amount(api, ai):
    hold = place(api, amount="2")
    url = f"/api/v1/holds/{hold['id']}/settle"
    assert_error(api.post(url, {}), 400, "invalid_parameter", param="event")
    both = {"amount": "1", "event": llm_body("r1", CHAT)}
    assert_error(api.post(url, both), 400, "invalid_parameter", param="event")
    assert_error(
        api.post(url, {"event": {"customer": "acme"}}),
        400,
        "parameter_missing",
        param="event.idempotency_key",
    )


# --- GET /customers/{id}/usage --------------------------------------------------------------------


@pytest.fixture
def used(api, acme, make_meter, make_plan, model_prices):
    """Three LLM calls over two days: tokens at cost + 20 %, calls beyond the first at 0.001."""
    make_meter("tokens", property="llm.total_tokens", group_by=["model"], unit="tokens")
    make_meter("calls", aggregation="count", property="", unit="calls")
    plan = make_plan(
        "ai",
        charges=[
            ChargeSpec(meter="tokens", margin_percent=D(20)),
            ChargeSpec(meter="calls", unit_price=D("0.001"), included_quantity=D(1)),
        ],
    )
    subscribe(acme, plan)
    events = [
        llm_body("u1", CHAT, when=DAY1),  # 1500 tokens: 0.005664; call 1 included
        # 2000 tokens: 0.00075 × 1.2 = 0.0009; call 2: 0.001
        llm_body(
            "u2", {"prompt_tokens": 1000, "completion_tokens": 1000}, model="gpt-4o-mini", when=DAY2
        ),
        # 3000 tokens: (0.005 + 0.01) × 1.2 = 0.018; call 3: 0.001
        llm_body("u3", {"prompt_tokens": 2000, "completion_tokens": 1000}, when=DAY2),
    ]
    body = api.post("/api/v1/events/batch", {"events": events}).json()
    assert body["accepted"] == 3, body
    return acme


def day(moment: datetime) -> str:
    return moment.date().isoformat()


def midnight(moment: datetime, days: int = 0) -> str:
    return iso(datetime.combine(moment.date() + timedelta(days=days), time(), tzinfo=UTC))


def test_usage_of_the_current_period_per_meter_and_model(api, used):
    response = api.get("/api/v1/customers/acme/usage")
    assert response.status_code == 200, response.json()
    subscription = used.subscriptions.get()
    assert response.json() == {
        "customer": "acme",
        "from": iso(subscription.current_period_start),
        "to": midnight(subscription.current_period_end - timedelta(microseconds=1), 1),
        "meters": [
            {
                "meter": "calls",
                "unit": "calls",
                "quantity": "3",
                "included_quantity": "1",
                "overage_quantity": "2",
                "amount": "0.002",
                "currency": "USD",
            },
            {
                "meter": "tokens",
                "unit": "tokens",
                "quantity": "6500",
                "included_quantity": "0",
                "overage_quantity": "6500",
                "amount": "0.024564",  # 0.005664 + 0.0009 + 0.018
                "currency": "USD",
            },
        ],
        "totals": [{"currency": "USD", "amount": "0.026564"}],
        "models": [
            {
                "provider": "openai",
                "model": "gpt-4o",
                "currency": "USD",
                "events": 2,
                "input_tokens": 2176,
                "cache_read_tokens": 1024,
                "cache_write_tokens": 0,
                "output_tokens": 1300,
                "reasoning_tokens": 0,
                "amount": "0.024664",  # 0.005664 + 0.018 + the third call's 0.001
                "cost": "0.01972",  # 0.00472 + 0.015
                "margin": "0.004944",
            },
            {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "currency": "USD",
                "events": 1,
                "input_tokens": 1000,
                "cache_read_tokens": 0,
                "cache_write_tokens": 0,
                "output_tokens": 1000,
                "reasoning_tokens": 0,
                "amount": "0.0019",  # 0.0009 + the second call's 0.001
                "cost": "0.00075",
                "margin": "0.00115",
            },
        ],
    }


def test_usage_grouped_by_model(api, used):
    body = api.get("/api/v1/customers/acme/usage", {"group_by": "model"}).json()
    tokens = next(m for m in body["meters"] if m["meter"] == "tokens")
    assert tokens["groups"] == [
        {"model": "gpt-4o", "quantity": "4500", "amount": "0.023664"},
        {"model": "gpt-4o-mini", "quantity": "2000", "amount": "0.0009"},
    ]
    calls = next(m for m in body["meters"] if m["meter"] == "calls")
    assert calls["groups"] == [{"model": None, "quantity": "3", "amount": "0.002"}]


def test_usage_over_a_range_of_whole_utc_days(api, used):
    # the second day only: from its date to the next (exclusive)
    body = api.get(
        "/api/v1/customers/acme/usage", {"from": day(DAY2), "to": midnight(DAY2, 1)}
    ).json()
    assert (body["from"], body["to"]) == (midnight(DAY2), midnight(DAY2, 1))
    assert [
        (m["meter"], m["quantity"], m["included_quantity"], m["amount"]) for m in body["meters"]
    ] == [
        ("calls", "2", "0", "0.002"),
        ("tokens", "5000", "0", "0.0189"),
    ]
    assert [(m["model"], m["events"]) for m in body["models"]] == [
        ("gpt-4o", 1),
        ("gpt-4o-mini", 1),
    ]
    # a time inside a day includes that whole day; a time at midnight excludes it
    inside = api.get(
        "/api/v1/customers/acme/usage",
        {"from": iso(DAY1), "to": iso(DAY1 + timedelta(hours=1))},
    ).json()
    assert (inside["from"], inside["to"]) == (midnight(DAY1), midnight(DAY1, 1))
    assert [(m["meter"], m["quantity"]) for m in inside["meters"]] == [
        ("calls", "1"),
        ("tokens", "1500"),
    ]
    before = api.get(
        "/api/v1/customers/acme/usage", {"from": day(START), "to": midnight(DAY1)}
    ).json()
    assert before["meters"] == [] and before["models"] == [] and before["totals"] == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"from": "not-a-date"}, "from"),
        ({"from": "2026-02-30"}, "from"),
        ({"from": "2026-01-10", "to": "2026-01-10"}, "to"),
        ({"from": "2026-01-10", "to": "2026-01-09"}, "to"),
        ({"from": "2025-01-01", "to": "2026-03-01"}, "to"),
        ({"from": "2026-01-10T10:00:00", "to": "2026-01-12"}, "from"),
        ({"group_by": "colour"}, "group_by"),
    ],
)
def test_usage_refuses_bad_parameters(api, used, params, param):
    assert_error(
        api.get("/api/v1/customers/acme/usage", params), 400, "invalid_parameter", param=param
    )


def test_usage_of_an_unknown_customer_is_404(api, db):
    assert_error(api.get("/api/v1/customers/nobody/usage"), 404, "customer_not_found")


def test_usage_without_a_subscription_needs_a_range(api, acme):
    assert_error(api.get("/api/v1/customers/acme/usage"), 400, "parameter_missing", param="from")


# --- GET /customers/{id}/balance ------------------------------------------------------------------


def test_balance_allowances_reflect_the_usage_counted(api, acme, make_meter, make_plan):
    make_meter("gpu", event_name="gpu.seconds", property="seconds")
    plan = make_plan(
        "gpu",
        charges=[ChargeSpec(meter="gpu", unit_price=D("0.01"), included_quantity=D(1000))],
    )
    subscribe(acme, plan)
    for key, seconds in (("a", 600), ("b", 500)):
        api.post(
            "/api/v1/events",
            {
                "idempotency_key": key,
                "customer": "acme",
                "event_name": "gpu.seconds",
                "properties": {"seconds": seconds},
            },
        )
    body = api.get("/api/v1/customers/acme/balance").json()
    # 1100 used: 1000 of them included, 100 × 0.01 = 1 charged
    assert body["allowances"] == [
        {
            "meter": "gpu",
            "included": money("1000"),
            "used": money("1000"),
            "remaining": money("0"),
        }
    ]
    assert body["balances"] == [
        {"currency": "USD", "posted": money("9"), "held": money("0"), "available": money("9")}
    ]
    assert body["credits"] == []


def test_balance_lists_the_credits_wallet(api, acme, make_meter, make_plan):
    make_meter("gpu", event_name="gpu.seconds", property="seconds")
    plan = make_plan(
        "credits",
        consumption_model="credits",
        units_per_credit=D(100),
        charges=[ChargeSpec(meter="gpu", included_quantity=D(50))],
    )
    subscribe(acme, plan)
    services.ensure_wallet(customer=acme, currency="CREDITS")
    services.top_up(customer=acme, amount=D(5), currency="CREDITS")
    api.post(
        "/api/v1/events",
        {
            "idempotency_key": "a",
            "customer": "acme",
            "event_name": "gpu.seconds",
            "properties": {"seconds": 250},
        },
    )
    body = api.get("/api/v1/customers/acme/balance").json()
    # 250 s, 50 included: 200 / 100 = 2 credits
    # the credits bought are a purchase grant, drawn on by the usage
    [grant] = body["credits"]
    assert grant == {
        "grant_id": grant["grant_id"],
        "name": "Top-up of 5 CREDITS",
        "source": "purchase",
        "priority": 50,
        "currency": "CREDITS",
        "granted": money("5"),
        "remaining": money("3"),
        "expires_at": None,
    }
    assert body["allowances"] == [
        {"meter": "gpu", "included": money("50"), "used": money("50"), "remaining": money("0")}
    ]
    assert {b["currency"]: b["posted"] for b in body["balances"]} == {
        "CREDITS": money("3"),
        "USD": money("10"),
    }


# --- GET /models ----------------------------------------------------------------------------------


def test_models_lists_the_catalog(api, model_prices):
    response = api.get("/api/v1/models")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["has_more"] is False
    assert [(m["provider"], m["model"]) for m in body["data"]] == [
        ("google", "gemini-2.5-pro"),
        ("anthropic", "claude-sonnet-4-5"),
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4o"),
    ]
    gpt4o = body["data"][3]
    assert (
        D(gpt4o["input_mtok"]),
        D(gpt4o["output_mtok"]),
        D(gpt4o["cache_read_mtok"]),
        gpt4o["cache_write_mtok"],
    ) == (D("2.5"), D(10), D("1.25"), None)
    assert body["data"][0]["tiers"] == [
        {
            "above_input_tokens": 200000,
            "input_mtok": "2.5",
            "output_mtok": "15",
            "cache_read_mtok": "0.25",
        }
    ]


def test_models_of_one_provider(api, model_prices):
    body = api.get("/api/v1/models", {"provider": "OpenAI"}).json()
    assert [m["model"] for m in body["data"]] == ["gpt-4o-mini", "gpt-4o"]
    assert api.get("/api/v1/models", {"provider": "mistral"}).json()["data"] == []


def test_models_shows_the_price_in_force_only(api, model_prices):
    from metering.models import ModelPrice

    old = model_prices["gpt-4o"]
    ModelPrice.objects.create(
        provider="openai",
        model="gpt-4o",
        match=old.match,
        effective_from=timezone.now() - timedelta(days=1),
        input_mtok=D(2),
        output_mtok=D(8),
    )
    ModelPrice.objects.create(
        provider="openai",
        model="gpt-4o",
        match=old.match,
        effective_from=timezone.now() + timedelta(days=30),
        input_mtok=D(1),
        output_mtok=D(4),
    )
    body = api.get("/api/v1/models", {"provider": "openai"}).json()
    gpt4o = [m for m in body["data"] if m["model"] == "gpt-4o"]
    assert [(D(m["input_mtok"]), D(m["output_mtok"])) for m in gpt4o] == [(D(2), D(8))]


@pytest.mark.parametrize("provider", ["open ai", "a/b", "x" * 101, "'; drop"])
def test_models_refuses_an_invalid_provider(api, model_prices, provider):
    assert_error(
        api.get("/api/v1/models", {"provider": provider}),
        400,
        "invalid_parameter",
        param="provider",
    )


# --- review fixes: each once a 500, a wrong charge or a stuck hold --------------------------------


def test_a_meter_no_plan_charges_never_stops_other_events(api, ai, make_meter):
    assert api.post("/api/v1/events", llm_body("before", CHAT, when=DAY1)).status_code == 201
    # a new meter on the same events, reading a property these events do not carry
    make_meter("gpu", property="gpu_seconds")
    response = api.post("/api/v1/events", llm_body("after", CHAT, when=DAY1))
    assert response.status_code == 201, response.json()
    assert response.json()["amount"] == money("0.005664")


def test_a_meter_cannot_read_an_llm_field_that_does_not_exist(api):
    response = api.post(
        "/api/v1/meters",
        {
            "code": "typo",
            "event_name": "llm.completion",
            "aggregation": "sum",
            "property": "llm.bogus_tokens",
        },
    )
    assert_error(response, 400, "invalid_parameter", param="property")


@pytest.mark.parametrize(
    "change, param",
    [
        ({"timestamp": "0001-01-01T00:00:00+01:00"}, "timestamp"),
        ({"timestamp": "9999-12-31T23:59:59-01:00"}, "timestamp"),
    ],
)
def test_timestamps_at_the_edges_of_the_calendar_are_refused_not_crashed(api, ai, change, param):
    body = {**llm_body("edge", CHAT), **change}
    assert_error(api.post("/api/v1/events", body), 400, "invalid_parameter", param=param)
    assert not Event.objects.exists()


def test_a_lone_surrogate_is_refused_not_crashed(api, ai):
    raw = json.dumps(llm_body("surrogate", CHAT)).replace('"surrogate"', '"s\\ud800"')
    response = post_raw(api, "/api/v1/events", raw)
    assert response.status_code == 400
    assert not Event.objects.exists()


def test_a_model_name_too_long_to_store_is_refused_alone(api, ai):
    events = [
        llm_body("ok", CHAT, when=DAY1),
        llm_body("long", CHAT, model="gpt-4o-2024-" + "x" * 300),
    ]
    body = api.post("/api/v1/events/batch", {"events": events}).json()
    assert [item["status"] for item in body["data"]] == ["accepted", "rejected"]
    assert body["data"][1]["error"]["code"] == "invalid_event"


def test_a_long_group_by_value_is_counted(api, acme, make_meter, make_plan, model_prices):
    make_meter("by-team", property="llm.total_tokens", group_by=["team"])
    subscribe(acme, make_plan("teams", charges=[ChargeSpec(meter="by-team", margin_percent=D(20))]))
    body = llm_body("team", CHAT, when=DAY1, team="é" * 400)
    assert api.post("/api/v1/events", body).status_code == 201


def test_usage_ranges_at_the_edges_of_the_calendar_are_refused(api, ai):
    for query in ("from=0001-01-01T00:00:00%2B01:00", "from=2026-01-01&to=9999-12-31T23:00:00Z"):
        response = api.get(f"/api/v1/customers/acme/usage?{query}")
        assert response.status_code == 400, (query, response.json())


def test_a_key_spelled_like_a_hashed_one_gets_its_own_ledger_reference(api, ai):
    long_key = "k" * 250
    from metering.rating.write import _reference

    spoof = _reference(ai.pk, long_key).split(":", 2)[2]  # "sha256:<hex>"
    first = api.post("/api/v1/events", llm_body(long_key, CHAT, when=DAY1))
    second = api.post("/api/v1/events", llm_body(spoof, CHAT, when=DAY1))
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["ledger_transaction"] != second.json()["ledger_transaction"]


def test_settling_a_hold_with_usage_already_recorded_is_refused(api, ai):
    assert api.post("/api/v1/events", llm_body("done", CHAT, when=DAY1)).status_code == 201
    hold = api.post("/api/v1/holds", {"customer": "acme", "amount": "1.00"}).json()
    response = api.post(
        f"/api/v1/holds/{hold['id']}/settle", {"event": llm_body("done", CHAT, when=DAY1)}
    )
    assert_error(response, 409, "event_already_recorded", param="event.idempotency_key")
    assert Hold.objects.get(pk=hold["id"]).status == "pending"


def test_an_event_cannot_settle_a_hold_already_settled_in_part_by_amount(api, ai):
    hold = api.post("/api/v1/holds", {"customer": "acme", "amount": "1.00"}).json()
    part = api.post(f"/api/v1/holds/{hold['id']}/settle", {"amount": "0.25", "final": False})
    assert part.status_code == 200
    response = api.post(
        f"/api/v1/holds/{hold['id']}/settle", {"event": llm_body("late", CHAT, when=DAY1)}
    )
    assert_error(response, 409, "hold_partly_settled", param="event")
    assert not Event.objects.exists()


def test_a_hold_retried_with_its_reference_is_the_same_hold(api, ai):
    body = {"customer": "acme", "amount": "1.00", "reference": "job-7", "expires_in": 600}
    first = api.post("/api/v1/holds", body)
    second = api.post("/api/v1/holds", body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    other = api.post("/api/v1/holds", {**body, "amount": "2.00"})
    assert_error(other, 409, "reference_reused", param="reference")
    assert Hold.objects.count() == 1


def test_a_plan_change_across_consumption_models_waits_for_the_period_end(api, ai, make_plan):
    credits = make_plan("credit-pack", consumption_model="credits", units_per_credit=D(1000))
    subscription = ai.subscriptions.get()
    now = api.post(f"/api/v1/subscriptions/{subscription.pk}/change", {"plan": "credit-pack"})
    assert_error(now, 400, "invalid_parameter", param="plan")
    later = api.post(
        f"/api/v1/subscriptions/{subscription.pk}/change",
        {"plan": "credit-pack", "at": "period_end"},
    )
    assert later.status_code == 200, later.json()
    assert later.json()["subscription"]["scheduled_plan"] == f"{credits.code}@{credits.version}"


def test_a_hold_past_a_postpaid_credit_limit_says_so(api, make_customer, ai_plan):
    customer = make_customer("globex", billing_mode="postpaid", credit_limit=D(5))
    subscribe(customer, ai_plan)
    response = api.post("/api/v1/holds", {"customer": "globex", "amount": "6"})
    assert_error(response, 402, "credit_limit_exceeded", param="customer")
    assert api.post("/api/v1/holds", {"customer": "globex", "amount": "5"}).status_code == 201


@pytest.mark.parametrize(
    "timestamp, ok",
    [
        ("2026-W47-1T12:00:00Z", False),  # ISO 8601, not RFC 3339
        ("20261123T120000Z", False),
        (f"{(DAY1).strftime('%Y-%m-%dT%H:%M:%S')}.123456789Z", True),  # nanoseconds
        (f"{(DAY1).strftime('%Y-%m-%dT%H:%M:%S')}+00:00", True),
    ],
)
def test_timestamps_are_rfc_3339(api, ai, timestamp, ok):
    response = api.post("/api/v1/events", {**llm_body("ts", CHAT), "timestamp": timestamp})
    if ok:
        assert response.status_code == 201, response.json()
    else:
        assert_error(response, 400, "invalid_parameter", param="timestamp")


def test_a_refused_credits_event_creates_no_wallet(api, ai, make_meter, make_plan):
    """A subscription whose plan became a credits plan (as a period close applying a
    scheduled change may leave it) before any credits wallet exists."""
    from billing.models import SubscriptionPhase

    make_meter("credit-tokens", property="llm.total_tokens")
    plan = make_plan(
        "pack",
        consumption_model="credits",
        units_per_credit=D(1000),
        charges=[ChargeSpec(meter="credit-tokens")],
    )
    subscription = ai.subscriptions.get()
    SubscriptionPhase.objects.create(subscription=subscription, plan=plan, starts_at=DAY1)
    response = api.post("/api/v1/events", llm_body("no-credits", CHAT, when=DAY2))
    assert_error(response, 402, "insufficient_credits", param="customer")
    assert sorted(ai.wallets.values_list("currency", flat=True)) == ["USD"]
    assert not Event.objects.exists()


def test_subscribing_to_a_credits_plan_opens_the_credits_wallet(api, acme, make_meter, make_plan):
    make_meter("pack-tokens", property="llm.total_tokens")
    plan = make_plan(
        "pack2",
        consumption_model="credits",
        units_per_credit=D(1000),
        charges=[ChargeSpec(meter="pack-tokens")],
    )
    subscribe(acme, plan)
    response = api.post("/api/v1/customers/acme/top-ups", {"amount": "500", "currency": "CREDITS"})
    assert response.status_code == 201, response.json()
    assert sorted(acme.wallets.values_list("currency", flat=True)) == ["CREDITS", "USD"]
