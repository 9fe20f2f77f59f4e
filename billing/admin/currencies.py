"""Per-currency settings: how invoices in a currency round when their plan names no rule."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from billing.admin.common import check_currency
from billing.models import CurrencySetting


class CurrencySettingForm(forms.ModelForm):
    class Meta:
        model = CurrencySetting
        fields = ("currency", "rounding")

    def clean_currency(self) -> str:
        return check_currency((self.cleaned_data.get("currency") or "").strip().upper())


@admin.register(CurrencySetting)
class CurrencySettingAdmin(admin.ModelAdmin):
    """The rounding precedence (``invoicing.money.rounding_rule_for``): the plan's explicit
    rule, else this, else half to even. Deleting a row returns the currency to half even."""

    form = CurrencySettingForm
    list_display = ("currency", "rounding", "updated_at")
    search_fields = ("currency",)
