"""Asynchronous acceptance (issue 14, Build 5): with ``Prefer: respond-async`` (or an API key
set to it) POST /events and /events/batch answer 202 once the events are stored and
deduplicated; ``metering.inbox`` rates them afterwards through the same rating; what
rating refuses stays on the incoming event with its error (GET /events?status=rejected);
nothing is charged twice, nothing accepted is lost."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from billing import services
from billing.models import BillingMode, Customer
from ledger import selectors as ledger_selectors
from metering import inbox
from metering.models import Event, IncomingEvent, IncomingStatus
from metering.rating import ingest as rating_ingest
from tests.billing import conftest as billing_fixtures
from tests.billing.conftest import ChargeSpec, assert_error, iso, make_client
from tests.factories import SubscriptionFactory
from tests.test_celery import start_worker, stop_worker
from tests.threads import run_concurrently

api = billing_fixtures.api
api_key = billing_fixtures.api_key
make_key = billing_fixtures.make_key
make_customer = billing_fixtures.make_customer
make_meter = billing_fixtures.make_meter
make_plan = billing_fixtures.make_plan

PRICE = Decimal("0.01")
ASYNC = {"HTTP_PREFER": "respond-async"}
EVENTS = "/api/v1/events"
BATCH = "/api/v1/events/batch"


@pytest.fixture
def plan(make_meter, make_plan):
    make_meter("async-calls", event_name="api.call", aggregation="count", property="")
    return make_plan("async-per-call", charges=[ChargeSpec(meter="async-calls", unit_price=PRICE)])


@pytest.fixture
def acme(make_customer, plan) -> Customer:
    customer = make_customer("acme", billing_mode=BillingMode.POSTPAID)
    SubscriptionFactory(customer=customer, plan=plan)
    return customer


def event(key: str, customer: str = "acme", **extra) -> dict:
    return {"idempotency_key": key, "customer": customer, "event_name": "api.call", **extra}


def charged(customer: Customer) -> Decimal:
    wallet = services.wallet_for(customer=customer)
    return -ledger_selectors.get_balance(account=wallet.account).posted


def rate() -> int:
    return inbox.rate_until_empty()


@pytest.mark.django_db(transaction=True)
def test_one_event_is_stored_at_once_and_charged_when_rated(api, acme):
    response = api.post(EVENTS, event("a-1"), format="json", **ASYNC)
    assert response.status_code == 202, response.json()
    assert response.json() == {"idempotency_key": "a-1", "customer": "acme", "status": "pending"}
    assert response.headers["Preference-Applied"] == "respond-async"
    assert not Event.objects.exists()
    assert charged(acme) == 0
    incoming = IncomingEvent.objects.get()
    listed = api.get(EVENTS, {"customer": "acme", "status": "pending"}).json()["data"]
    assert [(row["idempotency_key"], row["status"], row["error"]) for row in listed] == [
        ("a-1", "pending", None)
    ]

    assert rate() == 1
    stored = Event.objects.get()
    assert charged(acme) == PRICE
    assert stored.received_at == incoming.received_at  # when we received it, not rated it
    assert not IncomingEvent.objects.exists()
    found = api.get(EVENTS, {"customer": "acme", "idempotency_key": "a-1"}).json()["data"]
    assert [(row["id"], row["status"]) for row in found] == [(stored.pk, "accepted")]
    assert rate() == 0  # nothing left; running again changes nothing
    assert charged(acme) == PRICE


@pytest.mark.django_db
def test_a_single_acceptance_is_one_prepared_statement_planned_once(api, acme):
    """The acceptance is the async route's whole cost in PostgreSQL. A single event's is a
    statement of one row bound as scalars, which PostgreSQL plans once (five custom plans
    tried, then the generic one kept). Bound as arrays, the row count was known only from
    the values: with real tables (the bench's) the generic plan, made for unnest's default
    of 100 rows, cost more than a custom one, and every request was planned again (0.35 ms
    of the backend's CPU an event, pg_stat_statements); on a test's empty tables it did
    not, so the parameters' types are what is asserted here."""
    for n in range(20):
        response = api.post(EVENTS, event(f"g-{n}"), format="json", **ASYNC)
        assert response.status_code == 202, response.json()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans, custom_plans, parameter_types::text[] "
            "FROM pg_prepared_statements WHERE statement LIKE %s",
            ["%INSERT INTO metering_incomingevent%"],
        )
        (generic, custom, types), *others = cursor.fetchall()
    assert others == []
    assert not any(t.endswith("[]") for t in types), types
    assert custom <= 5
    assert generic >= 10
    assert IncomingEvent.objects.count() == 20


@pytest.mark.django_db(transaction=True)
def test_a_key_already_stored_or_rated_is_a_duplicate_and_charged_once(api, acme):
    assert api.post(EVENTS, event("d-1"), format="json", **ASYNC).status_code == 202
    again = api.post(EVENTS, event("d-1"), format="json", **ASYNC)
    assert again.status_code == 202
    assert again.json()["status"] == "duplicate"
    rate()
    after = api.post(EVENTS, event("d-1"), format="json", **ASYNC)
    assert (after.status_code, after.json()["status"]) == (202, "duplicate")
    assert not IncomingEvent.objects.exists()
    # Sent synchronously while an asynchronous twin waits: rated once, the twin a duplicate.
    assert api.post(EVENTS, event("d-2"), format="json", **ASYNC).status_code == 202
    assert api.post(EVENTS, event("d-2"), format="json").status_code == 201
    rate()
    assert Event.objects.count() == 2
    assert not IncomingEvent.objects.exists()
    assert charged(acme) == 2 * PRICE


@pytest.mark.django_db(transaction=True)
def test_what_rating_refuses_is_recorded_on_the_event_and_a_resend_is_rated(
    api, make_customer, plan
):
    poor = make_customer("poor", billing_mode=BillingMode.PREPAID)
    services.create_subscription(customer=poor, plan=plan)
    response = api.post(EVENTS, event("p-1", customer="poor"), format="json", **ASYNC)
    assert response.status_code == 202
    rate()
    assert not Event.objects.exists()
    row = IncomingEvent.objects.get()
    assert (row.status, row.error_code) == (IncomingStatus.REJECTED, "insufficient_funds")
    assert row.rated_at is not None
    listed = api.get(EVENTS, {"customer": "poor", "status": "rejected"}).json()["data"]
    assert len(listed) == 1
    assert listed[0]["error"]["code"] == "insufficient_funds"
    assert listed[0]["error"]["message"] == row.error_message
    by_key = api.get(EVENTS, {"customer": "poor", "idempotency_key": "p-1"}).json()["data"]
    assert [r["status"] for r in by_key] == ["rejected"]
    assert api.get(EVENTS, {"customer": "poor"}).json()["data"] == []  # nothing rated

    services.top_up(customer=poor, amount=Decimal("1"), currency="USD", reference="t-1")
    resent = api.post(EVENTS, event("p-1", customer="poor"), format="json", **ASYNC)
    assert (resent.status_code, resent.json()["status"]) == (202, "pending")
    rate()
    assert Event.objects.filter(customer=poor, idempotency_key="p-1").count() == 1
    assert not IncomingEvent.objects.exists()
    assert charged(poor) == PRICE - Decimal("1")


@pytest.mark.django_db(transaction=True)
def test_what_needs_no_database_is_refused_at_once(api, acme):
    future = iso(timezone.now() + timedelta(hours=1))
    assert_error(
        api.post(EVENTS, event("f-1", timestamp=future), format="json", **ASYNC),
        400,
        "timestamp_in_future",
        param="timestamp",
    )
    assert_error(
        api.post(EVENTS, event("f-2", customer="nobody"), format="json", **ASYNC),
        404,
        "customer_not_found",
        param="customer",
    )
    assert_error(
        api.post(EVENTS, {**event("f-3"), "extra": 1}, format="json", **ASYNC),
        400,
        "unknown_parameter",
        param="extra",
    )
    assert not IncomingEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_batch_answers_per_event_and_is_rated_in_one_pass(api, acme, make_customer, plan):
    beta = make_customer("beta", billing_mode=BillingMode.POSTPAID)
    services.create_subscription(customer=beta, plan=plan)
    body = {
        "events": [
            event("b-1"),
            event("b-2", customer="beta"),
            event("b-1"),  # the same key twice: the first counts
            event("b-3", customer="nobody"),
            {"idempotency_key": "b-4"},  # malformed
            event("b-5", timestamp=iso(timezone.now() + timedelta(hours=1))),
            {**event("b-6"), "event_name": "nobody.reads.this"},  # refused by rating, later
        ]
    }
    response = api.post(BATCH, body, format="json", **ASYNC)
    assert response.status_code == 202, response.json()
    payload = response.json()
    assert [(item["index"], item["status"]) for item in payload["data"]] == [
        (0, "pending"),
        (1, "pending"),
        (2, "duplicate"),
        (3, "rejected"),
        (4, "rejected"),
        (5, "rejected"),
        (6, "pending"),
    ]
    assert payload["data"][3]["error"]["code"] == "customer_not_found"
    assert payload["data"][4]["error"]["code"] == "parameter_missing"
    assert payload["data"][5]["error"]["code"] == "timestamp_in_future"
    assert (payload["pending"], payload["duplicates"], payload["rejected"]) == (3, 1, 3)
    assert rate() == 3
    assert sorted(Event.objects.values_list("idempotency_key", flat=True)) == ["b-1", "b-2"]
    assert charged(acme) == charged(beta) == PRICE
    refused = IncomingEvent.objects.get()
    assert (refused.idempotency_key, refused.error_code) == ("b-6", "unknown_event_name")


@pytest.mark.django_db(transaction=True)
def test_an_api_key_set_to_asynchronous_ingestion_needs_no_header(acme):
    _, secret = services.create_api_key(name="async", scopes=["ingest"], ingest_async=True)
    response = make_client(secret).post(EVENTS, event("k-1"), format="json")
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "respond-async"
    rate()
    assert charged(acme) == PRICE


@pytest.mark.django_db(transaction=True)
def test_prefer_is_read_as_rfc_7240_says(api, acme):
    sent = api.post(
        EVENTS, event("r-1"), format="json", HTTP_PREFER="return=minimal, RESPOND-ASYNC"
    )
    assert sent.status_code == 202
    other = api.post(EVENTS, event("r-2"), format="json", HTTP_PREFER="respond-asynchronously")
    assert other.status_code == 201  # not the preference: rated at once


@pytest.mark.django_db(transaction=True)
def test_racing_retries_store_one_row_and_charge_once(make_key, acme):
    _, secret = make_key()

    def send(i: int):
        response = make_client(secret).post(EVENTS, event("race-1"), format="json", **ASYNC)
        return response.status_code

    results = run_concurrently(send, 8)
    assert sorted(results) == [202] * 8, results
    assert IncomingEvent.objects.count() == 1
    run_concurrently(lambda i: rate(), 3)  # three raters at once: one works, two leave
    assert Event.objects.count() == 1
    assert charged(acme) == PRICE


@pytest.mark.django_db(transaction=True)
def test_a_crash_between_parts_keeps_each_event_pending_or_rated(
    api, make_customer, plan, monkeypatch
):
    customers = []
    for n in range(4):
        customer = make_customer(f"part-{n}", billing_mode=BillingMode.POSTPAID)
        services.create_subscription(customer=customer, plan=plan)
        customers.append(customer)
    body = {
        "events": [
            event(f"c-{c.pk}-{i}", customer=c.external_id) for c in customers for i in range(3)
        ]
    }
    assert api.post(BATCH, body, format="json", **ASYNC).status_code == 202
    monkeypatch.setattr(rating_ingest, "RATING_CHUNK_EVENTS", 3)  # one customer per part
    real_rate, parts = rating_ingest._rate, []

    def crash_on_third_part(*args, **kwargs):
        parts.append(1)
        if len(parts) == 3:
            raise OperationalError("server closed the connection unexpectedly")
        return real_rate(*args, **kwargs)

    monkeypatch.setattr(rating_ingest, "_rate", crash_on_third_part)
    with pytest.raises(OperationalError):
        inbox.rate_pending()
    # The two parts that committed left the inbox with their events; the rest is pending.
    assert Event.objects.count() == 6
    assert IncomingEvent.objects.filter(status=IncomingStatus.PENDING).count() == 6
    monkeypatch.setattr(rating_ingest, "_rate", real_rate)
    with connection.cursor() as cursor:  # the crashed rater's lock went with its session
        cursor.execute("SELECT pg_advisory_unlock_all()")
    rate()
    assert Event.objects.count() == 12
    assert not IncomingEvent.objects.exists()
    assert all(charged(c) == 3 * PRICE for c in customers)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_celery_worker_rates_what_was_accepted_without_being_asked(api, acme):
    """The acceptance queues the task itself (no beat here): a real worker on the broker."""
    from billing.project.celery import app

    inbox._clear_scheduled()
    worker = start_worker(app.conf.task_default_queue)
    try:
        body = {"events": [event(f"w-{i}") for i in range(50)]}
        assert api.post(BATCH, body, format="json", **ASYNC).status_code == 202
        deadline = time.monotonic() + 60
        while Event.objects.count() < 50:
            assert time.monotonic() < deadline, "the worker did not rate the events"
            time.sleep(0.2)
    finally:
        stop_worker(worker)
    assert charged(acme) == 50 * PRICE
    assert not IncomingEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_with_redis_or_the_broker_down_events_are_stored_all_the_same(api, acme, monkeypatch):
    """Queueing the rater fails (Redis refuses): the acceptance still answers 202 and the
    event waits, pending, for the beat sweep (README: when Redis is down)."""
    import redis

    class Refusing:
        def set(self, *args, **kwargs):
            raise redis.ConnectionError("Connection refused")

        delete = set

    monkeypatch.setattr(inbox, "_redis", Refusing)
    response = api.post(EVENTS, event("down-1"), format="json", **ASYNC)
    assert response.status_code == 202
    assert IncomingEvent.objects.get().status == IncomingStatus.PENDING
    assert rate() == 1  # the sweep's task, once the broker answers
    assert charged(acme) == PRICE


# --- scheduling: Redis asked a few times a second, not once an event -----------------------


@pytest.mark.django_db(transaction=True)
def test_a_stream_of_acceptances_asks_redis_once_while_the_key_is_known_set(api, acme, monkeypatch):
    """Each acceptance asked Redis whether a task was queued (SET NX): a round trip of
    every request's CPU. A process that found it set asks again only after
    SCHEDULED_SEEN_SECONDS (a minute here, so that the test's pace does not matter)."""
    from metering import tasks

    monkeypatch.setattr(inbox, "SCHEDULED_SEEN_SECONDS", 60)
    inbox._clear_scheduled()
    asked, queued = [], []
    real_redis = inbox._redis()

    class Counting:
        def set(self, *args, **kwargs):
            asked.append(args)
            return real_redis.set(*args, **kwargs)

        def delete(self, *args):
            return real_redis.delete(*args)

    monkeypatch.setattr(inbox, "_redis", Counting)
    monkeypatch.setattr(tasks.rate_incoming_events, "delay", lambda: queued.append(1))
    for n in range(5):
        assert api.post(EVENTS, event(f"s-{n}"), format="json", **ASYNC).status_code == 202
    assert (len(asked), len(queued)) == (1, 1)
    inbox._clear_scheduled()  # a rater started: the next acceptance queues one again
    assert api.post(EVENTS, event("s-5"), format="json", **ASYNC).status_code == 202
    assert (len(asked), len(queued)) == (2, 2)
    assert rate() == 6


def _accept_unscheduled(key: str) -> None:
    """As an acceptance that skipped asking Redis (it had seen the key set) stores it."""
    body = {"idempotency_key": key, "customer": "acme", "event_name": "api.call"}
    from metering.api.ingest import parse_event

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inbox, "schedule_rating", lambda: None)
        assert inbox.accept_events([parse_event(body)])[0].status == "pending"


