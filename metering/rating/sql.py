"""Statements sent the fast way: parameters bound by the server (``execute_bound``), rows
passed as one JSON document or one array per column (``_rows``), several writing
statements sent in one round trip (``_execute_together``; ``_execute_after``: after
CTEs of another's, a ledger posting's say), and many rows by binary COPY (``copy_binary``)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from django.db import connection
from psycopg import Cursor as PsycopgCursor
from psycopg import postgres
from psycopg._queries import PostgresQuery, _query2pg_nocache
from psycopg.adapt import Dumper
from psycopg.pq import ExecStatus, Format

TUPLES_OK = ExecStatus.TUPLES_OK

# Planner settings for a rating transaction's own statements, set (SET LOCAL's way: for the
# transaction alone, so a pooler in transaction mode is fine) by the statement that takes
# its customers' rating locks, before the part's read is planned. PostgreSQL's default
# random_page_cost (4) prices a page read from the index as if from a spinning disk: on the
# small tables of a young installation (a few hundred customers, subscriptions, wallets)
# the read's per-key lookups then scanned the whole table once per customer, 53 times a
# part of 250 events. Rating reads rows that are in memory (the same customers' rows, part
# after part); 1.1 is the value usually advised for that (SSD or cached data), and gives
# index lookups at every size. Measured 2026-12-07 (bench/ingest_cpu.py, batches of 1,000,
# pg_stat_statements on PostgreSQL 15, the setting given to the whole connection): the
# part's read 210 → 118-150 ms per 12 batches; PostgreSQL CPU per event 0.106-0.113 →
# 0.100-0.104 in 3 of 3 alternating pairs. (The customers' lookup, 32-35 → 5-6 ms then, is
# not covered: it runs before the locks, planned at the default.) Only in rating's own
# transactions (``ingest_events``): inside a caller's, the setting would outlast rating.
# A statement prepared in a rating transaction keeps the plan it got there.
RATING_SETTINGS = (("random_page_cost", "1.1"),)

# Up to this many rows, a statement reads them from one JSON document; more, from one
# array per column. An array parameter costs psycopg about 5 µs to adapt whatever its
# length (the 61 arrays of a single event's write statement: 0.3 ms of Python, more than
# the rest of writing it); a JSON document costs little per document and more per value.
ROWS_AS_JSON = 32
# The documents' encoder: decimals as their exact text (read back by the column's numeric
# type), times in ISO 8601, anything else by ``str`` — what ``json.dumps(default=str)``
# wrote, at a tenth of its cost (1.6 µs for a single event's row against 19, measured;
# the write's documents were 9 % of a single event's server time, py-spy, session 14).
_DOCUMENT = msgspec.json.Encoder(enc_hook=str, decimal_format="string")


def _rows(alias: str, columns: str, rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """A FROM item ``alias(columns)`` reading ``rows`` ("name type, …" in ``columns``)
    and its parameters: jsonb_to_recordset of one document of objects for a few rows,
    unnest of one array per column for more. Values are exact either way: numbers and
    times go into the document as text, read back by their column's type.

    Of many rows, a text or time column of few distinct values (a part's periods, days,
    currencies, models, dimension keys) goes as its distinct values and one int[] of 1-based
    positions in them, the FROM item a subquery picking each row's value: psycopg dumps a
    list of strings or times element by element in Python (0.2 and 0.6 µs each), the
    positions join in C, and the server reads ints for what it read text or times
    (measured, 2026-12-07: a part's daily counters in half the Python, the server no
    slower)."""
    names, kinds = _columns(columns)
    if len(rows) <= ROWS_AS_JSON:
        document = _DOCUMENT.encode([dict(zip(names, row, strict=True)) for row in rows]).decode()
        return f"jsonb_to_recordset(%s::jsonb) AS {alias}({columns})", [document]
    distinct_values: list[list[Any]] = []
    picks, arrays, params = [], [], []
    for name, kind, column in zip(names, kinds, zip(*rows, strict=True), strict=True):
        if kind in _PICKED:
            distinct = dict.fromkeys(column)  # equal values (an instant at two offsets) once
            if len(distinct) * FEW_DISTINCT <= len(column):
                position = {value: i for i, value in enumerate(distinct, 1)}
                distinct_values.append(list(distinct))
                picks.append(f"(%s::{kind}[])[{name}] AS {name}")
                arrays.append("%s::int[]")
                params.append("{" + ",".join(map(str, map(position.__getitem__, column))) + "}")
                continue
        picks.append(name)
        arrays.append(f"%s::{kind}[]")
        params.append(_array(kind, column))
    source = f"unnest({', '.join(arrays)}) AS {alias}({', '.join(names)})"
    if not distinct_values:
        return source, params
    return (
        f"(SELECT {', '.join(picks)} FROM {source}) AS {alias}",
        [*distinct_values, *params],
    )


# A text or time column is sent as its distinct values and positions in them when it has
# at most one distinct value for this many rows.
FEW_DISTINCT = 4
_PICKED = frozenset(("text", "timestamptz"))


@functools.lru_cache(maxsize=256)
def _columns(columns: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"name type, …"`` as its names and its types (a statement's few specs, parsed
    once: every part's statements name the same ones)."""
    names, kinds = zip(*(column.split() for column in columns.split(", ")), strict=True)
    return names, kinds


