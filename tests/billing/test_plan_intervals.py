"""Billing intervals (day, week, month, quarter, year, N of each) and billing anchors (the
subscription's start, or the calendar with an anchor day): the period arithmetic, worked out
by hand from the calendar, and the fields accepted and refused alike by the pricing file,
``POST /api/v1/plans``, the admin and ``POST /api/v1/subscriptions`` (one validator).
What the periods are invoiced is in tests/invoicing/test_calendar_billing.py.

Calendar facts used below: 1 April 2026 is a Wednesday (so 6 and 13 April are Mondays);
2028 is a leap year; 2026 and 2027 are not."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from billing import errors, services
from billing.models import Plan, Subscription
from billing.periods import (
    calendar_anchor,
    period_boundary,
    period_containing,
    subscription_period,
    whole_period,
)
from billing.webhooks.payloads import subscription_data
from tests.billing.conftest import assert_error, at, iso
from tests.billing.test_pricing_shapes import (
    body,
    published_three_ways,
    refused_three_ways,
    via_api,
    via_file,
)
from tests.conftest import unique
from tests.factories import MeterFactory

D = Decimal


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("cadence", "c@x.example", None))
    return client


@pytest.fixture
def meter_code(db) -> str:
    return MeterFactory(code=unique("m")).code


# --- the period arithmetic --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "interval", "count", "moment", "expected"),
    [
        # a day from 10:00 to 10:00
        (at(2026, 4, 1, 10), "day", 1, at(2026, 4, 3, 15),
         (at(2026, 4, 3, 10), at(2026, 4, 4, 10))),
        # 3 days: 1–4, 4–7, 7–10 April; the 7th 12:00 opens no new period
        (at(2026, 4, 1), "day", 3, at(2026, 4, 7, 12), (at(2026, 4, 7), at(2026, 4, 10))),
        # half-open: the boundary itself belongs to the next period
        (at(2026, 4, 1), "day", 3, at(2026, 4, 4), (at(2026, 4, 4), at(2026, 4, 7))),
        # a week from Monday 6 April: Wednesday 15 April is in 13–20 April
        (at(2026, 4, 6), "week", 1, at(2026, 4, 15), (at(2026, 4, 13), at(2026, 4, 20))),
        # two weeks: 6–20 April, then 20 April – 4 May
        (at(2026, 4, 6), "week", 2, at(2026, 4, 19, 23, 59), (at(2026, 4, 6), at(2026, 4, 20))),
        (at(2026, 4, 6), "week", 2, at(2026, 4, 20), (at(2026, 4, 20), at(2026, 5, 4))),
        # quarters from 31 January: 31 Jan, 30 Apr (clamped), 31 Jul (back to the 31st)
        (at(2026, 1, 31), "quarter", 1, at(2026, 5, 15), (at(2026, 4, 30), at(2026, 7, 31))),
        (at(2026, 1, 31), "quarter", 1, at(2026, 12, 1), (at(2026, 10, 31), at(2027, 1, 31))),
        # every 6 months from 31 August: 28 Feb 2027 (not leap), 31 Aug 2027, 29 Feb 2028
        (at(2026, 8, 31), "month", 6, at(2027, 3, 1), (at(2027, 2, 28), at(2027, 8, 31))),
        (at(2026, 8, 31), "month", 6, at(2027, 9, 1), (at(2027, 8, 31), at(2028, 2, 29))),
        # every 2 years from a leap day: 29 Feb 2024, 28 Feb 2026, 29 Feb 2028
        (at(2024, 2, 29), "year", 2, at(2027, 6, 1), (at(2026, 2, 28), at(2028, 2, 29))),
        # a monthly count of 1 is today's behaviour
        (at(2026, 1, 31), "month", 1, at(2026, 3, 15), (at(2026, 2, 28), at(2026, 3, 31))),
    ],
)  # fmt: skip
def test_period_containing_every_interval(anchor, interval, count, moment, expected):
    assert period_containing(anchor, interval, moment, count) == expected


def test_daily_boundaries_far_from_the_anchor_are_found_without_drift():
    anchor = at(2026, 1, 1, 6)
    # 2026 has 365 days: period 365 of a daily plan starts on 1 January 2027 at 06:00
    assert period_boundary(anchor, "day", 365) == at(2027, 1, 1, 6)
    assert period_containing(anchor, "day", at(2027, 1, 1, 5, 59)) == (
        at(2026, 12, 31, 6),
        at(2027, 1, 1, 6),
    )


@pytest.mark.parametrize(
    ("interval", "day", "first", "expected"),
    [
        # day: midnight UTC of the first day
        ("day", None, at(2026, 4, 15, 13), at(2026, 4, 15)),
        # week: the last Monday (1) on or before Wednesday 15 April; a Wednesday (3) itself
        ("week", 1, at(2026, 4, 15, 13), at(2026, 4, 13)),
        ("week", 3, at(2026, 4, 15, 13), at(2026, 4, 15)),
        ("week", 4, at(2026, 4, 15, 13), at(2026, 4, 9)),  # Thursday before
        ("week", None, at(2026, 4, 15, 13), at(2026, 4, 13)),  # Monday by default
        # month, quarter, year: the anchor day of January (of the year before when ahead)
        ("month", 1, at(2026, 4, 15, 13), at(2026, 1, 1)),
        ("month", 31, at(2026, 4, 15), at(2026, 1, 31)),
        ("month", 15, at(2026, 1, 10), at(2025, 1, 15)),
        ("quarter", None, at(2026, 5, 16), at(2026, 1, 1)),
        ("year", 1, at(2028, 3, 1), at(2028, 1, 1)),
    ],
)
def test_calendar_anchor(interval, day, first, expected):
    assert calendar_anchor(interval=interval, anchor_day=day, first=first) == expected


def periods_of(anchor, interval, started_at, count=1, trial_ends_at=None, n=3):
    """The first ``n`` periods of a subscription, each from the end of the one before."""
    result, at_ = [], started_at
    for _ in range(n):
        period = subscription_period(
            anchor=anchor,
            interval=interval,
            count=count,
            started_at=started_at,
            trial_ends_at=trial_ends_at,
            at=at_,
        )
        result.append(period)
        at_ = period[1]
    return result


def test_anchor_day_31_from_a_30_day_month():
    start = at(2026, 4, 15, 9, 30)
    anchor = calendar_anchor(interval="month", anchor_day=31, first=start)
    # a stub to 30 April (April's last day stands for the 31st), then 30 Apr – 31 May – 30 Jun
    assert periods_of(anchor, "month", start) == [
        (start, at(2026, 4, 30)),
        (at(2026, 4, 30), at(2026, 5, 31)),
        (at(2026, 5, 31), at(2026, 6, 30)),
    ]
    # the stub is part of 31 March – 30 April (30 days)
    assert whole_period(
        anchor=anchor, interval="month", count=1, period_start=start, period_end=at(2026, 4, 30)
    ) == (at(2026, 3, 31), at(2026, 4, 30))


@pytest.mark.parametrize(
    ("year", "february_end"),
    [(2027, at(2027, 2, 28)), (2028, at(2028, 2, 29))],  # not leap; leap
)
def test_anchor_day_31_in_february(year, february_end):
    start = at(year, 2, 10)
    anchor = calendar_anchor(interval="month", anchor_day=31, first=start)
    assert periods_of(anchor, "month", start) == [
        (start, february_end),
        (february_end, at(year, 3, 31)),  # back to the 31st, never stuck on the 28th
        (at(year, 3, 31), at(year, 4, 30)),
    ]
    assert whole_period(
        anchor=anchor, interval="month", count=1, period_start=start, period_end=february_end
    ) == (at(year, 1, 31), february_end)


def test_a_calendar_stub_after_a_trial():
    """Trial 10–17 January, then a stub to 1 February (day 1), then whole months."""
    start, trial_end = at(2026, 1, 10, 8), at(2026, 1, 17, 8)
    anchor = calendar_anchor(interval="month", anchor_day=1, first=trial_end)
    assert periods_of(anchor, "month", start, trial_ends_at=trial_end) == [
        (start, trial_end),
        (trial_end, at(2026, 2, 1)),
        (at(2026, 2, 1), at(2026, 3, 1)),
    ]


def test_anniversary_periods_are_unchanged():
    start = at(2026, 1, 31, 9)
    assert periods_of(start, "month", start) == [
        (start, at(2026, 2, 28, 9)),
        (at(2026, 2, 28, 9), at(2026, 3, 31, 9)),
        (at(2026, 3, 31, 9), at(2026, 4, 30, 9)),
    ]


def test_a_start_on_the_calendar_boundary_has_no_stub():
    start = at(2026, 3, 1)
    anchor = calendar_anchor(interval="month", anchor_day=1, first=start)
    assert periods_of(anchor, "month", start, n=1) == [(at(2026, 3, 1), at(2026, 4, 1))]


# --- the fields, accepted and refused alike ---------------------------------------------------


def test_intervals_and_calendar_billing_are_accepted_alike(api, staff_client, meter_code):
    plan = body(
        {"meter": meter_code, "unit_price": "0.1"},
        interval="week",
        interval_count=2,
        billing_time="calendar",
        billing_anchor_day=5,
    )
    for published in published_three_ways(api, staff_client, plan):
        assert (
            published.interval,
            published.interval_count,
            published.billing_time,
            published.billing_anchor_day,
        ) == ("week", 2, "calendar", 5)
        spec = services.plan_spec_of(published)
        assert (spec.interval, spec.interval_count, spec.billing_anchor_day) == ("week", 2, 5)


@pytest.mark.parametrize("interval", ["day", "week", "month", "quarter", "year"])
def test_every_interval_is_accepted_alike(api, staff_client, meter_code, interval):
    for published in published_three_ways(api, staff_client, body(interval=interval)):
        assert (published.interval, published.interval_count) == (interval, 1)


def test_the_api_echoes_the_new_fields(api, meter_code):
    response = api.post(
        "/api/v1/plans",
        body(interval="quarter", interval_count=2, billing_time="calendar", billing_anchor_day=31),
        format="json",
    )
    assert response.status_code == 201, response.json()
    got = response.json()
    assert (got["interval"], got["interval_count"], got["billing_time"]) == (
        "quarter",
        2,
        "calendar",
    )
    assert got["billing_anchor_day"] == 31


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"interval_count": 0}, "interval_count must be a whole number from 1 to 60 for "
         "interval month"),
        ({"interval_count": 61}, "interval_count must be a whole number from 1 to 60"),
        # negative: the file reads any whole number and leaves the range to the validator
        ({"interval_count": -1}, "interval_count must be a whole number from 1 to 60"),
        ({"interval": "week", "interval_count": -(2**31)}, "from 1 to 260 for interval week"),
        ({"interval": "year", "interval_count": 6}, "from 1 to 5 for interval year"),
        ({"interval": "day", "interval_count": 1827}, "from 1 to 1826 for interval day"),
        ({"billing_anchor_day": 15}, "billing_anchor_day applies to billing_time: calendar only"),
        ({"billing_time": "calendar", "billing_anchor_day": 32},
         "billing_anchor_day for interval month is a day of the month, 1 to 31"),
        ({"billing_time": "calendar", "billing_anchor_day": 0}, "a day of the month, 1 to 31"),
        ({"billing_time": "calendar", "billing_anchor_day": -1},
         "billing_anchor_day for interval month is a day of the month, 1 to 31"),
        ({"interval": "week", "billing_time": "calendar", "billing_anchor_day": 8},
         "billing_anchor_day for interval week is an ISO weekday, 1 (Monday) to 7 (Sunday)"),
        ({"interval": "day", "billing_time": "calendar", "billing_anchor_day": 1},
         "a daily plan billed on the calendar starts its periods at midnight UTC"),
    ],
)  # fmt: skip
def test_out_of_range_cadences_are_refused_alike(api, staff_client, fields, message):
    refused_three_ways(api, staff_client, body(**fields), message)


def test_an_unknown_interval_is_refused_with_a_stable_code(api):
    response = api.post("/api/v1/plans", body(interval="fortnight"), format="json")
    assert_error(response, 400, "invalid_parameter", param="interval")
    response = api.post("/api/v1/plans", body(interval_count=0), format="json")
    assert_error(response, 400, "invalid_parameter", param="interval_count")
    response = api.post("/api/v1/plans", body(interval_count="two"), format="json")
    assert_error(response, 400, "invalid_parameter", param="interval_count")
    response = api.post("/api/v1/plans", body(billing_time="weekly"), format="json")
    assert_error(response, 400, "invalid_parameter", param="billing_time")
    assert "expected a whole number" in str(via_file(body(interval_count="two")))
    # the admin offers billing_time as a choice; the file and the API say the same
    message = "billing_time must be one of anniversary, calendar"
    assert message in str(via_file(body(billing_time="weekly")))
    assert message in response.json()["error"]["message"]
    assert not Plan.objects.exists()


def test_a_monthly_grant_on_a_weekly_plan_is_refused(api):
    plan = body(
        interval="week",
        consumption_model="balance",
        credit_grant={"amount": "10", "cadence": "month"},
    )
    message = "a monthly grant needs periods of a month or longer"
    assert message in via_file(plan)
    assert message in str(via_api(api, plan))


def test_a_plan_keeps_its_hash_without_the_new_fields():
    spec = services.PlanSpec(code="p", name="P")
    same = services.PlanSpec(
        code="p", name="P", interval_count=1, billing_time="anniversary", billing_anchor_day=None
    )
    other = services.PlanSpec(code="p", name="P", interval_count=2)
    assert spec.canonical_hash() == same.canonical_hash() != other.canonical_hash()
    # the hash every plan published before had (tests/billing/test_pricing_shapes.py)
    from tests.billing.test_pricing_shapes import _hash_of

    assert spec.canonical_hash() == _hash_of(
        {
            "base_fee": "0",
            "charges": [],
            "code": "p",
            "consumption_model": "metered",
            "currency": "USD",
            "description": "",
            "interval": "month",
            "metadata": {},
            "name": "P",
            "trial_days": 0,
            "units_per_credit": None,
        }
    )


# --- subscriptions choose their anchor ----------------------------------------------------------


@pytest.fixture
def customer_and_plan(make_customer, make_plan):
    make_customer("cus_cal")
    make_plan("monthly", base_fee="31")
    make_plan("weekly", interval="week", billing_time="calendar", billing_anchor_day=1)
    make_plan("on-the-20th", billing_time="calendar", billing_anchor_day=20)


def subscribe(api, clock, **fields):
    clock.now = at(2026, 4, 15, 13)
    return api.post(
        "/api/v1/subscriptions",
        {"customer": "cus_cal", "plan": "monthly", "start": "2026-04-15T09:30:00Z", **fields},
        format="json",
    )


def test_a_subscription_billed_on_the_calendar(api, clock, customer_and_plan):
    response = subscribe(api, clock, billing_time="calendar", billing_anchor_day=31)
    assert response.status_code == 201, response.json()
    got = response.json()
    assert got["current_period_start"] == iso(at(2026, 4, 15, 9, 30))
    assert got["current_period_end"] == iso(at(2026, 4, 30))
    assert got["billing_anchor"] == iso(at(2026, 1, 31))
    assert (got["billing_time"], got["billing_anchor_day"]) == ("calendar", 31)
    # as stored, and as GET and the subscription.created webhook say it
    subscription = Subscription.objects.get()
    assert (subscription.billing_time, subscription.billing_anchor_day) == ("calendar", 31)
    again = api.get(f"/api/v1/subscriptions/{got['id']}").json()
    assert (again["billing_time"], again["billing_anchor_day"]) == ("calendar", 31)
    data = subscription_data(subscription)
    assert (data["billing_time"], data["billing_anchor_day"]) == ("calendar", 31)


def test_a_subscription_takes_its_plans_calendar_anchor(api, clock, customer_and_plan):
    response = subscribe(api, clock, plan="weekly")
    assert response.status_code == 201, response.json()
    # Wednesday 15 April: a stub to Monday 20 April
    assert response.json()["current_period_end"] == iso(at(2026, 4, 20))
    assert (response.json()["billing_time"], response.json()["billing_anchor_day"]) == (
        "calendar",
        1,
    )


@pytest.mark.parametrize("fields", [{}, {"billing_time": "calendar"}])
def test_calendar_named_without_a_day_takes_the_plans_anchor_day(
    api, clock, customer_and_plan, fields
):
    """The plan bills on the 20th: naming its billing time again, without a day, keeps the
    20th (not the 1st), as the help texts say: the day defaults to the plan's."""
    response = subscribe(api, clock, plan="on-the-20th", **fields)
    assert response.status_code == 201, response.json()
    got = response.json()
    assert (got["current_period_end"], got["billing_anchor"]) == (
        iso(at(2026, 4, 20)),
        iso(at(2026, 1, 20)),
    )


