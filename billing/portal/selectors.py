"""Reads of the portal, always within one customer: its live subscription, the current
period at a glance (meters used, spent, the invoice as it stands and its projection),
the usage by day and by model, recent events and the usage export, credits that ended
grants lost, invoices. Amounts are exact Decimals (the views format them), except where a
rule of money says otherwise (``split_to_minor_units``, ``projected``)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from django.db.models import F, Func, Q, QuerySet, Subquery, Sum
from django.utils import timezone

from billing import selectors as billing_selectors
from billing.models import (
    AllocationKind,
    AutoTopUp,
    AutoTopUpAttempt,
    BillingMode,
    ConsumptionModel,
    CreditAllocation,
    Customer,
    Plan,
    Subscription,
    SubscriptionStatus,
)
from invoicing import charge_periods
from invoicing.models import Invoice, InvoiceStatus, LineKind
from invoicing.money import minor_unit_exponent, to_minor_unit
from invoicing.selectors import compute_invoice
from ledger.models import Balance
from metering import rating
from metering.models import DailyUsage, Event, ModelUsage, PeriodUsage

ZERO = Decimal(0)
CREDITS = "CREDITS"
OTHER_USAGE = "Other usage"  # the by-model table's row for usage no LLM model carries
RECENT_EVENTS = 25
RECENT_AUTO_TOP_UP_ATTEMPTS = 5
EXPORT_DAYS_WITHOUT_SUBSCRIPTION = 90


def live_subscription(customer: Customer) -> Subscription | None:
    return (
        Subscription.objects.select_related("plan", "customer")
        .filter(customer=customer)
        .exclude(status=SubscriptionStatus.CANCELED)
        .first()
    )


def live_version(customer: Customer) -> str:
    """Changes whenever anything the live fragments show changes: an ETag. Read on every
    poll, so each part is a few rows by index, whatever the customer's history: the version
    of its wallets' balance rows (every posting), the newest event by (timestamp, id) — the
    first row of the (customer, timestamp) index, as the events fragment lists them — and
    the current period's counters (count and last change: an event arriving late, older
    than the newest, still moves them). It used to be MAX(id) over all the customer's
    events: every one of them read on every poll; and then three queries, now one."""
    # one round trip: each part an uncorrelated subquery of its own (a poll every second)
    one_row = Customer.objects.filter(pk=customer.pk).values("pk")
    balance = (
        Balance.objects.filter(account_id__in=customer.wallets.values("account_id"))
        .annotate(v=Func(F("version"), function="SUM"))
        .values("v")
    )
    newest = Event.objects.filter(customer=customer).order_by("-timestamp", "-id")[:1]
    counters = PeriodUsage.objects.filter(
        subscription__customer=customer,
        period_start=F("subscription__current_period_start"),
    )
    row = one_row.annotate(
        balance=Subquery(balance),
        newest_at=Subquery(newest.values("timestamp")),
        newest_id=Subquery(newest.values("id")),
        n=Subquery(counters.annotate(n=Func(F("event_count"), function="SUM")).values("n")),
        at=Subquery(counters.annotate(at=Func(F("updated_at"), function="MAX")).values("at")),
    ).values("balance", "newest_at", "newest_id", "n", "at")[0]
    stamp = ":".join(str(row[part]) for part in ("balance", "newest_at", "newest_id", "n", "at"))
    return hashlib.sha256(stamp.encode()).hexdigest()[:16]


def wallet_balances(customer: Customer) -> list[dict[str, Any]]:
    """Each wallet's balance now (``currency``, ``posted``, ``held``, ``available``), by
    currency: what the overview shows of ``metering.selectors.customer_balance`` — in two
    queries, without the allowances and credits it reads too (and the overview reads
    again from the period's own counters)."""
    wallets = list(customer.wallets.select_related("account").order_by("currency"))
    views = billing_selectors.wallet_balances([wallet.account for wallet in wallets])
    return [
        {
            "currency": view.currency,
            "posted": view.posted,
            "held": view.held,
            "available": view.available,
        }
        for view in (views[wallet.account_id] for wallet in wallets)
    ]


def period_overview(subscription: Subscription) -> dict[str, Any]:
    """The subscription's current period: ``meters`` (each charged meter, the quantity used
    and the quantity the plan includes), ``spent`` (the usage charged so far in the plan's
    money), ``upcoming`` (the invoice total as it stands) and ``projected``: that total plus
    the usage so far continued at the same pace to the period end, with its tax (a period
    that has ended but is not closed yet projects no further), the usage to come filling
    the minimums' shortfalls and a commitment's rest first (``_usage_to_come``)."""
    charges = {c.meter_id: c for c in subscription.plan.charges.select_related("meter")}
    # read once, as compute_invoice reads them (with their meters, by meter): it is given
    # them. A charge on its own cadence (a quarter) shows its charge period's quantity; its
    # counter is on this invoice only when the charge period ends with it.
    own = charge_periods.own_charge_periods(
        subscription,
        rating.plan_terms(subscription.plan_id),
        subscription.current_period_start,
        subscription.current_period_end,
    )
    shown = [
        c
        for c in charge_periods.read_counters(
            subscription, subscription.current_period_start, own
        )
        if charge_periods.role(c, own, subscription.current_period_start) is not None
    ]
    counters = [
        c
        for c in shown
        if charge_periods.role(c, own, subscription.current_period_start)
        == charge_periods.INVOICED
    ]
    used = {c.meter_id: c for c in shown}
    meters = [
        {
            "meter": charge.meter,
            "quantity": used[meter_id].quantity if meter_id in used else ZERO,
            "included": charge.included_quantity,
        }
        for meter_id, charge in charges.items()
    ]
    money = subscription.plan.currency
    spent = sum((c.charged for c in counters if c.currency == money), ZERO)
    upcoming = compute_invoice(
        subscription=subscription,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
        counters=counters,
    )
    start, end = subscription.current_period_start, subscription.current_period_end
    elapsed = max(timezone.now() - start, timedelta(seconds=1))
    factor = max(
        Decimal(1),
        Decimal((end - start) // timedelta(seconds=1)) / Decimal(elapsed // timedelta(seconds=1)),
    )
    left = commitment_left(upcoming.lines)
    to_come = _usage_to_come(counters, money, factor, upcoming.lines, left)
    more = to_come * (1 + upcoming.tax_percentage / 100)
    return {
        "currency": money,
        "period_start": start,
        "period_end": end,
        "meters": meters,
        "spent": spent,
        "upcoming": upcoming.total,
        "commitment_left": left if any(ln.kind == "commitment" for ln in upcoming.lines) else None,
        # the upcoming invoice's own rule (the plan's, the currency's, half even), as its lines
        "projected": upcoming.total + to_minor_unit(more, money, upcoming.rounding_rule),
    }


def _usage_to_come(
    counters: list[PeriodUsage], money: str, factor: Decimal, lines: list, left: Decimal
) -> Decimal:
    """What the usage still to come (each meter's so far × ``factor`` − 1) adds to the
    upcoming invoice: the invoice already owes the minimums' shortfalls and a commitment's
    rest, so usage to come fills a charge's shortfall first (that charge's usage only),
    then the plan's shortfall, then what is ``left`` of a commitment; only the rest adds."""
    by_meter: dict[int, Decimal] = {}
    for counter in counters:
        if counter.currency == money:
            by_meter[counter.meter_id] = by_meter.get(counter.meter_id, ZERO) + counter.charged
    short = [line for line in lines if line.kind == LineKind.MINIMUM]
    charge_short = {line.meter_id: line.amount_precise for line in short if line.meter_id}
    plan_short = sum((line.amount_precise for line in short if not line.meter_id), ZERO)
    more = sum(
        (
            max(spent * (factor - 1) - charge_short.get(meter_id, ZERO), ZERO)
            for meter_id, spent in by_meter.items()
        ),
        ZERO,
    )
    return max(more - plan_short - left, ZERO)


def commitment_left(lines: list) -> Decimal:
    """What usage has not drawn yet of the period's prepaid commitment (exact; 0 without
    one): the draw-down line's ``left`` (``invoicing.commitments.commitment_lines``)."""
    return sum(
        (Decimal(ln.metadata["left"]) for ln in lines if "left" in ln.metadata),
        ZERO,
    )


def recent_events(customer: Customer, limit: int = RECENT_EVENTS) -> QuerySet[Event]:
    return (
        Event.objects.filter(customer=customer)
        .select_related("ledger_transaction")
        .order_by("-timestamp", "-id")[:limit]
    )


def usage_unit(plan: Plan) -> str:
    """What the customer's usage is charged in: its credits on a credits plan (never shown
    as the plan's money), else the plan's currency."""
    return CREDITS if plan.consumption_model == ConsumptionModel.CREDITS else plan.currency


def split_to_minor_units(amounts: list[Decimal], total: Decimal, currency: str) -> list[Decimal]:
    """``amounts`` (exact, adding up to ``total``) rounded to the currency's minor unit so
    that they add up to ``total`` rounded (half-even, as everywhere): each floored, and the
    units left over given one each to the largest remainders (the first on a tie)."""
    quantum = Decimal(1).scaleb(-minor_unit_exponent(currency))
    floors = [amount.quantize(quantum, rounding=ROUND_FLOOR) for amount in amounts]
    left = int((to_minor_unit(total, currency) - sum(floors, Decimal(0))) / quantum)
    by_remainder = sorted(range(len(amounts)), key=lambda i: (floors[i] - amounts[i], i))
    for i in by_remainder[:left]:
        floors[i] += quantum
    return floors


def period_usage(subscription: Subscription) -> dict[str, Any]:
    """This period's usage in the unit the customer is charged in (``unit``): ``days``
    (charges and events by day), ``models`` (tokens and charges by model and day),
    ``rows`` (by model, largest first, ``tokens`` None on an "other usage" row for usage of
    meters no model carries) and ``total``, the period's usage as the ledger charged it:
    each event's charge is what its period counters' rounded totals moved, so the rows add
    up to it."""
    start, unit = subscription.current_period_start, usage_unit(subscription.plan)
    days = (
        DailyUsage.objects.filter(subscription=subscription, period_start=start, currency=unit)
        .values("day")
        .annotate(amount=Sum("amount"), events=Sum("event_count"))
        .order_by("day")
    )
    by_model = ModelUsage.objects.filter(
        subscription=subscription, period_start=start, currency=unit
    )
    tokens = (
        Sum("input_tokens")
        + Sum("cache_read_tokens")
        + Sum("cache_write_tokens")
        + Sum("output_tokens")
    )
    models = (
        by_model.values("model", "day")
        .annotate(amount=Sum("amount"), tokens=tokens)
        .order_by("day", "model")
    )
    totals = list(
        by_model.values("model")
        .annotate(amount=Sum("amount"), tokens=tokens)
        .order_by("-amount", "model")
    )
    total = (
        PeriodUsage.objects.filter(
            Q(currency=unit) | Q(currency=""), subscription=subscription, period_start=start
        ).aggregate(total=Sum("charged"))["total"]
        or ZERO
    )
    rows: list[dict[str, Any]] = [
        {"model": t["model"], "tokens": t["tokens"], "amount": t["amount"]} for t in totals
    ]
    other = total - sum((t["amount"] for t in totals), ZERO)
    if other:
        rows.append({"model": OTHER_USAGE, "tokens": None, "amount": other})
    return {"unit": unit, "total": total, "rows": rows, "days": days, "models": models}


def usage_export(customer: Customer) -> tuple[datetime, QuerySet[Event]]:
    """The events a usage export holds, oldest first, and since when: the current period's
    start, or the last 90 days for a customer without a live subscription."""
    since = timezone.now() - timedelta(days=EXPORT_DAYS_WITHOUT_SUBSCRIPTION)
    subscription = live_subscription(customer)
    if subscription is not None:
        since = subscription.current_period_start
    events = Event.objects.filter(customer=customer, timestamp__gte=since).order_by(
        "timestamp", "id"
    )
    return since, events


def credits_lost_by_grant(customer: Customer) -> dict[int, Decimal]:
    """What ended grants lost (expired or withdrawn) rather than spent, by grant id."""
    return dict(
        CreditAllocation.objects.filter(
            grant__customer=customer, kind__in=[AllocationKind.EXPIRY, AllocationKind.VOID]
        )
        .values("grant_id")
        .annotate(total=Sum("amount"))
        .values_list("grant_id", "total")
    )


def customer_invoices(customer: Customer) -> QuerySet[Invoice]:
    """The customer's invoices, newest period first; drafts are not theirs to see yet."""
    return (
        Invoice.objects.filter(customer=customer)
        .exclude(status=InvoiceStatus.DRAFT)
        .order_by("-period_start", "-id")
    )


def customer_invoice(customer: Customer, invoice_id: int) -> Invoice | None:
    """One of the customer's invoices (not a draft), or None: another customer's id is no
    different from an unknown one."""
    return (
        Invoice.objects.filter(pk=invoice_id, customer=customer)
        .exclude(status=InvoiceStatus.DRAFT)
        .first()
    )


def auto_top_ups(customer: Customer) -> list[dict[str, Any]]:
    """Each prepaid wallet of the customer with its auto top-up settings (``None``: never
    set) and its latest attempts, newest first."""
    wallets = list(customer.wallets.filter(billing_mode=BillingMode.PREPAID).order_by("currency"))
    settings = {a.wallet_id: a for a in AutoTopUp.objects.filter(customer=customer)}
    return [
        {
            "wallet": wallet,
            "settings": settings.get(wallet.pk),
            "attempts": list(
                AutoTopUpAttempt.objects.filter(customer=customer, wallet=wallet).order_by("-id")[
                    :RECENT_AUTO_TOP_UP_ATTEMPTS
                ]
            ),
        }
        for wallet in wallets
    ]


def self_serve_plans(subscription: Subscription) -> list[Plan]:
    """The plans the customer may switch to here: the latest version of each plan offered
    in the portal (``Plan.self_serve``) in the subscription's currency and interval, except
    the plan it is on."""
    current = subscription.plan
    latest = (
        Plan.objects.filter(
            self_serve=True,
            currency=current.currency,
            interval=current.interval,
            interval_count=current.interval_count,
            charges_interval=current.charges_interval,
            charges_interval_count=current.charges_interval_count,
        )
        .exclude(code=current.code)
        .order_by("code", "-version")
        .distinct("code")
    )
    return sorted(latest, key=lambda plan: (plan.base_fee, plan.code))


def self_serve_plan(subscription: Subscription, plan_id: int) -> Plan | None:
    return next((p for p in self_serve_plans(subscription) if p.pk == plan_id), None)


def last_subscription(customer: Customer) -> Subscription | None:
    """The customer's latest subscription, whatever its status."""
    return (
        Subscription.objects.select_related("plan", "scheduled_plan")
        .filter(customer=customer)
        .order_by("-started_at", "-id")
        .first()
    )
