"""Ingestion and real-time rating: accepted usage events are stored, priced and posted to the
ledger in one database transaction, with the usage counters they move — one ledger
transaction per customer per rating part, whose legs are the sums of its events.

    ingest_events(events) → one Outcome per event: accepted, duplicate or rejected

How a batch is rated
--------------------
1. Each event is checked on its own, without the database: timestamp not in the future,
   a known ``event_name`` (meters are cached per process, reloaded when the stamp read
   with the customers says one was added), the provider's raw ``usage`` normalised, the
   model priced from the catalog (cached the same way). A bad event is rejected with its
   error; the others go on.
2. Per customer, in customer-id order, inside one transaction per part of the batch
   (whole customers, at least ``RATING_CHUNK_EVENTS`` events each, so that two batches
   for the same customers overlap instead of queueing): an advisory lock on the
   customer serialises everything that rates its usage (so counters and balance checks
   see one order). Then one statement (``_read_part``) reads what rating needs under the
   locks: the live subscriptions, events already stored under the same idempotency keys
   (reported as duplicates — the unique (customer, idempotency_key) constraint backs this
   up), the wallets with their balance rows locked, the margin overrides, the counters of
   the events' periods, and ids for the events.
3. Events are priced in batch order against the period counters. Every meter reading the
   event moves its ``PeriodUsage``; a charge's exact worth moves by
   ``worth(q₁) − worth(q₀)`` (``metering.charges``), or for catalog-priced charges by
   the provider's cost of the billable tokens × (1 + margin). The money leg of the event
   is what the rounded period total moved: ``round(amount₁) − round(amount₀)`` to the
   ledger's 12 places (half-even), so the ledger never drifts from the exact total by
   more than one rounding, however many events.
4. An event the wallet cannot cover is rejected (``insufficient_funds`` for a prepaid
   wallet, ``credit_limit_exceeded`` past a postpaid credit limit, ``insufficient_credits``
   on a credits plan) and changes nothing; later events of the batch may still fit.
5. The accepted events are written. Each customer's accepted events of the part are posted
   as ONE ledger transaction (``UsagePosting``) whose legs are their sums: a token leg in
   ``TOKENS`` (customer's usage account debited, ``@TokensServed`` credited) and, per
   currency, a money leg (wallet debited, ``@Revenue`` — or ``@CreditsUsed`` on a credits
   plan — credited); a credits debit is drawn on the grants once, for the sum. All of a
   part's transactions are posted by one ``ledger.services.post_transactions`` call; then
   one statement writes the event rows, each with its own exact amount, cost, tokens and
   catalog price version and the id of its customer's transaction (an event with nothing
   to post points at none), and the period, daily and model counters (a part of many
   events sends its rows by COPY first). PostgreSQL refuses
   events whose transaction's legs are not their sums (metering migration 0006). The
   transaction's reference is its first event's, ``usage:<customer id>:<idempotency
   key>``: unique, since that event is stored once, so a part of one event posts exactly
   what one transaction per event did. A retried batch finds its stored events as
   duplicates under the customer's rating lock and posts nothing for them.

A single event (a part of one event) thus costs four statements in its transaction: its
customer found and locked (with the meters' stamp), what rating needs read, the posting,
the write; seven round trips with BEGIN, COMMIT and the API key's lookup before them.

Consumption models: *metered* and *balance* plans debit money (postpaid wallets go into
overdraft down to their credit limit; prepaid ones refuse what they cannot cover);
*credits* plans debit ``CREDITS`` at ``billable units / units_per_credit``. Usage inside a
trial period is counted and costed but free.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from functools import lru_cache
from typing import Any

from django.db import connection, transaction
from django.utils import timezone
from psycopg import Cursor as PsycopgCursor

from billing import credits
from billing import errors as billing_errors
from billing import services as billing_services
from billing.errors import BillingError
from billing.meters import LLM_FIELDS
from billing.models import (
    Aggregation,
    AllocationKind,
    ConsumptionModel,
    Customer,
    Meter,
    Plan,
    Subscription,
    Wallet,
)
from billing.periods import period_containing
from ledger import errors as ledger_errors
from ledger import services as ledger
from ledger.models import NormalBalance
from ledger.services import Leg
from metering import catalog, errors
from metering.charges import ChargeTerms, Tier
from metering.normalize import NormalizedUsage, normalize_usage

ZERO = Decimal(0)
LLM_FIELD_NAMES = frozenset(LLM_FIELDS)
LEDGER_QUANTUM = Decimal("1e-12")
EXACT_QUANTUM = Decimal("1e-24")
REVENUE = "@Revenue"
CREDITS_USED = "@CreditsUsed"
CREDITS = "CREDITS"
FUTURE_TOLERANCE = timedelta(minutes=5)
# Bounds that keep every figure inside its column (NUMERIC(38, 12) and friends): a reading
# and a period's quantity stay below MAX_QUANTITY, one event moves less than MAX_CHARGE.
MAX_QUANTITY = Decimal(10) ** 20
MAX_CHARGE = Decimal(10) ** 18
RESERVED_PROPERTY = "llm"


_ROUNDING = Context(prec=80, rounding=ROUND_HALF_EVEN)


def ledger_round(amount: Decimal) -> Decimal:
    """To the ledger's 12 places, half-even: the one rounding rule of rating."""
    return amount.quantize(LEDGER_QUANTUM, context=_ROUNDING)


def exact(amount: Decimal) -> Decimal:
    return amount.quantize(EXACT_QUANTUM, context=_ROUNDING)


# --- input and outcome ---------------------------------------------------------------------


@dataclass
class EventIn:
    idempotency_key: str
    customer: str
    event_name: str
    timestamp: datetime
    properties: dict[str, Any] = field(default_factory=dict)
    # When we received it: now, or the moment an asynchronous acceptance stored it.
    received_at: datetime | None = None


@dataclass
class Outcome:
    status: str  # "accepted", "duplicate" or "rejected"
    event: dict[str, Any] | None = None
    error: BillingError | None = None


# --- step 1: each event on its own ---------------------------------------------------------


@dataclass
class Prepared:
    index: int
    source: EventIn
    meters: list[Meter] = field(default_factory=list)
    usage: NormalizedUsage | None = None
    price: Any = None  # metering.models.ModelPrice
    cost: catalog.Cost | None = None
    # An unreadable usage object, reported once the meters are known (an event no meter
    # reads is refused as such first).
    usage_error: BillingError | None = None


def _path_value(properties: dict[str, Any], usage: NormalizedUsage | None, path: str) -> Any:
    if path.startswith("llm."):
        if usage is None:
            return None
        name = path[4:]
        return getattr(usage, name) if name in LLM_FIELD_NAMES else None
    value: Any = properties
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _passes_filters(meter: Meter, prepared: Prepared) -> bool:
    for path, allowed in (meter.filters or {}).items():
        value = _path_value(prepared.source.properties, prepared.usage, path)
        allowed_values = allowed if isinstance(allowed, list) else [allowed]
        if value not in allowed_values:
            return False
    return True


def _prepare(index: int, event: EventIn, now: datetime) -> Prepared:
    """What is checked before the database is asked anything: the moment and the names
    (raised), the LLM usage and its price (kept, raised by ``_take_meters``)."""
    _check_moment_and_names(event, now)
    prepared = Prepared(index=index, source=event)
    if "usage" in event.properties:
        try:
            prepared.usage, prepared.price, prepared.cost = _llm_usage(event)
        except BillingError as error:
            prepared.usage_error = error
    return prepared


def _take_meters(prepared: Prepared, meters: MeterSet) -> None:
    """The meters that read the event; refused if none does, or if its usage was not
    readable."""
    prepared.meters = meters.by_name.get(prepared.source.event_name, [])
    if not prepared.meters:
        raise errors.UnknownEventName(
            f"no meter reads events named {prepared.source.event_name!r}; create one first",
            param="event_name",
        )
    if prepared.usage_error is not None:
        raise prepared.usage_error


def check_event(event: EventIn, *, now: datetime) -> None:
    """What can be said of an event without the database: a timestamp not in the future,
    ``properties.llm`` free, a readable provider usage object, a model the catalog prices.
    Rating checks it all again; the asynchronous acceptance refuses at once what it would
    refuse anyway."""
    _check_moment_and_names(event, now)
    if "usage" in event.properties:
        _llm_usage(event)


def _check_moment_and_names(event: EventIn, now: datetime) -> None:
    if event.timestamp > now + FUTURE_TOLERANCE:
        raise errors.TimestampInFuture(
            f"timestamp {event.timestamp.isoformat()} lies in the future", param="timestamp"
        )
    if RESERVED_PROPERTY in event.properties:
        raise errors.InvalidEvent(
            "properties.llm is reserved: meters read the normalised LLM usage there",
            param="properties.llm",
        )


def _llm_usage(event: EventIn) -> tuple[NormalizedUsage, Any, catalog.Cost]:
    """The event's normalised LLM usage, its catalog price version and the provider's cost."""
    properties = event.properties
    provider = properties.get("provider")
    model = properties.get("model")
    if provider is not None and not isinstance(provider, str):
        raise errors.InvalidEvent(
            "properties.provider must be a string", param="properties.provider"
        )
    if model is not None and not isinstance(model, str):
        raise errors.InvalidEvent("properties.model must be a string", param="properties.model")
    usage = normalize_usage(properties["usage"], provider=provider, model=model)
    if len(usage.model) > 200 or len(usage.provider) > 100:
        raise errors.InvalidEvent(
            "the model name may have 200 characters and the provider 100",
            param="properties.model",
        )
    if not usage.model:
        raise errors.InvalidEvent(
            "an event with LLM usage needs properties.model", param="properties.model"
        )
    price = catalog.find_price(provider=usage.provider, model=usage.model, at=event.timestamp)
    return usage, price, catalog.cost_of(price, usage, event.timestamp)


