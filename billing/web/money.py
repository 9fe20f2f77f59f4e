"""Money in HTML, as every interface shows it: rounded to the currency's minor unit
(``invoicing.money.format_amount``) with the exact figure in the ``title`` (on hover)."""

from __future__ import annotations

from decimal import Decimal

from django.utils.html import format_html

from invoicing.money import exact_amount, format_amount


def money_cell(value: Decimal | None, currency: str = "", *, signed: bool = False) -> str:
    """``<span class="money" title="1,234.5678 USD (exact)">1,234.57 USD</span>``; "—" for
    None."""
    if value is None:
        return "—"
    return format_html(
        '<span class="money" title="{} (exact)">{}</span>',
        exact_amount(value, currency),
        format_amount(value, currency, signed=signed),
    )
