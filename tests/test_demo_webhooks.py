"""``make run``'s demo webhooks: the demo data's endpoint points at the development-only
receiver (billing.devtools.webhook_receiver) on the running web server; the events of the
seeding, the period close, the alerts and the auto top-up are delivered there over real
HTTP, their Standard Webhooks signatures verified by the receiver, and logged. With DEBUG
off the receiver is not there (404)."""

from __future__ import annotations

import io
import json
from urllib.parse import urlsplit

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from standardwebhooks import Webhook

from billing import webhooks
from billing.models import (
    AlertFiring,
    AutoTopUpAttempt,
    DeliveryStatus,
    OutboundEvent,
    WebhookDelivery,
    WebhookEndpoint,
)
from invoicing import auto_top_up
from invoicing import services as invoicing
from invoicing.models import Invoice
from metering import tasks as metering_tasks


@pytest.fixture
def demo_settings(settings, tmp_path):
    settings.DEBUG = True  # as make run: the receiver answers only in development
    settings.WEBHOOK_ALLOW_INSECURE_URLS = True
    settings.MEDIA_ROOT = tmp_path
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.STRIPE_SECRET_KEY = ""
    settings.PAYMENTS_OFFLINE = True  # make run's opt-in
    return settings


@pytest.mark.django_db(transaction=True)
def test_the_demo_delivers_its_events_signed_to_its_own_receiver(
    demo_settings, live_server, monkeypatch
):
    server = urlsplit(live_server.url)
    monkeypatch.setenv("HOST", server.hostname)
    monkeypatch.setenv("PORT", str(server.port))
    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo", stdout=io.StringIO())  # again: one endpoint still
    [endpoint] = WebhookEndpoint.objects.all()
    assert endpoint.url == f"{live_server.url}/dev/webhook-receiver/"
    assert endpoint.enabled_events == ["*"]

    # What beat does in make run's first minutes, here one step after the other.
    call_command("close_periods", stdout=io.StringIO())
    for draft in Invoice.objects.all():
        invoice = invoicing.finalize_invoice(invoice_id=draft.pk)
        invoicing.after_finalization(invoice_id=invoice.pk)
    metering_tasks.evaluate_alerts()
    for attempt_id in auto_top_up.run_due():
        auto_top_up.process_attempt(attempt_id=attempt_id)
    assert webhooks.send_due(now=timezone.now()) > 0

    assert AlertFiring.objects.exists()
    assert AutoTopUpAttempt.objects.filter(status="succeeded").exists()
    deliveries = list(WebhookDelivery.objects.select_related("event").filter(endpoint=endpoint))
    assert deliveries
    assert [d for d in deliveries if d.status != DeliveryStatus.SUCCEEDED] == []
    assert len(deliveries) == OutboundEvent.objects.count()  # every event, each once
    types = {d.event.type for d in deliveries}
    assert {
        "subscription.created",
        "credits.granted",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "alert.triggered",
        "auto_top_up.succeeded",
    } <= types
    for delivery in deliveries:
        [attempt] = delivery.attempt_log.all()
        assert attempt.status_code == 200, attempt.response_body
        # the receiver's answer: it verified the signature with the endpoint's secret
        assert json.loads(attempt.response_body) == {
            "received": delivery.event.type,
            "webhook_id": delivery.event.public_id,
            "signature": "valid",
            "endpoint": endpoint.pk,
        }


def signed(secret: str, body: str, msg_id: str = "msg_demo") -> dict:
    at = timezone.now()
    return {
        "HTTP_WEBHOOK_ID": msg_id,
        "HTTP_WEBHOOK_TIMESTAMP": str(int(at.timestamp())),
        "HTTP_WEBHOOK_SIGNATURE": Webhook(secret).sign(msg_id, at, body),
    }


@pytest.mark.django_db
def test_the_receiver_refuses_a_signature_no_endpoint_s_secret_makes(demo_settings):
    endpoint = webhooks.create_endpoint(url="http://127.0.0.1:8000/dev/webhook-receiver/")
    body = '{"type":"invoice.paid","timestamp":"2026-01-01T00:00:00Z","data":{}}'
    client = Client()

    good = client.post(
        "/dev/webhook-receiver/", body, "application/json", **signed(endpoint.secret, body)
    )
    assert good.status_code == 200 and good.json()["received"] == "invoice.paid"
    forged = client.post(
        "/dev/webhook-receiver/",
        body,
        "application/json",
        **signed(webhooks.new_secret(), body),
    )
    assert forged.status_code == 400
    tampered = client.post(
        "/dev/webhook-receiver/",
        body.replace("paid", "voided"),
        "application/json",
        **signed(endpoint.secret, body),
    )
    assert tampered.status_code == 400


@pytest.mark.django_db
def test_the_receiver_is_not_there_in_production(demo_settings):
    endpoint = webhooks.create_endpoint(url="http://127.0.0.1:8000/dev/webhook-receiver/")
    body = '{"type":"invoice.paid","timestamp":"2026-01-01T00:00:00Z","data":{}}'
    demo_settings.DEBUG = False

    response = Client().post(
        "/dev/webhook-receiver/", body, "application/json", **signed(endpoint.secret, body)
    )

    assert response.status_code == 404