def _quantity(meter: Meter, prepared: Prepared, *, charged: bool = True) -> Any:
    """The event's reading for ``meter``: a number, a distinct value, or None (not read).

    A meter the customer's plan charges must be able to read the event (or the event is
    refused: never rated at zero by accident); a meter it does not charge only counts what
    it can read, so adding a meter never stops other customers' events."""
    if not _passes_filters(meter, prepared):
        return None
    if meter.aggregation == Aggregation.COUNT:
        return Decimal(1)
    if not charged:
        try:
            return _quantity(meter, prepared)
        except BillingError:
            return None
    value = _path_value(prepared.source.properties, prepared.usage, meter.property)
    param = f"properties.{meter.property}"
    if value is None:
        raise errors.InvalidEvent(
            f"meter {meter.code} reads {param}, which this event does not carry", param=param
        )
    if meter.aggregation == Aggregation.UNIQUE_COUNT:
        if isinstance(value, dict | list):
            raise errors.InvalidEvent(f"{param} must be a plain value to count", param=param)
        return value
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise errors.InvalidEvent(f"{param} must be a number", param=param)
    value = Decimal(value)
    if not value.is_finite() or value < 0:
        raise errors.InvalidEvent(f"{param} must be a finite, non-negative number", param=param)
    if value >= MAX_QUANTITY or value.as_tuple().exponent < -12:
        raise errors.InvalidEvent(
            f"{param} must be below 1e20 with at most 12 decimal places", param=param
        )
    return value


# --- plans, cached (plans are immutable) ----------------------------------------------------


@dataclass(frozen=True)
class PlanTerms:
    plan_id: int
    currency: str
    interval: str
    consumption_model: str
    units_per_credit: Decimal | None
    charges: dict[int, ChargeTerms]
    llm_event_names: frozenset[str] = frozenset()  # events its LLM-token meters read

    @property
    def money_currency(self) -> str:
        return CREDITS if self.consumption_model == ConsumptionModel.CREDITS else self.currency


@lru_cache(maxsize=4096)
def plan_terms(plan_id: int) -> PlanTerms:
    plan = Plan.objects.prefetch_related("charges__tiers", "charges__meter").get(pk=plan_id)
    charges = {}
    for charge in plan.charges.all():
        tiers = tuple(
            Tier(up_to=t.up_to, unit_price=t.unit_price, flat_fee=t.flat_fee)
            for t in charge.tiers.all()
        )
        catalog_priced = (
            charge.margin_percent is not None
            and charge.meter.property in catalog.CATALOG_KINDS
            and not tiers
            and charge.unit_price == 0
        )
        charges[charge.meter_id] = ChargeTerms(
            meter_id=charge.meter_id,
            price_model=charge.price_model,
            included_quantity=charge.included_quantity,
            unit_price=charge.unit_price,
            package_size=charge.package_size,
            tiers=tiers,
            margin_percent=charge.margin_percent,
            catalog_priced=catalog_priced,
        )
    return PlanTerms(
        plan_id=plan.pk,
        currency=plan.currency,
        interval=plan.interval,
        consumption_model=plan.consumption_model,
        units_per_credit=plan.units_per_credit,
        charges=charges,
        llm_event_names=frozenset(
            c.meter.event_name for c in plan.charges.all() if c.meter.property.startswith("llm.")
        ),
    )


METER_FIELDS = ("id", "code", "event_name", "aggregation", "property", "filters", "group_by")


# --- meters, cached -------------------------------------------------------------------------
# What a meter reads (event name, aggregation, property, filters, grouping) never changes
# once it exists (billing.services.ensure_meter refuses it, the admin shows those fields read
# only), so the set of meters changes only when one is added (or, outside the services and
# the admin, which refuse it, removed) — and either changes their count or highest id. So
# each process keeps them all, stamped with those two, as the model catalog is kept; rating
# reads the stamp in the statement that finds its customers (``_find_customers``) and
# reloads on any difference, so the next event sees a new meter, whichever process or
# connection created it.


@dataclass(frozen=True)
class MeterSet:
    stamp: tuple[int, int | None]  # (count, highest id) when loaded
    by_name: dict[str, list[Meter]]  # event name → the meters reading it, by id


_meter_set: MeterSet | None = None


def _meters(stamp: tuple[int, int | None]) -> MeterSet:
    """The meters, reloaded if the table's stamp is not the one they were loaded with."""
    global _meter_set
    current = _meter_set
    if current is None or current.stamp != stamp:
        current = _meter_set = _load_meters()
    return current


