"""A batch rated in several parts (metering.rating.ingest, RATING_CHUNK_EVENTS): each part
is a transaction of its own, committed before the next; every part but the last commits
with synchronous_commit off, the last one synchronously, so that flushing its commit
record flushes every earlier part before the answer goes out. Real
transactions here (transaction=True): the parts commit, as in production."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from metering.rating import ingest as rating_ingest
from tests.metering.test_rating import (
    NOW,
    event,
    per_unit,
    posted,
    statuses,
    subscribe,
)
from tests.metering.test_rating import make_meter as meter

pytestmark = pytest.mark.django_db(transaction=True)


def _three_customers(funds: tuple[str, str, str] = ("10", "10", "10")):
    units = meter("units")
    return [
        subscribe(per_unit(units, "1"), external_id=f"c{i}", funds=amount)
        for i, amount in enumerate(funds)
    ]


def _batch(customers) -> list:
    return [event(f"k{n}", customer=c.external_id, units=1) for c in customers for n in range(2)]


def _part_state() -> tuple[str, bool]:
    """This part's synchronous_commit, and whether its transaction has an id (so that its
    COMMIT writes a commit record) by the time the part's events are rated."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('synchronous_commit'), txid_current_if_assigned()")
        setting, xid = cursor.fetchone()
    return setting, xid is not None


def _ingest_noting_parts(batch, seen: list) -> list:
    return rating_ingest.ingest_events(
        batch, now=NOW, after_part=lambda _: seen.append(_part_state())
    )


def test_every_part_but_the_last_commits_asynchronously_the_last_one_synchronously(monkeypatch):
    monkeypatch.setattr(rating_ingest, "RATING_CHUNK_EVENTS", 2)  # one customer per part
    customers = _three_customers()
    warm = [event(f"w{n}", customer=c.external_id, units=1) for n, c in enumerate(customers)]
    assert statuses(rating_ingest.ingest_events(warm, now=NOW)) == ["accepted"] * 3
    seen: list = []
    outcomes = _ingest_noting_parts(_batch(customers), seen)
    assert statuses(outcomes) == ["accepted"] * 6
    assert [setting for setting, _ in seen] == ["off", "off", "on"]
    assert [posted(c) for c in customers] == [7, 7, 7]
    # the session is back to its default once the parts have committed
    assert _part_state()[0] == "on"


def test_parts_inside_a_callers_transaction_leave_its_durability_alone(monkeypatch):
    """Inside an outer transaction the parts are savepoints of it: SET LOCAL would turn the
    caller's one commit asynchronous, so nothing is set; the same batch alone is deferred."""
    monkeypatch.setattr(rating_ingest, "RATING_CHUNK_EVENTS", 2)
    customers = _three_customers()
    seen: list = []
    with transaction.atomic():
        outcomes = _ingest_noting_parts(_batch(customers), seen)
        assert _part_state()[0] == "on"
    assert statuses(outcomes) == ["accepted"] * 6
    assert [setting for setting, _ in seen] == ["on", "on", "on"]
    seen.clear()
    again = [event(f"again{n}", customer=c.external_id, units=1) for c in customers for n in (1, 2)]
    assert statuses(_ingest_noting_parts(again, seen)) == ["accepted"] * 6
    assert [setting for setting, _ in seen] == ["off", "off", "on"]


def test_a_part_that_fills_the_account_cache_commits_synchronously(monkeypatch):
    """The first part finds the revenue account (this process has not cached it yet): were
    its commit asynchronous, a server crash could lose the account its cache then keeps
    handing out. The parts after it find it cached."""
    monkeypatch.setattr(rating_ingest, "RATING_CHUNK_EVENTS", 2)
    customers = _three_customers()
    rating_ingest.clear_caches()
    seen: list = []
    outcomes = _ingest_noting_parts(_batch(customers), seen)
    assert statuses(outcomes) == ["accepted"] * 6
    assert [setting for setting, _ in seen] == ["on", "off", "on"]
    assert [posted(c) for c in customers] == [8, 8, 8]
