"""``available`` has one meaning across the API: posted − held, on GET
/customers/{id}/balance and on POST /authorize alike. The headroom authorize compares an
amount with (``available`` plus a postpaid wallet's credit limit) is ``spendable``."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services
from tests.billing import conftest as billing_fixtures

api = billing_fixtures.api
api_key = billing_fixtures.api_key
make_key = billing_fixtures.make_key
make_customer = billing_fixtures.make_customer

pytestmark = pytest.mark.django_db


def money(value: str) -> str:
    return f"{Decimal(value):.12f}"


def figures(api, external_id: str, amount: str) -> tuple[dict, dict]:
    balance = api.get(f"/api/v1/customers/{external_id}/balance").json()["balances"][0]
    authorize = api.post("/api/v1/authorize", {"customer": external_id, "amount": amount}).json()
    return balance, authorize


def test_postpaid_available_is_posted_minus_held_on_both_routes(api, make_customer):
    customer = make_customer("post", billing_mode="postpaid", credit_limit=Decimal(50))
    services.top_up(customer=customer, amount=Decimal(10))
    hold = api.post("/api/v1/holds", {"customer": "post", "amount": "3"})
    assert hold.status_code == 201, hold.json()
    balance, authorize = figures(api, "post", "56")
    assert (balance["posted"], balance["held"], balance["available"]) == (
        money("10"),
        money("3"),
        money("7"),
    )
    assert authorize["available"] == balance["available"] == money("7")
    assert authorize["spendable"] == money("57")  # 7 + the 50 credit limit
    assert authorize["allowed"] is True
    assert "balance" not in authorize
    assert figures(api, "post", "57.000000000001")[1]["allowed"] is False


def test_prepaid_spendable_equals_available(api, make_customer):
    customer = make_customer("pre")
    services.top_up(customer=customer, amount=Decimal(5))
    balance, authorize = figures(api, "pre", "1")
    assert authorize["available"] == authorize["spendable"] == balance["available"] == money("5")


def test_the_schema_documents_the_one_meaning(api):
    schema = api.get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    authorize = components["AuthorizeResult"]["properties"]
    balance = components["Balance"]["properties"]
    assert "Posted − held" in authorize["available"]["description"]
    assert "Posted − held" in balance["available"]["description"]
    assert "headroom" in authorize["spendable"]["description"]