def _load_meters() -> MeterSet:
    """Every meter and the stamp of what was read, in one statement (one snapshot)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT s.n, s.last, m.id, m.code, m.event_name, m.aggregation, m.property, "
            "m.filters, m.group_by "
            "FROM (SELECT count(*) AS n, max(id) AS last FROM metering_meter) AS s "
            "LEFT JOIN metering_meter m ON true ORDER BY m.id"
        )
        rows = cursor.fetchall()
    by_name: dict[str, list[Meter]] = defaultdict(list)
    for row in rows:
        if row[2] is not None:
            meter = _meter_from_row(row[2:])
            by_name[meter.event_name].append(meter)
    return MeterSet(stamp=(rows[0][0], rows[0][1]), by_name=dict(by_name))


def _meter_from_row(row: Sequence[Any]) -> Meter:
    values = dict(zip(METER_FIELDS, row, strict=True))
    for key in ("filters", "group_by"):
        if isinstance(values[key], str):
            values[key] = json.loads(values[key])
    return Meter(**values)


def _plan_at(subscription: Subscription, at: datetime) -> int:
    plan_id = subscription.plan_id
    for starts_at, phase_plan_id in subscription.phase_starts:  # by starts_at
        if starts_at <= at:
            plan_id = phase_plan_id
    return plan_id


CUSTOMER_FIELDS = ("id", "external_id", "name", "currency", "billing_mode")
SUBSCRIPTION_FIELDS = (
    "id",
    "customer_id",
    "plan_id",
    "status",
    "started_at",
    "billing_anchor",
    "current_period_start",
    "current_period_end",
    "trial_ends_at",
    "invoiced_through",
    "cancel_at_period_end",
)


def load_customers(
    *, external_ids: Iterable[str] = (), ids: Iterable[int] = ()
) -> dict[str, tuple[Customer, Subscription | None]]:
    """Customers with their live subscription and its plan phases, in one query (the hot
    path of every estimate): external_id → (customer, subscription or None).
    The objects carry only what rating reads; ``subscription.phase_starts`` lists
    (starts_at, plan_id) by start."""
    external_ids, ids = list(external_ids), list(ids)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.id, c.external_id, c.name, c.currency, c.billing_mode, "
            "s.id, s.customer_id, s.plan_id, s.status, s.started_at, s.billing_anchor, "
            "s.current_period_start, s.current_period_end, s.trial_ends_at, s.invoiced_through, "
            "s.cancel_at_period_end, "
            "(SELECT array_agg(ph.starts_at ORDER BY ph.starts_at, ph.id) "
            "   FROM billing_subscriptionphase ph WHERE ph.subscription_id = s.id), "
            "(SELECT array_agg(ph.plan_id ORDER BY ph.starts_at, ph.id) "
            "   FROM billing_subscriptionphase ph WHERE ph.subscription_id = s.id) "
            "FROM billing_customer c LEFT JOIN billing_subscription s "
            "  ON s.customer_id = c.id AND s.status <> 'canceled' "
            "WHERE c.external_id = ANY(%s) OR c.id = ANY(%s)",
            [external_ids, ids],
        )
        found = {}
        for row in cursor.fetchall():
            customer = Customer(**dict(zip(CUSTOMER_FIELDS, row[:5], strict=True)))
            subscription = None
            if row[5] is not None:
                subscription = Subscription(
                    **dict(zip(SUBSCRIPTION_FIELDS, row[5:16], strict=True))
                )
                subscription.phase_starts = list(zip(row[16] or [], row[17] or [], strict=True))
            found[customer.external_id] = (customer, subscription)
        return found


def _period_for(subscription: Subscription, terms: PlanTerms, at: datetime):
    """(period_start, period_end, in_trial) for an event at ``at``."""
    if at < subscription.started_at:
        raise errors.TimestampTooOld(
            f"timestamp {at.isoformat()} precedes the subscription's start "
            f"{subscription.started_at.isoformat()}",
            param="timestamp",
        )
    if subscription.invoiced_through is not None and at < subscription.invoiced_through:
        raise errors.PeriodClosed(
            f"timestamp {at.isoformat()} lies in a period already invoiced (through "
            f"{subscription.invoiced_through.isoformat()}); send it with a current timestamp",
            param="timestamp",
        )
    if subscription.cancel_at_period_end and at >= subscription.current_period_end:
        # The subscription ends with this period: a later period is never closed.
        raise errors.TimestampAfterSubscription(
            f"timestamp {at.isoformat()} lies after the subscription's end "
            f"{subscription.current_period_end.isoformat()} (canceled at period end)",
            param="timestamp",
        )
    if subscription.trial_ends_at is not None and at < subscription.trial_ends_at:
        return subscription.started_at, subscription.trial_ends_at, True
    if subscription.current_period_start <= at < subscription.current_period_end:
        return subscription.current_period_start, subscription.current_period_end, False
    start, end = period_containing(subscription.billing_anchor, terms.interval, at)
    return start, end, False


# --- step 2-5: per customer, in the database ------------------------------------------------


@dataclass
class Counter:
    """A PeriodUsage row being moved by this batch."""

    subscription_id: int
    meter_id: int
    period_start: datetime
    period_end: datetime
    quantity: Decimal = ZERO
    amount: Decimal = ZERO
    charged: Decimal = ZERO
    currency: str = ""
    event_count: int = 0
    distinct_values: list[Any] = field(default_factory=list)
    latest_at: datetime | None = None
    changed: bool = False


@dataclass
class Move:
    """What one event does to one counter (applied only if the event is accepted)."""

    counter: Counter
    meter: Meter
    quantity: Decimal
    amount: Decimal
    charged: Decimal
    distinct_value: Any
    quantity_delta: Decimal
    included_delta: Decimal
    amount_delta: Decimal


def _distinct_key(value: Any) -> str:
    """One text per distinct value, whatever its JSON spelling: 1, 1.0 and 1e0 are one
    number; true, 1 and "1" are three values."""
    if isinstance(value, bool):
        return f"b:{str(value).lower()}"
    if isinstance(value, int | Decimal):
        number = Decimal(value).normalize()
        return f"n:{number:f}"
    return f"s:{value}"


def _reference(customer_id: int, key: str) -> str:
    """The ledger reference of an event: its key as sent, or its SHA-256 when the key is
    long or could be mistaken for a hashed one."""
    reference = f"usage:{customer_id}:{key}"
    if len(reference) > 255 or key.startswith("sha256:"):
        reference = f"usage:{customer_id}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return reference


def _margin(terms: ChargeTerms, overrides: dict[int | None, Decimal]) -> Decimal:
    margin = overrides.get(terms.meter_id, overrides.get(None, terms.margin_percent))
    return margin if margin is not None else ZERO


def _move(
    counter: Counter,
    meter: Meter,
    reading: Any,
    prepared: Prepared,
    terms: PlanTerms,
    in_trial: bool,
    overrides: dict[int | None, Decimal],
) -> Move:
    q0 = counter.quantity
    distinct_value = None
    aggregation = meter.aggregation
    if aggregation in (Aggregation.SUM, Aggregation.COUNT):
        q1 = q0 + reading
    elif aggregation == Aggregation.MAX:
        q1 = max(q0, reading)
    elif aggregation == Aggregation.LATEST:
        newer = counter.latest_at is None or prepared.source.timestamp >= counter.latest_at
        q1 = reading if newer else q0
    else:  # unique_count
        canonical = _distinct_key(reading)
        if canonical in counter.distinct_values:
            q1 = q0
        else:
            q1, distinct_value = q0 + 1, canonical
    charge = terms.charges.get(meter.pk)
    amount_delta = ZERO
    included_delta = ZERO
    if charge is not None:
        included_delta = min(q1, charge.included_quantity) - min(q0, charge.included_quantity)
        if not in_trial:
            if terms.consumption_model == ConsumptionModel.CREDITS:
                amount_delta = (charge.billable(q1) - charge.billable(q0)) / terms.units_per_credit
            elif charge.catalog_priced:
                amount_delta = _catalog_delta(charge, meter, q0, q1, prepared, overrides)
            else:
                amount_delta = charge.worth(q1) - charge.worth(q0)
    amount = exact(counter.amount + amount_delta)
    return Move(
        counter=counter,
        meter=meter,
        quantity=q1,
        amount=amount,
        charged=ledger_round(amount),
        distinct_value=distinct_value,
        quantity_delta=q1 - q0,
        included_delta=included_delta,
        amount_delta=amount - counter.amount,
    )


def _catalog_delta(charge, meter, q0, q1, prepared, overrides) -> Decimal:
    if prepared.cost is None:
        return ZERO  # not an LLM event: nothing to price from the catalog
    kinds = catalog.CATALOG_KINDS[meter.property]
    tokens = catalog.kind_tokens(prepared.usage, kinds)
    billable = charge.billable(q1) - charge.billable(q0)
    if tokens == 0 or billable <= 0:
        return ZERO
    cost = prepared.cost.of_kinds(kinds)
    if billable != tokens:  # the event straddles the included quantity
        with localcontext(prec=80):
            cost = cost * billable / tokens
    return cost * (1 + _margin(charge, overrides) / 100)


def _funds_error(wallet: Wallet, currency: str, needed: Decimal, balance) -> BillingError:
    available = balance.available
    if currency == CREDITS:
        return errors.InsufficientCredits(
            f"{available.normalize():f} credits left; this event needs {needed.normalize():f}",
            param="customer",
        )
    if wallet.billing_mode == "postpaid":
        return errors.CreditLimitExceeded(
            f"this event would take the {currency} wallet past its credit limit "
            f"({wallet.credit_limit.normalize():f}); balance {available.normalize():f}",
            param="customer",
        )
    return errors.InsufficientFunds(
        f"the {currency} wallet has {available.normalize():f} available; this event costs "
        f"{needed.normalize():f}",
        param="customer",
    )


def ingest_events(
    events: Sequence[EventIn],
    *,
    now: datetime | None = None,
    hold_id: int | None = None,
    after_part: Callable[[list[tuple[int, Outcome]]], None] | None = None,
) -> list[Outcome]:
    """Store, rate and post ``events``; one Outcome per event, in order.

    With ``hold_id`` (one event): the event settles that hold — what is left of the hold is
    released and the event's charge posted against it, all in one transaction.

    ``after_part`` is called inside each part's transaction with the (index, outcome) of the
    part's events, so that what the caller records of them commits with them or not at all
    (the asynchronous inbox removes the rows the part rated).

    A batch that is one part (at most ``RATING_CHUNK_EVENTS`` events: a single event, say)
    finds its customers and takes their rating locks in one statement, inside the part's
    transaction; a longer one finds them first, then locks each part's."""
    if hold_id is not None and len(events) != 1:
        raise ValueError("a hold is settled by exactly one event")
    now = now or timezone.now()
    outcomes: list[Outcome | None] = [None] * len(events)
    prepared: list[Prepared] = []
    for index, event in enumerate(events):
        try:
            prepared.append(_prepare(index, event, now))
        except BillingError as error:
            outcomes[index] = Outcome("rejected", error=error)
    if not prepared:
        return outcomes  # type: ignore[return-value]
    external_ids = {p.source.customer for p in prepared}
    if len(prepared) <= RATING_CHUNK_EVENTS:
        with transaction.atomic():
            stamp, customers = _find_customers(external_ids, lock=True)
            by_customer = _sort_out(prepared, _meters(stamp), customers, outcomes)
            if by_customer:
                _rate_part(sorted(by_customer), by_customer, customers, outcomes, hold_id, now)
                if after_part is not None:
                    after_part(_part_outcomes(by_customer, outcomes))
        return outcomes  # type: ignore[return-value]
    stamp, customers = _find_customers(external_ids, lock=False)
    by_customer = _sort_out(prepared, _meters(stamp), customers, outcomes)
    for chunk in _chunks(by_customer):
        with transaction.atomic():
            _lock_customers(chunk)
            part = {cid: by_customer[cid] for cid in chunk}
            _rate_part(chunk, part, customers, outcomes, hold_id, now)
            if after_part is not None:
                after_part(_part_outcomes(part, outcomes))
    return outcomes  # type: ignore[return-value]


def _part_outcomes(
    by_customer: dict[int, list[Prepared]], outcomes: list[Outcome | None]
) -> list[tuple[int, Outcome]]:
    return [
        (p.index, outcomes[p.index])  # type: ignore[misc]
        for events in by_customer.values()
        for p in events
    ]


def _sort_out(
    prepared: list[Prepared],
    meters: MeterSet,
    customers: dict[str, Customer],
    outcomes: list[Outcome | None],
) -> dict[int, list[Prepared]]:
    """The events by customer id, each with its meters; an event no meter reads, with an
    unreadable usage or for an unknown customer is rejected (in that order of precedence)."""
    by_customer: dict[int, list[Prepared]] = defaultdict(list)
    for p in prepared:
        try:
            _take_meters(p, meters)
        except BillingError as error:
            outcomes[p.index] = Outcome("rejected", error=error)
            continue
        customer = customers.get(p.source.customer)
        if customer is None:
            outcomes[p.index] = Outcome(
                "rejected",
                error=billing_errors.CustomerNotFound(
                    f"no customer with external_id {p.source.customer!r}", param="customer"
                ),
            )
        else:
            by_customer[customer.pk].append(p)
    return by_customer


def _find_customers(
    external_ids: Iterable[str], *, lock: bool
) -> tuple[tuple[int, int | None], dict[str, Customer]]:
    """The meters' stamp (``_meters``) and the customers of these external ids, in one
    statement; with ``lock``, the customers' rating locks too, taken in id order (the same
    locks as ``billing.services.lock_customer_usage``). What must be read under the locks
    is read by a later statement (``_read_part``): a statement's snapshot is taken before
    the locks it acquires."""
    locking = ", pg_advisory_xact_lock(k.id) AS locked" if lock else ""
    rows = execute_bound(  # the parameter through a subquery: see _PART_SQL
        "SELECT m.n, m.last, c.id, c.external_id, c.name, c.currency, c.billing_mode "
        "FROM (SELECT count(*) AS n, max(id) AS last FROM metering_meter) AS m "
        f"LEFT JOIN LATERAL (SELECT k.*{locking} FROM ("
        "  SELECT id, external_id, name, currency, billing_mode FROM billing_customer"
        "   WHERE external_id = ANY((SELECT %s::text[])::text[]) ORDER BY id) AS k) AS c ON true",
        [list(external_ids)],
    )
    customers = {
        row[3]: Customer(**dict(zip(CUSTOMER_FIELDS, row[2:7], strict=True)))
        for row in rows
        if row[2] is not None
    }
    return (rows[0][0], rows[0][1]), customers


