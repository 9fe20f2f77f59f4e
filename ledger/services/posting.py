"""Posting: ``post_transaction`` and ``post_transactions`` (several, all-or-nothing), by one
prepared statement (``_POST_ONE``) or by the PostgreSQL function
``ledger_post_transactions_bulk``. Idempotent on each transaction's reference."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NoReturn

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections, transaction
from psycopg import Cursor as PsycopgCursor

from ledger import errors
from ledger.models import AMOUNT_PLACES, NormalBalance
from ledger.models import Transaction as LedgerTransaction
from ledger.services.spec import Leg, TransactionSpec


@dataclass(frozen=True, slots=True)
class Posted:
    """What the database hands back for one transaction it posted, or found posted before
    under its reference (``replayed``): ``post_transactions_for_ids``' answer."""

    transaction_id: int
    effective_at: datetime
    recorded_at: datetime
    replayed: bool = False


def _raise_ledger_error(exc: DatabaseError) -> NoReturn:
    ledger_error = errors.from_database_error(exc)
    if ledger_error is not None:
        raise ledger_error from exc
    raise exc


# A posting is written one of two ways, under one set of rules:
#   - one transaction of 2 to 8 legs on distinct accounts (a top-up, an adjustment, a
#     payment, a one-customer rating part): one prepared statement, ``_POST_ONE`` below,
#     with the guard functions of migration 0004;
#   - anything else (several transactions in one all-or-nothing call, a transaction with
#     more legs or two legs on one account): one call of the plpgsql function
#     ``ledger_post_transactions_bulk`` (migration 0003), whatever the count.
# Both take their locks in the same order (transaction rows by reference, owned balances
# by account id, then a free hot bucket), so neither can deadlock the other. A third, a
# loop function for 2 to 31 transactions, was dropped (migration 0005, with the figures):
# about 0.15 ms per call faster up to 8 transactions, none from 16, no difference to see
# in a rating part.


def post_transaction(
    *,
    reference: str,
    legs: Sequence[Leg],
    description: str = "",
    metadata: dict[str, Any] | None = None,
    effective_at: datetime | None = None,
) -> LedgerTransaction:
    """Post one balanced transaction. A retry with the same reference returns the original
    (``.replayed`` is True); the same reference with other legs raises ``ReferenceReused``.
    """
    spec = TransactionSpec(
        reference=reference,
        legs=legs,
        description=description,
        metadata=metadata or {},
        effective_at=effective_at,
    )
    return post_transactions(transactions=[spec])[0]


# One transaction of at most this many legs, each on a different account, is posted by the
# single statement below instead of a call of the posting function (``_call_post_function``).
ONE_STATEMENT_MAX_LEGS = 8