def test_a_subscription_may_bill_from_its_start_on_a_calendar_plan(api, clock, customer_and_plan):
    response = subscribe(api, clock, plan="weekly", billing_time="anniversary")
    assert response.status_code == 201, response.json()
    assert response.json()["current_period_end"] == iso(at(2026, 4, 22, 9, 30))
    assert (response.json()["billing_time"], response.json()["billing_anchor_day"]) == (
        "anniversary",
        None,
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"billing_time": "calendar", "billing_anchor_day": 32}, "billing_anchor_day"),
        ({"billing_anchor_day": 5}, "billing_anchor_day"),  # the plan bills from the start
        ({"billing_time": "lunar"}, "billing_time"),
        ({"billing_time": "calendar", "billing_anchor_day": "x"}, "billing_anchor_day"),
    ],
)
def test_a_bad_subscription_anchor_is_refused(api, clock, customer_and_plan, fields, param):
    response = subscribe(api, clock, **fields)
    assert_error(response, 400, "invalid_parameter", param=param)
    assert not Subscription.objects.exists()


def test_an_unknown_subscription_field_is_refused(api, clock, customer_and_plan):
    response = subscribe(api, clock, anchor_day=5)
    assert_error(response, 400, "unknown_parameter", param="anchor_day")


def test_a_plan_change_to_another_interval_count_is_refused(make_customer, make_plan):
    customer = make_customer(unique("cus"))
    weekly = make_plan(interval="week")
    fortnightly = make_plan(interval="week", interval_count=2)
    subscription = services.create_subscription(customer=customer, plan=weekly, now=at(2026, 4, 1))
    with pytest.raises(errors.ValidationFailed, match="billing interval"):
        services.change_subscription(
            subscription_id=subscription.pk, plan=fortnightly, now=at(2026, 4, 2)
        )
    assert subscription.current_period_end - subscription.current_period_start == timedelta(7)


