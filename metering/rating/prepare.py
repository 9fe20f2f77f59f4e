"""Step 1 of rating: each event on its own, before the database is asked anything — its
moment and reserved names checked, its provider usage normalised and priced from the
catalog, the meters that read it (cached per process, reloaded when their stamp changes),
and its reading for a meter (``_quantity``)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection

from billing.errors import BillingError
from billing.models import (
    Aggregation,
    Meter,
)
from metering import catalog, errors
from metering.normalize import NormalizedUsage, normalize_usage
from metering.rating.base import (
    FUTURE_TOLERANCE,
    LLM_FIELD_NAMES,
    MAX_QUANTITY,
    MAX_QUANTITY_INT,
    RESERVED_PROPERTY,
    EventIn,
)

# --- step 1: each event on its own ---------------------------------------------------------


@dataclass(slots=True)  # one an event: slots, cheaper to make and read
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
    if "." not in path and type(properties) is dict:
        return properties.get(path)  # the loop below, of a one-part path
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
    price, cost = catalog.price_and_cost(
        provider=usage.provider, model=usage.model, at=event.timestamp, usage=usage
    )
    return usage, price, cost


ONE = Decimal(1)
COUNTED = "count"  # ``fast_reading``: a meter counting every event it reads


def fast_reading(meter: Meter) -> str | None:
    """How ``_quantity`` reads ``meter`` when it can be said without it, for a loop that
    asks it of many events: ``COUNTED`` (a count without filters: 1, whatever the event),
    the name of a ``NormalizedUsage`` count (a sum, maximum or latest value of an
    ``llm.`` token count without filters: the event's count, as a Decimal, when the event
    has LLM usage and the count is a whole number below MAX_QUANTITY), or None (ask
    ``_quantity``). The answers are ``_quantity``'s, charged or not: a reading of those
    cases never raises."""
    if meter.filters:
        return None
    if meter.aggregation == Aggregation.COUNT:
        return COUNTED
    path = meter.property
    if (
        meter.aggregation in (Aggregation.SUM, Aggregation.MAX, Aggregation.LATEST)
        and type(path) is str
        and path.startswith("llm.")
        and path[4:] in LLM_FIELD_NAMES
    ):
        return path[4:]
    return None


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
    if type(value) is int and 0 <= value < MAX_QUANTITY_INT:
        return Decimal(value)  # the common reading (token counts): what the checks below pass
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise errors.InvalidEvent(f"{param} must be a number", param=param)
    value = Decimal(value)
    if not value.is_finite() or value < 0:
        raise errors.InvalidEvent(f"{param} must be a finite, non-negative number", param=param)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int), "a finite number's (checked above)"
    if value >= MAX_QUANTITY or exponent < -12:
        raise errors.InvalidEvent(
            f"{param} must be below 1e20 with at most 12 decimal places", param=param
        )
    return value


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
