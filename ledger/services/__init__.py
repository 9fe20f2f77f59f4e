"""The only way to write to the ledger.

    spec        to_amount, Leg, debit, credit, TransactionSpec: a posting described
    accounts    create_account, ensure_system_account, set_overdraft;
                LockedBalance, can_spend, read_balances, lock_balances
    posting     post_transaction, post_transactions (bulk, all-or-nothing),
                post_transactions_for_ids (the same, answering ids, not instances);
                posting_ctes (a posting embedded in a caller's statement), raise_refusal,
                replayed
    reversal    reverse_transaction
    holds       place_hold, settle_hold, settle_hold_with, lock_hold, release_hold,
                release_expired_holds

Every function is atomic (a savepoint when called inside a caller's transaction) and
idempotent on its ``reference``. Expected failures raise ``ledger.errors.LedgerError``
subclasses and change nothing.

The layers above call the ledger through this package (``from ledger import services as
ledger``), never through its modules: the names below are the ledger's write interface, and
how the package is divided among files is the ledger's own business.
"""

from ledger.models import ZERO
from ledger.services.accounts import (
    LockedBalance,
    can_spend,
    create_account,
    ensure_system_account,
    lock_balances,
    read_balances,
    set_overdraft,
)
from ledger.services.holds import (
    lock_hold,
    place_hold,
    release_expired_holds,
    release_hold,
    settle_hold,
    settle_hold_with,
)
from ledger.services.posting import (
    Posted,
    PostingCtes,
    post_transaction,
    post_transactions,
    post_transactions_for_ids,
    posting_ctes,
    raise_refusal,
    replayed,
)
from ledger.services.reversal import reverse_transaction
from ledger.services.spec import Leg, TransactionSpec, credit, debit, to_amount

__all__ = [
    "Leg",
    "TransactionSpec",
    "ZERO",
    "LockedBalance",
    "can_spend",
    "Posted",
    "PostingCtes",
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
    "post_transactions_for_ids",
    "posting_ctes",
    "raise_refusal",
    "replayed",
    "release_expired_holds",
    "release_hold",
    "reverse_transaction",
    "set_overdraft",
    "settle_hold",
    "settle_hold_with",
    "to_amount",
]
