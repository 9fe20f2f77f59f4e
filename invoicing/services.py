"""Writes of invoicing. Money moves only through ``ledger.services``; the money movement map
is in ``invoicing.models``.

    close_period, close_due_periods        a period becomes a draft, exactly once
    finalize_invoice, finalize_due_invoices a draft becomes a numbered, posted invoice
    void_invoice, create_credit_note       corrections, through the ledger
    record_payment                         money received (Stripe or offline)

Every function is one database transaction and safe to call again: a second close of the
same period finds the invoice the first made (the unique constraint decides between two
racing closers), a second finalize finds it final, a credit note or payment is unique on
its reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from billing import services as billing_services
from billing.models import Customer, Plan, Subscription, SubscriptionPhase, SubscriptionStatus
from billing.periods import period_containing, utc
from invoicing import errors
from invoicing.models import (
    FINAL_STATUSES,
    CreditNote,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    NumberSeries,
    Payment,
)
from invoicing.money import floor_to_minor_unit, to_minor_unit
from invoicing.selectors import HUNDRED, LineDraft, compute_invoice
from ledger import services as ledger
from ledger.models import Account, NormalBalance
from ledger.services import Leg, TransactionSpec
from metering import inbox

log = logging.getLogger(__name__)
ZERO = Decimal(0)
REVENUE = "@Revenue"
TAX_PAYABLE = "@TaxPayable"
ROUNDING = "@Rounding"
CLEARING = {"stripe": "@StripeClearing", "offline": "@OfflinePayments"}
INVOICE_SERIES = "invoices"
CREDIT_NOTE_SERIES = "credit-notes"
LIVE = (SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)


def _now(now: datetime | None) -> datetime:
    return utc(now or timezone.now())


# --- ledger accounts -----------------------------------------------------------------------


def receivable_account(*, customer: Customer, currency: str) -> Account:
    """What the customer owes on finalized invoices: its own debit-normal account (it may
    go below zero: an overpayment is owed back)."""
    return billing_services.customer_account(
        customer=customer,
        code=f"receivable:{customer.pk}:{currency}",
        currency=currency,
        name="invoices receivable",
        normal_balance=NormalBalance.DEBIT,
        allow_negative=True,
    )


def system_account_id(code: str, currency: str, normal: str = NormalBalance.CREDIT) -> int:
    """The id of a system (hot) account of invoicing, created on first use."""
    return ledger.ensure_system_account(code=code, currency=currency, normal_balance=normal).pk


def _legs(*pairs: tuple[int, Decimal]) -> list[Leg]:
    """Signed legs (positive = debit), zero legs left out."""
    return [Leg(account_id, amount) for account_id, amount in pairs if amount]


def _recognised(invoice: Invoice, *, sign: int, usage: bool = False) -> list[tuple[int, Decimal]]:
    """The system-account legs of what an invoice recognises: fees (and, with ``usage``, the
    usage rated in real time) on @Revenue, tax on @TaxPayable, rounding on @Rounding;
    ``sign`` -1 credits them (finalize), +1 debits them (void)."""
    currency = invoice.currency
    revenue = invoice.fees_precise + (invoice.usage_charged if usage else ZERO)
    figures = ((REVENUE, revenue), (TAX_PAYABLE, invoice.tax), (ROUNDING, invoice.rounding))
    return [
        (system_account_id(code, currency), sign * amount) for code, amount in figures if amount
    ]


# --- numbers ---------------------------------------------------------------------------------


def _allocate_number(series_code: str, prefix: str) -> tuple[NumberSeries, int, str]:
    """The next number of a series, under its row lock until the caller's transaction ends:
    a rolled-back finalization gives its number back, so numbers have no gaps."""
    NumberSeries.objects.get_or_create(code=series_code, defaults={"prefix": prefix})
    series = NumberSeries.objects.select_for_update().get(code=series_code)
    number = series.next_number
    NumberSeries.objects.filter(pk=series.pk).update(next_number=F("next_number") + 1)
    return series, number, f"{series.prefix}{number:06d}"


# --- close -----------------------------------------------------------------------------------


def _is_due(subscription: Subscription, as_of: datetime) -> bool:
    if subscription.status in LIVE:
        return subscription.current_period_end <= as_of
    # canceled now: its last, partial period is invoiced once it has ended
    return (
        subscription.status == SubscriptionStatus.CANCELED
        and subscription.ended_at is not None
        and subscription.ended_at <= as_of
        and not Invoice.objects.filter(
            subscription=subscription, period_start=subscription.current_period_start
        ).exists()
    )


def _write_lines(invoice: Invoice, lines: list[LineDraft]) -> None:
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            position=position,
            kind=line.kind,
            description=line.description[:300],
            meter_id=line.meter_id,
            plan_id=line.plan_id,
            tier=line.tier,
            starts_at=line.starts_at,
            ends_at=line.ends_at,
            quantity=line.quantity,
            unit_price=line.unit_price,
            flat_fee=line.flat_fee,
            amount_precise=line.amount_precise,
            amount=line.amount,
            metadata=line.metadata,
        )
        for position, line in enumerate(lines, start=1)
    )


def _apply_figures(invoice: Invoice, draft) -> None:
    invoice.subtotal = draft.subtotal
    invoice.tax_name = draft.tax_name
    invoice.tax_percentage = draft.tax_percentage
    invoice.tax = draft.tax
    invoice.total = draft.total
    invoice.usage_charged = draft.usage_charged
    invoice.fees_precise = draft.fees_precise
    invoice.rounding = draft.rounding
    invoice.amount_due = draft.total


def _roll(subscription: Subscription, now: datetime) -> None:
    """Move a subscription past the period just closed: end it (cancel at period end), end
    its trial, apply a scheduled plan change, and start the next period."""
    end = subscription.current_period_end
    fields = ["current_period_start", "current_period_end"]
    if subscription.status == SubscriptionStatus.CANCELED:
        # Canceled now: nothing follows its last period, the one containing the end. A
        # subscription canceled while the close was behind (a back-dated one, or beat late)
        # still has periods up to its end to invoice: roll on to the next of them.
        if subscription.ended_at is not None and subscription.ended_at > end:
            subscription.current_period_start, subscription.current_period_end = period_containing(
                subscription.billing_anchor, subscription.plan.interval, end
            )
            subscription.save(update_fields=fields)
        return
    if subscription.cancel_at_period_end:
        SubscriptionPhase.objects.filter(subscription=subscription, ends_at__isnull=True).update(
            ends_at=end
        )
        subscription.status = SubscriptionStatus.CANCELED
        subscription.canceled_at = subscription.canceled_at or now
        subscription.ended_at = end
        subscription.save(update_fields=["status", "canceled_at", "ended_at"])
        return
    if subscription.status == SubscriptionStatus.TRIALING:
        subscription.status = SubscriptionStatus.ACTIVE
        fields.append("status")
    if subscription.scheduled_plan_id is not None:
        SubscriptionPhase.objects.filter(subscription=subscription, ends_at__isnull=True).update(
            ends_at=end
        )
        SubscriptionPhase.objects.create(
            subscription=subscription, plan_id=subscription.scheduled_plan_id, starts_at=end
        )
        subscription.plan_id = subscription.scheduled_plan_id
        subscription.scheduled_plan_id = None
        fields += ["plan", "scheduled_plan"]
    loaded = subscription.plan if Subscription.plan.is_cached(subscription) else None
    if loaded is not None and loaded.pk == subscription.plan_id:
        interval = loaded.interval  # the plan read with the subscription
    else:
        interval = Plan.objects.values_list("interval", flat=True).get(pk=subscription.plan_id)
    subscription.current_period_start, subscription.current_period_end = period_containing(
        subscription.billing_anchor, interval, end
    )
    subscription.save(update_fields=fields)


@dataclass
class CloseResult:
    invoice: Invoice
    created: bool
    more_due: bool = False  # the next period has ended too (an operator catching up)


@transaction.atomic
def close_period(*, subscription_id: int, as_of: datetime | None = None) -> CloseResult | None:
    """Close the subscription's current period if it has ended by ``as_of``: a draft invoice
    with its lines, and the subscription rolled to its next period, in one transaction.
    None when nothing is due; the existing invoice when the period was closed already."""
    as_of = _now(as_of)
    # The rating lock first (as plan changes take it), then the subscription row; the
    # customer found and its lock taken in one statement.
    if billing_services.lock_subscription_customer(subscription_id) is None:
        raise errors.InvoicingNotFound(f"subscription {subscription_id} does not exist")
    subscription = (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("plan", "customer")
        .get(pk=subscription_id)
    )
    period_start, period_end = subscription.current_period_start, subscription.current_period_end
    existing = Invoice.objects.filter(subscription=subscription, period_start=period_start).first()
    if existing is not None:
        return CloseResult(existing, created=False)
    if not _is_due(subscription, as_of):
        return None
    draft = compute_invoice(
        subscription=subscription, period_start=period_start, period_end=period_end
    )
    invoice = Invoice(
        customer_id=subscription.customer_id,
        subscription=subscription,
        period_start=period_start,
        period_end=period_end,
        currency=draft.currency,
        grace_ends_at=max(period_end, subscription.ended_at or period_end)
        + settings.INVOICE_GRACE_PERIOD,
    )
    _apply_figures(invoice, draft)
    try:
        with transaction.atomic():
            invoice.save()
    except IntegrityError:  # closed by another worker since we looked
        return CloseResult(
            Invoice.objects.get(subscription=subscription, period_start=period_start), False
        )
    _write_lines(invoice, draft.lines)
    _roll(subscription, as_of)
    if subscription.status in LIVE:
        more_due = subscription.current_period_end <= as_of
    else:  # canceled: rolled on (above) while periods up to its end are left to invoice
        more_due = subscription.current_period_start != period_start and _is_due(
            subscription, as_of
        )
    return CloseResult(invoice, created=True, more_due=more_due)


def due_subscription_ids(*, as_of: datetime | None = None, limit: int | None = None) -> list[int]:
    """Subscriptions with a period to close by ``as_of`` (read from an index-friendly query:
    live ones past their period end, canceled ones whose last period has no invoice)."""
    as_of = _now(as_of)
    live = Subscription.objects.filter(status__in=LIVE, current_period_end__lte=as_of)
    ended = Subscription.objects.filter(
        status=SubscriptionStatus.CANCELED, ended_at__lte=as_of
    ).exclude(
        pk__in=Invoice.objects.filter(period_start=F("subscription__current_period_start")).values(
            "subscription_id"
        )
    )
    ids = sorted(set(live.values_list("pk", flat=True)) | set(ended.values_list("pk", flat=True)))
    return ids[:limit] if limit else ids


def close_subscription_periods(*, subscription_id: int, as_of: datetime | None = None) -> int:
    """Close every period of one subscription that has ended by ``as_of`` (an operator
    catching up closes several), each in its own transaction; returns how many were made."""
    made = 0
    for _ in range(1000):  # bounded: a monthly plan 80 years behind
        result = close_period(subscription_id=subscription_id, as_of=as_of)
        if result is None or not result.created:
            break
        made += 1
        if not result.more_due:  # no second transaction just to find nothing due
            break
    return made


def close_due_periods(*, as_of: datetime | None = None) -> int:
    """Close every due period now, in this process (``manage.py close_periods``)."""
    return sum(
        close_subscription_periods(subscription_id=pk, as_of=as_of)
        for pk in due_subscription_ids(as_of=as_of)
    )


# --- finalize --------------------------------------------------------------------------------


def _locked_invoice(invoice_id: int, *, usage_lock: bool = False) -> Invoice:
    row = Invoice.objects.filter(pk=invoice_id).values_list("customer_id", flat=True).first()
    if row is None:
        raise errors.InvoicingNotFound(f"invoice {invoice_id} does not exist")
    # The customer's usage lock before the row (the lock order, docs/architecture.md): no
    # usage is rated into a period being closed, nor against a status being changed.
    if usage_lock:
        billing_services.lock_customer_usage([row])
    return (
        Invoice.objects.select_for_update(of=("self",))
        .select_related("customer", "subscription", "subscription__plan", "subscription__customer")
        .get(pk=invoice_id)
    )


def _base_fee_drafts(invoice: Invoice) -> list[LineDraft]:
    return [
        LineDraft(
            kind=line.kind,
            description=line.description,
            starts_at=line.starts_at,
            ends_at=line.ends_at,
            quantity=line.quantity,
            unit_price=line.unit_price,
            amount_precise=line.amount_precise,
            plan_id=line.plan_id,
        )
        for line in invoice.lines.filter(kind=LineKind.BASE_FEE).order_by("position")
    ]


@transaction.atomic
def refresh_draft(*, invoice_id: int) -> Invoice:
    """Compute a draft's usage lines again from the counters (late usage has arrived)."""
    invoice = _locked_invoice(invoice_id, usage_lock=True)
    if invoice.status != InvoiceStatus.DRAFT:
        raise errors.InvoiceNotDraft(f"invoice {invoice} is {invoice.status}, not a draft")
    _recompute(invoice)
    invoice.save()
    return invoice


