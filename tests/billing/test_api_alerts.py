"""/api/v1/alerts and /api/v1/customers/{id}/alerts: definitions created, read, changed and
deleted; each definition that makes no sense refused with its stable code and parameter;
the states of a customer's subjects readable, the active ones filtered."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import alerts
from billing.models import Alert
from tests.billing.conftest import assert_error
from tests.factories import MeterFactory, PlanFactory, SubscriptionFactory

# The API fixtures of tests/billing/conftest.py.
pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def acme(make_customer):
    return make_customer("acme", funds=5)


def test_a_customer_alert_is_created_read_changed_and_deleted(api, acme):
    created = api.post(
        "/api/v1/alerts",
        {
            "kind": "balance_below",
            "customer": "acme",
            "threshold": "20.00",
            "recipients": ["ops@acme.example"],
            "name": "Low balance",
        },
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    alert_id = body["id"]
    assert body == {
        "id": alert_id,
        "name": "Low balance",
        "kind": "balance_below",
        "scope": "customer",
        "customer": "acme",
        "plan": None,
        "plan_version": None,
        "threshold": "20.000000000000",
        "currency": None,
        "meter": None,
        "per_model": False,
        "recipients": ["ops@acme.example"],
        "enabled": True,
        "source": "api",
        "created_at": body["created_at"],
        "updated_at": body["updated_at"],
    }
    assert api.get(f"/api/v1/alerts/{alert_id}").json() == body
    listed = api.get("/api/v1/alerts?customer=acme&kind=balance_below").json()
    assert [a["id"] for a in listed["data"]] == [alert_id] and listed["has_more"] is False
    assert api.get("/api/v1/alerts?kind=spend_above").json()["data"] == []
    changed = api.patch(
        f"/api/v1/alerts/{alert_id}", {"threshold": "10", "enabled": False}, format="json"
    )
    assert changed.status_code == 200, changed.json()
    assert (changed.json()["threshold"], changed.json()["enabled"]) == ("10.000000000000", False)
    assert api.delete(f"/api/v1/alerts/{alert_id}").status_code == 204
    assert_error(api.get(f"/api/v1/alerts/{alert_id}"), 404, "alert_not_found")
    assert_error(api.delete(f"/api/v1/alerts/{alert_id}"), 404, "alert_not_found")


def test_plan_and_everyone_alerts(api):
    tokens = MeterFactory(code="tokens")
    from billing.services import ChargeSpec

    pro = PlanFactory(code="pro", charges=(ChargeSpec(meter="tokens", included_quantity=D(1000)),))
    usage = api.post(
        "/api/v1/alerts",
        {"kind": "usage_above_share", "plan": "pro", "meter": "tokens", "threshold": "0.8"},
    )
    assert usage.status_code == 201, usage.json()
    assert (usage.json()["scope"], usage.json()["plan"], usage.json()["meter"]) == (
        "plan",
        "pro",
        tokens.code,
    )
    versioned = api.post(
        "/api/v1/alerts",
        {"kind": "spend_above", "plan": "pro", "plan_version": pro.version, "threshold": "100"},
    )
    assert versioned.status_code == 201 and versioned.json()["plan_version"] == pro.version
    margin = api.post("/api/v1/alerts", {"kind": "negative_margin", "per_model": True})
    assert margin.status_code == 201, margin.json()
    assert (margin.json()["scope"], margin.json()["threshold"]) == ("all", "0.000000000000")
    assert [a["id"] for a in api.get("/api/v1/alerts?plan=pro").json()["data"]] == [
        versioned.json()["id"],
        usage.json()["id"],
    ]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (
            {"kind": "balance_under", "customer": "acme", "threshold": "1"},
            400,
            "invalid_parameter",
            "kind",
        ),
        ({"kind": "balance_below", "customer": "acme"}, 400, "invalid_parameter", "threshold"),
        ({"kind": "balance_below", "threshold": "1"}, 400, "invalid_parameter", "customer"),
        (
            {"kind": "balance_below", "customer": "acme", "threshold": "1", "treshold": "2"},
            400,
            "unknown_parameter",
            "treshold",
        ),
        (
            {"kind": "balance_below", "customer": "acme", "threshold": 1e20},
            400,
            "amount_too_large",
            "threshold",
        ),
        (
            {"kind": "balance_below", "customer": "acme", "threshold": "1", "recipients": ["nope"]},
            400,
            "invalid_parameter",
            "recipients[0]",
        ),
        (
            {"kind": "balance_below", "customer": "acme", "threshold": "1", "currency": "DOLLARS"},
            400,
            "invalid_parameter",
            "currency",
        ),
        (
            {"kind": "balance_below", "customer": "acme", "threshold": "1", "per_model": True},
            400,
            "invalid_parameter",
            "per_model",
        ),
        (
            {"kind": "balance_below", "customer": "acme", "threshold": "1", "meter": "tokens"},
            400,
            "invalid_parameter",
            "meter",
        ),
        (
            {"kind": "credits_below", "customer": "acme", "threshold": "-1"},
            400,
            "invalid_parameter",
            "threshold",
        ),
        (
            {"kind": "credits_below", "customer": "acme", "threshold": "1", "currency": "USD"},
            400,
            "invalid_parameter",
            "currency",
        ),
        (
            {"kind": "usage_above_share", "customer": "acme", "threshold": "0.8"},
            400,
            "invalid_parameter",
            "meter",
        ),
        (
            {"kind": "usage_above_share", "customer": "acme", "meter": "tokens", "threshold": "0"},
            400,
            "invalid_parameter",
            "threshold",
        ),
        (
            {"kind": "negative_margin", "customer": "acme", "threshold": "1"},
            400,
            "invalid_parameter",
            "threshold",
        ),
        (
            {"kind": "spend_above", "scope": "all", "threshold": "1"},
            400,
            "invalid_parameter",
            "scope",
        ),
        (
            {"kind": "spend_above", "customer": "acme", "plan": "pro", "threshold": "1"},
            400,
            "invalid_parameter",
            "plan",
        ),
        (
            {"kind": "balance_below", "customer": "nobody", "threshold": "1"},
            404,
            "customer_not_found",
            "customer",
        ),
        (
            {"kind": "balance_below", "plan": "nothing", "threshold": "1"},
            404,
            "plan_not_found",
            "plan",
        ),
        (
            {"kind": "usage_above_share", "customer": "acme", "meter": "nothing", "threshold": "1"},
            404,
            "meter_not_found",
            "meter",
        ),
    ],
)
def test_definitions_that_make_no_sense_are_refused(api, acme, body, status, code, param):
    MeterFactory(code="tokens")
    PlanFactory(code="pro")
    assert_error(api.post("/api/v1/alerts", body), status, code, param=param)
    assert not Alert.objects.exists()


def test_a_change_is_checked_as_a_creation_is(api, acme):
    alert = alerts.create_alert(
        kind="credits_below", scope="customer", customer=acme, threshold=D(1)
    )
    url = f"/api/v1/alerts/{alert.pk}"
    assert_error(
        api.patch(url, {"threshold": "-5"}, format="json"),
        400,
        "invalid_parameter",
        param="threshold",
    )
    assert_error(
        api.patch(url, {"kind": "spend_above"}, format="json"),
        400,
        "unknown_parameter",
        param="kind",
    )
    assert_error(
        api.patch(url, {"recipients": ["x"]}, format="json"),
        400,
        "invalid_parameter",
        param="recipients[0]",
    )
    assert Alert.objects.get(pk=alert.pk).threshold == D(1)


def test_a_read_key_cannot_write_alerts(read_api, acme):
    response = read_api.post(
        "/api/v1/alerts", {"kind": "balance_below", "customer": "acme", "threshold": "1"}
    )
    assert_error(response, 403, "insufficient_scope")


def test_a_retried_creation_is_one_alert(api, acme):
    body = {"kind": "balance_below", "customer": "acme", "threshold": "1"}
    first = api.post("/api/v1/alerts", body, HTTP_IDEMPOTENCY_KEY="alert-1")
    again = api.post("/api/v1/alerts", body, HTTP_IDEMPOTENCY_KEY="alert-1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again["Idempotent-Replayed"] == "true" and again.json() == first.json()
    assert Alert.objects.count() == 1


def test_the_states_of_a_customer_and_its_active_alerts(api, acme, make_plan):
    plan = make_plan("starter")
    SubscriptionFactory(customer=acme, plan=plan)
    own = alerts.create_alert(kind="balance_below", scope="customer", customer=acme, threshold=D(1))
    of_plan = alerts.create_alert(
        kind="balance_below", scope="plan", plan_code="starter", threshold=D(10)
    )
    alerts.evaluate_wallet_alerts()
    states = api.get("/api/v1/customers/acme/alerts").json()["data"]
    assert [(s["alert"], s["status"], s["value"], s["limit"], s["crossings"]) for s in states] == [
        (of_plan.pk, "triggered", "5.000000000000", "10.000000000000", 1),
        (own.pk, "armed", "5.000000000000", "1.000000000000", 0),
    ]
    active = api.get("/api/v1/customers/acme/alerts?status=triggered").json()["data"]
    assert [s["alert"] for s in active] == [of_plan.pk]
    assert active[0]["triggered_at"] is not None and active[0]["kind"] == "balance_below"
    assert_error(
        api.get("/api/v1/customers/acme/alerts?status=on"), 400, "invalid_parameter", param="status"
    )
    assert_error(api.get("/api/v1/customers/nobody/alerts"), 404, "customer_not_found")
