"""GET / PUT /api/v1/customers/{external_id}/wallets/{currency}/auto-top-up: strict input,
stable error codes, the settings written through set_auto_top_up."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services
from billing.models import AutoTopUp
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db
D = Decimal
GOOD = {
    "enabled": True,
    "threshold": "20.00",
    "target": "100.00",
    "monthly_cap": "500.00",
    "cool_off_seconds": 300,
    "max_failures": 4,
}


def url(external_id: str = "acme", currency: str = "USD") -> str:
    return f"/api/v1/customers/{external_id}/wallets/{currency}/auto-top-up"


@pytest.fixture
def acme(db):
    return CustomerFactory(external_id="acme", funds="5")


def error(response) -> tuple[int, str, str | None]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["param"]


def test_put_then_get(api, acme):
    assert error(api.get(url())) == (404, "auto_top_up_not_found", "currency")

    response = api.put(url(), GOOD, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["enabled"] is True
    assert (body["threshold"], body["target"], body["monthly_cap"]) == (
        "20.000000000000",
        "100.000000000000",
        "500.000000000000",
    )
    assert (body["cool_off_seconds"], body["max_failures"], body["consecutive_failures"]) == (
        300,
        4,
        0,
    )
    assert body["currency"] == body["charge_currency"] == "USD"
    assert body["charged_this_month"] == "0.000000000000" and body["recent_attempts"] == []
    assert api.get(url()).json() == body
    auto = AutoTopUp.objects.get(customer=acme)
    assert (auto.threshold, auto.target, auto.monthly_cap) == (D(20), D(100), D(500))
    # the same body again changes nothing; defaults fill what is not sent
    assert api.put(url(), GOOD, format="json").json()["threshold"] == body["threshold"]
    short = {k: GOOD[k] for k in ("enabled", "threshold", "target", "monthly_cap")}
    again = api.put(url(), short, format="json").json()
    assert (again["cool_off_seconds"], again["max_failures"]) == (600, 3)
    assert AutoTopUp.objects.count() == 1


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"target": "20.00"}, (400, "invalid_parameter", "target")),
        ({"target": "10"}, (400, "invalid_parameter", "target")),
        ({"threshold": "-1"}, (400, "invalid_parameter", "threshold")),
        ({"monthly_cap": "0"}, (400, "invalid_parameter", "monthly_cap")),
        ({"monthly_cap": "1e30"}, (400, "amount_too_large", "monthly_cap")),
        ({"enabled": "true"}, (400, "invalid_parameter", "enabled")),
        ({"cool_off_seconds": "60"}, (400, "invalid_parameter", "cool_off_seconds")),
        ({"cool_off_seconds": -1}, (400, "invalid_parameter", "cool_off_seconds")),
        ({"max_failures": 0}, (400, "invalid_parameter", "max_failures")),
        ({"max_failures": True}, (400, "invalid_parameter", "max_failures")),
        ({"treshold": "1"}, (400, "unknown_parameter", "treshold")),
    ],
)
def test_invalid_settings_are_refused_and_change_nothing(api, acme, change, expected):
    response = api.put(url(), {**GOOD, **change}, format="json")
    assert error(response) == expected
    assert AutoTopUp.objects.count() == 0


def test_required_fields(api, acme):
    body = {k: v for k, v in GOOD.items() if k != "target"}
    assert error(api.put(url(), body, format="json")) == (400, "parameter_missing", "target")


def test_unknown_customer_wallet_and_postpaid_wallet(api, acme):
    assert error(api.put(url("nobody"), GOOD, format="json"))[:2] == (404, "customer_not_found")
    assert error(api.put(url(currency="EUR"), GOOD, format="json")) == (
        404,
        "wallet_not_found",
        "currency",
    )
    CustomerFactory(external_id="globex", billing_mode="postpaid")
    assert error(api.put(url("globex"), GOOD, format="json")) == (
        409,
        "wallet_not_prepaid",
        "currency",
    )


def test_credits_wallet_and_scopes(api, read_api, acme):
    services.ensure_wallet(customer=acme, currency="CREDITS")
    body = {**GOOD, "threshold": "1000", "target": "5000", "monthly_cap": "50"}
    response = api.put(url(currency="CREDITS"), body, format="json")
    assert response.status_code == 200
    assert (response.json()["currency"], response.json()["charge_currency"]) == ("CREDITS", "USD")
    assert error(read_api.put(url(), GOOD, format="json"))[:2] == (403, "insufficient_scope")
    assert read_api.get(url(currency="CREDITS")).status_code == 200
    assert error(api.get(url() + "?x=1"))[:2] == (400, "unknown_parameter")
