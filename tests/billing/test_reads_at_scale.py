"""Reads whose cost must be the page's, not the table's (issue 17 item 8; `make bench-reads`
measures them at 10 million rows). Each test fills the large table by set-based SQL, as the
benchmark does, ANALYZEs it, and reads the plan PostgreSQL really runs (tests/plans.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection

from billing.services import top_up
from ledger.models import Account
from ledger.services import ensure_system_account
from tests.plans import analyze, nested_loops_off, rows_read, statements

pytestmark = pytest.mark.django_db

OTHER_WALLETS = 2_000
OTHER_POSTINGS = 40_000
OWN_POSTINGS = 500


def own_postings(customer, count: int = OWN_POSTINGS) -> None:
    """``count`` top-ups of the customer's wallet, in one statement (its balance row is
    not kept: these tests read history, not balances)."""
    world = Account.objects.get(code="@World", currency="USD")
    wallet = customer.wallets.get(currency="USD").account_id
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH t AS (INSERT INTO ledger_transaction (reference, payload_hash, description,"
            " metadata, effective_at) SELECT 'own:' || k, '', '', '{}', now() - interval '1 day'"
            " + k * interval '1 s' FROM generate_series(1, %s) k RETURNING id)"
            " INSERT INTO ledger_entry (transaction_id, account_id, currency, amount)"
            " SELECT t.id, CASE WHEN leg = 0 THEN %s ELSE %s END, 'USD',"
            " CASE WHEN leg = 0 THEN 1 ELSE -1 END"
            " FROM t CROSS JOIN (VALUES (0), (1)) AS legs(leg)",
            [count, world.pk, wallet],
        )


def other_customers_postings(*, wallets: int = OTHER_WALLETS, postings: int = OTHER_POSTINGS):
    """``postings`` top-ups of ``wallets`` other customers' wallets (owned accounts), posted
    after whatever exists, balanced per transaction as the ledger's trigger demands."""
    world = ensure_system_account(code="@World", currency="USD", normal_balance="debit")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO ledger_account (code, name, currency, normal_balance, is_hot,"
            " allow_negative, owner_type, owner_id, metadata)"
            " SELECT 'wallet:other' || i || ':USD', '', 'USD', 'credit', false, true,"
            " 'billing.customer', 'other' || i, '{}' FROM generate_series(1, %s) i"
            " RETURNING id",
            [wallets],
        )
        ids = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "WITH t AS (INSERT INTO ledger_transaction (reference, payload_hash, description,"
            " metadata, effective_at) SELECT 'other:' || k, '', '', '{}', now()"
            " FROM generate_series(1, %s) k RETURNING id)"
            " INSERT INTO ledger_entry (transaction_id, account_id, currency, amount)"
            " SELECT t.id, CASE WHEN leg = 0 THEN %s ELSE (%s::bigint[])[1 + t.id %% %s] END,"
            " 'USD', CASE WHEN leg = 0 THEN 1 ELSE -1 END"
            " FROM t CROSS JOIN (VALUES (0), (1)) AS legs(leg)",
            [postings, world.pk, ids, len(ids)],
        )
    analyze("ledger_account", "ledger_transaction", "ledger_entry")


def test_a_customers_transactions_are_read_from_the_index_not_the_ledger(api, make_customer):
    customer = make_customer("acme")
    top_up(customer=customer, amount=Decimal(1))
    own_postings(customer)
    other_customers_postings()

    def read():
        response = api.get("/api/v1/customers/acme/transactions")
        assert response.status_code == 200
        assert len(response.json()["data"]) == 10

    read_ = rows_read(read, {"ledger_transaction", "ledger_entry"})
    assert read_["seq_scans"] == []
    # the page (10 + 1 transactions and their entries): neither the customer's 500 other
    # transactions nor the 40,000 posted since
    assert read_["rows"] < 100, read_


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("finance", "f@x.test", None))
    return client


def test_the_ledger_transactions_list_reads_a_page_not_the_ledger(staff_client, make_customer):
    make_customer("acme")  # @World exists
    other_customers_postings(postings=60_000)

    def read():
        response = staff_client.get("/admin/ledger/transaction/")
        assert response.status_code == 200
        # the count is bounded, the number shown the table's estimate (ANALYZEd: exact here)
        assert "60,000" in response.content.decode() or "60000" in response.content.decode()

    read_ = rows_read(read, {"ledger_transaction"})
    # (a sequential scan under the count's LIMIT stops after 10,001 rows: allowed)
    # a bounded count (10,001 ids) and the page, never the 60,000 rows (old: COUNT(*) and
    # the date hierarchy's DISTINCT over every row)
    assert read_["rows"] < 12_000, read_
    # the page's reversed transactions are read by key, not joined (a hash join read all
    # 60,000 twice: 130,001 rows)
    nested_loops_off()
    read_ = rows_read(read, {"ledger_transaction"})
    assert read_["rows"] < 12_000, read_


