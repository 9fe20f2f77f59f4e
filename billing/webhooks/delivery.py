"""Delivering events to endpoints.

``fan_out`` makes one ``WebhookDelivery`` per enabled endpoint that wants the event (the
unique (endpoint, event) makes a second run create nothing) and queues their sends.
``send_delivery`` claims a due delivery with a conditional UPDATE (a lease,
``locked_until``), so two workers never make the same attempt; POSTs the Standard Webhooks
request outside any transaction; then records the attempt in the log and what comes next:
succeeded (any 2xx), or a retry after ``WEBHOOK_RETRY_SCHEDULE[attempts - 1]`` seconds, or
failed once the schedule is spent. An endpoint whose every attempt has failed for
``WEBHOOK_DISABLE_AFTER`` is disabled. ``sweep`` (beat, every minute) fans out events whose
task was lost and queues the deliveries due.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from requests.adapters import HTTPAdapter
from standardwebhooks import Webhook

from billing.models import (
    DUE_STATUSES,
    DeliveryStatus,
    EndpointStatus,
    OutboundEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from billing.webhooks.endpoints import (
    WebhookDeliveryNotFound,
    WebhookEventNotFound,
    WebhookURLRefused,
    check_url,
    disable_endpoint,
    get_endpoint,
)

log = logging.getLogger(__name__)

RESPONSE_EXCERPT = 2000  # characters of the response body kept in the log
USER_AGENT = "ai-billing-webhooks/1"
# A retry this close is queued with a countdown; a later one waits for the sweep (a long
# countdown in Redis would outlive the broker's visibility timeout and run early).
COUNTDOWN_LIMIT = 600  # seconds
# A delivery queued this recently is not queued again by the sweep (its task is on the
# broker); past it, the task is taken to be lost and the sweep queues it again.
REQUEUE_AFTER = timedelta(minutes=10)


def payload_of(event: OutboundEvent) -> dict[str, Any]:
    """The Standard Webhooks body: ``{"type", "timestamp", "data"}``."""
    return {
        "type": event.type,
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": event.data,
    }


def body_of(event: OutboundEvent) -> str:
    return json.dumps(payload_of(event), separators=(",", ":"), ensure_ascii=False)


def signed_headers(*, secret: str, event: OutboundEvent, body: str, at: datetime) -> dict:
    """The Standard Webhooks headers: ``webhook-id`` (the event's id, the same on every
    attempt so the receiver can deduplicate), ``webhook-timestamp`` and
    ``webhook-signature``."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event.public_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event.public_id, at, body),
    }


# --- fan-out ----------------------------------------------------------------------------


def fan_out(*, event_id: int, now: datetime | None = None) -> list[int]:
    """One delivery per enabled endpoint that wants the event (endpoints created after the
    event are not sent it); returns the ids of the event's deliveries still due, queued
    after commit. Safe to run twice, and concurrently."""
    now = now or timezone.now()
    with transaction.atomic():
        event = OutboundEvent.objects.filter(pk=event_id).first()
        if event is None:
            return []
        endpoints = WebhookEndpoint.objects.filter(
            status=EndpointStatus.ENABLED, created_at__lte=event.created_at
        )
        wanted = [e for e in endpoints if e.wants(event.type)]
        WebhookDelivery.objects.bulk_create(
            [
                WebhookDelivery(endpoint=e, event=event, next_attempt_at=now, queued_at=now)
                for e in wanted
            ],
            ignore_conflicts=True,  # the unique (endpoint, event): made once
        )
        OutboundEvent.objects.filter(pk=event.pk, fanned_out_at__isnull=True).update(
            fanned_out_at=now
        )
        due = list(
            WebhookDelivery.objects.filter(
                event=event, status__in=DUE_STATUSES, next_attempt_at__lte=now
            ).values_list("pk", flat=True)
        )
        transaction.on_commit(lambda: queue_sends(due), robust=True)
    return due