def _array(kind: str, values: Sequence[Any]) -> Any:
    """A column's values as its array parameter: bigint, numeric and date columns as
    PostgreSQL's array text built by joins in C (read exactly by the server's input
    functions), any other as a list dumped by psycopg. psycopg dumps a list element by
    element in Python (``ListBinaryDumper._dump_list``, the top function of a batch's
    profile): 0.40 µs an int and 0.37 a date, against 0.15 and 0.05 here, for 0.03 and 0.10
    µs more of the server's parsing (measured, 2026-12-07: a part of 241 events sends 3,900
    ints and 830 dates, 1.3 ms less Python for 0.2 ms more PostgreSQL). Text and times
    stay binary: as array text they cost the server about as much more (quoting and
    parsing: 0.13 and 0.33 µs an element) as they save here."""
    if kind in _PLAIN:
        return _numeric_array(values)
    if kind == "date":
        # a part's columns of dates hold a few days: each rendered once (0.36 µs)
        return "{" + ",".join(map(_Rendered().__getitem__, values)) + "}"
    return list(values)


_PLAIN = frozenset(("bigint", "numeric"))


class _Rendered(dict):
    """Values rendered as array elements, each the first time it is asked for."""

    def __missing__(self, value: Any) -> str:
        text = self[value] = "NULL" if value is None else str(value)
        return text


def _numeric_array(values: Sequence[Any]) -> str:
    """A bigint[] or numeric[] column as PostgreSQL's array text (``{1.5,NULL,2E-7}``, read
    exactly by the server's input): psycopg dumps a Decimal to binary at about 1 µs each,
    in Python, ten times what ``str`` takes (measured, 2026-12-06); ints and Decimals only
    (neither renders as anything holding ``None``: a NULL is looked for only then)."""
    body = ",".join(map(str, values))
    if "None" in body:
        body = ",".join("NULL" if v is None else str(v) for v in values)
    return "{" + body + "}"


Statement = tuple[str, list[Any]]


def _execute_together(cursor, statements: list[Statement | None]) -> None:
    """Run these statements in one round trip: all but the last as data-modifying CTEs of
    the last (they write different tables, so one snapshot serves them all)."""
    present = [s for s in statements if s is not None]
    if not present:
        return
    *before, (last_sql, last_params) = present
    if not before:
        execute_bound(last_sql, last_params)
        return
    ctes = ", ".join(f"w{i} AS ({sql} RETURNING 1)" for i, (sql, _) in enumerate(before))
    params = [value for _, values in before for value in values] + last_params
    execute_bound(f"WITH {ctes} {last_sql}", params)


def _execute_after(first: Statement, statements: list[Statement | None], select: str) -> tuple:
    """Run ``first`` (CTEs: ``name AS (…), …``) and these statements as data-modifying
    CTEs after it, in one statement and one round trip; its one row is ``select``'s (a
    SELECT that reads ``first``'s CTEs). The statements may read ``first``'s CTEs (the
    ledger's ``posting_id``, say): what they write themselves, they write to other tables
    than ``first`` (one snapshot serves them all)."""
    first_sql, first_params = first
    present = [s for s in statements if s is not None]
    ctes = "".join(f", w{i} AS ({sql} RETURNING 1)" for i, (sql, _) in enumerate(present))
    params = first_params + [value for _, values in present for value in values]
    (row,) = execute_bound(f"WITH {first_sql}{ctes} {select}", params)
    return row


