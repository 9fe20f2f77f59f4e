"""Part of bench/ingest.py (not a command): the raw PostgreSQL ceiling. The rows a batch
run wrote, read back from metering_event, inserted again by plain psycopg (no Django, no
HTTP) into a trigger-less copy of the table, as multi-row VALUES, as unnest() of arrays and
by COPY. The rows are rendered to SQL text before the run, so that what is measured is
PostgreSQL, not psycopg adapting 19,000 parameters in Python."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from bench.harness.db import with_database
from bench.harness.seeding import copy_field

if TYPE_CHECKING:
    from bench.ingest_load import RunSpec

RAW_TABLE = "bench_raw_event"


def create_raw_table(conn: psycopg.Connection[Any]) -> list[str]:
    """The raw scenarios' table: metering_event's columns, defaults, identity and indexes
    (LIKE copies no trigger and no foreign key). Returns the indexes it has."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (LIKE metering_event INCLUDING DEFAULTS INCLUDING IDENTITY "
            "INCLUDING INDEXES)"
        ).format(sql.Identifier(RAW_TABLE))
    )
    rows = conn.execute(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass "
        "ORDER BY indexrelid",
        [RAW_TABLE],
    ).fetchall()
    return [definition.split(" ON ", 1)[1] for (definition,) in rows]


RAW_COLUMNS = (
    "customer_id",
    "idempotency_key",
    "event_name",
    "timestamp",
    "properties",
    "subscription_id",
    "period_start",
    "provider",
    "model",
    "model_price_id",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "currency",
    "amount",
    "cost",
    "ledger_transaction_id",
)

RAW_ARRAY_TYPES = (
    "bigint",
    "text",
    "text",
    "timestamptz",
    "jsonb",
    "bigint",
    "timestamptz",
    "text",
    "text",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "text",
    "numeric",
    "numeric",
    "bigint",
)

_COLUMN_LIST = ", ".join(RAW_COLUMNS)
_ON_CONFLICT = " ON CONFLICT (customer_id, idempotency_key) DO NOTHING"
RAW_VALUES = f"INSERT INTO {RAW_TABLE} ({_COLUMN_LIST}) VALUES "  # + 1,000 rows of literals
RAW_UNNEST = (
    f"INSERT INTO {RAW_TABLE} ({_COLUMN_LIST}) SELECT * FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in RAW_ARRAY_TYPES)
    + ")"
    + _ON_CONFLICT
)
RAW_COPY = f"COPY {RAW_TABLE} ({_COLUMN_LIST}) FROM STDIN"
KEY_COLUMN = RAW_COLUMNS.index("idempotency_key")
TRANSACTION_COLUMN = RAW_COLUMNS.index("ledger_transaction_id")
assert KEY_COLUMN == 1 and TRANSACTION_COLUMN == len(RAW_COLUMNS) - 1  # RawRows relies on it


def load_raw_rows(conn: psycopg.Connection[Any], spec: RunSpec, index: int) -> list[tuple]:
    """This client's share of the rows the batch run wrote, exactly as they are stored."""
    columns = ", ".join("properties::text" if c == "properties" else c for c in RAW_COLUMNS)
    rows = conn.execute(
        f"SELECT {columns} FROM metering_event WHERE left(idempotency_key, %s) = %s ORDER BY id",
        [len(spec.raw_source), spec.raw_source],
    ).fetchall()
    conn.commit()
    mine = rows[index :: spec.clients]
    if not mine:
        raise RuntimeError(f"no rows under {spec.raw_source!r} to insert")
    return mine


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def sql_literal(value: Any) -> str:
    text = _text(value)
    if text is None:
        return "NULL"
    if isinstance(value, int | Decimal):
        return text
    return "'" + text.replace("'", "''") + "'"  # standard_conforming_strings is on


def array_element(value: Any) -> str:
    text = _text(value)
    if text is None:
        return "NULL"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RawRows:
    """The rows, rendered once for each way of sending them (SQL literals, array elements,
    COPY text), so that a batch costs the client a few string joins: the ceiling is what
    PostgreSQL takes, not how fast Python adapts 19,000 parameters. After a pass over the
    rows they come again with a new idempotency key and ledger transaction id (both
    unique in the table); those two columns (the second and the last) are rendered per
    batch of ``batch_size`` rows."""

    def __init__(self, rows: list[tuple], batch_size: int):
        self.batch_size = batch_size
        self.keys = [row[KEY_COLUMN] for row in rows]
        self.transactions = [row[TRANSACTION_COLUMN] for row in rows]
        self.literals = [self._around(row, sql_literal, ", ") for row in rows]
        self.copy_lines = [self._around(row, copy_field, "\t") for row in rows]
        self.elements = [[array_element(row[c]) for row in rows] for c in range(len(RAW_COLUMNS))]
        self.position = 0  # rows handed out so far, over all passes

    @staticmethod
    def _around(row: tuple, render: Any, separator: str) -> tuple[str, str]:
        """(what precedes the key, what lies between the key and the transaction id)."""
        parts = [render(value) for value in row]
        return parts[0] + separator, separator + separator.join(parts[2:-1]) + separator

    def next_batch(self) -> list[tuple[int, str, int | None]]:
        """batch_size × (row index, idempotency key, ledger transaction id)."""
        batch = []
        for position in range(self.position, self.position + self.batch_size):
            round_, i = divmod(position, len(self.keys))
            key, transaction_id = self.keys[i], self.transactions[i]
            if round_:
                key = f"{key}~{round_}"
                if transaction_id is not None:
                    transaction_id += round_ * 10**12
            batch.append((i, key, transaction_id))
        self.position += self.batch_size
        return batch

    def values_statement(self, batch: list[tuple[int, str, int | None]]) -> str:
        rows = ", ".join(
            f"({self.literals[i][0]}{sql_literal(key)}{self.literals[i][1]}"
            f"{sql_literal(transaction_id)})"
            for i, key, transaction_id in batch
        )
        return RAW_VALUES + rows + _ON_CONFLICT

    def unnest_arrays(self, batch: list[tuple[int, str, int | None]]) -> list[str]:
        arrays = []
        for column, elements in enumerate(self.elements):
            if column == KEY_COLUMN:
                values = [array_element(key) for _, key, _ in batch]
            elif column == TRANSACTION_COLUMN:
                values = [array_element(t) for _, _, t in batch]
            else:
                values = [elements[i] for i, _, _ in batch]
            arrays.append("{" + ",".join(values) + "}")
        return arrays

    def copy_text(self, batch: list[tuple[int, str, int | None]]) -> str:
        return "".join(
            f"{self.copy_lines[i][0]}{copy_field(key)}{self.copy_lines[i][1]}"
            f"{copy_field(transaction_id)}\n"
            for i, key, transaction_id in batch
        )


class RawClient:
    """Plain psycopg with its defaults (statements prepared after 5 uses), autocommit off:
    one transaction per batch of ``batch_size`` rows."""

    def __init__(self, index: int, spec: RunSpec, batch_size: int):
        self.conn = psycopg.connect(
            with_database(spec.raw_url, spec.raw_database, application_name=f"bench-raw-{index}"),
            autocommit=False,
        )
        self.rows = RawRows(load_raw_rows(self.conn, spec, index), batch_size)

    def close(self) -> None:
        self.conn.close()