def test_the_demo_file_bills_a_plan_every_two_weeks_on_mondays():
    from billing.pricing.parse import parse_pricing
    from tests.billing.test_pricing import DEMO

    team = {p.code: p for p in parse_pricing(path=DEMO).plans}["team-fortnightly"]
    assert (team.interval, team.interval_count, team.billing_time, team.billing_anchor_day) == (
        "week",
        2,
        "calendar",
        1,
    )


# --- the admin's subscription form --------------------------------------------------------------


def test_the_admin_subscribes_on_the_calendar_and_refuses_a_bad_anchor_day(
    staff_client, make_customer, make_plan
):
    from django.urls import reverse

    customer = make_customer(unique("cus"))
    plan = make_plan(base_fee="31")
    url = reverse("admin:billing_subscription_add")
    form = {"customer": customer.pk, "plan": plan.pk, "start": "2026-04-15 09:30:00"}
    refused = staff_client.post(url, {**form, "billing_time": "calendar", "billing_anchor_day": 40})
    assert refused.status_code == 200
    assert "a day of the month, 1 to 31" in str(refused.context["form"].errors)
    assert not Subscription.objects.exists()
    response = staff_client.post(
        url, {**form, "billing_time": "calendar", "billing_anchor_day": 31}
    )
    assert response.status_code == 302
    subscription = customer.subscriptions.get()
    assert (subscription.current_period_start, subscription.current_period_end) == (
        at(2026, 4, 15, 9, 30),
        at(2026, 4, 30),
    )


