"""Billing periods and proration: pure, exact functions.

Periods are half-open UTC intervals [start, end). Period *n* of a subscription starts at
``anchor + n intervals``, always computed from the anchor (never by adding to the previous
period), so a 31st-of-the-month anchor gives Jan 31, Feb 28 (or 29), Mar 31, Apr 30 … and
never drifts to the 28th.

Proration is by elapsed time: ``amount × time used / time in the period``, counted in
integer microseconds. The quotient is kept to 12 decimal places, rounded half-even (the
ledger's precision); presentation rounds to the currency's minor unit once, elsewhere.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

MONTHS_PER_INTERVAL = {"month": 1, "year": 12}
MICROSECOND = timedelta(microseconds=1)
PRORATION_QUANTUM = Decimal("1e-12")


def add_months(moment: datetime, months: int) -> datetime:
    """``moment`` moved by whole months, the day clamped to the target month's length."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def period_boundary(anchor: datetime, interval: str, n: int) -> datetime:
    return add_months(anchor, n * MONTHS_PER_INTERVAL[interval])


def period_containing(
    anchor: datetime, interval: str, moment: datetime
) -> tuple[datetime, datetime]:
    """The period [start, end) that contains ``moment`` (which must not precede ``anchor``)."""
    if moment < anchor:
        raise ValueError("moment precedes the billing anchor")
    step = MONTHS_PER_INTERVAL[interval]
    months = (moment.year - anchor.year) * 12 + (moment.month - anchor.month)
    n = max(months // step - 1, 0)  # start one period early: day/time may not have come yet
    while period_boundary(anchor, interval, n + 1) <= moment:
        n += 1
    return period_boundary(anchor, interval, n), period_boundary(anchor, interval, n + 1)


def prorate(
    amount: Decimal,
    *,
    used_from: datetime,
    used_until: datetime,
    period_start: datetime,
    period_end: datetime,
) -> Decimal:
    """``amount`` for the part [used_from, used_until) of [period_start, period_end)."""
    start, end = max(used_from, period_start), min(used_until, period_end)
    if end <= start:
        return Decimal(0)
    used = (end - start) // MICROSECOND
    whole = (period_end - period_start) // MICROSECOND
    if used == whole:
        return amount
    with localcontext(prec=60):  # exact for every amount a price field can hold
        return (amount * used / whole).quantize(PRORATION_QUANTUM, rounding=ROUND_HALF_EVEN)


def utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC)
