"""The finance home's stored snapshot (invoicing.finance_snapshot): the page reads only the
snapshot (a constant number of queries, none on the counters or invoices), the beat task
and the *Refresh now* button refresh it, concurrent refreshes write it once, and its
Decimal payload round-trips exactly."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext

from billing.project.celery import app
from invoicing import finance, finance_snapshot, tasks
from invoicing.models import FinanceSnapshot
from tests.factories import PlanFactory
from tests.invoicing.test_finance import (
    NOW,
    _invoice,
    _model_usage,
    _populate,
    _subscription,
)

D = Decimal
DAY = timedelta(days=1)
# The tables the figures are computed from: a page reading the snapshot touches none.
SOURCE_TABLES = (
    "metering_periodusage",
    "metering_modelusage",
    "metering_dailyusage",
    '"invoicing_invoice"',
    "billing_subscriptionphase",
    "billing_creditgrant",
)


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_superuser("fin", "fin@example.com", "pw")
    client.force_login(user)
    return client


def _page_queries(client) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/admin/")
    assert response.status_code == 200
    return [q["sql"] for q in queries.captured_queries]


@pytest.mark.django_db
def test_page_reads_only_the_snapshot_in_constant_queries(staff_client):
    _populate(2)
    finance_snapshot.refresh()
    few = _page_queries(staff_client)
    _populate(18)
    finance_snapshot.refresh()
    many = _page_queries(staff_client)

    assert len(many) == len(few) <= 4, many  # the session, the user, the snapshot
    for sql in few + many:
        assert not any(table in sql for table in SOURCE_TABLES), sql
    assert sum("invoicing_financesnapshot" in sql for sql in many) == 1


@pytest.mark.django_db
def test_page_computes_and_stores_the_first_snapshot_then_shows_it(staff_client):
    sub = _subscription(name="Losing Inc", plan=PlanFactory(base_fee="1234.5678", currency="USD"))
    _model_usage(sub, day=datetime.now().date(), model="gpt-x", amount="1", cost="3.5")
    assert not FinanceSnapshot.objects.exists()

    html = staff_client.get("/admin/").content.decode()

    snapshot = FinanceSnapshot.objects.get()
    assert "1,234.57 USD" in html and "-2.50 USD" in html
    assert "Figures as of" in html and "Refresh now" in html
    # a later change shows only once refreshed: the page reads the snapshot
    _invoice(sub, total="777.77", due_at=datetime.now(tz=NOW.tzinfo) - 45 * DAY)
    assert "777.77 USD" not in staff_client.get("/admin/").content.decode()
    finance_snapshot.refresh()
    assert "777.77 USD" in staff_client.get("/admin/").content.decode()
    assert FinanceSnapshot.objects.get().computed_at > snapshot.computed_at


@pytest.mark.django_db
def test_an_old_snapshot_is_flagged_stale(staff_client):
    finance_snapshot.refresh(now=datetime.now(tz=NOW.tzinfo) - timedelta(hours=1))
    html = staff_client.get("/admin/").content.decode()
    assert 'class="finance-stale"' in html
    finance_snapshot.refresh()
    assert 'class="finance-stale"' not in staff_client.get("/admin/").content.decode()


@pytest.mark.django_db
def test_snapshot_round_trips_decimals_exactly():
    plan = PlanFactory(base_fee="0.000000000001", currency="USD")
    sub = _subscription(name="Exact Co", plan=plan)
    today = NOW.date()
    _model_usage(sub, day=today, model="gpt-a", amount="3", cost="5.000000000001")
    _model_usage(sub, day=today, model="gpt-b", amount="0", cost="0")
    _invoice(sub, total="1000.005", paid="0.001", due_at=NOW - 45 * DAY)
    home = finance.finance_home(now=NOW)

    finance_snapshot.refresh(now=NOW)
    stored = FinanceSnapshot.objects.get().payload  # read back from the JSON column
    restored = finance_snapshot.from_payload(json.loads(json.dumps(stored)))

    # equal, and every Decimal with the same digits and exponent (repr shows both)
    assert restored == home
    assert repr(restored) == repr(home)
    usd = next(c for c in restored.currencies if c.currency == "USD")
    assert usd.margin_total.margin == D("-2.000000000001")
    assert all(isinstance(b.amount, Decimal) for b in usd.aging)
    assert not list(_floats(stored))  # amounts stored as strings, never floats
    assert stored["currencies"][0]["margin_total"]["cost"] == "5.000000000001"


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _floats(item)
    elif isinstance(value, list):
        for item in value:
            yield from _floats(item)


@pytest.mark.django_db
def test_beat_task_is_registered_and_refreshes():
    entries = [
        e for e in settings.CELERY_BEAT_SCHEDULE.values()
        if e["task"] == "invoicing.tasks.refresh_finance_snapshot"
    ]
    assert len(entries) == 1
    assert "invoicing.tasks.refresh_finance_snapshot" in app.tasks
    sub = _subscription(plan=PlanFactory(base_fee="42", currency="USD"))
    assert sub

    assert tasks.refresh_finance_snapshot.apply().get() is True

    home = finance_snapshot.from_payload(FinanceSnapshot.objects.get().payload)
    usd = next(c for c in home.currencies if c.currency == "USD")
    assert usd.mrr == D(42)


@pytest.mark.django_db
def test_refresh_button_post_only_csrf_and_permission(staff_client):
    finance_snapshot.refresh(now=datetime.now(tz=NOW.tzinfo) - timedelta(hours=1))
    before = FinanceSnapshot.objects.get().computed_at

    assert staff_client.get("/admin/finance/home/refresh/").status_code == 405
    response = staff_client.post("/admin/finance/home/refresh/")
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert FinanceSnapshot.objects.get().computed_at > before
    assert FinanceSnapshot.objects.count() == 1

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(get_user_model().objects.get(username="fin"))
    assert strict.post("/admin/finance/home/refresh/").status_code == 403  # no token

    clerk = get_user_model().objects.create_user("clerk", password="pw", is_staff=True)
    other = Client()
    other.force_login(clerk)
    assert other.post("/admin/finance/home/refresh/").status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="view_invoice"))
    other.force_login(get_user_model().objects.get(pk=clerk.pk))
    assert other.post("/admin/finance/home/refresh/").status_code == 302


@pytest.mark.django_db(transaction=True)
def test_concurrent_refreshes_write_one_snapshot(monkeypatch):
    """Two refreshes at once: the second finds the first holding the lock and writes
    nothing; without the lock both would compute and write."""
    computing = threading.Event()
    second_done = threading.Event()
    real = finance.finance_home
    calls = []

    def slow_home(**kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:  # the first refresh holds the lock while the second tries
            computing.set()
            second_done.wait(timeout=10)
        return real(**kwargs)

    monkeypatch.setattr(finance, "finance_home", slow_home)
    results: dict[str, object] = {}

    def first():
        try:
            results["first"] = finance_snapshot.refresh()
        finally:
            connections.close_all()

    def second():
        try:
            computing.wait(timeout=10)
            results["second"] = finance_snapshot.refresh()
        finally:
            second_done.set()
            connections.close_all()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert isinstance(results["first"], FinanceSnapshot)
    assert results["second"] is None
    assert len(calls) == 1  # computed once
    assert FinanceSnapshot.objects.count() == 1
