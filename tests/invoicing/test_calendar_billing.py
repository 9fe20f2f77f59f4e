"""Intervals and calendar anchors invoiced: each period closed (once), its base fee, minimum
and prorated usage charge against figures worked out by hand in the comments (and in
docs/pricing-file.md). A first period shortened by a calendar anchor (a stub) is prorated
by day over the whole period it is part of, its first day counted in full; usage in it is
rated as usual. Boundaries: a one-day period, a 31st anchor in a 30-day month and in
February (2027 not leap, 2028 leap), a plan change on a period's last day.

1 April 2026 is a Wednesday; January has 31 days."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services as billing
from invoicing import services as invoicing
from invoicing.selectors import compute_invoice
from metering.models import PeriodUsage
from tests.invoicing.conftest import (
    ChargeSpec,
    TierSpec,
    at,
    close,
    lines,
    meter,
    plan,
    subscribe,
    use,
)
from tests.invoicing.test_pricing_shapes import upcoming_agrees

pytestmark = pytest.mark.django_db
D = Decimal


def calendar_plan(*charges, day=1, interval="month", **kw):
    return plan(*charges, billing_time="calendar", billing_anchor_day=day, interval=interval, **kw)


def calls(**kw) -> ChargeSpec:
    return ChargeSpec(meter=meter(name="Calls"), unit_price=D("0.10"), **kw)


# --- a calendar stub, prorated by day ----------------------------------------------------------


def test_a_mid_month_start_pays_a_prorated_first_period_then_whole_months():
    """Start 15 January 09:30, anchor day 1: the stub 15 Jan – 1 Feb counts 17 of January's
    31 days (the 15th in full): 49.00 × 17 / 31 = 833 / 31 = 26.870967741935…"""
    subscription = subscribe(calendar_plan(base_fee="49"), start=at(2026, 1, 15, 9, 30))
    assert (subscription.current_period_start, subscription.current_period_end) == (
        at(2026, 1, 15, 9, 30),
        at(2026, 2, 1),
    )
    first = close(subscription, as_of=at(2026, 2, 1))
    assert (first.period_start, first.period_end) == (at(2026, 1, 15, 9, 30), at(2026, 2, 1))
    assert lines(first) == [
        ("base_fee", "Pro — base fee, prorated 2026-01-15 to 2026-02-01", D(1), D("26.87")),
    ]
    assert first.lines.get().amount_precise == D("26.870967741935")
    upcoming_agrees(subscription, first)
    subscription.refresh_from_db()
    assert (subscription.current_period_start, subscription.current_period_end) == (
        at(2026, 2, 1),
        at(2026, 3, 1),
    )
    second = close(subscription, as_of=at(2026, 3, 1))
    assert lines(second) == [("base_fee", "Pro — base fee", D(1), D(49))]


def test_usage_in_the_stub_is_rated_as_usual_and_prorated_when_the_charge_says_so():
    """100 calls × 0.10 = 10.00 rated in the stub; the prorated charge invoices
    10 × 17 / 31 = 5.483870967742, so a line of −4.516129032258 (−4.52)."""
    plain = subscribe(calendar_plan(calls()), start=at(2026, 1, 15, 9, 30))
    use(plain, 100, at_time=at(2026, 1, 20))
    invoice = close(plain, as_of=at(2026, 2, 1))
    assert lines(invoice) == [("usage", "Calls", D(100), D(10))]

    prorated = subscribe(calendar_plan(calls(prorated=True)), start=at(2026, 1, 15, 9, 30))
    use(prorated, 100, at_time=at(2026, 1, 20))
    invoice = close(prorated, as_of=at(2026, 2, 1))
    assert lines(invoice) == [
        ("usage", "Calls", D(100), D(10)),
        ("usage", "Calls, prorated: billed 2026-01-15 to 2026-02-01", D(0), D("-4.52")),
    ]
    assert invoice.lines.get(amount__lt=0).amount_precise == D("-4.516129032258")
    assert invoice.total == D("5.48")
    upcoming_agrees(prorated, invoice)


@pytest.mark.parametrize("used", [0, 1])
def test_a_flat_fee_at_zero_usage_is_prorated_over_the_stub(used):
    """Stub 15 January – 1 February, 17 of 31 days: a prorated charge's first-tier flat fee
    31.00 (charged at zero usage) → 17.00 whether or not a seat was used."""
    seats = ChargeSpec(
        meter=meter(name="Seats"),
        price_model="graduated",
        tiers=(TierSpec(up_to=None, unit_price=D(0), flat_fee=D(31)),),
        prorated=True,
        flat_fee_at_zero=True,
    )
    subscription = subscribe(calendar_plan(seats), start=at(2026, 1, 15, 9, 30))
    if used:
        use(subscription, used, at_time=at(2026, 1, 20))
    invoice = close(subscription, as_of=at(2026, 2, 1))
    assert invoice.total == D(17)
    assert lines(invoice)[-1] == (
        "usage",
        "Seats, prorated: billed 2026-01-15 to 2026-02-01",
        D(0),
        D(-14),
    )
    upcoming_agrees(subscription, invoice)


def test_a_minimum_is_prorated_over_the_stub_as_the_fee_is():
    """Minimum 31.00 a month, no usage: 17 / 31 of it, 17.00, is owed for the stub."""
    subscription = subscribe(
        calendar_plan(calls(), minimum_amount=D(31)), start=at(2026, 1, 15, 9, 30)
    )
    invoice = close(subscription, as_of=at(2026, 2, 1))
    assert lines(invoice) == [
        (
            "minimum",
            "Pro — minimum 31 USD per period, prorated 2026-01-15 to 2026-02-01, shortfall",
            D(1),
            D(17),
        )
    ]


def test_a_start_on_the_anchor_day_after_midnight_is_a_whole_period():
    """Start 1 February 09:30, anchor day 1: its first day counts in full, so February is
    billed whole — the full fee, no "prorated" in its description, no 0.00 proration line
    for a prorated charge, a minimum's shortfall not called prorated."""
    subscription = subscribe(
        calendar_plan(calls(prorated=True), base_fee="49", minimum_amount=D(100)),
        start=at(2026, 2, 1, 9, 30),
    )
    use(subscription, 100, at_time=at(2026, 2, 10))
    invoice = close(subscription, as_of=at(2026, 3, 1))
    assert lines(invoice) == [
        ("base_fee", "Pro — base fee", D(1), D(49)),
        ("usage", "Calls", D(100), D(10)),
        ("minimum", "Pro — minimum 100 USD per period, shortfall", D(1), D(41)),
    ]
    upcoming_agrees(subscription, invoice)


