"""Billing periods and proration: pure, exact functions.

Periods are half-open UTC intervals [start, end). Period *n* of a subscription starts at
``anchor + n × count intervals``, always computed from the anchor (never by adding to the
previous period), so a 31st-of-the-month anchor gives Jan 31, Feb 28 (or 29), Mar 31, Apr 30
… and never drifts to the 28th.

Intervals: ``day`` and ``week`` are whole days (UTC has no daylight saving), ``month``,
``quarter`` (3 months) and ``year`` (12 months) are month arithmetic that clamps to the
month's length; a plan bills every ``count`` of them (``interval_count``).

The anchor is where periods are counted from. Billed from the subscription's start
(``anniversary``, the default) it is the start, or the end of a trial. Billed on the
calendar (``calendar_anchor``) it is a calendar boundary at or before the first billed
moment, carrying the anchor day itself (a 31 is kept as 31: the January of the year), and
the subscription's first period runs from its start to the next boundary — a *stub*,
whose fees are prorated by day over the whole period it is part of (``whole_period``),
its first day and the day it ends in (a cancellation) counted in full (``fee_span``).
``subscription_period`` is the one function that says which period of a subscription a
moment lies in; the rating, the close, the upcoming invoice, the portal and budgets use it.

A plan may bill its usage charges on a finer cadence than itself (``charges_interval``:
a yearly plan's usage every month). A subscription's billing periods are then the charge
periods, counted from the same anchor (``charge_cadence``; the cadence divides the plan's
period, so every plan boundary is a charge boundary); the plan's own period (``plan_period
_of``) is what the base fee is per, invoiced on the charge period that closes it
(``closes_plan_period``). A charge may have a cadence of its own, a whole multiple of the
billing period from the same anchor (``PlanCharge.interval``): its periods are
``subscription_period`` on that cadence, its fees prorated over them (``cadence=``), and it
is invoiced with the billing period that ends one, or that the subscription ends with
(``ends_with``; ``invoicing.charge_periods``).

Proration is by elapsed time: ``amount × time used / time in the period``, counted in
integer microseconds. The quotient is kept to 12 decimal places, rounded half-even (the
ledger's precision); presentation rounds to the currency's minor unit once, elsewhere.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from billing.models import Plan, Subscription

MONTHS_PER_INTERVAL = {"month": 1, "quarter": 3, "year": 12}
DAYS_PER_INTERVAL = {"day": 1, "week": 7}
INTERVALS = ("day", "week", "month", "quarter", "year")
# The most of each interval a period may last: five years, whatever the unit.
MAX_INTERVAL_COUNT = {"day": 1826, "week": 260, "month": 60, "quarter": 20, "year": 5}
MICROSECOND = timedelta(microseconds=1)
DAY = timedelta(days=1)
PRORATION_QUANTUM = Decimal("1e-12")


def add_months(moment: datetime, months: int) -> datetime:
    """``moment`` moved by whole months, the day clamped to the target month's length."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def period_boundary(anchor: datetime, interval: str, n: int, count: int = 1) -> datetime:
    """The start of period ``n`` (the anchor opens period 0) of ``count`` × ``interval``."""
    if interval in DAYS_PER_INTERVAL:
        return anchor + n * count * DAYS_PER_INTERVAL[interval] * DAY
    return add_months(anchor, n * count * MONTHS_PER_INTERVAL[interval])


