"""Metering: usage events, the model price catalog, rating and the usage counters.

Meters belong to the commercial core (``billing.models.Meter``, beside the plans that price
them); metering reads them. A *meter* says how usage events become a quantity: which
events it reads (``event_name``), how it aggregates them over a period (sum, count, max,
unique count, latest), which value it reads from the event's ``properties`` (``property``,
a dotted path such as ``usage.output_tokens``), which events it keeps (``filters``:
property path → allowed values) and which dimensions it splits usage by (``group_by``,
e.g. ``["model"]``).

An *event* is one usage record sent by a product backend (``POST /api/v1/events``). Events
are append-only and unique per (customer, idempotency key): a retry is acknowledged and never
charged twice, because the database refuses the second row. A customer's accepted events of
one rating pass are posted as one ledger transaction whose legs are the sums of its events
(tokens, and money per currency); each event keeps its own exact amount, cost, tokens and
catalog price version and points at that transaction, and PostgreSQL refuses an event
whose transaction's legs are not the sums of its events (migration 0006).

LLM events may carry the provider's raw ``usage`` object; it is normalised
(``metering.normalize``) into five token kinds, stored in the event's own columns and
readable by meters under the reserved ``llm.`` path: ``llm.input_tokens`` (input neither
read from nor written to a cache), ``llm.cache_read_tokens``, ``llm.cache_write_tokens``
(the three add up to the whole prompt), ``llm.output_tokens`` (all output, reasoning
included) and ``llm.reasoning_tokens`` (the part of the output spent reasoning).

The *model price catalog* (``ModelPrice``) holds the provider's prices per million tokens of
each kind, versioned by ``effective_from``. It is imported from the ``genai-prices`` data
snapshot (``manage.py load_model_prices``) and editable by finance staff.

*Usage counters* are kept in the rating transaction itself:
``PeriodUsage`` — per subscription, meter and billing period: the quantity so far, the exact
amount it is worth under the plan and what has been posted to the ledger (tiers and
allowances are priced from it); ``PeriodDistinctValue`` — for unique_count meters, one row
per distinct value seen in a subscription's period (the counter's quantity is their count);
``DailyUsage`` — per subscription, meter, UTC day and
dimension (e.g. model): quantity, amount and event count, for live usage, ranges and charts;
``ModelUsage`` — per customer, UTC day and model: tokens, amount charged and the provider's
cost, so margins are a sum; ``MarginUsage`` — the same amounts and costs per customer and
month and per day and model, so the finance home's margins read few rows. None is derived
from raw events at read time.

Everything here posts through ``ledger.services`` only.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final, TypedDict

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now


class _Precision(TypedDict):
    """A decimal column's precision, shared by the fields below. (``null`` is written at each
    field itself: django-stubs reads it there to type the field's value as optional.)"""

    max_digits: int
    decimal_places: int


AMOUNT: Final[_Precision] = {"max_digits": 38, "decimal_places": 12}
MTOK: Final[_Precision] = {"max_digits": 32, "decimal_places": 18}


