"""Amounts on the finance pages (exports, previews, the provider usage import): exact, as
the admin shows money (``billing.admin.common.money``: never rounded, at least the cents),
with a sign where a difference is shown; or rounded with the exact figure on hover
(``usd``); counts grouped (``units``)."""

from __future__ import annotations

from decimal import Decimal

from django import template

from billing.admin.common import money, quantity
from billing.web.money import money_cell

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


@register.filter
def usd(value: Decimal | str | None) -> str:
    """A USD amount rounded to the cent, the exact figure on hover (``money_cell``); "—"
    for None or nothing (a row the export or the meter does not have)."""
    return money_cell(value, "USD") if isinstance(value, Decimal) else "—"


@register.filter
def units(value: int | str | None) -> str:
    """A count grouped: 1000000 → "1,000,000"; "—" for None or nothing."""
    return f"{value:,}" if isinstance(value, int) else "—"


@register.filter
def units_of(value: Decimal | None) -> str:
    """A quantity of a meter's units grouped, without cents: 1100.000 → "1,100"."""
    return quantity(value)
