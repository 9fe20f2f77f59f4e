"""Reads of the ledger: balances (now or as of a time), entries and statements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import overload

from django.db.models import Q, QuerySet, Sum

from ledger.models import ZERO, Account, Balance, Entry, NormalBalance


@dataclass(frozen=True)
class BalanceView:
    """A balance now: posted, held, available and the version of its rows."""

    currency: str
    posted: Decimal
    held: Decimal
    version: int

    @property
    def available(self) -> Decimal:
        return self.posted - self.held


@dataclass(frozen=True)
class PastBalance:
    """The posted balance as of a past time: holds and versions are not kept in history, so
    ``held``, ``version`` and ``available`` are None."""

    currency: str
    posted: Decimal
    held: None = None
    version: None = None
    available: None = None


def _natural(account: Account, signed_sum: Decimal) -> Decimal:
    """Entry amounts are debit-positive; balances are reported in the normal direction."""
    return signed_sum if account.normal_balance == NormalBalance.DEBIT else -signed_sum


@overload
def get_balance(*, account: Account, as_of: None = None) -> BalanceView: ...
@overload
def get_balance(*, account: Account, as_of: datetime) -> PastBalance: ...
def get_balance(*, account: Account, as_of: datetime | None = None) -> BalanceView | PastBalance:
    """The balance now (from the balance rows: posted, held, available, version), or the
    posted balance as of a time (from the entries effective at or before it; ``held`` and
    ``version`` are None for a past balance)."""
    if as_of is None:
        totals = Balance.objects.filter(account=account).aggregate(
            posted=Sum("posted"), held=Sum("held"), version=Sum("version")
        )
        return BalanceView(
            currency=account.currency,
            posted=totals["posted"] or ZERO,
            held=totals["held"] or ZERO,
            version=int(totals["version"] or 0),
        )
    signed = (
        Entry.objects.filter(account=account, transaction__effective_at__lte=as_of).aggregate(
            total=Sum("amount")
        )["total"]
        or ZERO
    )
    return PastBalance(currency=account.currency, posted=_natural(account, signed))


def balance_from_entries(*, account: Account) -> Decimal:
    """The posted balance recomputed from every entry (what reconciliation compares)."""
    signed = Entry.objects.filter(account=account).aggregate(total=Sum("amount"))["total"]
    return _natural(account, signed or ZERO)


def list_entries(
    *, account: Account, since: datetime | None = None, until: datetime | None = None
) -> QuerySet[Entry]:
    """The account's entries, oldest first, effective in [since, until)."""
    filters = Q(account=account)
    if since is not None:
        filters &= Q(transaction__effective_at__gte=since)
    if until is not None:
        filters &= Q(transaction__effective_at__lt=until)
    return (
        Entry.objects.filter(filters)
        .select_related("transaction")
        .order_by("transaction__effective_at", "id")
    )


@dataclass(frozen=True)
class StatementLine:
    entry: Entry
    change: Decimal  # in the account's normal direction
    running_balance: Decimal


@dataclass(frozen=True)
class Statement:
    account: Account
    start: datetime
    end: datetime
    opening_balance: Decimal
    lines: list[StatementLine]

    @property
    def closing_balance(self) -> Decimal:
        return self.lines[-1].running_balance if self.lines else self.opening_balance


def get_statement(*, account: Account, start: datetime, end: datetime) -> Statement:
    """Opening balance at ``start``, every entry in [start, end) with a running balance."""
    opening_signed = (
        Entry.objects.filter(account=account, transaction__effective_at__lt=start).aggregate(
            total=Sum("amount")
        )["total"]
        or ZERO
    )
    running = _natural(account, opening_signed)
    opening = running
    lines = []
    for entry in list_entries(account=account, since=start, until=end):
        change = _natural(account, entry.amount)
        running += change
        lines.append(StatementLine(entry=entry, change=change, running_balance=running))
    return Statement(account=account, start=start, end=end, opening_balance=opening, lines=lines)
