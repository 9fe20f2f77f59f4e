"""Per-currency settings finance staff edit in the admin: how invoices in a currency round."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from billing.models.plans import RoundingRule


class CurrencySetting(models.Model):
    """How invoices in one currency round to its minor unit, when their plan does not say
    (``Plan.rounding`` empty). Precedence, applied by ``invoicing.money.rounding_rule_for``:
    the plan's explicit rule, else this row's, else half to even. No row: half to even."""

    currency = models.CharField(max_length=16, unique=True, help_text="ISO 4217, e.g. EUR.")
    rounding = models.CharField(
        max_length=10,
        choices=RoundingRule.choices,
        default=RoundingRule.HALF_EVEN,
        help_text="Rounding of the invoices of plans in this currency that name no rule; "
        "an invoice keeps the rule it was rounded by (a change applies to invoices computed "
        "after it: drafts, upcoming invoices, previews).",
    )
    updated_at = models.DateTimeField(db_default=Now(), auto_now=True)

    class Meta:
        ordering = ["currency"]
        constraints = [
            models.CheckConstraint(
                condition=Q(rounding__in=RoundingRule.values),
                name="billing_currency_setting_rounding",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.currency}: {self.rounding}"
