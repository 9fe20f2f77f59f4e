"""Idempotency records of the API: kept long enough to answer a retry, then purged."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from billing.models import (
    IdempotencyRecord,
)

IDEMPOTENCY_RETENTION = timedelta(hours=48)  # API.md promises at least 24 hours


def purge_idempotency_records(*, now: datetime | None = None) -> int:
    cutoff = (now or timezone.now()) - IDEMPOTENCY_RETENTION
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
