"""The admin's reads at scale (issue 17 item 8, session 12): the audit trail, the
subscriptions list, the invoices list and the finance home read a page, not the table.
As tests/billing/test_reads_at_scale.py: the large tables are filled by set-based SQL,
ANALYZEd, and the plans PostgreSQL really runs are read (tests/plans.py)."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.billing.test_reads_at_scale import bulk_customers_with_invoices
from tests.databases import committed_rows
from tests.plans import analyze, nested_loops_off, rows_read, sorts_off

pytestmark = pytest.mark.django_db

AUDIT = "/admin/billing/auditevent/"
HISTORY_TABLES = {"billing_customerevent", "billing_subscriptionevent"}


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("finance", "f@x.test", None))
    return client


@pytest.fixture(scope="class")
def big_trail(django_db_setup, django_db_blocker):
    """20,000 customers and their subscriptions, inserted by SQL: the history triggers
    record 40,000 insert events in two event tables; then one customer is renamed (the
    newest event). Seeded once for the class's tests (about 18 s a seed on two cores) and
    committed: each test reads it in its own transaction, rolled back; the rows are removed
    when the class's tests are done (tests.databases.committed_rows)."""
    with django_db_blocker.unblock(), committed_rows():
        bulk_customers_with_invoices(20_000)
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE billing_customer SET name = 'Renamed Co' WHERE external_id = 'bulk-7'"
            )
        analyze(*HISTORY_TABLES)
        yield


@pytest.mark.usefixtures("big_trail")
class TestTheAuditTrailAtScale:
    def test_the_audit_trail_reads_a_page_not_every_history_row(self, staff_client):
        def read():
            response = staff_client.get(AUDIT)
            assert response.status_code == 200
            page = response.content.decode()
            assert "Renamed Co" in page  # the newest event first, with its diff
            assert "(estimated)" in page  # the count past 10,000 is the tables' estimate

        read_ = rows_read(read, HISTORY_TABLES)
        # a bounded count (≤ 10,001 keys) and a page per table from the pgh_created_at
        # indexes; not 40,000 rows each with its JSON, previous version and diff, sorted
        # (old: 120,000+)
        assert read_["rows"] < 12_000, read_
        # each row's previous version (its diff) is one entry of the (pgh_obj, pgh_id)
        # index: a planner avoiding the sort of the object's events walked the primary key
        # back over every other object's events (1,008,872 rows; so did one without the
        # event tables' column statistics)
        sorts_off()
        read_ = rows_read(read, HISTORY_TABLES)
        assert read_["rows"] < 12_000, read_

    def test_the_audit_trail_of_one_model_reads_only_its_table(self, staff_client):
        def read():
            response = staff_client.get(AUDIT, {"event_model": "billing.customerevent"})
            assert response.status_code == 200
            assert "Renamed Co" in response.content.decode()
            assert "more than 10000" in response.content.decode()  # a filtered, capped count

        assert rows_read(read, {"billing_subscriptionevent"})["rows"] == 0
        assert rows_read(read, {"billing_customerevent"})["rows"] < 12_000
        sorts_off()  # the previous versions by index, not a walk of the table (above)
        read_ = rows_read(read, {"billing_customerevent"})
        assert read_["rows"] < 12_000, read_


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
    # the page's customers and plans are read by key, not joined (a hash join: 30,001 rows)
    nested_loops_off()
    read_ = rows_read(read, {"billing_subscription"})
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


# --- session 13: the finance refresh's margins from MarginUsage, kept by rating -------------


