"""The pricing file's document: meters, plans, their charges and tiers read into specs
(``MeterSpec``, ``billing.services.PlanSpec``), checked by the rules ``publish_plan``
applies, without touching the database (``parse_pricing``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from billing import errors, services
from billing.models import (
    Aggregation,
    BillingTime,
    CommitmentBilling,
    ConsumptionModel,
    Interval,
    PriceModel,
)
from billing.pricing.grants import read_credit_grant
from billing.pricing.reading import Number, PricingFileInvalid, detect_format, load_document
from billing.pricing.values import MISSING, ValueReader, nearest_line

FORMAT_VERSION = 1
SLUG_RE = re.compile(r"^[-a-zA-Z0-9_]+$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")  # as the API's plan serializer
MARGIN_DIGITS, MARGIN_PLACES = 9, 4  # PlanCharge.margin_percent
MAX_TRIAL_DAYS = 3650
MAX_METADATA_KEYS = 50
MAX_GROUP_BY = 10


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
        return nearest_line(self.lines, location)


class _Parser(ValueReader):
    """Walks the loaded document into specs."""

    def document(self, data: Any) -> tuple[tuple[MeterSpec, ...], tuple[services.PlanSpec, ...]]:
        if data is None:
            self.fail(None, "the file is empty; expected a mapping with meters and plans")
        root = self.mapping(data, "", allowed=("version", "meters", "plans"))
        if "version" in root:
            version = root["version"]
            if not (isinstance(version, Number) and version.native == FORMAT_VERSION):
                self.fail(
                    "version",
                    f"this loader reads format version {FORMAT_VERSION}, "
                    f"got {self.describe(version)}",
                )
        if "meters" not in root and "plans" not in root:
            self.fail(None, "expected at least one of 'meters' and 'plans'")
        meters = tuple(
            self.meter(item, f"meters[{i}]")
            for i, item in enumerate(self.sequence(root.get("meters", MISSING), "meters"))
        )
        plans = tuple(
            self.plan(item, f"plans[{i}]")
            for i, item in enumerate(self.sequence(root.get("plans", MISSING), "plans"))
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
            self.sequence(data.get("group_by", MISSING), f"{where}.group_by")
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
                "credit_grant",
                "rounding",
                "minimum_amount",
                "commitment_amount",
                "commitment_billing",
                "interval_count",
                "billing_time",
                "billing_anchor_day",
                "charges_interval",
                "charges_interval_count",
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
            # a string here; validate_plan_spec refuses an unknown rule (the API's message)
            rounding=self.string(data, "rounding", where, default=""),
            # 0 is refused by validate_plan_spec (the API's and the admin's message)
            minimum_amount=self.decimal(data, "minimum_amount", where, default=None, nullable=True),
            commitment_amount=self.decimal(
                data, "commitment_amount", where, default=None, nullable=True
            ),
            # a string here; validate_plan_spec refuses an unknown one (the API's message)
            commitment_billing=self.string(
                data, "commitment_billing", where, default=CommitmentBilling.IN_ARREARS.value
            ),
            # whole numbers of either sign here; their ranges are validate_plan_spec's (the
            # API's and the admin's message, for -1 as for 61)
            interval_count=self.integer(
                data, "interval_count", where, default=1, minimum=-(2**31), maximum=2**31
            ),
            billing_time=self.string(
                data, "billing_time", where, default=BillingTime.ANNIVERSARY.value
            ),
            billing_anchor_day=None
            if data.get("billing_anchor_day") is None
            else self.integer(
                data, "billing_anchor_day", where, default=1, minimum=-(2**31), maximum=2**31
            ),
            # a string and whole numbers here; validate_plan_spec says what is allowed
            charges_interval=self.string(data, "charges_interval", where, default=""),
            charges_interval_count=self.integer(
                data, "charges_interval_count", where, default=1, minimum=-(2**31), maximum=2**31
            ),
            charges=tuple(
                self.charge(item, f"{where}.charges[{i}]")
                for i, item in enumerate(
                    self.sequence(data.get("charges", MISSING), f"{where}.charges")
                )
            ),
            credit_grant=read_credit_grant(self, data["credit_grant"], f"{where}.credit_grant")
            if data.get("credit_grant") is not None
            else None,
        )
        # The rules publish_plan applies (one charge per meter, increasing tier bounds, …),
        # checked now so that a bad file fails before anything is written.
        try:
            services.validate_plan_spec(spec)
        except errors.BillingError as exc:
            # a refusal with a code of its own names it (the API's code for the same plan)
            note = "" if exc.code == errors.ValidationFailed.code else f" ({exc.code})"
            self.fail(f"{where}.{exc.param}" if exc.param else where, exc.message + note)
        return spec

    def charge(self, value: Any, where: str) -> services.ChargeSpec:
        data = self.mapping(
            value,
            where,
            required=("meter",),
            hints=services.CHARGE_FIELD_HINTS,
            allowed=(
                "meter",
                "price_model",
                "included_quantity",
                "unit_price",
                "package_size",
                "margin_percent",
                "tiers",
                "flat_fee_at_zero",
                "minimum_amount",
                "prorated",
                "interval",
                "interval_count",
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
            for i, item in enumerate(self.sequence(data.get("tiers", MISSING), f"{where}.tiers"))
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
            flat_fee_at_zero=self.boolean(data, "flat_fee_at_zero", where, default=False),
            prorated=self.boolean(data, "prorated", where, default=False),
            minimum_amount=self.decimal(data, "minimum_amount", where, default=None, nullable=True),
            # a string and a whole number here; validate_plan_spec says what is allowed
            interval=self.string(data, "interval", where, default=""),
            interval_count=self.integer(
                data, "interval_count", where, default=1, minimum=-(2**31), maximum=2**31
            ),
        )

    def tier(self, value: Any, where: str) -> services.TierSpec:
        data = self.mapping(
            value, where, allowed=("up_to", "unit_price", "flat_fee", "package_size")
        )
        if "unit_price" not in data and "flat_fee" not in data:
            self.fail(where, "a tier needs 'unit_price', 'flat_fee' or both")
        return services.TierSpec(
            up_to=self.decimal(data, "up_to", where, default=None, nullable=True, positive=True),
            unit_price=self.decimal(data, "unit_price", where, default=Decimal(0)),
            flat_fee=self.decimal(data, "flat_fee", where, default=Decimal(0)),
            # 0 is refused by validate_plan_spec, with the API's and the admin's message
            package_size=self.decimal(data, "package_size", where, default=None, nullable=True),
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
    format = format or detect_format(text, str(path) if path is not None else None)
    parser = _Parser(source)
    meters, plans = parser.document(load_document(text, source=source, format=format))
    return PricingFile(source=source, meters=meters, plans=plans, lines=parser.lines)
