"""Pricing files: meters and plans declared in YAML or JSON, loaded idempotently.

A pricing file is the declarative source of a deployment's prices (format: docs/pricing-file.md)::

    meters:
      - {code: output_tokens, event_name: llm.completion, aggregation: sum,
         property: usage.output_tokens, group_by: [model], unit: tokens}
    plans:
      - code: pro
        name: Pro
        base_fee: 49.00
        charges:
          - {meter: output_tokens, unit_price: 0.0000006}

``parse_pricing`` turns the text into ``MeterSpec`` and ``billing.services.PlanSpec`` objects
and refuses anything doubtful with the file and the place at fault
(``pricing.yaml:14: plans[1].charges[0].tiers: a graduated charge needs tiers``). It touches
no database. ``load_pricing`` then, in one transaction, ensures every meter
(``services.ensure_meter``) and publishes every plan (``services.publish_plan``): an unchanged
file changes nothing, a changed plan becomes its next version, and any failure leaves the
database as it was.

Amounts are exact. A number in the file is read from the characters written there, never
through a float: YAML and JSON numbers reach this module as ``_Number`` (the scalar's text
beside what YAML or JSON would have made of it), and money fields build their ``Decimal``
from the text. A value finer than the field keeps (1e-12 for prices, 1e-4 for margins) is
refused, not rounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

import yaml
from django.db import transaction

from billing import errors, services
from billing.models import (
    PRICE_DIGITS,
    PRICE_PLACES,
    Aggregation,
    ConsumptionModel,
    Interval,
    Meter,
    PriceModel,
)

FORMAT_VERSION = 1
SLUG_RE = re.compile(r"^[-a-zA-Z0-9_]+$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")  # as the API's plan serializer
MARGIN_DIGITS, MARGIN_PLACES = 9, 4  # PlanCharge.margin_percent
MAX_TRIAL_DAYS = 3650
MAX_METADATA_KEYS = 50
MAX_GROUP_BY = 10


class PricingFileInvalid(errors.BillingError):
    """The file cannot be read or does not describe valid prices. ``message`` names the file,
    the line when known and the location (``plans[1].charges[0].tiers``)."""

    code = "invalid_pricing_file"

    def __init__(
        self, reason: str, *, source: str, location: str | None = None, line: int | None = None
    ):
        self.reason, self.source, self.location, self.line = reason, source, location, line
        super().__init__(_located_message(reason, source, location, line), param=location)


def _located_message(reason: str, source: str, location: str | None, line: int | None) -> str:
    where = f"{source}:{line}" if line else source
    return f"{where}: {location}: {reason}" if location else f"{where}: {reason}"


# --- reading YAML and JSON exactly -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Number:
    """A numeric scalar as written (``text``) and, for a whole number, its ``int`` value
    (``native``; None for any other number — no float is ever made). Amounts are built
    from ``text``; ``native`` serves where no amount is meant (trial days, metadata)."""

    text: str
    native: int | None


class _Mapping(dict):
    """A mapping that remembers the line of each key (1-based), for error messages."""

    line: int | None = None
    key_lines: dict[Any, int]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.key_lines = {}


class _Sequence(list):
    line: int | None = None


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps numbers as written, refuses duplicate keys, reads timestamps as
    plain strings and records line numbers."""


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> _Number:
    return _Number(node.value, yaml.SafeLoader.construct_yaml_int(loader, node))


def _construct_timestamp(loader: _Loader, node: yaml.ScalarNode) -> str:
    return loader.construct_yaml_str(node)  # a date stays the text written


