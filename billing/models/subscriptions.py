"""Subscriptions, their phases (plan changes) and per-customer margins."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now

from billing.models.customers import Customer
from billing.models.plans import BillingTime, Plan


class SubscriptionStatus(models.TextChoices):
    TRIALING = "trialing", "Trialing"
    ACTIVE = "active", "Active"
    PAST_DUE = "past_due", "Past due"
    CANCELED = "canceled", "Canceled"


class Subscription(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(max_length=10, choices=SubscriptionStatus.choices)
    started_at = models.DateTimeField()
    billing_anchor = models.DateTimeField()
    billing_time = models.CharField(
        max_length=11,
        choices=BillingTime.choices,
        default=BillingTime.ANNIVERSARY,
        help_text="What its periods are counted from (its plan's, or its own at creation).",
    )
    billing_anchor_day = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Calendar billing: the day of the month, or the ISO weekday for weekly "
        "plans, its periods fall on. Empty: billed from its start, or daily.",
    )
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    trial_ends_at = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    canceled_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    scheduled_plan = models.ForeignKey(
        Plan,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Takes effect at the end of the current period.",
    )
    invoiced_through = models.DateTimeField(
        null=True,
        blank=True,
        help_text="End of the last finalized period: usage timestamped before it is refused.",
    )
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            # One live subscription per customer.
            models.UniqueConstraint(
                fields=["customer"],
                condition=~Q(status="canceled"),
                name="billing_one_live_subscription",
            ),
            models.CheckConstraint(
                condition=Q(current_period_end__gt=F("current_period_start")),
                name="billing_subscription_period_order",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.external_id} on {self.plan}"


class SubscriptionPhase(models.Model):
    """Which plan version applied to a subscription from ``starts_at`` until ``ends_at``."""

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="phases")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ends_at__isnull=True) | Q(ends_at__gte=F("starts_at")),
                name="billing_phase_order",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan} from {self.starts_at:%Y-%m-%d %H:%M}"


class MarginOverride(models.Model):
    """A customer's own markup over the provider's cost for catalog-priced charges: for one
    meter, or (meter empty) for all of them. It replaces the plan charge's margin."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="margins")
    meter = models.ForeignKey(
        "Meter", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    margin_percent = models.DecimalField(max_digits=9, decimal_places=4)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "meter"],
                name="billing_margin_per_meter",
                nulls_distinct=False,
            ),
            models.CheckConstraint(
                condition=Q(margin_percent__gt=-100), name="billing_margin_above_minus_100"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.external_id}: {self.margin_percent} % on {self.meter or 'all'}"
