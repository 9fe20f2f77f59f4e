"""What a posting is before it is posted: exact amounts (``to_amount``), legs (``Leg``,
``debit``, ``credit``) and the transaction they make (``TransactionSpec``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation, localcontext
from typing import Any

from django.utils import timezone

from ledger import errors
from ledger.models import AMOUNT_DIGITS, AMOUNT_PLACES, AMOUNT_QUANTUM, Account

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
