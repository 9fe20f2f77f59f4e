"""What the model modules share: the precision of prices and money."""

from __future__ import annotations

from django.db import models

PRICE_DIGITS, PRICE_PLACES = 30, 12


def price_field(**kwargs) -> models.DecimalField:
    return models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES, **kwargs)
