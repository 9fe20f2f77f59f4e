"""Reads of metering: usage events as the API lists them, a customer's balance with the
allowances its counters have used, estimates of what usage would cost now, usage and its
worth per meter and per model, and the model prices in force."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, F, Q, QuerySet, Sum
from django.utils import timezone

from billing import projects
from billing.errors import BillingError, CustomerNotFound, ValidationFailed
from billing.models import Customer, Meter, Subscription, SubscriptionStatus
from billing.selectors import customer_credits
from ledger import selectors as ledger_selectors
from metering import errors, rating
from metering.models import (
    DailyUsage,
    Event,
    IncomingEvent,
    ModelPrice,
    ModelUsage,
    PeriodUsage,
)
from metering.rating.terms import charge_period, plan_terms

MAX_USAGE_DAYS = 400  # the longest range a usage report covers


def list_events(
    *,
    customer: Customer,
    since: datetime | None = None,
    until: datetime | None = None,
    event_name: str | None = None,
) -> QuerySet[Event]:
    """The customer's events stamped in [``since``, ``until``), newest first: by
    ``timestamp`` then ``id``, both descending (a unique key, so pages neither repeat nor
    skip a row). The (customer, timestamp) index serves the filter and the order."""
    events = (
        Event.objects.filter(customer=customer)
        .select_related("model_price", "project")
        .order_by("-timestamp", "-id")
    )
    if since is not None:
        events = events.filter(timestamp__gte=since)
    if until is not None:
        events = events.filter(timestamp__lt=until)
    if event_name is not None:
        events = events.filter(event_name=event_name)
    return events


def events_after(events: QuerySet[Event], *, after: Event) -> QuerySet[Event]:
    """The events of ``events`` that come after ``after`` in its newest-first order. The
    redundant ``timestamp <= t`` bounds the index scan; the rest breaks ties by id."""
    return events.filter(
        Q(timestamp__lte=after.timestamp)
        & (Q(timestamp__lt=after.timestamp) | Q(timestamp=after.timestamp, id__lt=after.pk))
    )


def event_cursor(*, event_id: int, customer: Customer) -> Event | None:
    """The customer's event a page continues after; None if it has no such event."""
    return Event.objects.filter(pk=event_id, customer=customer).only("id", "timestamp").first()


def event_exists(*, customer: Customer, idempotency_key: str) -> bool:
    return Event.objects.filter(customer=customer, idempotency_key=idempotency_key).exists()


def list_incoming(
    *,
    customer: Customer,
    status: str | None = None,
    idempotency_key: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    event_name: str | None = None,
) -> QuerySet[IncomingEvent]:
    """The customer's events accepted asynchronously and not rated (pending, or refused by
    rating), newest arrival first."""
    rows = IncomingEvent.objects.filter(customer=customer).order_by("-id")
    if status is not None:
        rows = rows.filter(status=status)
    if idempotency_key is not None:
        rows = rows.filter(idempotency_key=idempotency_key)
    if since is not None:
        rows = rows.filter(timestamp__gte=since)
    if until is not None:
        rows = rows.filter(timestamp__lt=until)
    if event_name is not None:
        rows = rows.filter(event_name=event_name)
    return rows


