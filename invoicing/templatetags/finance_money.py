"""Amounts on the finance pages (exports and previews): exact, as the admin shows money
(``billing.admin.common.money``: never rounded, at least the cents), with a sign where a
difference is shown."""

from __future__ import annotations

from decimal import Decimal

from django import template

from billing.admin.common import money

register = template.Library()


@register.filter
def minor(value: Decimal | None) -> str:
    """An amount already in the minor unit (an invoice total)."""
    return money(value)


@register.filter
def exact(value: Decimal | None) -> str:
    return money(value)


@register.filter
def signed(value: Decimal | None) -> str:
    if value is None:
        return "—"
    return ("+" if value > 0 else "") + money(value)


exact_signed = register.filter("exact_signed", signed)
