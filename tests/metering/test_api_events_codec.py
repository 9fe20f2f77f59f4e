"""The ingest routes read and write their JSON with msgspec (billing.api.parsers,
billing.api.renderers, metering.api.ingest._properties_json) and answer exactly as before:
a key written twice deep in one event refuses the whole batch, the answer's bytes are
DRF's, the properties' size is measured as documented (``json.dumps`` with its blanks)."""

from __future__ import annotations

import json

import pytest
from rest_framework.renderers import JSONRenderer

from metering.api.ingest import MAX_PROPERTIES_BYTES, _properties_json
from metering.models import Event
from tests.billing.conftest import assert_error, post_raw
from tests.metering import test_api_events_strict as strict

api = strict.api
api_key = strict.api_key
make_key = strict.make_key
make_customer = strict.make_customer
make_meter = strict.make_meter
make_plan = strict.make_plan
acme = strict.acme
event = strict.event

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("1", "2"),
        ('"a:b"', "2"),  # the dropped value holds a colon
        ("1", '"a:b\\u003a"'),  # the kept one holds a colon and a colon's escape
        ("1", '"\\\\u003a"'),  # an escaped backslash before "u003a": no colon at all
        ('{"x": 1}', "[]"),
    ],
)
def test_a_key_written_twice_deep_in_one_event_refuses_the_whole_batch(api, acme, first, second):
    events = [json.dumps(event(f"n{i}")) for i in range(3)]
    events[2] = (
        '{"idempotency_key": "n2", "customer": "acme", "event_name": "llm.completion", '
        f'"properties": {{"usage": {{"prompt_tokens": {first}, "note": "t:1", '
        f'"prompt_tokens": {second}}}}}}}'
    )
    response = post_raw(api, "/api/v1/events/batch", '{"events": [' + ", ".join(events) + "]}")
    assert_error(response, 400, "duplicate_key", param="events[2].properties.usage.prompt_tokens")
    assert not Event.objects.exists()


def test_a_key_written_twice_in_a_single_event_is_refused(api, acme):
    body = json.dumps(event("s1"))[:-1] + ', "event_name": "llm.completion"}'
    assert_error(post_raw(api, "/api/v1/events", body), 400, "duplicate_key", param="event_name")
    assert not Event.objects.exists()


def test_a_batch_answer_is_written_byte_for_byte_as_drf_writes_it(api, acme):
    events = [
        event("é:1\u2028"),
        event("é:1\u2028"),  # a duplicate
        event("b3", timestamp="2026-01-01T00:00:00"),  # no offset: rejected alone
        "not an object",
        event("b4", properties={"price": "1.50", "n": [1, None, True]}),
    ]
    response = api.post("/api/v1/events/batch", {"events": events})
    assert response.status_code == 200, response.json()
    assert [item["status"] for item in response.data["data"]] == [
        "accepted",
        "duplicate",
        "rejected",
        "rejected",
        "accepted",
    ]
    assert response.content == JSONRenderer().render(response.data, "application/json", {})
    assert b"\\u2028" in response.content  # escaped, as DRF does


@pytest.mark.parametrize("route", ["/api/v1/events", "/api/v1/events/batch"])
def test_an_error_answer_is_written_byte_for_byte_as_drf_writes_it(api, acme, route):
    response = post_raw(api, route, '{"events": [], "x": "é\u2029"')
    assert response.status_code == 400
    assert response.content == JSONRenderer().render(response.data, "application/json", {})


