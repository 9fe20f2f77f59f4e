"""Filling a bench database. The objects a benchmark needs a few of (meters, plans, a few
hundred customers, an API key, catalog rows, ledger accounts) come from the factories the
tests use (tests/factories.py), which create them through the product's services. Rows in
the hundreds of thousands (bench/close.py's customers, subscriptions, counters and events)
stay raw: COPY here, with the models' defaults, since the services would take hours."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

# A meter as the pricing file has it: (code, name, aggregation, property, unit).
MeterRow = tuple[str, str, str, str, str]


def create_meters(meters: Iterable[MeterRow], *, event_name: str) -> dict[str, int]:
    """The meters on ``event_name``, grouped by model (tests.factories.MeterFactory: through
    the services); code → id."""
    from tests.factories import MeterFactory

    ids = {}
    for code, name, aggregation, prop, unit in meters:
        meter = MeterFactory(
            code=code,
            name=name,
            event_name=event_name,
            aggregation=aggregation,
            property=prop,
            group_by=["model"],
            unit=unit,
        )
        ids[code] = meter.pk
    return ids


def copy_field(value: Any) -> str:
    """A Python value as a field of COPY text: NULL as \\N, a numeric never with an
    exponent, a time in ISO 8601, JSON for a dict or list, the text escaped."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        value = json.dumps(value)
    text = str(value)
    for raw, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        text = text.replace(raw, escaped)
    return text


def other_columns(table: str, given: Sequence[str]) -> tuple[list[str], list[str]]:
    """The columns of ``table`` the seed does not set and the database has no default for,
    with the value the model would give them (its field default, now for auto_now, NULL)
    in COPY text: so that a column added to a model later does not break the COPY."""
    from django.apps import apps

    model = next(m for m in apps.get_models() if m._meta.db_table == table)
    columns, values = [], []
    for f in model._meta.concrete_fields:
        if f.column in given or f.primary_key or f.has_db_default():
            continue
        if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            value: Any = datetime.now(UTC)
        elif f.has_default():
            value = f.get_default()
            if isinstance(value, list | tuple) and f.get_internal_type() == "ArrayField":
                value = "{" + ",".join(map(str, value)) + "}"
        elif f.null:
            value = None
        else:
            raise RuntimeError(f"{table}.{f.column} has no default: the benchmark must set it")
        columns.append(f.column)
        values.append(copy_field(value))
    return columns, values


def copy_rows(
    conn: psycopg.Connection[Any], table: str, columns: Sequence[str], rows: Iterable[tuple]
) -> int:
    """COPY ``rows`` (tuples of values, rendered by copy_field) into ``table``; the table's
    other columns get their model defaults (``other_columns``). Returns the rows sent."""
    extra_columns, extra_values = other_columns(table, columns)
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, [*columns, *extra_columns])),
    )
    suffix = "".join("\t" + v for v in extra_values)
    count = 0
    buffer: list[str] = []
    with conn.cursor().copy(statement) as copy:
        for row in rows:
            buffer.append("\t".join(map(copy_field, row)) + suffix)
            count += 1
            if len(buffer) >= 5_000:
                copy.write("\n".join(buffer) + "\n")
                buffer.clear()
        if buffer:
            copy.write("\n".join(buffer) + "\n")
    return count


def reserve_ids(conn: psycopg.Connection[Any], table: str, count: int) -> int:
    """The first of ``count`` consecutive ids taken from the table's identity sequence."""
    first = conn.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [table]).fetchone()[0]
    if count > 1:
        conn.execute(
            "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", [table, first + count - 1]
        )
    return first