def test_the_ledger_entries_list_reads_a_page_not_the_ledger(staff_client, make_customer):
    make_customer("acme")
    other_customers_postings(postings=30_000)

    def read():
        assert staff_client.get("/admin/ledger/entry/").status_code == 200

    read_ = rows_read(read, {"ledger_entry"})
    assert read_["rows"] < 12_000, read_
    # the page's transactions and accounts are read by key, not joined (a hash join read
    # all 60,000 entries: 70,001 rows)
    nested_loops_off()
    read_ = rows_read(read, {"ledger_entry"})
    assert read_["rows"] < 12_000, read_


def bulk_events(customer, count: int, *, since_days: int = 30) -> None:
    """``count`` rated-looking events of ``customer`` over the last ``since_days`` days,
    oldest first (one INSERT … SELECT, as the benchmark's seed)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO metering_event (customer_id, idempotency_key, event_name, timestamp,"
            " properties, received_at, provider, model, input_tokens, cache_read_tokens,"
            " cache_write_tokens, output_tokens, reasoning_tokens, currency, amount, cost)"
            " SELECT %s, 'bulk-' || n, 'llm.completion',"
            " now() - %s * interval '1 day' + n * (%s * interval '1 day' / %s), '{}', now(),"
            " 'openai', 'gpt-4o-mini', 100, 0, 0, 10, 0, 'USD', 0.001, 0.0001"
            " FROM generate_series(1, %s) n",
            [customer.pk, since_days, since_days, count, count],
        )
    analyze("metering_event")


def test_the_events_list_reads_a_page_not_every_event(staff_client, make_customer):
    bulk_events(make_customer("acme"), 40_000)

    def read():
        assert staff_client.get("/admin/metering/event/").status_code == 200

    read_ = rows_read(read, {"metering_event"})
    # a bounded count and the page; never the stock filters' DISTINCT event_name, provider
    # and currency, nor the date hierarchy's distinct dates, over all 40,000 events
    assert read_["rows"] < 12_000, read_
    # the page's customers are read by key, not joined (a hash join: 50,001 rows)
    nested_loops_off()
    read_ = rows_read(read, {"metering_event"})
    assert read_["rows"] < 12_000, read_


def test_a_live_fragments_etag_reads_a_few_rows_not_every_event_of_the_customer():
    from tests.billing.test_portal import customer_with_usage, member_client

    subscription = customer_with_usage("acme")
    bulk_events(subscription.customer, 40_000, since_days=60)
    bulk_events(customer_with_usage("globex").customer, 40_000, since_days=60)  # after acme's
    client = member_client(subscription.customer, "ann@acme.example")
    etag = client.get("/portal/live/events")["ETag"]

    def poll():
        response = client.get("/portal/live/events", headers={"If-None-Match": etag})
        assert response.status_code == 304  # nothing changed: the same ETag

    read_ = rows_read(poll, {"metering_event"})
    assert read_["seq_scans"] == []
    # the newest event, not MAX(id): all of acme's 40,000 events by its index, or every
    # event since its newest (globex's 40,000) by the primary key
    assert read_["rows"] < 10, read_


def test_the_usage_csv_is_streamed_from_tuples_not_model_instances(monkeypatch):
    from metering.models import Event
    from tests.billing.test_portal import customer_with_usage, member_client

    subscription = customer_with_usage("acme")
    client = member_client(subscription.customer, "ann@acme.example")

    def no_instances(*args, **kwargs):
        raise AssertionError("the export built an Event instance")

    monkeypatch.setattr(Event, "from_db", classmethod(no_instances))
    response = client.get("/portal/usage/events.csv")
    rows = b"".join(response.streaming_content).decode().splitlines()
    assert rows[0].startswith("timestamp,idempotency_key,event_name")
    assert len(rows) == 2
    assert rows[1].split(",")[10] == "1.000000000000"  # (14 − 10 included) × 0.25
    assert rows[1].split(",")[12].startswith("usage:")  # its ledger transaction's reference


def bulk_customers_with_invoices(count: int) -> None:
    """``count`` customers, each with a subscription and one paid invoice (set-based)."""
    from tests.factories import PlanFactory

    plan = PlanFactory(currency="USD")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_customer (external_id, name, email, currency, billing_mode,"
            " address_line1, address_line2, city, state, postal_code, country, tax_id,"
            " metadata, stripe_customer_id, created_at, updated_at)"
            " SELECT 'bulk-' || i, 'Bulk ' || i, '', 'USD', 'prepaid', '', '', '', '', '', '',"
            " '', '{}', '', now() - i * interval '1 minute', now()"
            " FROM generate_series(1, %s) i",
            [count],
        )
        cursor.execute("ANALYZE billing_customer")
        cursor.execute(
            "INSERT INTO billing_subscription (customer_id, plan_id, status, started_at,"
            " billing_anchor, current_period_start, current_period_end, cancel_at_period_end,"
            " metadata, billing_time) SELECT id, %s, 'active', now() - interval '40 days',"
            " now() - interval '40 days', now() - interval '10 days',"
            " now() + interval '20 days', false, '{}', 'anniversary'"
            " FROM billing_customer WHERE external_id LIKE 'bulk-%%'",
            [plan.pk],
        )
        cursor.execute("ANALYZE billing_subscription")
        cursor.execute(
            "INSERT INTO invoicing_invoice (customer_id, subscription_id, period_start,"
            " period_end, currency, status, number, display_number, subtotal, tax_name,"
            " tax_percentage, tax, total, balance_applied, amount_due, usage_charged,"
            " fees_precise, rounding, amount_paid, amount_credited, grace_ends_at,"
            " finalized_at, due_at, paid_at, void_reason, pdf, payment_attempts,"
            " last_payment_error, stripe_payment_intent_id, metadata, pdf_state, rounding_rule,"
            " commitment_breakage)"
            " SELECT customer_id, id, current_period_start - interval '30 days',"
            " current_period_start, 'USD', 'paid', id, 'B-' || id, 0, '', 0, 0, 0, 0, 0, 0, 0,"
            " 0, 0, 0, current_period_start, current_period_start, current_period_start,"
            " current_period_start, '', '', 0, '', '', '{}', 'none', 'half_even', 0"
            " FROM billing_subscription",
        )
    analyze("billing_customer", "billing_subscription", "invoicing_invoice")


def test_the_customers_list_reads_a_page_by_its_index(staff_client):
    bulk_customers_with_invoices(20_000)

    def read():
        assert staff_client.get("/admin/billing/customer/").status_code == 200

    read_ = rows_read(read, {"billing_customer"})
    # the page from the (created_at, id) index and a bounded count (≤ 10,001), never the
    # 20,000 customers sorted, counted, and scanned for their distinct currencies
    assert read_["rows"] < 12_000, read_


def test_the_invoices_list_reads_a_page_by_its_index(staff_client):
    bulk_customers_with_invoices(20_000)

    def read():
        assert staff_client.get("/admin/invoicing/invoice/").status_code == 200

    read_ = rows_read(read, {"invoicing_invoice"})
    assert read_["rows"] < 12_000, read_
    # the page's customers are read by key, not joined (a hash join: 30,001 rows)
    nested_loops_off()
    read_ = rows_read(read, {"invoicing_invoice"})
    assert read_["rows"] < 12_000, read_


# --- a page's cost is the page's: one query per kind of row, fields built once ------------
# (session 12: at 1 client the API's customers and invoices lists and the portal's overview
# were over 50 ms at scale 1 with every statement reading a few rows by index — the cost
# was a query per row, a round trip per part of the ETag, and DRF building a serializer's
# fields again for every row.)


def bulk_draft_invoices_with_lines(per_invoice: int = 3) -> None:
    """A draft invoice of every subscription's current period, with ``per_invoice`` lines
    each (set-based; a finalized invoice's lines cannot be written)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO invoicing_invoice (customer_id, subscription_id, period_start,"
            " period_end, currency, status, number, display_number, subtotal, tax_name,"
            " tax_percentage, tax, total, balance_applied, amount_due, usage_charged,"
            " fees_precise, rounding, amount_paid, amount_credited, grace_ends_at,"
            " finalized_at, due_at, paid_at, void_reason, pdf, payment_attempts,"
            " last_payment_error, stripe_payment_intent_id, metadata, pdf_state, rounding_rule,"
            " commitment_breakage)"
            " SELECT customer_id, id, current_period_start, current_period_end, 'USD', 'draft',"
            " NULL, '', 0, '', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, current_period_end, NULL, NULL,"
            " NULL, '', '', 0,"
            " '', '', '{}', 'none', 'half_even', 0 FROM billing_subscription",
        )
        cursor.execute(
            "INSERT INTO invoicing_invoiceline (invoice_id, position, kind, description,"
            " starts_at, ends_at, quantity, unit_price, flat_fee, amount_precise, amount,"
            " metadata) SELECT i.id, p, 'usage', 'Line ' || p, i.period_start, i.period_end,"
            " p, 1, 0, p, p, '{}' FROM invoicing_invoice i CROSS JOIN generate_series(0, %s) p"
            " WHERE i.status = 'draft'",
            [per_invoice - 1],
        )
    analyze("invoicing_invoice", "invoicing_invoiceline")


