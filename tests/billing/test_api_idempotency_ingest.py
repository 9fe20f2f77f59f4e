"""Idempotency-Key on the two ingest routes (issue 14): the key is claimed in its own short
transaction, the batch is rated part by part with its normal transactions (each part's
customers' rating locks released at its commit), and the answer is stored afterwards.
A request with the same key meanwhile waits for the answer (``IN_USE_WAIT``), then gets 409
``idempotency_key_in_use``; a claim left by a request that died is taken over after
``CLAIM_TIMEOUT``."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from billing import services
from billing.api import idempotency
from billing.models import BillingMode, Customer, IdempotencyRecord
from ledger import selectors as ledger_selectors
from metering import rating
from metering.models import Event
from metering.rating import ingest as rating_ingest
from tests.billing.conftest import ChargeSpec, assert_error, make_client
from tests.factories import SubscriptionFactory
from tests.threads import run_concurrently

REPLAYED = "Idempotent-Replayed"
PRICE = Decimal("0.01")
BATCH = "/api/v1/events/batch"


@pytest.fixture
def customers(make_customer, make_meter, make_plan):
    """Four postpaid customers on a plan charging 0.01 per api.request event."""
    make_meter("idem-requests", event_name="api.request", aggregation="count", property="")
    plan = make_plan("per-request", charges=[ChargeSpec(meter="idem-requests", unit_price=PRICE)])
    made = []
    for name in ("cus-a", "cus-b", "cus-c", "cus-d"):
        customer = make_customer(name, billing_mode=BillingMode.POSTPAID)
        SubscriptionFactory(customer=customer, plan=plan)
        made.append(customer)
    return made


def batch(external_ids: list[str], per_customer: int, tag: str = "e") -> dict:
    return {
        "events": [
            {"idempotency_key": f"{tag}-{cid}-{i}", "customer": cid, "event_name": "api.request"}
            for cid in external_ids
            for i in range(per_customer)
        ]
    }


def charged(customer: Customer) -> Decimal:
    wallet = services.wallet_for(customer=customer)
    return abs(ledger_selectors.get_balance(account=wallet.account).posted)


def keyed(client, body: dict, key: str):
    return client.post(BATCH, body, format="json", HTTP_IDEMPOTENCY_KEY=key)


@pytest.mark.django_db(transaction=True)
def test_concurrent_keyed_batches_rate_once_and_answer_replay_or_in_use(make_key, customers):
    _, secret = make_key()
    body = batch([c.external_id for c in customers], 10)

    def send(i: int):
        response = keyed(make_client(secret), body, "batch-1")
        return response.status_code, response.json(), response.headers.get(REPLAYED)

    results = run_concurrently(send, 6)
    assert not [r for r in results if isinstance(r, BaseException)], results
    fresh = [r for r in results if r[0] == 200 and r[2] is None]
    assert len(fresh) == 1, results
    for status, payload, replayed in results:
        if status == 200:
            assert payload == fresh[0][1]
        else:
            assert status == 409 and replayed is None
            assert payload["error"]["code"] == "idempotency_key_in_use"
            assert payload["error"]["param"] == "Idempotency-Key"
    assert fresh[0][1]["accepted"] == 40
    assert Event.objects.count() == 40
    for customer in customers:
        assert charged(customer) == 10 * PRICE  # no double charge
    retry = keyed(make_client(secret), body, "batch-1")
    assert (retry.status_code, retry.headers[REPLAYED]) == (200, "true")
    assert retry.json() == fresh[0][1]
    assert IdempotencyRecord.objects.get().status_code == 200


def _advisory_lock_free(key: int) -> bool:
    """Can this (the test's own) connection take the rating lock of customer ``key``?"""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s::bigint)", [key])
        (taken,) = cursor.fetchone()
        if taken:
            cursor.execute("SELECT pg_advisory_unlock(%s::bigint)", [key])
    return taken


@pytest.mark.django_db(transaction=True)
def test_a_keyed_batch_releases_its_first_parts_locks_before_it_finishes(
    monkeypatch, make_key, customers
):
    first, second = sorted(customers[:2], key=lambda c: c.pk)
    monkeypatch.setattr(rating_ingest, "RATING_CHUNK_EVENTS", 2)  # parts: [first], [second]
    second_part, go_on = threading.Event(), threading.Event()
    lock = rating_ingest._lock_customers

    def lock_and_pause(customer_ids, **kwargs):
        if second.pk in customer_ids:
            second_part.set()
            go_on.wait(timeout=20)
        lock(customer_ids, **kwargs)

    monkeypatch.setattr(rating_ingest, "_lock_customers", lock_and_pause)
    monkeypatch.setattr(idempotency, "IN_USE_WAIT", timedelta(0))  # answer 409 at once
    _, secret = make_key()
    body = batch([first.external_id, second.external_id], 2)
    answer: dict = {}
    waited: dict = {}
    waiter = None

    def send(into: dict = answer) -> None:
        try:
            response = keyed(make_client(secret), body, "parts")
            into["status"], into["body"] = response.status_code, response.json()
            into["replayed"] = response.headers.get(REPLAYED)
        finally:
            connection.close()

    worker = threading.Thread(target=send)
    worker.start()
    try:
        assert second_part.wait(timeout=20), "the batch never reached its second part"
        # Part 1 is committed: its customer's rating lock is free, its events are visible,
        # and the key is claimed (in progress) in a transaction of its own.
        assert _advisory_lock_free(first.pk)
        assert Event.objects.filter(customer=first).count() == 2
        assert IdempotencyRecord.objects.get(key="parts").status_code == 0
        retry = keyed(make_client(secret), body, "parts")
        assert_error(
            retry, 409, "idempotency_key_in_use", param="Idempotency-Key", type="idempotency_error"
        )
        other = keyed(make_client(secret), batch([first.external_id], 1, "x"), "parts")
        assert_error(
            other, 409, "idempotency_key_reused", param="Idempotency-Key", type="idempotency_error"
        )
        # A retry allowed to wait polls the in-progress claim and replays the answer.
        monkeypatch.setattr(idempotency, "IN_USE_WAIT", timedelta(seconds=30))
        polling = threading.Event()
        try_claim = idempotency._try_claim

        def noting_the_wait(*args):
            result = try_claim(*args)
            if result is None:
                polling.set()
            return result

        monkeypatch.setattr(idempotency, "_try_claim", noting_the_wait)
        waiter = threading.Thread(target=send, kwargs={"into": waited})
        waiter.start()
        assert polling.wait(timeout=20), "the retry did not wait on the claim"
    finally:
        go_on.set()
        worker.join(timeout=60)
        if waiter is not None:
            waiter.join(timeout=60)
    assert not worker.is_alive() and not waiter.is_alive()
    assert answer["status"] == 200 and answer["body"]["accepted"] == 4
    assert (waited["status"], waited["replayed"], waited["body"]) == (200, "true", answer["body"])
    retry = keyed(make_client(secret), body, "parts")
    assert (retry.status_code, retry.headers[REPLAYED], retry.json()) == (
        200,
        "true",
        answer["body"],
    )
    assert charged(first) == charged(second) == 2 * PRICE


class Crash(BaseException):
    """The process dying between rating and storing the answer."""


@pytest.mark.django_db
def test_a_claim_left_by_a_crash_is_taken_over_after_the_timeout(api, customers, monkeypatch):
    body = batch([c.external_id for c in customers], 3)
    ingest = rating.ingest_events

    def ingest_then_crash(*args, **kwargs):
        ingest(*args, **kwargs)
        raise Crash

    monkeypatch.setattr(rating, "ingest_events", ingest_then_crash)
    with pytest.raises(Crash):
        keyed(api, body, "crashed")
    monkeypatch.setattr(rating, "ingest_events", ingest)
    monkeypatch.setattr(idempotency, "IN_USE_WAIT", timedelta(0))
    assert Event.objects.count() == 12  # rated and committed, answer never stored
    assert_error(  # not stale yet
        keyed(api, body, "crashed"),
        409,
        "idempotency_key_in_use",
        param="Idempotency-Key",
        type="idempotency_error",
    )

    IdempotencyRecord.objects.filter(key="crashed").update(
        created_at=timezone.now() - timedelta(minutes=2)
    )
    taken_over = keyed(api, body, "crashed")
    assert taken_over.status_code == 200 and REPLAYED not in taken_over.headers
    payload = taken_over.json()
    # The events the lost attempt stored are answered as duplicates and charged once.
    assert (payload["accepted"], payload["duplicates"], payload["rejected"]) == (0, 12, 0)
    assert Event.objects.count() == 12
    for customer in customers:
        assert charged(customer) == 3 * PRICE
    replay = keyed(api, body, "crashed")
    assert (replay.status_code, replay.headers[REPLAYED], replay.json()) == (200, "true", payload)


@pytest.mark.django_db
def test_a_server_error_releases_the_claim(api, customers, monkeypatch):
    body = batch([customers[0].external_id], 1)
    ingest = rating.ingest_events

    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(rating, "ingest_events", broken)
    api.raise_request_exception = False
    assert keyed(api, body, "flaky").status_code == 500
    assert not IdempotencyRecord.objects.filter(key="flaky").exists()
    monkeypatch.setattr(rating, "ingest_events", ingest)
    response = keyed(api, body, "flaky")
    assert response.status_code == 200 and REPLAYED not in response.headers
    assert response.json()["accepted"] == 1


@pytest.mark.django_db
def test_a_single_keyed_event_replays(api, customers):
    event = {"idempotency_key": "one", "customer": "cus-a", "event_name": "api.request"}
    first = api.post("/api/v1/events", event, format="json", HTTP_IDEMPOTENCY_KEY="single")
    assert first.status_code == 201
    retry = api.post("/api/v1/events", event, format="json", HTTP_IDEMPOTENCY_KEY="single")
    assert (retry.status_code, retry.headers[REPLAYED], retry.json()) == (201, "true", first.json())
    assert charged(customers[0]) == PRICE


@pytest.mark.django_db
def test_an_attempt_taken_over_does_not_overwrite_the_takers_answer(api, customers, monkeypatch):
    body = batch([c.external_id for c in customers], 2)
    ingest = rating.ingest_events
    taker: dict = {}

    def slow_then_taken_over(*args, **kwargs):
        outcomes = ingest(*args, **kwargs)
        if not taker:  # this attempt overran CLAIM_TIMEOUT; a retry takes the key over
            taker["running"] = True
            IdempotencyRecord.objects.filter(key="slow").update(
                created_at=timezone.now() - timedelta(minutes=2)
            )
            taker["response"] = keyed(api, body, "slow")
        return outcomes

    monkeypatch.setattr(rating, "ingest_events", slow_then_taken_over)
    slow = keyed(api, body, "slow")
    assert slow.status_code == 200 and slow.json()["accepted"] == 8
    taken = taker["response"]
    assert taken.status_code == 200 and taken.json()["duplicates"] == 8
    replay = keyed(api, body, "slow")
    assert (replay.headers[REPLAYED], replay.json()) == ("true", taken.json())
    assert Event.objects.count() == 8
