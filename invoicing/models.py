"""Invoicing: period close, invoices, credit notes and payments.

Design overview
===============
Closing a period (``invoicing.services.close_period``) turns one billing period of one
subscription into a *draft* invoice, exactly once: the unique (subscription, period_start)
constraint decides, whoever closes it and however often. In the same database transaction
the subscription rolls to its next period (a trial ends, a scheduled plan change takes
effect, a cancellation at period end ends it). Closing reads the usage counters
(``metering.PeriodUsage``), never raw events.

A draft may still change: events that arrive late (timestamped inside the closed period)
are rated into that period's counters while the grace period runs, and the draft's lines
are computed again from the counters when it is finalized. Finalizing allocates a gapless
number in the invoice's series (in the finalizing transaction: a rollback gives the number
back), freezes the invoice (a trigger refuses changes to a finalized invoice's figures and
lines), posts it to the ledger and closes the period to late events (rating refuses
usage timestamped before ``Subscription.invoiced_through``).

Amounts
    Every line keeps its exact amount (``amount_precise``, 24 places) beside the amount
    presented (``amount``), which is rounded to the currency's minor unit by one function,
    ``invoicing.money.to_minor_unit`` (half-even). Totals add the presented amounts. The
    difference between what the invoice presents and what the ledger recognised exactly is
    posted to the ``@Rounding`` account, never dropped.

Money movement (all through ``ledger.services``; accounts in the invoice's currency)
    rating, in real time    Dr wallet            Cr @Revenue       usage U, exact
    finalize                Dr receivable  T     Cr wallet U       the period's usage moves
                                                 Cr @Revenue F−B+P from the wallet to the
                                                 Cr @TaxPayable X  invoice; fees and tax
                                                 Cr @CommitmentBreakage B
                                                 Dr @CommitmentPrepaid P
                                                 Cr/Dr @Rounding   are recognised once;
                                                                   T = the invoice total;
                                                                   B = the commitment no
                                                                   usage drew (breakage);
                                                                   P = a commitment paid
                                                                   in advance, released
    commitment in advance   Dr receivable C      Cr @CommitmentPrepaid C  (a liability until
                            (its own invoice, when the period opens)   the period's close)
    finalize, balance used  Dr wallet            Cr receivable     the wallet's own funds
                                                                   (prepaid money, credit
                                                                   left on a postpaid
                                                                   wallet) pay what they can
    payment                 Dr @PaymentClearing  Cr receivable     Stripe or offline
    credit note             Dr @Revenue, Dr @TaxPayable
                                                 Cr receivable     what is still owed first,
                                                 Cr wallet         the rest to the balance
    void                    the finalize posting undone on the revenue side: Dr @Revenue
                            U + F, Dr @TaxPayable, ±@Rounding; Cr receivable (what is
                            owed) and Cr wallet (the balance it had used)

    Usage is recognised as revenue when it is rated, so finalizing never counts it again:
    it only moves what the customer owes for it from the wallet to the receivable. A
    receivable is the customer's owned, debit-normal ledger account per currency.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pghistory
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from billing.models import RoundingRule
from billing.models.audit import previous_version_index

ZERO = Decimal(0)


def money_field(**kwargs) -> models.DecimalField:
    """A presented or ledger amount: NUMERIC(38, 12), as the ledger keeps it."""
    return models.DecimalField(max_digits=38, decimal_places=12, default=ZERO, **kwargs)


class TaxRate(models.Model):
    """A tax rate finance staff configure. The rate for a customer is, most specific first:
    one of the customer's own, one for its country and state, one for its country, one for
    every region (country empty). None found: no tax."""

    name = models.CharField(max_length=100, help_text='Shown on the invoice, e.g. "VAT 20 %".')
    percentage = models.DecimalField(max_digits=9, decimal_places=4)
    country = models.CharField(
        max_length=2, blank=True, default="", help_text="ISO 3166-1; empty = every country."
    )
    state = models.CharField(max_length=100, blank=True, default="")
    customer = models.ForeignKey(
        "billing.Customer",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="tax_rates",
        help_text="This customer only (overrides the regional rates).",
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(percentage__gte=0, percentage__lt=100), name="invoicing_tax_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.percentage.normalize():f} %)"


class NumberSeries(models.Model):
    """A gapless sequence of document numbers (``INV-000042``), allocated under a row lock
    in the transaction that finalizes the document."""

    code = models.SlugField(max_length=30, unique=True)
    prefix = models.CharField(max_length=30)
    next_number = models.PositiveBigIntegerField(default=1)

    class Meta:
        verbose_name_plural = "number series"

    def __str__(self) -> str:
        return f"{self.prefix}… (next {self.next_number})"


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    OPEN = "open", "Open (finalized, awaiting payment)"
    PAST_DUE = "past_due", "Past due (payment failed)"
    PAID = "paid", "Paid"
    VOID = "void", "Void"


FINAL_STATUSES = (InvoiceStatus.OPEN, InvoiceStatus.PAST_DUE, InvoiceStatus.PAID)


class InvoiceKind(models.TextChoices):
    """A period's invoice, made at its close; or a prepaid commitment's, made when a period
    opens on a plan whose commitment is billed in advance (``invoicing.commitments``)."""

    PERIOD = "period", "The period's invoice (at its close)"
    COMMITMENT = "commitment", "A prepaid commitment invoiced in advance (when the period opens)"


class Invoice(models.Model):
    customer = models.ForeignKey("billing.Customer", on_delete=models.PROTECT, related_name="+")
    subscription = models.ForeignKey(
        "billing.Subscription", on_delete=models.PROTECT, related_name="invoices"
    )
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    kind = models.CharField(
        max_length=12,
        choices=InvoiceKind.choices,
        default=InvoiceKind.PERIOD,
        db_default=InvoiceKind.PERIOD,
    )
    currency = models.CharField(max_length=16)
    status = models.CharField(
        max_length=10, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT
    )
    series = models.ForeignKey(NumberSeries, on_delete=models.PROTECT, null=True, blank=True)
    number = models.PositiveBigIntegerField(null=True, blank=True)
    display_number = models.CharField(max_length=60, blank=True, default="")
    # figures, frozen at finalization (a trigger refuses later changes)
    subtotal = money_field(help_text="Sum of the presented line amounts.")
    tax_name = models.CharField(max_length=100, blank=True, default="")
    tax_percentage = models.DecimalField(max_digits=9, decimal_places=4, default=ZERO)
    tax = money_field()
    total = money_field()
    balance_applied = money_field(help_text="Paid at finalization from the wallet's own funds.")
    amount_due = money_field(help_text="Total less the balance applied.")
    usage_charged = money_field(help_text="The period's usage as the ledger recorded it, exact.")
    fees_precise = money_field(help_text="Base fees, exact (12 places).")
    rounding = money_field(help_text="Total − usage − fees − tax: posted to @Rounding.")
    rounding_rule = models.CharField(
        max_length=10,
        choices=RoundingRule.choices,
        default=RoundingRule.HALF_EVEN,
        help_text="How its lines and tax were rounded (its plan's rule, else its currency's, "
        "else half even); its credit notes too.",
    )
    commitment_breakage = money_field(
        help_text="The part of the period's prepaid commitment no usage drew (exact): "
        "recognised on @CommitmentBreakage, the rest of the fees on @Revenue."
    )
    commitment_deferred = money_field(
        db_default=ZERO,
        help_text="A commitment invoiced in advance, held on @CommitmentPrepaid until its "
        "period closes: + on the commitment invoice (deferred), − on the period's invoice "
        "(released: drawn by usage or broken). Not @Revenue."
    )
    # what happens after finalization
    amount_paid = money_field()
    amount_credited = money_field(help_text="Credit notes, the part set against what is owed.")
    created_at = models.DateTimeField(db_default=Now())
    grace_ends_at = models.DateTimeField(help_text="Late usage amends the draft until then.")
    finalized_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    void_reason = models.TextField(blank=True, default="")
    ledger_transaction = models.ForeignKey(
        "ledger.Transaction", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    pdf = models.FileField(upload_to="invoices/", blank=True, default="")
    # What the stored PDF shows ("open:12.34", "paid", "void"): a PDF rendered before a
    # payment, a credit note or a void is rendered again (under a new name; the first one,
    # the document e-mailed, is kept), so no PDF says "Amount due" on a settled invoice.
    pdf_state = models.CharField(max_length=80, blank=True, default="")
    emailed_at = models.DateTimeField(null=True, blank=True)
    payment_attempts = models.PositiveIntegerField(default=0)
    next_payment_attempt_at = models.DateTimeField(null=True, blank=True)
    last_payment_error = models.TextField(blank=True, default="")
    stripe_payment_intent_id = models.CharField(max_length=100, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    # Not a column: set on the invoice ``invoicing.services.finalize_invoice`` returns, True
    # when it was final already (a second call finalizes nothing).
    replayed: bool

    class Meta:
        ordering = ["-period_start", "-id"]
        constraints = [
            # Exactly one invoice per subscription and period: closing twice, or two workers
            # closing at once, cannot make a second one.
            models.UniqueConstraint(
                fields=["subscription", "period_start"],
                condition=Q(kind="period"),
                name="invoicing_one_per_period",
            ),
            # One commitment invoiced in advance per period opened.
            models.UniqueConstraint(
                fields=["subscription", "period_start"],
                condition=Q(kind="commitment"),
                name="invoicing_one_commitment_per_period",
            ),
            models.UniqueConstraint(fields=["series", "number"], name="invoicing_number_unique"),
            models.CheckConstraint(
                condition=Q(status="draft", number__isnull=True, finalized_at__isnull=True)
                | (~Q(status="draft") & Q(number__isnull=False, finalized_at__isnull=False)),
                name="invoicing_number_when_final",
            ),
            models.CheckConstraint(
                condition=Q(period_end__gt=models.F("period_start")),
                name="invoicing_period_order",
            ),
        ]
        indexes = [
            models.Index(fields=["customer", "-period_start"], name="invoicing_by_customer"),
            # the admin's and the API's lists, newest first (Meta.ordering), a page at a time
            models.Index(fields=["-period_start", "-id"], name="invoicing_newest"),
            models.Index(
                fields=["grace_ends_at"],
                condition=Q(status="draft"),
                name="invoicing_drafts_by_grace",
            ),
        ]

    def __str__(self) -> str:
        return self.display_number or f"Draft {self.pk}"

    @property
    def amount_remaining(self) -> Decimal:
        """What the customer still owes on it."""
        if self.status in (InvoiceStatus.DRAFT, InvoiceStatus.VOID):
            return ZERO
        return self.amount_due - self.amount_paid - self.amount_credited


class LineKind(models.TextChoices):
    BASE_FEE = "base_fee", "Base fee"
    INCLUDED = "included", "Included usage"
    USAGE = "usage", "Usage"
    CREDITS = "credits", "Credits used"
    MINIMUM = "minimum", "Minimum shortfall"
    COMMITMENT = "commitment", "Prepaid commitment and its draw-down"


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=10, choices=LineKind.choices)
    description = models.CharField(max_length=300)
    meter = models.ForeignKey(
        "billing.Meter", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    plan = models.ForeignKey(
        "billing.Plan", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    tier = models.PositiveSmallIntegerField(null=True, blank=True, help_text="1-based")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    quantity = models.DecimalField(max_digits=38, decimal_places=12, default=ZERO)
    unit_price = models.DecimalField(max_digits=30, decimal_places=12, null=True, blank=True)
    flat_fee = models.DecimalField(max_digits=30, decimal_places=12, default=ZERO)
    amount_precise = models.DecimalField(max_digits=60, decimal_places=24, default=ZERO)
    amount = money_field(help_text="Presented: rounded to the currency's minor unit.")
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "position"], name="invoicing_line_position")
        ]

    def __str__(self) -> str:
        return self.description


class CreditNote(models.Model):
    """A credit against a finalized invoice: full or partial, posted to the ledger."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    reference = models.CharField(max_length=255, unique=True, help_text="Idempotency key.")
    series = models.ForeignKey(NumberSeries, on_delete=models.PROTECT)
    number = models.PositiveBigIntegerField()
    display_number = models.CharField(max_length=60)
    reason = models.TextField()
    amount = money_field(help_text="Net of tax.")
    tax = money_field()
    total = money_field()
    against_receivable = money_field(help_text="Set against what the invoice still owed.")
    to_balance = money_field(help_text="The rest, credited to the customer's wallet.")
    commitment_breakage = money_field(
        help_text="The part of ``amount`` taken back from @CommitmentBreakage (breakage "
        "first: the invoice's breakage not yet credited); the rest from @Revenue."
    )
    ledger_transaction = models.ForeignKey(
        "ledger.Transaction", on_delete=models.PROTECT, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["series", "number"], name="invoicing_cn_number"),
            models.CheckConstraint(condition=Q(total__gt=0), name="invoicing_cn_positive"),
        ]

    def __str__(self) -> str:
        return self.display_number


