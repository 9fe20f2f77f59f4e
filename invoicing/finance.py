"""Finance reads: what the admin's finance home and a customer's page show.

Every figure comes from counters, rollups and invoices, never from raw events or ledger
entries, and every function runs a fixed number of queries, however many customers,
events or invoices there are (tests/invoicing/test_finance.py counts them):

- **rated** per month: ``metering.PeriodUsage.charged`` (what rating posted to the ledger)
  of the periods starting in that month;
- **invoiced** per month: the totals of finalized invoices (open, past due, paid) whose
  period starts in that month;
- **MRR**: the recurring base fees and prepaid commitments (committed recurring revenue:
  invoiced every period whatever the usage) of the subscription phases in effect at a
  moment, a yearly fee counted as a twelfth, trials left out; the change is against the MRR
  ``MRR_CHANGE_DAYS`` days earlier;
- **receivables**: what finalized, unpaid invoices still owe (due − paid − credited),
  aged by their due date (``AGING_BUCKETS``);
- **top customers**: by invoiced total over the window;
- **margin**: ``metering.MarginUsage`` (price charged and provider cost, summed by rating
  per customer and month and per day and model): by model and in total over the last
  ``MARGIN_DAYS`` days, by customer over the current UTC month, for usage charged in the catalog's
  currency only (``metering.alerts.CATALOG_CURRENCY``: the provider's cost is in it; usage
  charged in EUR or in credits has no cost in its own currency to compare with);
- **credits**: what active credit grants have left, and the part that expires in the next
  ``EXPIRING_DAYS`` days (breakage, unless it is used first).

Amounts are exact Decimals, per currency; presentation rounds them (``invoicing.money``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, DecimalField, F, Q, Sum, Value, Window
from django.db.models.functions import Coalesce, RowNumber, TruncMonth
from django.utils import timezone

from billing.models import (
    CreditGrant,
    Customer,
    GrantStatus,
    Subscription,
    SubscriptionPhase,
    SubscriptionStatus,
)
from billing.periods import MONTHS_PER_INTERVAL
from invoicing.models import FINAL_STATUSES, Invoice, InvoiceStatus
from invoicing.money import UNIT_PLACES
from metering.alerts import CATALOG_CURRENCY
from metering.models import DailyUsage, MarginUsage, PeriodUsage

ZERO = Decimal(0)
MONTHS = 6  # months of revenue shown, this one included
MRR_CHANGE_DAYS = 30
MARGIN_DAYS = 30
EXPIRING_DAYS = 30
TOP = 10  # rows of each ranked table, per currency
OWED = (InvoiceStatus.OPEN, InvoiceStatus.PAST_DUE)
# (key, label, days past due from, to): an invoice ``d`` whole-or-part days past its due
# date falls in the bucket whose range holds it; due now or later is current.
AGING_BUCKETS = (
    ("current", "Current", None, 0),
    ("d1_30", "1–30 days", 0, 30),
    ("d31_60", "31–60 days", 30, 60),
    ("d61_90", "61–90 days", 60, 90),
    ("d90_plus", "90+ days", 90, None),
)

_AMOUNT: DecimalField = DecimalField(max_digits=60, decimal_places=24)


@dataclass(frozen=True)
class Month:
    start: date
    rated: Decimal = ZERO
    invoiced: Decimal = ZERO


@dataclass(frozen=True)
class AgingBucket:
    key: str
    label: str
    amount: Decimal
    count: int


@dataclass(frozen=True)
class CustomerFigure:
    customer_id: int
    name: str
    external_id: str
    invoiced: Decimal
    outstanding: Decimal


@dataclass(frozen=True)
class Margin:
    label: str
    revenue: Decimal
    cost: Decimal
    customer_id: int | None = None

    @property
    def margin(self) -> Decimal:
        return self.revenue - self.cost

    @property
    def negative(self) -> bool:
        return self.margin < 0

    @property
    def percent(self) -> Decimal | None:
        """Margin as a share of the price charged (None when nothing was charged)."""
        return None if not self.revenue else self.margin * 100 / self.revenue


@dataclass
class CurrencyFinance:
    currency: str
    months: list[Month] = field(default_factory=list)
    mrr: Decimal = ZERO
    mrr_before: Decimal = ZERO
    aging: list[AgingBucket] = field(default_factory=list)
    top_customers: list[CustomerFigure] = field(default_factory=list)
    margin_total: Margin | None = None
    margin_by_customer: list[Margin] = field(default_factory=list)
    margin_by_model: list[Margin] = field(default_factory=list)
    credits_outstanding: Decimal = ZERO
    credits_expiring: Decimal = ZERO
    grants_expiring: int = 0

    @property
    def mrr_change(self) -> Decimal:
        return self.mrr - self.mrr_before

    @property
    def receivable(self) -> Decimal:
        return sum((b.amount for b in self.aging), ZERO)

    @property
    def overdue(self) -> Decimal:
        return sum((b.amount for b in self.aging if b.key != "current"), ZERO)


@dataclass(frozen=True)
class FinanceHome:
    as_of: datetime
    window_start: datetime
    margin_since: date
    currencies: list[CurrencyFinance]
    margin_month: date | None = None  # the month of the margin by customer


def month_starts(now: datetime, months: int = MONTHS) -> list[date]:
    """The first days of the last ``months`` UTC calendar months, oldest first, this one
    last."""
    year, month = now.astimezone(UTC).year, now.astimezone(UTC).month
    starts = []
    for _ in range(months):
        starts.append(date(year, month, 1))
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return starts[::-1]


def _first(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _day(value: Any) -> date:
    return value.date() if isinstance(value, datetime) else value


# --- the figures, one query each ---------------------------------------------------------------


def revenue_by_month(*, since: datetime) -> dict[tuple[str, date], dict[str, Decimal]]:
    """{(currency, month): {"rated": …, "invoiced": …}} for the periods starting since."""
    result: dict[tuple[str, date], dict[str, Decimal]] = defaultdict(
        lambda: {"rated": ZERO, "invoiced": ZERO}
    )
    rated = (
        PeriodUsage.objects.filter(period_start__gte=since)
        .exclude(currency="")
        .annotate(month=TruncMonth("period_start", tzinfo=UTC))
        .values("currency", "month")
        .annotate(total=Sum("charged"))
    )
    for row in rated:
        result[(row["currency"], _day(row["month"]))]["rated"] = row["total"] or ZERO
    invoiced = (
        Invoice.objects.filter(period_start__gte=since, status__in=FINAL_STATUSES)
        .annotate(month=TruncMonth("period_start", tzinfo=UTC))
        .values("currency", "month")
        .annotate(total=Sum("total"))
    )
    for row in invoiced:
        result[(row["currency"], _day(row["month"]))]["invoiced"] = row["total"] or ZERO
    return result


def _mrr_at(moment: datetime) -> Q:
    """The phases in effect at ``moment`` of subscriptions live and out of trial then."""
    return (
        Q(starts_at__lte=moment)
        & (Q(ends_at__isnull=True) | Q(ends_at__gt=moment))
        & Q(subscription__started_at__lte=moment)
        & (Q(subscription__ended_at__isnull=True) | Q(subscription__ended_at__gt=moment))
        & (Q(subscription__trial_ends_at__isnull=True) | Q(subscription__trial_ends_at__lte=moment))
    )


def mrr(*, now: datetime, before: datetime) -> dict[str, tuple[Decimal, Decimal]]:
    """{currency: (MRR now, MRR at ``before``)}: base fees and prepaid commitments (owed
    every period whatever the usage, in arrears or in advance alike; usage beyond one is
    not recurring) brought to a month — a yearly one / 12, a quarterly one / 3, every N
    months / N; a weekly one × 52 / 12 and a daily one × 365 / 12 (each over its
    interval_count)."""
    recurring = F("plan__base_fee") + Coalesce(
        "plan__commitment_amount", Value(ZERO), output_field=DecimalField()
    )
    rows = (
        SubscriptionPhase.objects.filter(_mrr_at(now) | _mrr_at(before))
        .values("plan__currency", "plan__interval", "plan__interval_count")
        .annotate(
            now=Sum(recurring, filter=_mrr_at(now), output_field=DecimalField()),
            before=Sum(recurring, filter=_mrr_at(before), output_field=DecimalField()),
        )
    )
    # The fees of one cadence are added first and brought to a month once: the twelfth of a
    # sum, not a sum of twelfths (exact either way at these precisions; fewer digits).
    result: dict[str, tuple[Decimal, Decimal]] = {}
    for row in rows:
        cadence = row["plan__interval"], row["plan__interval_count"]
        now_total, before_total = result.get(row["plan__currency"], (ZERO, ZERO))
        result[row["plan__currency"]] = (
            now_total + _a_month_of(row["now"] or ZERO, *cadence),
            before_total + _a_month_of(row["before"] or ZERO, *cadence),
        )
    return result


# Periods of a day or a week in a year (52 weeks, 365 days, as MRR is usually counted).
PER_YEAR = {"day": 365, "week": 52}


def _a_month_of(fee: Decimal, interval: str, count: int) -> Decimal:
    """A base fee per ``count`` × ``interval`` brought to a month."""
    if not fee:
        return ZERO
    if interval in MONTHS_PER_INTERVAL:
        months = MONTHS_PER_INTERVAL[interval] * count
        return fee if months == 1 else fee / months
    return fee * PER_YEAR[interval] / (12 * count)


def _remaining() -> Any:
    return F("amount_due") - F("amount_paid") - F("amount_credited")


def _aging_filters(now: datetime) -> list[tuple[str, str, Q]]:
    filters = []
    for key, label, start, end in AGING_BUCKETS:
        # d days past due: due_at in (now − end days, now − start days]; current: not due yet
        if start is None:
            condition = Q(due_at__isnull=True) | Q(due_at__gte=now)
        else:
            condition = Q(due_at__lt=now - timedelta(days=start))
            if end is not None:
                condition &= Q(due_at__gte=now - timedelta(days=end))
        filters.append((key, label, condition))
    return filters


def receivables(*, now: datetime) -> dict[str, list[AgingBucket]]:
    """{currency: the aging buckets}: what finalized, unpaid invoices still owe, by how
    long past their due date they are. An invoice due 30 days and one second ago is in
    31–60; one due exactly 30 days ago in 1–30."""
    filters = _aging_filters(now)
    aggregates: dict[str, Any] = {}
    for key, _label, condition in filters:
        aggregates[f"{key}_amount"] = Sum(_remaining(), filter=condition, output_field=_AMOUNT)
        aggregates[f"{key}_count"] = Count("id", filter=condition)
    rows = (
        Invoice.objects.filter(status__in=OWED)
        .exclude(amount_due=F("amount_paid") + F("amount_credited"))
        .values("currency")
        .annotate(**aggregates)
    )
    return {
        row["currency"]: [
            AgingBucket(key, label, row[f"{key}_amount"] or ZERO, row[f"{key}_count"])
            for key, label, _condition in filters
        ]
        for row in rows
    }


def _names(customer_ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """{id: (name, external_id)} of the ranked customers, read after ranking: grouping the
    window's rows by id alone, not by id, name and external id, halves the aggregate over
    customers × days (and keeps it in memory)."""
    return {
        pk: (name, external_id)
        for pk, name, external_id in Customer.objects.filter(pk__in=set(customer_ids)).values_list(
            "pk", "name", "external_id"
        )
    }


def top_customers(*, since: datetime, limit: int = TOP) -> dict[str, list[CustomerFigure]]:
    """{currency: the ``limit`` customers invoiced most for periods since ``since``}."""
    rows = (
        Invoice.objects.filter(period_start__gte=since, status__in=FINAL_STATUSES)
        .values("currency", "customer_id")
        .annotate(
            invoiced=Sum("total"),
            outstanding=Coalesce(
                Sum(_remaining(), filter=Q(status__in=OWED), output_field=_AMOUNT),
                Value(ZERO),
                output_field=_AMOUNT,
            ),
        )
        .annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("currency")],
                order_by=[F("invoiced").desc(), F("customer_id").asc()],
            )
        )
        .filter(rank__lte=limit)
        .order_by("currency", "rank")
    )
    result: dict[str, list[CustomerFigure]] = defaultdict(list)
    ranked = list(rows)
    names = _names(row["customer_id"] for row in ranked)
    for row in ranked:
        name, external_id = names[row["customer_id"]]
        result[row["currency"]].append(
            CustomerFigure(
                customer_id=row["customer_id"],
                name=name,
                external_id=external_id,
                invoiced=row["invoiced"],
                outstanding=row["outstanding"],
            )
        )
    return result


def margin_by_customer(*, month: date, limit: int = TOP) -> dict[str, list[Margin]]:
    """{currency: the ``limit`` customers with the lowest margin in the UTC month starting
    ``month``} (the negative ones first), from ``MarginUsage``'s row per customer and
    month: one row a customer, not one a customer, day and model."""
    rows = (
        MarginUsage.objects.filter(customer__isnull=False, day=month, currency=CATALOG_CURRENCY)
        .annotate(margin=F("amount") - F("cost"))
        .order_by("margin", "customer_id")
        .values("currency", "customer_id", "amount", "cost")[:limit]
    )
    result: dict[str, list[Margin]] = defaultdict(list)
    ranked = list(rows)
    names = _names(row["customer_id"] for row in ranked)
    for row in ranked:
        name, external_id = names[row["customer_id"]]
        result[row["currency"]].append(
            Margin(
                label=name or external_id,
                revenue=row["amount"],
                cost=row["cost"],
                customer_id=row["customer_id"],
            )
        )
    return result


def margin_by_model(*, since: date) -> dict[str, list[Margin]]:
    """{currency: every model used since ``since``, the lowest margin first}, from
    ``MarginUsage``'s rows per day and model (at most days × models × its slots, whatever
    the number of customers)."""
    rows = (
        MarginUsage.objects.filter(customer__isnull=True, day__gte=since, currency=CATALOG_CURRENCY)
        .values("currency", "provider", "model")
        .annotate(revenue=Sum("amount"), spent=Sum("cost"))
        .order_by("currency", "provider", "model")
    )
    result: dict[str, list[Margin]] = defaultdict(list)
    for row in rows:
        result[row["currency"]].append(
            Margin(
                label=f"{row['provider']}/{row['model']}", revenue=row["revenue"], cost=row["spent"]
            )
        )
    for margins in result.values():
        margins.sort(key=lambda m: (m.margin, m.label))
    return result


def credits(*, now: datetime, expiring_days: int = EXPIRING_DAYS) -> dict[str, dict[str, Any]]:
    """{currency: outstanding, expiring, grants_expiring}: what active grants have left,
    and the part of it that expires within ``expiring_days``."""
    soon = Q(expires_at__gte=now, expires_at__lt=now + timedelta(days=expiring_days))
    grants = (
        CreditGrant.objects.filter(status=GrantStatus.ACTIVE)
        .values("currency")
        .annotate(
            outstanding=Sum("remaining"),
            expiring=Sum("remaining", filter=soon),
            grants_expiring=Count("id", filter=soon & Q(remaining__gt=0)),
        )
    )
    return {
        row["currency"]: {
            "outstanding": row["outstanding"] or ZERO,
            "expiring": row["expiring"] or ZERO,
            "grants_expiring": row["grants_expiring"],
        }
        for row in grants
    }


# --- the finance home --------------------------------------------------------------------------


def finance_home(*, now: datetime | None = None, months: int = MONTHS) -> FinanceHome:
    """Everything the finance home shows, per currency, in a fixed number of queries."""
    now = now or timezone.now()
    starts = month_starts(now, months)
    window_start = _first(starts[0])
    margin_since = now.astimezone(UTC).date() - timedelta(days=MARGIN_DAYS - 1)

    revenue = revenue_by_month(since=window_start)
    recurring = mrr(now=now, before=now - timedelta(days=MRR_CHANGE_DAYS))
    aging = receivables(now=now)
    top = top_customers(since=window_start)
    margin_month = now.astimezone(UTC).date().replace(day=1)
    by_customer = margin_by_customer(month=margin_month)
    by_model = margin_by_model(since=margin_since)
    credit = credits(now=now)

    codes = (
        {currency for currency, _month in revenue}
        | set(recurring)
        | set(aging)
        | set(by_model)
        | set(credit)
    )
    currencies = []
    # currencies first, then the units that are not money (credits), each alphabetically
    for code in sorted(codes, key=lambda c: (c in UNIT_PLACES, c)):
        figures = CurrencyFinance(currency=code)
        figures.months = [
            Month(start=start, **revenue.get((code, start), {"rated": ZERO, "invoiced": ZERO}))
            for start in starts
        ]
        figures.mrr, figures.mrr_before = recurring.get(code, (ZERO, ZERO))
        figures.aging = aging.get(code) or [
            AgingBucket(key, label, ZERO, 0) for key, label, _s, _e in AGING_BUCKETS
        ]
        figures.top_customers = top.get(code, [])
        figures.margin_by_customer = by_customer.get(code, [])
        figures.margin_by_model = by_model.get(code, [])
        if figures.margin_by_model:
            figures.margin_total = Margin(
                label="all models",
                revenue=sum((m.revenue for m in figures.margin_by_model), ZERO),
                cost=sum((m.cost for m in figures.margin_by_model), ZERO),
            )
        if code in credit:
            figures.credits_outstanding = credit[code]["outstanding"]
            figures.credits_expiring = credit[code]["expiring"]
            figures.grants_expiring = credit[code]["grants_expiring"]
        currencies.append(figures)
    return FinanceHome(
        as_of=now,
        window_start=window_start,
        margin_since=margin_since,
        currencies=currencies,
        margin_month=margin_month,
    )


# --- one customer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageDay:
    day: date
    currency: str
    amount: Decimal
    events: int


def open_invoices(customer: Customer, *, limit: int = 5) -> list[Invoice]:
    """The customer's finalized invoices still owed, the oldest due first."""
    return list(
        Invoice.objects.filter(customer=customer, status__in=OWED)
        .exclude(amount_due=F("amount_paid") + F("amount_credited"))
        .order_by(F("due_at").asc(nulls_last=True), "id")[:limit]
    )


def recent_usage(
    customer: Customer, *, now: datetime | None = None, days: int = 30
) -> list[UsageDay]:
    """The customer's rated usage per UTC day and currency over the last ``days`` days,
    from the daily counters (index on customer and day)."""
    now = now or timezone.now()
    since = now.astimezone(UTC).date() - timedelta(days=days - 1)
    rows = (
        DailyUsage.objects.filter(customer=customer, day__gte=since)
        .exclude(currency="")
        .values("day", "currency")
        .annotate(amount=Sum("amount"), events=Sum("event_count"))
        .order_by("day", "currency")
    )
    return [
        UsageDay(day=r["day"], currency=r["currency"], amount=r["amount"], events=r["events"])
        for r in rows
    ]


def live_subscription(customer: Customer) -> Subscription | None:
    return (
        Subscription.objects.filter(customer=customer)
        .exclude(status=SubscriptionStatus.CANCELED)
        .select_related("plan")
        .first()
    )