def queue_fan_out(event_id: int) -> None:
    """Queue the fan-out of an event (after its commit: ``billing.outbox.emit``)."""
    from billing.webhooks import tasks

    tasks.fan_out_event.delay(event_id)


def queue_sends(delivery_ids: list[int], *, countdown: int | None = None) -> None:
    from billing.webhooks import tasks

    for delivery_id in delivery_ids:
        tasks.send_webhook.apply_async((delivery_id,), countdown=countdown)


# --- sending ------------------------------------------------------------------------------


def total_timeout() -> int:
    """The wall-clock limit of one attempt's request (connecting, sending, the answer's
    headers and the start of its body): requests' timeouts are per socket operation, so a
    receiver dripping its answer would hold an attempt for ever without it."""
    return int(settings.WEBHOOK_TOTAL_TIMEOUT)


def _lease() -> timedelta:
    """How long a claim lasts: well above the attempt's total deadline and the send task's
    hard time limit (``tasks.SEND_HARD_TIME_LIMIT``), so a worker still making the attempt
    always holds it. A worker that died mid-attempt leaves the delivery to the next one
    after this."""
    return timedelta(seconds=total_timeout() + 120)


@dataclass
class Claim:
    """What the claim saw of the delivery: its ``locked_until`` (the claim's token), its
    ``attempts`` and ``resends``."""

    locked_until: datetime
    attempts: int
    resends: int
    manual: bool


def _claim(delivery_id: int, now: datetime) -> Claim | None:
    """Take the delivery for one attempt if it is due and nobody holds it: the row locked
    and updated in one short transaction, so of two workers exactly one gets it (the second
    re-reads the row after the first commits, and it no longer matches)."""
    with transaction.atomic():
        row = (
            WebhookDelivery.objects.select_for_update()
            .filter(
                Q(locked_until__isnull=True) | Q(locked_until__lte=now),
                pk=delivery_id,
                status__in=DUE_STATUSES,
                next_attempt_at__lte=now,
            )
            .values("attempts", "resends", "manual_resend")
            .first()
        )
        if row is None:
            return None
        lease = now + _lease()
        WebhookDelivery.objects.filter(pk=delivery_id).update(locked_until=lease)
    return Claim(
        locked_until=lease,
        attempts=row["attempts"],
        resends=row["resends"],
        manual=row["manual_resend"],
    )


@dataclass
class Outcome:
    succeeded: bool
    status_code: int | None = None
    response_body: str = ""
    error: str = ""
    duration_ms: int = 0


def clean_text(text: str, limit: int) -> str:
    """Text PostgreSQL stores: no NUL character (a ``DataError`` in a text column), no lone
    surrogate, at most ``limit`` characters."""
    text = text.replace("\x00", "")
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:limit]


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", errors="replace")