# --- a cancellation inside a stub: by day at both ends -------------------------------------------


def cancel_and_compute(subscription, now):
    billing.cancel_subscription(subscription_id=subscription.pk, now=now)
    subscription.refresh_from_db()
    return compute_invoice(
        subscription=subscription,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
    )


def test_a_cancel_on_the_first_day_of_a_stub_bills_that_day():
    """Start 15 January 09:30, canceled at 09:31: the 15th counts in full (1 of 31 days),
    31.00 → 1.00 — not 9 h 31 min from midnight by time (0.40)."""
    subscription = subscribe(calendar_plan(base_fee="31"), start=at(2026, 1, 15, 9, 30))
    invoice = cancel_and_compute(subscription, at(2026, 1, 15, 9, 31))
    assert invoice.total == D("1.00")
    assert [ln.amount_precise for ln in invoice.lines] == [D(1)]


def test_a_cancel_inside_a_stub_bills_whole_days_for_fees_minimums_and_prorated_charges():
    """Start 15 January 09:30, canceled 20 January 10:00: 15–20 January, 6 of 31 days.
    Base fee 31.00 → 6.00; 62 calls at 0.50 = 31.00 rated, prorated → 6.00 (a −25.00 line);
    a minimum of 93.00 → 18.00, against 12.00 billed: a 6.00 shortfall."""
    subscription = subscribe(
        calendar_plan(
            ChargeSpec(meter=meter(name="Calls"), unit_price=D("0.50"), prorated=True),
            base_fee="31",
            minimum_amount=D(93),
        ),
        start=at(2026, 1, 15, 9, 30),
    )
    use(subscription, 62, at_time=at(2026, 1, 16))
    invoice = cancel_and_compute(subscription, at(2026, 1, 20, 10))
    assert [(ln.description, ln.amount_precise) for ln in invoice.lines] == [
        ("Pro — base fee, prorated 2026-01-15 to 2026-01-20", D(6)),
        ("Calls", D(31)),
        ("Calls, prorated: billed 2026-01-15 to 2026-01-20", D(-25)),
        ("Pro — minimum 93 USD per period, prorated 2026-01-15 to 2026-01-20, shortfall", D(6)),
    ]
    assert invoice.total == D(18)
    # what the portal and the plan change say of the period's fee: the same 6 days
    proration = billing.base_fee_proration(subscription=subscription)
    assert [line.amount for line in proration] == [D(6)]


