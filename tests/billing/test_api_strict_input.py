"""Strict input: every POST and PATCH route of the API refuses a field it does not take
(``unknown_parameter``) and a JSON key written twice (``duplicate_key``), with ``param``
naming it, and changes nothing.

The routes are read from the URL resolver (billing/api/urls.py), so a route added later is
covered without editing this file; a route whose path needs a value this file does not know
yet fails with a message saying which one to add to ``PATH_VALUES``.
"""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.urls import URLPattern, URLResolver

from billing import alerts, outbox, webhooks
from billing.api import urls as api_urls
from billing.models import (
    Alert,
    AutoTopUp,
    Customer,
    EventType,
    Plan,
    PlanCharge,
    PriceTier,
    Project,
    WebhookDelivery,
    WebhookEndpoint,
)
from ledger.models import Hold
from ledger.models import Transaction as LedgerTransaction
from tests.billing.conftest import ChargeSpec, assert_error, post_raw
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

# Routes whose body is not ours to define: Stripe's webhook events are Stripe's schema, read
# only after their signature is verified.
NOT_OURS = {"webhooks/stripe"}

WRITE_METHODS = ("post", "patch", "put")
UNKNOWN = "zz_not_a_field"


def _routes(patterns=None, prefix: str = "") -> list[tuple[str, str]]:
    """(route, method) of every write route under /api/v1/."""
    found = []
    for pattern in api_urls.urlpatterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found += _routes(pattern.url_patterns, route)
            continue
        assert isinstance(pattern, URLPattern)
        view = getattr(pattern.callback, "view_class", None)
        for method in WRITE_METHODS:
            if view is not None and hasattr(view, method) and route not in NOT_OURS:
                found.append((route, method))
    return found


ROUTES = _routes()


@pytest.fixture
def world_objects(make_customer, make_meter, make_plan):
    """One of each object a write route's path can name."""
    customer = make_customer("strict-acme", funds=100)
    meter = make_meter("strict_tokens")
    plan = make_plan("strict-plan", charges=(ChargeSpec(meter=meter.code),))
    subscription = SubscriptionFactory(customer=customer, plan=plan)
    alert = alerts.create_alert(
        kind="balance_below", scope="customer", customer=customer, threshold=Decimal(1)
    )
    return {"customer": customer, "plan": plan, "subscription": subscription, "alert": alert}


def _hold_id(api, customer: Customer) -> int:
    response = api.post("/api/v1/holds", {"customer": customer.external_id, "amount": "1"})
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def _endpoint_and_delivery() -> tuple[int, int]:
    """A webhook endpoint, and a delivery of an event to it."""
    endpoint = webhooks.create_endpoint(url="https://hooks.example.com/strict")
    event = outbox.emit(EventType.INVOICE_PAID, data={})
    delivery = webhooks.resend_event(event_id=event.pk, endpoint_id=endpoint.pk)
    return endpoint.pk, delivery.pk


def _grant_id(customer) -> int:
    """A purchased credit grant of the customer (credits bought: refundable)."""
    from billing import services

    services.ensure_wallet(customer=customer, currency="CREDITS")
    posted = services.top_up(customer=customer, amount=Decimal(10), currency="CREDITS")
    return posted.credit_grant.pk


def _project_key(customer) -> str:
    """A project of the customer (made once)."""
    from billing import projects

    found = Project.objects.filter(customer=customer).first()
    return (found or projects.create_project(customer=customer, key="strict-team")).key


def _path(api, route: str, objects: dict) -> str:
    values = {
        "external_id": lambda: objects["customer"].external_id,
        "code": lambda: objects["plan"].code,
        "subscription_id": lambda: objects["subscription"].pk,
        "hold_id": lambda: _hold_id(api, objects["customer"]),
        "endpoint_id": lambda: _endpoint_and_delivery()[0],
        "delivery_id": lambda: _endpoint_and_delivery()[1],
        "alert_id": lambda: objects["alert"].pk,
        "currency": lambda: "USD",
        "grant_id": lambda: _grant_id(objects["customer"]),
        "key": lambda: _project_key(objects["customer"]),
    }

    def fill(match: re.Match) -> str:
        name = match.group(2)
        assert name in values, f"add a value for <{name}> (route {route}) to this test"
        return str(values[name]())

    return "/api/v1/" + re.sub(r"<(?:(\w+):)?(\w+)>", fill, route)


def _state() -> tuple[object, ...]:
    return (
        Customer.objects.count(),
        Plan.objects.count(),
        PlanCharge.objects.count(),
        PriceTier.objects.count(),
        LedgerTransaction.objects.count(),
        Hold.objects.count(),
        WebhookEndpoint.objects.count(),
        WebhookDelivery.objects.filter(manual_resend=False).count(),
        len(set(WebhookEndpoint.objects.values_list("secret", flat=True))),
        list(Alert.objects.values_list("id", "threshold", "recipients", "enabled")),
        AutoTopUp.objects.count(),
    )


