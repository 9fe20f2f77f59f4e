"""Recurring plan credits in a calendar stub (issue 18): a first grant period cut short by a
calendar anchor grants its share by day, as its base fee is prorated (the first day in
full); whole periods, anniversary subscriptions and ``once`` grants grant the whole amount.
Figures worked out by hand in the comments (and in docs/pricing-file.md).

The year is next year's (2027 when written): January has 31 days, February 28."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import plan_credits
from billing.services import ChargeSpec, CreditGrantSpec
from tests.billing.test_plan_credits import (
    FEB,
    SOON,
    at,
    credits_plan,
    plan_grants,
    subscribe,
    wallet,
)
from tests.conftest import unique
from tests.factories import MeterFactory, PlanFactory

pytestmark = pytest.mark.django_db
D = Decimal


def calendar_credits_plan(**grant):
    """``credits_plan``'s plan (1,000 credits a month) billed on the calendar, the 1st."""
    meter = MeterFactory(code=unique("units"), api_call=True)
    return PlanFactory(
        name="Team",
        consumption_model="credits",
        units_per_credit=1,
        billing_time="calendar",
        billing_anchor_day=1,
        charges=(ChargeSpec(meter=meter.code),),
        credit_grant=CreditGrantSpec(amount=D(1000), **grant),
    )


def test_a_calendar_stub_grants_its_share_by_day_then_whole_months():
    """1,000 credits a month, anchored on the 1st, from 15 January 09:30: the stub to
    1 February counts 17 of January's 31 days, 1000 × 17 / 31 = 548.387096774193548… =
    548.387096774194 at the ledger's 12 places; 1 February grants 1,000."""
    subscription = subscribe(calendar_credits_plan(), start=at(1, 15, 9, 30))
    (first,) = plan_grants(subscription)
    assert first.amount == D("548.387096774194")
    assert wallet(subscription) == D("548.387096774194")
    plan_credits.grant_due(now=FEB + SOON)
    assert [g.amount for g in plan_grants(subscription)] == [D("548.387096774194"), D(1000)]


def test_a_calendar_start_on_the_anchor_day_and_an_anniversary_start_grant_the_whole():
    on_anchor = subscribe(calendar_credits_plan(), start=at(2, 1, 9, 30))  # 1 Feb: whole
    anniversary = subscribe(credits_plan(), start=at(1, 15, 9, 30))
    assert [g.amount for g in plan_grants(on_anchor)] == [D(1000)]
    assert [g.amount for g in plan_grants(anniversary)] == [D(1000)]


def test_a_once_grant_in_a_stub_is_whole():
    """A one-off grant (cadence once) is not a recurring allowance: given whole."""
    subscription = subscribe(
        calendar_credits_plan(cadence="once", expiry="period_end"), start=at(1, 15, 9, 30)
    )
    assert [g.amount for g in plan_grants(subscription)] == [D(1000)]