def test_anchor_day_31_in_a_30_day_month():
    """Start 15 April, day 31: the stub ends on 30 April, part of 31 March – 30 April (30
    days), 15 days billed: 30.00 × 15 / 30 = 15.00; then 30 April – 31 May in full."""
    subscription = subscribe(calendar_plan(base_fee="30", day=31), start=at(2026, 4, 15, 9, 30))
    first = close(subscription, as_of=at(2026, 4, 30))
    assert first.period_end == at(2026, 4, 30)
    assert lines(first)[0][3] == D(15)
    second = close(subscription, as_of=at(2026, 5, 31))
    assert (second.period_start, second.period_end) == (at(2026, 4, 30), at(2026, 5, 31))
    assert lines(second) == [("base_fee", "Pro — base fee", D(1), D(30))]


@pytest.mark.parametrize(
    ("year", "fee", "february_end", "expected"),
    [
        # 2027: 31 Jan – 28 Feb is 28 days; 10–28 Feb is 18: 28.00 × 18 / 28 = 18.00
        (2027, "28", at(2027, 2, 28), D(18)),
        # 2028 (leap): 31 Jan – 29 Feb is 29 days; 10–29 Feb is 19: 29.00 × 19 / 29 = 19.00
        (2028, "29", at(2028, 2, 29), D(19)),
    ],
)
def test_anchor_day_31_in_february(year, fee, february_end, expected):
    subscription = subscribe(calendar_plan(base_fee=fee, day=31), start=at(year, 2, 10))
    first = close(subscription, as_of=february_end)
    assert (first.period_start, first.period_end) == (at(year, 2, 10), february_end)
    assert lines(first)[0][3] == expected
    subscription.refresh_from_db()
    assert subscription.current_period_end == at(year, 3, 31)  # back to the 31st


def test_a_calendar_week_from_a_wednesday():
    """Weekly on Mondays, start Wednesday 15 April 13:00: the stub to Monday 20 April counts
    5 of 7 days (the 15th in full): 7.00 × 5 / 7 = 5.00."""
    subscription = subscribe(
        calendar_plan(base_fee="7", interval="week", day=1), start=at(2026, 4, 15, 13)
    )
    first = close(subscription, as_of=at(2026, 4, 20))
    assert first.period_end == at(2026, 4, 20)
    assert lines(first)[0][3] == D(5)
    subscription.refresh_from_db()
    assert subscription.current_period_end == at(2026, 4, 27)


def test_a_calendar_quarter():
    """Quarters from 1 January; start 16 May: the stub to 1 July is part of 1 April – 1 July
    (30 + 31 + 30 = 91 days), 16 + 30 = 46 days billed: 91.00 × 46 / 91 = 46.00."""
    subscription = subscribe(
        calendar_plan(base_fee="91", interval="quarter", day=1), start=at(2026, 5, 16)
    )
    first = close(subscription, as_of=at(2026, 7, 1))
    assert lines(first)[0][3] == D(46)
    subscription.refresh_from_db()
    assert subscription.current_period_end == at(2026, 10, 1)


