"""Expected ledger failures, each with a stable error code the API exposes as-is."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any


class LedgerError(Exception):
    code = "ledger_error"
    http_status = 400

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail or {}


class InvalidAmount(LedgerError):
    code = "invalid_amount"


class InvalidTransaction(LedgerError):
    code = "invalid_transaction"


class UnbalancedTransaction(LedgerError):
    code = "unbalanced_transaction"


class InsufficientFunds(LedgerError):
    code = "insufficient_funds"
    http_status = 402


class ReferenceReused(LedgerError):
    """The reference was already used with a different payload."""

    code = "reference_reused"
    http_status = 409


class AccountNotFound(LedgerError):
    code = "account_not_found"
    http_status = 404


class CurrencyMismatch(LedgerError):
    code = "currency_mismatch"


class AlreadyReversed(LedgerError):
    code = "already_reversed"
    http_status = 409


class CannotReverseReversal(LedgerError):
    code = "cannot_reverse_reversal"
    http_status = 409


class TransactionNotFound(LedgerError):
    code = "transaction_not_found"
    http_status = 404


class HoldNotFound(LedgerError):
    code = "hold_not_found"
    http_status = 404


class HoldAlreadyResolved(LedgerError):
    code = "hold_already_resolved"
    http_status = 409


class HoldExpired(LedgerError):
    code = "hold_expired"
    http_status = 409


class HoldAmountExceeded(LedgerError):
    code = "hold_amount_exceeded"


class HoldNotSupported(LedgerError):
    code = "hold_not_supported"


class OverdraftLimitBelowBalance(LedgerError):
    code = "overdraft_limit_below_balance"
    http_status = 409


class LedgerImmutable(LedgerError):
    code = "ledger_immutable"
    http_status = 409


# Custom SQLSTATEs raised inside PostgreSQL (migration 0002) → error classes.
SQLSTATE_ERRORS: dict[str, type[LedgerError]] = {
    "LG001": InsufficientFunds,
    "LG002": ReferenceReused,
    "LG003": UnbalancedTransaction,
    "LG004": AccountNotFound,
    "LG005": InvalidTransaction,
    "LG010": LedgerImmutable,
}


def from_database_error(exc: BaseException) -> LedgerError | None:
    """The ledger error a database exception stands for, or None if it is not one of ours."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    sqlstate = getattr(cause, "sqlstate", None)
    diag = getattr(cause, "diag", None)
    if sqlstate in SQLSTATE_ERRORS:
        detail: dict[str, Any] = {}
        raw = getattr(diag, "message_detail", None)
        if raw:
            try:
                detail = json.loads(raw, parse_float=Decimal)
            except ValueError:
                detail = {"detail": raw}
        message = getattr(diag, "message_primary", None) or str(cause)
        return SQLSTATE_ERRORS[sqlstate](message, detail=detail)
    if sqlstate == "22003":  # numeric_value_out_of_range: beyond NUMERIC(38, 12)
        return InvalidAmount("the amount would take a balance beyond 26 integer digits")
    if sqlstate == "23505" and getattr(diag, "constraint_name", "") == (
        "ledger_transaction_reverses_id_key"
    ):
        return AlreadyReversed("this transaction has already been reversed")
    return None
