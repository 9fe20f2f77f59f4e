"""Alerts: what is watched (``Alert``), where each watched subject stands (``AlertState``)
and every crossing (``AlertFiring``).

Design overview
===============
An ``Alert`` is a definition: a *kind* (what is measured and which way is bad), a
*threshold*, the addresses e-mailed, an ``enabled`` flag, and a *scope* saying whom it
watches:

- ``customer``: one customer;
- ``plan``: every customer whose live subscription (not canceled) is on a version of the
  plan ``plan_code`` — any version when ``plan_version`` is empty, that one otherwise.
  Subscribers are found at each evaluation, so a customer who subscribes later is watched
  from then on and one who leaves is no longer evaluated;
- ``all``: only for ``negative_margin``: every customer, or every model across all
  customers when ``per_model`` is set.

Kinds (each compares strictly: a value *equal* to the threshold is not a crossing):

- ``balance_below``: the available balance (posted − held) of the customer's wallet in
  ``currency`` (empty: the customer's own currency) is below ``threshold``;
- ``credits_below``: the available balance of the ``CREDITS`` wallet, in credits;
- ``spend_above``: the exact amount the usage of the current billing period is worth
  (the sum of metering's period counters in ``currency``) is above ``threshold``;
- ``usage_above_share``: a meter's quantity this period is above ``threshold`` × the
  included quantity of that meter in the subscriber's plan (a share: 0.8 = 80 %);
- ``negative_margin``: per UTC day, what the provider charges us (``cost``) exceeds what
  the customer was charged for it (``amount``), from metering's per-day model counters;
  ``per_model`` splits it by model. Its threshold is 0.

A *subject* is what one alert watches one value of: a customer (``customer``), plus a
``subject_key`` when there are several values per customer (``day:2026-12-06`` and
``model:openai/gpt-4o`` for margins). Each (alert, customer, subject key) has one
``AlertState``: ``armed`` or ``triggered``, the value last seen and the limit it was
compared with, how many crossings it has had, when it last triggered and resolved.

Firing is a conditional state transition (``UPDATE … SET status = 'triggered' WHERE
status = 'armed'``) so that evaluators running at once fire one crossing exactly once;
the ``AlertFiring`` row of a crossing is unique on (state, crossing number, action) as a
second guard. A triggered state re-arms (``resolved``) when the value recovers.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from billing.models.common import price_field
from billing.models.customers import Customer
from billing.models.plans import Meter


class AlertKind(models.TextChoices):
    BALANCE_BELOW = "balance_below", "Balance below an amount"
    CREDITS_BELOW = "credits_below", "Credits below a number"
    SPEND_ABOVE = "spend_above", "Spend this period above an amount"
    USAGE_ABOVE_SHARE = "usage_above_share", "Usage of a meter above a share of its allowance"
    NEGATIVE_MARGIN = "negative_margin", "Provider cost above the price charged (per day)"


class AlertScope(models.TextChoices):
    CUSTOMER = "customer", "One customer"
    PLAN = "plan", "Every subscriber of a plan"
    ALL = "all", "Every customer (negative margin only)"


class AlertSource(models.TextChoices):
    API = "api", "API"
    ADMIN = "admin", "Admin"
    PORTAL = "portal", "Portal (the customer's low-balance setting)"


class AlertStatus(models.TextChoices):
    ARMED = "armed", "Armed"
    TRIGGERED = "triggered", "Triggered"


class FiringAction(models.TextChoices):
    TRIGGERED = "triggered", "Triggered"
    RESOLVED = "resolved", "Resolved"


class Alert(models.Model):
    """One alert definition (see the module's design overview)."""

    name = models.CharField(max_length=200, blank=True, default="")
    kind = models.CharField(max_length=20, choices=AlertKind.choices)
    scope = models.CharField(max_length=10, choices=AlertScope.choices)
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, null=True, blank=True, related_name="alerts"
    )
    plan_code = models.SlugField(max_length=100, blank=True, default="")
    plan_version = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: every version of the plan."
    )
    threshold = price_field(
        help_text="An amount, a number of credits or a share (0.8 = 80 %); 0 for margins."
    )
    currency = models.CharField(
        max_length=16, blank=True, default="", help_text="Empty: the customer's own currency."
    )
    meter = models.ForeignKey(
        Meter, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    per_model = models.BooleanField(default=False, help_text="Negative margin: per model.")
    recipients = models.JSONField(default=list, blank=True, help_text="E-mail addresses.")
    enabled = models.BooleanField(default=True)
    source = models.CharField(max_length=10, choices=AlertSource.choices, default="api")
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(scope="customer", customer__isnull=False, plan_code="")
                    | (Q(scope="plan", customer__isnull=True) & ~Q(plan_code=""))
                    | Q(scope="all", customer__isnull=True, plan_code="", kind="negative_margin")
                ),
                name="billing_alert_scope",
            ),
            models.CheckConstraint(
                condition=Q(plan_version__isnull=True) | Q(scope="plan"),
                name="billing_alert_version_of_plan",
            ),
            models.CheckConstraint(
                condition=Q(threshold__gte=0) | Q(kind="balance_below"),
                name="billing_alert_threshold_positive",
            ),
            models.CheckConstraint(
                condition=(
                    Q(kind="usage_above_share", meter__isnull=False, threshold__gt=0)
                    | (~Q(kind="usage_above_share") & Q(meter__isnull=True))
                ),
                name="billing_alert_meter_for_usage",
            ),
            models.CheckConstraint(
                condition=~Q(kind="negative_margin") | Q(threshold=0),
                name="billing_alert_margin_threshold_zero",
            ),
            models.CheckConstraint(
                condition=Q(per_model=False) | Q(kind="negative_margin"),
                name="billing_alert_per_model_margin_only",
            ),
            # The portal's low-balance setting is one alert per customer.
            models.UniqueConstraint(
                fields=["customer"],
                condition=Q(source="portal"),
                name="billing_alert_one_portal_setting",
            ),
        ]
        indexes = [
            models.Index(
                fields=["kind", "scope"], condition=Q(enabled=True), name="billing_alert_enabled"
            )
        ]

    def __str__(self) -> str:
        return self.name or f"{self.get_kind_display()} #{self.pk}"


