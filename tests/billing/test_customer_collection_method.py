"""A customer's collection method and payment terms through the API (POST and PATCH
/customers) and the admin: charge_automatically (default, no days_until_due) or
send_invoice (days_until_due, default 30); anything else refused with the error body and
nothing written."""

from __future__ import annotations

import pytest

from billing.models import Customer
from tests.billing.conftest import assert_error

pytestmark = pytest.mark.django_db

CUSTOMERS = "/api/v1/customers"


def create(api, **fields):
    return api.post(CUSTOMERS, {"external_id": "acme", "name": "Acme", **fields}, format="json")


def patch(api, body):
    return api.patch(f"{CUSTOMERS}/acme", body, format="json")


def terms(body: dict) -> tuple[str, int | None]:
    return body["collection_method"], body["days_until_due"]


def test_a_customer_is_charged_automatically_by_default(api):
    response = create(api)
    assert response.status_code == 201, response.json()
    assert terms(response.json()) == ("charge_automatically", None)


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"collection_method": "send_invoice"}, ("send_invoice", 30)),
        ({"collection_method": "send_invoice", "days_until_due": 45}, ("send_invoice", 45)),
        ({"collection_method": "send_invoice", "days_until_due": 0}, ("send_invoice", 0)),
    ],
)
def test_a_send_invoice_customer_has_its_payment_terms(api, fields, expected):
    response = create(api, **fields)
    assert response.status_code == 201, response.json()
    assert terms(response.json()) == expected
    assert terms(api.get(f"{CUSTOMERS}/acme").json()) == expected


@pytest.mark.parametrize(
    "fields, code, param",
    [
        ({"collection_method": "invoice"}, "invalid_parameter", "collection_method"),
        ({"collection_method": ""}, "invalid_parameter", "collection_method"),
        ({"collection_method": "send_invoice", "days_until_due": "30"}, None, "days_until_due"),
        ({"collection_method": "send_invoice", "days_until_due": 30.5}, None, "days_until_due"),
        ({"collection_method": "send_invoice", "days_until_due": True}, None, "days_until_due"),
        ({"collection_method": "send_invoice", "days_until_due": -1}, None, "days_until_due"),
        ({"collection_method": "send_invoice", "days_until_due": 366}, None, "days_until_due"),
        ({"days_until_due": 30}, None, "days_until_due"),  # charge_automatically: no terms
    ],
)
def test_bad_collection_terms_are_refused_on_create(api, fields, code, param):
    body = assert_error(create(api, **fields), 400, code or "invalid_parameter", param=param)
    assert body["error"]["type"] == "invalid_request_error"
    assert not Customer.objects.exists()


def test_patch_switches_the_collection_method_and_its_terms(api, make_customer):
    make_customer("acme")
    response = patch(api, {"collection_method": "send_invoice"})
    assert response.status_code == 200, response.json()
    assert terms(response.json()) == ("send_invoice", 30)
    assert terms(patch(api, {"days_until_due": 10}).json()) == ("send_invoice", 10)
    assert terms(patch(api, {"name": "Acme Co"}).json()) == ("send_invoice", 10)
    back = patch(api, {"collection_method": "charge_automatically"}).json()
    assert terms(back) == ("charge_automatically", None)
    # what GET shows can be sent back as it is
    assert patch(api, {"collection_method": "charge_automatically", "days_until_due": None})


@pytest.mark.parametrize(
    "body, param",
    [
        ({"collection_method": "manual"}, "collection_method"),
        ({"days_until_due": 30}, "days_until_due"),  # still charge_automatically
        ({"collection_method": "send_invoice", "days_until_due": 400}, "days_until_due"),
    ],
)
def test_a_bad_patch_of_the_terms_is_refused_and_changes_nothing(api, make_customer, body, param):
    make_customer("acme")
    assert_error(patch(api, body), 400, "invalid_parameter", param=param)
    customer = Customer.objects.get(external_id="acme")
    assert (customer.collection_method, customer.days_until_due) == ("charge_automatically", None)


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("finance", "f@x.test", None))
    return client


def test_finance_sets_the_collection_method_in_the_admin(staff_client, make_customer):
    customer = make_customer("acme", name="Acme")
    url = f"/admin/billing/customer/{customer.pk}/change/"
    page = staff_client.get(url)
    assert b'name="collection_method"' in page.content
    form = {
        "name": "Acme",
        "email": "",
        "tax_id": "",
        "metadata": "{}",
        "collection_method": "send_invoice",
        "days_until_due": "",
        **{f: "" for f in ("address_line1", "address_line2", "city", "state", "postal_code")},
        "country": "",
    }
    inline_prefixes = [
        chunk.split('"')[0]
        for chunk in page.content.decode().split('name="')[1:]
        if chunk.split('"')[0].endswith("-TOTAL_FORMS")
    ]
    for total in inline_prefixes:
        prefix = total.removesuffix("-TOTAL_FORMS")
        form |= {total: "0", f"{prefix}-INITIAL_FORMS": "0"}
    response = staff_client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:3000]
    customer.refresh_from_db()
    assert (customer.collection_method, customer.days_until_due) == ("send_invoice", 30)
    refused = staff_client.post(
        url, form | {"collection_method": "charge_automatically", "days_until_due": "12"}
    )
    assert refused.status_code == 200
    assert b"applies to collection_method send_invoice only" in refused.content
    customer.refresh_from_db()
    assert customer.collection_method == "send_invoice"
