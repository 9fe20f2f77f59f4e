"""Attacks on asynchronous acceptance (``Prefer: respond-async``, ``metering.inbox``).

Each test here failed against the commit that introduced the feature (5c76abf) because of a
defect in production code; each asserts what the product's rules or API.md promise. They
run against real PostgreSQL, with real threads where a race is the point.

Tried and found sound (no test kept): keys and external_ids with quotes, backslashes,
U+2028 and braces; an external_id renamed between acceptance and rating (the rater joins
the customer by id); the same key resent while the rater's part holds it (200 duplicate,
charged once); status=pending pagination with starting_after; eight racing retries and
three racing raters (test_async_ingest.py)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connections
from django.utils import timezone

from billing import services
from billing.models import BillingMode
from metering import inbox
from metering.models import Event, IncomingEvent, IncomingStatus
from tests.billing.conftest import ChargeSpec, iso, make_client, post_raw
from tests.metering import test_async_ingest as fixtures
from tests.metering.test_async_ingest import ASYNC, BATCH, EVENTS, PRICE, charged, event
from tests.threads import run_concurrently

# the fixtures of test_async_ingest: an authenticated client, acme on a per-call plan
api, api_key, make_key = fixtures.api, fixtures.api_key, fixtures.make_key
make_customer, make_meter, make_plan = (
    fixtures.make_customer,
    fixtures.make_meter,
    fixtures.make_plan,
)
plan, acme = fixtures.plan, fixtures.acme


def rate_catching() -> object:
    """One rater run; what it raised, if anything, is returned (a real task would log it)."""
    try:
        return inbox.rate_until_empty()
    except Exception as error:  # noqa: BLE001 - the test inspects it
        with connections["default"].cursor() as cursor:  # as a dead worker's session would
            cursor.execute("SELECT pg_advisory_unlock_all()")
        return error


# --- a fractional number in properties ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_fractional_property_is_rated_as_the_synchronous_route_rates_it(
    api, make_customer, make_meter, make_plan
):
    """accept_events stores ``json.dumps(properties, default=str)``: the parser reads 1.5 as
    a Decimal, which becomes the STRING "1.5"; rating then refuses the event (a sum meter
    needs a number) although the same event sent synchronously is charged."""
    make_meter("gpu-seconds", event_name="gpu.run", aggregation="sum", property="seconds")
    gpu_plan = make_plan("gpu", charges=[ChargeSpec(meter="gpu-seconds", unit_price=PRICE)])
    for name in ("sync-co", "async-co"):
        customer = make_customer(name, billing_mode=BillingMode.POSTPAID)
        services.create_subscription(customer=customer, plan=gpu_plan)
    body = (
        '{"idempotency_key": "g-1", "customer": "%s", "event_name": "gpu.run", '
        '"properties": {"seconds": 1.5}}'
    )
    sync = post_raw(api, EVENTS, body % "sync-co")
    assert sync.status_code == 201, sync.json()
    accepted = post_raw(api, EVENTS, body % "async-co", **ASYNC)
    assert accepted.status_code == 202, accepted.json()
    assert rate_catching() == 1

    refused = list(IncomingEvent.objects.values_list("error_code", "error_message"))
    assert refused == [], (
        refused
    )  # fails: [("invalid_event", "properties.seconds must be a number")]
    stored = Event.objects.get(customer__external_id="async-co", idempotency_key="g-1")
    assert stored.amount == Decimal("0.015")


# --- a refusal whose param does not fit the inbox row poisons the queue ---------------


@pytest.mark.django_db(transaction=True)
def test_a_refusal_with_a_long_param_does_not_block_the_queue(
    api, make_customer, make_meter, make_plan
):
    """IncomingEvent.error_param is varchar(200); a meter's property may have 200 characters,
    so InvalidEvent's param ``properties.<property>`` may have 211. The UPDATE that records
    the refusal runs inside the rating part's transaction (after_part): it fails, the whole
    part rolls back, the rater raises, and the next run takes the same rows again — forever.
    Every event of that part (other customers' too) stays pending, nothing is charged; the
    synchronous route answers the same event with a plain 400/422."""
    long_path = "p" * 195
    make_meter("long-path", event_name="api.call", aggregation="sum", property=long_path)
    long_plan = make_plan(
        "long-path-plan", charges=[ChargeSpec(meter="long-path", unit_price=PRICE)]
    )
    victim = make_customer("victim", billing_mode=BillingMode.POSTPAID)
    services.create_subscription(customer=victim, plan=long_plan)
    bystander = make_customer("bystander", billing_mode=BillingMode.POSTPAID)
    services.create_subscription(customer=bystander, plan=long_plan)

    sync = api.post(EVENTS, event("s-1", customer="victim"), format="json")
    assert sync.status_code in (400, 422), sync.json()  # refused synchronously: a clean 4xx

    body = {
        "events": [
            event("poison", customer="victim"),  # lacks properties.ppp…: refused by rating
            event("good-1", customer="bystander", properties={long_path: 3}),
        ]
    }
    assert api.post(BATCH, body, format="json", **ASYNC).status_code == 202
    first, second = rate_catching(), rate_catching()
    assert not isinstance(first, Exception), repr(first)  # fails: DataError (value too long)
    assert not isinstance(second, Exception), repr(second)
    assert Event.objects.filter(idempotency_key="good-1").exists()
    poison = IncomingEvent.objects.get(idempotency_key="poison")
    assert (poison.status, poison.error_code) == (IncomingStatus.REJECTED, "invalid_event")


# --- the same refused key twice in one batch -----------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_refused_event_repeated_in_a_batch_is_not_answered_duplicate(api, acme):
    """accept_events marks the second occurrence of a (customer, key) ``duplicate`` before it
    knows whether the first is stored; when the first is refused (unknown customer) the
    second is still answered ``duplicate`` — "already stored" — though nothing was stored.
    The synchronous batch refuses both."""
    body = {"events": [event("n-1", customer="nobody"), event("n-1", customer="nobody")]}
    sync = api.post(BATCH, body, format="json").json()
    assert [item["status"] for item in sync["data"]] == ["rejected", "rejected"], sync
    answered = api.post(BATCH, body, format="json", **ASYNC).json()
    assert [item["status"] for item in answered["data"]] == ["rejected", "rejected"], answered


# --- two batches with the same keys in opposite orders ---------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_batches_with_the_same_keys_in_another_order_do_not_deadlock(make_key, acme):
    """_ACCEPT inserts a batch's rows in the batch's order, each claiming its (customer, key)
    in the unique index. A retry sent while the first attempt runs, its events in another
    order (a backend's queue drained by two workers), waits on a key the first holds while
    the first waits on one it holds: PostgreSQL kills one with a deadlock, a 500. The
    synchronous route takes its locks in customer-id order and cannot deadlock."""
    _, secret = make_key()

    def send(order: int, round_: int) -> int:
        keys = [f"dl-{round_}-{i}" for i in range(1000)]
        if order:
            keys.reverse()
        body = {"events": [event(k) for k in keys]}
        client = make_client(secret)
        client.raise_request_exception = False  # the answer a backend gets: a 500
        return client.post(BATCH, body, format="json", **ASYNC).status_code

    codes = []
    for round_ in range(5):
        codes += run_concurrently(lambda i, r=round_: send(i, r), 2)
    assert codes == [202] * 10  # fails: one of a pair is a 500 (deadlock detected)
    assert IncomingEvent.objects.count() == 5000


# --- the schema of the asynchronous answers ---------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_asynchronous_duplicate_matches_the_schema_of_its_status(api, acme):
    """A key already sent, with Prefer: respond-async, is answered with the shape the schema
    documents for its status (it was 200 with the 202 shape, which a client generated from
    /api/schema/ could not read)."""
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert api.post(EVENTS, event("sch-1"), format="json", **ASYNC).status_code == 202
    again = api.post(EVENTS, event("sch-1"), format="json", **ASYNC)
    documented = schema["paths"]["/api/v1/events"]["post"]["responses"][str(again.status_code)]
    ref = documented["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    component = schema["components"]["schemas"][ref]
    assert set(component["required"]) <= again.json().keys(), (ref, again.json())
    assert again.json().keys() <= component["properties"].keys()
    assert again.json()["status"] == "duplicate"


# --- a refused key later rated synchronously -----------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_refused_key_rated_synchronously_is_no_longer_listed_rejected(api, make_customer, plan):
    """Rating refuses an asynchronous event (a prepaid wallet run dry): its row stays
    ``rejected``. The backend tops up and resends the key synchronously: the event is rated
    and charged, but the inbox row is never touched (only an asynchronous resend takes a
    rejected row up again), so GET /events?status=rejected goes on listing as refused an
    event that was charged — a client reconciling refusals counts it lost, forever."""
    poor = make_customer("poor", billing_mode=BillingMode.PREPAID)
    services.create_subscription(customer=poor, plan=plan)
    assert (
        api.post(EVENTS, event("rj-1", customer="poor"), format="json", **ASYNC).status_code == 202
    )
    inbox.rate_until_empty()
    assert IncomingEvent.objects.get().status == IncomingStatus.REJECTED

    services.top_up(customer=poor, amount=Decimal("1"), currency="USD", reference="t-rj")
    assert api.post(EVENTS, event("rj-1", customer="poor"), format="json").status_code == 201
    assert charged(poor) == PRICE - Decimal("1")
    listed = api.get(EVENTS, {"customer": "poor", "status": "rejected"}).json()["data"]
    assert [row["idempotency_key"] for row in listed] == []  # fails: ["rj-1"]


# --- a period finalized while its events wait -------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_event_accepted_before_its_period_is_finalized_is_not_refused_after(
    api, make_customer, plan
):
    """An event stamped in a closed period whose draft is still open is accepted (202, as
    the synchronous route would charge it onto the draft). The draft is finalized (grace
    over, or an operator) before the rater gets to the event: nothing in finalization
    looks at the inbox, so rating then refuses the acknowledged event ``period_closed``.
    The backend was told "stored"; the usage is never invoiced. (Documented as a refusal
    in docs/metering.md; it contradicts "acknowledged data is never lost".)"""
    from invoicing import services as invoicing
    from invoicing.models import Invoice

    customer = make_customer("late", billing_mode=BillingMode.POSTPAID)
    start = timezone.now() - timedelta(days=45)
    services.create_subscription(customer=customer, plan=plan, start=start)
    invoicing.close_due_periods()
    draft = Invoice.objects.filter(customer=customer).order_by("period_start").first()
    assert draft is not None and draft.finalized_at is None
    late = event("late-1", customer="late", timestamp=iso(draft.period_start + timedelta(days=1)))
    assert api.post(EVENTS, late, format="json", **ASYNC).status_code == 202

    invoicing.finalize_invoice(invoice_id=draft.pk)  # before the rater's next pass
    inbox.rate_until_empty()
    refused = list(IncomingEvent.objects.values_list("status", "error_code"))
    assert refused == [], refused  # fails: [("rejected", "period_closed")]
    assert Event.objects.filter(idempotency_key="late-1").exists()


# --- a rater that fails leaves an arrival to the beat sweep ----------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_arrival_during_a_failed_rater_run_does_not_wait_for_the_sweep(api, acme, monkeypatch):
    """An acceptance while the rater runs queues a task; that task finds the rater's lock
    taken and leaves, counting on the holder to look again after releasing it. When the
    holder's pass raises (a deadlock, a dropped connection), it used to leave without
    looking: the arrival waited for beat's 10 s sweep. Now a failed pass queues a retry a
    second later, after releasing the lock."""
    from django.db import OperationalError

    from metering import tasks

    retries: list[dict] = []
    monkeypatch.setattr(tasks.rate_incoming_events, "delay", lambda: None)  # its task left
    monkeypatch.setattr(
        tasks.rate_incoming_events, "apply_async", lambda *a, **kwargs: retries.append(kwargs)
    )

    def arrival_then_failure(**kwargs):
        response = api.post(EVENTS, event("late-arrival"), format="json", **ASYNC)
        assert response.status_code == 202
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(inbox, "rate_pending", arrival_then_failure)
    with pytest.raises(OperationalError):
        inbox.rate_until_empty()
    assert retries == [{"countdown": 1}], "nothing queued: the event waits for the beat sweep"
    monkeypatch.undo()
    assert inbox.rate_until_empty() == 1  # the retry: the lock was released
    assert Event.objects.filter(idempotency_key="late-arrival").exists()
