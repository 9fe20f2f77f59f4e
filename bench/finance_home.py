"""The finance home, timed before and after its snapshot (docs/finance.md, *Scale*).

Seeds N customers (default 1,000) through the tests' factories (customer, plan,
subscription, a credit grant), then bulk-inserts what months of billing leave behind: 6
months of ``PeriodUsage`` and finalized invoices per customer and 30 days × 3 models of
``ModelUsage`` (and its ``MarginUsage`` rollups). Then times, in the same process:

- ``finance_home()``: the figures computed from the counters (what a refresh does);
- the page computing them inline (the page before the snapshot);
- the page reading the snapshot (the page now), and its query count.

Run against a scratch database only (it adds rows and deletes none):
    DJANGO_DEBUG=1 DATABASE_URL=… python bench/finance_home.py [customers] [repeats]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing.project.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from billing import credits as billing_credits  # noqa: E402
from billing.admin import finance as finance_admin  # noqa: E402
from billing.models import Customer, Meter  # noqa: E402
from invoicing import finance, finance_snapshot  # noqa: E402
from invoicing.models import Invoice, InvoiceStatus  # noqa: E402
from metering.models import ModelUsage, PeriodUsage  # noqa: E402
from tests.factories import (  # noqa: E402
    CustomerFactory,
    MeterFactory,
    PlanFactory,
    SubscriptionFactory,
    unique,
)

D = Decimal
DAY = timedelta(days=1)


def seed(customers: int) -> None:
    now = datetime.now(tz=UTC)
    meter = Meter.objects.get(code=MeterFactory().code)
    plan = PlanFactory(base_fee="10", currency="USD")
    start = datetime(now.year, now.month, 1, tzinfo=UTC) - 200 * DAY
    months = finance.month_starts(now)
    base = (Invoice.objects.order_by("-number").values_list("number", flat=True).first() or 0) + 1
    subs = []
    for index in range(customers):
        customer = CustomerFactory(currency="USD", name=f"Bench {unique()}")
        subs.append(SubscriptionFactory(customer=customer, plan=plan, start=start, now=start))
        billing_credits.grant_credits(
            customer=Customer.objects.get(pk=customer.pk), amount=D(3),
            expires_at=now + 5 * DAY, reference=unique("grant"),
        )
        if index % 100 == 99:
            print(f"  {index + 1} customers", flush=True)
    usage, periods, invoices = [], [], []
    for index, sub in enumerate(subs):
        for n, month in enumerate(months):
            period_start = datetime(month.year, month.month, month.day, tzinfo=UTC)
            periods.append(PeriodUsage(
                subscription=sub, meter=meter, period_start=period_start,
                period_end=period_start + 30 * DAY, charged=D("1.5"), currency="USD",
            ))
            number = base + index * len(months) + n
            invoices.append(Invoice(
                customer_id=sub.customer_id, subscription=sub, period_start=period_start,
                period_end=period_start + 30 * DAY, currency="USD",
                status=InvoiceStatus.OPEN if n == len(months) - 1 else InvoiceStatus.PAID,
                number=number, display_number=f"B-{number}",
                finalized_at=period_start + 30 * DAY, grace_ends_at=period_start + 30 * DAY,
                due_at=period_start + 44 * DAY, subtotal=D(10), total=D(10), amount_due=D(10),
                amount_paid=D(0) if n == len(months) - 1 else D(10), amount_credited=D(0),
            ))
        for back in range(30):
            for model in range(3):
                usage.append(ModelUsage(
                    customer_id=sub.customer_id, subscription=sub,
                    period_start=sub.current_period_start, day=now.date() - back * DAY,
                    provider="openai", model=f"m{model}", currency="USD", event_count=1,
                    amount=D("0.2"), cost=D(index % 4) / 10,
                ))
    PeriodUsage.objects.bulk_create(periods, batch_size=2000)
    Invoice.objects.bulk_create(invoices, batch_size=2000)
    ModelUsage.objects.bulk_create(usage, batch_size=5000)
    # what rating adds to MarginUsage with those rows: per customer and month, per day and model
    margins: dict[tuple, list] = {}
    for u in usage:
        month = u.day.replace(day=1)
        for key in ((u.customer_id, month, "", ""), (None, u.day, u.provider, u.model)):
            entry = margins.setdefault(key, [0, D(0), D(0)])
            entry[0], entry[1], entry[2] = entry[0] + 1, entry[1] + u.amount, entry[2] + u.cost
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO metering_marginusage (customer_id, day, provider, model, currency, slot,"
            " event_count, amount, cost) VALUES (%s, %s, %s, %s, 'USD', 0, %s, %s, %s)"
            " ON CONFLICT ON CONSTRAINT metering_margin_usage DO UPDATE SET"
            " event_count = metering_marginusage.event_count + EXCLUDED.event_count,"
            " amount = metering_marginusage.amount + EXCLUDED.amount,"
            " cost = metering_marginusage.cost + EXCLUDED.cost",
            [(*key, *values) for key, values in margins.items()],
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def show(name: str, times: list[float]) -> None:
    print(f"{name:<42} median {statistics.median(times):7.1f} ms  "
          f"min {min(times):7.1f}  max {max(times):7.1f}  (n={len(times)})")


def main() -> None:
    customers = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    if customers:
        print(f"seeding {customers} customers…", flush=True)
        seed(customers)
    print(f"rows: {Customer.objects.count()} customers, {PeriodUsage.objects.count()} PeriodUsage, "
          f"{Invoice.objects.count()} invoices, {ModelUsage.objects.count()} ModelUsage")
    user = get_user_model().objects.filter(username="bench-finance").first()
    if user is None:
        user = get_user_model().objects.create_superuser("bench-finance", "b@example.com", "pw")
    client = Client()
    client.force_login(user)

    def page() -> None:
        assert client.get("/admin/").status_code == 200

    show("finance_home() (the refresh's compute)", timed(finance.finance_home, repeats))
    show("refresh() (compute + store)", timed(finance_snapshot.refresh, repeats))
    # the page before: the figures computed inline on every request
    inline = finance_snapshot.home
    finance_admin.finance_snapshot.home = lambda: (finance.finance_home(), None)  # type: ignore
    page()
    show("page, computed inline (before)", timed(page, repeats))
    finance_admin.finance_snapshot.home = inline  # type: ignore
    finance_snapshot.refresh()
    page()
    show("page, from the snapshot (after)", timed(page, repeats * 4))
    with CaptureQueriesContext(connection) as queries:
        page()
    print(f"page queries from the snapshot: {len(queries)}")


if __name__ == "__main__":
    main()