def test_a_calendar_year_from_march_of_a_leap_year():
    """2028 has 366 days; 1 March – 1 January 2029 is 366 − 31 − 29 = 306 of them."""
    subscription = subscribe(
        calendar_plan(base_fee="366", interval="year", day=1), start=at(2028, 3, 1)
    )
    first = close(subscription, as_of=at(2029, 1, 1))
    assert lines(first)[0][3] == D(306)


def test_a_trial_then_a_calendar_stub():
    """Trial 10–17 January (free), then 17 January – 1 February: 15 of 31 days of 31.00."""
    subscription = subscribe(calendar_plan(base_fee="31"), start=at(2026, 1, 10), trial_days=7)
    trial = close(subscription, as_of=at(2026, 1, 17))
    assert (trial.period_start, trial.period_end, trial.total) == (
        at(2026, 1, 10),
        at(2026, 1, 17),
        D(0),
    )
    stub = close(subscription, as_of=at(2026, 2, 1))
    assert (stub.period_start, stub.period_end) == (at(2026, 1, 17), at(2026, 2, 1))
    assert lines(stub) == [
        ("base_fee", "Pro — base fee, prorated 2026-01-17 to 2026-02-01", D(1), D(15)),
    ]


# --- intervals from the subscription's start ------------------------------------------------


def test_a_one_day_period():
    """Daily from 1 April 10:00: usage at 20:00 is the first day's; usage at 10:00 on the 2nd
    (the boundary, half-open) is the second day's, even when rated before the close."""
    subscription = subscribe(plan(calls(), base_fee="1", interval="day"), start=at(2026, 4, 1, 10))
    use(subscription, 100, at_time=at(2026, 4, 1, 20))
    use(subscription, 30, at_time=at(2026, 4, 2, 10))
    assert sorted(PeriodUsage.objects.values_list("period_start", "quantity")) == [
        (at(2026, 4, 1, 10), D(100)),
        (at(2026, 4, 2, 10), D(30)),
    ]
    first = close(subscription, as_of=at(2026, 4, 2, 10))
    assert (first.period_start, first.period_end) == (at(2026, 4, 1, 10), at(2026, 4, 2, 10))
    assert lines(first) == [
        ("base_fee", "Pro — base fee", D(1), D(1)),
        ("usage", "Calls", D(100), D(10)),
    ]
    second = close(subscription, as_of=at(2026, 4, 3, 10))
    assert (second.period_start, second.period_end) == (at(2026, 4, 2, 10), at(2026, 4, 3, 10))
    assert lines(second) == [
        ("base_fee", "Pro — base fee", D(1), D(1)),
        ("usage", "Calls", D(30), D(3)),
    ]


@pytest.mark.parametrize(
    ("interval", "count", "start", "ends"),
    [
        ("week", 2, at(2026, 4, 1), [at(2026, 4, 15), at(2026, 4, 29)]),
        ("day", 3, at(2026, 4, 1), [at(2026, 4, 4), at(2026, 4, 7)]),
        ("quarter", 1, at(2026, 1, 31), [at(2026, 4, 30), at(2026, 7, 31)]),
        ("month", 2, at(2026, 12, 31), [at(2027, 2, 28), at(2027, 4, 30)]),
        ("year", 2, at(2026, 3, 1), [at(2028, 3, 1), at(2030, 3, 1)]),
    ],
)
def test_every_interval_closes_on_its_boundaries(interval, count, start, ends):
    subscription = subscribe(
        plan(base_fee="10", interval=interval, interval_count=count), start=start
    )
    assert subscription.current_period_end == ends[0]
    first = close(subscription, as_of=ends[0])
    second = close(subscription, as_of=ends[1])
    assert [(i.period_start, i.period_end) for i in (first, second)] == [
        (start, ends[0]),
        (ends[0], ends[1]),
    ]
    assert first.total == second.total == D(10)  # whole periods: the whole fee


