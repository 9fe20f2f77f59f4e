"""Asynchronous acceptance: events stored and deduplicated at once, rated a moment later.

A product backend that prefers throughput to a per-event answer sends ``Prefer:
respond-async`` (or uses an API key set to ``ingest_async``). Then:

    accept_events(events) → per event: pending (stored), duplicate, or rejected

stores the events in ``IncomingEvent`` with one statement — the customer looked up, an
event already rated under the same key answered ``duplicate``, the unique (customer,
idempotency key) constraint deciding between racing retries — and the API answers ``202``.
What can be refused without the database (a timestamp in the future, an unreadable usage
object, a model the catalog does not price) is refused at once, as it would be
synchronously. Nothing is charged yet.

``rate_until_empty`` (the Celery task ``metering.tasks.rate_incoming_events``) rates the
pending rows in arrival order, ``RATE_BATCH`` at a time, through the same
``rating.ingest_events`` as the synchronous routes. Each rating part removes the rows it
rated in its own transaction (``after_part``), so an event is either still pending or
rated, never both or neither, whatever crashes when; the event keeps the moment it was
received. What rating refuses (a prepaid wallet run dry, no subscription, an unknown event
name) stays as a ``rejected`` row with its error code and message —
``GET /events?status=rejected`` — and the same key sent again is taken up again.

Scheduling: an acceptance queues the task after its commit unless one is already queued
(a Redis key with a short expiry says so), so a thousand acceptances a second queue a
handful of tasks; a process that found the key set asks Redis again only a quarter of a
second later (``schedule_rating``), so they ask Redis a few times a second, not a thousand.
One rater runs at a time (a PostgreSQL advisory lock): two would only queue on the same
customers' rating locks. A rater that finds the lock taken leaves (after one more try a
quarter of a second later); the holder looks again after releasing it, so no event waits
for the beat sweep (``metering-rate-incoming-events``, every 10 s), which is only there for
a broker that was down or a task that was lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
import redis
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from billing.errors import BillingError, CustomerNotFound
from metering import errors, rating
from metering.rating import EventIn, Outcome

log = logging.getLogger(__name__)

RATE_BATCH = 1000  # pending events rated per pass (one ingest_events call)
# The one rater's session advisory lock, in the two-integer key space (the single-bigint one
# is the customers' rating locks'): "mete", 1.
RATER_LOCK = (0x6D657465, 1)
SCHEDULED_KEY = "metering:incoming:scheduled"
SCHEDULED_TTL_MS = 2000  # a queued task lost before it ran is replaced after this
# After finding the key set, a process queues nothing for this long (schedule_rating); each
# rater looks at the inbox once more at least this long after clearing the key.
SCHEDULED_SEEN_SECONDS = 0.25
GATHER_SECONDS = 0.5  # between passes that found less than a full batch
RATER_MAX_SECONDS = 50  # then a fresh task takes over (well inside the visibility timeout)


def exact_json(value: Any) -> str:
    """JSON of a parsed request value (objects, arrays, strings, numbers, booleans, null)
    with its decimals as numbers, digit for digit (the API's parser reads fractional
    numbers as Decimal; ``json.dumps`` cannot write them, and writing them as strings would
    make a number meter refuse them when rated). msgspec writes it in C (a tenth of the
    Python walk's time); what it cannot write — a non-finite Decimal, a value of a type no
    request holds — goes the Python way."""
    try:
        return _EXACT_JSON.encode(value).decode()
    except (TypeError, ValueError, msgspec.EncodeError):
        return _exact_json(value)


_EXACT_JSON = msgspec.json.Encoder(decimal_format="number")


def _exact_json(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_exact_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_exact_json(v) for v in value) + "]"
    if isinstance(value, Decimal) and value.is_finite():
        return str(value)  # e.g. 1.5, -0, 1E+400: all JSON numbers
    return json.dumps(value, default=str)


def _properties(value: Any) -> dict[str, Any]:
    """Properties read back from jsonb text, fractional numbers as Decimal again."""
    return json.loads(value, parse_float=Decimal) if isinstance(value, str) else value


@dataclass
class Acceptance:
    status: str  # "pending", "duplicate" or "rejected"
    error: BillingError | None = None


_ACCEPT = """
WITH r AS (
    SELECT * FROM {rows}
), c AS (
    SELECT r.*, cu.id AS cid FROM r LEFT JOIN billing_customer cu ON cu.external_id = r.ext
), ins AS (
    INSERT INTO metering_incomingevent AS i
           (customer_id, idempotency_key, event_name, timestamp, properties, project,
            received_at, status, error_code, error_message, error_param)
    SELECT c.cid, c.k, c.n, c.ts, c.props::jsonb, c.proj, now(), 'pending', '', '', ''
      FROM c
     WHERE c.cid IS NOT NULL
       AND NOT EXISTS (SELECT FROM metering_event e
                        WHERE e.customer_id = c.cid AND e.idempotency_key = c.k)
     -- one order for every request: two batches holding the same keys in other orders
     -- would otherwise wait for each other's rows (a deadlock)
     ORDER BY c.cid, c.k
    ON CONFLICT (customer_id, idempotency_key) DO UPDATE
       SET event_name = EXCLUDED.event_name, timestamp = EXCLUDED.timestamp,
           properties = EXCLUDED.properties, project = EXCLUDED.project,
           received_at = now(), status = 'pending',
           error_code = '', error_message = '', error_param = '', rated_at = NULL
     WHERE i.status = 'rejected'
    RETURNING i.customer_id, i.idempotency_key
)
SELECT c.ord, c.cid, ins.customer_id IS NOT NULL
  FROM c LEFT JOIN ins ON ins.customer_id = c.cid AND ins.idempotency_key = c.k
"""
# The rows as one array per column; a single event's as scalar parameters. Not only cheaper
# to send (an array parameter costs psycopg about 5 µs, seven of them): PostgreSQL
# estimates unnest() of an array by its length, so the arrays' prepared statement had a
# custom plan made for every execution (0.35 ms of planning an event, pg_stat_statements),
# while the scalars' one row is known without the values: one generic plan (index lookups
# of the customer and of the events' key) serves every request once it is prepared.
_ACCEPT_ARRAYS = _ACCEPT.format(
    rows="unnest(%b::int[], %b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::text[], "
    "%b::text[]) AS r(ord, ext, k, n, ts, props, proj)"
)
_ACCEPT_ONE = _ACCEPT.format(
    rows="(SELECT %b::int, %b::text, %b::text, %b::text, %b::timestamptz, %b::text, %b::text) "
    "AS r(ord, ext, k, n, ts, props, proj)"
)


def accept_events(events: Sequence[EventIn], *, now: datetime | None = None) -> list[Acceptance]:
    """Store ``events`` for rating, one statement for all; one Acceptance per event, in
    order. A rejected row of an earlier attempt under the same key is taken up again (a
    refused event changed nothing, as in the synchronous routes)."""
    now = now or timezone.now()
    results: list[Acceptance | None] = [None] * len(events)
    rows: list[tuple[int, str, str, str, datetime, str, str]] = []
    first: dict[tuple[str, str], int] = {}
    repeats: list[tuple[int, int]] = []  # (index, index of the first with its key)
    for index, event in enumerate(events):
        try:
            rating.check_event(event, now=now)
        except BillingError as error:
            results[index] = Acceptance("rejected", error)
            continue
        key = (event.customer, event.idempotency_key)
        if key in first:  # the same key twice in one batch: the first one counts
            repeats.append((index, first[key]))
            continue
        first[key] = index
        rows.append(
            (
                index,
                event.customer,
                event.idempotency_key,
                event.event_name,
                event.timestamp,
                exact_json(event.properties),
                event.project or "",
            )
        )
    if rows:
        for index, customer_id, stored in _store(rows):
            if customer_id is None:
                results[index] = Acceptance(
                    "rejected",
                    CustomerNotFound(
                        f"no customer with external_id {events[index].customer!r}",
                        param="customer",
                    ),
                )
            else:
                results[index] = Acceptance("pending" if stored else "duplicate")
        if any(r is not None and r.status == "pending" for r in results):
            transaction.on_commit(schedule_rating)
    for index, original in repeats:  # refused like its first, or a duplicate of it
        refused = results[original]
        results[index] = (
            refused
            if refused is not None and refused.status == "rejected"
            else Acceptance("duplicate")
        )
    return results  # type: ignore[return-value]


def _store(rows: list[tuple[int, str, str, str, datetime, str, str]]) -> list[tuple]:
    if len(rows) == 1:
        return rating.execute_bound(_ACCEPT_ONE, list(rows[0]))
    return rating.execute_bound(_ACCEPT_ARRAYS, [list(c) for c in zip(*rows, strict=True)])


# --- rating what was accepted ---------------------------------------------------------------


def rate_pending(*, limit: int = RATE_BATCH, now: datetime | None = None) -> int:
    """Rate the oldest ``limit`` pending events; returns how many were taken up. The caller
    holds the rater's lock (``rate_until_empty``): rows are read without locking them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.id, cu.external_id, i.idempotency_key, i.event_name, i.timestamp, "
            "i.properties::text, i.received_at, i.project FROM metering_incomingevent i "
            "JOIN billing_customer cu ON cu.id = i.customer_id "
            "WHERE i.status = 'pending' ORDER BY i.id LIMIT %s",
            [limit],
        )
        rows = cursor.fetchall()
    if not rows:
        return 0
    ids = [row[0] for row in rows]
    events = _events(rows)
    try:
        _rate_rows(ids, events, now)
    except OperationalError:
        raise  # the database went away, a deadlock, a timeout: the next pass tries again
    except Exception:
        # One event that rating cannot handle must not hold up the others (every pass would
        # fail on it): rate them one at a time; the parts that committed come back as
        # duplicates and cost nothing.
        log.exception("rating %s incoming events failed; rating them one by one", len(ids))
        for row_id, event in zip(ids, events, strict=True):
            try:
                _rate_rows([row_id], [event], now)
            except OperationalError:
                raise
            except Exception as error:
                log.exception("incoming event %s could not be rated", row_id)
                failed = errors.RatingFailed(
                    f"this event could not be rated ({type(error).__name__}); it was not "
                    "charged. Send it again once the cause is fixed.",
                    param=None,
                )
                _record([(row_id, Outcome("rejected", error=failed))])
    return len(rows)