# One transaction in one prepared statement: its legs joined to their accounts, the
# transaction row, its entries and the balance rows, as data-modifying CTEs; in autocommit
# one round trip and one commit. The plpgsql posting function runs a dozen statements of
# its own per posting; this is one, planned once per connection. Same rules, checked in
# the same order:
#   - ledger_posting_guard (migration 0004), before anything is written: an unknown
#     account is refused (LG004), legs that do not balance per currency too (LG003; the
#     statement-level trigger on ledger_entry checks it again, as for every insert);
#   - idempotency: the unique reference, ON CONFLICT DO NOTHING; no row back is a replay;
#   - owned balances: locked in account-id order (the legs sorted, each one's row locked
#     as its leg comes, as the posting function does: no deadlock between the two), then
#     updated; the row's CHECK (posted >= held + floor), evaluated on the newest committed
#     version, raises check_violation, reported as insufficient_funds;
#   - hot accounts: a bucket nobody holds (FOR UPDATE SKIP LOCKED), searched from
#     pid % buckets so that concurrent backends start on different rows; a random one,
#     waited for, only when every bucket is busy; chosen in a SELECT list, once per hot
#     leg, never per candidate row;
#   - ledger_posting_applied, last, refuses the posting if a leg found no balance row
#     (in ``posted``, the transaction's row: a caller embedding these CTEs must read it).
# Accounts and owned balance rows are looked up per leg by key (LATERAL subqueries, not
# joins): the statement's plan is generic and kept, and a join planned while the tables are
# small hashes a scan of the whole table (the bench's 400 accounts and 500 balance rows,
# for a single event's four legs: 900 rows read where eight index probes do).
# The CTEs are named ``post_*`` and ``posted`` so that a caller's statement can embed them
# (``posting_ctes``: rating writes a part's events in the statement that posts them).
_POSTING_CTES = """
post_legs AS MATERIALIZED (
    SELECT v.n, v.acc, v.amt, a.currency AS cur, a.is_hot AS hot,
           CASE WHEN a.normal_balance = 'debit' THEN v.amt ELSE -v.amt END AS delta
      FROM (VALUES <LEGS>) AS v(acc, amt, n)
     CROSS JOIN LATERAL (SELECT a.currency, a.is_hot, a.normal_balance
                           FROM ledger_account a WHERE a.id = v.acc OFFSET 0) AS a
), post_t AS (
    INSERT INTO ledger_transaction AS lt
           (reference, payload_hash, description, metadata, effective_at, recorded_at,
            reverses_id, hold_id)
    SELECT %(reference)s::text, %(payload_hash)s::text, %(description)s::text,
           %(metadata)s::jsonb, coalesce(%(effective_at)s::timestamptz, now()), now(),
           %(reverses_id)s::bigint, %(hold_id)s::bigint
     WHERE ledger_posting_guard(
               %(reference)s::text, ARRAY[<ACCOUNTS>], ARRAY[<AMOUNTS>],
               (SELECT count(*) FROM post_legs),
               (SELECT bool_and(c.total = 0)
                  FROM (SELECT sum(l.amt) AS total FROM post_legs l GROUP BY l.cur) AS c))
    ON CONFLICT (reference) DO NOTHING
    RETURNING lt.id, lt.effective_at, lt.recorded_at
), post_entries AS (
    INSERT INTO ledger_entry (transaction_id, account_id, currency, amount)
    SELECT t.id, l.acc, l.cur, l.amt FROM post_t t CROSS JOIN post_legs l ORDER BY l.n
), post_owned_legs AS (
    SELECT l.acc, l.delta FROM post_legs l CROSS JOIN post_t t WHERE NOT l.hot
), post_owned_locked AS (
    SELECT k.id, o.delta
      FROM (SELECT l.acc, l.delta FROM post_owned_legs l ORDER BY l.acc) AS o
     CROSS JOIN LATERAL (SELECT b.id FROM ledger_balance b
                          WHERE b.account_id = o.acc AND b.bucket = 0 FOR UPDATE) AS k
), post_owned AS (
    UPDATE ledger_balance b
       SET posted = b.posted + k.delta, version = b.version + 1, updated_at = now()
      FROM post_owned_locked k
     WHERE b.id = k.id
    RETURNING 1
), post_hot_legs AS (
    SELECT l.delta,
           coalesce(
               (SELECT s.id FROM ledger_balance s
                 WHERE s.account_id = l.acc AND s.bucket >= pg_backend_pid() %% %(buckets)s
                 ORDER BY s.bucket LIMIT 1 FOR UPDATE SKIP LOCKED),
               (SELECT s.id FROM ledger_balance s WHERE s.account_id = l.acc
                 ORDER BY s.bucket LIMIT 1 FOR UPDATE SKIP LOCKED),
               (SELECT s.id FROM ledger_balance s WHERE s.account_id = l.acc
                 ORDER BY random() LIMIT 1)) AS bucket_id
      FROM post_legs l CROSS JOIN post_t t
     WHERE l.hot
), post_hot AS (
    -- A second UPDATE, not one over post_owned_locked UNION ALL post_hot_legs: that one,
    -- tried, changed fewer rows than it had legs under concurrent postings
    -- (ledger_posting_applied refused them: the opposite-transfers test in
    -- tests/ledger/test_concurrency).
    UPDATE ledger_balance b
       SET posted = b.posted + h.delta, version = b.version + 1, updated_at = now()
      FROM post_hot_legs h
     WHERE b.id = h.bucket_id
    RETURNING 1
), posted AS (
    SELECT t.id, t.effective_at, t.recorded_at
      FROM post_t t
     WHERE ledger_posting_applied((SELECT count(*) FROM post_legs),
                                  (SELECT count(*) FROM post_owned)
                                  + (SELECT count(*) FROM post_hot))
)"""
_POST_ONE = "WITH" + _POSTING_CTES + "\nSELECT id, effective_at, recorded_at FROM posted\n"


