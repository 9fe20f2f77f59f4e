"""Recurring plan credits: a plan's allowance granted each period (``PlanCreditGrant``, one
per plan version, as immutable as the plan), and the record of each grant made to a
subscription for one grant period (``SubscriptionCreditGrant``, unique per subscription and
period start: what makes granting exactly-once). The grant itself is an ordinary
``CreditGrant`` (source ``plan``); ``billing.plan_credits`` makes them and applies rollover."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from billing.models.common import price_field
from billing.models.credits import CreditGrant
from billing.models.plans import Plan
from billing.models.subscriptions import Subscription


class GrantCadence(models.TextChoices):
    PERIOD = "period", "Every billing period"
    MONTH = "month", "Every month (also on a yearly plan)"
    ONCE = "once", "Once, at the start of the subscription"


class GrantExpiry(models.TextChoices):
    PERIOD_END = "period_end", "At the end of the period it was granted for"
    DAYS = "days", "A number of days after it was granted"
    NEVER = "never", "Never"


class Rollover(models.TextChoices):
    NONE = "none", "None: what is left expires at the next grant"
    ALL = "all", "All of what is left rolls over"
    CAPPED = "capped", "What is left rolls over up to a cap"


class PlanCreditGrant(models.Model):
    """A plan version's recurring grant. Written by ``publish_plan`` with the plan, never
    changed afterwards (a change is a new plan version)."""

    plan = models.OneToOneField(Plan, on_delete=models.CASCADE, related_name="credit_grant")
    name = models.CharField(max_length=200, blank=True, default="")
    amount = price_field(help_text="Per grant: credits on a credits plan, money on a balance plan.")
    cadence = models.CharField(max_length=10, choices=GrantCadence.choices)
    expiry = models.CharField(max_length=10, choices=GrantExpiry.choices)
    expiry_days = models.PositiveIntegerField(null=True, blank=True)
    rollover = models.CharField(max_length=10, choices=Rollover.choices)
    rollover_cap = price_field(null=True, blank=True)
    rollover_periods = models.PositiveIntegerField(
        null=True, blank=True, help_text="How many later periods a grant may roll into; empty: any."
    )
    priority = models.PositiveSmallIntegerField()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(amount__gt=0), name="billing_plan_grant_amount_positive"
            ),
            models.CheckConstraint(
                condition=Q(expiry="days", expiry_days__gt=0)
                | (~Q(expiry="days") & Q(expiry_days__isnull=True)),
                name="billing_plan_grant_expiry_days",
            ),
            models.CheckConstraint(
                condition=Q(rollover="capped", rollover_cap__gt=0)
                | (~Q(rollover="capped") & Q(rollover_cap__isnull=True)),
                name="billing_plan_grant_rollover_cap",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.amount.normalize():f} per {self.cadence} on {self.plan}"


class SubscriptionCreditGrant(models.Model):
    """One plan grant made to a subscription for the grant period starting at
    ``period_start``. The unique constraint is what makes granting exactly-once, however
    many beat runs race."""

    subscription = models.ForeignKey(
        Subscription, on_delete=models.PROTECT, related_name="credit_grants"
    )
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    grant = models.OneToOneField(CreditGrant, on_delete=models.PROTECT, related_name="plan_grant")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["subscription", "period_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "period_start"], name="billing_plan_grant_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.grant} for {self.period_start:%Y-%m-%d}"
