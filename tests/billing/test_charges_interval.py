"""Usage charges billed on a finer cadence than the plan (``charges_interval``: Lago's
``bill_charges_monthly``, Orb's per-price cadence): a yearly plan whose usage is invoiced
every month. The subscription's billing periods are the charge periods — usage counters,
allowances, tiers and charge minimums reset each of them, each closed once on its own
invoice — and the base fee, per plan period, is invoiced in arrears (as today) on the
charge period that closes the plan period. Figures worked out by hand in the comments (the
same as docs/pricing-file.md's worked example), and the cadences refused alike by the
pricing file and ``POST /api/v1/plans`` (one validator, code ``charges_interval_misaligned``).

Calendar facts: 2028 is a leap year (February has 29 days); 2026 is not (365 days; January
to March 90 days)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import errors, services
from billing.models import Plan, Subscription
from billing.periods import closes_plan_period, plan_period_of
from invoicing import services as invoicing
from invoicing.models import Invoice
from metering.models import PeriodUsage
from tests.billing.conftest import assert_error
from tests.billing.test_pricing_shapes import body, via_admin, via_api, via_file
from tests.conftest import unique
from tests.factories import MeterFactory
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


def calls(**kw) -> ChargeSpec:
    """Graduated, resetting each charge period: units 1–1,000 at 0.02, beyond at 0.01."""
    return ChargeSpec(
        meter=meter(name="Calls"),
        price_model="graduated",
        tiers=(
            TierSpec(up_to=D(1000), unit_price=D("0.02")),
            TierSpec(up_to=None, unit_price=D("0.01")),
        ),
        **kw,
    )


def yearly(*charges, charges_interval="month", **kw) -> Plan:
    return plan(*charges, interval="year", base_fee="1200", charges_interval=charges_interval, **kw)


def invoices(subscription: Subscription) -> list[Invoice]:
    return list(Invoice.objects.filter(subscription=subscription).order_by("period_start"))


# --- a yearly plan, usage billed monthly --------------------------------------------------------


def test_a_year_gives_twelve_monthly_invoices_and_the_base_fee_once_in_arrears():
    """From 1 January 2028: periods are the months (February 2028 has 29 days). Usage:
    January 1,500 calls → 1,000 × 0.02 + 500 × 0.01 = 25.00; February 1,000 calls, the
    last at 29 February 23:59 → exactly tier 1's upper bound: 20.00, no tier 2 line;
    1 March, 1 call → tier 1 again (the tiers reset): 0.02. Nothing else: the months of
    April to November invoice 0.00, December the base fee 1,200.00 (whole, in arrears).
    The year: 25.00 + 20.00 + 0.02 + 1,200.00 = 1,245.02."""
    subscription = subscribe(yearly(calls()), start=at(2028, 1, 1))
    assert (subscription.current_period_start, subscription.current_period_end) == (
        at(2028, 1, 1),
        at(2028, 2, 1),
    )
    use(subscription, 1500, at_time=at(2028, 1, 20))
    use(subscription, 999, at_time=at(2028, 2, 10))
    use(subscription, 1, at_time=at(2028, 2, 29, 23, 59))
    use(subscription, 1, at_time=at(2028, 3, 1))
    counters = PeriodUsage.objects.filter(subscription=subscription).order_by("period_start")
    assert [(c.period_start, c.period_end, c.quantity) for c in counters] == [
        (at(2028, 1, 1), at(2028, 2, 1), D(1500)),
        (at(2028, 2, 1), at(2028, 3, 1), D(1000)),
        (at(2028, 3, 1), at(2028, 4, 1), D(1)),
    ]
    made = invoicing.close_subscription_periods(
        subscription_id=subscription.pk, as_of=at(2029, 1, 1)
    )
    assert made == 12
    issued = invoices(subscription)
    assert [(i.period_start, i.period_end) for i in issued][:3] == [
        (at(2028, 1, 1), at(2028, 2, 1)),
        (at(2028, 2, 1), at(2028, 3, 1)),
        (at(2028, 3, 1), at(2028, 4, 1)),
    ]
    assert issued[-1].period_start == at(2028, 12, 1) and issued[-1].period_end == at(2029, 1, 1)
    assert lines(issued[0]) == [
        ("usage", "Calls, tier 1", D(1000), D(20)),
        ("usage", "Calls, tier 2", D(500), D(5)),
    ]
    assert lines(issued[1]) == [("usage", "Calls, tier 1", D(1000), D(20))]
    assert lines(issued[2]) == [("usage", "Calls, tier 1", D(1), D("0.02"))]
    assert all(lines(i) == [] and i.total == 0 for i in issued[3:11])
    assert lines(issued[11]) == [("base_fee", "Pro — base fee", D(1), D(1200))]
    base_fee = issued[11].lines.get()
    assert (base_fee.starts_at, base_fee.ends_at) == (at(2028, 1, 1), at(2029, 1, 1))
    assert [i.total for i in issued[:3]] == [D(25), D(20), D("0.02")]
    assert sum(i.total for i in issued) == D("1245.02")
    subscription.refresh_from_db()
    assert (subscription.current_period_start, subscription.current_period_end) == (
        at(2029, 1, 1),
        at(2029, 2, 1),
    )
    upcoming_agrees(subscription, issued[11])


def test_the_worked_example_of_the_docs():
    """docs/pricing-file.md (the demo's annual-usage-monthly tiers): January 80,000 requests
    → 0.00 (the month's free 100,000); February 300,000 → 200,000 × 0.0005 = 100.00; no
    more usage; December the year's fee 1,200.00; the year 1,300.00."""
    requests = ChargeSpec(
        meter=meter(name="Requests"),
        price_model="graduated",
        tiers=(
            TierSpec(up_to=D(100_000), unit_price=D(0)),
            TierSpec(up_to=D(1_000_000), unit_price=D("0.0005")),
            TierSpec(up_to=None, unit_price=D("0.0003")),
        ),
    )
    subscription = subscribe(yearly(requests), start=at(2026, 1, 1))
    use(subscription, 80_000, at_time=at(2026, 1, 15))
    use(subscription, 300_000, at_time=at(2026, 2, 15))
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2027, 1, 1))
    totals = [i.total for i in invoices(subscription)]
    assert totals == [D(0), D(100), *[D(0)] * 9, D(1200)]
    assert sum(totals) == D(1300)


