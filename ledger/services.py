"""The only way to write to the ledger.

    create_account, ensure_system_account, set_overdraft
    post_transaction, post_transactions (bulk, all-or-nothing), reverse_transaction
    place_hold, settle_hold, release_hold, release_expired_holds

Every function is atomic (a savepoint when called inside a caller's transaction) and
idempotent on its ``reference``. Expected failures raise ``ledger.errors.LedgerError``
subclasses and change nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation, localcontext
from typing import Any, NoReturn

import psycopg
from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    connection,
    connections,
    transaction,
)
from django.utils import timezone
from psycopg import Cursor as PsycopgCursor

from ledger import errors
from ledger.models import (
    AMOUNT_DIGITS,
    AMOUNT_PLACES,
    AMOUNT_QUANTUM,
    ZERO,
    Account,
    Balance,
    Hold,
    HoldStatus,
    NormalBalance,
)
from ledger.models import Transaction as LedgerTransaction

MAX_AMOUNT = Decimal(10) ** (AMOUNT_DIGITS - AMOUNT_PLACES)


def to_amount(value: Decimal | int | str, *, positive: bool = False) -> Decimal:
    """An exact ledger amount. Floats are refused: they cannot carry money exactly."""
    if isinstance(value, float | bool):
        raise errors.InvalidAmount(
            f"amounts must be Decimal, int or str, not {type(value).__name__}"
        )
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise errors.InvalidAmount(f"{value!r} is not a number") from None
    if not amount.is_finite():
        raise errors.InvalidAmount(f"{value!r} is not a finite number")
    if abs(amount) >= MAX_AMOUNT:
        raise errors.InvalidAmount(f"{value} is too large")
    with localcontext(prec=AMOUNT_DIGITS + 2):
        exact = amount.quantize(AMOUNT_QUANTUM, rounding=ROUND_DOWN)
    if amount != exact:
        raise errors.InvalidAmount(f"{value} has more than {AMOUNT_PLACES} decimal places")
    if positive and amount <= 0:
        raise errors.InvalidAmount(f"amount must be positive, got {value}")
    return exact


def _account_id(account: Account | int) -> int:
    return account.pk if isinstance(account, Account) else int(account)


@dataclass(frozen=True)
class Leg:
    """One entry to post: ``amount`` > 0 debits the account, < 0 credits it."""

    account_id: int
    amount: Decimal


def debit(account: Account | int, amount: Decimal | int | str) -> Leg:
    return Leg(_account_id(account), to_amount(amount, positive=True))


def credit(account: Account | int, amount: Decimal | int | str) -> Leg:
    return Leg(_account_id(account), -to_amount(amount, positive=True))


@dataclass
class TransactionSpec:
    reference: str
    legs: Sequence[Leg]
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    effective_at: datetime | None = None
    reverses_id: int | None = None
    hold_id: int | None = None

    def payload_hash(self) -> str:
        """What makes two postings "the same": legs, effective time, reversal and hold.

        Description and metadata are not part of it: they describe, they do not move money.
        """
        body = {
            "legs": [[leg.account_id, str(leg.amount)] for leg in self.legs],
            "effective_at": self.effective_at.isoformat() if self.effective_at else None,
            "reverses": self.reverses_id,
            "hold": self.hold_id,
        }
        return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()

    def validate(self) -> None:
        """What is checked before the database sees the posting."""
        if not self.reference or len(self.reference) > 255:
            raise errors.InvalidTransaction("a reference of 1 to 255 characters is required")
        if self.effective_at is not None and timezone.is_naive(self.effective_at):
            raise errors.InvalidTransaction("effective_at must be timezone-aware")

    def as_json(self) -> dict[str, Any]:
        self.validate()
        return {
            "reference": self.reference,
            "payload_hash": self.payload_hash(),
            "description": self.description,
            "metadata": self.metadata,
            "effective_at": self.effective_at.isoformat() if self.effective_at else None,
            "reverses_id": self.reverses_id,
            "hold_id": self.hold_id,
            "entries": [
                {"account_id": leg.account_id, "amount": str(leg.amount)} for leg in self.legs
            ],
        }


def _raise_ledger_error(exc: DatabaseError) -> NoReturn:
    ledger_error = errors.from_database_error(exc)
    if ledger_error is not None:
        raise ledger_error from exc
    raise exc


# --- accounts ----------------------------------------------------------------------------


@transaction.atomic
def create_account(
    *,
    code: str,
    currency: str,
    name: str = "",
    normal_balance: str = NormalBalance.CREDIT,
    allow_negative: bool = False,
    negative_limit: Decimal | None = None,
    is_hot: bool = False,
    owner_type: str = "",
    owner_id: str = "",
    metadata: dict[str, Any] | None = None,
) -> Account:
    """Create an account and its balance row(s)."""
    if negative_limit is not None:
        negative_limit = to_amount(negative_limit)
    account = Account.objects.create(
        code=code,
        name=name or code,
        currency=currency,
        normal_balance=normal_balance,
        allow_negative=allow_negative or is_hot,
        negative_limit=None if is_hot else negative_limit,
        is_hot=is_hot,
        owner_type=owner_type,
        owner_id=str(owner_id),
        metadata=metadata or {},
    )
    buckets = settings.LEDGER_HOT_ACCOUNT_BUCKETS if is_hot else 1
    Balance.objects.bulk_create(
        Balance(account=account, bucket=b, floor=account.floor) for b in range(buckets)
    )
    return account


def ensure_system_account(
    *, code: str, currency: str, normal_balance: str = NormalBalance.CREDIT, name: str = ""
) -> Account:
    """The system account ``code`` in ``currency`` (a hot account), created on first use.

    Safe under concurrency: the unique (code, currency) constraint decides who creates it.
    """
    account = Account.objects.filter(code=code, currency=currency).first()
    if account is None:
        try:
            account = create_account(
                code=code, currency=currency, normal_balance=normal_balance, name=name, is_hot=True
            )
        except IntegrityError:
            account = Account.objects.get(code=code, currency=currency)
    if account.normal_balance != normal_balance or not account.is_hot:
        raise errors.InvalidTransaction(
            f"{code} ({currency}) exists as a {account.normal_balance}-normal "
            f"{'hot' if account.is_hot else 'owned'} account, not a {normal_balance}-normal "
            "system account"
        )
    return account


@transaction.atomic
def set_overdraft(
    *, account: Account, allow_negative: bool, negative_limit: Decimal | None = None
) -> Account:
    """Change how far below zero an owned account may go; refused if it already is lower.

    ``account`` is changed only when the database is: a refused call leaves it as it was."""
    if account.is_hot:
        raise errors.InvalidTransaction("hot accounts have no overdraft floor")
    if negative_limit is not None:
        negative_limit = to_amount(negative_limit)
        if negative_limit < 0:
            raise errors.InvalidAmount("negative_limit cannot be negative; it is a distance")
        if not allow_negative:
            raise errors.InvalidTransaction("a negative_limit needs allow_negative")
    floor = ZERO if not allow_negative else (None if negative_limit is None else -negative_limit)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE ledger_balance SET floor = %s, version = version + 1, updated_at = now() "
            "WHERE account_id = %s AND bucket = 0 AND (%s::numeric IS NULL OR posted - held >= %s)",
            [floor, account.pk, floor, floor],
        )
        if cursor.rowcount != 1:
            raise errors.OverdraftLimitBelowBalance(
                f"account {account.code} is already below the new floor {floor}"
            )
    Account.objects.filter(pk=account.pk).update(
        allow_negative=allow_negative, negative_limit=negative_limit
    )
    account.allow_negative, account.negative_limit = allow_negative, negative_limit
    return account


# --- postings ----------------------------------------------------------------------------

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
#   - owned balances: locked in account-id order (the FOR UPDATE above the ORDER BY locks
#     rows in that order, as the posting function does: no deadlock between the two), then
#     updated; the row's CHECK (posted >= held + floor), evaluated on the newest committed
#     version, raises check_violation, reported as insufficient_funds;
#   - hot accounts: a bucket nobody holds (FOR UPDATE SKIP LOCKED), searched from
#     pid % buckets so that concurrent backends start on different rows; a random one,
#     waited for, only when every bucket is busy; chosen in a SELECT list, once per hot
#     leg, never per candidate row;
#   - ledger_posting_applied, last, refuses the posting if a leg found no balance row.
_POST_ONE = """
WITH legs AS MATERIALIZED (
    SELECT v.n, v.acc, v.amt, a.currency AS cur, a.is_hot AS hot,
           CASE WHEN a.normal_balance = 'debit' THEN v.amt ELSE -v.amt END AS delta
      FROM (VALUES <LEGS>) AS v(acc, amt, n)
      JOIN ledger_account a ON a.id = v.acc
), t AS (
    INSERT INTO ledger_transaction AS lt
           (reference, payload_hash, description, metadata, effective_at, recorded_at,
            reverses_id, hold_id)
    SELECT %(reference)s::text, %(payload_hash)s::text, %(description)s::text,
           %(metadata)s::jsonb, coalesce(%(effective_at)s::timestamptz, now()), now(),
           %(reverses_id)s::bigint, %(hold_id)s::bigint
     WHERE ledger_posting_guard(
               %(reference)s::text, ARRAY[<ACCOUNTS>], ARRAY[<AMOUNTS>],
               (SELECT count(*) FROM legs),
               (SELECT bool_and(c.total = 0)
                  FROM (SELECT sum(legs.amt) AS total FROM legs GROUP BY legs.cur) AS c))
    ON CONFLICT (reference) DO NOTHING
    RETURNING lt.id, lt.effective_at, lt.recorded_at
), entries AS (
    INSERT INTO ledger_entry (transaction_id, account_id, currency, amount)
    SELECT t.id, l.acc, l.cur, l.amt FROM t CROSS JOIN legs l ORDER BY l.n
), owned_legs AS (
    SELECT l.acc, l.delta FROM legs l CROSS JOIN t WHERE NOT l.hot
), owned_locked AS (
    SELECT b.id, o.delta
      FROM ledger_balance b JOIN owned_legs o ON b.account_id = o.acc
     WHERE b.bucket = 0
     ORDER BY b.account_id
       FOR UPDATE OF b
), owned AS (
    UPDATE ledger_balance b
       SET posted = b.posted + k.delta, version = b.version + 1, updated_at = now()
      FROM owned_locked k
     WHERE b.id = k.id
    RETURNING 1
), hot_legs AS (
    SELECT l.delta,
           coalesce(
               (SELECT s.id FROM ledger_balance s
                 WHERE s.account_id = l.acc AND s.bucket >= pg_backend_pid() %% %(buckets)s
                 ORDER BY s.bucket LIMIT 1 FOR UPDATE SKIP LOCKED),
               (SELECT s.id FROM ledger_balance s WHERE s.account_id = l.acc
                 ORDER BY s.bucket LIMIT 1 FOR UPDATE SKIP LOCKED),
               (SELECT s.id FROM ledger_balance s WHERE s.account_id = l.acc
                 ORDER BY random() LIMIT 1)) AS bucket_id
      FROM legs l CROSS JOIN t
     WHERE l.hot
), hot AS (
    -- A second UPDATE, not one over owned_locked UNION ALL hot_legs: that one, tried,
    -- changed fewer rows than it had legs under concurrent postings (ledger_posting_applied
    -- refused them: the opposite-transfers test in tests/ledger/test_concurrency).
    UPDATE ledger_balance b
       SET posted = b.posted + h.delta, version = b.version + 1, updated_at = now()
      FROM hot_legs h
     WHERE b.id = h.bucket_id
    RETURNING 1
)
SELECT t.id, t.effective_at, t.recorded_at
  FROM t
 WHERE ledger_posting_applied((SELECT count(*) FROM legs),
                              (SELECT count(*) FROM owned) + (SELECT count(*) FROM hot))