def _one_statement_applies(spec: TransactionSpec) -> bool:
    legs = spec.legs
    return (
        2 <= len(legs) <= ONE_STATEMENT_MAX_LEGS
        and len({leg.account_id for leg in legs}) == len(legs)
        and all(leg.amount != 0 and _within_ledger_places(leg.amount) for leg in legs)
    )


def _within_ledger_places(amount: Decimal) -> bool:
    exponent = amount.as_tuple().exponent
    # Not an int for NaN and infinities ("n", "N", "F"): those go to the posting function.
    return isinstance(exponent, int) and exponent >= -AMOUNT_PLACES


@functools.cache
def _post_one_sql(legs: int) -> str:
    """``_POST_ONE`` for this many legs, as a VALUES list: a generic plan then knows the
    legs' row count, costs what a custom plan costs, and PostgreSQL keeps it (given an
    array, whose length a generic plan cannot know, it re-planned every execution: more
    time planning than executing)."""
    return _with_legs(_POST_ONE, legs)


def _with_legs(sql: str, legs: int) -> str:
    return (
        sql.replace(
            "<LEGS>",
            ", ".join(f"(%(a{i})s::bigint, %(m{i})s::numeric, {i})" for i in range(legs)),
        )
        .replace("<ACCOUNTS>", ", ".join(f"%(a{i})s::bigint" for i in range(legs)))
        .replace("<AMOUNTS>", ", ".join(f"%(m{i})s::numeric" for i in range(legs)))
    )


def _post_one_params(spec: TransactionSpec, payload_hash: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "reference": spec.reference,
        "payload_hash": payload_hash,
        "description": spec.description,
        "metadata": json.dumps(spec.metadata),
        "effective_at": spec.effective_at,
        "reverses_id": spec.reverses_id,
        "hold_id": spec.hold_id,
        "buckets": settings.LEDGER_HOT_ACCOUNT_BUCKETS,
    }
    # Ids and amounts as text (cast in the statement): psycopg sends an int as int2, int4
    # or int8 by its size, and a statement is prepared once per combination of types.
    for i, leg in enumerate(spec.legs):
        params[f"a{i}"] = str(leg.account_id)
        params[f"m{i}"] = str(leg.amount)
    return params


def _post_one_statement(db: Any, spec: TransactionSpec, payload_hash: str) -> Posted | None:
    """The new transaction, or None for a replay."""
    db.ensure_connection()
    params = _post_one_params(spec, payload_hash)
    # Django's cursors bind parameters client-side, which cannot prepare; a psycopg cursor
    # on the same connection (same session, same transaction) binds server-side and
    # prepares the statement once per connection. Django's wrapper still turns driver
    # errors into django.db errors.
    with db.wrap_database_errors:
        cursor = PsycopgCursor(db.connection)
        try:
            cursor.execute(_post_one_sql(len(spec.legs)), params, prepare=True)
            row = cursor.fetchone()
            return None if row is None else Posted(*row)
        finally:
            cursor.close()