def test_the_upcoming_invoice_of_a_month_inside_the_year_has_no_base_fee():
    subscription = subscribe(yearly(calls()), start=at(2028, 1, 1))
    use(subscription, 10, at_time=at(2028, 1, 5))
    assert not closes_plan_period(subscription, at(2028, 1, 1), at(2028, 2, 1))
    assert closes_plan_period(subscription, at(2028, 12, 1), at(2029, 1, 1))
    assert plan_period_of(subscription, at(2028, 6, 15)) == (at(2028, 1, 1), at(2029, 1, 1))
    invoice = close(subscription, as_of=at(2028, 2, 1))
    assert lines(invoice) == [("usage", "Calls, tier 1", D(10), D("0.2"))]
    upcoming_agrees(subscription, invoice)


def test_a_plan_without_a_charges_interval_still_invoices_its_year_at_once():
    """Today's behaviour is unchanged: one period a year, the base fee and the year's usage
    (1,500 calls over the year, tiered once: 20.00 + 5.00) on one invoice."""
    subscription = subscribe(plan(calls(), interval="year", base_fee="1200"), start=at(2028, 1, 1))
    assert subscription.current_period_end == at(2029, 1, 1)
    use(subscription, 1000, at_time=at(2028, 1, 20))
    use(subscription, 500, at_time=at(2028, 7, 20))
    invoice = close(subscription, as_of=at(2029, 1, 1))
    assert lines(invoice) == [
        ("base_fee", "Pro — base fee", D(1), D(1200)),
        ("usage", "Calls, tier 1", D(1000), D(20)),
        ("usage", "Calls, tier 2", D(500), D(5)),
    ]


# --- cancellation -------------------------------------------------------------------------------


