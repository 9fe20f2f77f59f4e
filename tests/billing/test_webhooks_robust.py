"""Outbound webhooks when things go wrong after a delivery is claimed (review of issue 16
item 5): a receiver answering with a NUL byte, an unknown charset, a broken gzip body or a
body that stalls is a failed attempt in the log, the claim released, the retry on the
schedule; a receiver dripping its answer is cut off at the attempt's total deadline; a
worker whose lease ran out records nothing and does not crash; a resend asked for during an
attempt survives it; the sweep does not queue the same delivery every minute."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from billing import outbox, webhooks
from billing.models import DeliveryStatus, EventType, WebhookAttempt, WebhookDelivery
from billing.webhooks import delivery as delivery_module
from billing.webhooks import endpoints as endpoints_module
from billing.webhooks import tasks
from tests.threads import run_concurrently
from tests.webhook_receiver import start_receiver


def raw_server(reply: bytes, *, stall_after: float = 0.0, drip: float = 0.0):
    """A TCP server answering every request with the raw HTTP bytes ``reply`` (at once, or
    one byte every ``drip`` seconds), then holding the connection ``stall_after`` seconds."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(50)
    hits: list[float] = []

    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            hits.append(time.monotonic())
            if drip:
                for byte in reply:
                    conn.sendall(bytes([byte]))
                    time.sleep(drip)
            else:
                conn.sendall(reply)
            if stall_after:
                time.sleep(stall_after)
        except OSError:
            pass
        finally:
            conn.close()

    def loop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}/hooks", hits, server


@pytest.fixture(autouse=True)
def _fast_webhooks(settings):
    settings.WEBHOOK_CONNECT_TIMEOUT = 1
    settings.WEBHOOK_READ_TIMEOUT = 1
    settings.WEBHOOK_TOTAL_TIMEOUT = 2
    settings.WEBHOOK_RETRY_SCHEDULE = [5, 300]
    settings.WEBHOOK_ALLOW_INSECURE_URLS = True


@pytest.fixture
def receiver():
    receiver, server = start_receiver()
    yield receiver
    server.shutdown()
    server.server_close()


def one_delivery(url: str) -> WebhookDelivery:
    endpoint = webhooks.create_endpoint(url=url)
    made = outbox.emit(EventType.CREDITS_GRANTED, data={"x": 1})
    assert made is not None
    webhooks.fan_out(event_id=made.pk)
    return WebhookDelivery.objects.get(endpoint=endpoint, event=made)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("reply", "kwargs", "error"),
    [
        # a NUL in the body: PostgreSQL refuses it in a text column (DataError)
        (b"HTTP/1.1 500 X\r\nContent-Length: 3\r\n\r\na\x00b", {}, "HTTP 500"),
        # a charset Python does not know (LookupError)
        (
            b"HTTP/1.1 500 X\r\nContent-Type: text/plain; charset=nope\r\n"
            b"Content-Length: 2\r\n\r\nok",
            {},
            "HTTP 500",
        ),
        # the body stalls past the read timeout (urllib3's ReadTimeoutError)
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", {"stall_after": 3}, "imeout"),
        # a body that is not the gzip it claims (urllib3's DecodeError)
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope",
            {},
            "Error",
        ),
    ],
    ids=["nul-in-body", "unknown-charset", "body-stalls", "bad-gzip"],
)
def test_a_broken_answer_is_a_failed_attempt_and_the_retry_follows_the_schedule(
    reply, kwargs, error
):
    url, hits, server = raw_server(reply, **kwargs)
    try:
        delivery = one_delivery(url)
        now = timezone.now()

        sent = webhooks.send_delivery(delivery_id=delivery.pk, now=now)

        assert sent is not None
        delivery.refresh_from_db()
        assert delivery.status == DeliveryStatus.RETRYING
        assert delivery.attempts == 1 and delivery.locked_until is None
        assert delivery.next_attempt_at == now + timedelta(seconds=5)
        (attempt,) = WebhookAttempt.objects.filter(delivery=delivery)
        assert not attempt.succeeded and error in attempt.error, attempt.error
        assert "\x00" not in attempt.response_body
        # the second attempt comes on the schedule, not before
        assert (
            webhooks.send_delivery(delivery_id=delivery.pk, now=now + timedelta(seconds=4)) is None
        )
        webhooks.send_delivery(delivery_id=delivery.pk, now=now + timedelta(seconds=6))
        delivery.refresh_from_db()
        assert delivery.attempts == 2 and len(hits) == 2
        assert WebhookAttempt.objects.filter(delivery=delivery).count() == 2
    finally:
        server.close()