def statements_reading(read, table: str) -> int:
    return sum(1 for sql in statements(read) if f'"{table}"' in sql)


class FieldBuilds:
    """How many times each serializer class built its fields (DRF deep-copies the declared
    fields for every serializer instance that is used)."""

    def __init__(self, monkeypatch, *classes):
        self.counts = dict.fromkeys(classes, 0)
        for cls in classes:
            original = cls.get_fields

            def counted(serializer, _original=original, _cls=cls):
                if type(serializer) is _cls:
                    self.counts[_cls] += 1
                return _original(serializer)

            monkeypatch.setattr(cls, "get_fields", counted)


def test_the_invoices_list_reads_the_pages_lines_in_one_query(api, monkeypatch):
    from invoicing.api import InvoiceSerializer

    bulk_customers_with_invoices(30)
    bulk_draft_invoices_with_lines()
    builds = FieldBuilds(monkeypatch, InvoiceSerializer)

    def read():
        response = api.get("/api/v1/invoices?status=draft&limit=20")
        assert response.status_code == 200
        data = response.json()["data"]
        assert len(data) == 20 and all(len(invoice["lines"]) == 3 for invoice in data)
        assert [line["description"] for line in data[0]["lines"]] == ["Line 0", "Line 1", "Line 2"]

    assert statements_reading(read, "invoicing_invoiceline") == 1  # was one per invoice: 20
    assert builds.counts[InvoiceSerializer] == 1  # was 20