def test_a_cancellation_mid_year_prorates_the_base_fee_as_today():
    """From 1 January 2026 (365 days), canceled on 16 April 00:00: 105 days billed
    (31 + 28 + 31 + 15), 1,200 × 105 / 365 = 345.205479452055 (345.21), on the April
    invoice with April's usage (300 calls: 6.00). The same plan billed yearly invoices the
    same base fee."""
    monthly_usage = subscribe(yearly(calls()), start=at(2026, 1, 1))
    yearly_usage = subscribe(plan(calls(), interval="year", base_fee="1200"), start=at(2026, 1, 1))
    use(monthly_usage, 300, at_time=at(2026, 4, 10))
    assert (
        invoicing.close_subscription_periods(subscription_id=monthly_usage.pk, as_of=at(2026, 4, 1))
        == 3
    )
    for subscription in (monthly_usage, yearly_usage):
        services.cancel_subscription(subscription_id=subscription.pk, now=at(2026, 4, 16))
    april = close(monthly_usage, as_of=at(2026, 4, 16))
    assert (april.period_start, april.period_end) == (at(2026, 4, 1), at(2026, 5, 1))
    assert lines(april) == [
        ("base_fee", "Pro — base fee, prorated 2026-01-01 to 2026-04-16", D(1), D("345.21")),
        ("usage", "Calls, tier 1", D(300), D(6)),
    ]
    assert april.lines.get(kind="base_fee").amount_precise == D("345.205479452055")
    assert lines(close(yearly_usage, as_of=at(2026, 4, 16)))[0] == lines(april)[0]
    assert [i.total for i in invoices(monthly_usage)] == [D(0), D(0), D(0), D("351.21")]
    assert close(monthly_usage, as_of=at(2027, 1, 1)) == april  # closed once, nothing after
    assert len(invoices(monthly_usage)) == 4


def test_a_cancellation_at_period_end_runs_to_the_end_of_the_year():
    """Asked in March: the months roll on to December, usage in June is accepted, the
    subscription ends on 1 January 2027 with the whole base fee on December's invoice;
    usage after the year is refused."""
    subscription = subscribe(yearly(calls()), start=at(2026, 1, 1))
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2026, 3, 1))
    services.cancel_subscription(
        subscription_id=subscription.pk, at_period_end=True, now=at(2026, 3, 10)
    )
    assert use(subscription, 100, at_time=at(2026, 6, 10)).status == "accepted"
    refused = use(subscription, 1, at_time=at(2027, 1, 1))
    assert refused.error is not None and refused.error.code == "timestamp_after_subscription"
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2027, 2, 1))
    subscription.refresh_from_db()
    assert subscription.status == "canceled" and subscription.ended_at == at(2027, 1, 1)
    issued = invoices(subscription)
    assert len(issued) == 12
    assert lines(issued[5]) == [("usage", "Calls, tier 1", D(100), D(2))]
    assert lines(issued[11]) == [("base_fee", "Pro — base fee", D(1), D(1200))]


def test_a_change_at_period_end_applies_at_the_end_of_the_year():
    """Scheduled in March from the 1,200.00 plan to a 2,400.00 one: the months to December
    stay on the first plan, December's invoice has its whole fee, and the next year is the
    new plan's (its fee on December 2027's invoice)."""
    subscription = subscribe(yearly(calls()), start=at(2026, 1, 1))
    bigger = plan(calls(), interval="year", base_fee="2400", charges_interval="month", name="Max")
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2026, 3, 1))
    services.change_subscription(
        subscription_id=subscription.pk, plan=bigger, at_period_end=True, now=at(2026, 3, 10)
    )
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2026, 12, 1))
    subscription.refresh_from_db()
    assert subscription.scheduled_plan_id == bigger.pk and subscription.plan_id != bigger.pk
    december = close(subscription, as_of=at(2027, 1, 1))
    assert lines(december) == [("base_fee", "Pro — base fee", D(1), D(1200))]
    subscription.refresh_from_db()
    assert subscription.plan_id == bigger.pk and subscription.scheduled_plan_id is None
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2028, 1, 1))
    assert lines(invoices(subscription)[-1]) == [("base_fee", "Max — base fee", D(1), D(2400))]
    assert len(invoices(subscription)) == 24


