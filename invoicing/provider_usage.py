"""Provider usage import: read an LLM provider's own usage or cost export and match it, per
UTC day and model, against what we metered (``metering.ModelUsage``: tokens and the
provider cost rating computed from the catalog). Read-only: nothing is stored, and the
ledger is never touched; the result is a list of rows with their gaps.

Accepted formats (docs/reconciliation.md has examples)
    OpenAI Usage API, completions   ``GET /v1/organization/usage/completions?group_by=model``
        JSON page: ``data[]`` buckets (``start_time`` Unix seconds, ``results`` — or
        ``result`` — list) of ``organization.usage.completions.result``: ``model``,
        ``input_tokens`` (the whole prompt, cached included), ``input_cached_tokens``,
        ``output_tokens``.
    OpenAI Costs API                ``GET /v1/organization/costs?group_by=line_item``
        JSON page of ``organization.costs.result``: ``amount.value`` (a number; read as its
        decimal text, never a float), ``amount.currency`` (``usd``), ``line_item``: its
        text before the first comma is taken as the model (``"gpt-4o-2024-08-06, input"``).
    Anthropic Usage API             ``GET /v1/organizations/usage_report/messages?group_by[]=model``
        JSON: ``data[]`` buckets (``starting_at`` RFC 3339, ``results``): ``model``,
        ``uncached_input_tokens``, ``cache_read_input_tokens``, ``cache_creation``
        (``ephemeral_5m_input_tokens`` + ``ephemeral_1h_input_tokens``), ``output_tokens``.
    Anthropic Cost API              ``GET /v1/organizations/cost_report?group_by[]=description``
        JSON: buckets of results with ``amount`` (a decimal string in the currency's lowest
        unit: ``"123.45"`` USD is $1.2345), ``currency``, ``model`` (null for non-token costs).
    CSV, either provider            one row per day and model, a header naming the same
        fields as the JSON results (``model``, ``input_tokens`` … for OpenAI;
        ``uncached_input_tokens`` … for Anthropic; costs as ``amount`` in USD or
        ``amount_cents``) and the day as ``date`` (``YYYY-MM-DD``) or ``start_time`` /
        ``starting_at``. Neither provider publishes a stable CSV schema for its console
        downloads, so this is ours: the API's fields, flattened.

Token kinds compared (ours are ``metering.normalize``'s five kinds):
    prompt     OpenAI ``input_tokens`` / Anthropic uncached + cache read + cache creation
               = our input + cache read + cache write
    cache read OpenAI ``input_cached_tokens`` / Anthropic ``cache_read_input_tokens``
    output     ``output_tokens`` = our output (reasoning included, as both providers count it)
    cost       the export's cost in USD = our ``ModelUsage.cost`` (catalog prices)

A row's gap is reported when a token kind differs by more than
``PROVIDER_USAGE_TOKEN_TOLERANCE`` (a fraction of the larger side, default 1 %) or the cost
by more than ``PROVIDER_USAGE_COST_TOLERANCE`` (USD, default 0.05); a day and model on one
side only is always a gap. The match query is one ``GROUP BY day, model`` over the daily
counters, never events.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db.models import F, Sum

from metering.models import ModelUsage

ZERO = Decimal(0)
KINDS = ("prompt", "cache_read", "output")


class ExportError(ValueError):
    """The file is none of the accepted formats, or a row of it is malformed."""


@dataclass
class Usage:
    prompt: int = 0
    cache_read: int = 0
    output: int = 0
    cost: Decimal | None = None  # None: the export says nothing of cost

    def add(self, other: Usage) -> None:
        self.prompt += other.prompt
        self.cache_read += other.cache_read
        self.output += other.output
        if other.cost is not None:
            self.cost = (self.cost or ZERO) + other.cost


@dataclass
class Export:
    provider: str  # "openai" or "anthropic": the metering provider ids
    formats: list[str] = field(default_factory=list)
    rows: dict[tuple[date, str], Usage] = field(default_factory=dict)
    has_tokens: bool = False
    has_cost: bool = False

    def add(self, day: date, model: str, usage: Usage) -> None:
        self.rows.setdefault((day, model), Usage()).add(usage)


# --- parsing --------------------------------------------------------------------------


def _int(value: Any, where: str) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise ExportError(f"{where}: a count, not {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ExportError(f"{where}: a count, not {value!r}") from None
    if number != number.to_integral_value() or number < 0:
        raise ExportError(f"{where}: a count, not {value!r}")
    return int(number)


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or value is None or value == "":
        raise ExportError(f"{where}: an amount, not {value!r}")
    try:
        amount = Decimal(str(value))  # str(): a JSON number's own digits, never binary float
    except InvalidOperation:
        raise ExportError(f"{where}: an amount, not {value!r}") from None
    if not amount.is_finite():
        raise ExportError(f"{where}: an amount, not {value!r}")
    return amount


def _day(value: Any, where: str) -> date:
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(int(value), tz=UTC).date()
        text = str(value).strip()
        if text.isdigit():
            return datetime.fromtimestamp(int(text), tz=UTC).date()
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return (moment.astimezone(UTC) if moment.tzinfo else moment).date()
    except (ValueError, OverflowError, OSError):
        raise ExportError(f"{where}: a day or time, not {value!r}") from None


def _model(value: Any) -> str:
    return str(value).strip() if value not in (None, "") else "(no model)"


def _openai_result(result: dict, where: str) -> tuple[str, Usage, set[str]]:
    """A usage result (tokens), a costs result (``amount``), or a CSV row with both."""
    usage, kinds = Usage(), set()
    model = result.get("model")
    if "amount" in result:
        amount = result.get("amount") or {}
        currency = str(amount.get("currency", "usd")).upper()
        if currency != "USD":
            raise ExportError(f"{where}: costs in {currency}; only USD is compared")
        usage.cost = _decimal(amount.get("value"), f"{where}.amount.value")
        line_item = result.get("line_item")
        model = model or (str(line_item).split(",")[0] if line_item else None)
        kinds.add("cost")
    if "input_tokens" in result or "output_tokens" in result:
        usage.prompt = _int(result.get("input_tokens"), f"{where}.input_tokens")
        usage.cache_read = _int(result.get("input_cached_tokens"), f"{where}.input_cached_tokens")
        usage.output = _int(result.get("output_tokens"), f"{where}.output_tokens")
        kinds.add("tokens")
    return _model(model), usage, kinds


def _anthropic_result(result: dict, where: str) -> tuple[str, Usage, set[str]]:
    """A usage report result (tokens), a cost report result (``amount`` in cents), or a CSV
    row with both."""
    usage, kinds = Usage(), set()
    if "amount" in result:
        currency = str(result.get("currency") or "USD").upper()
        if currency != "USD":
            raise ExportError(f"{where}: costs in {currency}; only USD is compared")
        usage.cost = _decimal(result.get("amount"), f"{where}.amount") / 100
        kinds.add("cost")
    token_fields = ("uncached_input_tokens", "cache_read_input_tokens", "output_tokens")
    if any(name in result for name in token_fields):
        creation = result.get("cache_creation") or {}
        written = _int(
            creation.get("ephemeral_5m_input_tokens"), f"{where}.cache_creation.5m"
        ) + _int(creation.get("ephemeral_1h_input_tokens"), f"{where}.cache_creation.1h")
        cache_read = _int(result.get("cache_read_input_tokens"), f"{where}.cache_read_input_tokens")
        uncached = _int(result.get("uncached_input_tokens"), f"{where}.uncached_input_tokens")
        usage.prompt = uncached + cache_read + written
        usage.cache_read = cache_read
        usage.output = _int(result.get("output_tokens"), f"{where}.output_tokens")
        kinds.add("tokens")
    return _model(result.get("model")), usage, kinds


def _from_json(document: Any, export: Export) -> None:
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise ExportError('not an export: a JSON object with a "data" list of time buckets')
    read = _openai_result if export.provider == "openai" else _anthropic_result
    for b, bucket in enumerate(document["data"]):
        where = f"data[{b}]"
        if not isinstance(bucket, dict):
            raise ExportError(f"{where}: a time bucket object")
        start = bucket.get("start_time", bucket.get("starting_at"))
        if start is None:
            raise ExportError(f"{where}: no start_time / starting_at")
        day = _day(start, f"{where}.start")
        results = bucket.get("results", bucket.get("result")) or []
        for r, result in enumerate(results):
            if not isinstance(result, dict):
                raise ExportError(f"{where}.results[{r}]: an object")
            model, usage, kinds = read(result, f"{where}.results[{r}]")
            _note(export, kinds)
            export.add(day, model, usage)


def _from_csv(text: str, export: Export) -> None:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "model" not in reader.fieldnames:
        raise ExportError("a CSV export needs a header with a model column")
    for n, row in enumerate(reader, start=2):
        where = f"line {n}"
        start = row.get("date") or row.get("start_time") or row.get("starting_at")
        if not start:
            raise ExportError(f"{where}: no date / start_time / starting_at")
        day = _day(start, f"{where}.date")
        result: dict[str, Any] = {k: v for k, v in row.items() if k and v not in (None, "")}
        if "amount_cents" in result:
            result = {**result, "amount": Decimal(str(result.pop("amount_cents"))) / 100}
        if "amount" in result and export.provider == "anthropic":
            result["amount"] = _decimal(result["amount"], where) * 100  # USD → cents, as JSON
        if "amount" in result and export.provider == "openai":
            result["amount"] = {"value": result["amount"], "currency": row.get("currency", "usd")}
        if export.provider == "anthropic":
            creation = {
                key: result.pop(key)
                for key in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
                if key in result
            }
            if "cache_creation_input_tokens" in result:
                creation["ephemeral_5m_input_tokens"] = result.pop("cache_creation_input_tokens")
            result["cache_creation"] = creation
            model, usage, kinds = _anthropic_result(result, where)
        else:
            model, usage, kinds = _openai_result(result, where)
        _note(export, kinds)
        export.add(day, model, usage)


def _note(export: Export, kinds: set[str]) -> None:
    export.has_cost |= "cost" in kinds
    export.has_tokens |= "tokens" in kinds


def parse_export(content: bytes | str, *, provider: str, export: Export | None = None) -> Export:
    """Read one file (JSON or CSV, told apart by its first character) into ``export`` (a
    new one by default: several files of one provider — usage and costs — add up)."""
    if provider not in ("openai", "anthropic"):
        raise ExportError(f"unknown provider {provider!r}: openai or anthropic")
    export = export or Export(provider=provider)
    if export.provider != provider:
        raise ExportError("one provider per import")
    text = content.decode("utf-8-sig") if isinstance(content, bytes) else content
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            document = json.loads(stripped, parse_float=Decimal)
        except json.JSONDecodeError as error:
            raise ExportError(f"not valid JSON: {error}") from None
        _from_json(document, export)
        export.formats.append("json")
    else:
        _from_csv(text, export)
        export.formats.append("csv")
    return export


# --- matching -------------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    kind: str  # prompt, cache_read, output, cost, or "missing"
    theirs: str
    ours: str
    note: str


@dataclass
class Row:
    day: date
    model: str
    theirs: Usage | None
    ours: Usage | None
    gaps: list[Gap]


@dataclass
class Match:
    provider: str
    first_day: date | None
    last_day: date | None
    rows: list[Row]
    token_tolerance: Decimal
    cost_tolerance: Decimal

    @property
    def gaps(self) -> list[Row]:
        return [row for row in self.rows if row.gaps]


def metered(*, provider: str, first_day: date, last_day: date) -> dict[tuple[date, str], Usage]:
    """What we metered per day and model: one GROUP BY over the daily counters."""
    rows = (
        ModelUsage.objects.filter(provider=provider, day__gte=first_day, day__lte=last_day)
        .values("day", "model")
        .annotate(
            prompt=Sum(F("input_tokens") + F("cache_read_tokens") + F("cache_write_tokens")),
            cache_read=Sum("cache_read_tokens"),
            output=Sum("output_tokens"),
            cost=Sum("cost"),
        )
        .order_by()
    )
    return {
        (r["day"], r["model"]): Usage(
            prompt=int(r["prompt"] or 0),
            cache_read=int(r["cache_read"] or 0),
            output=int(r["output"] or 0),
            cost=r["cost"] or ZERO,
        )
        for r in rows
    }


def _token_gap(kind: str, theirs: int, ours: int, tolerance: Decimal) -> Gap | None:
    larger = max(theirs, ours)
    if larger == 0 or Decimal(abs(theirs - ours)) <= tolerance * larger:
        return None
    return Gap(kind, str(theirs), str(ours), f"{theirs - ours:+,} tokens")


def match_export(export: Export) -> Match:
    token_tolerance = Decimal(settings.PROVIDER_USAGE_TOKEN_TOLERANCE)
    cost_tolerance = Decimal(settings.PROVIDER_USAGE_COST_TOLERANCE)
    days = sorted({day for day, _ in export.rows})
    if not days:
        return Match(export.provider, None, None, [], token_tolerance, cost_tolerance)
    ours_by_key = metered(provider=export.provider, first_day=days[0], last_day=days[-1])
    rows = []
    for key in sorted(set(export.rows) | set(ours_by_key)):
        theirs, ours = export.rows.get(key), ours_by_key.get(key)
        gaps: list[Gap] = []
        if theirs is None:
            gaps.append(Gap("missing", "—", "metered", "not in the provider's export"))
        elif ours is None:
            gaps.append(Gap("missing", "in export", "—", "not metered by us"))
        else:
            if export.has_tokens:
                for kind in KINDS:
                    gap = _token_gap(
                        kind, getattr(theirs, kind), getattr(ours, kind), token_tolerance
                    )
                    if gap:
                        gaps.append(gap)
            if export.has_cost and theirs.cost is not None:
                ours_cost = ours.cost or ZERO
                if abs(theirs.cost - ours_cost) > cost_tolerance:
                    gaps.append(
                        Gap(
                            "cost",
                            format(theirs.cost.normalize(), "f"),
                            format(ours_cost.normalize(), "f"),
                            f"{theirs.cost - ours_cost:+f} USD",
                        )
                    )
        rows.append(Row(key[0], key[1], theirs, ours, gaps))
    return Match(export.provider, days[0], days[-1], rows, token_tolerance, cost_tolerance)