def execute_bound(sql: str, params: list[Any], *, binary: bool = False) -> list[tuple]:
    """Execute with the parameters bound by the server; the rows, if it returns any (in
    binary with ``binary``: arrays of records then load as lists of typed tuples).
    Django's cursors bind client-side: every element of these arrays was quoted into the
    statement's text, a fifth of a batch's time in Python (measured). A psycopg cursor on
    the same connection (same session, same transaction) sends them as parameters instead;
    Django's wrapper still turns driver errors into django.db errors."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = _cursor(connection.connection)
        cursor.execute(sql, params, binary=binary)
        # whether it returned rows, from the result's status: ``description`` builds
        # a Column object per column to say so
        result = cursor.pgresult
        return cursor.fetchall() if result and result.status == TUPLES_OK else []


_local = threading.local()


def _cursor(conn: Any) -> _Cursor:
    """The thread's cursor on this psycopg connection, made once per connection and used
    for every statement: a new cursor each time cost about 15 µs more a statement (its
    adaptation context made anew, every parameter's dumper looked up again; measured, a
    single event sends three). Nothing of one statement stays for the next but its last
    result, replaced by the next one's; a cursor is per thread, as Django's connections."""
    cursor = getattr(_local, "cursor", None)
    if cursor is None or cursor.connection is not conn or cursor.closed:
        cursor = _local.cursor = _Cursor(conn)
        # by the column's type only (a COPY's ``set_types``), never by a value's class
        cursor.adapters.register_dumper(None, _JsonbText)
    return cursor


def copy_binary(statement: str, types: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """``COPY … FROM STDIN (FORMAT BINARY)`` of ``rows``, their columns of ``types``
    (PostgreSQL's names: ``int8``, ``text``, ``numeric``, ``timestamptz``, ``jsonb``; a
    jsonb value is JSON text, ``_JsonbText``). A binary COPY applies no cast, so each type
    must be its column's own (text serves varchar).

    Binary rather than text: psycopg formats a row of the events' 22 columns in about half
    the Python (a timestamptz as text costs it about 1.8 µs, in binary 0.3), and the
    server reads numbers and times without parsing them. Values are exact either way: a
    Decimal goes as PostgreSQL's numeric digits and scale (every digit kept, the column's
    typmod rounding as it rounds text), ``None`` as NULL. Errors come as Django's, as from
    ``execute_bound`` (same connection, session and transaction as Django's cursors)."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = _cursor(connection.connection)
        with cursor.copy(statement) as copy:
            copy.set_types(types)
            write_row = copy.write_row
            for row in rows:
                write_row(row)


class _JsonbText(Dumper):
    """A JSON document already rendered as text (an event's properties as sent), dumped
    as jsonb's binary form: version 1, then the text, which the server parses as it
    parses jsonb's text input. (psycopg's own jsonb dumper would encode a ``str`` as a
    JSON string.)"""

    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + obj.encode()


@functools.lru_cache(maxsize=256)
def _converted(sql: str, encoding: str) -> Any:
    """``sql`` as psycopg sends it (``$n`` placeholders, each parameter's format), worked
    out once per statement text: every ``%s`` as ``%b``, so that the arrays travel in
    binary, dumped without escaping each element."""
    return _query2pg_nocache(sql.replace("%s", "%b").encode(encoding), encoding)


class _Query(PostgresQuery):
    """psycopg's query, its conversion cached whatever the statement's length. psycopg
    caches the conversion only for statements of at most 4,096 bytes and 50 parameters
    (``psycopg._queries.MAX_CACHED_STATEMENT_LENGTH``) and splits anything longer again on
    every execution: a single event's write with its posting (8.5 kB) took 90 µs each
    time (measured). Rating's statements are a few texts sent over and over."""

    def convert(self, query: Any, vars: Any) -> None:
        if not isinstance(query, str) or vars is None:
            super().convert(query, vars)
            return
        self.query, self._want_formats, self._order, self._parts = _converted(
            query, self._tx.encoding
        )
        self.dump(vars)


class _Cursor(PsycopgCursor):
    _query_cls = _Query


# Arrays sent as their text (``{…}``, read by the ``::bigint[]`` / ``::text[]`` cast in the
# statement; integers by ``_numeric_array``): psycopg spends about 3 µs in Python adapting
# each list parameter, element types looked up, dumper chosen (11 parameters of a single
# event's read: 30 µs, against 4 µs as text; measured 2026-12-07), while the server reads
# either form at the same cost.


def _text_array(values: Iterable[str]) -> str:
    """Strings as PostgreSQL's array text, each element quoted (``{"a","b \\"c\\""}``):
    inside double quotes only a double quote and a backslash are escaped, so any string
    (a comma, a brace, ``NULL`` or the empty string) reads back as itself."""
    return (
        "{"
        + ",".join('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values)
        + "}"
    )
