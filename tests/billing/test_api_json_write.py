"""The ingest routes' answers, written by msgspec, are byte for byte what DRF's
``JSONRenderer`` wrote (``billing.api.renderers``): plain answers by msgspec, everything else
(decimals, datetimes, floats, deeper data, an indent asked for) by DRF's renderer."""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal

import pytest
from django.utils.translation import gettext_lazy
from rest_framework.renderers import JSONRenderer

from billing.api import renderers
from billing.api.renderers import FastJSONRenderer

EVENT = {
    "id": 12,
    "idempotency_key": "req:1",
    "status": "accepted",
    "amount": "0.001234500",
    "currency": "USD",
    "ledger_transaction": None,
    "cost": "0.000987000",
}
ERROR = {
    "type": "invalid_request_error",
    "code": "invalid_parameter",
    "message": "timestamp must be … (e.g. Z)",
    "param": "events[1].timestamp",
}
ANSWERS = [
    EVENT,
    {"error": ERROR},
    {
        "data": [
            {"index": 0, "status": "accepted", "event": EVENT},
            {"index": 1, "status": "rejected", "error": ERROR},
            {"index": 2, "status": "duplicate", "event": {**EVENT, "id": 2**70}},
        ],
        "accepted": 1,
        "duplicates": 1,
        "rejected": 1,
    },
    {"data": [{"index": 0, "status": "pending"}], "pending": 1, "duplicates": 0, "rejected": 0},
    {"idempotency_key": "k", "customer": "acme", "status": "pending"},
    {"s": "".join(chr(c) for c in range(0x80)) + "\u2028\u2029\x85é😀\ufeff"},
    {"s": "\u2028", "t": ["\u2029", True, False, None, -1, 0]},
    {"error": {"message": 'a "quoted" back\\slash\n', "param": None}},
    [],
    {},
    "text",
    # what msgspec would write otherwise: written by DRF's renderer
    {"amount": Decimal("1.50")},
    {"at": datetime.datetime(2026, 12, 7, 12, 0, 0, 123456, tzinfo=datetime.UTC)},
    {"day": datetime.date(2026, 12, 7)},
    {"ratio": 1e16},
    {"ratio": 0.1},
    {"id": uuid.UUID(int=5)},
    {"tuple": (1, 2)},
    {1: "int key"},
    {"bytes": b"abc"},
    {"lazy": gettext_lazy("Not found.")},
    {"deeper": {"a": {"b": {"c": [1]}}}},
    {"data": [{"event": {"properties": {"usage": {"t": 1}}}}]},
]


@pytest.mark.parametrize("data", ANSWERS, ids=range(len(ANSWERS)))
@pytest.mark.parametrize("media_type", ["application/json", "application/json; indent=4"])
def test_an_answer_is_written_byte_for_byte_as_drf_writes_it(data, media_type):
    expected = JSONRenderer().render(data, media_type, {})
    assert FastJSONRenderer().render(data, media_type, {}) == expected


def test_nothing_is_written_for_no_data():
    assert FastJSONRenderer().render(None, "application/json", {}) == b""


def test_an_ingest_answer_is_written_by_msgspec(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the standard library's json.dumps was called")

    monkeypatch.setattr("rest_framework.renderers.json.dumps", refuse)
    answer = ANSWERS[2]
    assert FastJSONRenderer().render(answer, "application/json", {}) == (
        renderers._ENCODER.encode(answer)
    )