@pytest.mark.django_db
def test_a_nul_in_the_answer_is_stripped_from_the_log():
    url, _, server = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\na\x00b\x00c")
    try:
        delivery = one_delivery(url)
        sent = webhooks.send_delivery(delivery_id=delivery.pk)
        assert sent is not None and sent.status == DeliveryStatus.SUCCEEDED
        (attempt,) = WebhookAttempt.objects.filter(delivery=delivery)
        assert attempt.response_body == "abc"
    finally:
        server.close()


@pytest.mark.django_db
def test_an_attempt_that_cannot_be_recorded_whole_is_recorded_without_the_answer(monkeypatch):
    """Whatever makes the first record fail (here: the answer's NUL byte kept), the attempt
    is still logged, as failed, and the claim released."""
    monkeypatch.setattr(delivery_module, "clean_text", lambda text, limit: text[:limit])
    url, _, server = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\na\x00b")
    try:
        delivery = one_delivery(url)
        sent = webhooks.send_delivery(delivery_id=delivery.pk)
        assert sent is not None and sent.status == DeliveryStatus.RETRYING
        (attempt,) = WebhookAttempt.objects.filter(delivery=delivery)
        assert (attempt.succeeded, attempt.status_code) == (False, 200)
        assert "could not be recorded" in attempt.error
        delivery.refresh_from_db()
        assert delivery.locked_until is None and delivery.attempts == 1
    finally:
        server.close()


@pytest.mark.django_db
def test_an_exception_before_the_request_is_a_failed_attempt(receiver, monkeypatch):
    def broken(event):
        raise ValueError("cannot serialize")

    monkeypatch.setattr(delivery_module, "body_of", broken)
    delivery = one_delivery(receiver.url)
    sent = webhooks.send_delivery(delivery_id=delivery.pk)
    assert sent is not None and sent.status == DeliveryStatus.RETRYING
    assert sent.locked_until is None and "cannot serialize" in sent.last_error
    assert not receiver.received


@pytest.mark.django_db
def test_a_dripping_answer_is_cut_off_at_the_total_deadline():
    """requests' timeouts are per read: one byte every 0.1 s (about 4 s in all) never trips
    a 1 s read timeout. The attempt is cut off at WEBHOOK_TOTAL_TIMEOUT (2 s)."""
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    url, hits, server = raw_server(reply, drip=0.1)
    try:
        delivery = one_delivery(url)
        started = time.monotonic()
        sent = webhooks.send_delivery(delivery_id=delivery.pk)
        took = time.monotonic() - started
        assert sent is not None and sent.status == DeliveryStatus.RETRYING
        assert sent.last_error.startswith("timeout: no complete answer within 2 s")
        assert took < 3, took
        assert len(hits) == 1
    finally:
        server.close()


def test_the_lease_outlasts_the_deadline_and_the_tasks_time_limits(settings):
    total = settings.WEBHOOK_TOTAL_TIMEOUT
    assert total >= settings.WEBHOOK_READ_TIMEOUT
    soft, hard = tasks.send_webhook.soft_time_limit, tasks.send_webhook.time_limit
    assert soft is not None and hard is not None
    assert total < soft < hard < delivery_module._lease().total_seconds()


@pytest.mark.django_db
def test_a_worker_whose_lease_ran_out_records_nothing_and_does_not_crash(receiver, monkeypatch):
    """Worker A's attempt outlives its lease; worker B takes the delivery over and records
    its attempt; A then records nothing (no IntegrityError on the attempt's number)."""
    delivery = one_delivery(receiver.url)
    t0 = timezone.now()
    real_post = delivery_module._post
    after_lease = t0 + delivery_module._lease() + timedelta(seconds=1)
    calls: list[WebhookDelivery | None] = []
    posts: list[str] = []

    def post(url, body, headers):
        posts.append(url)
        outcome = real_post(url, body, headers)
        if len(posts) == 1:  # A's request is done; meanwhile B makes a whole attempt
            calls.append(webhooks.send_delivery(delivery_id=delivery.pk, now=after_lease))
        return outcome

    monkeypatch.setattr(delivery_module, "_post", post)
    webhooks.send_delivery(delivery_id=delivery.pk, now=t0)  # A

    (taken_over,) = calls
    assert taken_over is not None and taken_over.status == DeliveryStatus.SUCCEEDED
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and delivery.locked_until is None
    assert WebhookAttempt.objects.filter(delivery=delivery).count() == 1
    assert len(receiver.received) == 2  # both sent (at least once); one logged