"""


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
    return (
        _POST_ONE.replace(
            "<LEGS>",
            ", ".join(f"(%(a{i})s::bigint, %(m{i})s::numeric, {i})" for i in range(legs)),
        )
        .replace("<ACCOUNTS>", ", ".join(f"%(a{i})s::bigint" for i in range(legs)))
        .replace("<AMOUNTS>", ", ".join(f"%(m{i})s::numeric" for i in range(legs)))
    )


def _post_one_statement(db: Any, spec: TransactionSpec, payload_hash: str) -> tuple | None:
    """(id, effective_at, recorded_at) of the new transaction, or None for a replay."""
    db.ensure_connection()
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
    # Django's cursors bind parameters client-side, which cannot prepare; a psycopg cursor
    # on the same connection (same session, same transaction) binds server-side and
    # prepares the statement once per connection. Django's wrapper still turns driver
    # errors into django.db errors.
    with db.wrap_database_errors:
        cursor = PsycopgCursor(db.connection)
        try:
            cursor.execute(_post_one_sql(len(spec.legs)), params, prepare=True)
            return cursor.fetchone()
        finally:
            cursor.close()


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
            (floor is not None and available + delta < floor, account_id, available, -delta, floor)
        )
    # The account that cannot cover its leg now; if none (a concurrent posting has since
    # paid one in), the first one the leg takes from.
    _, account_id, available, required, floor = max(
        shortfalls, key=lambda s: (s[0], s[3] > 0, -s[1])
    )
    return errors.InsufficientFunds(
        f"account {account_id} has {available} available; this posting needs {required} "
        f"(floor {floor if floor is not None else 0})",
        detail={
            "account_id": account_id,
            "available": available,
            "required": required,
            "floor": floor,
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
        cause = exc.__cause__
        if (
            isinstance(cause, psycopg.Error)
            and cause.sqlstate == "23514"
            and cause.diag.constraint_name == "ledger_balance_within_floor"
        ):
            raise _insufficient_funds(spec) from exc
        _raise_ledger_error(exc)
    if row is None:
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
    transaction_id, effective_at, recorded_at = row
    # from_db, as for a row read back: a third of the cost of Model(**kwargs).
    values = {
        "id": transaction_id,
        "reference": spec.reference,
        "payload_hash": payload_hash,
        "description": spec.description,
        "metadata": spec.metadata,
        "effective_at": effective_at,
        "recorded_at": recorded_at,
        "reverses_id": spec.reverses_id,
        "hold_id": spec.hold_id,
    }
    posted = LedgerTransaction.from_db(
        db.alias, _TRANSACTION_FIELDS, [values[name] for name in _TRANSACTION_FIELDS]
    )
    posted.replayed = False
    return posted


_TRANSACTION_FIELDS = [f.attname for f in LedgerTransaction._meta.concrete_fields]


def _call_post_function(payload: str) -> list[tuple]:
    """The posting function on ``payload`` (TransactionSpec.as_json documents): one row per
    transaction, (index from 1, id, replayed, effective_at, recorded_at)."""
    with connection.cursor() as cursor:
        try:
            cursor.execute(
                "SELECT idx, transaction_id, replayed, effective_at, recorded_at "
                "FROM ledger_post_transactions_bulk(%s::jsonb)",
                [payload],
            )
            return cursor.fetchall()
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
    documents = [spec.as_json() for spec in transactions]
    payload = json.dumps(documents)
    if connection.in_atomic_block and savepoint:
        # Inside the caller's transaction: a savepoint, so that a refused posting leaves
        # the caller's transaction usable and changes nothing.
        with transaction.atomic():
            rows = _call_post_function(payload)
    else:
        # On its own: the posting function is one statement, and a statement in autocommit
        # is atomic by itself. One round trip instead of three (BEGIN, SELECT, COMMIT).
        rows = _call_post_function(payload)
    by_index = {row[0]: row for row in rows}
    replayed_ids = [row[1] for row in rows if row[2]]
    originals = LedgerTransaction.objects.in_bulk(replayed_ids) if replayed_ids else {}
    result = []
    for index, (spec, document) in enumerate(zip(transactions, documents, strict=True), start=1):
        _, transaction_id, replayed, effective_at, recorded_at = by_index[index]
        if replayed:
            posted = originals[transaction_id]
        else:
            posted = LedgerTransaction(
                id=transaction_id,
                reference=spec.reference,
                payload_hash=document["payload_hash"],
                description=spec.description,
                metadata=spec.metadata,
                effective_at=effective_at,
                recorded_at=recorded_at,
                reverses_id=spec.reverses_id,
                hold_id=spec.hold_id,
            )
        posted.replayed = replayed
        result.append(posted)
    return result


@transaction.atomic
def reverse_transaction(
    *,
    transaction_id: int,
    reference: str,
    description: str = "",
    metadata: dict[str, Any] | None = None,
    effective_at: datetime | None = None,
) -> LedgerTransaction:
    """Undo a transaction with a new one whose entries mirror it. At most one reversal per
    transaction; a reversal needs the funds it takes back like any other posting."""
    original = (
        LedgerTransaction.objects.filter(pk=transaction_id).prefetch_related("entries").first()
    )
    if original is None:
        raise errors.TransactionNotFound(f"transaction {transaction_id} does not exist")
    if original.reverses_id is not None:
        raise errors.CannotReverseReversal(
            f"transaction {original.reference} is itself a reversal; post a new transaction"
        )
    legs = [Leg(entry.account_id, -entry.amount) for entry in original.entries.order_by("id")]
    spec = TransactionSpec(
        reference=reference,
        legs=legs,
        description=description or f"Reversal of {original.reference}",
        metadata=metadata or {},
        effective_at=effective_at,
        reverses_id=original.pk,
    )
    return post_transactions(transactions=[spec])[0]


@dataclass(frozen=True)
class LockedBalance:
    account_id: int
    posted: Decimal
    held: Decimal
    floor: Decimal | None  # None: no floor (unlimited overdraft)

    @property
    def available(self) -> Decimal:
        return self.posted - self.held

    def can_spend(self, amount: Decimal) -> bool:
        return self.floor is None or self.available - amount >= self.floor


def read_balances(*, account_ids: Sequence[int]) -> dict[int, LockedBalance]:
    """The same figures as ``lock_balances``, read without a lock (for estimates)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT account_id, posted, held, floor FROM ledger_balance "
            "WHERE account_id = ANY(%s) AND bucket = 0",
            [sorted(set(account_ids))],
        )
        return {row[0]: LockedBalance(*row) for row in cursor.fetchall()}