def customer_balance(customer: Customer) -> dict[str, Any]:
    """Wallet balances (posted, held, available), live credit grants and, for the live
    subscription's current period, each metered allowance with what the counters used."""
    balances = []
    credit_wallets = []  # read once: the credits below show the same balance as the list
    for wallet in customer.wallets.select_related("account").order_by("currency"):
        view = ledger_selectors.get_balance(account=wallet.account)
        if wallet.currency == "CREDITS":
            credit_wallets.append((wallet, view))
        balances.append(
            {
                "currency": view.currency,
                "posted": view.posted,
                "held": view.held,
                "available": view.available,
            }
        )
    allowances = []
    live = customer.subscriptions.exclude(status="canceled").select_related("plan").first()
    if live is not None:
        # a charge on its own cadence: its allowance is per charge period (a quarter)
        period = (live.current_period_start, live.current_period_end)
        in_trial = live.trial_ends_at is not None and period[0] < live.trial_ends_at
        starts = {
            meter_id: charge_period(live, charge, period, in_trial, period[0])[0]
            for meter_id, charge in plan_terms(live.plan_id).charges.items()
        }
        used_by_meter = {
            meter_id: quantity
            for meter_id, start, quantity in PeriodUsage.objects.filter(
                subscription=live, period_start__in={period[0], *starts.values()}
            ).values_list("meter_id", "period_start", "quantity")
            if start == starts.get(meter_id, period[0])
        }
        for charge in live.plan.charges.select_related("meter").order_by("id"):
            used = min(used_by_meter.get(charge.meter_id, Decimal(0)), charge.included_quantity)
            allowances.append(
                {
                    "meter": charge.meter.code,
                    "included": charge.included_quantity,
                    "used": used,
                    "remaining": max(charge.included_quantity - used, 0),
                }
            )
    credits = []
    for grants in customer_credits(customer, wallets=credit_wallets):
        credits += [
            {
                "grant_id": g.pk,
                "name": g.name,
                "source": g.source,
                "priority": g.priority,
                "currency": g.currency,
                "granted": g.amount,
                "remaining": g.remaining,
                "expires_at": g.expires_at,
            }
            for g in grants["live"]
        ]
        if grants["ungranted"] > 0:
            credits.append(
                {
                    "grant_id": None,
                    "name": "Credits outside any grant",
                    "source": None,
                    "priority": None,
                    "currency": grants["currency"],
                    "granted": None,
                    "remaining": grants["ungranted"],
                    "expires_at": None,
                }
            )
    return {
        "customer": customer.external_id,
        "balances": balances,
        "credits": credits,
        "allowances": allowances,
    }


# --- estimates: authorize and holds -----------------------------------------------------------


@dataclass(frozen=True)
class EstimateRequest:
    """What to price for ``customer`` (an external id): an ``amount``, or an LLM call of
    ``model`` with token estimates (``rating.estimate``'s inputs)."""

    customer: str
    amount: Decimal | None = None
    currency: str | None = None
    model: str | None = None
    provider: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    event_name: str | None = None
    project: str | None = None  # a project's key: its budget is checked too


def estimate_usage(*, request: EstimateRequest) -> rating.Estimate:
    """``rating.estimate`` for the customer of this external id: what the usage would be
    charged now and whether its wallet may spend that. Nothing is written or locked."""
    try:
        return _estimate(request)
    except errors.UnknownModel as error:  # the request's field, not an event's
        error.param = "model"
        raise


def _estimate(request: EstimateRequest) -> rating.Estimate:
    loaded = rating.load_customers(external_ids=[request.customer]).get(request.customer)
    if loaded is None:
        raise CustomerNotFound(
            f"no customer with external_id {request.customer!r}", param="customer"
        )
    customer, subscription = loaded
    result = rating.estimate(
        customer=customer,
        subscription=subscription,
        amount=request.amount,
        currency=request.currency,
        model=request.model,
        provider=request.provider,
        input_tokens=request.input_tokens,
        output_tokens=request.output_tokens,
        event_name=request.event_name,
    )
    if request.project is None:
        return result
    return _within_budget(result, customer, request.project)


def _within_budget(result: rating.Estimate, customer, key: str) -> rating.Estimate:
    """The estimate refused (``project_archived``, ``budget_exceeded``) when the project
    may not take it; an unknown project is ``ProjectNotFound``."""
    project = projects.get_project(customer=customer, key=key, param="project")
    if not result.allowed:  # the wallet's reason stands
        return result
    try:
        projects.check_budget(project=project, amount=result.amount)
    except BillingError as refusal:
        return dataclasses.replace(result, allowed=False, reason=refusal.code)
    return result


# --- usage report: usage and its worth per meter and per model ----------------------------------


@dataclass(frozen=True)
class UsageGroup:
    value: Any  # the meter dimension's value (None: usage without it)
    quantity: Decimal
    amount: Decimal  # rounded to the ledger's scale


@dataclass(frozen=True)
class MeterUsage:
    meter: Meter
    currency: str
    quantity: Decimal
    included_quantity: Decimal  # inside the plan's allowance
    amount: Decimal  # rounded to the ledger's scale
    groups: list[UsageGroup] | None  # with group_by: one per value, by its text

    @property
    def overage_quantity(self) -> Decimal:
        return self.quantity - self.included_quantity


