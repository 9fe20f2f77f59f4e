"""Outbound webhooks (billing.webhooks) against a real local HTTP receiver: signed the
Standard Webhooks way, logged with the response, retried on the schedule through a 500 and
a timeout, failed once the schedule is spent, the endpoint disabled after failing long
enough, resent by hand; fan-out idempotent under concurrency; one attempt per claim."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook

from billing import outbox, webhooks
from billing.models import (
    DeliveryStatus,
    EndpointStatus,
    EventType,
    OutboundEvent,
    WebhookAttempt,
    WebhookDelivery,
)
from tests.factories import CustomerFactory
from tests.threads import run_concurrently
from tests.webhook_receiver import start_receiver


@pytest.fixture
def receiver():
    receiver, server = start_receiver()
    yield receiver
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _fast_webhooks(settings):
    settings.WEBHOOK_CONNECT_TIMEOUT = 1
    settings.WEBHOOK_READ_TIMEOUT = 1
    settings.WEBHOOK_RETRY_SCHEDULE = [5, 300]
    settings.WEBHOOK_DISABLE_AFTER = timedelta(days=5)
    settings.WEBHOOK_ALLOW_INSECURE_URLS = True


def event(kind=EventType.CREDITS_GRANTED, **data) -> OutboundEvent:
    made = outbox.emit(kind, data={"amount": "10.000000000000", **data})
    assert made is not None
    return made


def delivery_of(endpoint, made: OutboundEvent) -> WebhookDelivery:
    return WebhookDelivery.objects.get(endpoint=endpoint, event=made)


@pytest.mark.django_db
def test_a_delivery_is_signed_sent_and_logged(receiver):
    endpoint = webhooks.create_endpoint(url=receiver.url, description="ERP")
    assert endpoint.secret.startswith("whsec_")
    made = event(customer_note="ü")
    assert len(webhooks.fan_out(event_id=made.pk)) == 1

    sent = webhooks.send_delivery(delivery_id=delivery_of(endpoint, made).pk)

    assert sent is not None and sent.status == DeliveryStatus.SUCCEEDED
    (request,) = receiver.received
    payload = Webhook(endpoint.secret).verify(request.body, request.headers)
    assert payload == {
        "type": "credits.granted",
        "timestamp": made.created_at.isoformat().replace("+00:00", "Z"),
        "data": {"amount": "10.000000000000", "customer_note": "ü"},
    }
    assert request.headers["webhook-id"] == made.public_id
    assert request.headers["content-type"] == "application/json"
    with pytest.raises(Exception, match="signature"):  # another secret does not verify
        Webhook(webhooks.new_secret()).verify(request.body, request.headers)
    (attempt,) = sent.attempt_log.all()
    assert (attempt.number, attempt.succeeded, attempt.status_code) == (1, True, 200)
    assert attempt.response_body == "reply 200" and attempt.error == ""
    assert sent.attempts == 1 and sent.next_attempt_at is None
    # Sent already: asked again (a task delivered twice), nothing is sent.
    assert webhooks.send_delivery(delivery_id=sent.pk) is None
    assert len(receiver.received) == 1


@pytest.mark.django_db
def test_failures_are_retried_on_the_schedule_through_a_500_and_a_timeout(receiver):
    receiver.script(500, (200, 2.5), 200)  # an error, then too slow (read timeout 1 s), then ok
    endpoint = webhooks.create_endpoint(url=receiver.url)
    made = event()
    webhooks.fan_out(event_id=made.pk)
    delivery = delivery_of(endpoint, made)
    t0 = timezone.now()

    first = webhooks.send_delivery(delivery_id=delivery.pk, now=t0)
    assert first.status == DeliveryStatus.RETRYING
    assert first.next_attempt_at == t0 + timedelta(seconds=5)  # the schedule's first step
    assert first.last_status_code == 500 and first.last_response_body == "reply 500"
    # not due yet: nothing is sent
    assert webhooks.send_delivery(delivery_id=delivery.pk, now=t0 + timedelta(seconds=4)) is None

    second = webhooks.send_delivery(delivery_id=delivery.pk, now=t0 + timedelta(seconds=5))
    assert second.status == DeliveryStatus.RETRYING
    assert second.last_status_code is None and "timeout" in second.last_error.lower()
    assert second.next_attempt_at == t0 + timedelta(seconds=305)
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 2 and endpoint.failing_since == t0

    third = webhooks.send_delivery(delivery_id=delivery.pk, now=t0 + timedelta(seconds=305))
    assert third.status == DeliveryStatus.SUCCEEDED and third.attempts == 3
    log = list(WebhookAttempt.objects.filter(delivery=delivery).order_by("number"))
    assert [(a.number, a.status_code, a.succeeded) for a in log] == [
        (1, 500, False),
        (2, None, False),
        (3, 200, True),
    ]
    assert "timeout" in log[1].error.lower() and log[1].duration_ms >= 900
    # every attempt carried the same webhook-id and a valid signature
    assert {r.headers["webhook-id"] for r in receiver.wait_for(3)} == {made.public_id}
    for request in receiver.received:
        Webhook(endpoint.secret).verify(request.body, request.headers)
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 0 and endpoint.failing_since is None


@pytest.mark.django_db
def test_a_spent_schedule_fails_the_delivery_and_a_failing_endpoint_is_disabled(receiver, settings):
    settings.WEBHOOK_RETRY_SCHEDULE = [60, 60]
    settings.WEBHOOK_DISABLE_AFTER = timedelta(seconds=100)
    receiver.default = (503, 0.0)
    endpoint = webhooks.create_endpoint(url=receiver.url)
    made = event()
    webhooks.fan_out(event_id=made.pk)
    delivery = delivery_of(endpoint, made)
    t0 = timezone.now()

    assert webhooks.send_delivery(delivery_id=delivery.pk, now=t0).status == "retrying"
    step = webhooks.send_delivery(delivery_id=delivery.pk, now=t0 + timedelta(seconds=60))
    assert step.status == DeliveryStatus.RETRYING
    endpoint.refresh_from_db()
    assert endpoint.status == EndpointStatus.ENABLED  # failing for 60 s only
    last = webhooks.send_delivery(delivery_id=delivery.pk, now=t0 + timedelta(seconds=120))
    assert last.status == DeliveryStatus.FAILED and last.next_attempt_at is None
    assert last.attempts == 3 and last.last_status_code == 503
    endpoint.refresh_from_db()
    assert endpoint.status == EndpointStatus.DISABLED  # every attempt failed for 120 s
    assert "every attempt failed since" in endpoint.disabled_reason

    # disabled: new events are not fanned out to it, and a resend fails without sending
    later = event()
    assert webhooks.fan_out(event_id=later.pk) == []
    assert not WebhookDelivery.objects.filter(event=later).exists()
    webhooks.resend_delivery(delivery_id=delivery.pk)
    refused = webhooks.send_delivery(delivery_id=delivery.pk)
    assert refused.status == DeliveryStatus.FAILED and "disabled" in refused.last_error
    assert len(receiver.received) == 3

    # enabled again by staff: the count is cleared, and a resend goes out
    endpoint = webhooks.enable_endpoint(endpoint_id=endpoint.pk)
    assert (endpoint.status, endpoint.consecutive_failures, endpoint.failing_since) == (
        EndpointStatus.ENABLED,
        0,
        None,
    )
    receiver.default = (204, 0.0)
    webhooks.resend_delivery(delivery_id=delivery.pk)
    resent = webhooks.send_delivery(delivery_id=delivery.pk)
    assert resent.status == DeliveryStatus.SUCCEEDED and resent.attempts == 4
    assert WebhookAttempt.objects.get(delivery=delivery, number=4).manual


@pytest.mark.django_db(transaction=True)  # each statement its own time: created after
def test_a_resend_of_an_event_reaches_an_endpoint_created_after_it(receiver):
    made = event()
    endpoint = webhooks.create_endpoint(url=receiver.url)
    assert webhooks.fan_out(event_id=made.pk) == []  # created after the event
    delivery = webhooks.resend_event(event_id=made.pk, endpoint_id=endpoint.pk)
    assert delivery.status == DeliveryStatus.PENDING and delivery.manual_resend
    assert webhooks.send_delivery(delivery_id=delivery.pk).status == DeliveryStatus.SUCCEEDED
    Webhook(endpoint.secret).verify(receiver.received[0].body, receiver.received[0].headers)


@pytest.mark.django_db
def test_each_endpoint_receives_only_the_event_types_it_asked_for(receiver):
    invoices = webhooks.create_endpoint(url=receiver.url, enabled_events=["invoice.paid"])
    everything = webhooks.create_endpoint(url=receiver.url + "/all")
    grant = event(EventType.CREDITS_GRANTED)
    paid = event(EventType.INVOICE_PAID)
    webhooks.fan_out(event_id=grant.pk)
    webhooks.fan_out(event_id=paid.pk)
    assert set(WebhookDelivery.objects.values_list("endpoint_id", "event_id")) == {
        (everything.pk, grant.pk),
        (everything.pk, paid.pk),
        (invoices.pk, paid.pk),
    }


@pytest.mark.django_db
def test_the_sweep_fans_out_events_whose_task_was_lost_and_sends_what_is_due(receiver):
    endpoint = webhooks.create_endpoint(url=receiver.url)
    made = event()  # its fan-out would run after commit; in this test it never does
    assert OutboundEvent.objects.get(pk=made.pk).fanned_out_at is None
    assert webhooks.send_due() == 1
    assert delivery_of(endpoint, made).status == DeliveryStatus.SUCCEEDED
    assert OutboundEvent.objects.get(pk=made.pk).fanned_out_at is not None
    result = webhooks.sweep()
    assert (result.fanned_out, result.queued) == (0, 0)


@pytest.mark.django_db
def test_endpoint_urls_and_event_types_are_checked(settings):
    for url in ("ftp://example.com/x", "example.com/hooks", "https://", "http://u:p@x.test/"):
        with pytest.raises(webhooks.WebhookURLRefused):
            webhooks.create_endpoint(url=url)
    assert webhooks.check_url("http://localhost:8000/hooks")  # development allows it
    settings.WEBHOOK_ALLOW_INSECURE_URLS = False  # production
    for url in (
        "http://hooks.example.com/x",
        "https://127.0.0.1/x",
        "https://localhost/x",
        "https://10.1.2.3/x",
        "https://192.168.0.4/x",
        "https://169.254.169.254/latest",
        "https://[::1]/x",
    ):
        with pytest.raises(webhooks.WebhookURLRefused) as refused:
            webhooks.check_url(url)
        assert refused.value.code == "invalid_url"
    assert webhooks.check_url("https://93.184.215.14/hooks")  # a public address
    with pytest.raises(webhooks.WebhookURLRefused):
        webhooks.check_url("https://name.invalid/hooks")  # does not resolve
    with pytest.raises(Exception, match="unknown event type"):
        webhooks.check_event_types(["invoice.payed"])
    with pytest.raises(Exception, match="stands alone"):
        webhooks.check_event_types(["*", "invoice.paid"])


@pytest.mark.django_db
def test_a_rotated_secret_signs_what_follows(receiver):
    endpoint = webhooks.create_endpoint(url=receiver.url)
    old = endpoint.secret
    rotated = webhooks.rotate_secret(endpoint_id=endpoint.pk)
    assert rotated.secret != old and rotated.secret.startswith("whsec_")
    made = event()
    webhooks.fan_out(event_id=made.pk)
    webhooks.send_delivery(delivery_id=delivery_of(endpoint, made).pk)
    (request,) = receiver.received
    Webhook(rotated.secret).verify(request.body, request.headers)
    with pytest.raises(Exception, match="signature"):
        Webhook(old).verify(request.body, request.headers)


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_fan_outs_make_one_delivery_per_endpoint(receiver):
    endpoints = [webhooks.create_endpoint(url=f"{receiver.url}/{i}") for i in range(3)]
    with transaction.atomic():
        made = outbox.emit(EventType.INVOICE_PAID, data={}, customer=CustomerFactory())
    results = run_concurrently(lambda i: webhooks.fan_out(event_id=made.pk), threads=6)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sorted(WebhookDelivery.objects.values_list("endpoint_id", flat=True)) == sorted(
        e.pk for e in endpoints
    )
    webhooks.fan_out(event_id=made.pk)  # and once more, later
    assert WebhookDelivery.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_two_workers_never_make_the_same_attempt(receiver):
    receiver.default = (200, 0.3)  # slow enough for the others to arrive meanwhile
    endpoint = webhooks.create_endpoint(url=receiver.url)
    with transaction.atomic():
        made = event()
    webhooks.fan_out(event_id=made.pk)
    delivery = delivery_of(endpoint, made)
    results = run_concurrently(lambda i: webhooks.send_delivery(delivery_id=delivery.pk), 6)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert len([r for r in results if r is not None]) == 1
    assert len(receiver.received) == 1
    assert WebhookAttempt.objects.filter(delivery=delivery).count() == 1


def test_the_default_schedule_spans_about_three_days():
    from django.conf import settings

    from billing.project import settings as defaults

    schedule = defaults.WEBHOOK_RETRY_SCHEDULE
    assert schedule[:5] == [5, 300, 1800, 7200, 18000]
    assert timedelta(days=2.5) < timedelta(seconds=sum(schedule)) < timedelta(days=3.5)
    assert defaults.WEBHOOK_DISABLE_AFTER == timedelta(days=5)
    assert settings.WEBHOOK_CONNECT_TIMEOUT == 1  # this module's fixture


def test_the_payload_is_the_standard_webhooks_shape():
    made = OutboundEvent(
        public_id="evt_1",
        type="invoice.paid",
        data={"id": 7},
        created_at=datetime(2026, 5, 1, tzinfo=UTC),
    )
    assert json.loads(webhooks.body_of(made)) == {
        "type": "invoice.paid",
        "timestamp": "2026-05-01T00:00:00Z",
        "data": {"id": 7},
    }


# --- Celery for real ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_delivers_after_a_500_and_a_timeout(receiver, monkeypatch):
    """The event's commit queues its fan-out; a real worker fans it out, sends it, gets a
    500, retries (a countdown on the broker), times out, retries, and succeeds."""
    from billing.project.celery import app
    from tests.test_celery import start_worker, stop_worker

    queue = app.conf.task_default_queue  # the tests' queue: the worker queues follow-ups there
    for name, value in {
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "WEBHOOK_RETRY_SCHEDULE": "1,1,1",
        "WEBHOOK_READ_TIMEOUT": "1",
        "WEBHOOK_CONNECT_TIMEOUT": "1",
        "WEBHOOK_ALLOW_INSECURE_URLS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    receiver.script(500, (200, 2.5), 200)
    endpoint = webhooks.create_endpoint(url=receiver.url)
    worker = start_worker(queue)
    try:
        with transaction.atomic():
            made = outbox.emit(EventType.INVOICE_PAID, data={"id": 1}, dedupe_key="paid-e2e")
        deadline = timezone.now() + timedelta(seconds=90)
        while not WebhookDelivery.objects.filter(status=DeliveryStatus.SUCCEEDED).exists():
            assert timezone.now() < deadline, list(WebhookAttempt.objects.values())
            time.sleep(0.2)
    finally:
        stop_worker(worker)
    delivery = delivery_of(endpoint, made)
    log = list(delivery.attempt_log.order_by("number"))
    assert [(a.status_code, a.succeeded) for a in log] == [(500, False), (None, False), (200, True)]
    assert "timeout" in log[1].error.lower()
    for request in receiver.received:
        assert Webhook(endpoint.secret).verify(request.body, request.headers)["data"] == {"id": 1}
    assert OutboundEvent.objects.get(pk=made.pk).fanned_out_at is not None
