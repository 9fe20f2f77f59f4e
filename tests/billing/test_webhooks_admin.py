"""Outbound webhooks in the admin: an endpoint created with its secret shown once, edited
through the same checks as the API, its secret rotated, disabled and enabled; deliveries
with their attempt log and a resend; the events read-only."""

from __future__ import annotations

import re

import pytest
from django.contrib.messages.storage.cookie import CookieStorage
from django.test import RequestFactory
from django.urls import reverse

from billing import outbox, webhooks
from billing.models import (
    DeliveryStatus,
    EndpointStatus,
    EventType,
    WebhookDelivery,
    WebhookEndpoint,
)

pytestmark = pytest.mark.django_db


def url(name: str, *args) -> str:
    return reverse(f"admin:{name}", args=args)


def cookie_messages(response) -> list:
    """The messages a response leaves in the messages cookie (signed, not encrypted)."""
    cookie = response.cookies.get("messages")
    if cookie is None or not cookie.value:
        return []
    return CookieStorage(RequestFactory().get("/"))._decode(cookie.value) or []


@pytest.fixture
def staff_client(client, django_user_model, settings):
    settings.WEBHOOK_ALLOW_INSECURE_URLS = True
    client.force_login(django_user_model.objects.create_superuser("ops", "o@example.com", None))
    return client


def test_an_endpoint_is_created_with_its_secret_shown_once(staff_client):
    response = staff_client.post(
        url("billing_webhookendpoint_add"),
        {"url": "https://hooks.example.com/a", "enabled_events": ["invoice.paid"]},
    )
    endpoint = WebhookEndpoint.objects.get()
    # shown in this answer, not carried by a message (the messages cookie is signed, not
    # encrypted) to the next page; never cached
    assert response.status_code == 200
    shown = response.content.decode()
    assert re.findall(r"whsec_[A-Za-z0-9+/=]+", shown) == [endpoint.secret]
    assert url("billing_webhookendpoint_change", endpoint.pk) in shown
    assert "no-store" in response["Cache-Control"]
    assert endpoint.secret not in str(cookie_messages(response))
    assert (
        endpoint.secret
        not in staff_client.get(url("billing_webhookendpoint_change", endpoint.pk)).content.decode()
    )
    assert endpoint.enabled_events == ["invoice.paid"]

    refused = staff_client.post(
        url("billing_webhookendpoint_add"), {"url": "ftp://x.example", "enabled_events": ["*"]}
    )
    assert refused.status_code == 200 and "http" in str(refused.context["form"].errors)
    assert WebhookEndpoint.objects.count() == 1


def test_an_endpoint_is_edited_rotated_disabled_and_enabled(staff_client):
    endpoint = webhooks.create_endpoint(url="https://hooks.example.com/a")
    change = url("billing_webhookendpoint_change", endpoint.pk)
    bad = staff_client.post(
        change, {"url": "gopher://x", "description": "", "enabled_events": ["*"]}
    )
    assert bad.status_code == 200
    staff_client.post(
        change,
        {"url": "https://hooks.example.com/b", "description": "ERP", "enabled_events": ["*"]},
    )
    endpoint.refresh_from_db()
    assert (endpoint.url, endpoint.description) == ("https://hooks.example.com/b", "ERP")

    changelist = url("billing_webhookendpoint_changelist")
    old = endpoint.secret
    rotated = staff_client.post(
        changelist, {"action": "rotate_secret_action", "_selected_action": [endpoint.pk]}
    )
    endpoint.refresh_from_db()
    assert rotated.status_code == 200
    assert endpoint.secret not in str(cookie_messages(rotated))
    assert endpoint.secret != old and endpoint.secret in rotated.content.decode()
    assert endpoint.secret not in staff_client.get(changelist).content.decode()
    staff_client.post(changelist, {"action": "disable_action", "_selected_action": [endpoint.pk]})
    endpoint.refresh_from_db()
    assert endpoint.status == EndpointStatus.DISABLED and "ops" in endpoint.disabled_reason
    staff_client.post(changelist, {"action": "enable_action", "_selected_action": [endpoint.pk]})
    endpoint.refresh_from_db()
    assert endpoint.status == EndpointStatus.ENABLED


def test_a_delivery_shows_its_attempt_log_and_is_resent(staff_client):
    endpoint = webhooks.create_endpoint(url="http://127.0.0.1:9/nothing-listens")
    event = outbox.emit(EventType.INVOICE_PAID, data={"id": 1})
    webhooks.fan_out(event_id=event.pk)
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    webhooks.send_delivery(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.RETRYING

    page = staff_client.get(url("billing_webhookdelivery_change", delivery.pk)).content.decode()
    assert delivery.last_error.split(":")[0] in page  # the attempt's error, in its log
    listed = staff_client.get(url("billing_webhookdelivery_changelist") + "?status=retrying")
    assert event.public_id in listed.content.decode()
    staff_client.post(
        url("billing_webhookdelivery_changelist"),
        {"action": "resend_action", "_selected_action": [delivery.pk]},
    )
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING and delivery.manual_resend

    shown = staff_client.get(url("billing_outboundevent_change", event.pk)).content.decode()
    assert event.public_id in shown and 'name="_save"' not in shown
