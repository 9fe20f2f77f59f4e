"""A part of more than EVENTS_BY_INSERT events writes its event rows by binary COPY
(metering.rating.sql.copy_binary): no cast is applied to what it sends, so each value must
arrive as its column's own type, exact. Here the rows written by COPY are compared, to the
last digit and NULL for NULL, with the answers given and with the same events written by
the INSERT of a small part."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.db import connection

from billing.models import BillingMode
from metering import rating
from metering.models import Event
from metering.rating import sql as rating_sql
from metering.rating import write as rating_write
from tests.metering.test_rating import (
    CHAT,
    DAY,
    NOW,
    catalog_charge,
    event,
    llm_event,
    make_meter,
    per_unit,
    statuses,
    subscribe,
)

pytestmark = pytest.mark.django_db

D = Decimal
EVENTS = 3 * rating_write.EVENTS_BY_INSERT  # by COPY
FIELDS = (
    "idempotency_key",
    "event_name",
    "timestamp",
    "properties",
    "period_start",
    "provider",
    "model",
    "model_price_id",
    "input_tokens",
    "output_tokens",
    "currency",
    "amount",
    "cost",
    "project_id",
)


def _batch(customer: str) -> list[rating.EventIn]:
    """Charges of up to 30 significant digits (18 before the point, 12 after), events that
    post nothing (no transaction: NULL), LLM events (a catalog price, a cost) and others
    (no catalog price: NULL), properties that need escaping as text."""
    events = []
    for n in range(EVENTS):
        ts = DAY + timedelta(minutes=n, microseconds=n)
        if n % 5 == 4:
            events.append(llm_event(f"l{n}", CHAT, customer=customer, ts=ts, note=f"\t\\ {n}"))
            continue
        units = (
            D(0)  # nothing charged, nothing to post
            if n % 7 == 3
            else D(f"{n * 7919 % 10**6}.{n * 104729 % 10**12:012d}")
            if n % 2
            else D(10**5 + n).scaleb(-12)  # a few millionths of a unit
        )
        events.append(
            event(f"e{n}", customer=customer, ts=ts, units=units, text='"q" \\ \n ü € {,}')
        )
    return events


def _rows(customer_id: int) -> list[tuple]:
    return list(
        Event.objects.filter(customer_id=customer_id)
        .order_by("timestamp")
        .values_list(*FIELDS, "ledger_transaction_id")
    )


def test_events_written_by_copy_keep_every_digit_and_null(monkeypatch, model_prices):
    units = make_meter("units")
    total = make_meter("total", event_name="llm.completion", prop="llm.total_tokens")
    charges = (per_unit(units, "987654.321098765432"), catalog_charge(total, "12.5"))
    stored, answered = [], []
    for external_id, by_insert in (("by-copy", 0), ("by-insert", 10**6)):
        monkeypatch.setattr(rating_write, "EVENTS_BY_INSERT", by_insert)
        customer = subscribe(*charges, external_id=external_id, billing_mode=BillingMode.POSTPAID)
        outcomes = rating.ingest_events(_batch(external_id), now=NOW)
        assert statuses(outcomes) == ["accepted"] * EVENTS
        rows = _rows(customer.id)
        by_key = {o.event["idempotency_key"]: o.event for o in outcomes}
        assert [(r[11], r[12], r[-1]) for r in rows] == [
            (by_key[r[0]]["amount"], by_key[r[0]]["cost"], by_key[r[0]]["ledger_transaction_id"])
            for r in rows
        ]
        stored.append([r[:-1] for r in rows])
        answered.append([(o.event["amount"], o.event["cost"]) for o in outcomes])
    by_copy, by_insert = stored
    assert by_copy == by_insert
    assert answered[0] == answered[1]
    amounts = [row[11] for row in by_copy]
    # the largest charges have all their digits: 18 before the point (none lost) and 12 after
    assert max(amounts) > D(10**11) and max(len(a.as_tuple().digits) for a in amounts) >= 24
    assert any(a != a.quantize(D("1E-11")) for a in amounts)  # the twelfth place kept
    assert amounts.count(D(0)) == len([n for n in range(EVENTS) if n % 7 == 3 and n % 5 != 4])
    costs = [row[12] for row in by_copy]
    assert costs.count(D(0)) == len([n for n in range(EVENTS) if n % 5 != 4])
    # NULLs stay NULLs: no catalog price for plain events, no project, no transaction for
    # the events that moved nothing, one transaction for all the others
    plain = [row for row in by_copy if row[1] == "api.call"]
    assert {row[7] for row in plain} == {None} and None not in {
        row[7] for row in by_copy if row[1] != "api.call"
    }
    assert {row[13] for row in by_copy} == {None}
    copied = Event.objects.filter(customer__external_id="by-copy")
    nothing_posted = copied.filter(amount=0, input_tokens=0, ledger_transaction__isnull=True)
    assert nothing_posted.count() == amounts.count(D(0)) > 0
    posted = copied.exclude(ledger_transaction__isnull=True)
    assert posted.values("ledger_transaction").distinct().count() == 1
    assert by_copy[1][3]["text"] == '"q" \\ \n ü € {,}'
    assert by_copy[4][3]["note"] == "\t\\ 4"
    assert by_copy[3][2] == DAY + timedelta(minutes=3, microseconds=3)


def test_copy_binary_sends_each_type_exactly_with_nulls():
    """``copy_binary`` alone, into a table of the event columns' types: what is read back
    is what was sent, whatever a number's size or scale, an instant's offset, a text's
    characters; ``None`` as NULL in every type."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE copied (i bigint, n numeric(38, 12), u numeric, "
            "t timestamptz, s varchar(50), j jsonb)"
        )
    offset = timezone(timedelta(hours=-3, minutes=-30))
    rows = [
        (
            2**63 - 1,
            D("99999999999999999999999999.999999999999"),
            D("123.4560000000000000000001"),
            datetime(2026, 12, 7, 18, 0, 0, 1, tzinfo=offset),
            'tab\t "quote" \\ newline\n ü',
            '{"a": [1, 2.50, "x\\u00fc"], "b": null}',
        ),
        (-(2**63), D("-0.000000000001"), D("1E+30"), datetime(1, 1, 2, tzinfo=UTC), "", "{}"),
        (0, D("0E-12"), D("-0"), datetime(9999, 12, 31, tzinfo=UTC), "NULL", "[]"),
        (None, None, None, None, None, None),
        (1, D("1.0000000000005"), D("1E-40"), None, "\\N", "null"),
    ]
    rating_sql.copy_binary(
        "COPY copied (i, n, u, t, s, j) FROM STDIN (FORMAT BINARY)",
        ("int8", "numeric", "numeric", "timestamptz", "text", "jsonb"),
        rows,
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT i, n, u, t, s, j::text, u::text FROM copied ORDER BY i NULLS LAST")
        read = cursor.fetchall()
    sent = sorted(rows, key=lambda row: (row[0] is None, row[0] or 0))
    assert [r[:5] for r in read] == [
        (
            row[0],
            # the column's typmod rounds as PostgreSQL does: half away from zero
            None if row[1] is None else row[1].quantize(D("1E-12"), rounding=ROUND_HALF_UP),
            row[2],
            row[3],
            row[4],
        )
        for row in sent
    ]
    assert read[0][1] == D("-0.000000000001")
    assert read[2][1] == D("1.000000000001")
    assert [r[5] for r in read] == ["{}", "[]", "null", '{"a": [1, 2.50, "xü"], "b": null}', None]
    # an unconstrained numeric keeps the scale it was sent with, as text input would
    assert [r[6] for r in read] == [
        "1000000000000000000000000000000",
        "0",
        "0.0000000000000000000000000000000000000001",
        "123.4560000000000000000001",
        None,
    ]


def test_the_copy_types_are_the_event_columns_own():
    """A binary COPY applies no cast: EVENT_TYPES must name each column's own type (a
    column added or retyped without it would be refused, or worse, misread)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name, udt_name FROM information_schema.columns "
            "WHERE table_name = 'metering_event'"
        )
        types = dict(cursor.fetchall())
    columns = rating_write.EVENT_COLUMNS.split(", ")
    assert len(columns) == len(rating_write.EVENT_TYPES)
    own = {"varchar": "text"}
    assert [own.get(types[c], types[c]) for c in columns] == list(rating_write.EVENT_TYPES)
    assert set(columns) == set(types)  # every column written
