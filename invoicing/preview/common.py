"""What both usage previews share: the read-only transaction they run in, the error for
what they cannot price, totals per currency and a charge's margin for a customer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection, transaction

from invoicing import errors
from metering.charges import ChargeTerms

ZERO = Decimal(0)
HUNDRED = Decimal(100)


class PreviewUnsupported(errors.InvoicingError):
    code = "preview_unsupported"
    http_status = 422


@contextmanager
def read_only() -> Iterator[None]:
    """A transaction (a savepoint inside one) in which PostgreSQL refuses every write, rolled
    back when it ends: what runs inside cannot change the database, whatever it calls."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION READ ONLY")
        try:
            yield
        finally:
            transaction.set_rollback(True)


@dataclass
class Totals:
    currency: str
    customers: int = 0
    old: Decimal = ZERO
    new: Decimal = ZERO

    @property
    def delta(self) -> Decimal:
        return self.new - self.old


def totals_of(figures: Iterable[tuple[str, Decimal, Decimal]]) -> list[Totals]:
    """(currency, old, new) figures summed per currency, by currency."""
    by: dict[str, Totals] = {}
    for currency, old, new in figures:
        t = by.setdefault(currency, Totals(currency))
        t.customers += 1
        t.old += old
        t.new += new
    return [by[c] for c in sorted(by)]


def margin_of(charge: ChargeTerms | None, overrides: dict[int | None, Decimal]) -> Decimal:
    """The charge's margin for a customer: its override for the meter, else its override
    for every meter, else the charge's own (none: 0)."""
    if charge is None:
        return ZERO
    margin = overrides.get(charge.meter_id, overrides.get(None, charge.margin_percent))
    return margin if margin is not None else ZERO