# --- plan credits on the calendar ---------------------------------------------------------------


def calendar_credits_plan(interval: str = "month", **grant):
    meter = MeterFactory(code=unique("units"), api_call=True)
    return services.publish_plan(
        spec=services.PlanSpec(
            code=unique("p"),
            name="Team",
            interval=interval,
            billing_time="calendar",
            consumption_model="credits",
            units_per_credit=D(1),
            charges=(services.ChargeSpec(meter=meter.code),),
            credit_grant=services.CreditGrantSpec(amount=D(100), **grant),
        )
    )[0]


def grant_periods(subscription):
    from billing.models import SubscriptionCreditGrant

    return [
        (g.period_start, g.period_end, g.grant.expires_at)
        for g in SubscriptionCreditGrant.objects.filter(subscription=subscription)
        .select_related("grant")
        .order_by("period_start")
    ]


def test_a_calendar_stub_gets_its_periods_grant_then_each_month_on_the_1st(make_customer):
    from billing import plan_credits

    start = at(2026, 1, 15, 9, 30)
    subscription = services.create_subscription(
        customer=make_customer(unique("cus")), plan=calendar_credits_plan(), now=start
    )
    assert grant_periods(subscription) == [(start, at(2026, 2, 1), at(2026, 2, 1))]
    assert plan_credits.grant_due(now=at(2026, 1, 25)) == 0
    close_to(subscription, at(2026, 2, 1))
    assert plan_credits.grant_due(now=at(2026, 2, 1, 0, 1)) == 1
    assert grant_periods(subscription)[1] == (at(2026, 2, 1), at(2026, 3, 1), at(2026, 3, 1))


