"""The API does what its OpenAPI schema says. Schemathesis generates requests for every
operation of the live schema (``/api/schema/``) and checks every response: no 5xx, a
documented status code, a documented content type and headers, a body that matches the
schema.

Requests go to the Django app in-process, through its WSGI handler, authenticated with a
real API key holding every scope. Each operation is one test, on a database where a
customer (with a wallet, funds and a subscription), a meter and a plan exist; an operation
with path parameters is called twice per example, as generated (mostly 404s, which must be
documented too) and with the parameters pointing at those real objects, so that the 200
paths and their bodies are checked as well.

Bounded and deterministic: 50 generated examples per operation plus the schema's own
examples, derandomized. Schemathesis' coverage phase (boundary values of every field,
~900 more requests) is left out to keep the run short; it found nothing the fuzzing phase
does not when last run.

A bug found here is not fixed here: its operation is marked ``xfail(strict=True)`` with a
reason starting "BUG:" (see ``KNOWN_BUGS``), so the suite stays green until the fix lands
and then fails until the mark is removed.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, settings

from billing import alerts, projects, services
from billing.models import OutboundEvent
from billing.project.wsgi import application
from billing.services import ChargeSpec, TierSpec
from ledger import services as ledger
from tests.factories import (
    APIKeyFactory,
    CustomerFactory,
    MeterFactory,
    PlanFactory,
    SubscriptionFactory,
)

schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
# The schema endpoint documents itself; regenerating the schema 50 times proves nothing.
schema = schema.exclude(path="/api/schema/")
schema.config.phases.coverage.enabled = False

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]

SEEDED_CUSTOMER = "schema-test-customer"
SEEDED_PLAN = "schema-test-plan"

# Operations with a known, unfixed server bug: "METHOD /path" → "BUG: …" (none today).
KNOWN_BUGS: dict[str, str] = {}


@pytest.fixture
def in_process_requests(db):
    """Serve the app's requests on the test's own database connection and transaction.

    Django's request signals close "obsolete" connections after each request, which in a
    test transaction is the test's own connection; its test client disconnects them the
    same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def seeded(in_process_requests, model_prices, request):
    """Real objects for the path parameters, and the headers of a key with every scope."""
    label = request.node.name.partition("[")[2].rstrip("]")
    if label in KNOWN_BUGS:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_BUGS[label], strict=True))
    MeterFactory(code="schema-test-tokens", group_by=["model"], unit="tokens")
    plan = PlanFactory(
        code=SEEDED_PLAN,
        name="Schema test",
        base_fee="20.00",
        charges=(
            ChargeSpec(
                meter="schema-test-tokens",
                price_model="graduated",
                included_quantity=Decimal(1000),
                tiers=(
                    TierSpec(up_to=Decimal(10_000), unit_price=Decimal("0.000002")),
                    TierSpec(up_to=None, unit_price=Decimal("0.0000015")),
                ),
            ),
        ),
    )
    customer = CustomerFactory(
        external_id=SEEDED_CUSTOMER,
        name="Schema Test",
        billing_mode="postpaid",
        credit_limit="100.00",
        funds="12.345678901234",
        funds_reference="seed",
    )
    subscription = SubscriptionFactory(customer=customer, plan=plan)
    secret = APIKeyFactory(name="schemathesis").secret
    hold = ledger.place_hold(
        reference="schema-hold",
        account=services.wallet_for(customer=customer).account,
        destination=ledger.ensure_system_account(code="@Revenue", currency="USD"),
        amount=Decimal("1.5"),
    )
    # a prepaid CREDITS wallet with an auto top-up, for the auto-top-up routes' 200 paths
    services.set_auto_top_up(
        wallet=services.ensure_wallet(customer=customer, currency="CREDITS"),
        enabled=True,
        threshold=Decimal(1000),
        target=Decimal(5000),
        monthly_cap=Decimal(50),
    )
    # credits bought: a grant the refund route can refund
    bought = services.top_up(
        customer=customer, amount=Decimal(100), currency="CREDITS", reference="schema-credits"
    )
    # a draft invoice of the period so far (closed as of its end; the subscription rolls on)
    from invoicing import services as invoicing

    invoice = invoicing.close_period(
        subscription_id=subscription.pk, as_of=subscription.current_period_end
    ).invoice
    # a webhook endpoint with a delivery (of the invoice.created event just emitted)
    from billing import webhooks

    endpoint = webhooks.create_endpoint(url="https://hooks.example.com/schema-test")
    delivery = webhooks.resend_event(
        event_id=OutboundEvent.objects.latest("pk").pk, endpoint_id=endpoint.pk
    )
    alert = alerts.create_alert(
        kind="balance_below", scope="customer", customer=customer, threshold=Decimal(5)
    )
    alerts.evaluate_wallet_alerts()  # a state for GET /customers/{external_id}/alerts
    project = projects.create_project(  # for /customers/{external_id}/projects/{key}
        customer=customer, key="schema-team", spend_limit=Decimal(50)
    )
    return {
        "headers": {"Authorization": f"Bearer {secret}"},
        "path_parameters": {
            "external_id": SEEDED_CUSTOMER,
            "code": SEEDED_PLAN,
            "subscription_id": subscription.pk,
            "hold_id": hold.pk,
            "invoice_id": invoice.pk,
            "endpoint_id": endpoint.pk,
            "delivery_id": delivery.pk,
            "alert_id": alert.pk,
            "currency": "CREDITS",
            "grant_id": bought.credit_grant.pk,
            "kind": "journal",
            "key": project.key,
        },
    }


@schema.parametrize()
@settings(
    max_examples=50,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_api_conforms_to_its_schema(case, seeded):
    # Every example starts from the seeded state: what one request changed is rolled back
    # before the next, so examples replay identically when Hypothesis shrinks a failure.
    savepoint = transaction.savepoint()
    try:
        case.call_and_validate(headers=seeded["headers"], checks=CHECKS)
        if case.path_parameters:
            case.path_parameters = {
                name: seeded["path_parameters"][name] for name in case.path_parameters
            }
            case.call_and_validate(headers=seeded["headers"], checks=CHECKS)
    finally:
        transaction.savepoint_rollback(savepoint)


def test_customer_without_country_conforms(seeded):
    """A customer without a country ("") once broke the schema: the pattern and the blank
    branch of a oneOf both matched the empty string."""
    operation = schema["/api/v1/customers/{external_id}"]["GET"]
    case = operation.Case(path_parameters={"external_id": SEEDED_CUSTOMER})
    response = case.call_and_validate(headers=seeded["headers"], checks=CHECKS)
    assert response.status_code == 200