def _rate_part(
    chunk: list[int],
    by_customer: dict[int, list[Prepared]],
    customers: dict[str, Customer],
    outcomes: list[Outcome | None],
    hold_id: int | None,
    now: datetime,
) -> None:
    """One part, its customers' rating locks held: what rating needs read in one statement,
    then rated and written."""
    read = _read_part(
        [(cid, p) for cid in chunk for p in by_customer[cid]], lock_balances=hold_id is None
    )
    by_id = {customer.pk: customer for customer in customers.values()}
    _rate(
        [(by_id[cid], read.subscriptions.get(cid), by_customer[cid]) for cid in chunk],
        outcomes,
        hold_id,
        now=now,
        read=read,
    )


# A batch is rated in transactions of whole customers and at least this many events each.
# A transaction holds its customers' rating locks until it commits, so two batches for the
# same customers (a backend's workers sending at once) ran one after the other when a
# batch was one transaction; in parts, the second rates its first part while the first
# rates its next one. A customer's events stay together, in one transaction. Each part is
# committed before the next begins; after a crash between parts, the client's retry finds
# the committed events as duplicates (the idempotency key), so nothing is charged twice.
RATING_CHUNK_EVENTS = 250


def _chunks(by_customer: dict[int, list[Prepared]]) -> list[list[int]]:
    """The customers in id order (the rating locks' order), cut into parts of at least
    RATING_CHUNK_EVENTS events, whole customers each."""
    chunks: list[list[int]] = []
    chunk: list[int] = []
    events = 0
    for customer_id in sorted(by_customer):
        chunk.append(customer_id)
        events += len(by_customer[customer_id])
        if events >= RATING_CHUNK_EVENTS:
            chunks.append(chunk)
            chunk, events = [], 0
    if chunk:
        chunks.append(chunk)
    return chunks


def _lock_customers(customer_ids: list[int]) -> None:
    billing_services.lock_customer_usage(customer_ids)


def lock_customer(customer_id: int) -> None:
    """Take the rating lock of one customer (for anything else that moves its counters)."""
    _lock_customers([customer_id])


@dataclass(frozen=True)
class WalletRow:
    """What rating needs of a wallet (read in one query for a whole batch)."""

    customer_id: int
    currency: str
    account_id: int | None  # None: not created yet (an empty prepaid wallet)
    billing_mode: str
    credit_limit: Decimal | None


@dataclass
class Accepted:
    p: Prepared
    customer: Customer
    subscription: Subscription
    terms: PlanTerms
    period_start: datetime
    moves: list[Move]
    money: Decimal
    currency: str
    wallet: WalletRow


COUNTER_COLUMNS = (
    "u.subscription_id, u.meter_id, u.period_start, u.period_end, u.quantity, u.amount, "
    "u.charged, u.currency, u.event_count, u.distinct_values, u.latest_at"
)


@dataclass
class PartRead:
    """What rating a part needs from the database, read under its customers' rating locks
    in one statement (``_read_part``)."""

    subscriptions: dict[int, Subscription]  # customer id → live subscription
    existing: dict[tuple[int, str], dict[str, Any]]  # events already stored, by key
    wallets: dict[tuple[int, str], WalletRow]  # (customer id, currency) → wallet
    balances: dict[int, ledger.LockedBalance]  # wallet account → its locked balance row
    overrides: dict[int, dict[int | None, Decimal]]  # customer → meter (None: all) → margin
    counters: dict[tuple[int, int, datetime], Counter]  # the periods the events fall in
    event_ids: list[int]  # one per event of the part, for those accepted


# One statement, one row: each set an array of records (a binary cursor loads them as
# typed tuples). Under READ COMMITTED its snapshot is taken after the rating locks (taken
# by an earlier statement), so it sees everything an earlier rating of these customers
# committed. The wallets' balance rows are locked here, in account-id order as
# ledger.services.lock_balances locks them, and read as their newest version — except when
# the part settles a hold, whose row is locked first (ledger.lock_hold), then the
# balances (the ledger's order). Counters are read for the subscriptions' current periods
# (a trial's included) by their unique index, subscription by subscription (OFFSET 0
# keeps the lookup per subscription: without it the generic plan, not knowing how few
# customers a part has, hashed the whole table — 48 ms at 88,000 counters, 0.02 ms this
# way); an event of another period (sent late, or before the subscription's period was
# renewed) has its counter looked up by its key (``_load_counters``). Event ids are drawn
# for every event of the part (the accepted use them; the sequence's gaps mean nothing).
# Each parameter is read through a scalar subquery (``(SELECT %s::bigint[])``): planned
# without its value, the custom plans PostgreSQL tries first cost what the generic plan
# costs, so it keeps the generic one and stops planning the statement on every execution
# (given the arrays themselves, it never did: each custom plan, sized to its arrays,
# looked cheaper than the generic one; planning took twice as long as executing).
_PART_SQL = """
WITH subs AS MATERIALIZED (
    SELECT s.id, s.customer_id, s.plan_id, s.status, s.started_at, s.billing_anchor,
           s.current_period_start, s.current_period_end, s.trial_ends_at,
           s.invoiced_through, s.cancel_at_period_end,
           ARRAY(SELECT ph.starts_at FROM billing_subscriptionphase ph
                  WHERE ph.subscription_id = s.id ORDER BY ph.starts_at, ph.id),
           ARRAY(SELECT ph.plan_id FROM billing_subscriptionphase ph
                  WHERE ph.subscription_id = s.id ORDER BY ph.starts_at, ph.id)
      FROM billing_subscription s
     WHERE s.customer_id = ANY((SELECT %s::bigint[])::bigint[]) AND s.status <> 'canceled'
), wallets AS MATERIALIZED (
    SELECT w.customer_id, w.currency, w.account_id, w.billing_mode, w.credit_limit,
           b.posted, b.held, b.floor
      FROM billing_wallet w
      JOIN ledger_balance b ON b.account_id = w.account_id AND b.bucket = 0
     WHERE w.customer_id = ANY((SELECT %s::bigint[])::bigint[])
     ORDER BY w.account_id<LOCK>
)
SELECT ARRAY(SELECT ROW(subs.*) FROM subs),
       ARRAY(SELECT ROW(e.id, e.customer_id, e.idempotency_key, e.amount, e.currency,
                        e.ledger_transaction_id, e.cost, e.model)
               FROM metering_event e
               JOIN unnest((SELECT %s::bigint[]), (SELECT %s::text[]))
                    AS k(customer_id, idempotency_key)
                 ON e.customer_id = k.customer_id AND e.idempotency_key = k.idempotency_key),
       ARRAY(SELECT ROW(wallets.*) FROM wallets),
       ARRAY(SELECT ROW(o.customer_id, o.meter_id, o.margin_percent)
               FROM billing_marginoverride o
              WHERE o.customer_id = ANY((SELECT %s::bigint[])::bigint[])),
       ARRAY(SELECT ROW(<COUNTERS>)
               FROM subs s CROSS JOIN LATERAL (
                    SELECT * FROM metering_periodusage p
                     WHERE p.subscription_id = s.id
                       AND p.meter_id = ANY((SELECT %s::bigint[])::bigint[])
                       AND p.period_start = s.current_period_start
                    OFFSET 0) AS u),
       ARRAY(SELECT nextval(pg_get_serial_sequence('metering_event', 'id'))
               FROM generate_series(1, (SELECT %s::int)))
""".replace("<COUNTERS>", COUNTER_COLUMNS)
_PART_SQL_LOCKING = _PART_SQL.replace("<LOCK>", " FOR UPDATE OF b")
_PART_SQL_READING = _PART_SQL.replace("<LOCK>", "")


def _read_part(events: list[tuple[int, Prepared]], *, lock_balances: bool) -> PartRead:
    """The subscriptions, stored twins, wallets (their balance rows locked, with
    ``lock_balances``), margin overrides and counters of a part's events (customer id,
    event), and ids for them: one statement, its customers' rating locks held."""
    customer_ids = sorted({cid for cid, _ in events})
    meter_ids = sorted({m.pk for _, p in events for m in p.meters})
    ((subs, twins, wallets, margins, counters, ids),) = execute_bound(
        _PART_SQL_LOCKING if lock_balances else _PART_SQL_READING,
        [
            customer_ids,
            customer_ids,
            [cid for cid, _ in events],
            [p.source.idempotency_key for _, p in events],
            customer_ids,
            meter_ids,
            len(events),
        ],
        binary=True,
    )
    read = PartRead({}, {}, {}, {}, {}, {}, ids)
    for row in subs:
        subscription = Subscription(**dict(zip(SUBSCRIPTION_FIELDS, row[:11], strict=True)))
        subscription.phase_starts = list(zip(row[11], row[12], strict=True))
        read.subscriptions[subscription.customer_id] = subscription
    for event_id, customer_id, key, amount, currency, transaction_id, cost, model in twins:
        read.existing[(customer_id, key)] = {
            "id": event_id,
            "idempotency_key": key,
            "amount": amount,
            "currency": currency,
            "ledger_transaction_id": transaction_id,
            # the provider's cost is part of the answer for LLM events only
            **({"cost": cost} if model else {}),
        }
    for customer_id, currency, account_id, mode, limit, posted, held, floor in wallets:
        read.wallets[(customer_id, currency)] = WalletRow(
            customer_id, currency, account_id, mode, limit
        )
        if lock_balances:
            read.balances[account_id] = ledger.LockedBalance(account_id, posted, held, floor)
    for customer_id, meter_id, margin in margins:
        read.overrides.setdefault(customer_id, {})[meter_id] = margin
    for row in counters:
        counter = _counter_from_row(row)
        read.counters[(counter.subscription_id, counter.meter_id, counter.period_start)] = counter
    return read


