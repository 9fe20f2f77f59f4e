"""A single POST /events is rating's batch of one (issue 14): the same code, and a bounded
number of database round trips, counted here so that a new query on the hot path is seen.

Counted by Django (CaptureQueriesContext, BEGIN and COMMIT included); the ledger posting
(a psycopg cursor, to prepare it) and the events' COPY are not captured, so the count
below is two short of the statements sent. Before issue 14: 18 captured (and the posting's
SAVEPOINT / RELEASE among them)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from metering.models import Event
from tests.metering import test_api_usage as usage_tests
from tests.metering.test_api_usage import CHAT, DAY1, llm_body

# the fixtures of the API's usage tests (an authenticated client, acme on a catalog plan)
api, api_key, make_key = usage_tests.api, usage_tests.api_key, usage_tests.make_key
make_customer, make_meter, make_plan = (
    usage_tests.make_customer,
    usage_tests.make_meter,
    usage_tests.make_plan,
)
acme, ai_plan, ai = usage_tests.acme, usage_tests.ai_plan, usage_tests.ai

pytestmark = pytest.mark.django_db

# auth 1, meters 1, customer 1, BEGIN, lock, customer + subscription under the lock,
# stored twins, wallets + margins, balance lock, counters, event ids, counters written
# (one statement), COMMIT (inside the test's transaction BEGIN and COMMIT are a savepoint
# and its release)
MAX_CAPTURED = 13


def test_one_event_is_rated_in_a_bounded_number_of_round_trips(
    api, ai, django_capture_on_commit_callbacks
):
    # the warm-up's commit hooks run, as in production: the system accounts' ids are cached
    with django_capture_on_commit_callbacks(execute=True):
        warm_up = api.post("/api/v1/events", llm_body("warm-up", CHAT, when=DAY1))
    assert warm_up.status_code == 201
    with CaptureQueriesContext(connection) as queries:
        response = api.post("/api/v1/events", llm_body("req-2", CHAT, when=DAY1))
    assert response.status_code == 201, response.json()
    sql = [q["sql"] for q in queries.captured_queries]
    assert len(sql) <= MAX_CAPTURED, "\n".join(sql)
    # the rating part's transaction (a savepoint inside the test's), none for the posting
    assert sum(s.startswith("SAVEPOINT") for s in sql) == 1
    row = Event.objects.get(idempotency_key="req-2")
    assert row.amount == Decimal("0.005664")
    assert row.ledger_transaction.reference == f"usage:{ai.pk}:req-2"
