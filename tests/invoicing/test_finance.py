"""Finance reads (invoicing.finance) and the finance home in the admin: figures worked out by
hand from rows written for them, the aging buckets at their boundaries, a negative margin,
the MRR change, and a query count that does not grow with the number of customers."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from billing import credits as billing_credits
from billing import services as billing_services
from billing.models import Customer, Meter, Subscription, SubscriptionStatus
from billing.services import ChargeSpec
from invoicing import finance
from invoicing.models import Invoice, InvoiceStatus
from metering.models import DailyUsage, MarginUsage, ModelUsage, PeriodUsage
from tests.billing.conftest import at
from tests.factories import CustomerFactory, MeterFactory, PlanFactory, SubscriptionFactory, unique

D = Decimal
NOW = at(2026, 6, 15, 12)
JANUARY = at(2026, 1, 1)
DAY = timedelta(days=1)
pytestmark = pytest.mark.django_db


def _subscription(
    *, plan=None, start: datetime = JANUARY, trial_days: int | None = None, **customer
) -> Subscription:
    plan = plan or PlanFactory()
    customer_row = CustomerFactory(currency=plan.currency, **customer)
    return SubscriptionFactory(
        customer=customer_row,
        plan=plan,
        start=start,
        now=start,
        trial_days=trial_days,
    )


_period = [0]


def _invoice(
    subscription: Subscription,
    *,
    status: str = InvoiceStatus.OPEN,
    total: str = "0",
    paid: str = "0",
    credited: str = "0",
    due_at: datetime | None = NOW,
    period_start: datetime | None = None,
    currency: str = "USD",
) -> Invoice:
    """An invoice row with its figures as finalization leaves them (amount due = total)."""
    _period[0] += 1  # a number and a period of its own
    if period_start is None:
        period_start = at(2020, 1, 1) + timedelta(days=_period[0])
    final = status != InvoiceStatus.DRAFT
    return Invoice.objects.create(
        customer_id=subscription.customer_id,
        subscription=subscription,
        period_start=period_start,
        period_end=period_start + DAY,
        currency=currency,
        status=status,
        number=_period[0] + 1000 if final else None,
        display_number=f"T-{_period[0]}" if final else "",
        finalized_at=period_start + DAY if final else None,
        grace_ends_at=period_start + DAY,
        due_at=due_at if final else None,
        subtotal=D(total),
        total=D(total),
        amount_due=D(total),
        amount_paid=D(paid),
        amount_credited=D(credited),
    )


# --- receivables -------------------------------------------------------------------------------


def test_aging_buckets_at_their_boundaries():
    sub = _subscription()
    # each amount a power of two, so every bucket's sum says which invoices it holds
    _invoice(sub, total="1", due_at=NOW + DAY)  # not due yet
    _invoice(sub, total="2", due_at=NOW)  # due this instant: current
    _invoice(sub, total="4", due_at=None)  # no due date: current
    _invoice(sub, total="8", due_at=NOW - timedelta(seconds=1))  # 1–30
    _invoice(sub, total="16", due_at=NOW - 30 * DAY)  # exactly 30 days: 1–30
    _invoice(sub, total="32", due_at=NOW - 30 * DAY - timedelta(seconds=1))  # 31–60
    _invoice(sub, total="64", due_at=NOW - 60 * DAY, status=InvoiceStatus.PAST_DUE)  # 31–60
    _invoice(sub, total="128", due_at=NOW - 90 * DAY)  # 61–90
    _invoice(sub, total="256", due_at=NOW - 90 * DAY - timedelta(seconds=1))  # 90+
    # what still owes counts as what remains; settled, void and draft invoices do not count
    _invoice(sub, total="1000", paid="400", credited="88", due_at=NOW - 5 * DAY)  # 512 in 1–30
    _invoice(sub, total="50", paid="50", due_at=NOW - 5 * DAY)  # open but settled
    _invoice(sub, total="70", status=InvoiceStatus.PAID, paid="70", due_at=NOW - 200 * DAY)
    _invoice(sub, total="90", status=InvoiceStatus.VOID, due_at=NOW - 200 * DAY)
    _invoice(sub, total="110", status=InvoiceStatus.DRAFT)
    _invoice(sub, total="7", due_at=NOW - 200 * DAY, currency="EUR")

    aging = finance.receivables(now=NOW)

    usd = {b.key: (b.amount, b.count) for b in aging["USD"]}
    assert usd == {
        "current": (D(1 + 2 + 4), 3),
        "d1_30": (D(8 + 16 + 512), 3),
        "d31_60": (D(32 + 64), 2),
        "d61_90": (D(128), 1),
        "d90_plus": (D(256), 1),
    }
    assert [b.label for b in aging["USD"]] == [
        "Current",
        "1–30 days",
        "31–60 days",
        "61–90 days",
        "90+ days",
    ]
    assert {b.key: b.amount for b in aging["EUR"]}["d90_plus"] == D(7)


# --- MRR ---------------------------------------------------------------------------------------


def test_mrr_counts_live_phases_out_of_trial_a_yearly_fee_as_a_twelfth():
    monthly = PlanFactory(base_fee="100", currency="USD")
    small = PlanFactory(base_fee="50", currency="USD")
    yearly = PlanFactory(base_fee="1200", currency="USD", interval="year")
    euro = PlanFactory(base_fee="30", currency="EUR")
    _subscription(plan=monthly, start=NOW - 60 * DAY)  # both moments: 100
    _subscription(plan=yearly, start=NOW - 10 * DAY)  # now only: 1200 / 12 = 100
    ended = _subscription(plan=small, start=NOW - 60 * DAY)  # before only: 50
    Subscription.objects.filter(pk=ended.pk).update(
        status=SubscriptionStatus.CANCELED, ended_at=NOW - 5 * DAY, canceled_at=NOW - 5 * DAY
    )
    ended.phases.update(ends_at=NOW - 5 * DAY)
    _subscription(plan=monthly, start=NOW - 2 * DAY, trial_days=14)  # in trial: not yet
    _subscription(plan=euro, start=NOW - 60 * DAY)

    figures = finance.mrr(now=NOW, before=NOW - 30 * DAY)

    assert figures["USD"] == (D(200), D(150))
    assert figures["EUR"] == (D(30), D(30))
    home = finance.finance_home(now=NOW)
    usd = next(c for c in home.currencies if c.currency == "USD")
    assert (usd.mrr, usd.mrr_before, usd.mrr_change) == (D(200), D(150), D(50))


def test_mrr_counts_prepaid_commitments_as_recurring_revenue():
    """A 10.00 base fee with a 100.00 commitment a month: 110.00; a 600.00 commitment a
    quarter (no fee): 200.00; one paid in advance counts alike: 50.00; a weekly 12.00
    commitment: 12 × 52 / 12 = 52.00. Usage beyond a commitment is not recurring. The one
    moved onto its commitment plan 20 days ago counted the 30.00 fee plan before."""
    meter = MeterFactory(code=unique("m")).code
    charges = [ChargeSpec(meter=meter, unit_price=D("0.10"))]

    def committed(amount: str, **kw):
        kw.setdefault("base_fee", "0")
        return PlanFactory(currency="USD", commitment_amount=D(amount), charges=charges, **kw)

    _subscription(plan=committed("100", base_fee="10"), start=NOW - 60 * DAY)
    _subscription(plan=committed("600", interval="quarter"), start=NOW - 60 * DAY)
    _subscription(plan=committed("50", commitment_billing="in_advance"), start=NOW - 60 * DAY)
    _subscription(plan=committed("12", interval="week"), start=NOW - 10 * DAY)
    moved = _subscription(plan=PlanFactory(base_fee="30", currency="USD"), start=NOW - 60 * DAY)
    billing_services.change_subscription(
        subscription_id=moved.pk, plan=committed("70"), now=NOW - 20 * DAY
    )

    figures = finance.mrr(now=NOW, before=NOW - 30 * DAY)

    # now: 110 + 200 + 50 + 52 + 70; 30 days before: 110 + 200 + 50 + 30 (the weekly not yet)
    assert figures["USD"] == (D(482), D(390))


# --- margins -----------------------------------------------------------------------------------


def _model_usage(sub: Subscription, *, day, model: str, amount: str, cost: str, currency="USD"):
    """A ``ModelUsage`` row and what rating adds with it to ``MarginUsage``'s two grains."""
    for customer_id, rollup_day, provider, name in (
        (sub.customer_id, day.replace(day=1), "", ""),
        (None, day, "openai", model),
    ):
        row, _ = MarginUsage.objects.get_or_create(
            customer_id=customer_id,
            day=rollup_day,
            provider=provider,
            model=name,
            currency=currency,
        )
        MarginUsage.objects.filter(pk=row.pk).update(
            event_count=F("event_count") + 1,
            amount=F("amount") + D(amount),
            cost=F("cost") + D(cost),
        )
    return ModelUsage.objects.create(
        customer_id=sub.customer_id,
        subscription=sub,
        period_start=sub.current_period_start,
        day=day,
        provider="openai",
        model=model,
        currency=currency,
        event_count=1,
        amount=D(amount),
        cost=D(cost),
    )