def _rate(
    groups: list[tuple[Customer, Subscription | None, list[Prepared]]],
    outcomes: list[Outcome | None],
    hold_id: int | None = None,
    *,
    now: datetime | None = None,
    read: PartRead,
) -> None:
    """Rate every customer's events of a batch with a fixed number of queries, whatever the
    number of customers: the customers' rating locks are held by the caller, and ``read``
    is what ``_read_part`` found under them."""
    existing = read.existing
    # (customer, subscription, prepared, terms, period_start, period_end, trial, readings)
    placed = []
    for customer, subscription, events in groups:
        for p in events:
            key = p.source.idempotency_key
            if (customer.pk, key) in existing:
                if hold_id is not None:  # settling with usage already recorded settles nothing
                    raise errors.EventAlreadyRecorded(
                        f"event {key!r} was already recorded (event "
                        f"{existing[(customer.pk, key)]['id']}); settle the hold with new usage, "
                        "or release it",
                        param="event.idempotency_key",
                    )
                outcomes[p.index] = Outcome("duplicate", event=existing[(customer.pk, key)])
                continue
            if subscription is None:
                outcomes[p.index] = Outcome(
                    "rejected",
                    error=errors.NoSubscription(
                        f"customer {customer.external_id} has no active subscription to rate "
                        "usage against",
                        param="customer",
                    ),
                )
                continue
            if subscription.status == "past_due":  # suspended by dunning
                outcomes[p.index] = Outcome(
                    "rejected",
                    error=errors.SubscriptionPastDue(
                        f"customer {customer.external_id}'s subscription is suspended: an "
                        "invoice is past due; usage is accepted again once it is paid",
                        param="customer",
                    ),
                )
                continue
            try:
                terms = plan_terms(_plan_at(subscription, p.source.timestamp))
                period_start, period_end, in_trial = _period_for(
                    subscription, terms, p.source.timestamp
                )
                readings = []
                for meter in p.meters:
                    reading = _quantity(meter, p, charged=meter.pk in terms.charges)
                    if reading is not None:
                        readings.append((meter, reading))
            except BillingError as error:
                outcomes[p.index] = Outcome("rejected", error=error)
                continue
            placed.append(
                (customer, subscription, p, terms, period_start, period_end, in_trial, readings)
            )
    if not placed:
        return

    wallets, overrides = _wallets(read, {(c.pk, t.money_currency) for c, _, _, t, *_ in placed})
    hold = None
    if hold_id is not None:
        customer, _, p, terms, *_ = placed[0]
        hold = ledger.lock_hold(hold_id=hold_id)  # before the balance rows, as the ledger does
        wallet = wallets[(customer.pk, terms.money_currency)]
        if hold.account_id != wallet.account_id:
            outcomes[p.index] = Outcome(
                "rejected",
                error=errors.InvalidEvent(
                    f"hold {hold.pk} reserves funds of another wallet than this usage is "
                    f"charged to ({wallet.currency} of {customer.external_id})",
                    param="customer",
                ),
            )
            return
        if hold.status != "pending":
            raise ledger_errors.HoldAlreadyResolved(f"hold {hold.pk} is already {hold.status}")
        if hold.settled_amount:
            raise errors.HoldPartlySettled(
                f"hold {hold.pk} was already settled in part by amount; settle the rest by "
                "amount, or release it and send the usage as an event",
                param="event",
            )
    credit_accounts = [
        w.account_id for w in wallets.values() if w.account_id is not None and w.currency == CREDITS
    ]
    if credit_accounts:  # credits past their expiry leave before anything is spent
        credits.expire_due_for(credit_accounts, now=now or timezone.now())
    balances: dict[Any, ledger.LockedBalance]
    if hold is not None:  # the hold's row first, then the balances: the ledger's order
        balances = ledger.lock_balances(
            account_ids=[w.account_id for w in wallets.values() if w.account_id is not None]
        )
    else:  # locked by _read_part; what an expiry just took is read again
        balances = dict(read.balances)
        if credit_accounts:
            balances.update(ledger.lock_balances(account_ids=credit_accounts))
    for wallet in wallets.values():
        if wallet.account_id is None:  # not created yet: nothing in it, nothing below zero
            balances[_balance_key(wallet)] = ledger.LockedBalance(None, ZERO, ZERO, ZERO)
    if hold is not None:  # what is left of the hold is released when the event settles it
        b = balances[hold.account_id]
        balances[hold.account_id] = ledger.LockedBalance(
            b.account_id, b.posted, b.held - (hold.amount - hold.settled_amount), b.floor
        )
    wanted = {
        (subscription.pk, meter.pk, start)
        for _, subscription, _, _, start, _, _, readings in placed
        for meter, _ in readings
    }
    counters = {key: read.counters[key] for key in wanted if key in read.counters}
    if len(counters) < len(wanted):  # a period's first usage, or not the current period
        counters.update(_load_counters(wanted - counters.keys()))

    accepted: list[Accepted] = []
    seen: dict[tuple[int, str], int] = {}
    for customer, subscription, p, terms, period_start, period_end, in_trial, readings in placed:
        key = (customer.pk, p.source.idempotency_key)
        if key in seen:
            outcomes[p.index] = Outcome("duplicate", event={"_same_as": seen[key]})
            continue
        moves = []
        for meter, reading in readings:
            counter = counters.setdefault(
                (subscription.pk, meter.pk, period_start),
                Counter(subscription.pk, meter.pk, period_start, period_end),
            )
            moves.append(
                _move(counter, meter, reading, p, terms, in_trial, overrides.get(customer.pk, {}))
            )
        money = sum((m.charged - m.counter.charged for m in moves), ZERO)
        too_big = next((m for m in moves if m.quantity >= MAX_QUANTITY), None)
        if too_big is not None or abs(money) >= MAX_CHARGE:
            what = (
                f"meter {too_big.meter.code}'s quantity this period past {MAX_QUANTITY:.0e}"
                if too_big is not None
                else f"a charge of {money.normalize():f}, beyond what one event may move"
            )
            outcomes[p.index] = Outcome(
                "rejected",
                error=errors.InvalidEvent(f"this event would take {what}", param="properties"),
            )
            continue
        currency = terms.money_currency
        wallet = wallets[(customer.pk, currency)]
        balance = balances[_balance_key(wallet)]
        if money > 0 and not balance.can_spend(money):
            outcomes[p.index] = Outcome(
                "rejected", error=_funds_error(wallet, currency, money, balance)
            )
            continue
        balances[_balance_key(wallet)] = ledger.LockedBalance(
            balance.account_id, balance.posted - money, balance.held, balance.floor
        )
        for move in moves:
            c = move.counter
            c.quantity, c.amount, c.charged = move.quantity, move.amount, move.charged
            c.currency = currency
            c.event_count += 1
            c.changed = True
            if move.distinct_value is not None:
                c.distinct_values.append(move.distinct_value)
            if move.meter.aggregation == Aggregation.LATEST and (
                c.latest_at is None or p.source.timestamp >= c.latest_at
            ):
                c.latest_at = p.source.timestamp
        seen[key] = p.index
        accepted.append(
            Accepted(p, customer, subscription, terms, period_start, moves, money, currency, wallet)
        )
    if accepted:
        _write(accepted, counters, outcomes, read.event_ids, hold_id, now=now)


def _wallets(
    read: PartRead, wanted: set[tuple[int, str]]
) -> tuple[dict[tuple[int, str], WalletRow], dict[int, dict[int | None, Decimal]]]:
    """The wallets of (customer id, currency) pairs and the customers' margin overrides
    (customer → meter id, or None for all meters → margin percent), as ``_read_part`` found
    them. A missing wallet (a first credits plan) is an empty prepaid wallet without an
    account yet: it is created only if an accepted event moves money in it, so a refused
    event changes nothing."""
    found = {}
    for customer_id, currency in wanted:
        found[(customer_id, currency)] = read.wallets.get(
            (customer_id, currency), WalletRow(customer_id, currency, None, "prepaid", None)
        )
    return found, read.overrides


def _balance_key(wallet: WalletRow) -> Any:
    return wallet.account_id or ("new", wallet.customer_id, wallet.currency)