@pytest.mark.parametrize(
    ("changed_at", "expected"),
    [
        # 16 April: 105 days of the 1,200.00 plan (1,200 × 105 / 365 = 345.205479452055),
        # 260 of the 2,400.00 one (2,400 × 260 / 365 = 1,709.589041095890)
        (
            at(2026, 4, 16),
            [
                ("Pro — base fee, prorated 2026-01-01 to 2026-04-16", D("345.21")),
                ("Max — base fee, prorated 2026-04-16 to 2027-01-01", D("1709.59")),
            ],
        ),
        # the year's last day, 31 December: 364 days (1,196.712328767123) and 1 (6.575342465753)
        (
            at(2026, 12, 31),
            [
                ("Pro — base fee, prorated 2026-01-01 to 2026-12-31", D("1196.71")),
                ("Max — base fee, prorated 2026-12-31 to 2027-01-01", D("6.58")),
            ],
        ),
    ],
)
def test_a_change_now_inside_the_year_owes_each_plans_fee_for_its_days(changed_at, expected):
    """A change now to a plan of the same interval and charges cadence: the months go on,
    and December's invoice (the one that closes the plan period) has each plan's base fee
    for its days of the year, by day over the year's 365 — including a change on the plan
    period's last day. The month of the change invoices its usage, no fee."""
    subscription = subscribe(yearly(calls()), start=at(2026, 1, 1))
    bigger = plan(calls(), interval="year", base_fee="2400", charges_interval="month", name="Max")
    invoicing.close_subscription_periods(
        subscription_id=subscription.pk, as_of=changed_at.replace(day=1)
    )
    services.change_subscription(subscription_id=subscription.pk, plan=bigger, now=changed_at)
    use(subscription, 100, at_time=changed_at)
    invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=at(2027, 1, 1))
    issued = invoices(subscription)
    assert len(issued) == 12
    month_of_change = issued[changed_at.month - 1]
    assert ("usage", "Calls, tier 1", D(100), D(2)) in lines(month_of_change)
    fees = [
        (line.description, line.amount)
        for line in issued[-1].lines.filter(kind="base_fee").order_by("position")
    ]
    assert fees == expected
    assert sum(i.lines.filter(kind="base_fee").count() for i in issued[:-1]) == 0


def test_a_weekly_plan_with_usage_billed_daily_closes_one_day_periods():
    """A period of one day: a weekly plan (7.00) from Monday 6 April 2026 with its usage
    invoiced every day. Monday 1,000 calls, the last at 23:59 → exactly tier 1's upper
    bound: 20.00; Tuesday 1,001 → the tiers start afresh: 20.00 + 0.01 = 20.01; Wednesday
    to Saturday nothing (0.00); Sunday's invoice closes the week and carries the fee,
    7.00. Seven invoices, 47.01 in all."""
    subscription = subscribe(
        plan(calls(), interval="week", base_fee="7", charges_interval="day"),
        start=at(2026, 4, 6),
    )
    assert (subscription.current_period_start, subscription.current_period_end) == (
        at(2026, 4, 6),
        at(2026, 4, 7),
    )
    use(subscription, 999, at_time=at(2026, 4, 6, 9))
    use(subscription, 1, at_time=at(2026, 4, 6, 23, 59))
    use(subscription, 1001, at_time=at(2026, 4, 7, 0))
    made = invoicing.close_subscription_periods(
        subscription_id=subscription.pk, as_of=at(2026, 4, 13)
    )
    assert made == 7
    issued = invoices(subscription)
    assert [(i.period_start, i.period_end) for i in issued] == [
        (at(2026, 4, d), at(2026, 4, d + 1)) for d in range(6, 13)
    ]
    assert lines(issued[0]) == [("usage", "Calls, tier 1", D(1000), D(20))]
    assert lines(issued[1]) == [
        ("usage", "Calls, tier 1", D(1000), D(20)),
        ("usage", "Calls, tier 2", D(1), D("0.01")),
    ]
    assert all(lines(i) == [] for i in issued[2:6])
    assert lines(issued[6]) == [("base_fee", "Pro — base fee", D(1), D(7))]
    assert [i.total for i in issued] == [D(20), D("20.01"), 0, 0, 0, 0, D(7)]


# --- quarterly usage on a calendar year -----------------------------------------------------------