class ModelPrice(models.Model):
    """One version of a model's prices, in USD per million tokens of each kind.

    A kind with no price is priced as its parent kind, as the providers do: cache reads and
    writes at the input price, reasoning at the output price, one-hour cache writes at the
    cache-write price. ``tiers`` holds prices that apply when a request's whole prompt is
    larger than a threshold (Gemini's and Claude's long-context prices):
    ``[{"above_input_tokens": 200000, "input_mtok": "2.5", "output_mtok": "15"}]``.
    """

    provider = models.SlugField(max_length=100)
    model = models.CharField(max_length=200, help_text="The catalog's model id.")
    name = models.CharField(max_length=200, blank=True, default="")
    match = models.JSONField(
        default=dict,
        blank=True,
        help_text="Which model names this row prices, as genai-prices writes it "
        '(e.g. {"starts_with": "gpt-4o"}); empty = the model id exactly.',
    )
    position = models.PositiveIntegerField(
        default=0, help_text="Match order within the provider: lower is tried first."
    )
    effective_from = models.DateTimeField()
    input_mtok = models.DecimalField(**MTOK, null=True, blank=True)
    output_mtok = models.DecimalField(**MTOK, null=True, blank=True)
    cache_read_mtok = models.DecimalField(**MTOK, null=True, blank=True)
    cache_write_mtok = models.DecimalField(**MTOK, null=True, blank=True)
    cache_write_1h_mtok = models.DecimalField(**MTOK, null=True, blank=True)
    reasoning_mtok = models.DecimalField(**MTOK, null=True, blank=True)
    requests_kcount = models.DecimalField(
        **MTOK,
        null=True,
        blank=True,
        help_text="Price per thousand requests, if the provider charges per request.",
    )
    tiers = models.JSONField(default=list, blank=True)
    time_windows = models.JSONField(
        default=list,
        blank=True,
        help_text="Prices that apply at some hours of the UTC day instead of these "
        '(DeepSeek\'s standard hours): [{"start": "00:30:00", "end": "16:30:00", '
        '"input_mtok": "0.27", "output_mtok": "1.1", "tiers": []}].',
    )
    source = models.CharField(
        max_length=40, default="manual", help_text='"genai-prices <version>" or "manual".'
    )
    notes = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["provider", "model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model", "effective_from"], name="metering_price_version"
            ),
        ]
        indexes = [models.Index(fields=["model", "effective_from"])]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model} from {self.effective_from:%Y-%m-%d}"


class Event(models.Model):
    """One usage event, append-only (the database refuses UPDATE and DELETE)."""

    # No index of its own: (customer, timestamp) and the idempotency constraint lead with
    # it (one index less to write per row). customer, subscription, model_price and project
    # have no PostgreSQL foreign key: one statement-level check per insert replaces a
    # per-row RI query for each (same guarantees and SQLSTATE, migration 0015).
    customer = models.ForeignKey(
        "billing.Customer",
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    idempotency_key = models.CharField(max_length=255)
    event_name = models.CharField(max_length=200)
    timestamp = models.DateTimeField()
    properties = models.JSONField(default=dict)
    received_at = models.DateTimeField(db_default=Now())
    subscription = models.ForeignKey(
        "billing.Subscription",
        on_delete=models.PROTECT,
        null=True,
        related_name="+",
        db_constraint=False,
    )
    period_start = models.DateTimeField(null=True)
    provider = models.CharField(max_length=100, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    model_price = models.ForeignKey(
        ModelPrice,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
    )
    input_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    currency = models.CharField(max_length=16, blank=True, default="")
    amount = models.DecimalField(
        **AMOUNT, default=Decimal(0), help_text="What the customer was charged for it."
    )
    cost = models.DecimalField(
        **AMOUNT, default=Decimal(0), help_text="What the provider charges us for it (USD)."
    )
    # Many events → one transaction: a customer's accepted events of one rating part are
    # posted together, and the database refuses an event whose transaction's legs are not
    # the sums of its events (migration 0006).
    ledger_transaction = models.ForeignKey(
        "ledger.Transaction",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="usage_events",
        db_constraint=False,
    )
    # The customer's project the event was charged to (billing.models.projects), if it named one.
    # Indexed only where it is set (Meta): most events name no project, and an index of
    # their NULLs would be written for every event and read by nothing.
    project = models.ForeignKey(
        "billing.Project",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "idempotency_key"], name="metering_event_idempotency"
            ),
        ]
        indexes = [
            models.Index(fields=["customer", "timestamp"]),
            models.Index(
                fields=["project"],
                condition=Q(project__isnull=False),
                name="metering_event_project",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_name} {self.idempotency_key}"


class IncomingStatus(models.TextChoices):
    PENDING = "pending", "pending"
    REJECTED = "rejected", "rejected"


class IncomingEvent(models.Model):
    """An event accepted asynchronously (``Prefer: respond-async``): stored and deduplicated
    when the API answers ``202``, rated shortly after by ``metering.inbox.rate_pending``.

    Rating removes the row in the transaction that stores the event (the event itself then
    says what happened); an event rating refuses (a prepaid wallet run dry) stays here,
    ``rejected``, with its error: readable through ``GET /events?status=rejected``, and sent
    again under the same key it is taken up again. Unique per (customer, idempotency key),
    as events are: two retries store one row."""

    # No index of its own: (customer, -id) and the idempotency constraint lead with it.
    customer = models.ForeignKey(
        "billing.Customer", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    idempotency_key = models.CharField(max_length=255)
    event_name = models.CharField(max_length=200)
    timestamp = models.DateTimeField()
    properties = models.JSONField(default=dict)
    project = models.CharField(max_length=200, blank=True, default="")  # its key, as sent
    received_at = models.DateTimeField(db_default=Now())
    status = models.CharField(
        max_length=10, choices=IncomingStatus.choices, default=IncomingStatus.PENDING
    )
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    error_param = models.TextField(blank=True, default="")  # a path may be long
    rated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "idempotency_key"], name="metering_incoming_idempotency"
            ),
        ]
        indexes = [
            # The rater's queue: pending rows in arrival order, nothing else in the index.
            models.Index(
                fields=["id"],
                condition=Q(status="pending"),
                name="metering_incoming_pending",
            ),
            models.Index(fields=["customer", "-id"], name="metering_incoming_customer"),
        ]

    def __str__(self) -> str:
        return f"{self.event_name} {self.idempotency_key} ({self.status})"