def _recompute(invoice: Invoice) -> None:
    draft = compute_invoice(
        subscription=invoice.subscription,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        base_fees=_base_fee_drafts(invoice),
    )
    invoice.lines.all().delete()
    _write_lines(invoice, draft.lines)
    _apply_figures(invoice, draft)


@transaction.atomic
def finalize_invoice(*, invoice_id: int, now: datetime | None = None) -> Invoice:
    """Finalize a draft: its lines computed once more from the counters, a gapless number,
    the ledger posting (see the map in ``invoicing.models``), the wallet's own funds
    applied, and the period closed to late usage. Finalizing a final invoice returns it."""
    now = _now(now)
    invoice = _locked_invoice(invoice_id, usage_lock=True)
    if invoice.status != InvoiceStatus.DRAFT:
        invoice.replayed = True
        return invoice
    # Events of the period accepted asynchronously and not rated yet are rated now, under
    # the customer's rating lock taken above: once final, the period refuses late usage,
    # and these were acknowledged (metering.inbox).
    inbox.rate_pending_of(customer_id=invoice.customer_id, before=invoice.period_end, now=now)
    _recompute(invoice)
    customer, currency = invoice.customer, invoice.currency
    wallet = billing_services.wallet_for(customer=customer, currency=currency)
    receivable = receivable_account(customer=customer, currency=currency)
    locked = ledger.lock_balances(account_ids=[wallet.account_id])[wallet.account_id]
    specs = []
    legs = _legs(
        (receivable.pk, invoice.total),
        (wallet.account_id, -invoice.usage_charged),
        *_recognised(invoice, sign=-1),
    )
    metadata = {"kind": "invoice", "invoice_id": invoice.pk, "customer": customer.external_id}
    series, number, display = _allocate_number(INVOICE_SERIES, settings.INVOICE_NUMBER_PREFIX)
    if legs:
        specs.append(
            TransactionSpec(
                reference=f"invoice:{invoice.pk}:finalize",
                legs=legs,
                description=f"Invoice {display}",
                metadata=metadata,
                effective_at=now,
            )
        )
    # The wallet's own funds (prepaid money, credit on a postpaid wallet) pay what they can,
    # in whole minor units; overdraft room is not money of the customer's.
    funds = locked.available + invoice.usage_charged
    applied = min(invoice.total, max(ZERO, floor_to_minor_unit(funds, currency)))
    if applied > 0:
        specs.append(
            TransactionSpec(
                reference=f"invoice:{invoice.pk}:balance",
                legs=[Leg(wallet.account_id, applied), Leg(receivable.pk, -applied)],
                description=f"Invoice {display}: paid from the balance",
                metadata=metadata,
                effective_at=now,
            )
        )
    posted = ledger.post_transactions(transactions=specs) if specs else []
    invoice.series, invoice.number, invoice.display_number = series, number, display
    invoice.balance_applied = applied
    invoice.amount_due = invoice.total - applied
    invoice.finalized_at = now
    invoice.due_at = now + timedelta(days=settings.INVOICE_PAYMENT_TERMS_DAYS)
    invoice.ledger_transaction_id = posted[0].pk if posted else None
    if invoice.amount_due == 0:
        invoice.status, invoice.paid_at = InvoiceStatus.PAID, now
    else:
        invoice.status = InvoiceStatus.OPEN
    invoice.save()
    Subscription.objects.filter(pk=invoice.subscription_id).filter(
        Q(invoiced_through__isnull=True) | Q(invoiced_through__lt=invoice.period_end)
    ).update(invoiced_through=invoice.period_end)
    invoice.replayed = False
    # robust: a broker that is down must not turn a committed finalization into an error
    # (the admin's 500); the invoice is kept, and the sweep below queues its follow-up.
    transaction.on_commit(lambda: _after_finalize(invoice.pk), robust=True)
    return invoice


