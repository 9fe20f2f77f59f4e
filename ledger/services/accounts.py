"""Accounts and their balance rows: created (``create_account``, ``ensure_system_account``),
their overdraft floor changed (``set_overdraft``), and owned balances read or locked for a
caller deciding what fits before it posts (``read_balances``, ``lock_balances``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction

from ledger import errors
from ledger.models import ZERO, Account, Balance, NormalBalance
from ledger.services.spec import to_amount


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
        return can_spend(self.posted, self.held, self.floor, amount)


def can_spend(posted: Decimal, held: Decimal, floor: Decimal | None, amount: Decimal) -> bool:
    """Whether a balance of these figures may be debited ``amount``: what is available
    (posted less held) stays at or above its floor (none: unlimited overdraft)."""
    return floor is None or posted - held - amount >= floor


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
