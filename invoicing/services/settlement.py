"""What changes what an issued invoice is owed: payments received (``record_payment``),
failed attempts to collect and dunning (``record_payment_failure``), credit notes
(``create_credit_note``) and voids (``void_invoice``). Each is one transaction, once per
reference: a payment once per (provider, payment id), a credit note once per reference."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.db import transaction

from billing import outbox
from billing import services as billing_services
from billing.models import EventType, Subscription, SubscriptionStatus
from invoicing import errors
from invoicing.events import credit_note_data, emit_invoice_event
from invoicing.models import (
    FINAL_STATUSES,
    CreditNote,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    Payment,
)
from invoicing.money import to_minor_unit
from invoicing.selectors import HUNDRED
from invoicing.services.accounts import (
    CLEARING,
    COMMITMENT_BREAKAGE,
    REVENUE,
    TAX_PAYABLE,
    ZERO,
    customer_accounts,
    nonzero_legs,
    recognised,
    system_account_id,
)
from invoicing.services.close import LIVE
from invoicing.services.invoices import (
    CREDIT_NOTE_SERIES,
    allocate_number,
    locked_invoice,
    resolve_now,
)
from ledger import services as ledger
from ledger.models import NormalBalance
from ledger.services import Leg, TransactionSpec

log = logging.getLogger(__name__)


class DunningAction(StrEnum):
    """What ``DUNNING_FINAL_ACTION`` does to the subscription after the last retry failed."""

    SUSPEND = "suspend"  # its usage refused until what it owes is paid
    CANCEL = "cancel"
    NONE = "none"


def _period_invoiced(invoice: Invoice) -> bool:
    return Invoice.objects.filter(
        subscription_id=invoice.subscription_id,
        period_start=invoice.period_start,
        kind=InvoiceKind.PERIOD,
    ).exists()


@transaction.atomic
def void_invoice(*, invoice_id: int, reason: str, now: datetime | None = None) -> Invoice:
    """Cancel a finalized invoice nobody has paid: the customer owes nothing for it, revenue,
    tax and rounding recognised at finalization are taken back, and the balance it used is
    returned to the wallet. (An invoice with payments or credit notes takes a credit note.)"""
    now = resolve_now(now)
    invoice = locked_invoice(invoice_id, usage_lock=True)  # the lock order, as finalizing
    if invoice.status == InvoiceStatus.VOID:
        return invoice
    if invoice.status == InvoiceStatus.DRAFT:
        raise errors.InvoiceNotFinal("a draft is not voided: it has not been issued")
    if invoice.amount_paid or invoice.amount_credited or invoice.credit_notes.exists():
        raise errors.InvoiceHasPayments(
            f"invoice {invoice} has payments or credit notes; issue a credit note instead"
        )
    if not reason.strip():
        raise errors.InvoicingValidation("voiding needs a reason", param="reason")
    if invoice.kind == InvoiceKind.COMMITMENT and _period_invoiced(invoice):
        raise errors.PrepaidCommitmentInvoice(
            f"invoice {invoice} is a commitment invoiced in advance and its period has been "
            "invoiced (drawing on it): credit the period's invoice instead"
        )
    accounts = customer_accounts(invoice)
    legs = nonzero_legs(
        *recognised(invoice, sign=1, usage=True),
        Leg(accounts.receivable_id, -invoice.amount_due),
        Leg(accounts.wallet_id, -invoice.balance_applied),
    )
    if legs:
        ledger.post_transactions(
            transactions=[
                TransactionSpec(
                    reference=f"invoice:{invoice.pk}:void",
                    legs=legs,
                    description=f"Void of invoice {invoice}: {reason.strip()}",
                    metadata={"kind": "invoice_void", "invoice_id": invoice.pk},
                    effective_at=now,
                )
            ]
        )
    invoice.status, invoice.voided_at, invoice.void_reason = InvoiceStatus.VOID, now, reason
    invoice.next_payment_attempt_at = None
    invoice.save(update_fields=["status", "voided_at", "void_reason", "next_payment_attempt_at"])
    emit_invoice_event(EventType.INVOICE_VOIDED, invoice, f"invoice.voided:{invoice.pk}")
    _reactivate_when_nothing_past_due(invoice.subscription_id, invoice.pk)  # its cause is gone
    return invoice


@transaction.atomic
def create_credit_note(
    *,
    invoice_id: int,
    amount: Decimal,
    reason: str,
    reference: str,
    created_by_id: int | None = None,
    now: datetime | None = None,
) -> CreditNote:
    """Credit ``amount`` (net of tax, in the invoice's currency) of a finalized invoice; its
    tax at the invoice's rate is credited with it. The credit first reduces what the
    invoice still owes; the rest goes to the customer's wallet. Idempotent on
    ``reference``."""
    now = resolve_now(now)
    existing = CreditNote.objects.filter(reference=reference).first()
    if existing is not None:
        if existing.invoice_id != invoice_id or existing.amount != amount:
            raise errors.ReferenceReused(f"reference {reference!r} made another credit note")
        return existing
    # the usage lock first: settling what was owed may make a suspended subscription active
    invoice = locked_invoice(invoice_id, usage_lock=True)
    if invoice.status not in FINAL_STATUSES:
        raise errors.InvoiceNotFinal(f"invoice {invoice} is {invoice.status}")
    if not reason.strip():
        raise errors.InvoicingValidation("a credit note needs a reason", param="reason")
    if invoice.kind == InvoiceKind.COMMITMENT:
        raise errors.PrepaidCommitmentInvoice(
            f"invoice {invoice} is a commitment invoiced in advance: it is settled by its "
            "period's invoice, which carries the breakage — credit that one (or void this one "
            "before the period closes)"
        )
    currency = invoice.currency
    if amount <= 0 or to_minor_unit(amount, currency) != amount:
        raise errors.InvoicingValidation(
            f"amount must be positive, in whole minor units of {currency}", param="amount"
        )
    notes = list(invoice.credit_notes.all())
    credited_net = sum((n.amount for n in notes), ZERO)
    if amount > invoice.subtotal - credited_net:
        left = to_minor_unit(invoice.subtotal - credited_net, currency, invoice.rounding_rule)
        raise errors.InvoicingValidation(
            f"at most {left} {currency} is left to credit", param="amount"
        )
    tax = to_minor_unit(amount * invoice.tax_percentage / HUNDRED, currency, invoice.rounding_rule)
    total = amount + tax
    # Breakage first: a commitment nobody drew is what a credit most plausibly gives back, and
    # a full credit note then leaves @Revenue and @CommitmentBreakage as a void does.
    breakage_left = invoice.commitment_breakage - sum((n.commitment_breakage for n in notes), ZERO)
    breakage = min(amount, max(breakage_left, ZERO))
    against = min(total, invoice.amount_remaining)
    to_balance = total - against
    accounts = customer_accounts(invoice)
    number = allocate_number(CREDIT_NOTE_SERIES, settings.CREDIT_NOTE_NUMBER_PREFIX)
    posted = ledger.post_transactions(
        transactions=[
            TransactionSpec(
                reference=f"credit-note:{reference}",
                legs=nonzero_legs(
                    Leg(system_account_id(REVENUE, currency), amount - breakage),
                    Leg(system_account_id(COMMITMENT_BREAKAGE, currency), breakage),
                    Leg(system_account_id(TAX_PAYABLE, currency), tax),
                    Leg(accounts.receivable_id, -against),
                    Leg(accounts.wallet_id, -to_balance),
                ),
                description=(
                    f"Credit note {number.display} for invoice {invoice}: {reason.strip()}"
                ),
                metadata={"kind": "credit_note", "invoice_id": invoice.pk},
                effective_at=now,
            )
        ]
    )[0]
    note = CreditNote.objects.create(
        invoice=invoice,
        reference=reference,
        series=number.series,
        number=number.number,
        display_number=number.display,
        reason=reason.strip(),
        amount=amount,
        tax=tax,
        total=total,
        against_receivable=against,
        to_balance=to_balance,
        commitment_breakage=breakage,
        ledger_transaction_id=posted.pk,
        created_by_id=created_by_id,
    )
    invoice.amount_credited += against
    _save_settled(invoice, ["amount_credited"], now)
    outbox.emit(
        EventType.CREDIT_NOTE_CREATED,
        data=credit_note_data(note),
        customer=invoice.customer,
        dedupe_key=f"credit_note.created:{note.pk}",
    )
    return note


@transaction.atomic
def record_payment(
    *,
    invoice_id: int,
    amount: Decimal,
    provider: str,
    provider_payment_id: str,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Payment:
    """Money received for an invoice, in the invoice's currency (the caller compares the
    currency first): Dr the provider's clearing account ``amount``, Cr the customer's
    receivable what the invoice still owed, Cr the customer's wallet the rest — an
    overpayment becomes customer credit, visibly (``Payment.to_balance``), never a negative
    receivable nobody looks at. Once per (provider, payment id): a webhook delivered twice,
    or racing the synchronous answer, records one payment and the other call is a replay."""
    now = resolve_now(now)
    # The invoice's lock first, then the look for an earlier record: two deliveries of one
    # payment queue on the lock and the second finds the first's payment (a replay), instead
    # of both finding none and racing to the unique reference (an error, a 500). The
    # customer's usage lock comes before it (the lock order): a payment that settles what a
    # suspended subscription owed makes it active again, and rating reads that status.
    invoice = locked_invoice(invoice_id, usage_lock=True)
    existing = Payment.objects.filter(
        provider=provider, provider_payment_id=provider_payment_id
    ).first()
    if existing is not None:
        existing.replayed = True
        return existing
    if invoice.status not in FINAL_STATUSES:
        raise errors.InvoiceNotFinal(f"invoice {invoice} is {invoice.status}; it cannot be paid")
    if amount <= 0:
        raise errors.InvoicingValidation("a payment must be positive", param="amount")
    currency = invoice.currency
    applied = min(amount, max(invoice.amount_remaining, ZERO))
    to_balance = amount - applied
    accounts = customer_accounts(invoice)
    clearing = system_account_id(CLEARING[provider], currency, NormalBalance.DEBIT)
    posted = ledger.post_transactions(
        transactions=[
            TransactionSpec(
                reference=f"payment:{provider}:{provider_payment_id}",
                legs=nonzero_legs(
                    Leg(clearing, amount),
                    Leg(accounts.receivable_id, -applied),
                    Leg(accounts.wallet_id, -to_balance),
                ),
                description=f"Payment of invoice {invoice} ({provider})"
                + (
                    f": {to_balance} {currency} overpaid, credited to the balance"
                    if to_balance
                    else ""
                ),
                metadata={
                    "kind": "payment",
                    "invoice_id": invoice.pk,
                    "provider": provider,
                    "to_balance": str(to_balance),
                },
                effective_at=now,
            )
        ]
    )[0]
    payment = Payment.objects.create(
        invoice=invoice,
        provider=provider,
        provider_payment_id=provider_payment_id,
        amount=amount,
        currency=currency,
        to_balance=to_balance,
        ledger_transaction_id=posted.pk,
        metadata=metadata or {},
    )
    if to_balance:
        log.warning(
            "payment %s of invoice %s: %s %s more than was owed, credited to the wallet",
            provider_payment_id,
            invoice,
            to_balance,
            currency,
        )
    if applied:
        invoice.amount_paid += applied
        _save_settled(invoice, ["amount_paid"], now)
    payment.replayed = False
    return payment


def _save_settled(invoice: Invoice, fields: list[str], now: datetime) -> None:
    """Save ``fields``; an invoice nothing is owed on any more is paid, and a subscription
    suspended for it (dunning) is active again once it owes nothing."""
    paid_now = invoice.amount_remaining <= 0 and invoice.status != InvoiceStatus.PAID
    if paid_now:
        invoice.status, invoice.paid_at = InvoiceStatus.PAID, now
        invoice.next_payment_attempt_at = None
        fields = [*fields, "status", "paid_at", "next_payment_attempt_at"]
    invoice.save(update_fields=fields)
    if paid_now:
        emit_invoice_event(EventType.INVOICE_PAID, invoice, f"invoice.paid:{invoice.pk}")
    if invoice.status == InvoiceStatus.PAID:
        _reactivate_when_nothing_past_due(invoice.subscription_id, invoice.pk)


def _reactivate_when_nothing_past_due(subscription_id: int, invoice_id: int) -> None:
    """A subscription suspended by dunning is active again once none of its invoices is past
    due (paid, credited or voided: ``invoice_id`` is the one that settled). The caller holds
    the usage lock."""
    still_owed = Invoice.objects.filter(
        subscription_id=subscription_id, status=InvoiceStatus.PAST_DUE
    ).exists()
    if not still_owed:
        reactivated = Subscription.objects.filter(
            pk=subscription_id, status=SubscriptionStatus.PAST_DUE
        ).update(status=SubscriptionStatus.ACTIVE)
        if reactivated:
            _emit_subscription(
                EventType.SUBSCRIPTION_REACTIVATED,
                subscription_id,
                f"subscription.reactivated:{subscription_id}:invoice:{invoice_id}",
            )


def _emit_subscription(kind: EventType, subscription_id: int, dedupe_key: str) -> None:
    subscription = Subscription.objects.select_related("customer", "plan", "scheduled_plan").get(
        pk=subscription_id
    )
    billing_services.emit_subscription_event(kind, subscription, dedupe_key)


@transaction.atomic
def record_payment_failure(
    *, invoice_id: int, attempt: int, message: str, now: datetime | None = None
) -> Invoice:
    """Attempt ``attempt`` (1 = the first charge) to collect the invoice failed: it is past
    due and retried on the dunning schedule (``DUNNING_RETRY_DAYS`` after each failure);
    after the last retry the subscription is suspended, canceled or left, as
    ``DUNNING_FINAL_ACTION`` says. The same failure reported twice (the charge's answer and
    its webhook), or an old one arriving late, changes nothing."""
    now = resolve_now(now)
    # The usage lock before the invoice's row, as finalizing takes them: the last failure
    # suspends or cancels the subscription, which takes the usage lock; taken only then,
    # after the row, it deadlocked with a finalization of the same invoice.
    invoice = locked_invoice(invoice_id, usage_lock=True)
    if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.PAST_DUE):
        return invoice  # paid or voided meanwhile
    if attempt < invoice.payment_attempts or (
        attempt == invoice.payment_attempts and invoice.status == InvoiceStatus.PAST_DUE
    ):
        return invoice
    schedule = settings.DUNNING_RETRY_DAYS
    invoice.status = InvoiceStatus.PAST_DUE
    invoice.payment_attempts = attempt
    invoice.last_payment_error = message[:1000]
    if attempt <= len(schedule):
        invoice.next_payment_attempt_at = now + timedelta(days=schedule[attempt - 1])
    else:
        invoice.next_payment_attempt_at = None
    invoice.save(
        update_fields=[
            "status",
            "payment_attempts",
            "last_payment_error",
            "next_payment_attempt_at",
        ]
    )
    emit_invoice_event(
        EventType.INVOICE_PAYMENT_FAILED,
        invoice,
        f"invoice.payment_failed:{invoice.pk}:{attempt}",
    )
    if attempt > len(schedule):
        _dunning_final_action(invoice, now)
    return invoice


def _dunning_final_action(invoice: Invoice, now: datetime) -> None:
    action, subscription_id = settings.DUNNING_FINAL_ACTION, invoice.subscription_id
    if action == DunningAction.CANCEL:
        live = Subscription.objects.filter(pk=subscription_id, status__in=LIVE).exists()
        if live:
            billing_services.cancel_subscription(subscription_id=subscription_id, now=now)
    elif action == DunningAction.SUSPEND:  # rating refuses its usage until what it owes is paid
        suspended = (
            Subscription.objects.filter(pk=subscription_id, status__in=LIVE)
            .exclude(status=SubscriptionStatus.PAST_DUE)
            .update(status=SubscriptionStatus.PAST_DUE)
        )
        if suspended:
            _emit_subscription(
                EventType.SUBSCRIPTION_SUSPENDED,
                subscription_id,
                f"subscription.suspended:{subscription_id}:invoice:{invoice.pk}",
            )


def due_payment_retry_ids(*, as_of: datetime | None = None) -> list[int]:
    return list(
        Invoice.objects.filter(
            status=InvoiceStatus.PAST_DUE, next_payment_attempt_at__lte=resolve_now(as_of)
        ).values_list("pk", flat=True)
    )
