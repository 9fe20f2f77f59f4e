"""The model price catalog: what each provider charges per million tokens, and what one
LLM call therefore costs.

Import
    ``import_genai_prices()`` (``manage.py load_model_prices``) reads the data snapshot that
    ships with the ``genai-prices`` package — no network — into ``ModelPrice`` rows, one per
    provider, model and price version. The first import of a model brings its whole dated
    history. Later imports never rewrite the past: if the price in force has changed, a
    version effective from the time of the run is added; future versions (nothing was rated
    with them yet) are added or corrected in place. A model finance staff priced by hand
    (any row with ``source="manual"``) is never touched by the import. Prices for some hours
    of the UTC day (DeepSeek's standard hours) are kept as the version's ``time_windows``;
    kinds we do not rate (audio, images, web searches …) are listed in the row's ``notes``
    instead of being guessed.

Lookup
    ``find_price(provider, model, at)`` finds the row that prices a model name at a time: the
    provider's row whose id equals the name, else the first row (by ``position``) whose
    ``match`` rule accepts it, else the same in the providers genai-prices lets this provider
    fall back to (Azure serves OpenAI's models, Bedrock Anthropic's …). Among that model's
    versions, the latest ``effective_from`` not after ``at`` wins. No row → ``UnknownModel``:
    an unknown model is refused, never priced at zero.

Cost
    ``cost_of(price, usage)`` is exact (``Decimal``, no float, no rounding). Each token kind is
    priced at its own price or, when the catalog has none for it, at its parent's, as the
    providers bill: cache reads and writes at the input price, one-hour cache writes at the
    cache-write price, reasoning at the output price. A tier applies to every token of the
    request when the whole prompt is larger than its threshold. This agrees with
    genai-prices' own ``calc_price`` for every model whose prices use only these kinds
    (checked in the tests).

The catalog is cached per process and reloaded when it changes (checked at most every
``CATALOG_RECHECK_SECONDS``), so rating does no catalog query per event.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from typing import Any, NamedTuple

from django.db import transaction
from django.db.models import Count, Max

from billing import meters
from metering import errors
from metering.models import ModelPrice
from metering.normalize import NormalizedUsage

MILLION = Decimal(1_000_000)
THOUSAND = Decimal(1_000)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
CATALOG_RECHECK_SECONDS = 2.0

# genai-prices price key → our column
PRICE_COLUMNS = {
    "input_mtok": "input_mtok",
    "output_mtok": "output_mtok",
    "cache_read_mtok": "cache_read_mtok",
    "cache_write_mtok": "cache_write_mtok",
    "cache_write_1h_mtok": "cache_write_1h_mtok",
    "output_reasoning_mtok": "reasoning_mtok",
    "requests_kcount": "requests_kcount",
}
TOKEN_COLUMNS = [c for c in PRICE_COLUMNS.values() if c != "requests_kcount"]

CATALOG_KINDS = meters.CATALOG_KINDS  # defined by the core, which validates plans


# --- match rules ---------------------------------------------------------------------------


def _clause_to_json(clause: Any) -> dict[str, Any]:
    name = type(clause).__name__
    if name == "ClauseOr":
        return {"or": [_clause_to_json(c) for c in clause.or_]}
    if name == "ClauseAnd":
        return {"and": [_clause_to_json(c) for c in clause.and_]}
    for key in ("starts_with", "ends_with", "contains", "regex", "equals"):
        if hasattr(clause, key):
            return {key: getattr(clause, key)}
    raise ValueError(f"unknown match clause {name}")


def compile_match(rule: dict[str, Any], model_id: str) -> Callable[[str], bool]:
    """A predicate on a lower-cased model name. An empty rule matches the model id only."""
    if not rule:
        target = model_id.lower()
        return lambda name: name == target
    if "or" in rule:
        parts = [compile_match(r, model_id) for r in rule["or"]]
        return lambda name: any(p(name) for p in parts)
    if "and" in rule:
        parts = [compile_match(r, model_id) for r in rule["and"]]
        return lambda name: all(p(name) for p in parts)
    if "starts_with" in rule:
        prefix = rule["starts_with"].lower()
        return lambda name: name.startswith(prefix)
    if "ends_with" in rule:
        suffix = rule["ends_with"].lower()
        return lambda name: name.endswith(suffix)
    if "contains" in rule:
        part = rule["contains"].lower()
        return lambda name: part in name
    if "equals" in rule:
        target = rule["equals"].lower()
        return lambda name: name == target
    if "regex" in rule:
        pattern = re.compile(rule["regex"])
        return lambda name: bool(pattern.search(name))
    raise ValueError(f"unknown match rule {rule!r}")


# --- import --------------------------------------------------------------------------------


@dataclass
class ImportReport:
    source: str
    models: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0


def _price_fields(model_price: Any) -> tuple[dict[str, Any], list[str]]:
    """Our columns and tiers from a genai-prices ModelPrice, and what we leave out."""
    fields: dict[str, Any] = {column: None for column in PRICE_COLUMNS.values()}
    tiers: dict[int, dict[str, str]] = {}
    left_out = []
    for key, value in model_price.__dict__.items():
        if key.startswith("_") or value is None:
            continue
        column = PRICE_COLUMNS.get(key)
        if column is None:
            left_out.append(key)
            continue
        if type(value).__name__ == "TieredPrices":
            fields[column] = value.base
            for tier in value.tiers:
                tiers.setdefault(tier.start, {})[column] = str(tier.price)
        else:
            fields[column] = value
    fields["tiers"] = [
        {"above_input_tokens": start, **prices} for start, prices in sorted(tiers.items())
    ]
    return fields, left_out


def _versions(model: Any) -> tuple[list[tuple[datetime, Any]], list[str]]:
    """(effective_from, genai ModelPrice) for each price version we can represent."""
    notes: list[str] = []
    if not isinstance(model.prices, list):
        return [(EPOCH, model.prices)], notes
    versions = []
    for conditional in model.prices:
        constraint = conditional.constraint
        if constraint is None:
            versions.append((EPOCH, conditional.prices))
        elif type(constraint).__name__ == "StartDateConstraint":
            start: date = constraint.start_date
            versions.append(
                (datetime(start.year, start.month, start.day, tzinfo=UTC), conditional.prices)
            )
    if not versions and model.prices:
        versions.append((EPOCH, model.prices[0].prices))
    return versions, notes


def _time_windows(model: Any, version_prices: Any) -> list[dict[str, Any]]:
    """The time-of-day prices that override a version: genai-prices lets the last active
    entry of a model's price list win, so a window applies to the versions listed before
    it. (DeepSeek lists its off-peak price first and the standard price as a window.)"""
    if not isinstance(model.prices, list):
        return []
    position = next((i for i, c in enumerate(model.prices) if c.prices is version_prices), None)
    if position is None:
        return []
    windows = []
    for conditional in model.prices[position + 1 :]:
        constraint = conditional.constraint
        if type(constraint).__name__ == "TimeOfDateConstraint":
            fields, _ = _price_fields(conditional.prices)
            window = {
                "start": _utc_time(constraint.start_time).isoformat(),
                "end": _utc_time(constraint.end_time).isoformat(),
            }
            window.update(
                {
                    k: (str(v) if isinstance(v, Decimal) else v)
                    for k, v in fields.items()
                    if v is not None
                }
            )
            windows.append(window)
    return windows


def _utc_time(value: time_of_day) -> time_of_day:
    if value.tzinfo is None:
        return value
    moved = datetime.combine(date(2000, 1, 1), value).astimezone(UTC)
    return moved.time()


def _same_prices(row: ModelPrice, fields: dict[str, Any]) -> bool:
    return (
        all(getattr(row, column) == fields[column] for column in PRICE_COLUMNS.values())
        and row.tiers == fields["tiers"]
        and row.time_windows == fields["time_windows"]
    )


@transaction.atomic
def import_genai_prices(*, now: datetime | None = None) -> ImportReport:
    """Load the genai-prices snapshot into the catalog; idempotent."""
    import genai_prices
    from genai_prices.data_snapshot import get_snapshot

    now = now or datetime.now(UTC)
    source = f"genai-prices {genai_prices.__version__}"
    report = ImportReport(source=source)
    existing: dict[tuple[str, str], dict[datetime, ModelPrice]] = {}
    priced_by_hand: set[tuple[str, str]] = set()
    for price in ModelPrice.objects.all():
        if price.source == "manual":
            priced_by_hand.add((price.provider, price.model))
        else:
            existing.setdefault((price.provider, price.model), {})[price.effective_from] = price
    to_create: list[ModelPrice] = []
    to_update: list[ModelPrice] = []

    def new_row(provider, model, position, match, effective_from, fields, notes):
        return ModelPrice(
            provider=provider.id,
            model=model.id,
            name=model.name or "",
            match=match,
            position=position,
            effective_from=effective_from,
            source=source,
            notes="\n".join(notes),
            **fields,
        )

    for provider in get_snapshot().providers:
        for position, model in enumerate(provider.models):
            report.models += 1
            if (provider.id, model.id) in priced_by_hand:
                report.skipped += 1  # finance staff priced it: theirs, never overwritten
                continue
            versions, notes = _versions(model)
            try:
                match = _clause_to_json(model.match)
            except ValueError:
                versions = []
            if not versions:
                report.skipped += 1
                continue
            snapshot = []
            for effective_from, model_price in sorted(versions, key=lambda v: v[0]):
                fields, left_out = _price_fields(model_price)
                fields["time_windows"] = _time_windows(model, model_price)
                row_notes = list(notes)
                if left_out:
                    row_notes.append(
                        "also priced by the provider, not rated here: "
                        + ", ".join(sorted(left_out))
                    )
                if model.price_comments:
                    row_notes.append(model.price_comments)
                snapshot.append((effective_from, fields, row_notes))
            known = existing.get((provider.id, model.id), {})
            if not known:
                # First import of the model: its whole price history, as genai-prices has it.
                for effective_from, fields, row_notes in snapshot:
                    to_create.append(
                        new_row(provider, model, position, match, effective_from, fields, row_notes)
                    )
                continue
            # Later imports never rewrite the past: what was rated stays rated at the price
            # it had. The price in force now is brought in line from this import on; future
            # versions (nothing rated with them yet) are added or corrected in place.
            in_force = [v for v in snapshot if v[0] <= now]
            current_known = max((d for d in known if d <= now), default=None)
            if in_force:
                effective_from, fields, row_notes = in_force[-1]
                if current_known is None or not _same_prices(known[current_known], fields):
                    start = effective_from if current_known is None else max(effective_from, now)
                    if start in known:
                        start = now
                    to_create.append(
                        new_row(provider, model, position, match, start, fields, row_notes)
                    )
                else:
                    report.unchanged += 1
            for effective_from, fields, row_notes in snapshot:
                if effective_from <= now:
                    continue
                row = known.get(effective_from)
                if row is None:
                    to_create.append(
                        new_row(provider, model, position, match, effective_from, fields, row_notes)
                    )
                elif not _same_prices(row, fields):
                    for column, value in fields.items():
                        setattr(row, column, value)
                    to_update.append(row)
                else:
                    report.unchanged += 1
    if to_update:
        ModelPrice.objects.bulk_update(
            to_update, [*PRICE_COLUMNS.values(), "tiers", "time_windows", "updated_at"]
        )
    ModelPrice.objects.bulk_create(to_create, batch_size=1000)
    report.created = len(to_create)
    report.updated = len(to_update)
    invalidate()
    return report


# --- lookup --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CatalogModel:
    provider: str
    model: str
    position: int
    matches: Callable[[str], bool]
    versions: tuple[ModelPrice, ...]  # by effective_from, ascending

    def version_at(self, at: datetime) -> ModelPrice | None:
        chosen = None
        for version in self.versions:
            if version.effective_from <= at:
                chosen = version
            else:
                break
        return chosen


class Catalog:
    def __init__(self, rows: Iterable[ModelPrice]):
        grouped: dict[tuple[str, str], list[ModelPrice]] = {}
        for row in rows:
            grouped.setdefault((row.provider, row.model), []).append(row)
        self.by_provider: dict[str, list[CatalogModel]] = {}
        self.by_id: dict[tuple[str, str], CatalogModel] = {}
        for (provider, model), versions in grouped.items():
            versions.sort(key=lambda r: r.effective_from)
            # A version added by hand often leaves the match rule empty: the rule is the
            # model's, so take the newest one any version states.
            ruled = next((v for v in reversed(versions) if v.match), versions[-1])
            entry = CatalogModel(
                provider=provider,
                model=model,
                position=ruled.position,
                matches=compile_match(ruled.match, model),
                versions=tuple(versions),
            )
            self.by_provider.setdefault(provider, []).append(entry)
            self.by_id[(provider, model.lower())] = entry
        for entries in self.by_provider.values():
            entries.sort(key=lambda e: (e.position, e.model))
        self._resolved: dict[tuple[str, str], CatalogModel | None] = {}
        # (id of a version of this catalog, the tiers its prompt passes) → the version and
        # its unit prices: a version without time windows prices every request alike but
        # for its tiers, so rating works them out once, not per event (``price_and_cost``).
        # The version is kept beside them (the key's id is its while the catalog lives).
        self.units_by_version: dict[
            tuple[int, tuple[bool, ...]], tuple[ModelPrice, UnitPrices]
        ] = {}

    def _match_in(self, provider: str, name: str) -> CatalogModel | None:
        exact = self.by_id.get((provider, name))
        if exact is not None:
            return exact
        for entry in self.by_provider.get(provider, ()):
            if entry.matches(name):
                return entry
        return None

    def resolve(self, provider: str, model: str) -> CatalogModel | None:
        key = (provider, model)
        if key in self._resolved:
            return self._resolved[key]
        name = model.lower()
        found = self._match_in(provider, name)
        if found is None:
            for fallback in _fallback_providers(provider):
                found = self._match_in(fallback, name)
                if found is not None:
                    break
        if found is None:
            compact = _normalize_compact_ref(name)
            if compact != name:
                found = self.resolve(provider, compact)
        if len(self._resolved) < 100_000:
            self._resolved[key] = found
        return found


def _fallback_providers(provider: str) -> list[str]:
    try:
        from genai_prices.data_snapshot import find_provider_by_id, get_snapshot

        found = find_provider_by_id(get_snapshot().providers, provider)
    except Exception:  # noqa: BLE001 - the fallback list is a convenience, never required
        return []
    return list(found.fallback_model_providers or []) if found is not None else []


def _normalize_compact_ref(name: str) -> str:
    try:
        from genai_prices.types import _normalize_compact_dated_ref
    except ImportError:  # pragma: no cover - private helper moved
        return name
    return _normalize_compact_dated_ref(name)


_lock = threading.Lock()
_cached: Catalog | None = None
_cached_stamp: tuple[Any, ...] | None = None
_checked_at = 0.0


def _stamp() -> tuple[Any, ...]:
    row = ModelPrice.objects.aggregate(n=Count("id"), last=Max("id"), changed=Max("updated_at"))
    return (row["n"], row["last"], row["changed"])


def invalidate() -> None:
    global _cached, _checked_at
    with _lock:
        _cached = None
        _checked_at = 0.0


def catalog() -> Catalog:
    """This process's copy of the catalog, reloaded when the table changed."""
    global _cached, _cached_stamp, _checked_at
    now = time.monotonic()
    cached = _cached
    if cached is not None and now - _checked_at < CATALOG_RECHECK_SECONDS:
        return cached  # checked lately: without the lock (read once each, under the GIL)
    with _lock:
        if _cached is not None and now - _checked_at < CATALOG_RECHECK_SECONDS:
            return _cached
        stamp = _stamp()
        if _cached is None or stamp != _cached_stamp:
            _cached = Catalog(ModelPrice.objects.all())
            _cached_stamp = stamp
        _checked_at = now
        return _cached


