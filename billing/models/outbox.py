"""The outbox of events told to the seller's systems (``billing.outbox``)."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now

from billing.models.customers import Customer


class EventType(models.TextChoices):
    """What the product tells the seller's own systems (outbound webhooks, ``billing.outbox``).
    Names follow Stripe's ``resource.action`` convention."""

    INVOICE_CREATED = "invoice.created", "Invoice created"
    INVOICE_FINALIZED = "invoice.finalized", "Invoice finalized"
    INVOICE_PAID = "invoice.paid", "Invoice paid"
    INVOICE_PAYMENT_FAILED = "invoice.payment_failed", "Invoice payment failed"
    INVOICE_VOIDED = "invoice.voided", "Invoice voided"
    CREDIT_NOTE_CREATED = "credit_note.created", "Credit note created"
    WALLET_LOW_BALANCE = "wallet.low_balance", "Wallet balance low"
    CREDITS_GRANTED = "credits.granted", "Credits granted"
    CREDITS_EXPIRING = "credits.expiring", "Credits expiring soon"
    CREDITS_EXPIRED = "credits.expired", "Credits expired"
    ALERT_TRIGGERED = "alert.triggered", "Alert triggered"
    ALERT_RESOLVED = "alert.resolved", "Alert resolved"
    AUTO_TOP_UP_SUCCEEDED = "auto_top_up.succeeded", "Auto top-up succeeded"
    AUTO_TOP_UP_FAILED = "auto_top_up.failed", "Auto top-up failed"
    SUBSCRIPTION_CREATED = "subscription.created", "Subscription created"
    SUBSCRIPTION_UPDATED = "subscription.updated", "Subscription changed plan"
    SUBSCRIPTION_CANCELED = "subscription.canceled", "Subscription canceled"
    SUBSCRIPTION_SUSPENDED = "subscription.suspended", "Subscription suspended"
    SUBSCRIPTION_REACTIVATED = "subscription.reactivated", "Subscription reactivated"
    USAGE_REFUSED = "usage.refused", "Accepted usage refused by rating"
    RECONCILIATION_FAILED = "reconciliation.failed", "Reconciliation found differences"
    BUDGET_EXCEEDED = "budget.exceeded", "Project budget exceeded"


class OutboundEvent(models.Model):
    """One thing that happened, recorded in the same database transaction as the change it
    reports (a transactional outbox): it is never announced for a change that rolled back
    and never lost for one that committed. Delivery to the seller's endpoints reads from
    here. ``dedupe_key`` makes emitting idempotent: a task run twice records its event
    once."""

    public_id = models.CharField(max_length=40, unique=True)
    type = models.CharField(max_length=40, choices=EventType.choices)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    data = models.JSONField()
    dedupe_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(db_default=Now(), db_index=True)
    # Set once its deliveries exist (``billing.webhooks.fan_out``); the sweep looks for
    # events without it, so an event whose fan-out task was lost is delivered all the same.
    fanned_out_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["customer", "-id"], name="billing_event_customer"),
            models.Index(
                fields=["id"],
                condition=models.Q(fanned_out_at__isnull=True),
                name="billing_event_not_fanned_out",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.public_id}"