def rate_pending_of(*, customer_id: int, before: datetime, now: datetime | None = None) -> int:
    """Rate a customer's pending events stamped before ``before`` now, in the caller's
    transaction: finalization does, under the customer's rating lock, so that no event
    acknowledged for a period is refused as ``period_closed`` after it. Returns how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.id, cu.external_id, i.idempotency_key, i.event_name, i.timestamp, "
            "i.properties::text, i.received_at, i.project FROM metering_incomingevent i "
            "JOIN billing_customer cu ON cu.id = i.customer_id "
            "WHERE i.customer_id = %s AND i.status = 'pending' AND i.timestamp < %s "
            "ORDER BY i.id",
            [customer_id, before],
        )
        rows = cursor.fetchall()
    if rows:
        _rate_rows([row[0] for row in rows], _events(rows), now)
    return len(rows)


def _events(rows: list[tuple]) -> list[EventIn]:
    return [
        EventIn(
            idempotency_key=key,
            customer=external_id,
            event_name=name,
            timestamp=timestamp,
            properties=_properties(properties),
            received_at=received_at,
            project=project or None,
        )
        for _, external_id, key, name, timestamp, properties, received_at, project in rows
    ]


def _rate_rows(ids: list[int], events: list[EventIn], now: datetime | None) -> None:
    recorded: set[int] = set()

    def record(part: list[tuple[int, Outcome]]) -> None:
        _record([(ids[index], outcome) for index, outcome in part])
        recorded.update(index for index, _ in part)

    outcomes = rating.ingest_events(events, now=now, after_part=record)
    # Refused before any part (an unknown event name or customer): nothing was written for
    # them, so recording it on its own is safe; a crash before it only rates them again.
    _record([(ids[i], outcome) for i, outcome in enumerate(outcomes) if i not in recorded])


def _record(outcomes: list[tuple[int, Outcome]]) -> None:
    """Rated rows leave the inbox (the event now says what happened); refused ones stay,
    ``rejected``, with their error."""
    done = [row_id for row_id, outcome in outcomes if outcome.status != "rejected"]
    refused = [
        (row_id, outcome.error) for row_id, outcome in outcomes if outcome.status == "rejected"
    ]
    if done:
        rating.execute_bound(
            "DELETE FROM metering_incomingevent WHERE id = ANY(%b::bigint[])", [done]
        )
    if refused:
        rating.execute_bound(
            "UPDATE metering_incomingevent i SET status = 'rejected', error_code = r.code, "
            "error_message = r.message, error_param = r.param, rated_at = now() "
            "FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[]) "
            "AS r(id, code, message, param) WHERE i.id = r.id",
            [
                [row_id for row_id, _ in refused],
                [getattr(error, "code", "rejected") for _, error in refused],
                [str(getattr(error, "message", error)) for _, error in refused],
                [getattr(error, "param", None) or "" for _, error in refused],
            ],
        )


def pending_exists() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT FROM metering_incomingevent WHERE status = 'pending')"
        )
        return cursor.fetchone()[0]


def rate_until_empty(*, max_seconds: int = RATER_MAX_SECONDS) -> int:
    """Rate pending events until there are none (the task's body); returns how many were
    taken up. Another rater running: leave (it looks again when it is done).

    Whoever clears the scheduled key looks at the inbox once more at least
    ``SCHEDULED_SEEN_SECONDS`` after clearing it (``schedule_rating`` says why): this rater
    before it leaves; one that found the lock taken takes it once more after that time,
    and leaves if it is still taken — its holder's last look is still to come."""
    deadline = time.monotonic_ns() + max_seconds * 1_000_000_000
    total = 0
    while True:
        cleared = time.monotonic_ns()
        _clear_scheduled()  # arrivals from now on queue a task of their own
        if not _try_lock():
            _sleep_until(cleared + _seen_ns())
            if not _try_lock():
                return total
        failed = True
        try:
            while time.monotonic_ns() < deadline:
                taken = rate_pending()
                total += taken
                if not taken:
                    break
                if taken < RATE_BATCH:
                    # A stream of single events: let a few more arrive before the next pass.
                    # A pass costs about the same for one event as for fifty (its locks,
                    # reads and posting are per customer and part, not per event), and
                    # the wait is far inside the second an event may take to be rated.
                    time.sleep(GATHER_SECONDS)
            failed = False
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", list(RATER_LOCK))
            if failed:
                # Arrivals meanwhile found the lock taken and left them to us: a task of
                # its own tries again in a second (not at once: the cause may last).
                _retry_soon()
        # An arrival whose task found the lock taken is seen here, and one that saw the key
        # this rater cleared and so queued nothing (schedule_rating).
        _sleep_until(cleared + _seen_ns())
        if not pending_exists():
            return total
        if time.monotonic_ns() >= deadline:
            _queue_rater()  # a fresh task goes on
            return total


def _try_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", list(RATER_LOCK))
        return cursor.fetchone()[0]


def _seen_ns() -> int:
    """SCHEDULED_SEEN_SECONDS in whole nanoseconds: the rater's and the scheduler's clock is
    ``time.monotonic_ns`` (integers)."""
    return round(SCHEDULED_SEEN_SECONDS * 1_000_000_000)


def _sleep_until(moment_ns: int) -> None:
    left_ns = moment_ns - time.monotonic_ns()
    if left_ns > 0:
        time.sleep(left_ns / 1_000_000_000)


# --- scheduling ------------------------------------------------------------------------------

_redis_client: redis.Redis | None = None
# When this process last found the scheduled key set (time.monotonic_ns()); None: not since
# it last cleared the key (or ever).
_scheduled_seen_at: int | None = None


def _redis() -> redis.Redis:
    global _redis_client
    if _redis_client is None:
        _redis_client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5
        )
    return _redis_client