def test_rating_keeps_margin_usage_equal_to_model_usage_in_both_grains(model_prices):
    """Rating adds each part's amounts and costs to ``MarginUsage`` with ``ModelUsage``:
    per customer and month, and per day and model (in the connection's slot), exact to the
    last digit — parts of a few events (rows as JSON) and of many (COPY, rows as arrays),
    two customers in one part."""
    from datetime import timedelta

    from django.db.models import Count, Sum

    from metering.models import MarginUsage, ModelUsage
    from tests.metering.test_rating import (
        CHAT,
        DAY,
        catalog_charge,
        ingest,
        llm_event,
        make_meter,
        subscribe,
    )

    total = make_meter("total", event_name="llm.completion", prop="llm.total_tokens")
    for name in ("acme", "beta"):
        subscribe(catalog_charge(total, "20"), external_id=name, funds="1000")
    small = [
        llm_event(f"s{i}", CHAT, customer=name, model=model, ts=DAY + i * timedelta(hours=12))
        for i, (name, model) in enumerate(
            [("acme", "gpt-4o"), ("beta", "gpt-4o-mini"), ("acme", "gpt-4o-mini")]
        )
    ]
    assert {o.status for o in ingest(*small)} == {"accepted"}
    usage = {"prompt_tokens": 1234, "completion_tokens": 567}
    many = [
        llm_event(
            f"m{i}",
            usage,
            customer=("acme", "beta")[i % 2],
            model=("gpt-4o", "gpt-4o-mini")[i % 3 % 2],
            ts=DAY + (i % 4) * timedelta(hours=8),
        )
        for i in range(40)  # more than EVENTS_BY_INSERT: COPY
    ]
    assert {o.status for o in ingest(*many)} == {"accepted"}

    sums = {"n": Sum("event_count"), "amount": Sum("amount"), "cost": Sum("cost")}
    by_customer_month: dict = {}  # (customer, month, currency): the sums over its days
    for r in ModelUsage.objects.values("customer_id", "day", "currency").annotate(**sums):
        key = (r["customer_id"], r["day"].replace(day=1), r["currency"])
        old = by_customer_month.get(key, (0, 0, 0))
        by_customer_month[key] = (old[0] + r["n"], old[1] + r["amount"], old[2] + r["cost"])
    kept = {
        (r.customer_id, r.day, r.currency): (r.event_count, r.amount, r.cost)
        for r in MarginUsage.objects.filter(customer__isnull=False)
    }
    assert kept == by_customer_month and len(kept) == 2
    by_model = {
        (r["day"], r["provider"], r["model"], r["currency"]): (r["n"], r["amount"], r["cost"])
        for r in ModelUsage.objects.values("day", "provider", "model", "currency").annotate(**sums)
    }
    kept_models = {
        (r["day"], r["provider"], r["model"], r["currency"]): (r["n"], r["amount"], r["cost"])
        for r in MarginUsage.objects.filter(customer__isnull=True)
        .values("day", "provider", "model", "currency")
        .annotate(**sums)
    }
    assert kept_models == by_model and len(by_model) >= 4
    assert sum(n for n, _a, _c in kept.values()) == 43
    # a slot per rating connection, not per part: one connection here
    slots = MarginUsage.objects.filter(customer__isnull=True).aggregate(
        s=Count("slot", distinct=True)
    )
    assert slots["s"] == 1