@dataclass(frozen=True)
class ModelUsageTotal:
    provider: str
    model: str
    currency: str
    events: int
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    amount: Decimal  # charged
    cost: Decimal  # the provider's cost, USD
    margin: Decimal | None  # amount − cost; None unless charged in USD


@dataclass(frozen=True)
class UsageReport:
    customer: Customer
    range_from: datetime  # the range the counters cover: [range_from, range_to)
    range_to: datetime
    meters: list[MeterUsage]  # by meter code
    totals: dict[str, Decimal]  # the meters' rounded amounts per currency, by currency
    models: list[ModelUsageTotal]  # by provider, model


def usage_report(
    *,
    customer: Customer,
    start: datetime | None = None,
    end: datetime | None = None,
    group_by: str | None = None,
) -> UsageReport:
    """The customer's usage read from the counters. With neither ``start`` nor ``end``: the
    current billing period exactly (with no live subscription, the last period of the latest
    one). Otherwise whole UTC days, ``start`` inclusive and ``end`` exclusive (a time inside
    a day includes that day); a missing ``start`` is the period's start, a missing ``end``
    the period's end (without ``start``) or now. ``group_by`` splits each meter by one of
    its dimensions.

    Refused (``param`` naming the API's query parameter): no ``start`` for a customer that
    never subscribed, an empty or reversed range, a range given of more than ``MAX_USAGE_DAYS``
    days (the default, the current period, is never refused for its length), and a
    ``group_by`` no meter of this usage has."""
    start_given, end_given = start is not None, end is not None
    # The default period: the live subscription's current one, else the last period of the
    # customer's latest subscription (a canceled one's counters stay readable).
    subscription = (
        Subscription.objects.filter(customer=customer)
        .exclude(status=SubscriptionStatus.CANCELED)
        .first()
    ) or Subscription.objects.filter(customer=customer).order_by("-started_at", "-pk").first()
    whole_period = not start_given and not end_given
    if start is None:
        if subscription is None:
            raise errors.NoUsagePeriod(
                f"customer {customer.external_id} has no subscription, so no current period: "
                "give from (and to)",
                param="from",
            )
        start = subscription.current_period_start
        if end is None:
            end = subscription.current_period_end
    elif end is None:
        end = timezone.now()
    if end <= start:
        raise ValidationFailed(
            "to must be after from" if end_given else "from must lie in the past",
            param="to" if end_given else "from",
        )
    if not whole_period and end - start > timedelta(days=MAX_USAGE_DAYS):
        # A range the caller chose; the current period is read whole, however long its plan's
        # interval (up to five years), from its own counters.
        raise ValidationFailed(f"at most {MAX_USAGE_DAYS} days at a time", param="to")
    first_day = start.date()
    last_day = (end - timedelta(microseconds=1)).date()
    if whole_period:
        # The current period exactly: its counters, whatever days it spans.
        scope: dict[str, Any] = {"subscription": subscription, "period_start": start}
        range_from, range_to = start, end
    else:
        scope = {"customer": customer, "day__gte": first_day, "day__lte": last_day}
        range_from = datetime.combine(first_day, time(), tzinfo=UTC)
        range_to = datetime.combine(last_day + timedelta(days=1), time(), tzinfo=UTC)
    meters = _meter_usage(scope, group_by)
    totals: dict[str, Decimal] = {}
    for usage in meters:
        totals[usage.currency] = totals.get(usage.currency, Decimal(0)) + usage.amount
    return UsageReport(
        customer=customer,
        range_from=range_from,
        range_to=range_to,
        meters=meters,
        totals=dict(sorted(totals.items())),
        models=_model_usage(scope),
    )


@dataclass(frozen=True)
class ProjectUsage:
    project: str | None  # the project's key; None: usage naming no project
    currency: str
    events: int
    amount: Decimal  # charged, exact