@pytest.mark.django_db
def test_a_resend_asked_for_during_an_attempt_is_made_after_it(receiver, monkeypatch):
    receiver.script(500)
    delivery = one_delivery(receiver.url)
    queued: list[int] = []
    monkeypatch.setattr(delivery_module, "queue_sends", lambda ids, **kw: queued.extend(ids))
    real_post = delivery_module._post

    def post(url, body, headers):
        outcome = real_post(url, body, headers)
        if len(receiver.received) == 1:
            webhooks.resend_delivery(delivery_id=delivery.pk)  # "Resend now" meanwhile
        return outcome

    monkeypatch.setattr(delivery_module, "_post", post)
    webhooks.send_delivery(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING and delivery.manual_resend
    assert delivery.next_attempt_at is not None and delivery.next_attempt_at <= timezone.now()
    second = webhooks.send_delivery(delivery_id=delivery.pk)
    assert second is not None and second.status == DeliveryStatus.SUCCEEDED
    assert list(
        WebhookAttempt.objects.filter(delivery=delivery)
        .order_by("number")
        .values_list("number", "manual", "succeeded")
    ) == [(1, False, False), (2, True, True)]


@pytest.mark.django_db
def test_the_sweep_does_not_queue_a_queued_delivery_again_until_its_task_may_be_lost(
    receiver, monkeypatch
):
    queued: list[list[int]] = []
    monkeypatch.setattr(delivery_module, "queue_sends", lambda ids, **kw: queued.append(ids))
    delivery = one_delivery(receiver.url)  # the fan-out queued it
    WebhookDelivery.objects.filter(pk=delivery.pk).update(queued_at=None)  # lost at once
    now = timezone.now()

    for minute in range(3):
        webhooks.sweep(now=now + timedelta(minutes=minute))
    assert queued[-3:] == [[delivery.pk], [], []]

    later = now + delivery_module.REQUEUE_AFTER + timedelta(seconds=1)
    assert webhooks.sweep(now=later).queued == 1  # the task was lost: queued again


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:10.0.0.1",  # IPv4-mapped
        "::ffff:127.0.0.1",
        "::10.0.0.1",  # IPv4-compatible
        "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
        "2002:0a00:0001::1",  # 6to4 of 10.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254 (the cloud metadata service)
        "64:ff9b::10.0.0.1",  # NAT64
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "10.1.2.3",
        "::1",
    ],
)
def test_an_address_embedding_a_private_ipv4_is_private(address):
    assert endpoints_module._private(address)


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "64:ff9b::5db8:d822"]
)
def test_a_public_address_is_not_private(address):
    assert not endpoints_module._private(address)


@pytest.mark.parametrize("insecure", [True, False])
@pytest.mark.parametrize(
    "url",
    [
        "https://exa mple.com/",
        "https://exa\tmple.com/",
        "https://-bad.example.com/",
        "https://a..example.com/",
        "https://[nothost]/",
        "https://" + "a" * 64 + ".example.com/",
    ],
)
def test_a_url_whose_host_is_not_a_host_name_is_refused(settings, url, insecure):
    settings.WEBHOOK_ALLOW_INSECURE_URLS = insecure
    with pytest.raises(webhooks.WebhookURLRefused):
        webhooks.check_url(url, resolve=False)


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/x", "https://[2606:2800:220:1::1]:8443/x", "https://bücher.de/"],
)
def test_valid_hosts_are_accepted(url):
    assert webhooks.check_url(url, resolve=False) == url


@pytest.mark.django_db(transaction=True)
def test_two_workers_across_an_outlived_lease_log_one_attempt_and_neither_crashes(receiver):
    """Real threads, each with its own connection: worker A's request hangs (the receiver
    answers after 1.5 s); worker B, after A's lease (its clock past it), takes the delivery
    and records its attempt; A's record then finds the claim taken over and records
    nothing."""
    receiver.script((200, 1.5), 200)
    delivery = one_delivery(receiver.url)
    t0 = timezone.now()
    after_lease = t0 + delivery_module._lease() + timedelta(seconds=1)

    def worker(i: int):
        if i == 0:
            return webhooks.send_delivery(delivery_id=delivery.pk, now=t0)
        receiver.wait_for(1, timeout=10)  # A's request is in flight
        return webhooks.send_delivery(delivery_id=delivery.pk, now=after_lease)

    results = run_concurrently(worker, threads=2)

    assert not [r for r in results if isinstance(r, BaseException)], results
    assert len(receiver.received) == 2
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.locked_until) == (
        DeliveryStatus.SUCCEEDED,
        1,
        None,
    )
    (attempt,) = WebhookAttempt.objects.filter(delivery=delivery)
    assert attempt.number == 1 and attempt.succeeded


@pytest.mark.django_db
def test_an_endpoint_deleted_during_an_attempt_ends_it_quietly(receiver, monkeypatch):
    delivery = one_delivery(receiver.url)
    real_post = delivery_module._post

    def post(url, body, headers):
        outcome = real_post(url, body, headers)
        webhooks.delete_endpoint(endpoint_id=delivery.endpoint_id)
        return outcome

    monkeypatch.setattr(delivery_module, "_post", post)
    assert webhooks.send_delivery(delivery_id=delivery.pk) is None
    assert not WebhookDelivery.objects.filter(pk=delivery.pk).exists()