class _Deadline:
    """Shuts the request's sockets down when the attempt's total time is up: a read blocked
    on a receiver that drips its answer then returns at once (an error, taken as a
    timeout)."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.fire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def fire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _session(deadline: _Deadline) -> requests.Session:
    """A session whose connections report their socket to ``deadline``."""

    def watched(base: Any) -> Any:
        class Connection(base):
            def connect(self) -> None:
                super().connect()
                deadline.watch(self.sock)

        return Connection

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            pools: dict[str, Any] = {}
            classes: dict[str, Any] = self.poolmanager.pool_classes_by_scheme
            for scheme, pool in classes.items():
                pools[scheme] = type(
                    pool.__name__, (pool,), {"ConnectionCls": watched(pool.ConnectionCls)}
                )
            self.poolmanager.pool_classes_by_scheme = pools

    session = requests.Session()
    adapter = Adapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _post(url: str, body: str, headers: dict) -> Outcome:
    """One request, within ``total_timeout()`` in all; never raises."""
    started = time.monotonic()
    deadline = _Deadline(total_timeout())
    try:
        if not settings.WEBHOOK_ALLOW_INSECURE_URLS:
            check_url(url)  # again: the name may resolve elsewhere since it was checked
        with deadline, _session(deadline) as session:
            with session.post(
                url,
                data=body.encode(),
                headers=headers,
                timeout=(settings.WEBHOOK_CONNECT_TIMEOUT, settings.WEBHOOK_READ_TIMEOUT),
                allow_redirects=False,
                stream=True,
            ) as response:
                code = response.status_code
                # at most this many bytes (decompressed), whatever the body's length
                raw = response.raw.read(RESPONSE_EXCERPT * 4, decode_content=True) or b""
                excerpt = _decode(raw, response.encoding)
            if deadline.expired:
                raise TimeoutError
        return Outcome(
            succeeded=200 <= code < 300,
            status_code=code,
            response_body=clean_text(excerpt, RESPONSE_EXCERPT),
            error="" if 200 <= code < 300 else f"HTTP {code}",
            duration_ms=int((time.monotonic() - started) * 1000),
        )
    except WebhookURLRefused as error:
        message = error.message
    except Exception as error:  # noqa: BLE001 - every failure is a failed attempt
        if deadline.expired:
            message = f"timeout: no complete answer within {deadline.seconds:g} s"
        elif isinstance(error, requests.Timeout):
            message = f"timeout: {error}"
        else:
            message = f"{type(error).__name__}: {error}"
    return Outcome(
        succeeded=False,
        error=clean_text(message, 1000),
        duration_ms=int((time.monotonic() - started) * 1000),
    )


def retry_delay(attempts: int) -> int | None:
    """Seconds to wait after the ``attempts``-th failed attempt; None once the schedule
    (``WEBHOOK_RETRY_SCHEDULE``) is spent."""
    schedule = settings.WEBHOOK_RETRY_SCHEDULE
    return schedule[attempts - 1] if attempts <= len(schedule) else None


def send_delivery(*, delivery_id: int, now: datetime | None = None) -> WebhookDelivery | None:
    """Make the delivery's next attempt if it is due (``now``: when the schedule is read;
    the signature's timestamp is always the real time). None when there was nothing to do:
    not due, already sent, or another worker holds it. Whatever goes wrong once the
    delivery is claimed becomes a failed attempt in the log (or, failing that, the claim is
    released), so the retries follow the schedule."""
    now = now or timezone.now()
    claim = _claim(delivery_id, now)
    if claim is None:
        return None
    delivery = (
        WebhookDelivery.objects.select_related("endpoint", "event").filter(pk=delivery_id).first()
    )
    if delivery is None:  # deleted with its endpoint since the claim
        return None
    started_at = now
    sent = False
    try:
        endpoint, event = delivery.endpoint, delivery.event
        if endpoint.status != EndpointStatus.ENABLED:
            outcome = Outcome(succeeded=False, error="the endpoint is disabled")
        else:
            body = body_of(event)
            started_at = timezone.now()
            headers = signed_headers(secret=endpoint.secret, event=event, body=body, at=started_at)
            sent = True
            outcome = _post(endpoint.url, body, headers)  # no transaction is open here
    except Exception as error:  # noqa: BLE001
        log.exception("webhook delivery %s: the attempt failed", delivery_id)
        sent = True  # an attempt, failed: logged, and retried on the schedule
        outcome = Outcome(
            succeeded=False, error=clean_text(f"{type(error).__name__}: {error}", 1000)
        )
    try:
        return _record(delivery, claim, outcome, started_at=started_at, now=now, sent=sent)
    except Exception:
        log.exception("webhook delivery %s: recording the attempt failed", delivery_id)
    try:  # again, without the answer's text
        bare = Outcome(
            succeeded=False,
            status_code=outcome.status_code,
            error="the attempt could not be recorded with its response (see the logs)",
            duration_ms=outcome.duration_ms,
        )
        return _record(delivery, claim, bare, started_at=started_at, now=now, sent=sent)
    except Exception:
        WebhookDelivery.objects.filter(pk=delivery_id, locked_until=claim.locked_until).update(
            locked_until=None
        )
        raise


@transaction.atomic
def _record(
    delivery: WebhookDelivery,
    claim: Claim,
    outcome: Outcome,
    *,
    started_at: datetime,
    now: datetime,
    sent: bool,
) -> WebhookDelivery | None:
    # no_key: fan-outs inserting deliveries of this endpoint need not wait for it
    endpoint = (
        WebhookEndpoint.objects.select_for_update(no_key=True)
        .filter(pk=delivery.endpoint_id)
        .first()
    )
    current = WebhookDelivery.objects.select_for_update().filter(pk=delivery.pk).first()
    if endpoint is None or current is None:  # deleted with its endpoint meanwhile
        return None
    if current.locked_until != claim.locked_until or current.attempts != claim.attempts:
        # The lease ran out and another worker took the delivery: its attempt is the one
        # recorded; this one records nothing.
        log.warning("webhook delivery %s: stale attempt not recorded", delivery.pk)
        return current
    number = claim.attempts + 1
    if sent:
        WebhookAttempt.objects.create(
            delivery=current,
            number=number,
            manual=claim.manual,
            url=endpoint.url,
            started_at=started_at,
            duration_ms=outcome.duration_ms,
            succeeded=outcome.succeeded,
            status_code=outcome.status_code,
            response_body=outcome.response_body,
            error=outcome.error,
        )
    fields: dict[str, Any] = {
        "attempts": number if sent else current.attempts,
        "locked_until": None,
        "manual_resend": False,
        "queued_at": None,
        "last_attempt_at": started_at if sent else current.last_attempt_at,
        "last_status_code": outcome.status_code,
        "last_response_body": outcome.response_body,
        "last_error": outcome.error,
        "updated_at": timezone.now(),
    }
    if outcome.succeeded:
        fields |= {"status": DeliveryStatus.SUCCEEDED, "succeeded_at": now, "next_attempt_at": None}
    else:
        delay = retry_delay(number) if sent else None
        if delay is None:
            fields |= {"status": DeliveryStatus.FAILED, "next_attempt_at": None}
        else:
            fields |= {
                "status": DeliveryStatus.RETRYING,
                "next_attempt_at": now + timedelta(seconds=delay),
            }
    resent = current.resends != claim.resends
    if resent:  # asked for while this attempt was made: one more, now, as asked
        fields |= {
            "status": DeliveryStatus.PENDING,
            "next_attempt_at": min(current.next_attempt_at or now, now),
            "manual_resend": True,
        }
    wait: int | None = None
    if fields["status"] in DUE_STATUSES:
        wait = max(math.ceil((fields["next_attempt_at"] - now).total_seconds()), 0)
        if wait <= COUNTDOWN_LIMIT:
            fields["queued_at"] = fields["next_attempt_at"]
        else:
            wait = None
    WebhookDelivery.objects.filter(pk=current.pk).update(**fields)
    for name, value in fields.items():
        setattr(current, name, value)
    if sent:
        _count_on_endpoint(endpoint, succeeded=outcome.succeeded, now=now)
    if wait is not None:
        transaction.on_commit(
            lambda: queue_sends([current.pk], countdown=wait or None), robust=True
        )
    return current


def _count_on_endpoint(endpoint: WebhookEndpoint, *, succeeded: bool, now: datetime) -> None:
    """The endpoint's run of failures (its row is locked): cleared by a success; when every
    attempt has failed for ``WEBHOOK_DISABLE_AFTER``, the endpoint is disabled."""
    if succeeded:
        if endpoint.consecutive_failures or endpoint.failing_since:
            WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
                consecutive_failures=0, failing_since=None
            )
        return
    failing_since = endpoint.failing_since or now
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        consecutive_failures=F("consecutive_failures") + 1, failing_since=failing_since
    )
    if endpoint.status == EndpointStatus.ENABLED and (
        now - failing_since >= settings.WEBHOOK_DISABLE_AFTER
    ):
        disable_endpoint(
            endpoint_id=endpoint.pk,
            reason=(
                f"every attempt failed since {failing_since.isoformat()} "
                f"({endpoint.consecutive_failures + 1} attempts)"
            ),
            now=now,
        )
        log.warning("webhook endpoint %s disabled: failing since %s", endpoint.pk, failing_since)


# --- resending -----------------------------------------------------------------------------


def resend_delivery(*, delivery_id: int, now: datetime | None = None) -> WebhookDelivery:
    """Queue one more attempt of this delivery, now, whatever its status (a failed one, or a
    succeeded one the receiver lost). A failure afterwards follows the retry schedule from
    where the delivery's attempts stand (a spent schedule: failed again). Asked for while an
    attempt is being made, it is made after that one (``resends`` counts the requests)."""
    now = now or timezone.now()
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None:
            raise WebhookDeliveryNotFound(f"webhook delivery {delivery_id} does not exist")
        delivery.status = DeliveryStatus.PENDING
        delivery.next_attempt_at = now
        delivery.manual_resend = True
        delivery.resends += 1
        delivery.queued_at = now
        delivery.save(
            update_fields=[
                "status",
                "next_attempt_at",
                "manual_resend",
                "resends",
                "queued_at",
                "updated_at",
            ]
        )
        transaction.on_commit(lambda: queue_sends([delivery_id]), robust=True)
    return delivery


def resend_event(
    *, event_id: int, endpoint_id: int, now: datetime | None = None
) -> WebhookDelivery:
    """Send an event to an endpoint again — or for the first time, if the endpoint was not
    sent it (created after the event, or not wanting its type then)."""
    endpoint = get_endpoint(endpoint_id)
    if not OutboundEvent.objects.filter(pk=event_id).exists():
        raise WebhookEventNotFound(f"event {event_id} does not exist", param="event")
    with transaction.atomic():
        delivery, _ = WebhookDelivery.objects.get_or_create(
            endpoint=endpoint,
            event_id=event_id,
            defaults={"next_attempt_at": now or timezone.now()},
        )
    return resend_delivery(delivery_id=delivery.pk, now=now)


# --- the sweep -------------------------------------------------------------------------------


@dataclass
class SweepResult:
    fanned_out: int
    queued: int


def sweep(*, now: datetime | None = None, limit: int = 1000) -> SweepResult:
    """Beat, every minute: fan out events whose fan-out never ran (the broker was down at
    their commit, or the task was lost), then queue the deliveries that are due and free —
    but not one queued less than ``REQUEUE_AFTER`` ago (its task is on the broker, maybe
    behind others): each is marked queued, so a lost task is queued again later, not every
    minute."""
    now = now or timezone.now()
    events = list(
        OutboundEvent.objects.filter(fanned_out_at__isnull=True)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    for event_id in events:
        fan_out(event_id=event_id, now=now)
    with transaction.atomic():
        due = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(
                Q(locked_until__isnull=True) | Q(locked_until__lte=now),
                Q(queued_at__isnull=True) | Q(queued_at__lte=now - REQUEUE_AFTER),
                status__in=DUE_STATUSES,
                next_attempt_at__lte=now,
            )
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        WebhookDelivery.objects.filter(pk__in=due).update(queued_at=now)
    queue_sends(due)  # (the broker down: queued again after REQUEUE_AFTER)
    return SweepResult(fanned_out=len(events), queued=len(due))


def send_due(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Make every due attempt here, one after the other (``manage.py`` and tests; the
    workers use ``sweep``). Returns how many attempts were made."""
    now = now or timezone.now()
    for event_id in OutboundEvent.objects.filter(fanned_out_at__isnull=True).values_list(
        "pk", flat=True
    )[:limit]:
        fan_out(event_id=event_id, now=now)
    made = 0
    for delivery_id in (
        WebhookDelivery.objects.filter(status__in=DUE_STATUSES, next_attempt_at__lte=now)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    ):
        made += send_delivery(delivery_id=delivery_id, now=now) is not None
    return made
