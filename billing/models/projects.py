"""Budgets inside a customer: its projects (teams, API keys of its own product …), each with
an optional spend limit per billing period.

Design overview
===============
A ``Project`` belongs to one customer and is named by a ``key`` unique per customer: the id
the customer's product already uses (a team, a project, one of its own API keys). Usage
events, ``/authorize`` and holds name it in their top-level ``project``; an unknown key is
refused (``project_not_found``) rather than created, as customers are: a typo must not
open an unlimited budget. An archived project refuses new usage (``project_archived``) and
keeps its history.

``spend_limit`` is money in the currency the customer's usage is charged in (the
customer's currency; ``CREDITS`` on a credits plan), per billing period (the customer's
subscription period, the same period rating counts usage in). Null: no limit, usage is
only counted.

``ProjectSpend`` is the exact spend of a project in one period: one row per (project,
period_start), upserted set-based by rating in the transaction that posts the events (under
the customer's rating lock, so the limit check and the counter see one order).
``exceeded_at`` records the first refusal in the period (``budget.exceeded`` is emitted
then, once). ``ProjectHold`` ties a hold placed for a project to it: while the hold is
pending and unexpired, what is left of it counts against the budget.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from billing.models.customers import Customer
from ledger.models import Hold


class ProjectStatus(models.TextChoices):
    """What ``Project.status`` says (from ``archived_at``); the API's ``status``."""

    ACTIVE = "active", "active"
    ARCHIVED = "archived", "archived"


class Project(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="projects")
    key = models.CharField(max_length=200, help_text="What events name in `project`.")
    name = models.CharField(max_length=200, blank=True, default="")
    spend_limit = models.DecimalField(
        max_digits=38,
        decimal_places=12,
        null=True,
        blank=True,
        help_text="Per billing period, in the currency usage is charged in; empty = no limit.",
    )
    archived_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["customer", "key"], name="billing_project_key"),
            models.CheckConstraint(
                condition=Q(spend_limit__isnull=True) | Q(spend_limit__gte=0),
                name="billing_project_limit_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.external_id}/{self.key}"

    @property
    def status(self) -> str:
        return ProjectStatus.ARCHIVED if self.archived_at is not None else ProjectStatus.ACTIVE


class ProjectSpend(models.Model):
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="spends")
    period_start = models.DateTimeField()
    currency = models.CharField(max_length=16, blank=True, default="")
    amount = models.DecimalField(max_digits=38, decimal_places=12, default=Decimal(0))
    event_count = models.BigIntegerField(default=0)
    exceeded_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "period_start"], name="billing_project_spend_period"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project} from {self.period_start:%Y-%m-%d}: {self.amount}"


class ProjectHold(models.Model):
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="holds")
    hold = models.OneToOneField(Hold, on_delete=models.PROTECT, related_name="project_link")
    created_at = models.DateTimeField(db_default=Now())

    def __str__(self) -> str:
        return f"hold {self.hold_id} for {self.project}"