def test_the_finance_refresh_reads_margins_from_the_rollup_not_every_customer_day_model():
    """The margins by customer and by model: one ``MarginUsage`` row per customer of this
    month and the days × models rows of the window — never ``ModelUsage``, which has a row
    per customer, day and model (old: 2 × 40,000 rows read here, 2 × 4M at 100,000
    customers)."""
    from datetime import UTC, timedelta

    from django.utils import timezone

    from invoicing import finance

    customers = 2_000
    bulk_customers_with_invoices(customers)
    today = timezone.now().astimezone(UTC).date()
    month = today.replace(day=1)
    with connection.cursor() as cursor:
        # 20 days × 2 models of each customer's usage, ending today (some in the previous
        # month), and the rollups rating keeps with them
        cursor.execute(
            "INSERT INTO metering_modelusage (customer_id, subscription_id, period_start, day,"
            " provider, model, currency, event_count, input_tokens, cache_read_tokens,"
            " cache_write_tokens, output_tokens, reasoning_tokens, amount, cost)"
            " SELECT s.customer_id, s.id, s.current_period_start, %s - d, 'openai', m, 'USD', 1,"
            " 0, 0, 0, 0, 0, 0.000000000001 * (s.id %% 97), 0.000000000002 * (s.id %% 89)"
            " FROM billing_subscription s, generate_series(0, 19) d,"
            " unnest(ARRAY['gpt-4o', 'gpt-4o-mini']) m",
            [today],
        )
        cursor.execute(
            "INSERT INTO metering_marginusage (customer_id, day, provider, model, currency,"
            " slot, event_count, amount, cost)"
            " SELECT customer_id, date_trunc('month', day)::date, '', '', currency, 0,"
            " sum(event_count), sum(amount), sum(cost) FROM metering_modelusage GROUP BY 1, 2, 5"
            " UNION ALL SELECT NULL, day, provider, model, currency, 0, sum(event_count),"
            " sum(amount), sum(cost) FROM metering_modelusage GROUP BY 2, 3, 4, 5"
        )
        # and the customers' rows of the six months before (a history the read skips)
        cursor.execute(
            "INSERT INTO metering_marginusage (customer_id, day, provider, model, currency, slot,"
            " event_count, amount, cost) SELECT id,"
            " (date_trunc('month', %s::date) - k * interval '1 month')::date, '', '', 'USD', 0,"
            " 1, 1, 2 FROM billing_customer, generate_series(2, 7) k",
            [today],
        )
    analyze("metering_modelusage", "metering_marginusage")

    def refresh():
        home = finance.finance_home()
        (usd,) = home.currencies
        assert len(usd.margin_by_customer) == finance.TOP
        assert {m.label for m in usd.margin_by_model} == {"openai/gpt-4o", "openai/gpt-4o-mini"}

    assert rows_read(refresh, {"metering_modelusage"})["rows"] == 0
    read_ = rows_read(refresh, {"metering_marginusage"})
    # this month's customers (not the earlier months') and ≤ 30 days × 2 models
    assert read_["rows"] <= customers + 30 * 2, read_
    # the figures are the ModelUsage sums: the window's by model, this month's by customer
    since = today - timedelta(days=finance.MARGIN_DAYS - 1)
    from django.db.models import F, Sum

    from metering.models import ModelUsage

    worst = (
        ModelUsage.objects.filter(day__gte=month)
        .values("customer_id")
        .annotate(margin=Sum("amount") - Sum("cost"))
        .order_by("margin", "customer_id")
        .first()
    )
    home = finance.finance_home()
    (usd,) = home.currencies
    assert (usd.margin_by_customer[0].customer_id, usd.margin_by_customer[0].margin) == (
        worst["customer_id"],
        worst["margin"],
    )
    model_total = ModelUsage.objects.filter(day__gte=since).aggregate(
        m=Sum(F("amount") - F("cost"))
    )["m"]
    assert usd.margin_total.margin == model_total


@pytest.mark.parametrize(
    "page", ["/admin/invoicing/invoice/", "/admin/metering/event/", "/admin/ledger/entry/"]
)
def test_the_lists_currency_filter_reads_the_hot_accounts_not_every_wallet(
    staff_client, make_customer, page
):
    """The currency filter's choices are the system (hot) accounts' currencies, read from
    their partial index: a few rows, not a scan of every account (a wallet a customer:
    100,000 rows at scale 1, read on every page of these lists).

    The entries list reads its page's accounts by id, not in a join: joined, PostgreSQL 15
    (under statistics other tests left) merged the page with the account key's index from
    its start up to the page's highest account, 585 rows when the postings' wallets were
    the 585th's. The postings here go to wallets near the end of the 20,000 (the
    transaction ids decide which), and the read is also measured with the join methods
    other statistics lead to; before the change: a hash join's scan of every account
    (20,003 rows) and the merge join CI met (19,5xx rows)."""
    from tests.billing.test_reads_at_scale import other_customers_postings

    make_customer("acme")  # the system accounts
    with connection.cursor() as cursor:  # transaction ids ≡ 19,500 (mod 20,000): see above
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('ledger_transaction', 'id'),"
            " (nextval(pg_get_serial_sequence('ledger_transaction', 'id')) / 20000 + 1)"
            " * 20000 + 19500)"
        )
    other_customers_postings(wallets=20_000, postings=10)

    def read():
        response = staff_client.get(page)
        assert response.status_code == 200
        assert "?currency=USD" in response.content.decode()  # the filter's choice

    read_ = rows_read(read, {"ledger_account"})
    assert read_["rows"] < 100 and not read_["seq_scans"], read_
    for setting in ("enable_nestloop", "enable_hashjoin"):  # a hash join, then a merge join
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL {setting} = off")  # undone when the test rolls back
        read_ = rows_read(read, {"ledger_account"})
        assert read_["rows"] < 100 and not read_["seq_scans"], (setting, read_)