def test_the_customers_and_subscriptions_lists_build_each_serializer_once(api, monkeypatch):
    from billing.api import serializers as s

    bulk_customers_with_invoices(30)
    builds = FieldBuilds(monkeypatch, s.SubscriptionSerializer, s.AddressSerializer)
    response = api.get("/api/v1/customers?limit=20")
    assert response.status_code == 200
    data = response.json()["data"]
    assert len(data) == 20 and all(c["subscription"]["plan"] for c in data)
    # one of each for the page; it was one per customer (20 address and subscription builds)
    assert builds.counts[s.SubscriptionSerializer] == 1, builds.counts
    assert builds.counts[s.AddressSerializer] == 1, builds.counts

    builds.counts = dict.fromkeys(builds.counts, 0)
    response = api.get("/api/v1/subscriptions?limit=20")
    assert response.status_code == 200 and len(response.json()["data"]) == 20
    assert builds.counts[s.SubscriptionSerializer] == 1, builds.counts  # was 20


def test_the_live_etag_is_one_statement():
    from tests.billing.test_portal import customer_with_usage, member_client

    subscription = customer_with_usage("acme")
    client = member_client(subscription.customer, "ann@acme.example")
    etag = client.get("/portal/live/overview")["ETag"]

    def poll():
        response = client.get("/portal/live/overview", headers={"If-None-Match": etag})
        assert response.status_code == 304

    sent = statements(poll)
    # the balance versions, the newest event and the period's counters: one round trip
    # (it was three), each part by index (test above)
    assert sum(1 for sql in sent if '"metering_event"' in sql) == 1
    reading = [sql for sql in sent if '"ledger_balance"' in sql or '"metering_periodusage"' in sql]
    assert len(reading) == 1, reading


def test_the_overview_reads_the_periods_counters_once():
    from tests.billing.test_portal import customer_with_usage, member_client

    subscription = customer_with_usage("acme")
    client = member_client(subscription.customer, "ann@acme.example")

    def read():
        page = client.get("/portal/").content.decode()
        assert 'data-testid="available-USD">49.00 USD<' in page
        assert 'data-testid="upcoming">10.00 USD<' in page

    sent = statements(read)
    # the balances without the allowances and credits of the API's balance read, the
    # counters read once and handed to the upcoming invoice (they were read three times,
    # the plan's charges twice, the live subscription twice)
    assert sum(1 for sql in sent if 'FROM "metering_periodusage"' in sql) == 1, sent
    assert sum(1 for sql in sent if 'FROM "billing_plancharge"' in sql) <= 1, sent
    assert sum(1 for sql in sent if 'FROM "billing_subscription"' in sql) == 1, sent
