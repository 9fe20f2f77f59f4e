"""Review of the intervals change (s11-intervals): defects shown by failing tests."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services as billing
from invoicing.selectors import compute_invoice
from tests.billing.conftest import api, api_key, make_key  # noqa: F401  (fixtures)
from tests.billing.test_pricing_shapes import body, via_admin, via_api, via_file
from tests.factories import CustomerFactory
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

pytestmark = pytest.mark.django_db
D = Decimal


def calendar_plan(*charges, day=1, interval="month", **kw):
    return plan(*charges, billing_time="calendar", billing_anchor_day=day, interval=interval, **kw)


# 6. The pricing file refuses a negative interval_count / billing_anchor_day with its own
#    reader's message ("must be between 0 and 2147483648"), not the validator's the API and
#    the admin give (issue 18 item 4: one validator, the same message).
@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("rev", "r@x.example", None))
    return client


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"interval_count": -1}, "interval_count must be a whole number from 1 to 60"),
        (
            {"billing_time": "calendar", "billing_anchor_day": -1},
            "billing_anchor_day for interval month is a day of the month, 1 to 31",
        ),
    ],
)
def test_negative_cadence_fields_are_refused_alike(api, staff_client, fields, message):  # noqa: F811
    got = [
        publish({**body(**fields), "code": f"neg{i}"})
        for i, publish in enumerate(
            (lambda p: via_api(api, p), lambda p: via_admin(staff_client, p))
        )
    ]
    assert all(isinstance(g, str) and message in g for g in got), got
    from_file = via_file(body(**fields))
    # fails: "plans[0].interval_count: must be between 0 and 2147483648"
    assert isinstance(from_file, str) and message in from_file, from_file
