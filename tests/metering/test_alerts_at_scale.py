"""The negative-margin alert's reads at scale (issue 17 item 8, session 13): across every
customer per day and model, it reads ``MarginUsage``'s rows per day and model (a row per
rating slot), not ``ModelUsage``'s row per customer, day and model. As
tests/billing/test_reads_at_scale.py: the tables are filled by set-based SQL, ANALYZEd, and
the plans PostgreSQL really runs are read (tests/plans.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import F, Sum

from billing import alerts
from billing.models import AlertKind, AlertScope, Customer
from metering import alerts as metering_alerts
from metering.models import MARGIN_SLOTS, ModelUsage
from tests.billing.test_reads_at_scale import bulk_customers_with_invoices
from tests.plans import analyze, rows_read

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 4, 10, 12, tzinfo=UTC)
CUSTOMERS = 2_000
MODELS = ("gpt-4o", "gpt-4o-mini")
HISTORY_DAYS = 10  # days of usage before the alert's window (a history the read skips)


def model_usage_with_its_rollups() -> None:
    """``HISTORY_DAYS`` + 2 days × 2 models of usage for each customer (exact amounts, a
    loss on gpt-4o), in USD and a few rows in EUR; then what rating adds to
    ``MarginUsage`` with those rows, the day-and-model rows spread over the slots."""
    today = NOW.date()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO metering_modelusage (customer_id, subscription_id, period_start, day,"
            " provider, model, currency, event_count, input_tokens, cache_read_tokens,"
            " cache_write_tokens, output_tokens, reasoning_tokens, amount, cost)"
            " SELECT s.customer_id, s.id, s.current_period_start, %s::date - d, 'openai', m,"
            " CASE WHEN s.id %% 50 = 0 THEN 'EUR' ELSE 'USD' END, 1, 0, 0, 0, 0, 0,"
            " 0.000000000001 * (s.id %% 97),"
            " 0.000000000001 * (s.id %% 89) + CASE m WHEN 'gpt-4o' THEN 0.00000005 ELSE 0 END"
            " FROM billing_subscription s, generate_series(0, %s) d, unnest(%s::text[]) m",
            [today, HISTORY_DAYS + 1, list(MODELS)],
        )
        cursor.execute(
            "INSERT INTO metering_marginusage (customer_id, day, provider, model, currency,"
            " slot, event_count, amount, cost)"
            " SELECT customer_id, date_trunc('month', day)::date, '', '', currency, 0,"
            " sum(event_count), sum(amount), sum(cost) FROM metering_modelusage GROUP BY 1, 2, 5"
            " UNION ALL SELECT NULL, day, provider, model, currency, customer_id %% %s,"
            " sum(event_count), sum(amount), sum(cost) FROM metering_modelusage"
            " GROUP BY 2, 3, 4, 5, 6",
            [MARGIN_SLOTS],
        )
    analyze("metering_modelusage", "metering_marginusage")


def test_the_margin_alert_across_every_customer_per_model_reads_the_rollup():
    """A scope-all, per-model alert: the two days × 2 models × the slots' rows of
    ``MarginUsage`` — no ``ModelUsage`` row (old: every customer's rows of the window,
    2,000 × 2 days × 2 models = 8,000, and a scan of the whole table: 48,000 here, 10 days
    of history included) — with the same figures, to the last digit."""
    bulk_customers_with_invoices(CUSTOMERS)
    model_usage_with_its_rollups()
    alert = alerts.create_alert(
        kind=AlertKind.NEGATIVE_MARGIN, scope=AlertScope.ALL, threshold=Decimal(0), per_model=True
    )

    def observe():
        return metering_alerts.observe_negative_margin(now=NOW)

    assert rows_read(observe, {"metering_modelusage"})["rows"] == 0
    read_ = rows_read(observe, {"metering_marginusage"})
    # the window's rows per day and model in USD: 2 days × 2 models × the slots
    assert read_["rows"] <= 2 * len(MODELS) * MARGIN_SLOTS, read_

    since = NOW.date() - timedelta(days=metering_alerts.MARGIN_DAYS - 1)
    expected = {
        (None, metering_alerts.margin_subject(r["day"], f"openai/{r['model']}")): r["margin"]
        for r in ModelUsage.objects.filter(day__gte=since, currency="USD")
        .values("day", "model")
        .annotate(margin=Sum(F("amount") - F("cost")))
    }
    observed = {(o.customer_id, o.subject_key): o.value for o in observe()}
    assert observed == expected and len(observed) == 2 * len(MODELS)
    assert {o.alert_id for o in observe()} == {alert.pk}
    # a loss on gpt-4o each day, a gain on gpt-4o-mini
    assert {key[1]: value < 0 for key, value in observed.items()} == {
        key[1]: key[1].endswith("/gpt-4o") for key in expected
    }
    result = metering_alerts.evaluate_alerts(now=NOW)
    assert len(result.triggered) == 2  # gpt-4o on each day


def test_a_customers_margin_alert_reads_only_its_rows():
    """A customer's alert per day: its own rows of the window from the (customer, day)
    index, whatever the number of customers (MarginUsage keeps a customer per month, not
    per day: this read stays on ModelUsage)."""
    bulk_customers_with_invoices(CUSTOMERS)
    model_usage_with_its_rollups()
    customer = Customer.objects.get(external_id="bulk-7")
    alerts.create_alert(
        kind=AlertKind.NEGATIVE_MARGIN,
        scope=AlertScope.CUSTOMER,
        customer=customer,
        threshold=Decimal(0),
    )

    # the tables the alerts' statement starts from, as they are now (an earlier test's
    # statistics would plan the join from a table of many alerts: a scan of every day's rows)
    analyze("billing_alert", "billing_customer", "billing_subscription")

    def observe():
        return metering_alerts.observe_negative_margin(now=NOW)

    read_ = rows_read(observe, {"metering_modelusage"})
    assert read_["rows"] <= 2 * len(MODELS), read_
    assert rows_read(observe, {"metering_marginusage"})["rows"] == 0
    assert [o.customer_id for o in observe()] == [customer.pk] * 2

    # A planner that prefers anything to a nested loop (as CI's PostgreSQL 15 did from the
    # statistics earlier tests left: a hash join over a scan of all 48,000 rows) still
    # reads only the customer's rows: each subject's read is a subquery of its own.
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_nestloop = off")
    read_ = rows_read(observe, {"metering_modelusage"})
    assert read_["rows"] <= 2 * len(MODELS), read_
