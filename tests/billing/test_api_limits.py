"""Limits of the API (billing.limits): amounts at most 10^15 per request (amount_too_large,
refused before any column could overflow), currencies ISO 4217 or a ledger unit, dates in a
sane range. Each of these used to be accepted, or answered 500."""

from __future__ import annotations

import pytest

from billing import services
from billing.models import CreditGrant, Customer, Plan, Subscription
from ledger.models import Hold
from ledger.models import Transaction as LedgerTransaction
from tests.billing.conftest import ChargeSpec, assert_error
from tests.factories import PlanFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

MAX = "1000000000000000"  # 10^15
JUST_OVER = "1000000000000000.000000000001"
HUGE = "9200000000000000000"  # 9.2 × 10^18: used to be credited as USD
E18 = "1000000000000000000"  # 10^18: used to answer 500 NumericValueOutOfRange


@pytest.fixture
def acme(make_customer) -> Customer:
    return make_customer("acme", funds=100)


@pytest.fixture
def credits_acme(make_customer, make_meter) -> Customer:
    customer = make_customer("credits-acme")
    meter = make_meter("units_limits", event_name="api.call", property="units")
    plan = PlanFactory(
        code="credits-limits",
        name="Credits",
        consumption_model="credits",
        units_per_credit=1,
        charges=(ChargeSpec(meter=meter.code),),
    )
    SubscriptionFactory(customer=customer, plan=plan)
    services.ensure_wallet(customer=customer, currency="CREDITS")
    return customer


def ledger_count() -> int:
    return LedgerTransaction.objects.count()


# --- amounts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [HUGE, JUST_OVER, "1e20"])
def test_a_top_up_above_the_maximum_is_refused(api, acme, amount):
    before = ledger_count()
    response = api.post("/api/v1/customers/acme/top-ups", {"amount": amount}, format="json")
    assert_error(response, 400, "amount_too_large", param="amount")
    assert ledger_count() == before


def test_a_top_up_of_exactly_the_maximum_is_taken(api, acme):
    response = api.post("/api/v1/customers/acme/top-ups", {"amount": MAX}, format="json")
    assert response.status_code == 201, response.json()


def test_a_credits_top_up_of_10_to_the_18_is_400_not_500(api, credits_acme):
    url = f"/api/v1/customers/{credits_acme.external_id}/top-ups"
    response = api.post(url, {"amount": E18, "currency": "CREDITS"}, format="json")
    assert_error(response, 400, "amount_too_large", param="amount")


def test_a_credit_grant_of_10_to_the_18_is_400_not_500(api, credits_acme):
    url = f"/api/v1/customers/{credits_acme.external_id}/credit-grants"
    response = api.post(url, {"amount": E18}, format="json")
    assert_error(response, 400, "amount_too_large", param="amount")
    assert not CreditGrant.objects.exists()


def test_a_credit_limit_of_10_to_the_18_is_400_not_500(api):
    body = {"external_id": "big", "name": "B", "billing_mode": "postpaid", "credit_limit": E18}
    response = api.post("/api/v1/customers", body, format="json")
    assert_error(response, 400, "amount_too_large", param="credit_limit")
    assert not Customer.objects.filter(external_id="big").exists()


@pytest.mark.parametrize("route", ["/api/v1/authorize", "/api/v1/holds"])
def test_authorize_and_hold_amounts_above_the_maximum_are_refused(api, acme, route):
    response = api.post(route, {"customer": "acme", "amount": E18}, format="json")
    assert_error(response, 400, "amount_too_large", param="amount")
    assert not Hold.objects.exists()


def test_a_settle_amount_above_the_maximum_is_refused(api, acme):
    hold = api.post("/api/v1/holds", {"customer": "acme", "amount": "1"}, format="json").json()
    response = api.post(f"/api/v1/holds/{hold['id']}/settle", {"amount": E18}, format="json")
    assert_error(response, 400, "amount_too_large", param="amount")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"base_fee": E18}, "base_fee"),
        ({"charges": [{"meter": "lim_tokens", "unit_price": E18}]}, "charges[0].unit_price"),
        (
            {
                "charges": [
                    {
                        "meter": "lim_tokens",
                        "price_model": "graduated",
                        "tiers": [{"up_to": None, "flat_fee": HUGE}],
                    }
                ]
            },
            "charges[0].tiers[0].flat_fee",
        ),
    ],
)
def test_plan_prices_beyond_their_column_are_refused(api, make_meter, change, param):
    make_meter("lim_tokens")
    body = {"code": "lim", "name": "Lim", **change}
    response = api.post("/api/v1/plans", body, format="json")
    assert_error(response, 400, "amount_too_large", param=param)
    assert not Plan.objects.filter(code="lim").exists()


# --- currencies --------------------------------------------------------------------------------


@pytest.mark.parametrize("currency", ["ABC", "QQQ", "usd", "CREDITS", "XTS"])
def test_a_customer_currency_must_be_iso_4217(api, currency):
    body = {"external_id": "cur", "name": "C", "currency": currency}
    assert_error(
        api.post("/api/v1/customers", body, format="json"),
        400,
        "invalid_parameter",
        param="currency",
    )
    assert not Customer.objects.filter(external_id="cur").exists()


def test_an_iso_currency_other_than_usd_is_taken(api):
    body = {"external_id": "chf", "name": "C", "currency": "CHF"}
    assert api.post("/api/v1/customers", body, format="json").status_code == 201


def test_a_plan_currency_must_be_iso_4217(api):
    body = {"code": "abc", "name": "A", "currency": "ABC"}
    assert_error(
        api.post("/api/v1/plans", body, format="json"), 400, "invalid_parameter", param="currency"
    )


def test_a_top_up_currency_must_be_iso_4217_or_credits(api, acme):
    response = api.post(
        "/api/v1/customers/acme/top-ups", {"amount": "1", "currency": "ZZZ"}, format="json"
    )
    assert_error(response, 400, "invalid_parameter", param="currency")


def test_authorize_takes_a_ledger_unit_but_not_any_letters(api, acme):
    response = api.post(
        "/api/v1/authorize", {"customer": "acme", "amount": "1", "currency": "XYZXYZ"}
    )
    assert_error(response, 400, "invalid_parameter", param="currency")
    response = api.post(
        "/api/v1/authorize", {"customer": "acme", "amount": "1", "currency": "TOKENS"}
    )
    assert response.status_code != 400 or response.json()["error"]["param"] != "currency"


# --- dates -------------------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["0001-01-01T00:00:00Z", "1999-12-31T23:59:59Z"])
def test_a_subscription_cannot_start_before_2000(api, acme, make_plan, start):
    make_plan("dated")
    body = {"customer": "acme", "plan": "dated", "start": start}
    assert_error(
        api.post("/api/v1/subscriptions", body, format="json"),
        400,
        "invalid_parameter",
        param="start",
    )
    assert not Subscription.objects.exists()


def test_a_grant_cannot_expire_more_than_100_years_ahead(api, credits_acme):
    url = f"/api/v1/customers/{credits_acme.external_id}/credit-grants"
    body = {"amount": "5", "expires_at": "9999-12-31T00:00:00Z"}
    assert_error(api.post(url, body, format="json"), 400, "invalid_parameter", param="expires_at")
