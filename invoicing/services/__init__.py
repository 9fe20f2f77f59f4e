"""Writes of invoicing. Money moves only through ``ledger.services``; the money movement map
is in ``invoicing.models``.

    opening      open_period, due_opening_ids: a commitment billed in advance is invoiced
                 when its period opens, exactly once
    close        close_period, close_subscription_periods, close_due_periods:
                 a period becomes a draft, exactly once
    finalize     finalize_invoice, finalize_due_invoices, refresh_draft, after_finalization:
                 a draft becomes a numbered, posted invoice
    settlement   record_payment, record_payment_failure (dunning), create_credit_note,
                 void_invoice: what an issued invoice is owed changes
    invoices     an invoice's row locked, numbered, its lines written (used by the above)
    accounts     the ledger accounts invoicing posts to (receivable, system accounts)

Every function is one database transaction and safe to call again: a second close of the
same period finds the invoice the first made (the unique constraint decides between two
racing closers), a second finalize finds it final, a credit note or payment is unique on
its reference.

The rest of the project calls invoicing's writes through this package (``from invoicing
import services``: the tasks, the admin, the API, the webhooks, the payments, the
``close_periods`` command): the names below are its interface; which module holds each is
invoicing's own business.
"""

from invoicing.services.accounts import CLEARING, receivable_account, system_account_id
from invoicing.services.close import (
    CloseResult,
    close_due_periods,
    close_period,
    close_subscription_periods,
    due_subscription_ids,
)
from invoicing.services.finalize import (
    FOLLOW_UP_GRACE,
    after_finalization,
    due_draft_ids,
    finalize_due_invoices,
    finalize_invoice,
    invoices_without_follow_up,
    refresh_draft,
)
from invoicing.services.opening import due_opening_ids, open_period
from invoicing.services.settlement import (
    create_credit_note,
    due_payment_retry_ids,
    record_payment,
    record_payment_failure,
    void_invoice,
)

__all__ = [
    "CLEARING",
    "FOLLOW_UP_GRACE",
    "CloseResult",
    "after_finalization",
    "close_due_periods",
    "close_period",
    "close_subscription_periods",
    "create_credit_note",
    "due_draft_ids",
    "due_opening_ids",
    "due_payment_retry_ids",
    "due_subscription_ids",
    "finalize_due_invoices",
    "finalize_invoice",
    "invoices_without_follow_up",
    "open_period",
    "receivable_account",
    "record_payment",
    "record_payment_failure",
    "refresh_draft",
    "system_account_id",
    "void_invoice",
]