def _wallet_and_margins(
    customer_id: int, currency: str
) -> tuple[WalletRow | None, dict[int | None, Decimal]]:
    """The customer's wallet in this currency and its margin overrides, in one query."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT w.customer_id, w.currency, w.account_id, w.billing_mode, w.credit_limit, "
            "(SELECT array_agg(o.meter_id ORDER BY o.id) FROM billing_marginoverride o "
            " WHERE o.customer_id = k.id), "
            "(SELECT array_agg(o.margin_percent ORDER BY o.id) FROM billing_marginoverride o "
            " WHERE o.customer_id = k.id) "
            "FROM (SELECT %s::bigint AS id) AS k "
            "LEFT JOIN billing_wallet w ON w.customer_id = k.id AND w.currency = %s",
            [customer_id, currency],
        )
        row = cursor.fetchone()
    wallet = WalletRow(*row[:5]) if row[0] is not None else None
    return wallet, dict(zip(row[5] or [], row[6] or [], strict=True))


def _meters_with_counters(
    event_names: Iterable[str], subscription_id: int, period_start: datetime
) -> tuple[list[Meter], dict[tuple[int, int, datetime], Counter]]:
    """The meters reading these events and their ``_load_counters`` for one subscription's
    period, in one query."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT m.id, m.code, m.event_name, m.aggregation, m.property, m.filters, "
            f"m.group_by, {COUNTER_COLUMNS} "
            "FROM metering_meter m LEFT JOIN metering_periodusage u ON u.meter_id = m.id "
            "AND u.subscription_id = %s AND u.period_start = %s "
            "WHERE m.event_name = ANY(%s) ORDER BY m.id",
            [subscription_id, period_start, list(event_names)],
        )
        meters, counters = [], {}
        for row in cursor.fetchall():
            meters.append(_meter_from_row(row[:7]))
            if row[7] is not None:  # the meter has a counter this period
                counter = _counter_from_row(row[7:])
                counters[(counter.subscription_id, counter.meter_id, counter.period_start)] = (
                    counter
                )
        return meters, counters


# Ledger accounts are never deleted, so their ids are cached per process — once the
# transaction that found or created them has committed, so that no other thread is handed
# an account it cannot see yet. (Tests, which do empty the tables, call clear_caches().)
_account_ids: dict[tuple[str, str], int] = {}


def _remember(key: tuple[str, str], account_id: int) -> int:
    def remember() -> None:
        if len(_account_ids) > 100_000:
            _account_ids.clear()
        _account_ids[key] = account_id

    transaction.on_commit(remember)
    return account_id


def _system_account_id(code: str, currency: str) -> int:
    key = (code, currency)
    if key in _account_ids:
        return _account_ids[key]
    account = ledger.ensure_system_account(
        code=code, currency=currency, normal_balance=NormalBalance.CREDIT
    )
    return _remember(key, account.pk)


def _usage_account_id(customer: Customer) -> int:
    key = (f"tokens:{customer.pk}", "TOKENS")
    if key in _account_ids:
        return _account_ids[key]
    return _remember(key, billing_services.usage_account(customer=customer).pk)


def clear_caches() -> None:
    """Forget cached plans, meters and account ids (for tests, which empty the tables)."""
    global _meter_set
    _account_ids.clear()
    plan_terms.cache_clear()
    _meter_set = None


def _counter_from_row(row: Sequence[Any]) -> Counter:
    """A Counter from the COUNTER_COLUMNS of a PeriodUsage row."""
    distinct = row[9]
    if isinstance(distinct, str):
        distinct = json.loads(distinct)
    return Counter(
        subscription_id=row[0],
        meter_id=row[1],
        period_start=row[2],
        period_end=row[3],
        quantity=row[4],
        amount=row[5],
        charged=row[6],
        currency=row[7],
        event_count=row[8],
        distinct_values=list(distinct or []),
        latest_at=row[10],
    )


def _load_counters(
    wanted: set[tuple[int, int, datetime]],
) -> dict[tuple[int, int, datetime], Counter]:
    """The PeriodUsage rows of these (subscription, meter, period start) keys, in one query."""
    if not wanted:
        return {}
    keys = list(wanted)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {COUNTER_COLUMNS} "
            "FROM metering_periodusage u JOIN unnest(%s::bigint[], %s::bigint[], "
            "%s::timestamptz[]) AS k(s, m, p) "
            "ON u.subscription_id = k.s AND u.meter_id = k.m AND u.period_start = k.p",
            [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]],
        )
        counters = {}
        for row in cursor.fetchall():
            counter = _counter_from_row(row)
            counters[(counter.subscription_id, counter.meter_id, counter.period_start)] = counter
        return counters


@dataclass
class UsagePosting:
    """One customer's accepted events of one rating part, as one ledger transaction: its
    legs are the sums of the events' (tokens to ``@TokensServed``; per currency, the wallet
    to ``@Revenue`` or ``@CreditsUsed``), and every event with something to post points
    at it. Its reference is the first such event's (``_reference``): unique, because that
    event is stored once and in no other transaction, and the same as the one-transaction-
    per-event reference for a part of one event."""

    customer: Customer
    first_key: str
    event_ids: list[int] = field(default_factory=list)
    tokens: int = 0
    money: dict[tuple[int, str], Decimal] = field(default_factory=dict)  # (wallet, currency)
    cost: Decimal = ZERO
    models: set[tuple[str, str]] = field(default_factory=set)
    effective_at: datetime | None = None
    names: set[str] = field(default_factory=set)
    metadata: dict[str, Any] = field(default_factory=dict)
    legs: list[Leg] = field(default_factory=list)

    def spec(self) -> ledger.TransactionSpec:
        name = next(iter(self.names)) if len(self.names) == 1 else "events"
        return ledger.TransactionSpec(
            reference=_reference(self.customer.pk, self.first_key),
            legs=self.legs,
            description=f"Usage: {name}"
            + (f" ({len(self.event_ids)} events)" if len(self.event_ids) > 1 else ""),
            metadata=self.metadata,
            effective_at=self.effective_at,
        )


def _usage_postings(
    accepted: list[Accepted], event_ids: list[int], tokens_served, sinks: dict[str, int]
) -> list[UsagePosting]:
    """The part's accepted events summed per customer into one posting each (an event with
    neither tokens nor money has nothing to post and points at no transaction)."""
    postings: dict[int, UsagePosting] = {}
    for event_id, a in zip(event_ids, accepted, strict=True):
        p, money = a.p, a.money
        tokens = p.usage.total_tokens if p.usage is not None else 0
        if not tokens and not money:
            continue
        posting = postings.get(a.customer.pk)
        if posting is None:
            posting = postings[a.customer.pk] = UsagePosting(a.customer, p.source.idempotency_key)
        posting.event_ids.append(event_id)
        posting.tokens += tokens
        if money:
            key = (a.wallet.account_id, a.currency)
            posting.money[key] = posting.money.get(key, ZERO) + money
        if p.cost is not None:
            posting.cost += ledger_round(p.cost.total)
        if p.usage is not None:
            posting.models.add((p.usage.provider, p.usage.model))
        posting.names.add(p.source.event_name)
        if posting.effective_at is None or p.source.timestamp > posting.effective_at:
            posting.effective_at = p.source.timestamp
    result = []
    for posting in postings.values():
        # Amounts here are exact already (whole tokens; money rounded to the ledger's 12
        # places, and sums of them), so the legs are built directly; the ledger checks
        # them again in SQL, and the database checks that they are the events' sums.
        legs = []
        if posting.tokens:
            legs += [
                Leg(_usage_account_id(posting.customer), Decimal(posting.tokens)),
                Leg(tokens_served, -Decimal(posting.tokens)),
            ]
        for (wallet_account, currency), money in sorted(posting.money.items()):
            if money:  # a period's credits back may cancel its charges
                legs += [Leg(wallet_account, money), Leg(sinks[currency], -money)]
        if not legs:  # nothing moves: the events point at no transaction
            continue
        posting.legs = legs
        metadata: dict[str, Any] = {
            "kind": "usage",
            "event_id": posting.event_ids[0],
            "events": len(posting.event_ids),
            "customer": posting.customer.external_id,
        }
        if len(posting.models) == 1:
            provider, model = next(iter(posting.models))
            metadata.update(model=model, provider=provider)
        if posting.models:
            metadata["cost_usd"] = str(posting.cost)
        posting.metadata = metadata
        result.append(posting)
    return result