def find_price(*, provider: str, model: str, at: datetime) -> ModelPrice:
    return _find_in(catalog(), provider, model, at)


def price_and_cost(
    *, provider: str, model: str, at: datetime, usage: NormalizedUsage
) -> tuple[ModelPrice, Cost]:
    """``find_price`` and ``cost_of`` of ``usage`` at ``at`` in one: the same version and
    the same cost, with the version's unit prices kept by the catalog when they do not
    depend on the moment (no time windows), per set of tiers the prompt passes."""
    current = catalog()
    price = _find_in(current, provider, model, at)
    if price.time_windows:
        return price, cost_of(price, usage, at)
    prompt_tokens = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    tiers = price.tiers
    key = (
        id(price),
        tuple(prompt_tokens > t["above_input_tokens"] for t in tiers) if tiers else (),
    )
    found = current.units_by_version.get(key)
    if found is None or found[0] is not price:
        if len(current.units_by_version) >= 10_000:
            current.units_by_version.clear()
        found = current.units_by_version[key] = (price, unit_prices(price, prompt_tokens, at))
    return price, _cost(found[1], usage)


def _find_in(current: Catalog, provider: str, model: str, at: datetime) -> ModelPrice:
    entry = current.resolve(provider, model)
    if entry is None:
        raise errors.UnknownModel(
            f"no price in the model catalog for {model!r}"
            f"{f' from {provider!r}' if provider else ''}; add it in the "
            "admin (Metering › Model prices) or run manage.py load_model_prices",
            param="properties.model",
        )
    version = entry.version_at(at)
    if version is None:
        raise errors.UnknownModel(
            f"the catalog prices {provider}/{entry.model} only from "
            f"{entry.versions[0].effective_from:%Y-%m-%d}",
            param="timestamp",
        )
    return version