class PeriodUsage(models.Model):
    """Rating state of one meter in one billing period of one subscription."""

    # No index of its own: the (subscription, meter, period) constraint leads with it.
    subscription = models.ForeignKey(
        "billing.Subscription", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    meter = models.ForeignKey("billing.Meter", on_delete=models.PROTECT, related_name="+")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    quantity = models.DecimalField(max_digits=38, decimal_places=12, default=Decimal(0))
    amount = models.DecimalField(
        max_digits=60,
        decimal_places=24,
        default=Decimal(0),
        help_text="Exact worth of the quantity under the plan, before rounding to the ledger.",
    )
    charged = models.DecimalField(
        **AMOUNT, default=Decimal(0), help_text="Posted to the ledger so far."
    )
    currency = models.CharField(max_length=16, blank=True, default="")
    event_count = models.BigIntegerField(default=0)
    # for unique_count meters the distinct values seen are rows of PeriodDistinctValue
    # for latest meters: the timestamp of the event whose value the quantity is
    latest_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "meter", "period_start"], name="metering_period_usage"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.meter_id} from {self.period_start:%Y-%m-%d}: {self.quantity}"


class PeriodDistinctValue(models.Model):
    """A value a unique_count meter has counted in one billing period of one subscription:
    the counter's quantity is the number of these rows. ``value`` is the value's canonical
    text (``metering.rating.price._distinct_key``: 1, 1.0 and 1e0 are one number; true, 1
    and "1" are three values). Rating looks up only the values of the events it rates, and
    inserts the new ones (ON CONFLICT DO NOTHING) in the transaction that moves the counter,
    under the customer's rating lock; a period's rows are never rewritten, so a batch costs
    what its events do, however many values the period has seen."""

    # No index of their own: the unique index leads with the subscription; meters are never
    # deleted (the services and the admin refuse it), so nothing looks rows up by meter alone.
    subscription = models.ForeignKey(
        "billing.Subscription", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    meter = models.ForeignKey(
        "billing.Meter", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    period_start = models.DateTimeField()
    value = models.TextField()
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "meter", "period_start", "value"],
                name="metering_period_distinct_value",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.meter_id} from {self.period_start:%Y-%m-%d}: {self.value}"