@dataclass(frozen=True, slots=True)
class PostingCtes:
    """One transaction's posting as CTEs for a caller's own statement (``posting_ctes``):
    ``sql`` is ``name AS (…), …`` with positional ``%s`` placeholders for ``params``.
    Two of its CTEs are the caller's to read:

        posted       the new transaction's (id, effective_at, recorded_at); no row when its
                     reference was posted before (nothing written: a replay, or a reference
                     reused). The caller's statement must read it: the posting's last rule
                     (every leg found its balance row) is checked there.
        posting_id   one row, ``id``: what the caller's rows point at — the new
                     transaction, or on a replay the one posted before with the same
                     payload (NULL if the reference was used for another: ``replayed``
                     raises ``ReferenceReused`` then, and the caller abandons its
                     transaction).

    A refusal raises from the caller's statement; ``raise_refusal`` turns it into the
    ledger's error, as ``post_transaction`` raises it. The entries' balance rule and every
    other trigger run as for any posting."""

    sql: str
    params: list[Any]
    spec: TransactionSpec
    payload_hash: str


# The transaction a caller's rows point at: posted now, or before with the same payload
# (looked up only when nothing was posted now: COALESCE evaluates its second subquery
# only if the first is NULL).
_POSTING_ID = """, posting_id AS (
    SELECT coalesce(
        (SELECT p.id FROM posted p),
        (SELECT lt.id FROM ledger_transaction lt
          WHERE lt.reference = %(reference)s::text
            AND lt.payload_hash = %(payload_hash)s::text)) AS id
)"""


def posting_ctes(spec: TransactionSpec) -> PostingCtes | None:
    """``spec``'s posting as the CTEs of a caller's statement (one round trip for the
    posting and what the caller writes with it, e.g. rating's events pointing at the
    transaction), or None if the single statement does not take it (more than
    ``ONE_STATEMENT_MAX_LEGS`` legs, two legs on one account): then ``post_transactions``.
    The caller holds a transaction open (the posting is part of it) and never runs this
    for a spec it posted before: a replay comes back as no ``posted`` row."""
    if not _one_statement_applies(spec):
        return None
    spec.validate()
    payload_hash = spec.payload_hash()
    sql, names = _positional_ctes(len(spec.legs))
    named = _post_one_params(spec, payload_hash)
    return PostingCtes(sql, [named[name] for name in names], spec, payload_hash)


_NAMED = re.compile(r"%\((\w+)\)s")


@functools.cache
def _positional_ctes(legs: int) -> tuple[str, tuple[str, ...]]:
    """``_POSTING_CTES`` for this many legs with positional placeholders, and the names of
    the parameters in their order."""
    sql = _with_legs(_POSTING_CTES + _POSTING_ID, legs)
    return _NAMED.sub("%s", sql), tuple(_NAMED.findall(sql))


def raise_refusal(exc: DatabaseError, posting: PostingCtes) -> NoReturn:
    """The ledger's error for a statement that embedded ``posting`` and failed: a floor
    refused (``InsufficientFunds``, which reads the accounts' balances: call this once the
    statement's savepoint was rolled back), a guard's LG code; any other error as it
    came."""
    _raise_refused(exc, posting.spec)


def replayed(posting: PostingCtes) -> LedgerTransaction:
    """The transaction posted before under ``posting``'s reference (its statement's
    ``posted`` had no row), ``.replayed`` True, as ``post_transaction`` returns it; the
    same reference with other legs raises ``ReferenceReused``."""
    return _replayed(posting.spec, posting.payload_hash)


def _replayed(spec: TransactionSpec, payload_hash: str) -> LedgerTransaction:
    original = LedgerTransaction.objects.filter(reference=spec.reference).first()
    if original is None:  # cannot happen: the conflict was on this reference
        raise errors.InvalidTransaction(f"reference {spec.reference} was not posted")
    if original.payload_hash != payload_hash:
        raise errors.ReferenceReused(
            f"reference {spec.reference} was already used for a different transaction "
            f"({original.id})"
        )
    original.replayed = True
    return original