def test_margin_by_customer_and_model_lowest_first_negative_flagged():
    profitable = _subscription(name="Profitable Ltd")
    losing = _subscription(name="Losing Inc")
    today = NOW.date()
    _model_usage(profitable, day=today, model="gpt-a", amount="10.5", cost="4.25")
    _model_usage(profitable, day=today - 29 * DAY, model="gpt-b", amount="1", cost="0.5")
    _model_usage(losing, day=today - 3 * DAY, model="gpt-b", amount="3", cost="5.000000000001")
    _model_usage(losing, day=today - 30 * DAY, model="gpt-a", amount="0", cost="999")  # too old
    # charged in credits: the cost (USD) has nothing in its currency to compare with
    _model_usage(losing, day=today, model="gpt-a", amount="1", cost="999", currency="CREDITS")

    by_customer = finance.margin_by_customer(month=today.replace(day=1))["USD"]
    by_model = finance.margin_by_model(since=today - 29 * DAY)["USD"]

    assert [(m.label, m.margin, m.negative) for m in by_customer] == [
        ("Losing Inc", D("-2.000000000001"), True),
        ("Profitable Ltd", D("6.25"), False),  # June: not its gpt-b of 17 May
    ]
    assert [(m.label, m.revenue, m.cost, m.margin) for m in by_model] == [
        ("openai/gpt-b", D(4), D("5.500000000001"), D("-1.500000000001")),
        ("openai/gpt-a", D("10.5"), D("4.25"), D("6.25")),
    ]
    assert by_model[1].percent.quantize(D("0.01")) == D("59.52")  # 6.25 / 10.5
    assert set(finance.margin_by_model(since=today - 29 * DAY)) == {"USD"}
    home = finance.finance_home(now=NOW)
    usd = next(c for c in home.currencies if c.currency == "USD")
    assert usd.margin_total.margin == D("4.749999999999")