@pytest.mark.django_db(transaction=True)
def test_a_rater_looks_again_after_the_window_in_which_arrivals_queue_nothing(acme, monkeypatch):
    """The rater clears the key and finds nothing; an event accepted just after, by a
    process that had seen the key set a moment before, queues nothing. The rater's last look
    comes SCHEDULED_SEEN_SECONDS after its clearing, so it still rates the event."""
    import threading

    monkeypatch.setattr(inbox, "SCHEDULED_SEEN_SECONDS", 1.0)
    first_pass = threading.Event()
    real_rate_pending = inbox.rate_pending

    def signalling(**kwargs):
        taken = real_rate_pending(**kwargs)
        first_pass.set()
        return taken

    monkeypatch.setattr(inbox, "rate_pending", signalling)

    def work(i: int):
        if i == 0:
            return rate()
        assert first_pass.wait(10)
        time.sleep(0.3)  # the rater, without the rule, has long left
        _accept_unscheduled("late-1")
        return None

    rated, _ = run_concurrently(work, 2)
    assert rated == 1
    assert charged(acme) == PRICE


@pytest.mark.django_db(transaction=True)
def test_a_rater_that_finds_the_lock_taken_tries_once_more_after_the_window(acme, monkeypatch):
    """A queued task clears the key and finds another rater holding the lock; that holder
    leaves (its last look came before an event whose acceptance queued nothing, having
    seen the key set). The task takes the lock once more after SCHEDULED_SEEN_SECONDS and
    rates the event; it used to leave at once."""
    import threading

    import psycopg

    monkeypatch.setattr(inbox, "SCHEDULED_SEEN_SECONDS", 1.0)
    settings = connection.settings_dict
    holder = psycopg.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        host=settings["HOST"],
        port=settings["PORT"] or 5432,
        autocommit=True,
    )
    holder.execute("SELECT pg_advisory_lock(%s, %s)", list(inbox.RATER_LOCK))
    tried = threading.Event()
    real_try_lock = inbox._try_lock

    def signalling() -> bool:
        locked = real_try_lock()
        tried.set()
        return locked

    monkeypatch.setattr(inbox, "_try_lock", signalling)

    def work(i: int):
        if i == 0:
            return rate()
        assert tried.wait(10)
        _accept_unscheduled("late-2")
        holder.execute("SELECT pg_advisory_unlock(%s, %s)", list(inbox.RATER_LOCK))
        return None

    try:
        rated, _ = run_concurrently(work, 2)
    finally:
        holder.close()
    assert rated == 1
    assert charged(acme) == PRICE
