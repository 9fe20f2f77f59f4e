"""Plans (versioned, immutable once published), meters, charges and price tiers."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from billing.models.common import price_field


class Interval(models.TextChoices):
    DAY = "day", "Daily"
    WEEK = "week", "Weekly"
    MONTH = "month", "Monthly"
    QUARTER = "quarter", "Quarterly"
    YEAR = "year", "Yearly"


class BillingTime(models.TextChoices):
    """Where a subscription's periods are counted from (``billing.periods``)."""

    ANNIVERSARY = "anniversary", "From the subscription's start (or its trial's end)"
    CALENDAR = "calendar", "On the calendar: a first period prorated by day up to the anchor"


class CommitmentBilling(models.TextChoices):
    """When a prepaid commitment is invoiced (``invoicing.commitments``)."""

    IN_ARREARS = "in_arrears", "At the period's close, with its usage"
    IN_ADVANCE = "in_advance", "When the period opens (paid up front); overage at the close"


class RoundingRule(models.TextChoices):
    """How an invoice rounds exact amounts to the currency's minor unit
    (``invoicing.money.to_minor_unit``)."""

    HALF_EVEN = "half_even", "Half to even (banker's rounding): 0.125 → 0.12"
    HALF_UP = "half_up", "Half up (away from zero): 0.125 → 0.13"


class ConsumptionModel(models.TextChoices):
    METERED = "metered", "Metered: included allowance + overage, invoiced"
    CREDITS = "credits", "Credits: prepaid blocks, 1 credit = N units"
    BALANCE = "balance", "Balance: prepaid money debited at real cost"


class Plan(models.Model):
    """One immutable version of a plan."""

    code = models.SlugField(max_length=100)
    version = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    currency = models.CharField(max_length=16, default="USD")
    interval = models.CharField(max_length=7, choices=Interval.choices, default=Interval.MONTH)
    interval_count = models.PositiveSmallIntegerField(
        default=1, help_text="A period lasts this many intervals (every 2 weeks, 6 months, …)."
    )
    charges_interval = models.CharField(
        max_length=7,
        choices=Interval.choices,
        blank=True,
        default="",
        db_default="",
        help_text="Metered plans: the usage charges billed on a finer cadence than the plan "
        "(a yearly plan's usage every month, Lago's bill_charges_monthly). Empty: the plan's "
        "own interval. Must divide the plan's period (billing.periods.charge_cadence).",
    )
    charges_interval_count = models.PositiveSmallIntegerField(
        default=1,
        db_default=1,
        help_text="The charges' period lasts this many charges intervals (with charges_interval).",
    )
    billing_time = models.CharField(
        max_length=11,
        choices=BillingTime.choices,
        default=BillingTime.ANNIVERSARY,
        help_text="What new subscriptions count periods from (they may choose otherwise).",
    )
    billing_anchor_day = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Calendar billing: the day of the month (1–31, clamped to short months) "
        "for month, quarter and year; the ISO weekday (1 Monday … 7 Sunday) for week. "
        "Empty: the 1st, or Monday.",
    )
    base_fee = price_field(default=Decimal(0))
    trial_days = models.PositiveIntegerField(default=0)
    consumption_model = models.CharField(
        max_length=10, choices=ConsumptionModel.choices, default=ConsumptionModel.METERED
    )
    units_per_credit = price_field(
        null=True, blank=True, help_text="Credits model: how many units one credit buys."
    )
    metadata = models.JSONField(default=dict, blank=True)
    rounding = models.CharField(
        max_length=10,
        choices=RoundingRule.choices,
        blank=True,
        default="",
        help_text="How its invoices round amounts to the minor unit: each line, the tax. "
        "Empty: the currency's rule (CurrencySetting), else half to even.",
    )
    minimum_amount = price_field(
        null=True,
        blank=True,
        help_text="The least a subscription is invoiced per period before tax (prorated "
        "for part of a period); the shortfall is its own line. Empty = none.",
    )
    commitment_amount = price_field(
        null=True,
        blank=True,
        help_text="Prepaid commitment per period (metered plans): invoiced whatever the "
        "usage, drawn down by the period's usage charges; usage beyond it is overage, what "
        "is left expires (breakage). Prorated for part of a period. Empty = none.",
    )
    commitment_billing = models.CharField(
        max_length=12,
        choices=CommitmentBilling.choices,
        default=CommitmentBilling.IN_ARREARS,
        db_default=CommitmentBilling.IN_ARREARS,
        help_text="When the commitment is invoiced: in_arrears, at the period's close with "
        "its usage; in_advance, on an invoice of its own when the period opens, the close "
        "then invoicing the overage only.",
    )
    self_serve = models.BooleanField(
        default=False,
        help_text="Offered in the customer portal to switch to (same currency and interval). "
        "A flag of the plan, not of the version: set on every version of the code "
        "(billing.services.set_plan_self_serve) and carried to new versions.",
    )
    spec_hash = models.CharField(max_length=64, help_text="What was published; unchanged = same.")
    published_at = models.DateTimeField(db_default=Now())
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        ordering = ["code", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["code", "version"], name="billing_plan_version"),
            models.CheckConstraint(condition=Q(base_fee__gte=0), name="billing_plan_fee_positive"),
            models.CheckConstraint(
                condition=~Q(consumption_model="credits") | Q(units_per_credit__gt=0),
                name="billing_plan_credits_need_units",
            ),
            models.CheckConstraint(
                condition=Q(minimum_amount__isnull=True) | Q(minimum_amount__gt=0),
                name="billing_plan_minimum_positive",
            ),
            models.CheckConstraint(
                condition=Q(commitment_amount__isnull=True) | Q(commitment_amount__gt=0),
                name="billing_plan_commitment_positive",
            ),
            models.CheckConstraint(
                condition=Q(interval_count__gte=1), name="billing_plan_interval_count"
            ),
            models.CheckConstraint(
                condition=Q(charges_interval_count__gte=1)
                & (~Q(charges_interval="") | Q(charges_interval_count=1)),
                name="billing_plan_charges_interval_count",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.code} v{self.version})"

    @property
    def per_interval(self) -> str:
        """What a base fee is per, in words: "a month", "every 2 weeks"."""
        if self.interval_count == 1:
            return f"a {self.interval}"
        return f"every {self.interval_count} {self.interval}s"


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
        # the table keeps its name from when meters lived in metering (billing 0007)
        db_table = "metering_meter"
        constraints = [
            models.CheckConstraint(
                condition=Q(aggregation="count") | ~Q(property=""),
                name="metering_meter_property_required",
            ),
        ]

    def __str__(self) -> str:
        return self.code


