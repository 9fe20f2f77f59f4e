"""Metering: meters, usage events, the model price catalog and rating.

A *meter* says how usage events become a quantity: which events it reads (``event_name``),
how it aggregates them over a period (sum, count, max, unique count, latest), which value
it reads from the event's ``properties`` (``property``, a dotted path such as
``usage.output_tokens``), which events it keeps (``filters``: property path → allowed
values) and which dimensions it splits usage by (``group_by``, e.g. ``["model"]``).

Ingestion and rating arrive with issue 4; they post through ``ledger.services`` only.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now


class Aggregation(models.TextChoices):
    SUM = "sum", "Sum of the property"
    COUNT = "count", "Count of events"
    MAX = "max", "Maximum of the property"
    UNIQUE_COUNT = "unique_count", "Count of distinct property values"
    LATEST = "latest", "Latest value of the property"


class Meter(models.Model):
    code = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200, blank=True, default="")
    event_name = models.CharField(max_length=200, db_index=True)
    aggregation = models.CharField(max_length=20, choices=Aggregation.choices)
    property = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="Dotted path into the event's properties; empty for count.",
    )
    filters = models.JSONField(
        default=dict, blank=True, help_text='Property path → allowed values, e.g. {"tier": ["pro"]}'
    )
    group_by = models.JSONField(
        default=list, blank=True, help_text='Dimensions usage is split by, e.g. ["model"]'
    )
    unit = models.CharField(max_length=30, blank=True, default="", help_text="e.g. tokens")
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(aggregation="count") | ~Q(property=""),
                name="metering_meter_property_required",
            ),
        ]

    def __str__(self) -> str:
        return self.code
