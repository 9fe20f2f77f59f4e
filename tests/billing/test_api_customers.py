"""Customers, their wallets, balances, top-ups and ledger history through the v1 API."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from billing import services
from billing.models import Customer, Wallet
from ledger import selectors as ledger_selectors
from ledger.models import Account, Entry
from ledger.models import Transaction as LedgerTransaction
from tests.billing.conftest import assert_error, make_client, post_raw

pytestmark = pytest.mark.django_db

ZERO_BALANCE = {
    "currency": "USD",
    "posted": "0.000000000000",
    "held": "0.000000000000",
    "available": "0.000000000000",
}
EMPTY_ADDRESS = {
    "line1": "",
    "line2": "",
    "city": "",
    "state": "",
    "postal_code": "",
    "country": "",
}


def without_volatile(body: dict) -> dict:
    body = dict(body)
    assert isinstance(body.pop("id"), int)
    assert body.pop("created_at").endswith("Z")
    return body


# --- POST /customers ---------------------------------------------------------------------------


def test_create_a_prepaid_customer_with_defaults(api):
    response = api.post("/api/v1/customers", {"external_id": "acme-42", "name": "Acme Robotics"})
    assert response.status_code == 201, response.json()
    assert without_volatile(response.json()) == {
        "external_id": "acme-42",
        "name": "Acme Robotics",
        "email": "",
        "currency": "USD",
        "billing_mode": "prepaid",
        "collection_method": "charge_automatically",
        "days_until_due": None,
        "address": EMPTY_ADDRESS,
        "tax_id": "",
        "metadata": {},
        "stripe_customer_id": "",
        "wallets": [
            {
                "currency": "USD",
                "billing_mode": "prepaid",
                "credit_limit": None,
                "balance": ZERO_BALANCE,
            }
        ],
        "subscription": None,
    }
    customer = Customer.objects.get(external_id="acme-42")
    assert response.json()["id"] == customer.pk
    wallet = Wallet.objects.get(customer=customer)
    assert wallet.account.code == f"wallet:{customer.pk}:USD"
    assert wallet.account.allow_negative is False
    assert wallet.account.floor == Decimal(0)


def test_create_a_postpaid_customer_with_every_field(api):
    response = api.post(
        "/api/v1/customers",
        {
            "external_id": "org_7:eu@acme.test",
            "name": "Acme GmbH",
            "email": "billing@acme.test",
            "currency": "EUR",
            "billing_mode": "postpaid",
            "credit_limit": "500.00",
            "address": {
                "line1": "Hauptstraße 1",
                "line2": "2. OG",
                "city": "Berlin",
                "state": "BE",
                "postal_code": "10115",
                "country": "DE",
            },
            "tax_id": "DE123456789",
            "metadata": {"plan_source": "sales", "seats": 12},
        },
    )
    assert response.status_code == 201, response.json()
    assert without_volatile(response.json()) == {
        "external_id": "org_7:eu@acme.test",
        "name": "Acme GmbH",
        "email": "billing@acme.test",
        "currency": "EUR",
        "billing_mode": "postpaid",
        "collection_method": "charge_automatically",
        "days_until_due": None,
        "address": {
            "line1": "Hauptstraße 1",
            "line2": "2. OG",
            "city": "Berlin",
            "state": "BE",
            "postal_code": "10115",
            "country": "DE",
        },
        "tax_id": "DE123456789",
        "metadata": {"plan_source": "sales", "seats": 12},
        "stripe_customer_id": "",
        "wallets": [
            {
                "currency": "EUR",
                "billing_mode": "postpaid",
                "credit_limit": "500.000000000000",
                "balance": {**ZERO_BALANCE, "currency": "EUR"},
            }
        ],
        "subscription": None,
    }
    assert api.get("/api/v1/customers/org_7:eu@acme.test").json() == response.json()
    customer = Customer.objects.get(external_id="org_7:eu@acme.test")
    assert (customer.address_line1, customer.address_line2, customer.city) == (
        "Hauptstraße 1",
        "2. OG",
        "Berlin",
    )
    account = Wallet.objects.get(customer=customer).account
    assert (account.currency, account.allow_negative, account.floor) == (
        "EUR",
        True,
        Decimal("-500"),
    )


def test_a_postpaid_customer_without_a_limit_has_no_floor(api):
    response = api.post(
        "/api/v1/customers", {"external_id": "acme", "name": "Acme", "billing_mode": "postpaid"}
    )
    assert response.status_code == 201
    assert response.json()["wallets"][0]["credit_limit"] is None
    assert Wallet.objects.get(customer__external_id="acme").account.floor is None


def test_a_credit_limit_as_a_json_number_is_exact(api):
    response = post_raw(
        api,
        "/api/v1/customers",
        '{"external_id": "acme", "name": "Acme", '
        '"billing_mode": "postpaid", "credit_limit": 1234.1}',
    )
    assert response.status_code == 201, response.json()
    assert response.json()["wallets"][0]["credit_limit"] == "1234.100000000000"
    assert Wallet.objects.get(customer__external_id="acme").credit_limit == Decimal("1234.1")


def test_a_duplicate_external_id_is_a_conflict_and_changes_nothing(api, make_customer):
    first = make_customer("acme", name="Acme")
    accounts = Account.objects.count()
    response = api.post("/api/v1/customers", {"external_id": "acme", "name": "Other"})
    assert_error(
        response,
        409,
        "customer_exists",
        param="external_id",
        message="a customer with external_id 'acme' already exists",
    )
    assert Customer.objects.get(external_id="acme").name == "Acme"
    assert Wallet.objects.filter(customer=first).count() == 1
    assert Account.objects.count() == accounts


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"name": "Acme"}, "parameter_missing", "external_id"),
        ({"external_id": "acme"}, "parameter_missing", "name"),
        ({"external_id": "acme", "name": None}, "parameter_missing", "name"),
        ({"external_id": None, "name": "Acme"}, "parameter_missing", "external_id"),
        ({"external_id": "has space", "name": "Acme"}, "invalid_parameter", "external_id"),
        ({"external_id": "a/b", "name": "Acme"}, "invalid_parameter", "external_id"),
        ({"external_id": "x" * 201, "name": "Acme"}, "invalid_parameter", "external_id"),
        ({"external_id": "", "name": "Acme"}, "invalid_parameter", "external_id"),
        ({"external_id": "acme", "name": "x" * 201}, "invalid_parameter", "name"),
        ({"external_id": "acme", "name": "Acme", "email": "nope"}, "invalid_parameter", "email"),
        (
            {"external_id": "acme", "name": "Acme", "currency": "usd"},
            "invalid_parameter",
            "currency",
        ),
        (
            {"external_id": "acme", "name": "Acme", "currency": "DOLLARS"},
            "invalid_parameter",
            "currency",
        ),
        (
            {"external_id": "acme", "name": "Acme", "billing_mode": "weekly"},
            "invalid_parameter",
            "billing_mode",
        ),
        (
            {
                "external_id": "acme",
                "name": "Acme",
                "billing_mode": "postpaid",
                "credit_limit": "-1",
            },
            "invalid_parameter",
            "credit_limit",
        ),
        (
            {
                "external_id": "acme",
                "name": "Acme",
                "billing_mode": "postpaid",
                "credit_limit": "1.0000000000001",
            },
            "invalid_parameter",
            "credit_limit",
        ),
        (
            {
                "external_id": "acme",
                "name": "Acme",
                "billing_mode": "postpaid",
                "credit_limit": "lots",
            },
            "invalid_parameter",
            "credit_limit",
        ),
        (
            {"external_id": "acme", "name": "Acme", "address": {"country": "de"}},
            "invalid_parameter",
            "address.country",
        ),
        (
            {"external_id": "acme", "name": "Acme", "address": "Berlin"},
            "invalid_parameter",
            "address",
        ),
        (
            {"external_id": "acme", "name": "Acme", "metadata": ["a"]},
            "invalid_parameter",
            "metadata",
        ),
        (
            {"external_id": "acme", "name": "Acme", "metadata": {f"k{i}": i for i in range(51)}},
            "invalid_parameter",
            "metadata",
        ),
    ],
)
def test_invalid_customer_parameters(api, body, code, param):
    response = api.post("/api/v1/customers", body)
    assert_error(response, 400, code, param=param)
    assert not Customer.objects.exists()
    assert not Account.objects.exists()


def test_a_credit_limit_is_for_postpaid_customers_only(api):
    response = api.post(
        "/api/v1/customers", {"external_id": "acme", "name": "Acme", "credit_limit": "100"}
    )
    assert_error(
        response,
        400,
        "invalid_parameter",
        param="credit_limit",
        message="credit_limit applies to postpaid customers only",
    )
    assert not Customer.objects.exists()
    assert not Account.objects.exists()


def test_metadata_may_hold_fifty_keys(api):
    metadata = {f"k{i}": i for i in range(50)}
    response = api.post(
        "/api/v1/customers", {"external_id": "acme", "name": "Acme", "metadata": metadata}
    )
    assert response.status_code == 201
    assert response.json()["metadata"] == metadata


def test_metadata_may_hold_a_fractional_number(api):
    response = post_raw(
        api,
        "/api/v1/customers",
        '{"external_id": "acme", "name": "Acme", "metadata": {"ratio": 0.5}}',
    )
    assert response.status_code == 201, response.json()
    # kept exactly, as a decimal string (never a float)
    assert response.json()["metadata"]["ratio"] == "0.5"


@pytest.mark.parametrize(
    "body",
    [
        '{"external_id": "acme", "name": ',
        "not json",
        '{"external_id": "acme",}',
        "{'a': 1}",
        '{"external_id": "acme", "name": "Acme", "credit_limit": NaN}',
        '{"external_id": "acme", "name": "Acme", "credit_limit": Infinity}',
        '{"external_id": "acme", "name": "Acme", "credit_limit": -Infinity}',
    ],
)
def test_a_body_that_is_not_valid_json_is_refused(api, body):
    response = post_raw(api, "/api/v1/customers", body)
    payload = assert_error(response, 400, "invalid_json")
    assert payload["error"]["message"].startswith("the body is not valid JSON")
    assert not Customer.objects.exists()


def test_a_deeply_nested_body_is_invalid_json_not_a_server_error(api):
    api.raise_request_exception = False
    nested = "[" * 5000 + "]" * 5000
    response = post_raw(
        api,
        "/api/v1/customers",
        f'{{"external_id": "acme", "name": "Acme", "metadata": {{"x": {nested}}}}}',
    )
    assert response.status_code == 400, response.status_code
    assert response.json()["error"]["code"] in ("invalid_json", "invalid_parameter")
    assert not Customer.objects.exists()


def test_a_body_that_is_not_utf8_is_invalid_json(api):
    response = api.post(
        "/api/v1/customers",
        b'{"external_id": "\xff", "name": "A"}',
        content_type="application/json",
    )
    assert_error(response, 400, "invalid_json")


def test_an_email_longer_than_254_characters_is_an_invalid_parameter(api):
    api.raise_request_exception = False
    response = api.post(
        "/api/v1/customers", {"external_id": "acme", "name": "Acme", "email": "a" * 250 + "@x.com"}
    )
    assert response.status_code == 400, response.status_code
    assert_error(response, 400, "invalid_parameter", param="email")
    assert not Customer.objects.exists()


def test_a_json_array_body_is_an_invalid_parameter(api):
    response = post_raw(api, "/api/v1/customers", '[{"external_id": "acme", "name": "Acme"}]')
    assert_error(
        response,
        400,
        "invalid_parameter",
        param=None,
        message="Invalid data. Expected a dictionary, but got list.",
    )


def test_a_body_that_is_not_json_is_an_unsupported_media_type(api):
    response = api.post(
        "/api/v1/customers",
        "external_id=acme&name=Acme",
        content_type="application/x-www-form-urlencoded",
    )
    assert_error(response, 415, "unsupported_media_type", type="invalid_request_error")
    assert not Customer.objects.exists()


# --- GET /customers/{external_id} --------------------------------------------------------------


def test_retrieve_a_customer_with_its_wallet_balance(api):
    created = api.post("/api/v1/customers", {"external_id": "acme", "name": "Acme"}).json()
    assert api.post("/api/v1/customers/acme/top-ups", {"amount": "12.5"}).status_code == 201
    response = api.get("/api/v1/customers/acme")
    assert response.status_code == 200
    expected = {
        **created,
        "wallets": [
            {
                "currency": "USD",
                "billing_mode": "prepaid",
                "credit_limit": None,
                "balance": {
                    "currency": "USD",
                    "posted": "12.500000000000",
                    "held": "0.000000000000",
                    "available": "12.500000000000",
                },
            }
        ],
    }
    assert response.json() == expected


def test_an_unknown_customer_is_not_found(api, make_customer):
    make_customer("acme")
    for path in (
        "/api/v1/customers/ACME",
        "/api/v1/customers/nope/balance",
        "/api/v1/customers/nope/transactions",
    ):
        assert_error(
            api.get(path),
            404,
            "customer_not_found",
            message=f"no customer with external_id {path.split('/')[4]!r}",
        )


def test_a_read_only_key_can_read_a_customer(read_api, make_customer):
    make_customer("acme")
    assert read_api.get("/api/v1/customers/acme").json()["external_id"] == "acme"


# --- top-ups ------------------------------------------------------------------------------------


def test_top_up_posts_world_to_wallet(api, make_customer):
    customer = make_customer("acme")
    response = api.post(
        "/api/v1/customers/acme/top-ups", {"amount": "25.50", "reference": "pi_3Nx"}
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    posted = LedgerTransaction.objects.get()
    assert body["id"] == posted.pk
    assert body["effective_at"].endswith("Z") and body["recorded_at"].endswith("Z")
    del body["effective_at"], body["recorded_at"]
    assert re.fullmatch(r"Top-up of 25\.50* USD", body.pop("description"))
    assert body == {
        "id": posted.pk,
        "reference": f"top-up:{customer.pk}:pi_3Nx",
        "metadata": {"kind": "top_up", "customer": "acme"},
        "reverses": None,
        "entries": [
            {
                "account": "@World",
                "currency": "USD",
                "direction": "debit",
                "amount": "25.500000000000",
            },
            {
                "account": f"wallet:{customer.pk}:USD",
                "currency": "USD",
                "direction": "credit",
                "amount": "25.500000000000",
            },
        ],
    }
    entries = {e.account.code: e.amount for e in Entry.objects.select_related("account")}
    assert entries == {"@World": Decimal("25.5"), f"wallet:{customer.pk}:USD": Decimal("-25.5")}
    wallet = services.wallet_for(customer=customer)
    assert ledger_selectors.get_balance(account=wallet.account).posted == Decimal("25.5")


def test_top_up_with_a_description(api, make_customer):
    make_customer("acme")
    response = api.post(
        "/api/v1/customers/acme/top-ups", {"amount": "5", "description": "Card payment"}
    )
    assert response.status_code == 201
    assert response.json()["description"] == "Card payment"


def test_top_up_twice_with_one_reference_posts_once(api, make_customer):
    customer = make_customer("acme")
    first = api.post("/api/v1/customers/acme/top-ups", {"amount": "10", "reference": "pay-1"})
    second = api.post("/api/v1/customers/acme/top-ups", {"amount": "10", "reference": "pay-1"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json() == first.json()
    assert "Idempotent-Replayed" not in second.headers  # the ledger's idempotency, not the header
    assert LedgerTransaction.objects.count() == 1
    wallet = services.wallet_for(customer=customer)
    assert ledger_selectors.get_balance(account=wallet.account).posted == Decimal("10")
    balance = api.get("/api/v1/customers/acme/balance").json()
    assert balance["balances"][0]["posted"] == "10.000000000000"


def test_top_ups_without_a_reference_are_separate(api, make_customer):
    make_customer("acme")
    first = api.post("/api/v1/customers/acme/top-ups", {"amount": "10"})
    second = api.post("/api/v1/customers/acme/top-ups", {"amount": "10"})
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert api.get("/api/v1/customers/acme/balance").json()["balances"][0]["posted"] == (
        "20.000000000000"
    )


def test_a_reference_reused_for_another_amount_is_a_conflict(api, make_customer):
    make_customer("acme")
    api.post("/api/v1/customers/acme/top-ups", {"amount": "10", "reference": "pay-1"})
    response = api.post("/api/v1/customers/acme/top-ups", {"amount": "11", "reference": "pay-1"})
    assert_error(response, 409, "reference_reused", param="reference")
    assert LedgerTransaction.objects.count() == 1
    assert api.get("/api/v1/customers/acme/balance").json()["balances"][0]["posted"] == (
        "10.000000000000"
    )


def test_a_reference_is_per_customer(api, make_customer):
    make_customer("acme")
    make_customer("globex")
    assert (
        api.post(
            "/api/v1/customers/acme/top-ups", {"amount": "10", "reference": "pay-1"}
        ).status_code
        == 201
    )
    assert (
        api.post(
            "/api/v1/customers/globex/top-ups", {"amount": "10", "reference": "pay-1"}
        ).status_code
        == 201
    )
    assert LedgerTransaction.objects.count() == 2


@pytest.mark.parametrize(
    ("json_amount", "expected"),
    [
        ("0.1", "0.100000000000"),
        ("12345678901234.123456789012", "12345678901234.123456789012"),  # beyond a float
        ("0.000001", "0.000001000000"),
        ("7", "7.000000000000"),
        ("2.5e3", "2500.000000000000"),
    ],
)
def test_json_numbers_are_parsed_exactly(api, make_customer, json_amount, expected):
    customer = make_customer("acme")
    response = post_raw(api, "/api/v1/customers/acme/top-ups", f'{{"amount": {json_amount}}}')
    assert response.status_code == 201, response.json()
    assert [e["amount"] for e in response.json()["entries"]] == [expected, expected]
    wallet = services.wallet_for(customer=customer)
    assert ledger_selectors.get_balance(account=wallet.account).posted == Decimal(expected)


def test_tiny_amounts_are_exact_in_the_balance(api, make_customer):
    make_customer("acme")
    response = post_raw(api, "/api/v1/customers/acme/top-ups", '{"amount": 1E-12}')
    assert response.status_code == 201, response.json()
    balance = api.get("/api/v1/customers/acme/balance").json()["balances"][0]
    assert balance["posted"] == balance["available"] == "0.000000000001"


@pytest.mark.parametrize(
    ("json_amount", "expected"),
    [("1E-12", "0.000000000001"), ("0.0000001", "0.000000100000")],
)
def test_tiny_entry_amounts_are_plain_decimal_strings(api, make_customer, json_amount, expected):
    make_customer("acme")
    response = post_raw(api, "/api/v1/customers/acme/top-ups", f'{{"amount": {json_amount}}}')
    assert response.status_code == 201, response.json()
    assert [e["amount"] for e in response.json()["entries"]] == [expected, expected]
    listed = api.get("/api/v1/customers/acme/transactions").json()["data"][0]
    assert [e["amount"] for e in listed["entries"]] == [expected, expected]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_nan_or_infinite_amount_is_refused(api, make_customer, constant):
    make_customer("acme")
    response = post_raw(api, "/api/v1/customers/acme/top-ups", f'{{"amount": {constant}}}')
    assert_error(response, 400, "invalid_json")
    assert not LedgerTransaction.objects.exists()


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({}, "parameter_missing", "amount"),
        ({"amount": None}, "parameter_missing", "amount"),
        ({"amount": "0"}, "invalid_parameter", "amount"),
        ({"amount": "-5"}, "invalid_parameter", "amount"),
        ({"amount": "ten"}, "invalid_parameter", "amount"),
        ({"amount": "NaN"}, "invalid_parameter", "amount"),
        ({"amount": "0.0000000000001"}, "invalid_parameter", "amount"),  # 13 places
        ({"amount": "1" * 27}, "amount_too_large", "amount"),  # 27 integer digits
        ({"amount": True}, "invalid_parameter", "amount"),
        ({"amount": "5", "currency": "usd"}, "invalid_parameter", "currency"),
        ({"amount": "5", "reference": "r" * 201}, "invalid_parameter", "reference"),
        ({"amount": "5", "reference": ""}, "invalid_parameter", "reference"),
    ],
)
def test_invalid_top_ups(api, make_customer, body, code, param):
    make_customer("acme")
    assert_error(api.post("/api/v1/customers/acme/top-ups", body), 400, code, param=param)
    assert not LedgerTransaction.objects.exists()


def test_a_float_amount_as_a_json_number_with_thirteen_places_is_refused(api, make_customer):
    make_customer("acme")
    response = post_raw(api, "/api/v1/customers/acme/top-ups", '{"amount": 1e-13}')
    assert_error(
        response,
        400,
        "invalid_parameter",
        param="amount",
        message="Ensure that there are no more than 12 decimal places.",
    )


def test_top_up_an_unknown_customer(api):
    response = api.post("/api/v1/customers/nope/top-ups", {"amount": "5"})
    assert_error(response, 404, "customer_not_found", message="no customer with external_id 'nope'")
    assert not LedgerTransaction.objects.exists()


def test_top_up_in_a_currency_the_customer_has_no_wallet_for(api, make_customer):
    make_customer("acme", currency="EUR")
    response = api.post("/api/v1/customers/acme/top-ups", {"amount": "5", "currency": "USD"})
    assert_error(
        response,
        404,
        "wallet_not_found",
        param="currency",
        message="customer acme has no USD wallet",
    )
    eur = api.post("/api/v1/customers/acme/top-ups", {"amount": "5"})
    assert eur.status_code == 201
    assert {e["currency"] for e in eur.json()["entries"]} == {"EUR"}


def test_top_up_a_postpaid_wallet_in_overdraft(api, make_customer):
    customer = make_customer("acme", billing_mode="postpaid", credit_limit=Decimal("100"))
    services.adjust_balance(
        customer=customer, amount=Decimal("-60"), reason="usage", staff_user_id=None
    )
    response = api.post("/api/v1/customers/acme/top-ups", {"amount": "100"})
    assert response.status_code == 201
    balance = api.get("/api/v1/customers/acme/balance").json()["balances"][0]
    assert balance["posted"] == "40.000000000000"


def test_a_top_up_that_would_overflow_the_balance_is_a_client_error(api, make_customer):
    """Refused before the ledger sees it: one request moves at most billing.limits.MAX_AMOUNT
    (10^15), far below what a balance column holds (10^26)."""
    make_customer("acme")
    api.raise_request_exception = False
    huge = "9" * 26
    response = api.post("/api/v1/customers/acme/top-ups", {"amount": huge})
    assert_error(response, 400, "amount_too_large", param="amount")
    assert LedgerTransaction.objects.count() == 0


# --- GET /customers/{external_id}/balance -------------------------------------------------------


def test_balance_per_currency(api, make_customer):
    customer = make_customer("acme")
    services.create_wallet(customer=customer, currency="EUR", billing_mode="prepaid")
    api.post("/api/v1/customers/acme/top-ups", {"amount": "25.5"})
    post_raw(api, "/api/v1/customers/acme/top-ups", '{"amount": 0.1}')
    api.post("/api/v1/customers/acme/top-ups", {"amount": "3", "currency": "EUR"})
    response = api.get("/api/v1/customers/acme/balance")
    assert response.status_code == 200
    assert response.json() == {
        "customer": "acme",
        "balances": [
            {
                "currency": "EUR",
                "posted": "3.000000000000",
                "held": "0.000000000000",
                "available": "3.000000000000",
            },
            {
                "currency": "USD",
                "posted": "25.600000000000",
                "held": "0.000000000000",
                "available": "25.600000000000",
            },
        ],
        "credits": [],
        "allowances": [],
    }


def test_balance_shows_held_funds(api, make_customer):
    from ledger import services as ledger

    customer = make_customer("acme")
    api.post("/api/v1/customers/acme/top-ups", {"amount": "10"})
    wallet = services.wallet_for(customer=customer)
    revenue = ledger.ensure_system_account(code="@Revenue", currency="USD")
    ledger.place_hold(reference="h1", account=wallet.account, destination=revenue, amount="4.25")
    assert api.get("/api/v1/customers/acme/balance").json()["balances"] == [
        {
            "currency": "USD",
            "posted": "10.000000000000",
            "held": "4.250000000000",
            "available": "5.750000000000",
        },
    ]


# --- GET /customers/{external_id}/transactions --------------------------------------------------


def top_ups(client, external_id: str, amounts: list[str]) -> list[int]:
    ids = []
    for amount in amounts:
        response = client.post(f"/api/v1/customers/{external_id}/top-ups", {"amount": amount})
        assert response.status_code == 201
        ids.append(response.json()["id"])
    return ids


def test_transactions_newest_first_with_entries(api, make_customer):
    customer = make_customer("acme")
    make_customer("globex")
    first, second = top_ups(api, "acme", ["1", "2"])
    top_ups(api, "globex", ["99"])  # another customer's history is not shown
    response = api.get("/api/v1/customers/acme/transactions")
    assert response.status_code == 200
    body = response.json()
    assert body["has_more"] is False
    assert [t["id"] for t in body["data"]] == [second, first]
    assert body["data"][0]["entries"] == [
        {"account": "@World", "currency": "USD", "direction": "debit", "amount": "2.000000000000"},
        {
            "account": f"wallet:{customer.pk}:USD",
            "currency": "USD",
            "direction": "credit",
            "amount": "2.000000000000",
        },
    ]
    single = api.post("/api/v1/customers/acme/top-ups", {"amount": "3", "reference": "x"}).json()
    assert api.get("/api/v1/customers/acme/transactions?limit=1").json()["data"] == [single]


def test_transactions_pages_with_limit_and_starting_after(api, make_customer):
    make_customer("acme")
    ids = top_ups(api, "acme", ["1", "2", "3", "4", "5"])
    newest_first = ids[::-1]

    def page(query: str) -> tuple[list[int], bool]:
        response = api.get(f"/api/v1/customers/acme/transactions?{query}")
        assert response.status_code == 200, response.json()
        return [t["id"] for t in response.json()["data"]], response.json()["has_more"]

    assert page("limit=2") == (newest_first[0:2], True)
    assert page(f"limit=2&starting_after={newest_first[1]}") == (newest_first[2:4], True)
    assert page(f"limit=2&starting_after={newest_first[3]}") == (newest_first[4:5], False)
    assert page(f"limit=2&starting_after={newest_first[4]}") == ([], False)
    assert page("limit=5") == (newest_first, False)  # exactly a page: no more
    assert page("limit=4") == (newest_first[:4], True)
    assert page(f"starting_after={newest_first[0] + 1000}") == (newest_first, False)


def test_transactions_default_to_ten_per_page(api, make_customer):
    make_customer("acme")
    ids = top_ups(api, "acme", [str(n) for n in range(1, 12)])
    body = api.get("/api/v1/customers/acme/transactions").json()
    assert [t["id"] for t in body["data"]] == ids[::-1][:10]
    assert body["has_more"] is True
    body = api.get("/api/v1/customers/acme/transactions?limit=100").json()
    assert len(body["data"]) == 11 and body["has_more"] is False


@pytest.mark.parametrize(
    ("query", "param", "message"),
    [
        ("limit=0", "limit", "limit must be 1 to 100"),
        ("limit=101", "limit", "limit must be 1 to 100"),
        ("limit=-1", "limit", "limit must be 1 to 100"),
        ("limit=ten", "limit", "limit must be 1 to 100"),
        ("limit=1.5", "limit", "limit must be 1 to 100"),
        ("limit=", "limit", "limit must be 1 to 100"),
        ("starting_after=abc", "starting_after", "starting_after must be an object id"),
        ("starting_after=-1", "starting_after", "starting_after must be an object id"),
        (
            "starting_after=99999999999999999999",
            "starting_after",
            "starting_after must be an object id",
        ),
    ],
)
def test_transactions_bad_pagination_parameters(api, make_customer, query, param, message):
    make_customer("acme")
    response = api.get(f"/api/v1/customers/acme/transactions?{query}")
    assert_error(response, 400, "invalid_parameter", param=param, message=message)


def test_another_key_reads_the_same_history(api, make_customer, make_key):
    make_customer("acme")
    ids = top_ups(api, "acme", ["1"])
    other = make_client(make_key(("read",))[1])
    assert [t["id"] for t in other.get("/api/v1/customers/acme/transactions").json()["data"]] == ids


def test_a_nul_character_is_refused_not_a_server_error(api):
    response = post_raw(
        api,
        "/api/v1/customers",
        '{"external_id": "acme", "name": "Acme", "metadata": {"a": "x\\u0000"}}',
    )
    assert_error(response, 400, "invalid_json")
    deep = post_raw(api, "/api/v1/customers", "[" * 900 + '"\\u0000"' + "]" * 900)
    assert_error(deep, 400, "invalid_json")