# --- revenue, top customers, credits -----------------------------------------------------------


def test_revenue_per_month_rated_from_counters_invoiced_from_final_invoices():
    big = _subscription(name="Big Co")
    small = _subscription(name="Small Co")
    meter = Meter.objects.get(code=MeterFactory().code)
    for sub, start, charged in (
        (big, at(2026, 5, 1), "120.000000000004"),
        (small, at(2026, 5, 1), "3"),
        (big, at(2026, 6, 1), "40"),
        (big, at(2025, 12, 1), "999"),  # before the six months
    ):
        PeriodUsage.objects.create(
            subscription=sub,
            meter=meter,
            period_start=start,
            period_end=start + 30 * DAY,
            charged=D(charged),
            currency="USD",
        )
    _invoice(
        big, total="123.45", period_start=at(2026, 5, 1), status=InvoiceStatus.PAID, paid="123.45"
    )
    _invoice(small, total="3.00", period_start=at(2026, 5, 1))
    _invoice(big, total="500", period_start=at(2026, 4, 1), status=InvoiceStatus.VOID)
    _invoice(small, total="77", period_start=at(2026, 6, 1), status=InvoiceStatus.DRAFT)

    home = finance.finance_home(now=NOW)

    usd = next(c for c in home.currencies if c.currency == "USD")
    assert [m.start.month for m in usd.months] == [1, 2, 3, 4, 5, 6]
    may, june = usd.months[4], usd.months[5]
    assert (may.rated, may.invoiced) == (D("123.000000000004"), D("126.45"))
    assert (june.rated, june.invoiced) == (D(40), D(0))
    assert usd.months[3].invoiced == D(0)  # void
    assert [(c.name, c.invoiced, c.outstanding) for c in usd.top_customers] == [
        ("Big Co", D("123.45"), D(0)),
        ("Small Co", D("3.00"), D("3.00")),
    ]


def test_credits_outstanding_and_expiring_within_30_days():
    customer = CustomerFactory()
    for amount, expires_at in (
        ("100", NOW + 10 * DAY),  # expiring
        ("40", NOW + 29 * DAY),  # expiring
        ("25", NOW + 31 * DAY),  # later
        ("5", None),  # never
    ):
        billing_credits.grant_credits(
            customer=customer,
            amount=D(amount),
            expires_at=expires_at,
            now=NOW,
            reference=unique("grant"),
        )
    figures = finance.credits(now=NOW)["CREDITS"]
    assert figures == {"outstanding": D(170), "expiring": D(140), "grants_expiring": 2}