def _properties_of_size(size: int) -> dict:
    """Properties whose JSON, as ``json.dumps`` writes it (a blank after each ``,`` and
    ``:``), is ``size`` bytes: many short pairs, so that without the blanks it is far
    smaller (a measure taken on compact JSON would let it through)."""
    properties: dict = {f"{i:04d}": 0 for i in range(2500)}
    properties["pad"] = ""
    length = len(json.dumps(properties, ensure_ascii=False).encode())
    properties["pad"] = "é" * ((size - length) // 2) + "x" * ((size - length) % 2)
    assert len(json.dumps(properties, ensure_ascii=False).encode()) == size
    compact = json.dumps(properties, separators=(",", ":"), ensure_ascii=False)
    assert len(compact.encode()) < MAX_PROPERTIES_BYTES
    return properties


def test_properties_are_measured_as_documented(api, acme):
    events = [
        event("at", properties=_properties_of_size(MAX_PROPERTIES_BYTES)),
        event("over", properties=_properties_of_size(MAX_PROPERTIES_BYTES + 1)),
    ]
    response = api.post("/api/v1/events/batch", {"events": events})
    assert response.status_code == 200, response.json()
    accepted, over = response.json()["data"]
    assert accepted["status"] == "accepted", accepted
    assert over["status"] == "rejected"
    assert over["error"]["param"] == "events[1].properties"
    assert over["error"]["message"] == (
        f"properties may hold at most {MAX_PROPERTIES_BYTES} bytes of JSON"
    )
    stored = Event.objects.get(idempotency_key="at").properties
    assert stored == events[0]["properties"]


@pytest.mark.parametrize(
    "properties",
    [
        {},
        {"model": "gpt-4o", "usage": {"prompt_tokens": 12, "cached": None, "ok": True}},
        {"note": 'café ☕ \u2028 "quoted" back\\slash \x01 \x7f 😀', "list": [[], {}]},
        _properties_of_size(MAX_PROPERTIES_BYTES),
        _properties_of_size(MAX_PROPERTIES_BYTES + 1),
    ],
)
def test_the_properties_text_holds_what_json_dumps_wrote(properties):
    """What the event row stores (jsonb: blanks do not matter) and whether it is refused."""
    old = json.dumps(properties, default=str, ensure_ascii=False)
    text = _properties_json(properties)
    if len(old.encode()) > MAX_PROPERTIES_BYTES:
        assert text is None
    else:
        assert text is not None
        assert json.loads(text) == json.loads(old)


def _variants() -> list[object]:
    """Events that parse_event takes and events it refuses, one field varied at a time."""
    base = {
        "idempotency_key": "k1",
        "customer": "acme",
        "event_name": "llm.completion",
        "timestamp": "2026-11-23T12:00:00Z",
        "properties": {"model": "gpt-4o", "n": 1},
    }
    texts: list[object] = [
        "",
        " ",
        "\u3000",
        "\x1c",
        " a ",
        "a\x00",
        "x" * 200,
        "x" * 201,
        "x" * 255,
        "x" * 256,
        None,
        1,
        ["a"],
        {"a": 1},
        True,
    ]
    stamps: list[object] = [
        "2026-11-23T12:00:00z",
        "2026-11-23t12:00:00+02:00",
        "2026-11-23 12:00:00-05:30",
        "2026-11-23T12:00:00.123456789Z",
        "2026-11-23T12:00:00.1Z",
        "2026-11-23T12:00:00",
        "2026-11-23",
        "1999-12-31T23:59:59Z",
        "2026-13-01T00:00:00Z",
        "2026-11-23T12:00:00+24:00",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+00:01",
        None,
        1,
        "",
    ]
    variants: list[object] = [base, {}, [], "event", None, {**base, "extra": 1}]
    for name in ("idempotency_key", "customer", "event_name", "project"):
        variants += [{**base, name: text} for text in texts]
        variants.append({k: v for k, v in base.items() if k != name})
    variants += [{**base, "timestamp": stamp} for stamp in stamps]
    variants += [{k: v for k, v in base.items() if k != "timestamp"}]
    properties: tuple[object, ...] = (
        None,
        [],
        "x",
        1,
        {},
        {"big": "x" * MAX_PROPERTIES_BYTES},
        {"a": [1, {"b": None}]},
    )
    variants += [{**base, "properties": value} for value in properties]
    variants.append({k: v for k, v in base.items() if k != "properties"})
    return variants


def test_the_plain_reading_of_an_event_takes_only_what_parse_event_takes_and_alike():
    """``_plain_event`` (a batch's fast path) answers None or exactly parse_event's event;
    timestamps remembered across events change nothing."""
    from datetime import UTC, datetime

    from billing.api.errors import APIError
    from metering.api.ingest import _plain_event, parse_event

    now = datetime(2026, 12, 1, tzinfo=UTC)
    moments: dict = {}
    taken = 0
    for raw in _variants() * 2:
        try:
            expected = parse_event(raw, now=now)
        except APIError:
            expected = None
        plain = _plain_event(raw, now, moments)
        if plain is not None:
            assert plain == expected, raw
            taken += 1
    assert taken > 40  # the fast path is the usual one


@pytest.mark.parametrize(
    "value",
    [
        "0",
        "-0",
        "0E-20",
        "1E-7",
        "-1E-7",
        "0.000001",
        "0.0000009999999999",
        "12.5",
        "-3",
        "123456789012345.123456789012",
        "1E+10",
        "0.0000000000005",
        "0.0000000000015",
    ],
)
def test_an_amount_is_written_with_the_ledger_s_twelve_places(value):
    from decimal import Decimal

    from metering import rating
    from metering.api.ingest import _money

    amount = Decimal(value)
    assert _money(amount) == format(amount.quantize(rating.LEDGER_QUANTUM), "f")
