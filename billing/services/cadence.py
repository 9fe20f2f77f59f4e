"""Cadences a plan is billed on, checked: its own interval and anchor
(``validate_billing_cadence``), its usage charges' cadence (``validate_charges_cadence``,
the plan's ``charges_interval``) and a charge's own cadence (``validate_charge_cadences``,
Orb's per-price cadence). One set of rules for the pricing file, the API and the admin
(``validate_plan_spec`` runs them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from billing import errors
from billing.models import BillingTime, ConsumptionModel, Interval
from billing.periods import MAX_INTERVAL_COUNT, period_months_or_days

if TYPE_CHECKING:
    from billing.services.plans import PlanSpec


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_billing_cadence(
    *, interval: str, interval_count: int, billing_time: str, billing_anchor_day: int | None
) -> None:
    """A plan's interval and where periods are counted from; a subscription choosing its own
    billing time (``create_subscription``) is checked by the same rules."""
    if interval not in Interval.values:
        raise errors.ValidationFailed(
            f"interval must be one of {', '.join(Interval.values)}", param="interval"
        )
    most = MAX_INTERVAL_COUNT[interval]
    if not _whole(interval_count) or not 1 <= interval_count <= most:
        raise errors.ValidationFailed(
            f"interval_count must be a whole number from 1 to {most} for interval {interval} "
            "(a period lasts at most five years)",
            param="interval_count",
        )
    if billing_time not in BillingTime.values:
        raise errors.ValidationFailed(
            f"billing_time must be one of {', '.join(BillingTime.values)}", param="billing_time"
        )
    if billing_anchor_day is None:
        return
    if billing_time != BillingTime.CALENDAR:
        raise errors.ValidationFailed(
            "billing_anchor_day applies to billing_time: calendar only", param="billing_anchor_day"
        )
    if interval == Interval.DAY:
        raise errors.ValidationFailed(
            "a daily plan billed on the calendar starts its periods at midnight UTC; it has "
            "no billing_anchor_day",
            param="billing_anchor_day",
        )
    days, what = (
        (7, "an ISO weekday, 1 (Monday) to 7 (Sunday)")
        if interval == Interval.WEEK
        else (
            31,
            "a day of the month, 1 to 31 (clamped to the month's last day)",
        )
    )
    if not _whole(billing_anchor_day) or not 1 <= billing_anchor_day <= days:
        raise errors.ValidationFailed(
            f"billing_anchor_day for interval {interval} is {what}", param="billing_anchor_day"
        )


def validate_charges_cadence(spec: PlanSpec) -> None:
    """The usage charges' cadence (``charges_interval`` × ``charges_interval_count``): left
    out, the plan's own; else strictly shorter than the plan's period and dividing it evenly,
    in the same kind of unit — months (month, quarter, year) or days (day, week) — so that
    every plan period is a whole number of charge periods counted from the same anchor (a
    yearly plan: monthly or quarterly usage; a 4-week plan: weekly; never weekly usage on a
    monthly plan, whose months are not whole weeks). Refused otherwise, with
    ``charges_interval_misaligned``. For metered plans without a plan minimum or commitment
    (those are per plan period, and a charge period's invoice cannot tell what the rest of
    the plan period will draw): refused with ``invalid_parameter``."""
    interval, count = spec.charges_interval, spec.charges_interval_count
    if not interval:
        if count != 1:
            raise errors.ValidationFailed(
                "charges_interval_count applies with a charges_interval", param="charges_interval"
            )
        return
    if interval not in Interval.values:
        raise errors.ValidationFailed(
            f"charges_interval must be one of {', '.join(Interval.values)} (or left out: the "
            "plan's own interval)",
            param="charges_interval",
        )
    most = MAX_INTERVAL_COUNT[interval]
    if not _whole(count) or not 1 <= count <= most:
        raise errors.ValidationFailed(
            f"charges_interval_count must be a whole number from 1 to {most} for "
            f"charges_interval {interval}",
            param="charges_interval_count",
        )
    if spec.interval not in Interval.values:
        return  # refused by validate_billing_cadence
    plan_unit, plan_length = period_months_or_days(spec.interval, spec.interval_count)
    unit, length = period_months_or_days(interval, count)
    every = f"every {count} {interval}" if count != 1 else f"every {interval}"
    per = f"{spec.interval_count} {spec.interval}" if spec.interval_count != 1 else spec.interval
    if unit != plan_unit or plan_length % length:
        raise errors.ChargesIntervalMisaligned(
            f"usage charges billed {every} do not divide the plan's period ({per}) evenly; "
            "the charges' period must be a whole fraction of the plan's, in months for "
            "month, quarter and year plans, in days for day and week plans",
            param="charges_interval",
        )
    if length == plan_length:
        raise errors.ValidationFailed(
            f"usage charges billed {every} are the plan's own period; leave charges_interval out",
            param="charges_interval",
        )
    if spec.consumption_model != ConsumptionModel.METERED:
        raise errors.ValidationFailed(
            "charges_interval applies to metered plans (a balance or credits plan's usage is "
            "paid as it is rated, not invoiced per period)",
            param="charges_interval",
        )
    for name in ("minimum_amount", "commitment_amount"):
        if getattr(spec, name) is not None:
            raise errors.ValidationFailed(
                f"a plan with a charges_interval has no {name}: it is owed per plan period, "
                "and each charge period is invoiced on its own (charge minimums may stay: "
                "they are per charge period)",
                param=name,
            )


def _every(interval: str, count: int) -> str:
    return f"every {count} {interval}" if count != 1 else f"every {interval}"


def validate_charge_cadences(spec: PlanSpec) -> None:
    """A charge's own cadence (``interval`` × ``interval_count``; left out: billed every
    billing period, as today). The billing period is the plan's charges' cadence
    (``billing.periods.charge_cadence``: ``charges_interval``, else the plan's interval).
    A charge's period must be a whole multiple of it, longer than it, in the same kind of
    unit — months (month, quarter, year) or days (day, week) — counted from the same anchor,
    so that every charge period is a union of billing periods and ends with one of them (a
    monthly plan: GPU hours quarterly; a yearly plan billed monthly: quarterly too; never
    monthly on a weekly plan, whose weeks do not make months). It may be shorter or longer
    than the plan's own period. Equal to the billing period it says nothing: refused (leave
    it out). Misaligned: ``charges_interval_misaligned``. Metered plans only (a balance or
    credits plan's usage is paid as it is rated), and not beside a plan minimum or
    commitment (owed per billing period, while this charge's usage is invoiced on the last
    billing period of its own period: ``invalid_parameter``)."""
    billing_interval = spec.charges_interval or spec.interval
    billing_count = spec.charges_interval_count if spec.charges_interval else spec.interval_count
    for i, charge in enumerate(spec.charges):
        interval, count = charge.interval, charge.interval_count
        param = f"charges[{i}]"
        if not interval:
            if count != 1:
                raise errors.ValidationFailed(
                    "interval_count applies with an interval", param=f"{param}.interval"
                )
            continue
        if interval not in Interval.values:
            raise errors.ValidationFailed(
                f"a charge's interval must be one of {', '.join(Interval.values)} (or left "
                "out: billed every billing period)",
                param=f"{param}.interval",
            )
        most = MAX_INTERVAL_COUNT[interval]
        if not _whole(count) or not 1 <= count <= most:
            raise errors.ValidationFailed(
                f"interval_count must be a whole number from 1 to {most} for interval {interval}",
                param=f"{param}.interval_count",
            )
        if billing_interval not in Interval.values:
            return  # refused by validate_billing_cadence or validate_charges_cadence
        unit, length = period_months_or_days(interval, count)
        billing_unit, billing_length = period_months_or_days(billing_interval, billing_count)
        every = _every(interval, count)
        billed = _every(billing_interval, billing_count)
        if unit != billing_unit or length % billing_length:
            raise errors.ChargesIntervalMisaligned(
                f"a charge billed {every} is not a whole number of the subscription's "
                f"billing periods ({billed}); its period must be a whole multiple of the "
                "billing period, in months for month, quarter and year, in days for day and "
                "week",
                param=f"{param}.interval",
            )
        if length == billing_length:
            raise errors.ValidationFailed(
                f"a charge billed {every} is billed every billing period already; leave its "
                "interval out",
                param=f"{param}.interval",
            )
        if spec.consumption_model != ConsumptionModel.METERED:
            raise errors.ValidationFailed(
                "a charge's interval applies to metered plans (a balance or credits plan's "
                "usage is paid as it is rated, not invoiced per period)",
                param=f"{param}.interval",
            )
        for name in ("minimum_amount", "commitment_amount"):
            if getattr(spec, name) is not None:
                raise errors.ValidationFailed(
                    f"a plan with a charge on its own interval has no {name}: it is owed per "
                    "billing period, and that charge's usage is invoiced once its own period "
                    "ends (charge minimums may stay: they are per charge period)",
                    param=name,
                )