def _write(
    accepted: list[Accepted], counters, outcomes, event_ids: list[int], hold_id=None, *, now=None
) -> None:
    created: dict[tuple[int, str], WalletRow] = {}
    for a in accepted:
        if a.wallet.account_id is None and a.money:
            key = (a.customer.pk, a.currency)
            if key not in created:
                wallet = billing_services.ensure_wallet(customer=a.customer, currency=a.currency)
                created[key] = WalletRow(
                    a.customer.pk, a.currency, wallet.account_id, wallet.billing_mode, None
                )
            a.wallet = created[key]
    event_ids = event_ids[: len(accepted)]  # drawn by _read_part, one per event of the part
    has_tokens = any(a.p.usage is not None and a.p.usage.total_tokens for a in accepted)
    tokens_served = (
        _system_account_id(billing_services.TOKENS_SERVED, "TOKENS") if has_tokens else None
    )
    sinks = {
        currency: _system_account_id(CREDITS_USED if currency == CREDITS else REVENUE, currency)
        for currency in {a.currency for a in accepted}
    }
    # Credits debited are drawn from the wallets' grants in drain order (billing.credits);
    # the customers' usage locks are held, so no other debit draws on the same remainder.
    book = credits.GrantBook.load(
        {a.wallet.account_id for a in accepted if a.money > 0 and a.currency == CREDITS},
        now=now,
    )
    postings = _usage_postings(accepted, event_ids, tokens_served, sinks)
    specs, allocations = [], []
    for posting in postings:
        parts: list[tuple[int, Decimal]] = []
        for (wallet_account, currency), money in posting.money.items():
            if book and money > 0 and currency == CREDITS:
                parts += book.take(wallet_account, money, settling_hold=hold_id is not None)
        if parts:
            posting.metadata["grants"] = credits.grants_metadata(parts)
        allocations.append(parts)
        specs.append(posting.spec())
    try:
        if hold_id is not None:
            settled = ledger.settle_hold_with(hold_id=hold_id, spec=specs[0] if specs else None)
            posted = [settled] if settled is not None else []
        elif specs:
            # No savepoint: any error here abandons the part's whole transaction.
            posted = ledger.post_transactions(transactions=specs, savepoint=False)
        else:
            posted = []
    except ledger_errors.ReferenceReused as error:
        raise errors.InvalidEvent(str(error), param="idempotency_key") from None
    transaction_ids: dict[int, int] = {}
    for posting, parts, t in zip(postings, allocations, posted, strict=True):
        for event_id in posting.event_ids:
            transaction_ids[event_id] = t.pk
        if parts and not getattr(t, "replayed", False):
            book.record(t.pk, parts, AllocationKind.USAGE)
    book.save()
    event_rows = []
    received_at = timezone.now()
    for event_id, a in zip(event_ids, accepted, strict=True):
        p, customer, money, currency = a.p, a.customer, a.money, a.currency
        u = p.usage
        cost = ledger_round(p.cost.total) if p.cost is not None else ZERO
        row = {
            "id": event_id,
            "idempotency_key": p.source.idempotency_key,
            "amount": money,
            "currency": currency,
            "cost": cost,
            "ledger_transaction_id": transaction_ids.get(event_id),
        }
        outcomes[p.index] = Outcome("accepted", event=row)
        event_rows.append(
            (
                event_id,
                customer.pk,
                p.source.idempotency_key,
                p.source.event_name,
                p.source.timestamp,
                json.dumps(p.source.properties, default=str),
                a.subscription.pk,
                a.period_start,
                u.provider if u else "",
                u.model if u else "",
                p.price.pk if p.price is not None else None,
                u.input_tokens if u else 0,
                u.cache_read_tokens if u else 0,
                u.cache_write_tokens if u else 0,
                u.output_tokens if u else 0,
                u.reasoning_tokens if u else 0,
                currency,
                money,
                cost,
                transaction_ids.get(event_id),
                p.source.received_at or received_at,
            )
        )
    # Duplicates inside the batch point at the accepted twin.
    for outcome in outcomes:
        if (
            outcome is not None
            and outcome.status == "duplicate"
            and outcome.event
            and "_same_as" in outcome.event
        ):
            twin = outcomes[outcome.event["_same_as"]]
            outcome.event = twin.event if twin is not None else None

    # No conflict is possible: the customer's rating lock is held and its duplicates were
    # sorted out above (the unique index still stands behind that).
    if len(event_rows) <= EVENTS_BY_INSERT:
        # A few events: inserted by the statement that moves the counters, one round trip.
        _execute_together(
            None,
            [
                _insert_events(event_rows),
                _forget_incoming(accepted),
                _upsert_counters(counters),
                _upsert_daily(accepted),
                _upsert_model_usage(accepted),
            ],
        )
        return
    with connection.cursor() as cursor:
        # COPY: the fastest way in for many rows.
        with cursor.cursor.copy(f"COPY metering_event ({EVENT_COLUMNS}) FROM STDIN") as copy:
            for row in event_rows:
                copy.write_row(row)
        _execute_together(
            cursor,
            [
                _forget_incoming(accepted),
                _upsert_counters(counters),
                _upsert_daily(accepted),
                _upsert_model_usage(accepted),
            ],
        )


# A part with at most this many accepted events inserts them with an INSERT … SELECT FROM
# unnest() sent with the counters' statement; more go by COPY first.
EVENTS_BY_INSERT = 32
EVENT_COLUMNS = (
    "id, customer_id, idempotency_key, event_name, timestamp, properties, subscription_id, "
    "period_start, provider, model, model_price_id, input_tokens, cache_read_tokens, "
    "cache_write_tokens, output_tokens, reasoning_tokens, currency, amount, cost, "
    "ledger_transaction_id, received_at"
)
_EVENT_ROW = (
    "id bigint, customer_id bigint, idempotency_key text, event_name text, "
    "timestamp timestamptz, properties text, subscription_id bigint, period_start timestamptz, "
    "provider text, model text, model_price_id bigint, input_tokens bigint, "
    "cache_read_tokens bigint, cache_write_tokens bigint, output_tokens bigint, "
    "reasoning_tokens bigint, currency text, amount numeric, cost numeric, "
    "ledger_transaction_id bigint, received_at timestamptz"
)


def _insert_events(event_rows: list[tuple]) -> Statement:
    """The events' rows (as written by COPY: properties as JSON text) in one INSERT."""
    source, params = _rows("r", _EVENT_ROW, event_rows)
    names = EVENT_COLUMNS.replace("properties", "properties::jsonb")
    return (f"INSERT INTO metering_event ({EVENT_COLUMNS}) SELECT {names} FROM {source}", params)


# Up to this many rows, a statement reads them from one JSON document; more, from one
# array per column. An array parameter costs psycopg about 5 µs to adapt whatever its
# length (the 61 arrays of a single event's write statement: 0.3 ms of Python, more than
# the rest of writing it); a JSON document costs little per document and more per value.
ROWS_AS_JSON = 32