def usage_by_project(*, customer: Customer, start: datetime, end: datetime) -> list[ProjectUsage]:
    """The customer's events stamped in [start, end) summed per project (its key) and
    currency; usage without a project last (``GET /customers/{id}/usage?group_by=project``)."""
    rows = (
        Event.objects.filter(customer=customer, timestamp__gte=start, timestamp__lt=end)
        .values("project__key", "currency")
        .annotate(events=Count("id"), amount=Sum("amount"))
        .order_by(F("project__key").asc(nulls_last=True), "currency")
    )
    return [
        ProjectUsage(row["project__key"], row["currency"], row["events"], row["amount"])
        for row in rows
    ]


def _meter_usage(scope: dict[str, Any], group_by: str | None) -> list[MeterUsage]:
    daily = DailyUsage.objects.filter(**scope)
    meters = {m.pk: m for m in Meter.objects.filter(pk__in=daily.values("meter_id"))}
    if group_by and not any(group_by in (m.group_by or []) for m in meters.values()):
        if meters:
            raise ValidationFailed(
                f"no meter of this usage is split by {group_by!r}", param="group_by"
            )
    per_meter: dict[int, dict] = {}
    for row in daily.values("meter_id", "currency", "dimensions").annotate(
        quantity=Sum("quantity"), included=Sum("included_quantity"), amount=Sum("amount")
    ):
        entry = per_meter.setdefault(
            row["meter_id"],
            {
                "quantity": Decimal(0),
                "included": Decimal(0),
                "amount": Decimal(0),
                "currency": row["currency"],
                "groups": {},
            },
        )
        entry["quantity"] += row["quantity"]
        entry["included"] += row["included"]
        entry["amount"] += row["amount"]
        if group_by:
            value = (row["dimensions"] or {}).get(group_by)
            group = entry["groups"].setdefault(value, [Decimal(0), Decimal(0)])
            group[0] += row["quantity"]
            group[1] += row["amount"]
    return [
        MeterUsage(
            meter=meters[meter_id],
            currency=entry["currency"],
            quantity=entry["quantity"],
            included_quantity=entry["included"],
            amount=rating.ledger_round(entry["amount"]),
            groups=[
                UsageGroup(value=key, quantity=q, amount=rating.ledger_round(a))
                for key, (q, a) in sorted(entry["groups"].items(), key=lambda kv: str(kv[0]))
            ]
            if group_by
            else None,
        )
        for meter_id, entry in sorted(per_meter.items(), key=lambda kv: meters[kv[0]].code)
    ]


def _model_usage(scope: dict[str, Any]) -> list[ModelUsageTotal]:
    return [
        ModelUsageTotal(
            provider=row["provider"],
            model=row["model"],
            currency=row["currency"],
            events=row["events"],
            input_tokens=row["input"],
            cache_read_tokens=row["cache_read"],
            cache_write_tokens=row["cache_write"],
            output_tokens=row["output"],
            reasoning_tokens=row["reasoning"],
            amount=row["amount"],
            cost=row["cost"],
            margin=row["amount"] - row["cost"] if row["currency"] == "USD" else None,
        )
        for row in ModelUsage.objects.filter(**scope)
        .values("provider", "model", "currency")
        .annotate(
            events=Sum("event_count"),
            input=Sum("input_tokens"),
            cache_read=Sum("cache_read_tokens"),
            cache_write=Sum("cache_write_tokens"),
            output=Sum("output_tokens"),
            reasoning=Sum("reasoning_tokens"),
            amount=Sum("amount"),
            cost=Sum("cost"),
        )
        .order_by("provider", "model")
    ]


# --- the model price catalog ----------------------------------------------------------------


def current_model_prices(
    *, provider: str | None = None, now: datetime | None = None
) -> QuerySet[ModelPrice]:
    """The catalog in force ``now``: each (provider, model)'s latest price effective by
    then; only ``provider``'s models when given (provider ids are stored lower case)."""
    now = now or timezone.now()
    current = (
        ModelPrice.objects.filter(effective_from__lte=now)
        .order_by("provider", "model", "-effective_from")
        .distinct("provider", "model")
        .values("pk")
    )
    prices = ModelPrice.objects.filter(pk__in=current)
    if provider:
        prices = prices.filter(provider=provider.lower())
    return prices
