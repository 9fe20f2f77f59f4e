"""Signed but malformed webhook bodies (issue 13, item 9): the signature verifies, the body is
not a Stripe event (a JSON array, an object without an ``id``, an ``id`` that is not text,
no ``data.object``). Each is answered ``400 invalid_webhook_event`` in the API's error body,
never a 500, and nothing is stored."""

from __future__ import annotations

import json

import pytest

from invoicing.models import StripeEvent
from tests.billing.conftest import make_client
from tests.invoicing.test_stripe import SECRET, WEBHOOK
from tests.stripe_server import sign_payload

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = SECRET


def deliver(body: bytes):
    return make_client().post(
        WEBHOOK,
        body,
        content_type="application/json",
        headers={"Stripe-Signature": sign_payload(body, SECRET)},
    )


@pytest.mark.parametrize(
    "payload",
    [
        [],
        [{"id": "evt_1", "type": "payment_intent.succeeded"}],
        {"type": "payment_intent.succeeded", "data": {"object": {}}},
        {"id": 12, "type": "payment_intent.succeeded", "data": {"object": {}}},
        {"id": "", "type": "payment_intent.succeeded", "data": {"object": {}}},
        {"id": "evt_no_data", "type": "payment_intent.succeeded"},
        {"id": "evt_bad_object", "type": "payment_intent.succeeded", "data": {"object": []}},
        {"id": "evt_bad_type", "type": ["x"], "data": {"object": {}}},
        "a string",
        None,
    ],
    ids=[
        "empty-array",
        "array-of-events",
        "no-id",
        "numeric-id",
        "empty-id",
        "no-data",
        "object-not-an-object",
        "type-not-text",
        "string",
        "null",
    ],
)
def test_a_signed_body_that_is_not_an_event_is_a_400(payload):
    response = deliver(json.dumps(payload).encode())
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_webhook_event"
    assert error["type"] == "invalid_request_error"
    assert StripeEvent.objects.count() == 0


def test_a_signed_body_that_is_not_json_is_a_400():
    response = deliver(b"{not json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] in {"invalid_webhook_event", "invalid_signature"}
    assert StripeEvent.objects.count() == 0


def test_a_well_formed_unknown_event_is_still_stored_and_ignored():
    body = json.dumps(
        {"id": "evt_unknown_kind", "type": "customer.created", "data": {"object": {"id": "c"}}}
    ).encode()
    response = deliver(body)
    assert response.status_code == 200, response.content
    assert StripeEvent.objects.get(event_id="evt_unknown_kind").outcome == "ignored"


def test_a_body_signed_an_hour_ago_is_refused_as_a_replay():
    """Stripe's tolerance (300 s, as ``construct_event`` has it): an old delivery replayed."""
    import time

    body = json.dumps(
        {"id": "evt_replayed", "type": "customer.created", "data": {"object": {"id": "c"}}}
    ).encode()
    response = make_client().post(
        WEBHOOK,
        body,
        content_type="application/json",
        headers={"Stripe-Signature": sign_payload(body, SECRET, int(time.time()) - 3600)},
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid_signature"
    assert StripeEvent.objects.count() == 0