def period_index(anchor: datetime, interval: str, moment: datetime, count: int = 1) -> int:
    """n such that period n from the anchor contains ``moment`` (not before the anchor)."""
    if moment < anchor:
        raise ValueError("moment precedes the billing anchor")
    if interval in DAYS_PER_INTERVAL:
        n = (moment - anchor) // (count * DAYS_PER_INTERVAL[interval] * DAY)
    else:
        step = MONTHS_PER_INTERVAL[interval] * count
        months = (moment.year - anchor.year) * 12 + (moment.month - anchor.month)
        n = max(months // step - 1, 0)  # start one period early: day/time may not have come
    while period_boundary(anchor, interval, n + 1, count) <= moment:
        n += 1
    return n


def period_containing(
    anchor: datetime, interval: str, moment: datetime, count: int = 1
) -> tuple[datetime, datetime]:
    """The period [start, end) that contains ``moment`` (which must not precede ``anchor``)."""
    n = period_index(anchor, interval, moment, count)
    return period_boundary(anchor, interval, n, count), period_boundary(
        anchor, interval, n + 1, count
    )


def midnight(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def calendar_anchor(*, interval: str, anchor_day: int | None, first: datetime) -> datetime:
    """The calendar boundary a subscription billed on the calendar counts its periods from:
    at or before ``first`` (its start, or its trial's end), at midnight UTC.

    day: that day. week: the last ``anchor_day`` (ISO weekday, Monday 1) on or before it.
    month, quarter, year: the ``anchor_day`` of January of its year (of the year before when
    that is still ahead), so that quarters fall in January, April, July and October, years
    in January, and a 31 stays a 31 (clamped month by month, never drifting)."""
    day = midnight(first)
    if interval == "day":
        return day
    if interval == "week":
        return day - (day.isoweekday() - (anchor_day or 1)) % 7 * DAY
    anchor = day.replace(month=1, day=anchor_day or 1)
    return anchor if anchor <= first else anchor.replace(year=anchor.year - 1)


def subscription_period(
    *,
    anchor: datetime,
    interval: str,
    count: int,
    started_at: datetime,
    trial_ends_at: datetime | None,
    at: datetime,
) -> tuple[datetime, datetime]:
    """The period of a subscription that ``at`` (not before its start) lies in: its trial,
    or the period from the anchor containing it — the first one begun at the start (or the
    trial's end) when a calendar anchor precedes them."""
    if trial_ends_at is not None and at < trial_ends_at:
        return started_at, trial_ends_at
    start, end = period_containing(anchor, interval, at, count)
    return max(start, started_at, trial_ends_at or start), end


def whole_period(
    *,
    anchor: datetime,
    interval: str,
    count: int,
    period_start: datetime,
    period_end: datetime,
) -> tuple[datetime, datetime]:
    """The whole period [start, end) that a period is part of, which fees are prorated
    over: the period itself, or, for a first period begun after a calendar boundary (a
    stub), the whole period it ends. A trial is its own whole."""
    if period_start < anchor:
        return period_start, period_end
    start, end = period_containing(anchor, interval, period_start, count)
    return (start, end) if end == period_end else (period_start, period_end)


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


def period_months_or_days(interval: str, count: int) -> tuple[str, int]:
    """A cadence as whole months (month, quarter, year) or whole days (day, week)."""
    if interval in MONTHS_PER_INTERVAL:
        return "months", MONTHS_PER_INTERVAL[interval] * count
    return "days", DAYS_PER_INTERVAL[interval] * count


def charge_cadence(plan: Plan) -> tuple[str, int]:
    """(interval, count) of a plan's billing periods: its usage charges' cadence
    (``charges_interval`` × ``charges_interval_count``), else its own interval."""
    if plan.charges_interval:
        return plan.charges_interval, plan.charges_interval_count
    return plan.interval, plan.interval_count


def _cadence(
    subscription: Subscription, per_plan: bool, cadence: tuple[str, int] | None = None
) -> tuple[str, int]:
    if cadence is not None:  # a charge's own (PlanCharge.interval × interval_count)
        return cadence
    plan = subscription.plan
    return (plan.interval, plan.interval_count) if per_plan else charge_cadence(plan)


def period_of(subscription: Subscription, at: datetime) -> tuple[datetime, datetime]:
    """``subscription_period`` of a subscription: its billing (charge) period at ``at``
    (its plan's cadence: a plan change never moves it)."""
    interval, count = charge_cadence(subscription.plan)
    return subscription_period(
        anchor=subscription.billing_anchor,
        interval=interval,
        count=count,
        started_at=subscription.started_at,
        trial_ends_at=subscription.trial_ends_at,
        at=at,
    )


def plan_period_of(subscription: Subscription, at: datetime) -> tuple[datetime, datetime]:
    """The plan's own period at ``at`` (what the base fee is per): the billing period
    itself unless the plan bills its charges on a finer cadence."""
    plan = subscription.plan
    return subscription_period(
        anchor=subscription.billing_anchor,
        interval=plan.interval,
        count=plan.interval_count,
        started_at=subscription.started_at,
        trial_ends_at=subscription.trial_ends_at,
        at=at,
    )


def ends_with(subscription: Subscription, period_start: datetime, period_end: datetime) -> bool:
    """Whether the subscription ends in the billing period [period_start, period_end): it
    ended in it, or is canceled at the end of the plan period this one closes."""
    ended_at = subscription.ended_at
    if ended_at is not None and ended_at <= period_end:
        return True
    return bool(subscription.cancel_at_period_end) and (
        plan_period_of(subscription, period_start)[1] == period_end
    )


def closes_plan_period(
    subscription: Subscription, period_start: datetime, period_end: datetime
) -> bool:
    """Whether the billing period [period_start, period_end) is the last of its plan period:
    it ends with it, or the subscription ends in it (its last period)."""
    ended_at = subscription.ended_at
    if ended_at is not None and ended_at <= period_end:
        return True
    return plan_period_of(subscription, period_start)[1] == period_end


def whole_period_of(
    subscription: Subscription,
    period_start: datetime,
    period_end: datetime,
    *,
    per_plan: bool = False,
    cadence: tuple[str, int] | None = None,
) -> tuple[datetime, datetime]:
    """``whole_period`` of one of the subscription's billing periods, or (``per_plan``) of
    one of its plan periods, or (``cadence``) of one of a charge's own periods."""
    interval, count = _cadence(subscription, per_plan, cadence)
    return whole_period(
        anchor=subscription.billing_anchor,
        interval=interval,
        count=count,
        period_start=period_start,
        period_end=period_end,
    )


def fee_span(
    subscription: Subscription,
    *,
    used_from: datetime,
    used_until: datetime,
    period_start: datetime,
    period_end: datetime,
    per_plan: bool = False,
    cadence: tuple[str, int] | None = None,
) -> tuple[datetime, datetime, datetime, datetime]:
    """What a fee for [used_from, used_until) of one of the subscription's periods is charged
    for, and over what: ``(from, until, whole_start, whole_end)``.

    A period that is its own whole (an anniversary period, a calendar period begun on its
    boundary, a trial) is charged by time. A first period shortened by a calendar anchor (a
    stub) is charged by day over the whole period it is part of — one rule at both ends:
    its first day counts in full (from midnight, whatever the hour of the start), and so does
    the day the subscription ends in (to the next midnight). A plan change inside the period
    splits it where it happened, so its parts still add up to the whole."""
    whole_start, whole_end = whole_period_of(
        subscription, period_start, period_end, per_plan=per_plan, cadence=cadence
    )
    if (whole_start, whole_end) != (period_start, period_end):
        if used_from <= period_start:
            used_from = midnight(period_start)
        ended_at = subscription.ended_at
        if ended_at is not None and ended_at <= used_until < period_end:
            last_day = midnight(used_until)
            used_until = min(last_day if last_day == used_until else last_day + DAY, whole_end)
    return used_from, used_until, whole_start, whole_end


def covers_whole_period(
    subscription: Subscription,
    *,
    used_from: datetime,
    used_until: datetime,
    period_start: datetime,
    period_end: datetime,
    per_plan: bool = False,
    cadence: tuple[str, int] | None = None,
) -> bool:
    """Whether a fee for [used_from, used_until) is the whole fee, by ``fee_span``'s rule (a
    calendar start on its anchor day after midnight bills its first period whole)."""
    start, end, whole_start, whole_end = fee_span(
        subscription,
        used_from=used_from,
        used_until=used_until,
        period_start=period_start,
        period_end=period_end,
        per_plan=per_plan,
        cadence=cadence,
    )
    return start <= whole_start and end >= whole_end


def prorate_fee(
    subscription: Subscription,
    amount: Decimal,
    *,
    used_from: datetime,
    used_until: datetime,
    period_start: datetime,
    period_end: datetime,
    per_plan: bool = False,
    cadence: tuple[str, int] | None = None,
) -> Decimal:
    """A fee (base fee, minimum, prorated charge, a first tier's flat fee at zero usage) for
    [used_from, used_until) of one of the subscription's periods (``fee_span``): by time
    over the period — or, in a first period shortened by a calendar anchor, by day over the
    whole period it is part of (17 of January's 31 days for a start on the 15th, whatever the
    hour; 1 day for a cancellation on that same day)."""
    start, end, whole_start, whole_end = fee_span(
        subscription,
        used_from=used_from,
        used_until=used_until,
        period_start=period_start,
        period_end=period_end,
        per_plan=per_plan,
        cadence=cadence,
    )
    return prorate(
        amount, used_from=start, used_until=end, period_start=whole_start, period_end=whole_end
    )


def utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC)