def lock_balances(*, account_ids: Sequence[int]) -> dict[int, LockedBalance]:
    """Lock owned accounts' balance rows (in id order) until the caller's transaction ends
    and return them: a caller deciding what fits before posting (rating a batch of usage)
    sees a balance no hold, top-up or other posting can change under it."""
    if not connection.in_atomic_block:
        raise errors.InvalidTransaction("lock_balances needs the caller's transaction")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT account_id, posted, held, floor FROM ledger_balance "
            "WHERE account_id = ANY(%s) AND bucket = 0 ORDER BY account_id FOR UPDATE",
            [sorted(set(account_ids))],
        )
        return {row[0]: LockedBalance(*row) for row in cursor.fetchall()}


# --- holds -------------------------------------------------------------------------------


def _hold_hash(account_id: int, destination_id: int, amount: Decimal, expires_at) -> str:
    body = [account_id, destination_id, str(amount), expires_at.isoformat() if expires_at else None]
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()


def _change_held(*, account_id: int, delta: Decimal, check_floor: bool) -> bool:
    """Add ``delta`` to an owned account's held amount; False if the floor forbids it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE ledger_balance SET held = held + %s, version = version + 1, updated_at = now() "
            "WHERE account_id = %s AND bucket = 0 "
            "AND (NOT %s OR floor IS NULL OR posted - held - %s >= floor)",
            [delta, account_id, check_floor, delta],
        )
        return cursor.rowcount == 1


@transaction.atomic
def place_hold(
    *,
    reference: str,
    account: Account,
    destination: Account,
    amount: Decimal | int | str,
    expires_at: datetime | None = None,
    description: str = "",
    metadata: dict[str, Any] | None = None,
) -> Hold:
    """Reserve ``amount`` on ``account``: out of its available balance at once, to be settled
    to ``destination`` or released. Idempotent on ``reference``."""
    amount = to_amount(amount, positive=True)
    if account.is_hot or account.normal_balance != NormalBalance.CREDIT:
        raise errors.HoldNotSupported("holds are placed on owned, credit-normal accounts")
    if account.currency != destination.currency:
        raise errors.CurrencyMismatch(
            f"hold on {account.currency} cannot settle to a {destination.currency} account"
        )
    payload_hash = _hold_hash(account.pk, destination.pk, amount, expires_at)
    try:
        with transaction.atomic():
            hold = Hold.objects.create(
                reference=reference,
                payload_hash=payload_hash,
                account=account,
                destination=destination,
                currency=account.currency,
                amount=amount,
                expires_at=expires_at,
                description=description,
                metadata=metadata or {},
            )
    except IntegrityError:
        hold = Hold.objects.get(reference=reference)
        if hold.payload_hash != payload_hash:
            raise errors.ReferenceReused(
                f"hold reference {reference} was already used for a different hold"
            ) from None
        hold.replayed = True
        return hold
    if not _change_held(account_id=account.pk, delta=amount, check_floor=True):
        raise errors.InsufficientFunds(
            f"account {account.code} cannot cover a hold of {amount} {account.currency}",
            detail={"account_id": account.pk, "required": str(amount)},
        )
    hold.replayed = False
    return hold


def _locked_hold(hold_id: int) -> Hold:
    hold = Hold.objects.select_for_update().filter(pk=hold_id).first()
    if hold is None:
        raise errors.HoldNotFound(f"hold {hold_id} does not exist")
    return hold


def _resolve(hold: Hold, status: str, now: datetime) -> None:
    remaining = hold.amount - hold.settled_amount
    if remaining:
        _change_held(account_id=hold.account_id, delta=-remaining, check_floor=False)
    hold.status = status
    hold.resolved_at = now
    hold.save(update_fields=["status", "resolved_at", "settled_amount"])


def _settlement_replay(spec: TransactionSpec) -> LedgerTransaction | None:
    """The transaction a retried settlement already posted, or None; another posting under
    the same reference is refused."""
    existing = LedgerTransaction.objects.filter(reference=spec.reference).first()
    if existing is None:
        return None
    if existing.payload_hash != spec.payload_hash():
        raise errors.ReferenceReused(f"reference {spec.reference} was used for another posting")
    existing.replayed = True
    return existing


def _check_settleable(hold: Hold, now: datetime) -> None:
    if hold.status != HoldStatus.PENDING:
        raise errors.HoldAlreadyResolved(f"hold {hold.pk} is already {hold.status}")
    if hold.expires_at is not None and hold.expires_at <= now:
        raise errors.HoldExpired(f"hold {hold.pk} expired at {hold.expires_at}")


@transaction.atomic
def settle_hold(
    *,
    hold_id: int,
    amount: Decimal | int | str,
    reference: str,
    final: bool = False,
    description: str = "",
    metadata: dict[str, Any] | None = None,
) -> LedgerTransaction:
    """Settle part of a hold: post ``amount`` from the held account to the destination.

    Call it as often as usage arrives (streaming, long agent runs); ``final=True`` releases
    what is left. A retried part (same reference) returns the original transaction.
    """
    amount = to_amount(amount, positive=True)
    hold = _locked_hold(hold_id)  # serialises every settle/release of this hold
    settlement = TransactionSpec(
        reference=reference,
        legs=[debit(hold.account_id, amount), credit(hold.destination_id, amount)],
        description=description or f"Settlement of hold {hold.reference}",
        metadata=metadata or {},
        hold_id=hold.pk,
    )
    # A retried part is a replay when it is the same posting, by the ledger's own rule
    # (the payload hash); checked before the hold's state, which the first try changed.
    existing = _settlement_replay(settlement)
    if existing is not None:
        return existing
    now = timezone.now()
    _check_settleable(hold, now)
    remaining = hold.amount - hold.settled_amount
    if amount > remaining:
        raise errors.HoldAmountExceeded(
            f"hold {hold.pk} has {remaining} left; cannot settle {amount}"
        )
    # Release the held part first, then post: available is unchanged by the pair.
    _change_held(account_id=hold.account_id, delta=-amount, check_floor=False)
    posted = post_transactions(transactions=[settlement])[0]
    hold.settled_amount += amount
    if hold.settled_amount == hold.amount or final:
        _resolve(hold, HoldStatus.SETTLED, now)
    else:
        hold.save(update_fields=["settled_amount"])
    return posted


def lock_hold(*, hold_id: int) -> Hold:
    """The hold, locked until the caller's transaction ends (before any balance row, the
    order every hold operation uses)."""
    if not connection.in_atomic_block:
        raise errors.InvalidTransaction("lock_hold needs the caller's transaction")
    return _locked_hold(hold_id)


@transaction.atomic
def settle_hold_with(*, hold_id: int, spec: TransactionSpec | None) -> LedgerTransaction | None:
    """Settle a hold once, with a posting built by the caller (usage rated elsewhere): what
    is left of the hold is released and ``spec`` posted, linked to the hold, in one
    transaction. The posting may take more from the held account than was held: the excess
    needs available funds like any posting, and if they are not there nothing changes and
    the hold stays pending. ``spec`` None settles for nothing. A retry (same reference)
    returns the original transaction."""
    hold = _locked_hold(hold_id)
    if spec is not None:
        spec.hold_id = hold.pk
        existing = _settlement_replay(spec)
        if existing is not None:
            return existing
    now = timezone.now()
    _check_settleable(hold, now)
    remaining = hold.amount - hold.settled_amount
    _change_held(account_id=hold.account_id, delta=-remaining, check_floor=False)
    posted = None
    if spec is not None:
        posted = post_transactions(transactions=[spec])[0]
        taken = sum(
            (
                leg.amount
                for leg in spec.legs
                if leg.account_id == hold.account_id and leg.amount > 0
            ),
            ZERO,
        )
        hold.settled_amount += min(taken, remaining)
    hold.status = HoldStatus.SETTLED
    hold.resolved_at = now
    hold.save(update_fields=["status", "resolved_at", "settled_amount"])
    return posted


@transaction.atomic
def release_hold(*, hold_id: int) -> Hold:
    """Release what is left of a hold without charge. Releasing twice is a no-op; releasing
    a hold that was settled or expired is refused."""
    hold = _locked_hold(hold_id)
    if hold.status == HoldStatus.RELEASED:
        return hold
    if hold.status != HoldStatus.PENDING:
        raise errors.HoldAlreadyResolved(f"hold {hold.pk} is already {hold.status}")
    _resolve(hold, HoldStatus.RELEASED, timezone.now())
    return hold


def release_expired_holds(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Expire pending holds past their expiry; returns how many. Safe to run concurrently:
    each hold is taken with SKIP LOCKED and resolved in its own transaction."""
    now = now or timezone.now()
    expired = 0
    candidate_ids = list(
        Hold.objects.filter(status=HoldStatus.PENDING, expires_at__lte=now)
        .order_by("expires_at")
        .values_list("pk", flat=True)[:limit]
    )
    for hold_id in candidate_ids:
        with transaction.atomic():
            hold = (
                Hold.objects.select_for_update(skip_locked=True)
                .filter(pk=hold_id, status=HoldStatus.PENDING, expires_at__lte=now)
                .first()
            )
            if hold is not None:
                _resolve(hold, HoldStatus.EXPIRED, now)
                expired += 1
    return expired


__all__ = [
    "Leg",
    "TransactionSpec",
    "ZERO",
    "LockedBalance",
    "create_account",
    "credit",
    "debit",
    "ensure_system_account",
    "lock_balances",
    "lock_hold",
    "read_balances",
    "place_hold",
    "post_transaction",
    "post_transactions",
    "release_expired_holds",
    "release_hold",
    "reverse_transaction",
    "set_overdraft",
    "settle_hold",
    "settle_hold_with",
    "to_amount",
]