def test_a_yearly_calendar_plan_grants_monthly_from_its_start(make_customer):
    from billing import plan_credits

    start = at(2026, 3, 10)
    subscription = services.create_subscription(
        customer=make_customer(unique("cus")),
        plan=calendar_credits_plan("year", cadence="month"),
        now=start,
    )
    assert subscription.current_period_end == at(2027, 1, 1)
    # the first month is 10–31 March; then April, from the 1st
    assert grant_periods(subscription) == [(start, at(2026, 4, 1), at(2026, 4, 1))]
    assert plan_credits.grant_due(now=at(2026, 4, 1, 0, 1)) == 1
    assert grant_periods(subscription)[1] == (at(2026, 4, 1), at(2026, 5, 1), at(2026, 5, 1))


def close_to(subscription, moment):
    from invoicing import services as invoicing

    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=moment)


def test_the_schema_documents_the_cadence_fields(api):
    """The OpenAPI schema says what the plan and subscription bodies now accept (the
    schemathesis run in test_schema.py then sends them)."""
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    components = response.json()["components"]["schemas"]
    plan = components["PlanRequest"]["properties"]
    assert {"interval_count", "billing_time", "billing_anchor_day"} <= set(plan)
    assert plan["interval"]["allOf"] == [{"$ref": "#/components/schemas/IntervalEnum"}]
    assert components["IntervalEnum"]["enum"] == ["day", "week", "month", "quarter", "year"]
    created = components["SubscriptionCreateRequest"]["properties"]
    assert {"billing_time", "billing_anchor_day"} <= set(created)
    shown = components["Subscription"]["properties"]
    assert {"billing_anchor", "billing_time", "billing_anchor_day"} <= set(shown)
    assert "null" in shown["billing_anchor_day"]["type"]
