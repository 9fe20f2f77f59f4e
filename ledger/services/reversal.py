"""Reversal: a transaction undone by a new one whose entries mirror it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction

from ledger import errors
from ledger.models import Transaction as LedgerTransaction
from ledger.services.posting import post_transactions
from ledger.services.spec import Leg, TransactionSpec


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
