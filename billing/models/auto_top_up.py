"""Auto top-up: a prepaid wallet refilled by charging the customer's saved card when its
available balance falls below a threshold (``billing.services.auto_top_up`` decides and
records; ``invoicing.auto_top_up`` charges, because Stripe lives there).

``AutoTopUp`` is the wallet's settings and running state; ``AutoTopUpAttempt`` one charge
tried. At most one attempt per wallet is in flight (``pending`` or ``processing``): a
partial unique index says so, whatever the number of beat runs racing. An attempt's
``idempotency_key`` is the key its Stripe request carries, so a retried task or a second
worker reaches Stripe as one request and never charges twice; its ledger posting has a
reference derived from its id, so the synchronous answer and the webhook credit it once.

Amounts: ``threshold`` and ``target`` are in the wallet's own unit (money for a money
wallet, credits for the ``CREDITS`` wallet); ``monthly_cap`` and an attempt's ``amount``
are money, in ``charge_currency`` (the wallet's currency, or the customer's for credits,
priced at ``CREDIT_PRICE``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now

from billing.models.common import price_field
from billing.models.customers import Customer, Wallet

DEFAULT_COOL_OFF_SECONDS = 600
DEFAULT_MAX_FAILURES = 3


class AutoTopUp(models.Model):
    """A wallet's auto top-up settings (written only by ``set_auto_top_up``) and its running
    state (failures in a row, the last attempt, why it was turned off)."""

    wallet = models.OneToOneField(Wallet, on_delete=models.PROTECT, related_name="auto_top_up")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    enabled = models.BooleanField(default=False)
    threshold = price_field(help_text="Refill when the available balance falls below this.")
    target = price_field(help_text="Refill up to this available balance.")
    monthly_cap = price_field(
        help_text="At most this much money charged per calendar month (UTC), in the charge "
        "currency."
    )
    cool_off_seconds = models.PositiveIntegerField(
        default=DEFAULT_COOL_OFF_SECONDS, help_text="At least this long between two attempts."
    )
    max_failures = models.PositiveSmallIntegerField(
        default=DEFAULT_MAX_FAILURES, help_text="Turned off after this many failures in a row."
    )
    consecutive_failures = models.PositiveSmallIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.TextField(blank=True, default="")
    disabled_at = models.DateTimeField(null=True, blank=True)
    # Why the last due check charged nothing although the balance was low (the cap reached).
    skipped_reason = models.TextField(blank=True, default="")
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "auto top-up"
        constraints = [
            models.CheckConstraint(
                condition=Q(threshold__gte=0), name="billing_auto_top_up_threshold_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(target__gt=F("threshold")),
                name="billing_auto_top_up_target_above_threshold",
            ),
            models.CheckConstraint(
                condition=Q(monthly_cap__gt=0), name="billing_auto_top_up_cap_positive"
            ),
            models.CheckConstraint(
                condition=Q(max_failures__gte=1), name="billing_auto_top_up_max_failures_positive"
            ),
        ]
        indexes = [
            models.Index(
                fields=["wallet"], condition=Q(enabled=True), name="billing_auto_top_up_enabled"
            )
        ]

    def __str__(self) -> str:
        return f"auto top-up of {self.wallet}"


class AttemptStatus(models.TextChoices):
    PENDING = "pending", "Pending (not sent yet)"
    PROCESSING = "processing", "Processing (sent to the payment provider)"
    SUCCEEDED = "succeeded", "Succeeded (wallet credited)"
    FAILED = "failed", "Failed"


IN_FLIGHT_STATUSES = (AttemptStatus.PENDING.value, AttemptStatus.PROCESSING.value)


class AutoTopUpAttempt(models.Model):
    """One charge tried for an auto top-up. ``amount`` (money, ``charge_currency``) is
    charged; ``credit_amount`` (the wallet's unit) is credited on success, once."""

    auto_top_up = models.ForeignKey(AutoTopUp, on_delete=models.PROTECT, related_name="attempts")
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="+")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(
        max_length=12, choices=AttemptStatus.choices, default=AttemptStatus.PENDING
    )
    amount = price_field(help_text="Money charged.")
    charge_currency = models.CharField(max_length=16)
    credit_amount = price_field(help_text="Credited to the wallet, in its own unit.")
    wallet_currency = models.CharField(max_length=16)
    balance_before = price_field(help_text="The available balance that triggered it.")
    offline = models.BooleanField(default=False, help_text="Offline mode: no money moved.")
    idempotency_key = models.CharField(max_length=100, unique=True)
    payment_intent_id = models.CharField(max_length=100, null=True, blank=True, unique=True)
    failure_code = models.CharField(max_length=50, blank=True, default="")
    failure_message = models.TextField(blank=True, default="")
    ledger_transaction = models.OneToOneField(
        "ledger.Transaction",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="auto_top_up_attempt",
    )
    created_at = models.DateTimeField(db_default=Now())
    sent_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # At most one attempt in flight per wallet: the database decides, so two beat
            # runs (or a beat run and a usage trigger) never start two charges.
            models.UniqueConstraint(
                fields=["wallet"],
                condition=Q(status__in=["pending", "processing"]),
                name="billing_auto_top_up_one_in_flight",
            ),
            models.CheckConstraint(
                condition=Q(amount__gt=0) & Q(credit_amount__gt=0),
                name="billing_auto_top_up_attempt_positive",
            ),
        ]
        indexes = [
            models.Index(fields=["auto_top_up", "created_at"], name="billing_attempt_month"),
            models.Index(
                fields=["created_at"],
                condition=Q(status__in=["pending", "processing"]),
                name="billing_attempt_in_flight",
            ),
        ]

    def __str__(self) -> str:
        return f"auto top-up attempt {self.pk} ({self.status})"