def schedule_rating() -> None:
    """Queue the rater unless a queued one has not started yet. Never raises: the events are
    stored, and the beat sweep rates them if neither Redis nor the broker can be reached.

    A process that found the key set (or set it) asks Redis nothing for the next
    ``SCHEDULED_SEEN_SECONDS``: a stream of acceptances asks it a few times a second per
    process instead of once per event (a Redis round trip was about 0.1 ms of a request's
    CPU, and Redis's own on the same cores). Nothing waits longer for it: an event
    accepted in that window committed after the key was seen set, so either the key was
    still set when the event committed — the queued task, or the rater that clears it,
    finds the event — or a rater cleared it in between; and every rater looks at the
    inbox again at least ``SCHEDULED_SEEN_SECONDS`` after its clearing, so after the
    event's commit (``rate_until_empty``)."""
    global _scheduled_seen_at
    asked = time.monotonic_ns()
    if _scheduled_seen_at is not None and asked - _scheduled_seen_at < _seen_ns():
        return
    if _queue_rater():
        _scheduled_seen_at = asked  # (the key was set at a moment after this one)


def _queue_rater() -> bool:
    """Set the key and queue the task, unless the key is set already; whether the key is
    set now (False: Redis or the broker failed)."""
    from metering import tasks  # the task module imports this one

    try:
        if _redis().set(SCHEDULED_KEY, "1", nx=True, px=SCHEDULED_TTL_MS):
            tasks.rate_incoming_events.delay()
        return True
    except Exception as error:  # noqa: BLE001 — any broker or Redis failure: the sweep rates them
        log.warning("could not queue the rating of incoming events (%s); the sweep will", error)
        return False


def _retry_soon() -> None:
    from metering import tasks

    try:
        tasks.rate_incoming_events.apply_async(countdown=1)
    except Exception as error:  # noqa: BLE001 — the sweep is still there
        log.warning("could not queue a retry of the rating of incoming events (%s)", error)


def _clear_scheduled() -> None:
    global _scheduled_seen_at
    _scheduled_seen_at = None  # this process knows the key is gone
    try:
        _redis().delete(SCHEDULED_KEY)
    except (redis.RedisError, OSError):
        pass  # the key expires by itself
