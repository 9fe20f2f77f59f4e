"""Credit grants (blocks of a wallet with priority and expiry) and their allocations."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now

from billing.models.common import price_field
from billing.models.customers import Customer, Wallet


class GrantSource(models.TextChoices):
    PURCHASE = "purchase", "Purchase (credit pack or top-up)"
    PROMOTIONAL = "promotional", "Promotional (free)"
    ADJUSTMENT = "adjustment", "Adjustment by finance staff"
    PLAN = "plan", "Plan allowance (recurring)"


class GrantStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    DEPLETED = "depleted", "Used up"
    EXPIRED = "expired", "Expired"
    VOIDED = "voided", "Voided"
    REFUNDED = "refunded", "Refunded"


class CreditGrant(models.Model):
    """A block of a wallet's balance with its own priority and expiry (``billing.credits``).

    Granting posts a ledger transaction that credits the wallet; every debit of the wallet
    is then allocated to its live grants in drain order — lowest ``priority`` first, then
    the soonest expiry, then the oldest — and what no grant covers comes from the wallet's
    ungranted funds last. Each allocation is a ``CreditAllocation`` row and is named in the
    debit's ledger metadata (``grants``). At ``expires_at`` whatever is left is debited from
    the wallet to ``@CreditsExpired``. ``remaining`` only falls, and only under the
    customer's usage lock (the lock rating holds)."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="credit_grants")
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="grants")
    currency = models.CharField(max_length=16)
    name = models.CharField(max_length=200)
    source = models.CharField(max_length=12, choices=GrantSource.choices)
    priority = models.PositiveSmallIntegerField(
        default=50, help_text="Lower is used first (promotional grants default to 10)."
    )
    amount = price_field()
    remaining = price_field()
    status = models.CharField(
        max_length=10, choices=GrantStatus.choices, default=GrantStatus.ACTIVE
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never.")
    reference = models.CharField(max_length=255, unique=True)
    ledger_transaction = models.OneToOneField(
        "ledger.Transaction", on_delete=models.PROTECT, related_name="credit_grant"
    )
    ended_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    # Not a column: set on the grant ``billing.credits.grant_credits`` returns, True when the
    # reference was granted already and this is that first grant (an idempotent retry).
    replayed: bool

    class Meta:
        ordering = ["priority", F("expires_at").asc(nulls_last=True), "id"]
        indexes = [
            models.Index(
                fields=["wallet", "priority", "expires_at", "id"],
                condition=Q(status="active"),
                name="billing_grant_live",
            ),
            models.Index(
                fields=["expires_at"],
                condition=Q(status="active", expires_at__isnull=False),
                name="billing_grant_expiry",
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="billing_grant_amount_positive"),
            models.CheckConstraint(
                condition=Q(remaining__gte=0, remaining__lte=F("amount")),
                name="billing_grant_remaining_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(status="active") | Q(ended_at__isnull=False),
                name="billing_grant_ended_when_not_active",
            ),
        ]

    def __str__(self) -> str:
        left, amount = self.remaining.normalize(), self.amount.normalize()
        return f"{self.name} ({left:f} of {amount:f} {self.currency})"

    @property
    def used(self) -> Decimal:
        return self.amount - self.remaining


class AllocationKind(models.TextChoices):
    USAGE = "usage", "Usage"
    EXPIRY = "expiry", "Expiry"
    VOID = "void", "Voided"
    ADJUSTMENT = "adjustment", "Adjustment"
    INVOICE = "invoice", "Invoice paid from the balance"
    REFUND = "refund", "Refunded"


class CreditAllocation(models.Model):
    """How much of one ledger debit of a wallet one grant paid."""

    grant = models.ForeignKey(CreditGrant, on_delete=models.PROTECT, related_name="allocations")
    ledger_transaction = models.ForeignKey(
        "ledger.Transaction", on_delete=models.PROTECT, related_name="credit_allocations"
    )
    amount = price_field()
    kind = models.CharField(max_length=12, choices=AllocationKind.choices)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["grant", "ledger_transaction"], name="billing_allocation_once"
            ),
            models.CheckConstraint(
                condition=Q(amount__gt=0), name="billing_allocation_amount_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.amount.normalize():f} from grant {self.grant_id}"
