"""The admin's reads at scale (issue 17 item 8, session 12): the audit trail, the
subscriptions list, the invoices list and the finance home read a page, not the table.
As tests/billing/test_reads_at_scale.py: the large tables are filled by set-based SQL,
ANALYZEd, and the plans PostgreSQL really runs are read (tests/plans.py)."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.billing.test_reads_at_scale import bulk_customers_with_invoices
from tests.plans import analyze, rows_read

pytestmark = pytest.mark.django_db

AUDIT = "/admin/billing/auditevent/"
HISTORY_TABLES = {"billing_customerevent", "billing_subscriptionevent"}


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("finance", "f@x.test", None))
    return client


@pytest.fixture
def big_trail():
    """20,000 customers and their subscriptions, inserted by SQL: the history triggers
    record 40,000 insert events in two event tables; then one customer is renamed (the
    newest event)."""
    bulk_customers_with_invoices(20_000)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE billing_customer SET name = 'Renamed Co' WHERE external_id = 'bulk-7'"
        )
    analyze(*HISTORY_TABLES)


def test_the_audit_trail_reads_a_page_not_every_history_row(staff_client, big_trail):
    def read():
        response = staff_client.get(AUDIT)
        assert response.status_code == 200
        page = response.content.decode()
        assert "Renamed Co" in page  # the newest event first, with its diff
        assert "(estimated)" in page  # the count past 10,000 is the tables' estimate

    read_ = rows_read(read, HISTORY_TABLES)
    # a bounded count (≤ 10,001 keys) and a page per table from the pgh_created_at indexes;
    # not 40,000 rows each with its JSON, previous version and diff, sorted (old: 120,000+)
    assert read_["rows"] < 12_000, read_


def test_the_audit_trail_of_one_model_reads_only_its_table(staff_client, big_trail):
    def read():
        response = staff_client.get(AUDIT, {"event_model": "billing.customerevent"})
        assert response.status_code == 200
        assert "Renamed Co" in response.content.decode()
        assert "more than 10000" in response.content.decode()  # a filtered, capped count

    assert rows_read(read, {"billing_subscriptionevent"})["rows"] == 0
    assert rows_read(read, {"billing_customerevent"})["rows"] < 12_000


def test_the_subscriptions_list_reads_a_page_and_a_bounded_count(staff_client):
    bulk_customers_with_invoices(20_000)  # a subscription each

    def read():
        response = staff_client.get("/admin/billing/subscription/")
        assert response.status_code == 200
        page = response.content.decode()
        assert "about 20000 subscriptions" in page and "(estimated)" in page

    read_ = rows_read(read, {"billing_subscription"})
    # the page by the primary key and a count that stops at 10,001: not all 20,000 counted
    # on every page (old: COUNT(*), 20,000 + the page)
    assert read_["rows"] < 12_000, read_


def test_the_finance_refresh_ranks_customers_by_id_and_reads_only_the_ranked_ones():
    """The finance home's refresh ranks customers over counters and invoices (customers ×
    days); it groups them by id and reads the names of the ten it shows — never a join of
    every customer's name into the aggregate (which spilled to disk at 10,000 customers)."""
    from invoicing import finance

    bulk_customers_with_invoices(20_000)  # a paid invoice each, in the window

    def refresh():
        home = finance.finance_home()
        (usd,) = home.currencies
        assert len(usd.top_customers) == finance.TOP
        assert all(c.name.startswith("Bulk ") for c in usd.top_customers)

    read_ = rows_read(refresh, {"billing_customer"})
    assert read_["rows"] <= 2 * finance.TOP, read_
