"""Holds: funds reserved on an owned account (``place_hold``), then settled to their
destination in parts (``settle_hold``) or once with a posting built by the caller
(``settle_hold_with``), released (``release_hold``) or expired (``release_expired_holds``).
Every operation on a hold takes the hold's row first (``lock_hold``), then balance rows."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from ledger import errors
from ledger.models import ZERO, Account, Hold, HoldStatus, NormalBalance
from ledger.models import Transaction as LedgerTransaction
from ledger.services.posting import post_transactions
from ledger.services.spec import TransactionSpec, credit, debit, to_amount


def _hold_hash(
    *, account_id: int, destination_id: int, amount: Decimal, expires_at: datetime | None
) -> str:
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
    payload_hash = _hold_hash(
        account_id=account.pk, destination_id=destination.pk, amount=amount, expires_at=expires_at
    )
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


def _resolve(hold: Hold, status: HoldStatus, now: datetime) -> None:
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
