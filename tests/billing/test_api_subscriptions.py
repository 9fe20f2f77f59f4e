"""Subscriptions through the v1 API: create (now, migrated in from the past, with a trial),
change plan now (with the base fee prorated by time, worked out by hand) or at period end,
and cancel now or at period end. ``clock`` fixes the "now" billing.services sees."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services
from billing.models import Subscription, SubscriptionPhase, SubscriptionStatus
from tests.billing.conftest import ChargeSpec, assert_error, at, iso

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(make_customer):
    return make_customer("acme")


@pytest.fixture
def basic(make_plan):
    return make_plan("basic", base_fee="30", name="Basic")


@pytest.fixture
def pro(make_plan):
    return make_plan("pro", base_fee="90", name="Pro")


def subscribe(api, **body):
    response = api.post("/api/v1/subscriptions", {"customer": "acme", "plan": "basic", **body})
    assert response.status_code == 201, response.json()
    return response.json()


def without_volatile(body: dict) -> dict:
    body = dict(body)
    assert isinstance(body.pop("id"), int)
    assert body.pop("created_at").endswith("Z")
    return body


def phase(plan: str, starts_at, ends_at=None, version: int = 1) -> dict:
    return {
        "plan": plan,
        "plan_version": version,
        "starts_at": iso(starts_at),
        "ends_at": iso(ends_at),
    }


# --- POST /subscriptions ------------------------------------------------------------------------


def test_subscribe_now(api, clock, acme, basic):
    clock.now = at(2026, 4, 1, 9, 30)
    response = api.post("/api/v1/subscriptions", {"customer": "acme", "plan": "basic"})
    assert response.status_code == 201, response.json()
    body = response.json()
    subscription = Subscription.objects.get()
    assert body["id"] == subscription.pk
    assert without_volatile(body) == {
        "customer": "acme",
        "plan": "basic",
        "plan_version": 1,
        "status": "active",
        "started_at": "2026-04-01T09:30:00Z",
        "billing_anchor": "2026-04-01T09:30:00Z",
        "billing_time": "anniversary",
        "billing_anchor_day": None,
        "current_period_start": "2026-04-01T09:30:00Z",
        "current_period_end": "2026-05-01T09:30:00Z",
        "trial_ends_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "ended_at": None,
        "scheduled_plan": None,
        "phases": [phase("basic", at(2026, 4, 1, 9, 30))],
        "metadata": {},
    }


def test_a_start_in_the_past_is_back_dated_from_its_first_period(api, clock, acme, basic):
    clock.now = at(2026, 3, 15, 12)
    body = subscribe(api, start="2026-01-31T00:00:00Z")
    # Anchor Jan 31: periods Jan 31 – Feb 28 – Mar 31. The first is current: the close
    # invoices it (and Feb 28 – Mar 31 once that ends), so usage since Jan 31 is invoiced.
    assert (body["status"], body["started_at"], body["billing_anchor"]) == (
        "active",
        "2026-01-31T00:00:00Z",
        "2026-01-31T00:00:00Z",
    )
    assert (body["current_period_start"], body["current_period_end"]) == (
        "2026-01-31T00:00:00Z",
        "2026-02-28T00:00:00Z",
    )
    assert body["phases"] == [phase("basic", at(2026, 1, 31))]


def test_a_start_with_an_offset_is_stored_in_utc(api, clock, acme, basic):
    clock.now = at(2026, 4, 10)
    body = subscribe(api, start="2026-04-01T02:00:00+02:00")
    assert body["started_at"] == "2026-04-01T00:00:00Z"
    assert (body["current_period_start"], body["current_period_end"]) == (
        "2026-04-01T00:00:00Z",
        "2026-05-01T00:00:00Z",
    )


def test_a_trial_runs_from_the_start_to_the_trial_end(api, clock, acme, basic):
    clock.now = at(2026, 3, 15, 12)
    body = subscribe(api, trial_days=14)
    assert without_volatile(body) == {
        "customer": "acme",
        "plan": "basic",
        "plan_version": 1,
        "status": "trialing",
        "started_at": "2026-03-15T12:00:00Z",
        "billing_anchor": "2026-03-29T12:00:00Z",
        "billing_time": "anniversary",
        "billing_anchor_day": None,
        "current_period_start": "2026-03-15T12:00:00Z",
        "current_period_end": "2026-03-29T12:00:00Z",
        "trial_ends_at": "2026-03-29T12:00:00Z",
        "cancel_at_period_end": False,
        "canceled_at": None,
        "ended_at": None,
        "scheduled_plan": None,
        "phases": [phase("basic", at(2026, 3, 15, 12))],
        "metadata": {},
    }


def test_the_plans_trial_applies_unless_overridden(api, clock, acme, make_plan, make_customer):
    make_plan("trial-plan", base_fee="30", trial_days=7)
    make_customer("globex")
    clock.now = at(2026, 3, 1)
    default = subscribe(api, plan="trial-plan")
    assert (default["status"], default["trial_ends_at"]) == ("trialing", "2026-03-08T00:00:00Z")
    overridden = subscribe(api, customer="globex", plan="trial-plan", trial_days=0)
    assert (overridden["status"], overridden["trial_ends_at"]) == ("active", None)
    assert overridden["current_period_end"] == "2026-04-01T00:00:00Z"


def test_a_trial_that_ended_in_the_past_anchors_at_its_end(api, clock, acme, basic):
    clock.now = at(2026, 3, 15, 12)
    body = subscribe(api, start="2026-01-01T00:00:00Z", trial_days=14)
    # Trial Jan 1 – Jan 15, over: active; periods anchored on the 15th. The trial is the
    # first period (closed like any trial), then Jan 15 – Feb 15 … up to now.
    assert (body["status"], body["trial_ends_at"], body["billing_anchor"]) == (
        "active",
        "2026-01-15T00:00:00Z",
        "2026-01-15T00:00:00Z",
    )
    assert (body["current_period_start"], body["current_period_end"]) == (
        "2026-01-01T00:00:00Z",
        "2026-01-15T00:00:00Z",
    )


def test_a_start_in_the_future_is_refused(api, clock, acme, basic):
    clock.now = at(2026, 3, 15, 12)
    for start in ("2026-03-16T12:00:00Z", "2026-03-15T12:06:00Z"):
        response = api.post(
            "/api/v1/subscriptions", {"customer": "acme", "plan": "basic", "start": start}
        )
        assert_error(
            response,
            400,
            "invalid_parameter",
            param="start",
            message="start cannot lie in the future",
        )
    assert not Subscription.objects.exists()


def test_a_start_a_few_minutes_ahead_is_clock_skew(api, clock, acme, basic):
    clock.now = at(2026, 3, 15, 12)
    body = subscribe(api, start="2026-03-15T12:04:00Z")
    assert (body["current_period_start"], body["current_period_end"]) == (
        "2026-03-15T12:04:00Z",
        "2026-04-15T12:04:00Z",
    )


def test_a_second_live_subscription_is_a_conflict(api, acme, basic, pro):
    first = subscribe(api)
    response = api.post("/api/v1/subscriptions", {"customer": "acme", "plan": "pro"})
    assert_error(
        response,
        409,
        "subscription_exists",
        param="customer",
        message="customer acme already has a live subscription",
    )
    assert list(Subscription.objects.values_list("pk", flat=True)) == [first["id"]]
    assert SubscriptionPhase.objects.count() == 1


def test_subscribe_to_an_older_version(api, acme, make_plan):
    make_plan("basic", base_fee="30")
    make_plan("basic", base_fee="35")
    body = subscribe(api, plan_version=1)
    assert (body["plan"], body["plan_version"]) == ("basic", 1)
    canceled = api.post(f"/api/v1/subscriptions/{body['id']}/cancel", {"at": "now"})
    assert canceled.status_code == 200
    assert subscribe(api)["plan_version"] == 2


@pytest.mark.parametrize(
    ("body", "status", "code", "param", "message"),
    [
        (
            {"customer": "nope", "plan": "basic"},
            404,
            "customer_not_found",
            "customer",
            "no customer with external_id 'nope'",
        ),
        (
            {"customer": "acme", "plan": "gold"},
            404,
            "plan_not_found",
            "plan",
            "plan 'gold' does not exist",
        ),
        (
            {"customer": "acme", "plan": "basic", "plan_version": 2},
            404,
            "plan_not_found",
            "plan",
            "plan 'basic' does not exist in version 2",
        ),
        ({"plan": "basic"}, 400, "parameter_missing", "customer", None),
        ({"customer": "acme"}, 400, "parameter_missing", "plan", None),
        ({"customer": "acme", "plan": "Basic Plan"}, 400, "invalid_parameter", "plan", None),
        (
            {"customer": "acme", "plan": "basic", "plan_version": 0},
            400,
            "invalid_parameter",
            "plan_version",
            None,
        ),
        (
            {"customer": "acme", "plan": "basic", "trial_days": -1},
            400,
            "invalid_parameter",
            "trial_days",
            None,
        ),
        (
            {"customer": "acme", "plan": "basic", "trial_days": 3651},
            400,
            "invalid_parameter",
            "trial_days",
            None,
        ),
        (
            {"customer": "acme", "plan": "basic", "start": "yesterday"},
            400,
            "invalid_parameter",
            "start",
            None,
        ),
    ],
)
def test_invalid_subscriptions(api, acme, basic, body, status, code, param, message):
    assert_error(
        api.post("/api/v1/subscriptions", body), status, code, param=param, message=message
    )
    assert not Subscription.objects.exists()


def test_a_plan_in_another_currency_is_refused(api, acme, make_plan):
    make_plan("euro", currency="EUR", base_fee="30")
    response = api.post("/api/v1/subscriptions", {"customer": "acme", "plan": "euro"})
    assert_error(
        response,
        400,
        "currency_mismatch",
        param="plan",
        message="plan euro bills in EUR; the customer uses USD",
    )
    assert not Subscription.objects.exists()


# --- reading ------------------------------------------------------------------------------------


def test_get_a_subscription(api, acme, basic):
    created = subscribe(api)
    response = api.get(f"/api/v1/subscriptions/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created


def test_get_an_unknown_subscription(api):
    assert_error(
        api.get("/api/v1/subscriptions/999999"),
        404,
        "subscription_not_found",
        param=None,
        message="subscription 999999 does not exist",
    )


def test_an_id_beyond_bigint_is_not_found(api):
    huge = "99999999999999999999"
    assert_error(api.get(f"/api/v1/subscriptions/{huge}"), 404, "subscription_not_found")
    assert_error(
        api.post(f"/api/v1/subscriptions/{huge}/cancel", {}), 404, "subscription_not_found"
    )


def test_a_plan_version_out_of_range_names_plan_version(api, acme, basic):
    response = api.post(
        "/api/v1/subscriptions", {"customer": "acme", "plan": "basic", "plan_version": 2**31}
    )
    assert_error(response, 400, "invalid_parameter", param="plan_version")


def test_the_customer_shows_its_live_subscription(api, acme, basic):
    created = subscribe(api)
    assert api.get("/api/v1/customers/acme").json()["subscription"] == created


def test_the_balance_shows_allowances_of_the_plan(api, acme, make_meter, make_plan):
    make_meter("output_tokens")
    make_meter("requests", aggregation="count", property="")
    make_plan(
        "metered",
        base_fee="10",
        charges=(
            ChargeSpec(meter="output_tokens", included_quantity=Decimal("1000000")),
            ChargeSpec(meter="requests", included_quantity=Decimal("0.5")),
        ),
    )
    subscribe(api, plan="metered")
    assert api.get("/api/v1/customers/acme/balance").json()["allowances"] == [
        {
            "meter": "output_tokens",
            "included": "1000000.000000000000",
            "used": "0.000000000000",
            "remaining": "1000000.000000000000",
        },
        {
            "meter": "requests",
            "included": "0.500000000000",
            "used": "0.000000000000",
            "remaining": "0.500000000000",
        },
    ]


# --- change ------------------------------------------------------------------------------------


def test_change_now_prorates_the_base_fee_by_hand(api, clock, acme, basic, pro):
    clock.now = at(2026, 4, 1)  # April: 30 days
    sub = subscribe(api)
    clock.now = at(2026, 4, 11)  # day 10
    response = api.post(f"/api/v1/subscriptions/{sub['id']}/change", {"plan": "pro"})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["proration"] == [
        # 30 × 10/30 days, 90 × 20/30 days
        {
            "plan": "basic",
            "plan_version": 1,
            "starts_at": "2026-04-01T00:00:00Z",
            "ends_at": "2026-04-11T00:00:00Z",
            "amount": "10.000000000000",
        },
        {
            "plan": "pro",
            "plan_version": 1,
            "starts_at": "2026-04-11T00:00:00Z",
            "ends_at": "2026-05-01T00:00:00Z",
            "amount": "60.000000000000",
        },
    ]
    assert without_volatile(body["subscription"]) == {
        **without_volatile(sub),
        "plan": "pro",
        "phases": [phase("basic", at(2026, 4, 1), at(2026, 4, 11)), phase("pro", at(2026, 4, 11))],
    }
    assert api.get(f"/api/v1/subscriptions/{sub['id']}").json() == body["subscription"]


def test_change_subscription_service_with_an_explicit_now(db, acme, make_plan):
    # The brief's worked example, through the service: 30-day month, change at day 10 from a
    # base fee of 30 to 90 → 10 + 60. Then at day 20 to a fee of 10: thirds that round.
    thirty = make_plan("thirty", base_fee="30")
    ninety = make_plan("ninety", base_fee="90")
    ten = make_plan("ten", base_fee="10")
    subscription = services.create_subscription(customer=acme, plan=thirty, now=at(2026, 6, 1))
    services.change_subscription(subscription_id=subscription.pk, plan=ninety, now=at(2026, 6, 11))
    lines = services.base_fee_proration(subscription=Subscription.objects.get())
    assert [(line.plan.code, line.starts_at, line.ends_at, line.amount) for line in lines] == [
        ("thirty", at(2026, 6, 1), at(2026, 6, 11), Decimal("10.000000000000")),
        ("ninety", at(2026, 6, 11), at(2026, 7, 1), Decimal("60.000000000000")),
    ]
    services.change_subscription(subscription_id=subscription.pk, plan=ten, now=at(2026, 6, 21, 8))
    lines = services.base_fee_proration(subscription=Subscription.objects.get())
    # 90 × (10 d 8 h)/30 d = 90 × 248/720 = 31; 10 × (9 d 16 h)/30 d = 10 × 232/720 = 3.2222…
    assert [(line.plan.code, line.amount) for line in lines] == [
        ("thirty", Decimal("10.000000000000")),
        ("ninety", Decimal("31.000000000000")),
        ("ten", Decimal("3.222222222222")),
    ]
    assert [
        (p.plan.code, p.starts_at, p.ends_at)
        for p in SubscriptionPhase.objects.select_related("plan").order_by("starts_at")
    ] == [
        ("thirty", at(2026, 6, 1), at(2026, 6, 11)),
        ("ninety", at(2026, 6, 11), at(2026, 6, 21, 8)),
        ("ten", at(2026, 6, 21, 8), None),
    ]


def test_change_with_thirds_rounds_half_even(db, acme, make_plan):
    ten = make_plan("ten", base_fee="10")
    twenty = make_plan("twenty", base_fee="20")
    subscription = services.create_subscription(customer=acme, plan=ten, now=at(2026, 4, 1))
    services.change_subscription(subscription_id=subscription.pk, plan=twenty, now=at(2026, 4, 11))
    lines = services.base_fee_proration(subscription=Subscription.objects.get())
    # 10 × 1/3 = 3.333333333333|33… ; 20 × 2/3 = 13.333333333333|33…
    assert [line.amount for line in lines] == [
        Decimal("3.333333333333"),
        Decimal("13.333333333333"),
    ]


def test_a_back_dated_subscription_prorates_within_its_current_period(db, acme, basic, pro):
    subscription = services.create_subscription(
        customer=acme, plan=basic, start=at(2026, 1, 31), now=at(2026, 2, 10)
    )
    # Current period Jan 31 – Feb 28 (28 days); change on Feb 3 after 3 days.
    services.change_subscription(subscription_id=subscription.pk, plan=pro, now=at(2026, 2, 3))
    lines = services.base_fee_proration(subscription=Subscription.objects.get())
    # 30 × 3/28 = 3.214285714285|714… → …286; 90 × 25/28 = 80.357142857142|857… → …143
    assert [(line.plan.code, line.starts_at, line.ends_at, line.amount) for line in lines] == [
        ("basic", at(2026, 1, 31), at(2026, 2, 3), Decimal("3.214285714286")),
        ("pro", at(2026, 2, 3), at(2026, 2, 28), Decimal("80.357142857143")),
    ]


def test_change_at_period_end_schedules_the_plan(api, clock, acme, basic, pro):
    clock.now = at(2026, 4, 1)
    sub = subscribe(api)
    clock.now = at(2026, 4, 11)
    response = api.post(
        f"/api/v1/subscriptions/{sub['id']}/change", {"plan": "pro", "at": "period_end"}
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert without_volatile(body["subscription"]) == {
        **without_volatile(sub),
        "scheduled_plan": "pro@1",
    }
    assert body["proration"] == [
        {
            "plan": "basic",
            "plan_version": 1,
            "starts_at": "2026-04-01T00:00:00Z",
            "ends_at": "2026-05-01T00:00:00Z",
            "amount": "30.000000000000",
        },
    ]
    # Changing now clears the schedule.
    response = api.post(f"/api/v1/subscriptions/{sub['id']}/change", {"plan": "pro"})
    assert response.json()["subscription"]["scheduled_plan"] is None
    assert Subscription.objects.get().scheduled_plan_id is None


def test_change_during_a_trial_prorates_nothing(api, clock, acme, basic, pro):
    clock.now = at(2026, 4, 1)
    sub = subscribe(api, trial_days=14)
    clock.now = at(2026, 4, 5)
    body = api.post(f"/api/v1/subscriptions/{sub['id']}/change", {"plan": "pro"}).json()
    assert body["proration"] == []
    assert (body["subscription"]["status"], body["subscription"]["plan"]) == ("trialing", "pro")
    assert body["subscription"]["phases"] == [
        phase("basic", at(2026, 4, 1), at(2026, 4, 5)),
        phase("pro", at(2026, 4, 5)),
    ]


def test_change_to_another_version_of_the_same_plan(api, clock, acme, make_plan):
    make_plan("basic", base_fee="30")
    clock.now = at(2026, 4, 1)
    sub = subscribe(api)
    make_plan("basic", base_fee="60")
    clock.now = at(2026, 4, 16)
    body = api.post(f"/api/v1/subscriptions/{sub['id']}/change", {"plan": "basic"}).json()
    assert [(line["plan_version"], line["amount"]) for line in body["proration"]] == [
        (1, "15.000000000000"),
        (2, "30.000000000000"),
    ]
    response = api.post(
        f"/api/v1/subscriptions/{sub['id']}/change", {"plan": "basic", "plan_version": 2}
    )
    assert_error(
        response,
        400,
        "invalid_parameter",
        param="plan",
        message="the subscription is already on this plan",
    )


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"plan": "basic"}, 400, "invalid_parameter", "plan"),  # already on it
        ({"plan": "yearly"}, 400, "invalid_parameter", "plan"),
        ({"plan": "euro"}, 400, "currency_mismatch", "plan"),
        ({"plan": "gold"}, 404, "plan_not_found", "plan"),
        ({"plan": "pro", "plan_version": 9}, 404, "plan_not_found", "plan"),
        ({}, 400, "parameter_missing", "plan"),
        ({"plan": "pro", "at": "tomorrow"}, 400, "invalid_parameter", "at"),
    ],
)
def test_invalid_changes(api, acme, basic, pro, make_plan, body, status, code, param):
    make_plan("yearly", interval="year", base_fee="300")
    make_plan("euro", currency="EUR", base_fee="30")
    sub = subscribe(api)
    assert_error(
        api.post(f"/api/v1/subscriptions/{sub['id']}/change", body), status, code, param=param
    )
    assert api.get(f"/api/v1/subscriptions/{sub['id']}").json() == sub


def test_change_an_unknown_subscription(api, pro):
    for plan in ("pro", "gold"):  # the subscription is looked up first
        assert_error(
            api.post("/api/v1/subscriptions/424242/change", {"plan": plan}),
            404,
            "subscription_not_found",
            message="subscription 424242 does not exist",
        )


def test_change_a_canceled_subscription(api, acme, basic, pro):
    sub = subscribe(api)
    api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", {"at": "now"})
    response = api.post(f"/api/v1/subscriptions/{sub['id']}/change", {"plan": "pro"})
    assert_error(
        response,
        409,
        "subscription_canceled",
        param=None,
        message=f"subscription {sub['id']} is canceled",
    )


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_at_period_end_by_default(api, clock, acme, basic):
    clock.now = at(2026, 4, 1)
    sub = subscribe(api)
    clock.now = at(2026, 4, 20)
    response = api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", {})
    assert response.status_code == 200, response.json()
    assert without_volatile(response.json()) == {
        **without_volatile(sub),
        "cancel_at_period_end": True,
    }
    # Still live: the customer shows it and cannot take a second one.
    assert api.get("/api/v1/customers/acme").json()["subscription"]["id"] == sub["id"]
    again = api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", {"at": "period_end"})
    assert again.status_code == 200 and again.json()["cancel_at_period_end"] is True


def test_cancel_now(api, clock, acme, basic, pro):
    clock.now = at(2026, 4, 1)
    sub = subscribe(api)
    clock.now = at(2026, 4, 20, 15)
    response = api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", {"at": "now"})
    assert response.status_code == 200, response.json()
    assert without_volatile(response.json()) == {
        **without_volatile(sub),
        "status": "canceled",
        "canceled_at": "2026-04-20T15:00:00Z",
        "ended_at": "2026-04-20T15:00:00Z",
        "phases": [phase("basic", at(2026, 4, 1), at(2026, 4, 20, 15))],
    }
    assert api.get("/api/v1/customers/acme").json()["subscription"] is None
    assert api.get("/api/v1/customers/acme/balance").json()["allowances"] == []
    # A canceled subscription frees the customer for a new one.
    new = subscribe(api, plan="pro")
    assert new["id"] != sub["id"] and new["started_at"] == "2026-04-20T15:00:00Z"


@pytest.mark.parametrize("second", ["now", "period_end"])
def test_cancel_twice(api, acme, basic, second):
    sub = subscribe(api)
    assert api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", {"at": "now"}).status_code == 200
    canceled = Subscription.objects.get()
    response = api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", {"at": second})
    assert_error(
        response,
        409,
        "subscription_canceled",
        param=None,
        message=f"subscription {sub['id']} is canceled",
    )
    after = Subscription.objects.get()
    assert (after.canceled_at, after.cancel_at_period_end) == (canceled.canceled_at, False)


def test_cancel_errors(api, acme, basic):
    assert_error(
        api.post("/api/v1/subscriptions/424242/cancel", {}),
        404,
        "subscription_not_found",
        message="subscription 424242 does not exist",
    )
    sub = subscribe(api)
    assert_error(
        api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", {"at": "later"}),
        400,
        "invalid_parameter",
        param="at",
    )
    assert Subscription.objects.get().status == SubscriptionStatus.ACTIVE


def test_cancel_during_a_trial(api, clock, acme, basic):
    clock.now = at(2026, 4, 1)
    sub = subscribe(api, trial_days=14)
    clock.now = at(2026, 4, 3)
    body = api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", {"at": "now"}).json()
    assert (body["status"], body["ended_at"], body["trial_ends_at"]) == (
        "canceled",
        "2026-04-03T00:00:00Z",
        "2026-04-15T00:00:00Z",
    )


def test_cancel_now_right_after_a_start_slightly_ahead(api, clock, acme, basic):
    clock.now = at(2026, 4, 1, 12)
    sub = subscribe(api, start="2026-04-01T12:03:00Z")  # accepted as clock skew
    api.raise_request_exception = False
    response = api.post(f"/api/v1/subscriptions/{sub['id']}/cancel", {"at": "now"})
    assert response.status_code == 200, response.status_code
    assert response.json()["status"] == "canceled"
    ended = SubscriptionPhase.objects.get()
    assert ended.ends_at is not None and ended.ends_at >= ended.starts_at


def test_a_start_slightly_ahead_then_change_now_starts_the_new_plan_at_the_start(
    api, clock, acme, basic, pro
):
    clock.now = at(2026, 4, 1, 12)
    sub = subscribe(api, start="2026-04-01T12:03:00Z")
    body = api.post(f"/api/v1/subscriptions/{sub['id']}/change", {"plan": "pro"}).json()
    start = at(2026, 4, 1, 12, 3)
    assert body["subscription"]["phases"] == [phase("basic", start, start), phase("pro", start)]
    assert [(line["plan"], line["amount"]) for line in body["proration"]] == [
        ("pro", "90.000000000000")
    ]
