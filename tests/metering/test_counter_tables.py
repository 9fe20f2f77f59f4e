"""The usage counters' tables and the ledger's balance rows are updated in place several
times per event (no indexed column changes): their pages are filled half full so that an
update finds room for the row's new version on its own page (a HOT update, which writes
no index entry). Metering migration 0017 and ledger 0010."""

from __future__ import annotations

import json

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db

UPDATED_IN_PLACE = (
    "metering_periodusage",
    "metering_dailyusage",
    "metering_modelusage",
    "metering_marginusage",
    "ledger_balance",
)


@pytest.mark.parametrize("table", UPDATED_IN_PLACE)
def test_counter_pages_keep_room_for_hot_updates(table):
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass", [table])
        (options,) = cursor.fetchone()
    assert "fillfactor=50" in (options or [])


def test_daily_dimensions_render_each_value_as_its_text_whatever_its_kind():
    """A daily row's dimensions are its group_by values as text (lists and objects as
    sorted JSON, absent as null), keyed by their compact JSON: looked up by the values
    themselves when they are text, so 1, 1.0 and True, equal as dict keys, still render as
    "1", "1.0" and "True", in whatever order a part meets them."""
    from datetime import UTC, datetime

    from billing.models import Meter
    from metering.rating import write as rating_write
    from metering.rating.base import EventIn
    from metering.rating.prepare import Prepared

    meter = Meter(group_by=["region", "tier"])
    cases = [
        ("1", '"1"'),
        (1, '"1"'),
        (True, '"True"'),
        (1.0, '"1.0"'),
        (None, "null"),
        ([2, 1], '"[2, 1]"'),
        ({"b": 1, "a": [None]}, '"{\\"a\\": [null], \\"b\\": 1}"'),
        ("eu", '"eu"'),
        (1, '"1"'),
        ("1", '"1"'),
        (True, '"True"'),
    ]
    known: dict = {}
    for value, region in cases:
        properties = {"region": value, "tier": "x"}
        at = datetime(2026, 5, 1, tzinfo=UTC)
        p = Prepared(index=0, source=EventIn("k", "c", "e", at, properties))
        key, dims = rating_write._dimensions(meter, p, known)
        assert key == '{"region":' + region + ',"tier":"x"}', value
        assert json.loads(dims) == json.loads(key)