def test_the_period_counters_list_reads_a_page_and_a_bounded_count(staff_client):
    """``/admin/metering/periodusage/`` (a row per subscription, meter and period, kept for
    every period) counted the whole table twice and read it again for the currency
    filter's choices: now a bounded count and the system accounts' currencies."""
    from billing.models import Meter
    from tests.factories import MeterFactory

    bulk_customers_with_invoices(20_000)  # a subscription each
    meter = Meter.objects.get(code=MeterFactory().code)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO metering_periodusage (subscription_id, meter_id, period_start,"
            " period_end, quantity, amount, charged, currency, event_count)"
            " SELECT id, %s, current_period_start, current_period_end, 1, 1, 1, 'USD', 1"
            " FROM billing_subscription",
            [meter.pk],
        )
    analyze("metering_periodusage")

    def read():
        assert staff_client.get("/admin/metering/periodusage/").status_code == 200

    read_ = rows_read(read, {"metering_periodusage"})
    # old: COUNT(*) twice and SELECT DISTINCT currency: 3 × 20,000 rows and the page
    assert read_["rows"] < 12_000, read_
    # the page's subscriptions, customers, plans and meters are read by key, not joined (a
    # hash join: 30,001 rows)
    nested_loops_off()
    read_ = rows_read(read, {"metering_periodusage"})
    assert read_["rows"] < 12_000, read_
    page = staff_client.get("/admin/metering/periodusage/").content.decode()
    assert "(estimated)" in page


def test_the_ledger_accounts_list_reads_a_page_not_every_account(staff_client, make_customer):
    """``/admin/ledger/account/`` (an account a wallet) joined every account to its balance
    rows, grouped, then counted that twice and read it twice more for the currency and
    owner filters' choices: now the page's balances by subquery, a bounded count, the
    filters' choices from the system accounts and a skip scan of the owner index."""
    from tests.billing.test_reads_at_scale import other_customers_postings

    make_customer("acme", funds=5)
    other_customers_postings(wallets=20_000, postings=10)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO ledger_balance (account_id, bucket, posted, held, floor, version)"
            " SELECT a.id, 0, 0, 0, 0, 0 FROM ledger_account a"
            " WHERE NOT EXISTS (SELECT 1 FROM ledger_balance b WHERE b.account_id = a.id)"
        )
    analyze("ledger_account", "ledger_balance")

    def read():
        assert staff_client.get("/admin/ledger/account/").status_code == 200

    read_ = rows_read(read, {"ledger_account", "ledger_balance"})
    # old: 4 × 40,000 rows (accounts and their balance rows, joined)
    assert read_["rows"] < 12_000, read_
    page = staff_client.get("/admin/ledger/account/").content.decode()
    assert "(estimated)" in page
    assert "?owner_type=billing.customer" in page and "?currency=USD" in page
    acme = staff_client.get("/admin/ledger/account/", {"q": "acme"}).content.decode()
    assert "5.00 USD" in acme  # the wallet's posted balance, from its subquery
