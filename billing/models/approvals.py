"""Every staff adjustment is a record; large ones need a second person
(``billing.services.approvals``).

A staff user's manual adjustment — a balance adjustment, an admin top-up or an admin credit
grant funded as an adjustment (``kind``) — whose size reaches
``ADJUSTMENT_APPROVAL_THRESHOLD`` is stored here as a pending request instead of being
posted (a grant's terms and a top-up's description in ``details``). A second, different staff user
approves it (then it posts through ``billing.services.adjust_balance``, once) or rejects it.
The database refuses a decision by the requester and a decided request without its decider;
the ledger transaction's reference is derived from the request, so it can post only once.

One below the threshold posts at once and is recorded here as well, ``applied``: requested
and posted by the same person in one transaction, its ledger transaction linked, no decider
(nobody else decided it; the database still refuses a requester as decider). So the audit
trail, this list and reports see every staff adjustment, top-up and credit grant, not only
the large ones (the ledger transaction's metadata alone is not in the trail)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now

from billing.models.common import exact_money
from billing.models.customers import Customer
from ledger.models import AMOUNT_DIGITS, AMOUNT_PLACES


class ApprovalStatus(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"  # by its requester, before anyone decided
    APPLIED = "applied"  # below the threshold: posted at once by its requester


class ApprovalKind(models.TextChoices):
    ADJUSTMENT = "adjustment", "Adjustment"
    TOP_UP = "top_up", "Top-up"
    CREDIT_GRANT = "credit_grant", "Credit grant"


class AdjustmentRequest(models.Model):
    kind = models.CharField(
        max_length=16, choices=ApprovalKind.choices, default=ApprovalKind.ADJUSTMENT
    )
    details = models.JSONField(
        default=dict,
        blank=True,
        help_text="A credit grant's name, source, priority and expiry; a top-up's description.",
    )
    customer = models.ForeignKey(
        Customer, on_delete=models.PROTECT, related_name="adjustment_requests"
    )
    currency = models.CharField(max_length=16)
    amount = models.DecimalField(
        max_digits=AMOUNT_DIGITS,
        decimal_places=AMOUNT_PLACES,
        help_text="Positive credits the wallet, negative debits it.",
    )
    reason = models.TextField()
    reference = models.CharField(
        max_length=255, unique=True, help_text="The request's idempotency key (the form's)."
    )
    status = models.CharField(
        max_length=10, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField(db_default=Now())
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.TextField(blank=True, default="")
    ledger_transaction = models.OneToOneField(
        "ledger.Transaction",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="adjustment_request",
    )

    class Meta:
        ordering = ["-requested_at", "-pk"]
        permissions = [("approve_adjustmentrequest", "Can approve or reject adjustment requests")]
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="adjustment_request_not_zero"),
            # Four eyes, kept by the database: the requester never decides.
            models.CheckConstraint(
                condition=Q(decided_by__isnull=True) | ~Q(decided_by=F("requested_by")),
                name="adjustment_request_second_person",
            ),
            models.CheckConstraint(
                condition=Q(status=ApprovalStatus.PENDING, decided_by__isnull=True)
                | Q(
                    status=ApprovalStatus.REJECTED,
                    decided_by__isnull=False,
                    decided_at__isnull=False,
                    ledger_transaction__isnull=True,
                )
                | Q(
                    status=ApprovalStatus.WITHDRAWN,
                    decided_by__isnull=True,
                    decided_at__isnull=False,
                    ledger_transaction__isnull=True,
                )
                | Q(
                    status=ApprovalStatus.APPLIED,
                    decided_by__isnull=True,
                    decided_at__isnull=False,
                    ledger_transaction__isnull=False,
                )
                | Q(
                    status=ApprovalStatus.APPROVED,
                    decided_by__isnull=False,
                    decided_at__isnull=False,
                    ledger_transaction__isnull=False,
                ),
                name="adjustment_request_decision",
            ),
        ]
        indexes = [
            models.Index(
                fields=["requested_at"],
                name="adjustment_request_pending",
                condition=Q(status="pending"),
            )
        ]

    def __str__(self) -> str:
        amount = exact_money(self.amount, self.currency)
        return f"{self.get_kind_display().lower()} #{self.pk}: {amount} ({self.status})"
