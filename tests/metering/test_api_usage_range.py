"""GET /customers/{id}/usage: the range in the query, for customers with a live, a canceled
or no subscription. Every malformed or empty ``from`` / ``to`` answers 400 with a stable
code or falls back to the documented default; never a 500."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import services
from billing.periods import add_months
from tests.billing import conftest as billing_fixtures
from tests.billing.conftest import ChargeSpec, assert_error, iso

api = billing_fixtures.api
api_key = billing_fixtures.api_key
make_key = billing_fixtures.make_key
make_customer = billing_fixtures.make_customer
make_meter = billing_fixtures.make_meter
make_plan = billing_fixtures.make_plan

pytestmark = pytest.mark.django_db

D = Decimal
START = datetime.combine(timezone.now().date() - timedelta(days=10), time(), tzinfo=UTC)
URL = "/api/v1/customers/acme/usage"


@pytest.fixture
def metered(make_meter, make_plan):
    make_meter("calls", event_name="api.call", property="units")
    return make_plan("metered", charges=[ChargeSpec(meter="calls", unit_price=D("0.5"))])


@pytest.fixture
def acme(make_customer):
    return make_customer("acme", billing_mode="postpaid")


def use(api, key: str, units: int = 2) -> None:
    body = {
        "idempotency_key": key,
        "customer": "acme",
        "event_name": "api.call",
        "timestamp": iso(START + timedelta(days=1)),
        "properties": {"units": units},
    }
    response = api.post("/api/v1/events", body)
    assert response.status_code == 201, response.json()


@pytest.mark.parametrize(
    "query", ["", "?from=", "?from=&to=", "?to=", "?from=%20", "?to=2026-04-01"]
)
def test_no_subscription_and_no_from_asks_for_from(api, acme, query):
    assert_error(api.get(URL + query), 400, "parameter_missing", param="from")


def test_no_subscription_with_a_range_reads_nothing(api, acme):
    response = api.get(URL + "?from=2026-04-01&to=2026-04-03")
    assert response.status_code == 200, response.json()
    assert (response.json()["meters"], response.json()["totals"]) == ([], [])


@pytest.mark.parametrize(
    "query, param",
    [
        ("?from=yesterday", "from"),
        ("?from=2026-02-30", "from"),
        ("?from=2026-04-01T10:00", "from"),  # no offset
        ("?from=2026-04-01&to=2026-04-0x", "to"),
        ("?from=0001-01-01", "from"),
        ("?from=2026-04-01&to=9999-12-31", "to"),
        ("?from=2026-04-03&to=2026-04-01", "to"),  # from after to
        ("?from=2026-04-01&to=2026-04-01", "to"),  # an empty range
        ("?from=2024-01-01&to=2026-01-01", "to"),  # longer than 400 days
        ("?from=2026-04-01%00", "from"),
    ],
)
def test_a_malformed_range_is_a_400(api, acme, metered, query, param):
    services.create_subscription(customer=acme, plan=metered, start=START)
    assert_error(api.get(URL + query), 400, "invalid_parameter", param=param)


def test_an_empty_from_or_to_is_the_default_range(api, acme, metered):
    services.create_subscription(customer=acme, plan=metered, start=START)
    use(api, "one")
    default = api.get(URL).json()
    assert default["meters"][0]["amount"] == "1"
    for query in ("?from=", "?to=", "?from=&to="):
        response = api.get(URL + query)
        assert response.status_code == 200, (query, response.json())
        assert response.json() == default, query


@pytest.mark.parametrize("at_period_end", [False, True])
def test_a_canceled_subscription_defaults_to_its_last_period(api, acme, metered, at_period_end):
    subscription = services.create_subscription(customer=acme, plan=metered, start=START)
    use(api, "one")
    services.cancel_subscription(subscription_id=subscription.pk, at_period_end=at_period_end)
    for query in ("", "?from=", "?to="):
        response = api.get(URL + query)
        assert response.status_code == 200, (query, response.json())
        body = response.json()
        assert body["from"] == iso(START), query
        assert body["totals"] == [{"currency": "USD", "amount": "1"}], query


def test_the_default_range_of_a_period_over_400_days_is_read_whole(
    api, acme, make_meter, make_plan
):
    """A two-year plan: the current period (730 days) is the default and is never refused for
    its length; a range the caller gives is still held to 400 days."""
    make_meter("calls", event_name="api.call", property="units")
    biennial = make_plan(
        "biennial",
        interval="year",
        interval_count=2,
        charges=[ChargeSpec(meter="calls", unit_price=D("0.5"))],
    )
    subscription = services.create_subscription(customer=acme, plan=biennial, start=START)
    assert subscription.current_period_end == add_months(START, 24)
    use(api, "one")
    for query in ("", "?from=", "?to=", "?from=&to="):
        response = api.get(URL + query)
        assert response.status_code == 200, (query, response.json())
        body = response.json()
        assert (body["from"], body["to"]) == (iso(START), iso(subscription.current_period_end))
        assert body["totals"] == [{"currency": "USD", "amount": "1"}], query
    given = f"?from={START.date()}&to={(START + timedelta(days=401)).date()}"
    assert_error(api.get(URL + given), 400, "invalid_parameter", param="to")
