"""Outbound webhooks (``billing.webhooks``): the seller's endpoints, one delivery per
(endpoint, event), and the log of every attempt with the response it got."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from billing.models.outbox import OutboundEvent

ALL_EVENTS = "*"


class EndpointStatus(models.TextChoices):
    ENABLED = "enabled", "Enabled"
    DISABLED = "disabled", "Disabled"


class WebhookEndpoint(models.Model):
    """A URL of the seller's that receives the events it asked for (``enabled_events``: type
    names, or ``["*"]`` for all), signed with its own secret the Standard Webhooks way. The
    secret (``whsec_`` + base64 of 24 random bytes) is generated here, shown once when the
    endpoint is created or its secret rotated, and kept to sign with.

    ``failing_since`` is the first failed attempt since the last success; an endpoint whose
    every attempt has failed for ``WEBHOOK_DISABLE_AFTER`` is disabled
    (``disabled_reason`` says why) until staff enable it again."""

    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=200, blank=True, default="")
    secret = models.CharField(max_length=100, help_text="whsec_…; shown once.")
    enabled_events = models.JSONField(
        default=list, help_text='Event type names, or ["*"] for every type.'
    )
    status = models.CharField(
        max_length=10, choices=EndpointStatus.choices, default=EndpointStatus.ENABLED
    )
    disabled_reason = models.CharField(max_length=300, blank=True, default="")
    disabled_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(
        default=0, help_text="Failed attempts since the last success."
    )
    failing_since = models.DateTimeField(
        null=True, blank=True, help_text="The first failed attempt since the last success."
    )
    secret_rotated_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.url

    def wants(self, event_type: str) -> bool:
        return ALL_EVENTS in self.enabled_events or event_type in self.enabled_events


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RETRYING = "retrying", "Retrying"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


DUE_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)


class WebhookDelivery(models.Model):
    """One event to one endpoint, once (unique): fan-out run twice creates nothing more.
    ``attempts`` counts the attempts made; the next one is due at ``next_attempt_at``. A
    sender claims the delivery by setting ``locked_until`` with a conditional UPDATE, so
    two workers never make the same attempt."""

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event = models.ForeignKey(OutboundEvent, on_delete=models.PROTECT, related_name="deliveries")
    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    manual_resend = models.BooleanField(
        default=False, help_text="The next attempt was asked for by hand (a resend)."
    )
    resends = models.PositiveIntegerField(
        default=0,
        help_text="Resends asked for; one asked for during an attempt survives its record.",
    )
    queued_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a send was last queued (the sweep does not queue it again soon).",
    )
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_response_body = models.TextField(blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    succeeded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "event"], name="billing_webhook_delivery_once"
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=["pending", "retrying"]),
                name="billing_webhook_delivery_due",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} → {self.endpoint_id} ({self.status})"


class WebhookAttempt(models.Model):
    """The log: one row per attempt, with what the endpoint answered (status code and the
    start of the body) or the error (timeout, refused connection)."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveIntegerField(help_text="1 = the first attempt.")
    manual = models.BooleanField(default=False, help_text="A resend asked for by hand.")
    url = models.URLField(max_length=2000)
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    succeeded = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["delivery", "number"], name="billing_webhook_attempt_once"
            ),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}"