def _raise_refused(exc: DatabaseError, spec: TransactionSpec) -> NoReturn:
    cause = exc.__cause__
    if (
        isinstance(cause, psycopg.Error)
        and cause.sqlstate == "23514"
        and cause.diag.constraint_name == "ledger_balance_within_floor"
    ):
        raise _insufficient_funds(spec) from exc
    _raise_ledger_error(exc)


@dataclass(frozen=True)
class _Shortfall:
    """An owned account a refused posting takes from: what it has, what the posting needs."""

    short: bool  # its available balance cannot cover its leg
    account_id: int
    available: Decimal
    required: Decimal
    floor: Decimal | None


def _insufficient_funds(spec: TransactionSpec) -> errors.InsufficientFunds:
    """The error of a posting an owned account's floor refused, worded as the posting
    function words it (the account whose available balance cannot cover its leg)."""
    amounts = {leg.account_id: leg.amount for leg in spec.legs}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.id, a.normal_balance, b.posted - b.held, b.floor "
            "FROM ledger_account a JOIN ledger_balance b ON b.account_id = a.id "
            "WHERE a.id = ANY(%s) AND NOT a.is_hot AND b.bucket = 0 ORDER BY a.id",
            [list(amounts)],
        )
        rows = cursor.fetchall()
    shortfalls = []
    for account_id, normal_balance, available, floor in rows:
        delta = (
            amounts[account_id] if normal_balance == NormalBalance.DEBIT else -amounts[account_id]
        )
        shortfalls.append(
            _Shortfall(
                short=floor is not None and available + delta < floor,
                account_id=account_id,
                available=available,
                required=-delta,
                floor=floor,
            )
        )
    # The account that cannot cover its leg now; if none (a concurrent posting has since
    # paid one in), the first one the leg takes from.
    found = max(shortfalls, key=lambda s: (s.short, s.required > 0, -s.account_id))
    return errors.InsufficientFunds(
        f"account {found.account_id} has {found.available} available; this posting needs "
        f"{found.required} (floor {found.floor if found.floor is not None else 0})",
        detail={
            "account_id": found.account_id,
            "available": found.available,
            "required": found.required,
            "floor": found.floor,
        },
    )


def _post_single(spec: TransactionSpec, *, savepoint: bool = True) -> LedgerTransaction:
    """One transaction by the single statement (``_POST_ONE``)."""
    spec.validate()
    payload_hash = spec.payload_hash()
    db = connections[DEFAULT_DB_ALIAS]  # the connection itself, not the proxy to it
    try:
        if db.in_atomic_block and savepoint:
            with transaction.atomic():
                row = _post_one_statement(db, spec, payload_hash)
        else:
            row = _post_one_statement(db, spec, payload_hash)
    except DatabaseError as exc:
        _raise_refused(exc, spec)
    if row is None:
        return _replayed(spec, payload_hash)
    # from_db, as for a row read back: a third of the cost of Model(**kwargs).
    values = {
        "id": row.transaction_id,
        "reference": spec.reference,
        "payload_hash": payload_hash,
        "description": spec.description,
        "metadata": spec.metadata,
        "effective_at": row.effective_at,
        "recorded_at": row.recorded_at,
        "reverses_id": spec.reverses_id,
        "hold_id": spec.hold_id,
    }
    posted = LedgerTransaction.from_db(
        db.alias, _TRANSACTION_FIELDS, [values[name] for name in _TRANSACTION_FIELDS]
    )
    posted.replayed = False
    return posted


_TRANSACTION_FIELDS = [f.attname for f in LedgerTransaction._meta.concrete_fields]