class AlertState(models.Model):
    """Where one subject of an alert stands; see the module's design overview."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="states")
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, null=True, blank=True, related_name="alert_states"
    )
    subject_key = models.CharField(max_length=500, blank=True, default="")
    status = models.CharField(max_length=10, choices=AlertStatus.choices, default=AlertStatus.ARMED)
    last_value = models.DecimalField(max_digits=60, decimal_places=24, null=True, blank=True)
    limit = models.DecimalField(
        max_digits=60,
        decimal_places=24,
        null=True,
        blank=True,
        help_text="What the value was compared with (e.g. share × allowance).",
    )
    crossings = models.PositiveIntegerField(default=0)
    triggered_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["alert", "customer", "subject_key"],
                nulls_distinct=False,
                name="billing_alert_state_subject",
            ),
        ]
        indexes = [
            models.Index(
                fields=["customer"],
                condition=Q(status="triggered"),
                name="billing_alert_state_triggered",
            )
        ]

    def __str__(self) -> str:
        return f"{self.alert} {self.subject_key or self.customer_id}: {self.status}"


class AlertFiring(models.Model):
    """One crossing of a state, triggered or resolved: the history."""

    state = models.ForeignKey(AlertState, on_delete=models.CASCADE, related_name="firings")
    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="firings")
    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    crossing = models.PositiveIntegerField()
    action = models.CharField(max_length=10, choices=FiringAction.choices)
    value = models.DecimalField(max_digits=60, decimal_places=24)
    limit = models.DecimalField(max_digits=60, decimal_places=24)
    unit = models.CharField(max_length=40, blank=True, default="", help_text="USD, CREDITS, …")
    emailed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), db_index=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["state", "crossing", "action"], name="billing_alert_firing_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.alert} {self.action} #{self.crossing}"
