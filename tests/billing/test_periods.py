"""billing.periods: month arithmetic that clamps and returns to the anchor day, the period
containing a moment (half-open), and exact proration by elapsed time. Every expected value
below is worked out by hand from the calendar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from billing.periods import add_months, period_boundary, period_containing, prorate, utc
from tests.billing.conftest import at


@pytest.mark.parametrize(
    ("moment", "months", "expected"),
    [
        (at(2026, 1, 31), 1, at(2026, 2, 28)),  # clamped to February's last day
        (at(2026, 1, 31), 2, at(2026, 3, 31)),  # back to the 31st
        (at(2026, 1, 31), 3, at(2026, 4, 30)),
        (at(2024, 1, 31), 1, at(2024, 2, 29)),  # leap year
        (at(2024, 2, 29), 12, at(2025, 2, 28)),
        (at(2024, 2, 29), 48, at(2028, 2, 29)),
        (at(2026, 11, 30), 3, at(2027, 2, 28)),  # across the year end
        (at(2026, 12, 15), 1, at(2027, 1, 15)),
        (at(2026, 3, 31), -1, at(2026, 2, 28)),  # backwards
        (at(2026, 1, 15), -1, at(2025, 12, 15)),
        (at(2026, 1, 31, 13, 45), 1, at(2026, 2, 28, 13, 45)),  # the time of day is kept
    ],
)
def test_add_months_clamps_to_the_month_length(moment, months, expected):
    assert add_months(moment, months) == expected


def test_period_boundaries_return_to_the_anchor_day_and_never_drift():
    anchor = at(2026, 1, 31, 9)
    boundaries = [period_boundary(anchor, "month", n) for n in range(7)]
    assert boundaries == [
        at(2026, 1, 31, 9),
        at(2026, 2, 28, 9),
        at(2026, 3, 31, 9),
        at(2026, 4, 30, 9),
        at(2026, 5, 31, 9),
        at(2026, 6, 30, 9),
        at(2026, 7, 31, 9),
    ]
    # Chaining add_months would drift to the 28th; boundaries are always from the anchor.
    assert add_months(add_months(anchor, 1), 1) == at(2026, 3, 28, 9)


def test_yearly_boundaries_from_a_leap_day():
    anchor = at(2024, 2, 29)
    assert [period_boundary(anchor, "year", n) for n in range(5)] == [
        at(2024, 2, 29),
        at(2025, 2, 28),
        at(2026, 2, 28),
        at(2027, 2, 28),
        at(2028, 2, 29),
    ]


@pytest.mark.parametrize(
    ("anchor", "interval", "moment", "expected"),
    [
        # The anchor itself opens the first period.
        (at(2026, 1, 31), "month", at(2026, 1, 31), (at(2026, 1, 31), at(2026, 2, 28))),
        # Half-open: one microsecond before the boundary is still in the first period...
        (
            at(2026, 1, 31),
            "month",
            at(2026, 2, 28) - timedelta(microseconds=1),
            (at(2026, 1, 31), at(2026, 2, 28)),
        ),
        # ... and the boundary itself opens the next.
        (at(2026, 1, 31), "month", at(2026, 2, 28), (at(2026, 2, 28), at(2026, 3, 31))),
        (at(2026, 1, 31), "month", at(2026, 3, 15, 12), (at(2026, 2, 28), at(2026, 3, 31))),
        # The day has come but not the hour: still the previous period.
        (
            at(2026, 1, 31, 23),
            "month",
            at(2026, 3, 31, 22),
            (at(2026, 2, 28, 23), at(2026, 3, 31, 23)),
        ),
        # A day of the month not reached yet in the moment's month.
        (at(2026, 1, 15), "month", at(2026, 3, 10), (at(2026, 2, 15), at(2026, 3, 15))),
        # Years later, still on the anchor day (clamped in 30-day months).
        (at(2020, 1, 31), "month", at(2026, 11, 23), (at(2026, 10, 31), at(2026, 11, 30))),
        (at(2024, 6, 15), "year", at(2025, 3, 1), (at(2024, 6, 15), at(2025, 6, 15))),
        (at(2024, 6, 15), "year", at(2026, 7, 1), (at(2026, 6, 15), at(2027, 6, 15))),
        (at(2024, 2, 29), "year", at(2026, 3, 1), (at(2026, 2, 28), at(2027, 2, 28))),
    ],
)
def test_period_containing(anchor, interval, moment, expected):
    start, end = period_containing(anchor, interval, moment)
    assert (start, end) == expected
    assert start <= moment < end


def test_period_containing_refuses_a_moment_before_the_anchor():
    with pytest.raises(ValueError, match="precedes"):
        period_containing(at(2026, 3, 1), "month", at(2026, 2, 28))


APRIL = (at(2026, 4, 1), at(2026, 5, 1))  # 30 days


def prorate_april(amount: str, used_from: datetime, used_until: datetime) -> Decimal:
    return prorate(
        Decimal(amount),
        used_from=used_from,
        used_until=used_until,
        period_start=APRIL[0],
        period_end=APRIL[1],
    )


@pytest.mark.parametrize(
    ("amount", "used_from", "used_until", "expected"),
    [
        ("30", at(2026, 4, 1), at(2026, 4, 11), "10.000000000000"),  # 10 of 30 days
        ("90", at(2026, 4, 11), at(2026, 5, 1), "60.000000000000"),  # 20 of 30 days
        ("10", at(2026, 4, 1), at(2026, 4, 11), "3.333333333333"),  # 1/3, rounded down
        ("10", at(2026, 4, 11), at(2026, 5, 1), "6.666666666667"),  # 2/3, rounded up
        ("49.99", at(2026, 4, 16), at(2026, 5, 1), "24.995000000000"),  # exactly half
        # Clipped to the period on both sides.
        ("30", at(2026, 3, 1), at(2026, 4, 11), "10.000000000000"),
        ("30", at(2026, 4, 21), at(2026, 6, 1), "10.000000000000"),
        # One hour of a 30-day month: 30 / 720 = 0.041666…, rounded at the 12th place.
        ("30", at(2026, 4, 1), at(2026, 4, 1, 1), "0.041666666667"),
    ],
)
def test_prorate_by_elapsed_time(amount, used_from, used_until, expected):
    result = prorate_april(amount, used_from, used_until)
    assert result == Decimal(expected)
    assert str(result) == expected  # 12 places, exactly


def test_prorate_counts_microseconds_exactly():
    # 30 days = 2,592,000,000,000 µs; an amount of that many units costs 1 per microsecond.
    microseconds = 30 * 24 * 3600 * 10**6
    one = prorate_april(
        str(microseconds), at(2026, 4, 1), at(2026, 4, 1) + timedelta(microseconds=1)
    )
    assert one == Decimal(1)
    seven = prorate_april(
        str(microseconds), at(2026, 4, 20), at(2026, 4, 20) + timedelta(microseconds=7)
    )
    assert seven == Decimal(7)


def test_prorate_rounds_half_even_at_the_twelfth_place():
    two_days = (at(2026, 4, 1), at(2026, 4, 3))

    def half(amount: str) -> Decimal:
        return prorate(
            Decimal(amount),
            used_from=at(2026, 4, 1),
            used_until=at(2026, 4, 2),
            period_start=two_days[0],
            period_end=two_days[1],
        )

    assert half("0.000000000001") == Decimal("0")  # 0.5e-12 → 0 (even)
    assert half("0.000000000003") == Decimal("0.000000000002")  # 1.5e-12 → 2e-12 (even)
    assert half("0.000000000005") == Decimal("0.000000000002")  # 2.5e-12 → 2e-12 (even)
    assert half("0.000000000007") == Decimal("0.000000000004")  # 3.5e-12 → 4e-12 (even)


def test_prorate_whole_period_returns_the_amount_unchanged():
    amount = Decimal("49.123456789012")
    assert (
        prorate(
            amount,
            used_from=APRIL[0],
            used_until=APRIL[1],
            period_start=APRIL[0],
            period_end=APRIL[1],
        )
        is amount
    )


@pytest.mark.parametrize(
    ("used_from", "used_until"),
    [
        (at(2026, 3, 1), at(2026, 4, 1)),  # entirely before (ends where the period starts)
        (at(2026, 5, 1), at(2026, 6, 1)),  # entirely after (starts where it ends)
        (at(2026, 4, 10), at(2026, 4, 10)),  # empty
        (at(2026, 4, 12), at(2026, 4, 10)),  # reversed
    ],
)
def test_prorate_outside_the_period_is_zero(used_from, used_until):
    assert prorate_april("30", used_from, used_until) == Decimal(0)


def test_prorated_parts_of_a_split_period_add_up_for_round_splits():
    fee = Decimal("30")
    parts = [prorate_april("30", at(2026, 4, d), at(2026, 4, d + 5)) for d in (1, 6, 11, 16, 21)]
    parts.append(prorate_april("30", at(2026, 4, 26), at(2026, 5, 1)))
    assert parts == [Decimal("5.000000000000")] * 6
    assert sum(parts) == fee


def test_prorate_a_large_base_fee_within_the_price_field():
    # 1e17 × 10/30 = 33333333333333333.333333333333: 17 + 12 = 29 digits (Price allows 30),
    # more than Python's default 28-digit context holds; ledger.apps widens it to 60.
    assert prorate_april("100000000000000000", at(2026, 4, 1), at(2026, 4, 11)) == Decimal(
        "33333333333333333.333333333333"
    )


def test_utc_converts_aware_and_refuses_naive_times():
    paris = timezone(timedelta(hours=2))
    assert utc(datetime(2026, 4, 1, 2, tzinfo=paris)) == datetime(2026, 4, 1, tzinfo=UTC)
    assert utc(datetime(2026, 4, 1, 2, tzinfo=paris)).utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="timezone-aware"):
        utc(datetime(2026, 4, 1))