def _construct_float(loader: _Loader, node: yaml.ScalarNode) -> _Number:
    return _Number(node.value, None)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Iterator[_Mapping]:
    mapping = _Mapping()
    mapping.line = node.start_mark.line + 1
    yield mapping
    # Keys written in this mapping must be unique; keys brought in by a merge (<<: *base)
    # are defaults that the written ones override.
    written = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, _Number):
            key = key.native if key.native is not None else key.text
        try:
            duplicate = id(key_node) in written and key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found an unhashable key",
                key_node.start_mark,
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        if id(key_node) in written:
            seen.add(key)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> Iterator[_Sequence]:
    sequence = _Sequence()
    sequence.line = node.start_mark.line + 1
    yield sequence
    sequence.extend(loader.construct_sequence(node, deep=True))


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def _json_object(pairs: list[tuple[str, Any]]) -> _Mapping:
    mapping = _Mapping()
    for key, value in pairs:
        if key in mapping:
            raise ValueError(f"duplicate key {key!r}")
        mapping[key] = value
    return mapping


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _json_number(text: str) -> _Number:
    return _Number(text, int(text) if re.fullmatch(r"-?\d+", text) else None)


def _load(text: str, *, source: str, format: str) -> Any:
    if format == "json":
        try:
            return json.loads(
                text,
                object_pairs_hook=_json_object,
                parse_float=_json_number,
                parse_int=_json_number,
                parse_constant=_refuse_constant,
            )
        except json.JSONDecodeError as exc:
            raise PricingFileInvalid(
                f"invalid JSON: {exc.msg} (column {exc.colno})", source=source, line=exc.lineno
            ) from None
        except ValueError as exc:
            raise PricingFileInvalid(f"invalid JSON: {exc}", source=source) from None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        reason = f"invalid YAML: {context + ': ' if context else ''}{problem}"
        if mark is not None:
            reason += f" (column {mark.column + 1})"
        raise PricingFileInvalid(
            reason, source=source, line=mark.line + 1 if mark is not None else None
        ) from None


def _detect_format(text: str, path: str | None) -> str:
    suffix = Path(path).suffix.lower() if path else ""
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    return "json" if text.lstrip().startswith(("{", "[")) else "yaml"


# --- what a file declares ----------------------------------------------------------------------


@dataclass(frozen=True)
class MeterSpec:
    """A meter as declared. ``name`` and ``unit`` left out (None) are left as they are."""

    code: str
    event_name: str
    aggregation: str
    property: str = ""
    filters: dict[str, list[Any]] = field(default_factory=dict)
    group_by: tuple[str, ...] = ()
    name: str | None = None
    unit: str | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """The arguments of ``services.ensure_meter``: every field that defines what the meter
        counts, so that a file leaving one out conflicts with a meter that has it."""
        kwargs: dict[str, Any] = {
            "code": self.code,
            "event_name": self.event_name,
            "aggregation": self.aggregation,
            "property": self.property,
            "filters": {k: list(v) for k, v in self.filters.items()},
            "group_by": list(self.group_by),
        }
        if self.name is not None:
            kwargs["name"] = self.name
        if self.unit is not None:
            kwargs["unit"] = self.unit
        return kwargs


@dataclass(frozen=True)
class PricingFile:
    source: str
    meters: tuple[MeterSpec, ...]
    plans: tuple[services.PlanSpec, ...]
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def line_of(self, location: str) -> int | None:
        return _nearest_line(self.lines, location)


def _nearest_line(lines: dict[str, int], location: str | None) -> int | None:
    """The line of ``location``, or of the nearest enclosing element that has one."""
    location = location or ""
    while True:
        if location in lines:
            return lines[location]
        parent = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", location)
        if parent == location:
            return None
        location = parent


# --- parsing -------------------------------------------------------------------------------


_MISSING = object()


