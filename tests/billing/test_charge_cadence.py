"""A charge's own cadence (``interval`` × ``interval_count`` on a charge, Orb's per-price
cadence): what the one validator (``billing.services.cadence.validate_charge_cadences``)
accepts and refuses, alike for the pricing file, ``POST /api/v1/plans`` and the admin.
The billing period is the plan's charges' cadence (``charges_interval``, else its
interval); a charge's period must be a whole multiple of it, longer, in the same kind of
unit. Rating and the close: tests/invoicing/test_charge_cadence.py."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from billing import errors, services
from billing.models import Plan
from tests.billing.conftest import assert_error
from tests.billing.test_pricing_shapes import body, via_admin, via_api, via_file
from tests.conftest import unique
from tests.factories import MeterFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("cadence", "c@x.example", None))
    return client


@pytest.fixture
def meter_code(db) -> str:
    return MeterFactory(code=unique("m")).code


def _plan(meter_code: str, charge: dict, **plan) -> dict:
    """One plain charge beside the charge under test (``charge``, on its own meter)."""
    gpu = MeterFactory(code=unique("gpu")).code
    return {
        **body({"meter": meter_code, "unit_price": "0.1"}, **plan),
        "charges": [
            {"meter": meter_code, "unit_price": "0.1"},
            {"meter": gpu, "unit_price": "2", **charge},
        ],
    }


@pytest.mark.parametrize(
    ("plan", "interval", "interval_count"),
    [
        ({"interval": "month"}, "quarter", 1),  # shorter than nothing: 3 monthly periods
        ({"interval": "month"}, "month", 3),
        ({"interval": "month"}, "year", 1),  # longer than the plan's own period
        ({"interval": "month", "interval_count": 2}, "month", 6),
        ({"interval": "year", "charges_interval": "month"}, "quarter", 1),  # inside the year
        ({"interval": "year", "charges_interval": "month"}, "year", 2),
        ({"interval": "week"}, "week", 4),
        ({"interval": "week"}, "day", 14),  # days for day and week
        ({"interval": "day"}, "week", 1),
    ],
)
def test_whole_multiples_of_the_billing_period_are_accepted_alike(
    api, staff_client, meter_code, plan, interval, interval_count
):
    plan_body = _plan(meter_code, {"interval": interval, "interval_count": interval_count}, **plan)
    published = []
    for publish in (via_file, lambda p: via_api(api, p), lambda p: via_admin(staff_client, p)):
        result = publish({**plan_body, "code": unique("p")})
        assert isinstance(result, Plan), result
        published.append(result)
        plain, own = result.charges.order_by("id")
        assert (plain.interval, plain.interval_count) == ("", 1)
        assert (own.interval, own.interval_count) == (interval, interval_count)
        assert services.plan_spec_of(result).canonical_hash() == result.spec_hash
    specs = [services.plan_spec_of(p).charges for p in published]
    assert specs[0] == specs[1] == specs[2]
    shown = api.get(f"/api/v1/plans/{published[1].code}").json()["charges"][1]
    assert (shown["interval"], shown["interval_count"]) == (interval, interval_count)


MISALIGNED = [
    ({"interval": "month"}, "week", 1),  # months are not whole weeks
    ({"interval": "month"}, "week", 5),
    ({"interval": "month"}, "day", 30),
    ({"interval": "quarter"}, "month", 4),  # 4 months are not whole quarters
    ({"interval": "quarter"}, "month", 1),  # shorter than the billing period
    ({"interval": "month", "interval_count": 2}, "quarter", 1),  # 3 months: not whole 2s
    ({"interval": "week"}, "day", 10),
    ({"interval": "week"}, "month", 1),
    ({"interval": "year", "charges_interval": "month", "charges_interval_count": 2}, "quarter", 1),
]


@pytest.mark.parametrize(("plan", "interval", "interval_count"), MISALIGNED)
def test_a_charge_period_not_made_of_billing_periods_is_refused_with_its_code(
    api, staff_client, meter_code, plan, interval, interval_count
):
    plan_body = _plan(meter_code, {"interval": interval, "interval_count": interval_count}, **plan)
    response = api.post("/api/v1/plans", plan_body)
    payload = assert_error(
        response, 400, "charges_interval_misaligned", param="charges[1].interval"
    )
    message = payload["error"]["message"]
    assert "is not a whole number of the subscription's billing periods" in message
    from_file = via_file({**plan_body, "code": unique("p")})
    assert isinstance(from_file, str)
    assert message in from_file and "(charges_interval_misaligned)" in from_file
    assert message in via_admin(staff_client, {**plan_body, "code": unique("p")})
    assert not Plan.objects.exists()


@pytest.mark.parametrize(
    ("plan", "charge", "param", "message"),
    [
        ({}, {"interval": "fortnight"}, "charges[1].interval", "a charge's interval must be"),
        ({}, {"interval_count": 3}, "charges[1].interval", "applies with an interval"),
        (
            {},
            {"interval": "month", "interval_count": 61},
            "charges[1].interval_count",
            "from 1 to 60",
        ),
        ({}, {"interval": "month"}, "charges[1].interval", "leave its interval out"),
        (
            {"interval": "year", "charges_interval": "quarter"},
            {"interval": "month", "interval_count": 3},
            "charges[1].interval",
            "billed every billing period already",
        ),
        (
            {"consumption_model": "balance"},
            {"interval": "quarter"},
            "charges[1].interval",
            "applies to metered plans",
        ),
        (
            {"minimum_amount": "50"},
            {"interval": "quarter"},
            "minimum_amount",
            "has no minimum_amount",
        ),
        (
            {"commitment_amount": "50"},
            {"interval": "quarter"},
            "commitment_amount",
            "has no commitment_amount",
        ),
    ],
)
def test_other_charge_cadences_are_refused_alike(
    api, staff_client, meter_code, plan, charge, param, message
):
    plan_body = _plan(meter_code, charge, **plan)
    response = api.post("/api/v1/plans", plan_body)
    assert_error(response, 400, "invalid_parameter", param=param)
    assert message in response.json()["error"]["message"]
    assert message in via_file({**plan_body, "code": unique("p")})
    assert message in via_admin(staff_client, {**plan_body, "code": unique("p")})
    assert not Plan.objects.exists()


def test_a_charge_minimum_may_stay_beside_its_own_cadence(api, meter_code):
    plan_body = _plan(meter_code, {"interval": "quarter", "minimum_amount": "30"})
    published = via_api(api, plan_body)
    assert isinstance(published, Plan), published
    assert published.charges.order_by("id")[1].minimum_amount == 30


def test_plans_without_it_keep_their_hash():
    """Published before a charge could have a cadence: the same spec, the same hash (the
    fields are left out of the hash at their defaults), so re-applying a pricing file makes
    no new version. The hash below is the one this spec had before the fields existed."""
    steady = services.ChargeSpec(meter="calls", unit_price=Decimal("0.1"))
    spec = services.PlanSpec(code="steady", name="Steady", charges=(steady,))
    assert spec.canonical_hash() == (
        "23effe5912839dda0c0681d1d48cb8828fb3f2f3458eb78751caf0263df19e22"
    )
    quarterly = replace(steady, interval="quarter")
    assert replace(spec, charges=(quarterly,)).canonical_hash() != spec.canonical_hash()


def test_the_demo_file_has_a_monthly_plan_with_gpu_time_quarterly():
    from billing.pricing.parse import parse_pricing
    from tests.billing.test_pricing import DEMO

    demo = {p.code: p for p in parse_pricing(path=DEMO).plans}["gpu-quarterly"]
    assert (demo.interval, demo.charges_interval) == ("month", "")
    assert [(c.meter, c.interval) for c in demo.charges] == [
        ("requests", ""),
        ("gpu_seconds", "quarter"),
    ]


def test_a_change_between_plans_with_other_charge_cadences_is_refused():
    """The quarter's counter would be invoiced on neither cadence: refused now and at period
    end alike; a change keeping the charges' own cadences goes through."""
    from tests.billing.conftest import at
    from tests.invoicing.conftest import plan, subscribe

    gpu = MeterFactory(code=unique("gpu"), event_name="gpu.used", property="hours").code

    def gpu_plan(**charge) -> Plan:
        return plan(services.ChargeSpec(meter=gpu, unit_price=Decimal(2), **charge))

    subscription = subscribe(gpu_plan(interval="quarter"), start=at(2026, 1, 1))
    for other in (gpu_plan(), gpu_plan(interval="year")):
        for at_period_end in (False, True):
            with pytest.raises(errors.ValidationFailed, match="own interval"):
                services.change_subscription(
                    subscription_id=subscription.pk,
                    plan=other,
                    at_period_end=at_period_end,
                    now=at(2026, 1, 10),
                )
    same = gpu_plan(interval="quarter", included_quantity=Decimal(10))
    changed = services.change_subscription(
        subscription_id=subscription.pk, plan=same, now=at(2026, 1, 10)
    )
    assert changed.plan_id == same.pk
