"""Customers, their portal members and their wallets (one per currency)."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from billing.models.common import price_field
from ledger.models import Account


class BillingMode(models.TextChoices):
    PREPAID = "prepaid", "Prepaid (refuses what it cannot cover)"
    POSTPAID = "postpaid", "Postpaid (overdraft up to the credit limit, invoiced)"


class CollectionMethod(models.TextChoices):
    """How a finalized invoice gets paid (Stripe's ``collection_method``)."""

    CHARGE_AUTOMATICALLY = (
        "charge_automatically",
        "Charge automatically (the payment provider charges the saved card at finalization)",
    )
    SEND_INVOICE = (
        "send_invoice",
        "Send invoice (due days_until_due after finalization; paid by transfer or the portal)",
    )


DEFAULT_DAYS_UNTIL_DUE = 30
MAX_DAYS_UNTIL_DUE = 365


class Customer(models.Model):
    external_id = models.CharField(max_length=200, unique=True)
    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True, default="")
    currency = models.CharField(max_length=16, default="USD")
    billing_mode = models.CharField(
        max_length=10, choices=BillingMode.choices, default=BillingMode.PREPAID
    )
    address_line1 = models.CharField(max_length=200, blank=True, default="")
    address_line2 = models.CharField(max_length=200, blank=True, default="")
    city = models.CharField(max_length=100, blank=True, default="")
    state = models.CharField(max_length=100, blank=True, default="")
    postal_code = models.CharField(max_length=30, blank=True, default="")
    country = models.CharField(max_length=2, blank=True, default="", help_text="ISO 3166-1")
    tax_id = models.CharField(max_length=50, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    # charge_automatically: finalizing starts collection (Stripe's charge, or the demo's
    # offline auto-pay); the invoice is due INVOICE_PAYMENT_TERMS_DAYS later (what a
    # declined charge leaves). send_invoice: nothing is collected automatically; the
    # invoice is due days_until_due after finalization and waits for a recorded transfer
    # or the portal's pay button. days_until_due is set exactly for send_invoice.
    collection_method = models.CharField(
        max_length=20,
        choices=CollectionMethod.choices,
        default=CollectionMethod.CHARGE_AUTOMATICALLY,
        # also the column's default: bulk seeding (bench, the reads-at-scale tests) inserts
        # customers in SQL that names only the columns it sets
        db_default=CollectionMethod.CHARGE_AUTOMATICALLY,
    )
    days_until_due = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Send invoice only: the invoice is due this many days after finalization.",
    )
    stripe_customer_id = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # the admin's list, newest first: read from this index a page at a time, never the
        # whole table sorted (docs/benchmarks.md, Session 11)
        indexes = [models.Index(fields=["-created_at", "-id"], name="billing_customer_newest")]
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    collection_method=CollectionMethod.CHARGE_AUTOMATICALLY,
                    days_until_due__isnull=True,
                )
                | Q(
                    collection_method=CollectionMethod.SEND_INVOICE,
                    days_until_due__gte=0,
                    days_until_due__lte=MAX_DAYS_UNTIL_DUE,
                ),
                name="billing_customer_collection_terms",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.external_id})"

    # The portal's low-balance setting is an alert (billing.models.alerts, the one with
    # source "portal"; migration 0011): read here for convenience (one query each); the
    # portal reads it once through billing.alerts.portal_low_balance.
    @property
    def low_balance_threshold(self) -> Decimal | None:
        setting = self.alerts.filter(source="portal").first()
        return None if setting is None else setting.threshold

    @property
    def low_balance_email(self) -> str:
        setting = self.alerts.filter(source="portal").first()
        return ", ".join(setting.recipients) if setting is not None else ""


class PortalMember(models.Model):
    """A person of the customer's who signs in to the portal. A user belongs to one customer
    and sees only its data; a customer may have several."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="portal_member"
    )
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="members")
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(db_default=Now())

    def __str__(self) -> str:
        return f"{self.user.email} at {self.customer.external_id}"


class Wallet(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="wallets")
    currency = models.CharField(max_length=16)
    account = models.OneToOneField(Account, on_delete=models.PROTECT, related_name="wallet")
    billing_mode = models.CharField(max_length=10, choices=BillingMode.choices)
    credit_limit = price_field(
        null=True, blank=True, help_text="Postpaid: how far below zero; empty = no limit."
    )
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "currency"], name="billing_wallet_currency"
            ),
            models.CheckConstraint(
                condition=Q(billing_mode="postpaid") | Q(credit_limit__isnull=True),
                name="billing_wallet_limit_postpaid_only",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.external_id} {self.currency} wallet"
