"""Webhook endpoints, deliveries and outbound events in the API (/api/v1/webhook-…): strict
input with stable error codes, the secret returned once, the delivery log, a resend; the
schema documents every event type's payload in its `webhooks` section."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from billing import outbox, webhooks
from billing.models import EventType, IdempotencyRecord, WebhookDelivery, WebhookEndpoint
from tests.billing.conftest import assert_error, make_client
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

ENDPOINTS = "/api/v1/webhook-endpoints"


@pytest.fixture(autouse=True)
def _development_urls(settings):
    settings.WEBHOOK_ALLOW_INSECURE_URLS = True


def create(api, **body):
    body.setdefault("url", "https://hooks.example.com/billing")
    return api.post(ENDPOINTS, body)


def test_create_returns_the_secret_once(api):
    response = create(api, enabled_events=["invoice.paid", "credits.granted"], description="ERP")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["secret"].startswith("whsec_")
    assert body["enabled_events"] == ["invoice.paid", "credits.granted"]
    assert (body["status"], body["consecutive_failures"]) == ("enabled", 0)
    assert WebhookEndpoint.objects.get(pk=body["id"]).secret == body["secret"]

    shown = api.get(f"{ENDPOINTS}/{body['id']}").json()
    assert "secret" not in shown and shown["url"] == "https://hooks.example.com/billing"
    listed = api.get(ENDPOINTS).json()
    assert listed["has_more"] is False and [e["id"] for e in listed["data"]] == [body["id"]]
    assert "secret" not in listed["data"][0]

    rotated = api.post(f"{ENDPOINTS}/{body['id']}/rotate-secret", {})
    assert rotated.status_code == 200
    assert rotated.json()["secret"].startswith("whsec_")
    assert rotated.json()["secret"] != body["secret"]


def test_the_default_is_every_event_type(api):
    assert create(api).json()["enabled_events"] == ["*"]


def test_input_errors_are_json_with_stable_codes(api, settings):
    assert_error(create(api, colour="red"), 400, "unknown_parameter", param="colour")
    assert_error(create(api, url="ftp://files.example.com/x"), 400, "invalid_url", param="url")
    assert_error(create(api, url="not a url"), 400, "invalid_url", param="url")
    response = create(api, enabled_events=["invoice.payed"])
    assert_error(response, 400, "invalid_parameter", param="enabled_events[0]")
    assert_error(create(api, enabled_events=[]), 400, "invalid_parameter", param="enabled_events")
    response = api.post(ENDPOINTS, {"description": "no url"})
    assert_error(response, 400, "parameter_missing", param="url")
    settings.WEBHOOK_ALLOW_INSECURE_URLS = False  # production
    assert_error(create(api, url="http://hooks.example.com/x"), 400, "invalid_url", param="url")
    assert_error(create(api, url="https://127.0.0.1/x"), 400, "invalid_url", param="url")
    assert not WebhookEndpoint.objects.exists()

    assert_error(api.get(f"{ENDPOINTS}/999999"), 404, "webhook_endpoint_not_found")
    assert_error(
        api.post("/api/v1/webhook-deliveries/999999/resend", {}), 404, "webhook_delivery_not_found"
    )


def test_update_disable_enable_and_delete(api):
    endpoint_id = create(api).json()["id"]
    url = f"{ENDPOINTS}/{endpoint_id}"
    assert_error(api.patch(url, {"secret": "whsec_x"}), 400, "unknown_parameter", param="secret")
    changed = api.patch(url, {"status": "disabled", "enabled_events": ["invoice.paid"]})
    assert changed.status_code == 200, changed.json()
    body = changed.json()
    assert (body["status"], body["enabled_events"]) == ("disabled", ["invoice.paid"])
    assert body["disabled_reason"] == "disabled by hand"
    again = api.patch(url, {"status": "enabled", "url": "https://other.example.com/h"}).json()
    assert (again["status"], again["disabled_reason"], again["url"]) == (
        "enabled",
        "",
        "https://other.example.com/h",
    )
    deleted = api.delete(url)
    assert deleted.status_code == 200 and deleted.json() == {"id": endpoint_id, "deleted": True}
    assert_error(api.get(url), 404, "webhook_endpoint_not_found")


def test_scopes(make_key, api):
    _, read_only = make_key(scopes=("read",))
    reader = make_client(read_only)
    assert reader.get(ENDPOINTS).status_code == 200
    assert_error(create(reader), 403, "insufficient_scope")
    endpoint_id = create(api).json()["id"]
    assert_error(reader.delete(f"{ENDPOINTS}/{endpoint_id}"), 403, "insufficient_scope")


def test_deliveries_their_log_a_resend_and_the_events(api):
    endpoint_id = create(api).json()["id"]
    customer = CustomerFactory(external_id="wh-api")
    event = outbox.emit(EventType.INVOICE_PAID, data={"id": 1}, customer=customer)
    webhooks.fan_out(event_id=event.pk)
    delivery = WebhookDelivery.objects.get(endpoint_id=endpoint_id)
    # an attempt that failed, logged (the URL does not answer: nothing listens there)
    WebhookEndpoint.objects.filter(pk=endpoint_id).update(url="http://127.0.0.1:9/hooks")
    webhooks.send_delivery(delivery_id=delivery.pk)

    page = api.get(f"{ENDPOINTS}/{endpoint_id}/deliveries").json()
    (listed,) = page["data"]
    assert (listed["event"], listed["event_type"], listed["status"], listed["attempts"]) == (
        event.public_id,
        "invoice.paid",
        "retrying",
        1,
    )
    assert api.get(f"{ENDPOINTS}/{endpoint_id}/deliveries?status=succeeded").json()["data"] == []
    assert_error(
        api.get(f"{ENDPOINTS}/{endpoint_id}/deliveries?status=lost"),
        400,
        "invalid_parameter",
        param="status",
    )
    detail = api.get(f"/api/v1/webhook-deliveries/{delivery.pk}").json()
    (attempt,) = detail["attempt_log"]
    assert attempt["number"] == 1 and not attempt["succeeded"] and attempt["error"]

    resent = api.post(f"/api/v1/webhook-deliveries/{delivery.pk}/resend", {})
    assert resent.status_code == 202, resent.json()
    assert resent.json()["status"] == "pending"
    assert WebhookDelivery.objects.get(pk=delivery.pk).manual_resend

    listed_events = api.get("/api/v1/webhook-events?customer=wh-api").json()["data"]
    assert [(e["id"], e["type"], e["customer"], e["data"]) for e in listed_events] == [
        (event.public_id, "invoice.paid", "wh-api", {"id": 1})
    ]
    assert api.get("/api/v1/webhook-events?type=invoice.created").json()["data"] == []


def test_the_schema_documents_every_event_type_in_its_webhooks_section(settings):
    schema = Client().get("/api/schema/?format=json").json()
    assert schema["openapi"].startswith("3.1")
    assert set(schema["webhooks"]) == set(EventType.values)
    paid = schema["webhooks"]["invoice.paid"]["post"]
    ref = paid["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    envelope = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(envelope["properties"]) == {"type", "timestamp", "data"}
    assert "webhook-signature" in paid["description"]
    paths = schema["paths"]
    assert {
        "/api/v1/webhook-endpoints",
        "/api/v1/webhook-endpoints/{endpoint_id}",
        "/api/v1/webhook-endpoints/{endpoint_id}/rotate-secret",
        "/api/v1/webhook-endpoints/{endpoint_id}/deliveries",
        "/api/v1/webhook-deliveries/{delivery_id}",
        "/api/v1/webhook-deliveries/{delivery_id}/resend",
        "/api/v1/webhook-events",
    } <= set(paths)


def test_a_secret_is_not_stored_with_the_idempotency_record_and_not_replayed(api):
    """The answers carrying the secret (create, rotate-secret) are stored without it: a
    replay answers the endpoint with ``secret`` null; the secret was shown once."""
    first = api.post(
        ENDPOINTS, {"url": "https://hooks.example.com/x"}, HTTP_IDEMPOTENCY_KEY="create-1"
    )
    assert first.status_code == 201
    secret = first.json()["secret"]
    assert secret.startswith("whsec_")
    record = IdempotencyRecord.objects.get(key="create-1")
    assert secret not in json.dumps(record.response_body)
    again = api.post(
        ENDPOINTS, {"url": "https://hooks.example.com/x"}, HTTP_IDEMPOTENCY_KEY="create-1"
    )
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert again.json() == {**first.json(), "secret": None}
    assert WebhookEndpoint.objects.count() == 1

    rotate = f"{ENDPOINTS}/{first.json()['id']}/rotate-secret"
    rotated = api.post(rotate, {}, HTTP_IDEMPOTENCY_KEY="rotate-1")
    new_secret = rotated.json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != secret
    assert new_secret not in json.dumps(IdempotencyRecord.objects.get(key="rotate-1").response_body)
    replayed = api.post(rotate, {}, HTTP_IDEMPOTENCY_KEY="rotate-1")
    assert replayed["Idempotent-Replayed"] == "true" and replayed.json()["secret"] is None
    assert WebhookEndpoint.objects.get().secret == new_secret  # not rotated twice


def test_an_event_is_resent_to_an_endpoint_that_never_got_it(api):
    made = outbox.emit(EventType.INVOICE_PAID, data={"id": 7})
    assert made is not None
    webhooks.fan_out(event_id=made.pk)  # no endpoint yet: nobody gets it
    endpoint_id = create(api).json()["id"]
    path = f"{ENDPOINTS}/{endpoint_id}/resend-event"

    response = api.post(path, {"event": made.public_id})

    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["endpoint"], body["event"], body["status"]) == (
        endpoint_id,
        made.public_id,
        "pending",
    )
    delivery = WebhookDelivery.objects.get(endpoint_id=endpoint_id, event=made)
    assert delivery.manual_resend and body["id"] == delivery.pk
    again = api.post(path, {"event": made.public_id})  # the same delivery, once more
    assert again.status_code == 202 and again.json()["id"] == delivery.pk
    assert WebhookDelivery.objects.filter(endpoint_id=endpoint_id).count() == 1

    assert_error(
        api.post(path, {"event": "evt_nope"}), 404, "webhook_event_not_found", param="event"
    )
    assert_error(api.post(path, {}), 400, "parameter_missing", param="event")
    assert_error(
        api.post(path, {"event": made.public_id, "x": 1}), 400, "unknown_parameter", param="x"
    )
    assert_error(
        api.post(f"{ENDPOINTS}/999999/resend-event", {"event": made.public_id}),
        404,
        "webhook_endpoint_not_found",
    )


def test_a_url_with_a_space_in_its_host_is_refused(api):
    assert_error(create(api, url="https://exa mple.com/"), 400, "invalid_url", param="url")