def _after_finalize(invoice_id: int) -> None:
    from invoicing import tasks  # tasks import services

    tasks.invoice_finalized.delay(invoice_id)


# A finalized invoice whose follow-up has not run this long after finalization (no PDF
# stored: the follow-up always stores one) lost its task — the broker was down when the
# finalization committed, or the message was lost — and is queued again by the sweep.
FOLLOW_UP_GRACE = timedelta(minutes=10)


def invoices_without_follow_up(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Finalized invoices (not void) whose after-finalization never ran: no PDF stored
    ``FOLLOW_UP_GRACE`` after their finalization, oldest first."""
    return list(
        Invoice.objects.exclude(status__in=[InvoiceStatus.DRAFT, InvoiceStatus.VOID])
        .filter(pdf="", finalized_at__lte=_now(now) - FOLLOW_UP_GRACE)
        .order_by("finalized_at", "id")
        .values_list("pk", flat=True)[:limit]
    )


def after_finalization(*, invoice_id: int) -> None:
    """What follows a committed finalization, each step idempotent: collecting payment, then
    the PDF and the e-mail to the customer — in that order, so that an invoice charged or
    paid offline at once is sent as paid, not as "Amount due". The PDF and the e-mail
    follow even when collecting raised (the error is raised after them)."""
    from invoicing import emails, payments, pdf

    if not Invoice.objects.filter(pk=invoice_id).exists():
        return  # a task outliving its invoice's database (a test run's): nothing to do
    try:
        payments.collect_payment(invoice_id=invoice_id)
    finally:
        pdf.store_invoice_pdf(invoice_id=invoice_id)
        emails.send_invoice_email(invoice_id=invoice_id)


def due_draft_ids(*, as_of: datetime | None = None) -> list[int]:
    return list(
        Invoice.objects.filter(status=InvoiceStatus.DRAFT, grace_ends_at__lte=_now(as_of))
        .order_by("grace_ends_at", "id")
        .values_list("pk", flat=True)
    )


def finalize_due_invoices(*, as_of: datetime | None = None) -> int:
    """Finalize every draft whose grace period has passed by ``as_of``."""
    ids = due_draft_ids(as_of=as_of)
    for invoice_id in ids:
        finalize_invoice(invoice_id=invoice_id, now=as_of)
    return len(ids)


# --- corrections -----------------------------------------------------------------------------


def _wallet_and_receivable(invoice: Invoice) -> tuple[int, int]:
    wallet = billing_services.wallet_for(customer=invoice.customer, currency=invoice.currency)
    receivable = receivable_account(customer=invoice.customer, currency=invoice.currency)
    return wallet.account_id, receivable.pk


@transaction.atomic
def void_invoice(*, invoice_id: int, reason: str, now: datetime | None = None) -> Invoice:
    """Cancel a finalized invoice nobody has paid: the customer owes nothing for it, revenue,
    tax and rounding recognised at finalization are taken back, and the balance it used is
    returned to the wallet. (An invoice with payments or credit notes takes a credit note.)"""
    now = _now(now)
    invoice = _locked_invoice(invoice_id)
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
    wallet_id, receivable_id = _wallet_and_receivable(invoice)
    legs = _legs(
        *_recognised(invoice, sign=1, usage=True),
        (receivable_id, -invoice.amount_due),
        (wallet_id, -invoice.balance_applied),
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
    now = _now(now)
    existing = CreditNote.objects.filter(reference=reference).first()
    if existing is not None:
        if existing.invoice_id != invoice_id or existing.amount != amount:
            raise errors.ReferenceReused(f"reference {reference!r} made another credit note")
        return existing
    invoice = _locked_invoice(invoice_id)
    if invoice.status not in FINAL_STATUSES:
        raise errors.InvoiceNotFinal(f"invoice {invoice} is {invoice.status}")
    if not reason.strip():
        raise errors.InvoicingValidation("a credit note needs a reason", param="reason")
    currency = invoice.currency
    if amount <= 0 or to_minor_unit(amount, currency) != amount:
        raise errors.InvoicingValidation(
            f"amount must be positive, in whole minor units of {currency}", param="amount"
        )
    credited_net = sum((n.amount for n in invoice.credit_notes.all()), ZERO)
    if amount > invoice.subtotal - credited_net:
        left = to_minor_unit(invoice.subtotal - credited_net, currency)
        raise errors.InvoicingValidation(
            f"at most {left} {currency} is left to credit", param="amount"
        )
    tax = to_minor_unit(amount * invoice.tax_percentage / HUNDRED, currency)
    total = amount + tax
    against = min(total, invoice.amount_remaining)
    to_balance = total - against
    wallet_id, receivable_id = _wallet_and_receivable(invoice)
    series, number, display = _allocate_number(
        CREDIT_NOTE_SERIES, settings.CREDIT_NOTE_NUMBER_PREFIX
    )
    posted = ledger.post_transactions(
        transactions=[
            TransactionSpec(
                reference=f"credit-note:{reference}",
                legs=_legs(
                    (system_account_id(REVENUE, currency), amount),
                    (system_account_id(TAX_PAYABLE, currency), tax),
                    (receivable_id, -against),
                    (wallet_id, -to_balance),
                ),
                description=f"Credit note {display} for invoice {invoice}: {reason.strip()}",
                metadata={"kind": "credit_note", "invoice_id": invoice.pk},
                effective_at=now,
            )
        ]
    )[0]
    note = CreditNote.objects.create(
        invoice=invoice,
        reference=reference,
        series=series,
        number=number,
        display_number=display,
        reason=reason.strip(),
        amount=amount,
        tax=tax,
        total=total,
        against_receivable=against,
        to_balance=to_balance,
        ledger_transaction_id=posted.pk,
        created_by_id=created_by_id,
    )
    invoice.amount_credited += against
    _save_settled(invoice, ["amount_credited"], now)
    return note


# --- payments --------------------------------------------------------------------------------


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
    now = _now(now)
    # The invoice's lock first, then the look for an earlier record: two deliveries of one
    # payment queue on the lock and the second finds the first's payment (a replay), instead
    # of both finding none and racing to the unique reference (an error, a 500). The
    # customer's usage lock comes before it (the lock order): a payment that settles what a
    # suspended subscription owed makes it active again, and rating reads that status.
    invoice = _locked_invoice(invoice_id, usage_lock=True)
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
    wallet_id, receivable_id = _wallet_and_receivable(invoice)
    clearing = system_account_id(CLEARING[provider], currency, NormalBalance.DEBIT)
    posted = ledger.post_transactions(
        transactions=[
            TransactionSpec(
                reference=f"payment:{provider}:{provider_payment_id}",
                legs=_legs((clearing, amount), (receivable_id, -applied), (wallet_id, -to_balance)),
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
    if invoice.amount_remaining <= 0 and invoice.status != InvoiceStatus.PAID:
        invoice.status, invoice.paid_at = InvoiceStatus.PAID, now
        invoice.next_payment_attempt_at = None
        fields = [*fields, "status", "paid_at", "next_payment_attempt_at"]
    invoice.save(update_fields=fields)
    if invoice.status == InvoiceStatus.PAID:
        still_owed = Invoice.objects.filter(
            subscription_id=invoice.subscription_id, status=InvoiceStatus.PAST_DUE
        ).exists()
        if not still_owed:
            Subscription.objects.filter(
                pk=invoice.subscription_id, status=SubscriptionStatus.PAST_DUE
            ).update(status=SubscriptionStatus.ACTIVE)


@transaction.atomic
def record_payment_failure(
    *, invoice_id: int, attempt: int, message: str, now: datetime | None = None
) -> Invoice:
    """Attempt ``attempt`` (1 = the first charge) to collect the invoice failed: it is past
    due and retried on the dunning schedule (``DUNNING_RETRY_DAYS`` after each failure);
    after the last retry the subscription is suspended, canceled or left, as
    ``DUNNING_FINAL_ACTION`` says. The same failure reported twice (the charge's answer and
    its webhook), or an old one arriving late, changes nothing."""
    now = _now(now)
    # The usage lock before the invoice's row, as finalizing takes them: the last failure
    # suspends or cancels the subscription, which takes the usage lock; taken only then,
    # after the row, it deadlocked with a finalization of the same invoice.
    invoice = _locked_invoice(invoice_id, usage_lock=True)
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
    if attempt > len(schedule):
        _dunning_final_action(invoice.subscription_id, now)
    return invoice


def _dunning_final_action(subscription_id: int, now: datetime) -> None:
    action = settings.DUNNING_FINAL_ACTION
    if action == "cancel":
        live = Subscription.objects.filter(pk=subscription_id, status__in=LIVE).exists()
        if live:
            billing_services.cancel_subscription(subscription_id=subscription_id, now=now)
    elif action == "suspend":  # rating refuses its usage until what it owes is paid
        Subscription.objects.filter(pk=subscription_id, status__in=LIVE).update(
            status=SubscriptionStatus.PAST_DUE
        )


def due_payment_retry_ids(*, as_of: datetime | None = None) -> list[int]:
    return list(
        Invoice.objects.filter(
            status=InvoiceStatus.PAST_DUE, next_payment_attempt_at__lte=_now(as_of)
        ).values_list("pk", flat=True)
    )