class DailyUsage(models.Model):
    """Usage of one meter on one UTC day, split by the meter's dimensions."""

    # No index of their own: the unique constraint leads with the subscription, the
    # (customer, day) index with the customer — rating updates these rows for every event,
    # and each index more is written on each update that cannot stay on its page.
    subscription = models.ForeignKey(
        "billing.Subscription", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    customer = models.ForeignKey(
        "billing.Customer", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    meter = models.ForeignKey("billing.Meter", on_delete=models.PROTECT, related_name="+")
    period_start = models.DateTimeField()
    day = models.DateField()
    dimension_key = models.CharField(max_length=500, default="", blank=True)
    dimensions = models.JSONField(default=dict, blank=True)
    quantity = models.DecimalField(max_digits=38, decimal_places=12, default=Decimal(0))
    included_quantity = models.DecimalField(max_digits=38, decimal_places=12, default=Decimal(0))
    amount = models.DecimalField(max_digits=60, decimal_places=24, default=Decimal(0))
    currency = models.CharField(max_length=16, blank=True, default="")
    event_count = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "meter", "period_start", "day", "dimension_key"],
                name="metering_daily_usage",
            ),
        ]
        indexes = [models.Index(fields=["customer", "day"])]

    def __str__(self) -> str:
        return f"{self.meter_id} on {self.day}: {self.quantity}"


class ModelUsage(models.Model):
    """LLM usage of one customer on one UTC day with one model: tokens, what the customer was
    charged and what the provider charges us, so margin per customer, model and period is a
    sum over this table."""

    # No index of their own: (customer, day) and the unique constraint lead with them.
    customer = models.ForeignKey(
        "billing.Customer", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    subscription = models.ForeignKey(
        "billing.Subscription", on_delete=models.PROTECT, related_name="+", db_index=False
    )
    period_start = models.DateTimeField()
    day = models.DateField()
    provider = models.CharField(max_length=100)
    model = models.CharField(max_length=200)
    currency = models.CharField(max_length=16)
    event_count = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    amount = models.DecimalField(**AMOUNT, default=Decimal(0))
    cost = models.DecimalField(**AMOUNT, default=Decimal(0))
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "period_start", "day", "provider", "model", "currency"],
                name="metering_model_usage",
            ),
        ]
        indexes = [models.Index(fields=["customer", "day"])]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model} on {self.day}"


MARGIN_SLOTS = 16  # rows per (day, model, currency) in MarginUsage: see its docstring


class MarginUsage(models.Model):
    """What LLM usage was charged and what the provider charges us, summed two ways so
    the finance home's margins read a bounded number of rows (``ModelUsage`` has one per
    customer, day and model):

    - per customer and UTC month: ``customer`` set, ``day`` the month's first day,
      ``provider`` and ``model`` empty, ``slot`` 0 — one row per customer and month;
    - per UTC day and model: ``customer`` null, ``slot`` the rating connection's backend
      pid modulo ``MARGIN_SLOTS`` — every rating part adds to the day's row of each model
      it rated, so concurrent parts of other customers would queue on one row until their
      commit; a slot each keeps them apart. A read sums the slots: at most
      days × models × ``MARGIN_SLOTS`` rows, whatever the number of customers.

    Kept by rating in the same transaction and statement batch as ``ModelUsage``, from the
    same exact amounts (``metering.rating.write._upsert_margin_usage``), so each grain's
    sums equal ``ModelUsage``'s."""

    # No index of its own: the unique constraint leads with it.
    customer = models.ForeignKey(
        "billing.Customer",
        on_delete=models.PROTECT,
        related_name="+",
        null=True,
        blank=True,
        db_index=False,
    )
    day = models.DateField()
    provider = models.CharField(max_length=100, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    currency = models.CharField(max_length=16)
    slot = models.SmallIntegerField(default=0)
    event_count = models.BigIntegerField(default=0)
    amount = models.DecimalField(**AMOUNT, default=Decimal(0))
    cost = models.DecimalField(**AMOUNT, default=Decimal(0))
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "day", "provider", "model", "currency", "slot"],
                name="metering_margin_usage",
                nulls_distinct=False,
            ),
            models.CheckConstraint(
                condition=Q(customer__isnull=True) | Q(provider="", model="", slot=0),
                name="metering_margin_usage_grain",
            ),
        ]
        indexes = [
            # a month's customers (the unique index leads with the customer: the model
            # rows, customer null, are read from it by day)
            models.Index(
                fields=["day", "currency"],
                condition=Q(customer__isnull=False),
                name="metering_margin_customer_month",
            )
        ]

    def __str__(self) -> str:
        what = (
            f"customer {self.customer_id}" if self.customer_id else f"{self.provider}/{self.model}"
        )
        return f"{what} on {self.day}"