def test_a_calendar_year_with_quarterly_usage_prorates_the_stubs_by_their_own_period():
    """Billed on the calendar (1 January), started 15 March 2026 09:30. Charge periods:
    the stub 15 March – 1 April, then the quarters; the plan period 15 March 2026 –
    1 January 2027 is a stub of the calendar year. A charge minimum of 30.00 a quarter,
    no usage: the first quarter's stub owes 17 of its 90 days (15 March counted in full):
    30 × 17 / 90 = 5.666666666667 (5.67); each whole quarter 30.00. The base fee, on the
    last quarter's invoice: 292 of the year's 365 days (17 + 275), 1,200 × 292 / 365 =
    960.00."""
    the_plan = yearly(
        calls(minimum_amount=D(30)),
        charges_interval="quarter",
        billing_time="calendar",
        billing_anchor_day=1,
    )
    subscription = subscribe(the_plan, start=at(2026, 3, 15, 9, 30))
    assert (subscription.current_period_start, subscription.current_period_end) == (
        at(2026, 3, 15, 9, 30),
        at(2026, 4, 1),
    )
    made = invoicing.close_subscription_periods(
        subscription_id=subscription.pk, as_of=at(2027, 1, 1)
    )
    assert made == 4
    issued = invoices(subscription)
    assert [(i.period_start, i.period_end) for i in issued] == [
        (at(2026, 3, 15, 9, 30), at(2026, 4, 1)),
        (at(2026, 4, 1), at(2026, 7, 1)),
        (at(2026, 7, 1), at(2026, 10, 1)),
        (at(2026, 10, 1), at(2027, 1, 1)),
    ]
    assert [i.total for i in issued] == [D("5.67"), D(30), D(30), D(990)]
    assert issued[0].lines.get().amount_precise == D("5.666666666667")
    assert lines(issued[3])[0] == (
        "base_fee",
        "Pro — base fee, prorated 2026-03-15 to 2027-01-01",
        D(1),
        D(960),
    )


# --- plan changes keep the cadence ---------------------------------------------------------------


def test_a_change_to_a_plan_with_another_charges_cadence_is_refused():
    subscription = subscribe(yearly(calls()), start=at(2026, 1, 1))
    other = plan(calls(), interval="year", base_fee="1200")
    with pytest.raises(errors.ValidationFailed, match="charges' interval"):
        services.change_subscription(
            subscription_id=subscription.pk, plan=other, now=at(2026, 1, 10)
        )


# --- what is allowed, refused alike ---------------------------------------------------------------


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("cadence", "c@x.example", None))
    return client


@pytest.fixture
def meter_code(db) -> str:
    return MeterFactory(code=unique("m")).code


@pytest.mark.parametrize(
    ("interval", "interval_count", "charges_interval", "charges_interval_count"),
    [
        ("year", 1, "month", 1),
        ("year", 1, "quarter", 1),
        ("year", 1, "month", 6),
        ("quarter", 1, "month", 1),
        ("month", 6, "month", 2),
        ("week", 4, "week", 1),
        ("week", 1, "day", 1),
    ],
)
def test_cadences_dividing_the_plan_period_are_accepted_alike(
    api,
    staff_client,
    meter_code,
    interval,
    interval_count,
    charges_interval,
    charges_interval_count,
):
    plan_body = body(
        {"meter": meter_code, "unit_price": "0.1"},
        interval=interval,
        interval_count=interval_count,
        charges_interval=charges_interval,
        charges_interval_count=charges_interval_count,
    )
    for publish in (via_file, lambda p: via_api(api, p), lambda p: via_admin(staff_client, p)):
        published = publish({**plan_body, "code": unique("p")})
        assert isinstance(published, Plan), published
        assert (published.charges_interval, published.charges_interval_count) == (
            charges_interval,
            charges_interval_count,
        )
        assert services.plan_spec_of(published).canonical_hash() == published.spec_hash
    shown = api.get(f"/api/v1/plans/{published.code}").json()
    assert (shown["charges_interval"], shown["charges_interval_count"]) == (
        charges_interval,
        charges_interval_count,
    )


MISALIGNED = [
    ("month", 1, "week", 1),  # a month is not whole weeks
    ("year", 1, "week", 1),
    ("year", 1, "month", 5),  # 12 months are not whole periods of 5
    ("quarter", 1, "month", 2),
    ("week", 1, "day", 2),  # 7 days are not whole periods of 2
    ("month", 1, "quarter", 1),  # longer than the plan's period
    ("week", 2, "month", 1),
]