def _rows(alias: str, columns: str, rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """A FROM item ``alias(columns)`` reading ``rows`` ("name type, …" in ``columns``)
    and its parameters: jsonb_to_recordset of one document of objects for a few rows,
    unnest of one array per column for more. Values are exact either way: numbers and
    times go into the document as text, read back by their column's type."""
    names, kinds = zip(*(column.split() for column in columns.split(", ")), strict=True)
    if len(rows) <= ROWS_AS_JSON:
        document = json.dumps([dict(zip(names, row, strict=True)) for row in rows], default=str)
        return f"jsonb_to_recordset(%s::jsonb) AS {alias}({columns})", [document]
    arrays = ", ".join(f"%s::{kind}[]" for kind in kinds)
    return (
        f"unnest({arrays}) AS {alias}({', '.join(names)})",
        [list(column) for column in zip(*rows, strict=True)],
    )


Statement = tuple[str, list[Any]]


def _execute_together(cursor, statements: list[Statement | None]) -> None:
    """Run these statements in one round trip: all but the last as data-modifying CTEs of
    the last (they write different tables, so one snapshot serves them all)."""
    statements = [s for s in statements if s is not None]
    if not statements:
        return
    *before, (last_sql, last_params) = statements
    if not before:
        execute_bound(last_sql, last_params)
        return
    ctes = ", ".join(f"w{i} AS ({sql} RETURNING 1)" for i, (sql, _) in enumerate(before))
    params = [value for _, values in before for value in values] + last_params
    execute_bound(f"WITH {ctes} {last_sql}", params)


def execute_bound(sql: str, params: list[Any], *, binary: bool = False) -> list[tuple]:
    """Execute with the parameters bound by the server; the rows, if it returns any (in
    binary with ``binary``: arrays of records then load as lists of typed tuples).
    Django's cursors bind client-side: every element of these arrays was quoted into the
    statement's text, a fifth of a batch's time in Python (measured). A psycopg cursor on
    the same connection (same session, same transaction) sends them as parameters instead;
    Django's wrapper still turns driver errors into django.db errors."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = PsycopgCursor(connection.connection)
        try:
            # %b: the arrays travel in binary, dumped without escaping each element
            cursor.execute(sql.replace("%s", "%b"), params, binary=binary)
            return cursor.fetchall() if cursor.description else []
        finally:
            cursor.close()


def _forget_incoming(accepted: list[Accepted]) -> Statement:
    """An event rated here may wait in the asynchronous inbox under the same key (pending,
    or refused and now sent again synchronously): it is rated now, so the inbox forgets
    it, or it would be listed refused though charged (metering.inbox)."""
    source, params = _rows(
        "k", "c bigint, key text", [(a.customer.pk, a.p.source.idempotency_key) for a in accepted]
    )
    return (
        f"DELETE FROM metering_incomingevent i USING {source} "
        "WHERE i.customer_id = k.c AND i.idempotency_key = k.key",
        params,
    )


def _upsert_counters(counters: dict) -> Statement | None:
    rows = [
        (
            c.subscription_id,
            c.meter_id,
            c.period_start,
            c.period_end,
            c.quantity,
            c.amount,
            c.charged,
            c.currency,
            c.event_count,
            json.dumps(c.distinct_values, default=str),
            c.latest_at,
        )
        for c in counters.values()
        if c.changed
    ]
    if not rows:
        return None
    source, params = _rows(
        "r",
        "s bigint, m bigint, ps timestamptz, pe timestamptz, q numeric, a numeric, c numeric, "
        "cur text, n bigint, dv text, la timestamptz",
        rows,
    )
    return (
        "INSERT INTO metering_periodusage (subscription_id, meter_id, period_start, period_end, "
        "quantity, amount, charged, currency, event_count, distinct_values, latest_at, updated_at) "
        f"SELECT s, m, ps, pe, q, a, c, cur, n, dv::jsonb, la, now() FROM {source} "
        "ON CONFLICT (subscription_id, meter_id, period_start) DO UPDATE SET "
        "quantity = EXCLUDED.quantity, amount = EXCLUDED.amount, charged = EXCLUDED.charged, "
        "currency = EXCLUDED.currency, event_count = EXCLUDED.event_count, "
        "distinct_values = EXCLUDED.distinct_values, latest_at = EXCLUDED.latest_at, "
        "updated_at = now()",
        params,
    )


def _dimensions(meter: Meter, p: Prepared) -> tuple[str, dict[str, Any]]:
    if not meter.group_by:
        return "", {}
    dims = {}
    for path in meter.group_by:
        value = _path_value(p.source.properties, p.usage, path)
        if isinstance(value, dict | list):
            value = json.dumps(value, sort_keys=True, default=str)
        dims[path] = None if value is None else (value if isinstance(value, str) else str(value))
    key = json.dumps(dims, sort_keys=True, separators=(",", ":"))
    if len(key) > 200:  # the column holds 500; long values are keyed by their hash
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key, dims


def _upsert_daily(accepted: list[Accepted]) -> Statement | None:
    totals: dict[tuple, list] = {}
    for a in accepted:
        day = a.p.source.timestamp.astimezone(UTC).date()
        for move in a.moves:
            key_text, dims = _dimensions(move.meter, a.p)
            key = (a.subscription.pk, a.customer.pk, move.meter.pk, a.period_start, day, key_text)
            entry = totals.setdefault(key, [dims, ZERO, ZERO, ZERO, a.currency, 0])
            entry[1] += move.quantity_delta
            entry[2] += move.included_delta
            entry[3] += move.amount_delta
            entry[5] += 1
    rows = [
        (
            subscription_id,
            customer_id,
            meter_id,
            period_start,
            day,
            key_text,
            json.dumps(dims),
            quantity,
            included,
            amount,
            currency,
            count,
        )
        for (subscription_id, customer_id, meter_id, period_start, day, key_text), (
            dims,
            quantity,
            included,
            amount,
            currency,
            count,
        ) in totals.items()
    ]
    if not rows:
        return None
    source, params = _rows(
        "r",
        "s bigint, c bigint, m bigint, ps timestamptz, d date, k text, dims text, q numeric, "
        "i numeric, a numeric, cur text, n bigint",
        rows,
    )
    return (
        "INSERT INTO metering_dailyusage (subscription_id, customer_id, meter_id, period_start, "
        "day, dimension_key, dimensions, quantity, included_quantity, amount, currency, "
        "event_count, updated_at) "
        f"SELECT s, c, m, ps, d, k, dims::jsonb, q, i, a, cur, n, now() FROM {source} "
        "ON CONFLICT (subscription_id, meter_id, period_start, day, dimension_key) DO "
        "UPDATE SET quantity = metering_dailyusage.quantity + EXCLUDED.quantity, "
        "included_quantity = metering_dailyusage.included_quantity + EXCLUDED.included_quantity, "
        "amount = metering_dailyusage.amount + EXCLUDED.amount, "
        "event_count = metering_dailyusage.event_count + EXCLUDED.event_count, updated_at = now()",
        params,
    )


def _upsert_model_usage(accepted: list[Accepted]) -> Statement | None:
    totals: dict[tuple, list] = {}
    for a in accepted:
        p, money = a.p, a.money
        if p.usage is None:
            continue
        u = p.usage
        day = p.source.timestamp.astimezone(UTC).date()
        key = (
            a.customer.pk,
            a.subscription.pk,
            a.period_start,
            day,
            u.provider,
            u.model,
            a.currency,
        )
        entry = totals.setdefault(key, [0, 0, 0, 0, 0, 0, ZERO, ZERO])
        entry[0] += 1
        entry[1] += u.input_tokens
        entry[2] += u.cache_read_tokens
        entry[3] += u.cache_write_tokens
        entry[4] += u.output_tokens
        entry[5] += u.reasoning_tokens
        entry[6] += money
        entry[7] += ledger_round(p.cost.total)
    if not totals:
        return None
    source, params = _rows(
        "x",
        "c bigint, s bigint, ps timestamptz, d date, pr text, mo text, cur text, n bigint, "
        "i bigint, cr bigint, cw bigint, o bigint, r bigint, a numeric, co numeric",
        [(*key, *values) for key, values in totals.items()],
    )
    return (
        "INSERT INTO metering_modelusage (customer_id, subscription_id, period_start, day, "
        "provider, model, currency, event_count, input_tokens, cache_read_tokens, "
        "cache_write_tokens, output_tokens, reasoning_tokens, amount, cost, updated_at) "
        f"SELECT c, s, ps, d, pr, mo, cur, n, i, cr, cw, o, r, a, co, now() FROM {source} "
        "ON CONFLICT (subscription_id, period_start, day, provider, model, currency) DO UPDATE SET "
        "event_count = metering_modelusage.event_count + EXCLUDED.event_count, "
        "input_tokens = metering_modelusage.input_tokens + EXCLUDED.input_tokens, "
        "cache_read_tokens = metering_modelusage.cache_read_tokens + EXCLUDED.cache_read_tokens, "
        "cache_write_tokens = metering_modelusage.cache_write_tokens "
        "+ EXCLUDED.cache_write_tokens, "
        "output_tokens = metering_modelusage.output_tokens + EXCLUDED.output_tokens, "
        "reasoning_tokens = metering_modelusage.reasoning_tokens + EXCLUDED.reasoning_tokens, "
        "amount = metering_modelusage.amount + EXCLUDED.amount, "
        "cost = metering_modelusage.cost + EXCLUDED.cost, updated_at = now()",
        params,
    )


# --- estimates: authorize and holds -----------------------------------------------------------


NOT_LOADED = object()  # estimate(): the caller did not load the subscription


@dataclass
class Estimate:
    customer: Customer
    currency: str
    amount: Decimal  # what the usage would be charged now
    balance: Decimal  # posted − held
    available: Decimal | None  # what may still be spent; None: no limit
    allowed: bool
    reason: str | None
    wallet: WalletRow | None = None
    cost: Decimal | None = None  # the provider's cost of the estimated usage (USD)


def estimate(
    *,
    customer: Customer,
    subscription: Subscription | None | object = NOT_LOADED,
    amount: Decimal | None = None,
    currency: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    event_name: str | None = None,
    now: datetime | None = None,
) -> Estimate:
    """May ``customer`` spend ``amount`` — or what an LLM call of ``model`` with these token
    counts would be charged now, under its plan, allowance and tiers? Read from the same
    balances and counters rating uses; nothing is written or locked."""
    now = now or timezone.now()
    if subscription is NOT_LOADED:
        _, subscription = load_customers(ids=[customer.pk]).get(customer.external_id, (None, None))
    terms = plan_terms(_plan_at(subscription, now)) if subscription is not None else None
    cost = None
    if amount is None and terms is not None:
        currency = terms.money_currency
    currency = currency or (terms.money_currency if terms else customer.currency)
    # the wallet and the customer's margin overrides in one query (the estimate's hot path)
    wallet, overrides = _wallet_and_margins(customer.pk, currency)
    if amount is None:
        if terms is None:
            raise errors.NoSubscription(
                f"customer {customer.external_id} has no active subscription to price usage "
                "against; authorize an amount instead",
                param="customer",
            )
        amount, cost = _estimate_usage(
            customer,
            subscription,
            terms,
            model,
            provider,
            input_tokens,
            output_tokens,
            event_name,
            now,
            overrides,
        )
    if wallet is None:
        return Estimate(
            customer,
            currency,
            amount,
            ZERO,
            ZERO,
            amount <= 0,
            None if amount <= 0 else "insufficient_funds",
        )
    state = ledger.read_balances(account_ids=[wallet.account_id])[wallet.account_id]
    if currency == CREDITS:
        # Credits of grants past their expiry that the expiry task has not taken yet are not
        # spendable: rating would expire them first (billing.credits.expire_due_for).
        gone = credits.expired_remaining(wallet.account_id, now=now)
        if gone > 0:
            taken = min(gone, max(state.available - (state.floor or ZERO), ZERO))
            state = ledger.LockedBalance(
                state.account_id, state.posted - taken, state.held, state.floor
            )
    spendable = None if state.floor is None else state.available - state.floor
    allowed = amount <= 0 or state.can_spend(amount)
    reason = None
    if subscription is not None and subscription.status == "past_due":
        allowed, reason = False, "subscription_past_due"  # suspended by dunning
    elif not allowed:
        if currency == CREDITS:
            reason = "insufficient_credits"
        elif wallet.billing_mode == "postpaid":
            reason = "credit_limit_exceeded"
        else:
            reason = "insufficient_funds"
    return Estimate(
        customer=customer,
        currency=currency,
        amount=amount,
        balance=state.available,
        available=spendable,
        allowed=allowed,
        reason=reason,
        wallet=wallet,
        cost=cost,
    )


def _estimate_usage(
    customer,
    subscription,
    terms,
    model,
    provider,
    input_tokens,
    output_tokens,
    event_name,
    now,
    overrides,
) -> tuple[Decimal, Decimal | None]:
    if not model:
        raise errors.InvalidEvent("give an amount, or a model with token estimates", param="model")
    usage = normalize_usage(
        {"input_tokens": input_tokens, "output_tokens": output_tokens},
        provider=provider,
        model=model,
    )
    price = catalog.find_price(provider=usage.provider, model=usage.model, at=now)
    cost = catalog.cost_of(price, usage, now)
    names = {event_name} if event_name else set(terms.llm_event_names)
    period_start, period_end, in_trial = _period_for(subscription, terms, now)
    meters, counters = _meters_with_counters(names, subscription.pk, period_start)
    properties = {"model": model, **({"provider": provider} if provider else {})}
    prepared = Prepared(
        index=0,
        source=EventIn("estimate", customer.external_id, next(iter(names), ""), now, properties),
        meters=meters,
        usage=usage,
        price=price,
        cost=cost,
    )
    money = ZERO
    for meter in meters:
        try:
            reading = _quantity(meter, prepared)
        except BillingError:
            continue  # a meter reading a property the estimate cannot know
        if reading is None:
            continue
        counter = counters.get(
            (subscription.pk, meter.pk, period_start),
            Counter(subscription.pk, meter.pk, period_start, period_end),
        )
        move = _move(counter, meter, reading, prepared, terms, in_trial, overrides)
        money += move.charged - counter.charged
    return money, ledger_round(cost.total)