# --- the page ----------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_superuser("fin", "fin@example.com", "pw")
    client.force_login(user)
    return client


def _populate(customers: int) -> None:
    """``customers`` customers, each with a subscription, model usage, an owed invoice,
    rated usage and a grant: every figure of the home has rows to read."""
    meter = Meter.objects.get(code=MeterFactory().code)
    plan = PlanFactory(base_fee="10", currency="USD")
    today = datetime.now().date()
    for index in range(customers):
        sub = _subscription(plan=plan, name=f"Customer {index}", start=at(2026, 1, 1))
        _model_usage(sub, day=today, model=f"m{index % 3}", amount="2", cost=str(index % 4))
        _invoice(sub, total="10", due_at=datetime.now(tz=NOW.tzinfo) - index * 7 * DAY)
        PeriodUsage.objects.create(
            subscription=sub,
            meter=meter,
            period_start=sub.current_period_start,
            period_end=sub.current_period_end,
            charged=D("1.5"),
            currency="USD",
        )
        billing_credits.grant_credits(
            customer=Customer.objects.get(pk=sub.customer_id),
            amount=D(3),
            expires_at=datetime.now(tz=NOW.tzinfo) + 5 * DAY,
            reference=unique("grant"),
        )


def _home_queries() -> int:
    """The queries computing the home's figures (the page reads them from the snapshot a
    refresh stores: tests/invoicing/test_finance_snapshot.py counts the page's)."""
    with CaptureQueriesContext(connection) as queries:
        finance.finance_home()
    return len(queries)


def test_home_query_count_does_not_grow_with_customers():
    _populate(2)
    few = _home_queries()
    _populate(18)
    many = _home_queries()
    print(f"finance home: {few} queries with 2 customers, {many} with 20")
    assert many == few, f"{few} queries with 2 customers, {many} with 20"
    assert few <= 13


def test_home_shows_the_figures_to_staff(staff_client):
    sub = _subscription(name="Losing Inc", plan=PlanFactory(base_fee="1234.5678", currency="USD"))
    today = datetime.now().date()
    _model_usage(sub, day=today, model="gpt-x", amount="1", cost="3.333333333333")
    _invoice(sub, total="1000.005", due_at=datetime.now(tz=NOW.tzinfo) - 45 * DAY)

    response = staff_client.get("/admin/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "<svg" in html and "Revenue per month" in html
    assert "1,234.57 USD" in html  # MRR, rounded to cents
    assert 'title="1,234.5678 USD (exact)"' in html  # the exact figure on hover
    assert "1,000.00 USD" in html  # half to even: 1000.005 → 1000.00
    assert "-2.33 USD" in html  # the negative margin
    assert 'class="negative"' in html
    assert "Losing Inc" in html and "openai/gpt-x" in html
    assert 'id="finance-reports"' in html
    assert "Ledger transactions" in html and "Customers" in html  # reports, then the models
    assert "E-12" not in html


def test_staff_without_invoice_permission_see_only_the_models(client):
    user = get_user_model().objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(user)
    response = client.get("/admin/")
    assert response.status_code == 200
    assert "Revenue per month" not in response.content.decode()


def test_customer_page_leads_with_balance_plan_open_invoices_and_usage(staff_client):
    plan = PlanFactory(name="Scale", base_fee="99", currency="USD")
    sub = _subscription(plan=plan, name="Summary Co", funds="1234.5678")
    now = datetime.now(tz=NOW.tzinfo)
    _invoice(sub, total="250.005", due_at=now - 3 * DAY)  # overdue
    meter = Meter.objects.get(code=MeterFactory().code)
    for back, amount in ((0, "1.25"), (2, "2.5"), (40, "1000")):  # the last: too old
        DailyUsage.objects.create(
            subscription=sub,
            customer_id=sub.customer_id,
            meter=meter,
            period_start=sub.current_period_start,
            day=now.date() - back * DAY,
            amount=D(amount),
            currency="USD",
            event_count=3,
        )

    response = staff_client.get(f"/admin/billing/customer/{sub.customer_id}/change/")

    assert response.status_code == 200
    html = response.content.decode()
    start = html.index('id="customer-summary"')
    summary = html[start : html.index("<fieldset", start)]  # above the first fieldset
    assert ">1,234.57 USD<" in summary  # balance available, rounded
    assert 'title="1,234.5678 USD (exact)"' in summary
    assert "Scale" in summary and "Active" in summary
    assert ">250.00 USD<" in summary and 'class="overdue"' in summary
    assert ">3.75 USD<" in summary and "6 events" in summary  # 30 days, not the 1000