class PriceModel(models.TextChoices):
    PER_UNIT = "per_unit", "Per unit"
    GRADUATED = "graduated", "Graduated tiers (each tier priced on its own units)"
    VOLUME = "volume", "Volume tiers (all units at the tier reached)"
    PACKAGE = "package", "Package (per started block of units)"


class PlanCharge(models.Model):
    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="charges")
    meter = models.ForeignKey("Meter", on_delete=models.PROTECT, related_name="+")
    included_quantity = price_field(default=Decimal(0))
    price_model = models.CharField(
        max_length=10, choices=PriceModel.choices, default=PriceModel.PER_UNIT
    )
    unit_price = price_field(
        default=Decimal(0), help_text="Per unit, or per package for the package model."
    )
    package_size = price_field(null=True, blank=True)
    margin_percent = models.DecimalField(
        max_digits=9,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Markup over the provider's cost for catalog-priced usage.",
    )
    minimum_amount = price_field(
        null=True,
        blank=True,
        help_text="The least this charge is invoiced per period (prorated for part of a "
        "period); the shortfall is its own line. Empty = none.",
    )
    prorated = models.BooleanField(
        default=False,
        help_text="For a period billed in part (a subscription ending inside it): the tier "
        "chosen on the whole quantity, the amount prorated by the time billed (Lago's "
        "prorated charges). Off: the whole amount.",
    )
    flat_fee_at_zero = models.BooleanField(
        default=False,
        help_text="Graduated and volume: the first tier's flat fee is invoiced even for a "
        "period without billable usage (Lago's convention). Off: charged from the first unit.",
    )
    # db_default: raw-SQL seeders (bench, reads-at-scale tests) insert charges without them.
    interval = models.CharField(
        max_length=7,
        choices=Interval.choices,
        blank=True,
        default="",
        db_default="",
        help_text="Metered plans: this charge's own cadence (Orb's per-price cadence), a "
        "whole multiple of the subscription's billing period (billing.services.cadence). "
        "Empty: billed every billing period, as the plan's other charges.",
    )
    interval_count = models.PositiveSmallIntegerField(
        default=1,
        db_default=1,
        help_text="The charge's period lasts this many intervals (with interval).",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["plan", "meter"], name="billing_charge_meter"),
            models.CheckConstraint(
                condition=Q(interval_count__gte=1) & (~Q(interval="") | Q(interval_count=1)),
                name="billing_charge_interval_count",
            ),
            models.CheckConstraint(
                condition=Q(included_quantity__gte=0, unit_price__gte=0),
                name="billing_charge_non_negative",
            ),
            models.CheckConstraint(
                condition=~Q(price_model="package") | Q(package_size__gt=0),
                name="billing_charge_package_size",
            ),
            models.CheckConstraint(
                condition=Q(minimum_amount__isnull=True) | Q(minimum_amount__gt=0),
                name="billing_charge_minimum_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan} · {self.meter_id}"


class PriceTier(models.Model):
    charge = models.ForeignKey(PlanCharge, on_delete=models.CASCADE, related_name="tiers")
    position = models.PositiveSmallIntegerField()
    up_to = price_field(null=True, blank=True, help_text="Last unit of the tier; empty = ∞.")
    unit_price = price_field(default=Decimal(0))
    flat_fee = price_field(default=Decimal(0))
    package_size = price_field(
        null=True,
        blank=True,
        help_text="Units of this tier counted in blocks of this size, rounded up; the unit "
        "price is then per block. Empty = per unit.",
    )

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["charge", "position"], name="billing_tier_position"),
            models.CheckConstraint(
                condition=Q(package_size__isnull=True) | Q(package_size__gt=0),
                name="billing_tier_package_size",
            ),
        ]

    def __str__(self) -> str:
        bound = "∞" if self.up_to is None else self.up_to
        return f"up to {bound} at {self.unit_price}"