class PaymentProvider(models.TextChoices):
    STRIPE = "stripe", "Stripe"
    OFFLINE = "offline", "Out of band (recorded by finance staff, or PAYMENTS_OFFLINE)"


class Payment(models.Model):
    """Money received for an invoice. Unique on the provider's id, so a webhook delivered
    twice (or a retried call) records it once."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="payments")
    provider = models.CharField(max_length=10, choices=PaymentProvider.choices)
    provider_payment_id = models.CharField(max_length=100)
    amount = money_field()
    currency = models.CharField(max_length=16)
    amount_refunded = money_field()
    to_balance = money_field(
        help_text="Overpayment: the part of the amount beyond what the invoice owed, credited "
        "to the customer's wallet."
    )
    ledger_transaction = models.ForeignKey(
        "ledger.Transaction", on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(db_default=Now())
    metadata = models.JSONField(default=dict, blank=True)
    # Not a column: set on the payment ``invoicing.services.record_payment`` returns, True
    # when this provider payment was recorded already (a webhook delivered twice).
    replayed: bool

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "provider_payment_id"], name="invoicing_payment_once"
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="invoicing_payment_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.provider_payment_id}"


class StripeEventStatus(models.TextChoices):
    PENDING = "pending", "Pending (to be handled, or retried)"
    PROCESSED = "processed", "Processed"
    NEEDS_REVIEW = "needs_review", "Needs review (amount or currency differed)"
    FAILED = "failed", "Failed (gave up after the last attempt)"


class StripeEvent(models.Model):
    """A Stripe webhook event, stored as received (its signature verified) before it is
    handled: unique on Stripe's event id, so a redelivery is recognised, and kept, so that
    an event whose handling failed is handled again.

    A failed attempt schedules the next one with a growing delay (``next_attempt_at``); after
    ``STRIPE_EVENT_MAX_ATTEMPTS`` the event is ``failed`` and waits for finance (the admin's
    *Retry* action). An event handled but whose amount or currency differed from what we
    asked Stripe for is ``needs_review``: what Stripe says was paid is booked, and the
    difference is described in ``outcome``."""

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    received_at = models.DateTimeField(db_default=Now())
    processed_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(
        max_length=12, choices=StripeEventStatus.choices, default=StripeEventStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    outcome = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="invoicing_stripe_due",
            )
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class CreditRefundMethod(models.TextChoices):
    STRIPE = "stripe", "Back to the card (Stripe refund)"
    OFFLINE = "offline", "Paid back out of band (offline payments)"
    CREDIT_NOTE = "credit_note", "Credited to the customer's balance (credit note)"


class CreditRefundStatus(models.TextChoices):
    PENDING = "pending", "Credits taken back; the refund not confirmed yet"
    SUCCEEDED = "succeeded", "Refunded"
    FAILED = "failed", "The refund failed (retry it)"


class CreditRefund(models.Model):
    """The refund of what is left of a purchased credit grant (``invoicing.credit_refunds``):
    one per grant (a retry finds it), the credits taken back from the wallet under the
    customer's usage lock, then the money returned — by a Stripe refund of the purchase's
    payment, recorded as paid back out of band, or credited to the customer's balance."""

    grant = models.OneToOneField(
        "billing.CreditGrant", on_delete=models.PROTECT, related_name="refund"
    )
    customer = models.ForeignKey("billing.Customer", on_delete=models.PROTECT, related_name="+")
    method = models.CharField(max_length=12, choices=CreditRefundMethod.choices)
    status = models.CharField(max_length=10, choices=CreditRefundStatus.choices)
    credits = models.DecimalField(max_digits=30, decimal_places=12)
    amount = money_field(help_text="The money refunded, in whole minor units.")
    currency = models.CharField(max_length=16)
    reason = models.TextField(blank=True, default="")
    stripe_payment_intent_id = models.CharField(max_length=100, blank=True, default="")
    stripe_refund_id = models.CharField(max_length=100, blank=True, default="")
    error = models.TextField(blank=True, default="")
    credits_transaction = models.ForeignKey(
        "ledger.Transaction", on_delete=models.PROTECT, related_name="+"
    )
    money_transaction = models.ForeignKey(
        "ledger.Transaction", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(db_default=Now())
    refunded_at = models.DateTimeField(null=True, blank=True)
    # Not a column: True on the refund a retry returns.
    replayed: bool = False

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(credits__gt=0, amount__gt=0), name="invoicing_credit_refund_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"refund of grant {self.grant_id}: {self.amount} {self.currency} ({self.status})"


class ReconciliationStatus(models.TextChoices):
    PASSED = "passed", "Passed: the books agree"
    FAILED = "failed", "Failed: differences found"


class ReconciliationRun(models.Model):
    """One run of the reconciliation (``invoicing.reconciliation``) over a period
    [``period_start``, ``period_end``) and a scope (one currency, or every currency: ``""``).

    Unique on (period, scope): running it again for the same day re-checks and replaces the
    results of that row (``runs`` counts how often), so history is one row per period and the
    daily task may run twice. ``checks`` holds one object per check: its name, whether it
    passed, per-currency totals (expected and actual, as decimal strings) and its differences
    (capped at ``invoicing.reconciliation.DIFFERENCES_CAP`` per check; ``difference_count``
    is the uncapped number)."""

    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    scope = models.CharField(
        max_length=16, blank=True, default="", help_text="A currency, or empty for every one."
    )
    status = models.CharField(max_length=8, choices=ReconciliationStatus.choices)
    checks = models.JSONField(default=list)
    difference_count = models.PositiveIntegerField(default=0)
    runs = models.PositiveIntegerField(default=1)
    triggered_by = models.CharField(max_length=150, blank=True, default="")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    alerted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period_start", "scope"]
        constraints = [
            models.UniqueConstraint(
                fields=["period_start", "period_end", "scope"], name="invoicing_recon_once"
            ),
            models.CheckConstraint(
                condition=Q(period_end__gt=models.F("period_start")),
                name="invoicing_recon_period_order",
            ),
        ]

    def __str__(self) -> str:
        first = self.period_start.date()
        last = (self.period_end - timedelta(microseconds=1)).date()  # the end is exclusive
        span = f"{first}" if first == last else f"{first} – {last}"
        return f"Reconciliation {span}, {self.scope or 'all currencies'}: {self.status}"


# The audit trail (billing.models.audit): an invoice's status changes (finalized, paid,
# voided, with the void reason) and every credit note, through pghistory triggers. Only a
# change of status records an event: amending a draft's lines and totals (late usage) does
# not, and the trigger's WHEN clause costs nothing else.
pghistory.track(
    pghistory.UpdateEvent("status_change", condition=pghistory.AnyChange("status")),
    fields=["customer", "status", "display_number", "total", "voided_at", "void_reason"],
    model_name="InvoiceStatusEvent",
    # newest first, a page at a time (the audit list: billing.admin.audit_page)
    meta={
        "indexes": [
            models.Index(fields=["pgh_created_at", "pgh_id"], name="audit_invoice_at"),
            previous_version_index("invoice"),  # a page's rows' previous versions
        ]
    },
)(Invoice)
pghistory.track(
    pghistory.InsertEvent(),
    model_name="CreditNoteEvent",
    meta={
        "indexes": [
            models.Index(fields=["pgh_created_at", "pgh_id"], name="audit_creditnote_at"),
            previous_version_index("creditnote"),
        ]
    },
)(CreditNote)


class FinanceSnapshot(models.Model):
    """The finance home's figures as last computed (``invoicing.finance_snapshot``): one row
    per ``key`` (the home is ``"home"``), replaced in place by each refresh, so the page
    reads one small row instead of aggregating the counters. The payload is JSON whose
    amounts are Decimal strings (exact; never floats)."""

    key = models.CharField(max_length=32, unique=True)
    computed_at = models.DateTimeField(help_text="The moment the figures are as of.")
    duration_ms = models.PositiveIntegerField(default=0, help_text="How long computing took.")
    payload = models.JSONField()

    def __str__(self) -> str:
        return f"finance snapshot {self.key} as of {self.computed_at:%Y-%m-%d %H:%M} UTC"
