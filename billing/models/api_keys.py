"""API keys and the first responses to Idempotency-Keys."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models.functions import Now


class APIKey(models.Model):
    """A product backend's key. The secret is shown once; only its SHA-256 is stored (the
    secret is 256 random bits, so a fast hash is safe and keeps lookups O(1))."""

    SCOPES = ("read", "write", "ingest")

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=20, help_text="The start of the secret, to recognise it.")
    secret_hash = models.CharField(max_length=64, unique=True)
    scopes = ArrayField(models.CharField(max_length=10), default=list)
    rate_limit_per_minute = models.PositiveIntegerField(default=6000)
    ingest_async = models.BooleanField(
        default=False,
        help_text="Answer POST /events and /events/batch with 202 once the events are stored, "
        "and rate them a moment later, as if every request sent Prefer: respond-async.",
    )
    created_at = models.DateTimeField(db_default=Now())
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class IdempotencyRecord(models.Model):
    """The first response to a POST with an Idempotency-Key, replayed to its retries."""

    api_key = models.ForeignKey(APIKey, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField(db_default=Now(), db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "key"], name="billing_idempotency_key"),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.key})"