# --- cost ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitPrices:
    """USD per token of each of our kinds, after tiers."""

    input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal
    output: Decimal
    reasoning: Decimal
    per_request: Decimal


def _window_at(price: ModelPrice, at: datetime | None) -> dict[str, Any] | None:
    if not price.time_windows or at is None:
        return None
    moment = at.astimezone(UTC).time().isoformat()
    chosen = None
    for window in price.time_windows:  # the last window that is open wins
        start, end = window["start"], window["end"]
        open_now = start <= moment < end if start <= end else moment >= start or moment < end
        if open_now:
            chosen = window
    return chosen


def unit_prices(price: ModelPrice, prompt_tokens: int, at: datetime | None = None) -> UnitPrices:
    """USD per token of each kind for a request with ``prompt_tokens`` at time ``at``."""
    window = _window_at(price, at)
    if window is not None:
        mtok = {
            c: (Decimal(window[c]) if window.get(c) is not None else None) for c in TOKEN_COLUMNS
        }
        tiers = window.get("tiers") or []
        per_request = Decimal(window["requests_kcount"]) if window.get("requests_kcount") else None
    else:
        mtok = {column: getattr(price, column) for column in TOKEN_COLUMNS}
        tiers = price.tiers
        per_request = price.requests_kcount
    for tier in tiers:
        if prompt_tokens > tier["above_input_tokens"]:
            for column in TOKEN_COLUMNS:
                if column in tier:
                    mtok[column] = Decimal(tier[column])
    p_in = mtok["input_mtok"] or Decimal(0)
    p_cr = mtok["cache_read_mtok"] if mtok["cache_read_mtok"] is not None else p_in
    p_cw = mtok["cache_write_mtok"] if mtok["cache_write_mtok"] is not None else p_in
    p_cw1h = mtok["cache_write_1h_mtok"] if mtok["cache_write_1h_mtok"] is not None else p_cw
    p_out = mtok["output_mtok"] or Decimal(0)
    p_reason = mtok["reasoning_mtok"] if mtok["reasoning_mtok"] is not None else p_out
    return UnitPrices(
        input=p_in / MILLION,
        cache_read=p_cr / MILLION,
        cache_write=p_cw / MILLION,
        cache_write_1h=p_cw1h / MILLION,
        output=p_out / MILLION,
        reasoning=p_reason / MILLION,
        per_request=(per_request or Decimal(0)) / THOUSAND,
    )