@pytest.mark.parametrize(
    ("interval", "interval_count", "charges_interval", "charges_interval_count"), MISALIGNED
)
def test_misaligned_cadences_are_refused_with_their_code_by_the_api_and_the_file(
    api, meter_code, interval, interval_count, charges_interval, charges_interval_count
):
    plan_body = body(
        {"meter": meter_code, "unit_price": "0.1"},
        interval=interval,
        interval_count=interval_count,
        charges_interval=charges_interval,
        charges_interval_count=charges_interval_count,
    )
    response = api.post("/api/v1/plans", plan_body)
    payload = assert_error(response, 400, "charges_interval_misaligned", param="charges_interval")
    message = payload["error"]["message"]
    assert "do not divide the plan's period" in message
    from_file = via_file({**plan_body, "code": unique("p")})
    assert isinstance(from_file, str)
    assert message in from_file and "(charges_interval_misaligned)" in from_file
    assert not Plan.objects.exists()


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"charges_interval": "fortnight"}, "charges_interval", "charges_interval must be one of"),
        ({"charges_interval_count": 2}, "charges_interval", "applies with a charges_interval"),
        (
            {"charges_interval": "month", "charges_interval_count": 0},
            "charges_interval_count",
            "charges_interval_count must be a whole number from 1 to 60",
        ),
        ({"charges_interval": "month", "interval": "month"}, "charges_interval", "leave"),
        (
            {"charges_interval": "month", "commitment_amount": "100"},
            "commitment_amount",
            "has no commitment_amount",
        ),
        (
            {"charges_interval": "month", "minimum_amount": "100"},
            "minimum_amount",
            "has no minimum_amount",
        ),
        (
            {"charges_interval": "month", "consumption_model": "balance"},
            "charges_interval",
            "applies to metered plans",
        ),
    ],
)
def test_other_charges_cadences_are_refused_alike(
    api, staff_client, meter_code, extra, param, message
):
    plan_body = body({"meter": meter_code, "unit_price": "0.1"}, **{"interval": "year", **extra})
    response = api.post("/api/v1/plans", plan_body)
    assert_error(response, 400, "invalid_parameter", param=param)
    assert message in response.json()["error"]["message"]
    assert message in via_file({**plan_body, "code": unique("p")})
    if extra.get("charges_interval") != "fortnight":  # the admin offers a list to pick from
        assert message in via_admin(staff_client, {**plan_body, "code": unique("p")})
    assert not Plan.objects.exists()


def test_an_unknown_field_beside_it_is_refused(api, meter_code):
    plan_body = body(
        {"meter": meter_code, "unit_price": "0.1"},
        interval="year",
        charges_interval="month",
        bill_charges_monthly=True,
    )
    assert_error(
        api.post("/api/v1/plans", plan_body), 400, "unknown_parameter", param="bill_charges_monthly"
    )


@pytest.mark.parametrize("field", ["charges_interval", "cadence"])
def test_other_names_for_a_charges_cadence_are_refused_alike_with_what_to_write_instead(
    api, staff_client, meter_code, field
):
    """A price book from Orb or Stripe may name a charge's cadence otherwise (or put the
    plan's charges_interval on the charge). A charge's own cadence is ``interval``
    (tests/billing/test_charge_cadence.py): refused by the file, the API and the admin with
    that sentence, not as a misspelling ("unknown field")."""
    charge = {"meter": meter_code, "unit_price": "0.1", field: "quarter"}
    plan_body = body(charge, interval="year")
    response = api.post("/api/v1/plans", plan_body)
    assert_error(response, 400, "unknown_parameter", param=f"charges[0].{field}")
    message = response.json()["error"]["message"]
    assert message == services.CHARGE_FIELD_HINTS[field]
    assert "interval × interval_count" in message
    assert via_file({**plan_body, "code": unique("p")}) == message
    assert (
        via_admin(staff_client, {**plan_body, "code": unique("p")})
        == f"charges[0].{field}: {message}"
    )
    assert not Plan.objects.exists()


def test_the_demo_file_has_a_yearly_plan_with_monthly_usage():
    from billing.pricing.parse import parse_pricing
    from tests.billing.test_pricing import DEMO

    annual = {p.code: p for p in parse_pricing(path=DEMO).plans}["annual-usage-monthly"]
    assert (annual.interval, annual.base_fee) == ("year", D(1200))
    assert (annual.charges_interval, annual.charges_interval_count) == ("month", 1)