def _call_post_function(payload: str) -> dict[int, Posted]:
    """The posting function on ``payload`` (TransactionSpec.as_json documents): each
    transaction by its index in the payload, from 1."""
    with connection.cursor() as cursor:
        try:
            cursor.execute(
                "SELECT idx, transaction_id, effective_at, recorded_at, replayed "
                "FROM ledger_post_transactions_bulk(%s::jsonb)",
                [payload],
            )
            return {index: Posted(*posted) for index, *posted in cursor.fetchall()}
        except DatabaseError as exc:
            _raise_ledger_error(exc)


def post_transactions(
    *, transactions: Sequence[TransactionSpec], savepoint: bool = True
) -> list[LedgerTransaction]:
    """Post several transactions all-or-nothing in one database round trip (a token leg in
    TOKENS and a money leg in USD, say). Each is idempotent on its own reference. One
    transaction the single statement can take goes through it; anything else is one call
    of the posting function.

    Inside a caller's transaction the posting runs in a savepoint, so that a refused posting
    leaves the caller's transaction usable. ``savepoint=False`` saves its two round trips
    for a caller that abandons its whole transaction on any error (rating)."""
    if not transactions:
        raise errors.InvalidTransaction("nothing to post")
    if len(transactions) == 1 and _one_statement_applies(transactions[0]):
        return [_post_single(transactions[0], savepoint=savepoint)]
    documents, rows = _post_by_function(transactions, savepoint=savepoint)
    replayed_ids = [row.transaction_id for row in rows.values() if row.replayed]
    originals = LedgerTransaction.objects.in_bulk(replayed_ids) if replayed_ids else {}
    result = []
    for index, (spec, document) in enumerate(zip(transactions, documents, strict=True), start=1):
        row = rows[index]
        if row.replayed:
            posted = originals[row.transaction_id]
        else:
            posted = LedgerTransaction(
                id=row.transaction_id,
                reference=spec.reference,
                payload_hash=document["payload_hash"],
                description=spec.description,
                metadata=spec.metadata,
                effective_at=row.effective_at,
                recorded_at=row.recorded_at,
                reverses_id=spec.reverses_id,
                hold_id=spec.hold_id,
            )
        posted.replayed = row.replayed
        result.append(posted)
    return result


def post_transactions_for_ids(
    *, transactions: Sequence[TransactionSpec], savepoint: bool = True
) -> list[Posted]:
    """``post_transactions``, the same postings and refusals, for a caller that needs only
    what the database handed back of each transaction (its id, times and whether it was a
    replay), not a ``Transaction`` instance: rating posts about 50 transactions a part, and
    building their instances cost more than the rest of the call's Python (20 µs each)."""
    if not transactions:
        raise errors.InvalidTransaction("nothing to post")
    if len(transactions) == 1 and _one_statement_applies(transactions[0]):
        posted = _post_single(transactions[0], savepoint=savepoint)
        return [Posted(posted.pk, posted.effective_at, posted.recorded_at, posted.replayed)]
    _, rows = _post_by_function(transactions, savepoint=savepoint)
    return [rows[index] for index in range(1, len(transactions) + 1)]


def _post_by_function(
    transactions: Sequence[TransactionSpec], *, savepoint: bool
) -> tuple[list[dict[str, Any]], dict[int, Posted]]:
    """The transactions posted by one call of the posting function: their documents
    (``TransactionSpec.as_json``) and what the function handed back, by index from 1."""
    documents = [spec.as_json() for spec in transactions]
    payload = json.dumps(documents)
    if connection.in_atomic_block and savepoint:
        # Inside the caller's transaction: a savepoint, so that a refused posting leaves
        # the caller's transaction usable and changes nothing.
        with transaction.atomic():
            return documents, _call_post_function(payload)
    # On its own: the posting function is one statement, and a statement in autocommit
    # is atomic by itself. One round trip instead of three (BEGIN, SELECT, COMMIT).
    return documents, _call_post_function(payload)
