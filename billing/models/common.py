"""What the model modules share: the precision of prices and money, and how an exact
amount is written for people (``exact_money``)."""

from __future__ import annotations

from decimal import Decimal, localcontext

from django.db import models

from ledger.models import AMOUNT_DIGITS

PRICE_DIGITS, PRICE_PLACES = 30, 12


def price_field(**kwargs) -> models.DecimalField:
    return models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES, **kwargs)


def exact_money(value: Decimal | None, currency: str = "") -> str:
    """An amount exactly as stored, without trailing zeros beyond the cents, thousands
    grouped: 12.5 → "12.50", 1500 → "1,500.00", 0.000002 → "0.000002". Never rounded:
    finance reads exact figures."""
    if value is None:
        return "—"
    with localcontext(prec=AMOUNT_DIGITS + 2):
        exact = value.normalize()
        exponent = exact.as_tuple().exponent
        if isinstance(exponent, int) and exponent > -2:  # (not NaN or an infinity)
            exact = exact.quantize(Decimal("0.01"))
    return f"{exact:,f} {currency}".strip()