class Cost(NamedTuple):
    """The provider's price of one call, per kind, exact (immutable, as a tuple: made for
    every event, in one step where a frozen dataclass sets each field in turn)."""

    input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal
    requests: Decimal

    @property
    def total(self) -> Decimal:
        return self.input + self.cache_read + self.cache_write + self.output + self.requests

    def of_kinds(self, kinds: Iterable[str]) -> Decimal:
        return sum((getattr(self, kind) for kind in kinds), Decimal(0))


def cost_of(price: ModelPrice, usage: NormalizedUsage, at: datetime | None = None) -> Cost:
    """The provider's price of ``usage`` at time ``at`` (time-of-day prices need it)."""
    return _cost(unit_prices(price, usage.prompt_tokens, at), usage)


def _cost(p: UnitPrices, usage: NormalizedUsage) -> Cost:
    one_hour = usage.cache_write_1h_tokens
    reasoning = usage.reasoning_tokens
    return _new_tuple(  # Cost(input, cache_read, cache_write, output, requests)
        Cost,
        (
            usage.input_tokens * p.input,
            usage.cache_read_tokens * p.cache_read,
            (usage.cache_write_tokens - one_hour) * p.cache_write + one_hour * p.cache_write_1h,
            (usage.output_tokens - reasoning) * p.output + reasoning * p.reasoning,
            p.per_request,
        ),
    )


_new_tuple = tuple.__new__  # a NamedTuple's own __new__, without its Python frame


def kind_tokens(usage: NormalizedUsage, kinds: Iterable[str]) -> int:
    counts = {
        "input": usage.input_tokens,
        "cache_read": usage.cache_read_tokens,
        "cache_write": usage.cache_write_tokens,
        "output": usage.output_tokens,
    }
    return sum(counts[kind] for kind in kinds if kind in counts)