class _Parser:
    """Walks the loaded document; every read names its location for the error message."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[str, int] = {}

    # errors and locations

    def fail(self, location: str | None, reason: str) -> NoReturn:
        raise PricingFileInvalid(
            reason, source=self.source, location=location, line=_nearest_line(self.lines, location)
        )

    def note(self, location: str, container: Any, key: Any = None) -> None:
        line = None
        if key is not None and isinstance(container, _Mapping):
            line = container.key_lines.get(key)
        elif key is None:
            line = getattr(container, "line", None)
        if line is not None:
            self.lines.setdefault(location, line)

    @staticmethod
    def describe(value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, _Number):
            return f"the number {value.text}"
        if isinstance(value, str):
            return f"the string {value!r}"
        if isinstance(value, dict):
            return "a mapping"
        if isinstance(value, list):
            return "a list"
        return type(value).__name__

    # structure

    def mapping(
        self, value: Any, where: str, *, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where or None, f"expected a mapping, got {self.describe(value)}")
        self.note(where, value)
        for key in value:
            location = f"{where}.{key}" if where else str(key)
            self.note(location, value, key)
            if key not in allowed:
                self.fail(location, f"unknown field {key!r}; expected one of {', '.join(allowed)}")
        for key in required:
            if key not in value:
                self.fail(where or None, f"missing required field {key!r}")
        return value

    def sequence(self, value: Any, where: str, *, allow_missing: bool = True) -> list[Any]:
        if value is _MISSING and allow_missing:
            return []
        if not isinstance(value, list):
            self.fail(where, f"expected a list, got {self.describe(value)}")
        for i, item in enumerate(value):
            self.note(f"{where}[{i}]", item)
        return value

    # scalars

    def string(
        self,
        data: dict,
        key: str,
        where: str,
        *,
        default: Any = _MISSING,
        max_length: int = 200,
        pattern: re.Pattern | None = None,
        hint: str = "",
        blank: bool = True,
    ) -> str:
        value = data.get(key, _MISSING)
        location = f"{where}.{key}"
        if value is _MISSING:
            if default is _MISSING:
                self.fail(where, f"missing required field {key!r}")
            return default
        if not isinstance(value, str):
            quote = " (quote it)" if isinstance(value, _Number | bool) else ""
            self.fail(location, f"expected a string, got {self.describe(value)}{quote}")
        if not blank and not value.strip():
            self.fail(location, "cannot be blank")
        if len(value) > max_length:
            self.fail(location, f"at most {max_length} characters")
        if pattern is not None and not pattern.match(value):
            self.fail(location, hint or f"must match {pattern.pattern}")
        return value

    def choice(self, data: dict, key: str, where: str, *, choices: list[str], default: str) -> str:
        value = self.string(data, key, where, default=default)
        if value not in choices:
            self.fail(f"{where}.{key}", f"{value!r} is not one of {', '.join(choices)}")
        return value

    def decimal(
        self,
        data: dict,
        key: str,
        where: str,
        *,
        default: Any = _MISSING,
        nullable: bool = False,
        digits: int = PRICE_DIGITS,
        places: int = PRICE_PLACES,
        positive: bool = False,
    ) -> Any:
        value = data.get(key, _MISSING)
        location = f"{where}.{key}"
        if value is _MISSING:
            if default is _MISSING:
                self.fail(where, f"missing required field {key!r}")
            return default
        if value is None:
            if nullable:
                return None
            self.fail(location, "cannot be null")
        if isinstance(value, _Number):
            text = value.text.replace("_", "")
        elif isinstance(value, str):
            text = value.strip()
        else:
            self.fail(location, f"expected a decimal number, got {self.describe(value)}")
        try:
            amount = Decimal(text)
        except InvalidOperation:
            amount = None
        if amount is None or not amount.is_finite():
            self.fail(location, f"{text!r} is not a finite decimal number")
        if amount < 0:
            self.fail(location, "cannot be negative")
        if positive and amount == 0:
            self.fail(location, "must be greater than 0")
        _, figures, exponent = amount.as_tuple()
        assert isinstance(exponent, int), "a finite number's (checked above)"
        significant = list(figures)
        while exponent < 0 and len(significant) > 1 and significant[-1] == 0:
            significant.pop()
            exponent += 1
        if exponent < -places:
            self.fail(
                location,
                f"{text} has more than {places} decimal places "
                "(it would be rounded; amounts are kept exactly)",
            )
        if amount >= Decimal(10) ** (digits - places):
            self.fail(
                location,
                f"{text} is too large (at most {digits - places} digits before the decimal point)",
            )
        return amount

    def integer(self, data: dict, key: str, where: str, *, default: int, maximum: int) -> int:
        value = data.get(key, _MISSING)
        location = f"{where}.{key}"
        if value is _MISSING:
            return default
        if isinstance(value, _Number) and isinstance(value.native, int):
            number = value.native
        elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
            number = int(value)
        else:
            self.fail(location, f"expected a whole number, got {self.describe(value)}")
        if not 0 <= number <= maximum:
            self.fail(location, f"must be between 0 and {maximum}")
        return number

    def plain(self, value: Any, location: str) -> Any:
        """Free-form JSON (metadata, filter values). Whole numbers stay numbers; numbers with
        a fraction become decimal strings, exactly as written — as the API stores them."""
        if isinstance(value, _Number):
            if isinstance(value.native, int):
                return value.native
            try:
                exact = Decimal(value.text.replace("_", ""))
            except InvalidOperation:
                exact = None
            if exact is None or not exact.is_finite():
                self.fail(location, f"{value.text!r} is not a finite number")
            return format(exact, "f")
        if value is None or isinstance(value, str | bool):
            return value
        if isinstance(value, list):
            return [self.plain(v, f"{location}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            result = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    self.fail(location, f"keys must be strings, got {self.describe(k)}")
                result[k] = self.plain(v, f"{location}.{k}")
            return result
        self.fail(location, f"{type(value).__name__} is not a JSON value")

    # the document

    def document(self, data: Any) -> tuple[tuple[MeterSpec, ...], tuple[services.PlanSpec, ...]]:
        if data is None:
            self.fail(None, "the file is empty; expected a mapping with meters and plans")
        root = self.mapping(data, "", allowed=("version", "meters", "plans"))
        if "version" in root:
            version = root["version"]
            if not (isinstance(version, _Number) and version.native == FORMAT_VERSION):
                self.fail(
                    "version",
                    f"this loader reads format version {FORMAT_VERSION}, "
                    f"got {self.describe(version)}",
                )
        if "meters" not in root and "plans" not in root:
            self.fail(None, "expected at least one of 'meters' and 'plans'")
        meters = tuple(
            self.meter(item, f"meters[{i}]")
            for i, item in enumerate(self.sequence(root.get("meters", _MISSING), "meters"))
        )
        plans = tuple(
            self.plan(item, f"plans[{i}]")
            for i, item in enumerate(self.sequence(root.get("plans", _MISSING), "plans"))
        )
        self.unique([m.code for m in meters], "meters", "meter")
        self.unique([p.code for p in plans], "plans", "plan")
        return meters, plans

    def unique(self, codes: list[str], where: str, noun: str) -> None:
        first: dict[str, int] = {}
        for i, code in enumerate(codes):
            if code in first:
                self.fail(
                    f"{where}[{i}].code",
                    f"{noun} {code!r} is declared twice (first at {where}[{first[code]}])",
                )
            first[code] = i

    def meter(self, value: Any, where: str) -> MeterSpec:
        data = self.mapping(
            value,
            where,
            required=("code", "event_name", "aggregation"),
            allowed=(
                "code",
                "name",
                "event_name",
                "aggregation",
                "property",
                "filters",
                "group_by",
                "unit",
            ),
        )
        aggregation = self.choice(
            data, "aggregation", where, choices=Aggregation.values, default=""
        )
        prop = self.string(data, "property", where, default="")
        if aggregation != Aggregation.COUNT and not prop.strip():
            self.fail(
                where,
                f"a {aggregation} meter needs 'property', the path of the value "
                "it reads (e.g. usage.output_tokens)",
            )
        filters: dict[str, list[Any]] = {}
        raw_filters = data.get("filters", {})
        if not isinstance(raw_filters, dict):
            self.fail(
                f"{where}.filters",
                "expected a mapping of property path to allowed "
                f"values, got {self.describe(raw_filters)}",
            )
        for path, allowed_values in raw_filters.items():
            location = f"{where}.filters.{path}"
            self.note(location, raw_filters, path)
            if not isinstance(path, str) or not path.strip():
                self.fail(
                    f"{where}.filters",
                    f"a filter key is a property path, got {self.describe(path)}",
                )
            if not isinstance(allowed_values, list) or not allowed_values:
                self.fail(
                    location,
                    "expected a non-empty list of allowed values, "
                    f"got {self.describe(allowed_values)}",
                )
            values = self.plain(allowed_values, location)
            if any(isinstance(v, dict | list) for v in values):
                self.fail(location, "allowed values are strings, numbers, booleans or null")
            filters[path] = values
        group_by = []
        for i, dimension in enumerate(
            self.sequence(data.get("group_by", _MISSING), f"{where}.group_by")
        ):
            if not isinstance(dimension, str) or not dimension.strip():
                self.fail(
                    f"{where}.group_by[{i}]",
                    f"expected a property path, got {self.describe(dimension)}",
                )
            if len(dimension) > 100:
                self.fail(f"{where}.group_by[{i}]", "at most 100 characters")
            group_by.append(dimension)
        if len(group_by) > MAX_GROUP_BY:
            self.fail(f"{where}.group_by", f"at most {MAX_GROUP_BY} dimensions")
        return MeterSpec(
            code=self.string(
                data,
                "code",
                where,
                max_length=100,
                pattern=SLUG_RE,
                hint="a code is letters, digits, '-' and '_'",
            ),
            name=self.string(data, "name", where, default=None),
            event_name=self.string(data, "event_name", where, blank=False),
            aggregation=aggregation,
            property=prop,
            filters=filters,
            group_by=tuple(group_by),
            unit=self.string(data, "unit", where, default=None, max_length=30),
        )

    def plan(self, value: Any, where: str) -> services.PlanSpec:
        data = self.mapping(
            value,
            where,
            required=("code", "name"),
            allowed=(
                "code",
                "name",
                "description",
                "currency",
                "interval",
                "base_fee",
                "trial_days",
                "consumption_model",
                "units_per_credit",
                "metadata",
                "charges",
            ),
        )
        code = self.string(
            data,
            "code",
            where,
            max_length=100,
            pattern=SLUG_RE,
            hint="a code is letters, digits, '-' and '_'",
        )
        name = self.string(data, "name", where, blank=False)
        consumption_model = self.choice(
            data,
            "consumption_model",
            where,
            choices=ConsumptionModel.values,
            default=ConsumptionModel.METERED,
        )
        units_per_credit = self.decimal(
            data, "units_per_credit", where, default=None, nullable=True, positive=True
        )
        if consumption_model == ConsumptionModel.CREDITS and units_per_credit is None:
            self.fail(
                where, "a credits plan needs 'units_per_credit' (how many units one credit buys)"
            )
        if consumption_model != ConsumptionModel.CREDITS and units_per_credit is not None:
            self.fail(f"{where}.units_per_credit", "applies to credits plans only")
        metadata = None
        if "metadata" in data:
            if not isinstance(data["metadata"], dict):
                self.fail(
                    f"{where}.metadata",
                    f"expected a mapping, got {self.describe(data['metadata'])}",
                )
            metadata = self.plain(data["metadata"], f"{where}.metadata")
            if len(metadata) > MAX_METADATA_KEYS:
                self.fail(f"{where}.metadata", f"at most {MAX_METADATA_KEYS} keys")
        spec = services.PlanSpec(
            code=code,
            name=name,
            description=self.string(data, "description", where, default="", max_length=10_000),
            currency=self.string(
                data,
                "currency",
                where,
                default="USD",
                pattern=CURRENCY_RE,
                hint="an ISO 4217 code such as USD",
            ),
            interval=self.choice(
                data, "interval", where, choices=Interval.values, default=Interval.MONTH
            ),
            base_fee=self.decimal(data, "base_fee", where, default=Decimal(0)),
            trial_days=self.integer(data, "trial_days", where, default=0, maximum=MAX_TRIAL_DAYS),
            consumption_model=consumption_model,
            units_per_credit=units_per_credit,
            metadata=metadata or None,
            charges=tuple(
                self.charge(item, f"{where}.charges[{i}]")
                for i, item in enumerate(
                    self.sequence(data.get("charges", _MISSING), f"{where}.charges")
                )
            ),
        )
        # The rules publish_plan applies (one charge per meter, increasing tier bounds, …),
        # checked now so that a bad file fails before anything is written.
        try:
            services.validate_plan_spec(spec)
        except errors.BillingError as exc:
            self.fail(f"{where}.{exc.param}" if exc.param else where, exc.message)
        return spec

    def charge(self, value: Any, where: str) -> services.ChargeSpec:
        data = self.mapping(
            value,
            where,
            required=("meter",),
            allowed=(
                "meter",
                "price_model",
                "included_quantity",
                "unit_price",
                "package_size",
                "margin_percent",
                "tiers",
            ),
        )
        meter = self.string(
            data,
            "meter",
            where,
            max_length=100,
            pattern=SLUG_RE,
            hint="a meter code is letters, digits, '-' and '_'",
        )
        price_model = self.choice(
            data, "price_model", where, choices=PriceModel.values, default=PriceModel.PER_UNIT
        )
        tiered = price_model in (PriceModel.GRADUATED, PriceModel.VOLUME)
        unit_price = self.decimal(data, "unit_price", where, default=Decimal(0))
        package_size = self.decimal(
            data, "package_size", where, default=None, nullable=True, positive=True
        )
        tiers = tuple(
            self.tier(item, f"{where}.tiers[{i}]")
            for i, item in enumerate(self.sequence(data.get("tiers", _MISSING), f"{where}.tiers"))
        )
        # Zero and empty values are tolerated where they mean "not used"; anything else
        # in the wrong place is a mistake worth stopping for.
        if tiered and unit_price:
            self.fail(
                f"{where}.unit_price",
                f"a {price_model} charge is priced by its tiers; move the price into 'tiers'",
            )
        if tiered and not tiers:
            self.fail(
                f"{where}.tiers" if "tiers" in data else where,
                f"a {price_model} charge needs tiers",
            )
        if not tiered and tiers:
            self.fail(f"{where}.tiers", f"a {price_model} charge has no tiers")
        if price_model == PriceModel.PACKAGE and package_size is None:
            self.fail(where, "a package charge needs 'package_size' (units per package)")
        if price_model != PriceModel.PACKAGE and package_size is not None:
            self.fail(f"{where}.package_size", "applies to package charges only")
        return services.ChargeSpec(
            meter=meter,
            price_model=price_model,
            included_quantity=self.decimal(data, "included_quantity", where, default=Decimal(0)),
            unit_price=unit_price,
            package_size=package_size,
            margin_percent=self.decimal(
                data,
                "margin_percent",
                where,
                default=None,
                nullable=True,
                digits=MARGIN_DIGITS,
                places=MARGIN_PLACES,
            ),
            tiers=tiers,
        )

    def tier(self, value: Any, where: str) -> services.TierSpec:
        data = self.mapping(value, where, allowed=("up_to", "unit_price", "flat_fee"))
        if "unit_price" not in data and "flat_fee" not in data:
            self.fail(where, "a tier needs 'unit_price', 'flat_fee' or both")
        return services.TierSpec(
            up_to=self.decimal(data, "up_to", where, default=None, nullable=True, positive=True),
            unit_price=self.decimal(data, "unit_price", where, default=Decimal(0)),
            flat_fee=self.decimal(data, "flat_fee", where, default=Decimal(0)),
        )


def parse_pricing(
    *,
    path: str | Path | None = None,
    text: str | None = None,
    source: str | None = None,
    format: str | None = None,
) -> PricingFile:
    """Read a pricing file (``path``) or its contents (``text``) into specs, touching no
    database. ``format`` is ``yaml`` or ``json``; by default the file's extension decides,
    or else the content (``{`` starts JSON). Raises ``PricingFileInvalid``."""
    if (path is None) == (text is None):
        raise TypeError("parse_pricing takes a path or a text, not both")
    source = source or (str(path) if path is not None else "<pricing>")
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise PricingFileInvalid(f"cannot read the file: {reason}", source=source) from None
    assert text is not None
    if format not in (None, "yaml", "json"):
        raise ValueError("format is yaml or json")
    format = format or _detect_format(text, str(path) if path is not None else None)
    parser = _Parser(source)
    meters, plans = parser.document(_load(text, source=source, format=format))
    return PricingFile(source=source, meters=meters, plans=plans, lines=parser.lines)


# --- loading -------------------------------------------------------------------------------


class Outcome:
    CREATED = "created"
    UNCHANGED = "unchanged"
    UPDATED = "updated"  # a meter's name or unit
    NEW_VERSION = "new_version"


@dataclass(frozen=True)
class MeterResult:
    code: str
    outcome: str
    updated_fields: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.outcome == Outcome.UPDATED:
            return f"meter {self.code}: updated {', '.join(self.updated_fields)}"
        return f"meter {self.code}: {self.outcome}"


@dataclass(frozen=True)
class PlanResult:
    code: str
    version: int
    outcome: str

    def describe(self) -> str:
        if self.outcome == Outcome.NEW_VERSION:
            return f"plan {self.code}: new version {self.version}"
        return f"plan {self.code}: {self.outcome} (version {self.version})"


@dataclass(frozen=True)
class PricingSummary:
    source: str
    meters: tuple[MeterResult, ...]
    plans: tuple[PlanResult, ...]
    dry_run: bool = False

    @property
    def results(self) -> tuple[MeterResult | PlanResult, ...]:
        return (*self.meters, *self.plans)

    @property
    def changed(self) -> bool:
        return any(r.outcome != Outcome.UNCHANGED for r in self.results)

    def lines(self) -> list[str]:
        return [r.describe() for r in self.results]


def _relocated(
    exc: errors.BillingError, pricing: PricingFile, location: str
) -> errors.BillingError:
    """The same error class (so callers can still catch ``MeterConflict``), its message
    prefixed with the file and the place in it, which it carries as ``PricingFileInvalid``
    does (``source``, ``location``, ``line``: attributes no other BillingError declares)."""
    line = pricing.line_of(location)
    located: Any = type(exc)(
        _located_message(exc.message, pricing.source, location, line), param=location
    )
    located.source, located.location, located.line = pricing.source, location, line
    return located


@transaction.atomic
def apply_pricing(
    *, pricing: PricingFile, published_by_id: int | None = None, dry_run: bool = False
) -> PricingSummary:
    """Ensure the meters and publish the plans of a parsed file, all or nothing."""
    meter_results: list[MeterResult] = []
    plan_results: list[PlanResult] = []
    for i, meter in enumerate(pricing.meters):
        kwargs = meter.as_kwargs()
        before = Meter.objects.filter(code=meter.code).values("name", "unit").first()
        try:
            _, created = services.ensure_meter(**kwargs)
        except errors.BillingError as exc:
            raise _relocated(exc, pricing, f"meters[{i}]") from exc
        if created:
            meter_results.append(MeterResult(meter.code, Outcome.CREATED))
            continue
        updated = tuple(
            f
            for f in ("name", "unit")
            if f in kwargs and before is not None and before.get(f) != kwargs[f]
        )
        meter_results.append(
            MeterResult(meter.code, Outcome.UPDATED if updated else Outcome.UNCHANGED, updated)
        )
    for i, spec in enumerate(pricing.plans):
        try:
            plan, created = services.publish_plan(spec=spec, published_by_id=published_by_id)
        except errors.BillingError as exc:
            where = f"plans[{i}].{exc.param}" if exc.param else f"plans[{i}]"
            raise _relocated(exc, pricing, where) from exc
        if not created:
            outcome = Outcome.UNCHANGED
        else:
            outcome = Outcome.CREATED if plan.version == 1 else Outcome.NEW_VERSION
        plan_results.append(PlanResult(spec.code, plan.version, outcome))
    if dry_run:
        transaction.set_rollback(True)
    return PricingSummary(pricing.source, tuple(meter_results), tuple(plan_results), dry_run)


def load_pricing(
    *,
    path: str | Path | None = None,
    text: str | None = None,
    source: str | None = None,
    format: str | None = None,
    published_by_id: int | None = None,
    dry_run: bool = False,
) -> PricingSummary:
    """Parse a pricing file and apply it in one transaction: meters first (created, or
    accepted unchanged — what a meter counts never changes, ``MeterConflict``), then each
    plan (published as version 1, as its next version when it differs from the latest, or
    left alone). ``dry_run`` reports what would change and rolls everything back."""
    pricing = parse_pricing(path=path, text=text, source=source, format=format)
    return apply_pricing(pricing=pricing, published_by_id=published_by_id, dry_run=dry_run)