def test_a_plan_change_on_the_last_day_of_a_week():
    """Weekly from Monday 6 April: Basic 7.00 until Sunday 12 April 00:00 (6 days: 6.00),
    Plus 14.00 for the last day (1/7: 2.00)."""
    basic = plan(base_fee="7", interval="week", name="Basic", code="basic")
    plus = plan(base_fee="14", interval="week", name="Plus", code="plus")
    subscription = subscribe(basic, start=at(2026, 4, 6))
    billing.change_subscription(subscription_id=subscription.pk, plan=plus, now=at(2026, 4, 12))
    invoice = close(subscription, as_of=at(2026, 4, 13))
    assert lines(invoice) == [
        ("base_fee", "Basic — base fee, prorated 2026-04-06 to 2026-04-12", D(1), D(6)),
        ("base_fee", "Plus — base fee, prorated 2026-04-12 to 2026-04-13", D(1), D(2)),
    ]


def test_a_plan_change_on_the_last_day_of_a_calendar_stub():
    """Stub 15 January – 1 February (17 of 31 days): Basic 31.00 for 16 days (16.00), Plus
    62.00 from 31 January (1 day: 2.00)."""
    basic = calendar_plan(base_fee="31", name="Basic", code="basic")
    plus = calendar_plan(base_fee="62", name="Plus", code="plus")
    subscription = subscribe(basic, start=at(2026, 1, 15, 9, 30))
    billing.change_subscription(subscription_id=subscription.pk, plan=plus, now=at(2026, 1, 31))
    invoice = close(subscription, as_of=at(2026, 2, 1))
    assert lines(invoice) == [
        ("base_fee", "Basic — base fee, prorated 2026-01-15 to 2026-01-31", D(1), D(16)),
        ("base_fee", "Plus — base fee, prorated 2026-01-31 to 2026-02-01", D(1), D(2)),
    ]


def test_a_stub_is_closed_exactly_once():
    subscription = subscribe(calendar_plan(base_fee="49"), start=at(2026, 1, 15, 9, 30))
    assert invoicing.close_due_periods(as_of=at(2026, 2, 1)) == 1
    assert invoicing.close_due_periods(as_of=at(2026, 2, 1)) == 0
    again = invoicing.close_period(subscription_id=subscription.pk, as_of=at(2026, 2, 1))
    assert again is None  # the subscription has moved on to February, not due yet
    assert subscription.invoices.count() == 1
    # catching up two periods at once: February, then March — one invoice each
    assert invoicing.close_due_periods(as_of=at(2026, 4, 1)) == 2
    assert invoicing.close_due_periods(as_of=at(2026, 4, 1)) == 0
    assert [
        (i.period_start, i.period_end) for i in subscription.invoices.order_by("period_start")
    ] == [
        (at(2026, 1, 15, 9, 30), at(2026, 2, 1)),
        (at(2026, 2, 1), at(2026, 3, 1)),
        (at(2026, 3, 1), at(2026, 4, 1)),
    ]


def test_mrr_brings_every_cadence_to_a_month():
    """Weekly 12.00 × 52 / 12 = 52; every 2 weeks 24.00 × 52 / 24 = 52; quarterly 300 / 3 =
    100; every 6 months 600 / 6 = 100; daily 12.00 × 365 / 12 = 365: 669 a month."""
    from invoicing import finance

    for fee, interval, count in [
        ("12", "week", 1),
        ("24", "week", 2),
        ("300", "quarter", 1),
        ("600", "month", 6),
        ("12", "day", 1),
    ]:
        subscribe(plan(base_fee=fee, interval=interval, interval_count=count), start=at(2026, 1, 1))
    now, before = at(2026, 1, 20), at(2025, 12, 1)
    assert finance.mrr(now=now, before=before)["USD"] == (D(669), D(0))