def test_the_resolver_lists_the_write_routes():
    """The enumeration itself works (it would pass vacuously on an empty list)."""
    assert ("customers", "post") in ROUTES
    assert ("plans", "post") in ROUTES
    assert ("holds/<int:hold_id>/release", "post") in ROUTES
    assert ("webhooks/stripe", "post") not in ROUTES


@pytest.mark.parametrize(("route", "method"), ROUTES)
def test_every_write_route_refuses_an_unknown_field(api, world_objects, route, method):
    path = _path(api, route, world_objects)
    before = _state()
    response = getattr(api, method)(path, {UNKNOWN: "1"}, format="json")
    assert_error(response, 400, "unknown_parameter", param=UNKNOWN)
    assert UNKNOWN in response.json()["error"]["message"]
    assert _state() == before


@pytest.mark.parametrize(("route", "method"), ROUTES)
def test_every_write_route_refuses_a_duplicate_key(api, world_objects, route, method):
    path = _path(api, route, world_objects)
    before = _state()
    body = '{"reference": "a", "reference": "b"}'
    response = getattr(api, method)(path, data=body, content_type="application/json")
    assert_error(response, 400, "duplicate_key", param="reference")
    assert _state() == before


# --- the three typos of the issue, each of which used to succeed ------------------------------


def test_a_plan_charge_with_a_misspelt_price_is_refused(api, make_meter):
    make_meter("typo_tokens")
    body = {
        "code": "typo",
        "name": "Typo",
        "charges": [{"meter": "typo_tokens", "unit_prise": "0.5"}],
    }
    response = api.post("/api/v1/plans", body, format="json")
    assert_error(response, 400, "unknown_parameter", param="charges[0].unit_prise")
    assert not Plan.objects.filter(code="typo").exists()


def test_an_unknown_field_in_a_tier_is_named_by_its_path(api, make_meter):
    make_meter("tier_tokens")
    body = {
        "code": "tiered",
        "name": "Tiered",
        "charges": [
            {"meter": "tier_tokens", "unit_price": "1"},
            {
                "meter": "tier_tokens",
                "price_model": "graduated",
                "tiers": [{"up_to": "10", "unit_price": "1"}, {"unit_price": "1", "upto": "20"}],
            },
        ],
    }
    response = api.post("/api/v1/plans", body, format="json")
    assert_error(response, 400, "unknown_parameter", param="charges[1].tiers[1].upto")


def test_a_customer_with_a_misspelt_billing_mode_is_refused(api):
    body = {"external_id": "typo-cus", "name": "T", "biling_mode": "postpaid"}
    assert_error(
        api.post("/api/v1/customers", body, format="json"),
        400,
        "unknown_parameter",
        param="biling_mode",
    )
    assert not Customer.objects.filter(external_id="typo-cus").exists()


def test_an_unknown_field_in_an_address_is_refused(api):
    body = {"external_id": "addr-cus", "name": "T", "address": {"line1": "x", "zip": "1"}}
    assert_error(
        api.post("/api/v1/customers", body, format="json"),
        400,
        "unknown_parameter",
        param="address.zip",
    )


def test_two_top_ups_with_a_misspelt_reference_are_refused(api, make_customer):
    customer = make_customer("typo-top")
    url = f"/api/v1/customers/{customer.external_id}/top-ups"
    for _ in range(2):
        response = api.post(url, {"amount": "5", "referance": "pay-1"}, format="json")
        assert_error(response, 400, "unknown_parameter", param="referance")
    assert not LedgerTransaction.objects.filter(metadata__customer="typo-top").exists()


def test_free_form_metadata_and_properties_keep_any_key(api, make_meter):
    make_meter("free_tokens")
    body = {"code": "free", "name": "Free", "metadata": {"anything": {"nested": 1}}}
    assert api.post("/api/v1/plans", body, format="json").status_code == 201


def test_an_unknown_field_before_a_missing_one_is_named_first(api):
    """The unknown field is reported even though required fields are missing too."""
    response = api.post("/api/v1/plans", {"cde": "x"}, format="json")
    assert_error(response, 400, "unknown_parameter", param="cde")


def test_a_read_only_field_is_not_an_input(api, make_meter):
    response = api.post("/api/v1/plans", {"code": "ro", "name": "R", "version": 3}, format="json")
    assert_error(response, 400, "unknown_parameter", param="version")


# --- duplicate keys --------------------------------------------------------------------------


def test_a_duplicate_key_deep_in_the_body_is_named_by_its_path(api, make_meter):
    make_meter("dup_tokens")
    body = (
        '{"code": "dup", "name": "Dup", "charges": [{"meter": "dup_tokens"}, '
        '{"meter": "dup_tokens", "unit_price": "1", "unit_price": "0"}]}'
    )
    assert_error(
        post_raw(api, "/api/v1/plans", body), 400, "duplicate_key", param="charges[1].unit_price"
    )
    assert not Plan.objects.filter(code="dup").exists()


def test_a_duplicate_key_inside_metadata_is_refused_too(api):
    body = '{"external_id": "dupmeta", "name": "D", "metadata": {"a": 1, "a": 2}}'
    assert_error(post_raw(api, "/api/v1/customers", body), 400, "duplicate_key", param="metadata.a")
