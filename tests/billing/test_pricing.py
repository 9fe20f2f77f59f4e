"""Pricing files: parsing (exact amounts, every validation error with its place), loading
(idempotent, versioned, atomic) and ``manage.py load_pricing``."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import fields, is_dataclass
from decimal import Decimal
from pathlib import Path
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command, execute_from_command_line
from django.db import connections

from billing import errors, services
from billing.models import Meter, Plan, PlanCharge, PriceTier
from billing.pricing.load import Outcome, PlanResult, load_pricing
from billing.pricing.parse import MeterSpec, parse_pricing
from billing.pricing.reading import PricingFileInvalid

DEMO = Path(__file__).resolve().parents[2] / "pricing" / "demo.yaml"

SMALL = """\
meters:
  - code: tokens
    name: Tokens
    event_name: llm.completion
    aggregation: sum
    property: usage.output_tokens
    group_by: [model]
    unit: tokens
  - code: calls
    event_name: llm.completion
    aggregation: count
plans:
  - code: starter
    name: Starter
    base_fee: 9.99
    charges:
      - meter: tokens
        unit_price: 0.000002
  - code: growth
    name: Growth
    base_fee: 99
    charges:
      - meter: tokens
        price_model: graduated
        included_quantity: 1_000_000
        tiers:
          - {up_to: 10_000_000, unit_price: 0.0000018}
          - {up_to: null, unit_price: 0.0000015}
      - meter: calls
        unit_price: 0.0001
"""


def floats_in(value) -> list:
    """Every float anywhere inside a spec (there must be none)."""
    if isinstance(value, float):
        return [value]
    if is_dataclass(value):
        return [f for field in fields(value) for f in floats_in(getattr(value, field.name))]
    if isinstance(value, dict):
        return [f for v in value.values() for f in floats_in(v)]
    if isinstance(value, list | tuple):
        return [f for v in value for f in floats_in(v)]
    return []


def invalid(text: str, **kwargs) -> PricingFileInvalid:
    with pytest.raises(PricingFileInvalid) as caught:
        parse_pricing(text=text, source="prices.yaml", **kwargs)
    return caught.value


# --- parsing ---------------------------------------------------------------------------------


def test_demo_file_declares_meters_and_every_kind_of_plan():
    pricing = parse_pricing(path=DEMO)
    assert [m.code for m in pricing.meters] == [
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "requests",
        "gpu_seconds",
    ]
    plans = {p.code: p for p in pricing.plans}
    assert {p.consumption_model for p in plans.values()} == {"metered", "credits", "balance"}
    assert {c.price_model for p in plans.values() for c in p.charges} == {
        "per_unit",
        "graduated",
        "volume",
        "package",
    }
    assert plans["credits"].units_per_credit == Decimal(1000)
    assert plans["payg"].base_fee == 0
    assert plans["pro"].base_fee == Decimal("49.00") and plans["pro"].trial_days == 14
    assert floats_in(pricing.plans) == []
    assert floats_in(pricing.meters) == []
    tokens = pricing.meters[0]
    assert tokens == MeterSpec(
        code="input_tokens",
        name="Input tokens",
        event_name="llm.completion",
        aggregation="sum",
        property="llm.input_tokens",
        group_by=("model",),
        unit="tokens",
    )
    assert pricing.meters[5].filters == {"status": ["succeeded"]}


def test_demo_amounts_are_exact():
    plans = {p.code: p for p in parse_pricing(path=DEMO).plans}
    pro_input = plans["pro"].charges[0]
    assert pro_input.included_quantity == Decimal(10_000_000)
    assert [t.unit_price for t in pro_input.tiers] == [Decimal("0.00000030"), Decimal("0.00000025")]
    assert [t.up_to for t in pro_input.tiers] == [Decimal(100_000_000), None]
    assert plans["pro"].charges[2].unit_price == Decimal("0.000000075")
    assert plans["scale"].charges[0].tiers[2].flat_fee == Decimal("250.00")
    assert plans["batch"].charges[0].package_size == Decimal(60)
    assert plans["payg"].charges[2].margin_percent == Decimal("10.5")
    # 0.15 $ per million tokens, times a million, is 0.15 $ — exactly.
    assert plans["scale"].charges[0].tiers[1].unit_price * 1_000_000 == Decimal("0.15")


@pytest.mark.parametrize(
    "written, expected",
    [
        ("0.000002", "0.000002"),
        ("0.1", "0.1"),  # float(0.1) is 0.1000000000000000055…
        ("0.00000015", "0.00000015"),
        ("1.5e-7", "0.00000015"),  # YAML 1.1 reads this as a float
        ("1e-7", "0.0000001"),  # …and this as a string
        ("1_000_000.000001", "1000000.000001"),
        ('"0.000000000001"', "0.000000000001"),
        ("123456789012345678.123456789012", "123456789012345678.123456789012"),
        ("0.100000000000000", "0.1"),  # trailing zeros beyond 12 places are harmless
        ("42", "42"),
    ],
)
def test_yaml_amounts_are_read_from_the_text_not_through_a_float(written, expected):
    pricing = parse_pricing(
        text=f"""
meters: [{{code: m, event_name: e, aggregation: sum, property: p}}]
plans:
  - code: p
    name: P
    charges: [{{meter: m, unit_price: {written}}}]
"""
    )
    price = pricing.plans[0].charges[0].unit_price
    assert isinstance(price, Decimal)
    assert price == Decimal(expected)


def test_json_file_gives_the_same_plans_as_yaml(tmp_path):
    document = {
        "meters": [
            {
                "code": "tokens",
                "name": "Tokens",
                "event_name": "llm.completion",
                "aggregation": "sum",
                "property": "usage.output_tokens",
                "group_by": ["model"],
                "unit": "tokens",
            },
            {"code": "calls", "event_name": "llm.completion", "aggregation": "count"},
        ],
        "plans": [
            {
                "code": "starter",
                "name": "Starter",
                "base_fee": "9.99",
                "charges": [{"meter": "tokens", "unit_price": "0.000002"}],
            },
            {
                "code": "growth",
                "name": "Growth",
                "base_fee": 99,
                "charges": [
                    {
                        "meter": "tokens",
                        "price_model": "graduated",
                        "included_quantity": 1000000,
                        "tiers": [
                            {"up_to": 10000000, "unit_price": "0.0000018"},
                            {"up_to": None, "unit_price": "0.0000015"},
                        ],
                    },
                    {"meter": "calls", "unit_price": "0.0001"},
                ],
            },
        ],
    }
    path = tmp_path / "prices.json"
    # Numbers as JSON numbers (not strings) must be exact too.
    path.write_text(json.dumps(document).replace('"0.000002"', "0.000002"))
    from_json = parse_pricing(path=path)
    from_yaml = parse_pricing(text=SMALL)
    assert from_json.meters == from_yaml.meters
    assert [p.canonical_hash() for p in from_json.plans] == [
        p.canonical_hash() for p in from_yaml.plans
    ]
    assert from_json.plans[0].charges[0].unit_price == Decimal("0.000002")
    assert floats_in(from_json.plans) == []


def test_format_is_chosen_by_extension_then_by_content(tmp_path):
    text = '{"plans": [{"code": "p", "name": "P", "base_fee": 0.000000000001}]}'
    assert parse_pricing(text=text).plans[0].base_fee == Decimal("1e-12")
    yml = tmp_path / "prices.yml"
    yml.write_text("plans: [{code: p, name: P, base_fee: 1.10}]\n")
    assert parse_pricing(path=yml).plans[0].base_fee == Decimal("1.10")
    json_named_yaml = tmp_path / "prices.json"
    json_named_yaml.write_text("plans: [{code: p, name: P}]\n")
    error = invalid(json_named_yaml.read_text(), format="json")
    assert "invalid JSON" in error.message
    with pytest.raises(PricingFileInvalid, match="prices.json:1: invalid JSON"):
        parse_pricing(path=json_named_yaml)


def test_metadata_timestamps_and_merge_keys():
    pricing = parse_pricing(
        text="""
plans:
  - code: p
    name: P
    metadata: {launched: 2026-01-01, seats: 5, ratio: 0.50, tags: [a, b]}
"""
    )
    assert pricing.plans[0].metadata == {
        "launched": "2026-01-01",
        "seats": 5,
        "ratio": "0.50",
        "tags": ["a", "b"],
    }
    assert floats_in(pricing.plans) == []
    meter = parse_pricing(
        text="""
meters: [{code: m, event_name: e, aggregation: count, filters: {tier: [1, 0.5, pro, null]}}]
"""
    ).meters[0]
    assert meter.filters == {"tier": [1, "0.5", "pro", None]}
    merged = parse_pricing(
        text="""
plans:
  - &base {code: a, name: A, base_fee: 5.5, interval: year}
  - {<<: *base, code: b, name: B}
"""
    )
    assert [(p.code, p.base_fee, p.interval) for p in merged.plans] == [
        ("a", Decimal("5.5"), "year"),
        ("b", Decimal("5.5"), "year"),
    ]


def test_error_message_names_file_line_and_location():
    error = invalid(
        SMALL.replace(
            """\
        tiers:
          - {up_to: 10_000_000, unit_price: 0.0000018}
          - {up_to: null, unit_price: 0.0000015}
""",
            "        tiers: []\n",
        )
    )
    assert error.message == (
        "prices.yaml:26: plans[1].charges[0].tiers: a graduated charge needs tiers"
    )
    assert (error.source, error.line, error.location) == (
        "prices.yaml",
        26,
        "plans[1].charges[0].tiers",
    )
    assert error.param == "plans[1].charges[0].tiers"
    assert error.code == "invalid_pricing_file"
    assert isinstance(error, errors.BillingError)


def plan_with(charge: str = "{meter: m, unit_price: 1}", plan: str = "") -> str:
    return f"""
meters: [{{code: m, event_name: e, aggregation: sum, property: p}}]
plans:
  - code: p
    name: P
{plan}
    charges:
      - {charge}
"""


INVALID = [
    # (file text, location, reason fragment)
    ("meters: [", None, "invalid YAML"),
    ("", None, "the file is empty"),
    ("- a\n- b\n", None, "expected a mapping, got a list"),
    ("{}", None, "expected at least one of 'meters' and 'plans'"),
    ("prices: []", "prices", "unknown field 'prices'"),
    ("version: 2\nplans: []", "version", "format version 1, got the number 2"),
    ("plans: {code: p}", "plans", "expected a list, got a mapping"),
    ("plans: [{code: p, name: P, name: Q}]", None, "found duplicate key 'name'"),
    ("plans: [{code: p}]", "plans[0]", "missing required field 'name'"),
    ("plans: [{code: p q, name: P}]", "plans[0].code", "letters, digits, '-' and '_'"),
    (
        "plans: [{code: 2024, name: P}]",
        "plans[0].code",
        "expected a string, got the number 2024 (quote it)",
    ),
    ("plans: [{code: p, name: ' '}]", "plans[0].name", "cannot be blank"),
    ("plans: [{code: p, name: P, currency: usd}]", "plans[0].currency", "ISO 4217"),
    (
        "plans: [{code: p, name: P, interval: fortnight}]",
        "plans[0].interval",
        "'fortnight' is not one of day, week, month, quarter, year",
    ),
    (
        "plans: [{code: p, name: P, consumption_model: prepaid}]",
        "plans[0].consumption_model",
        "is not one of metered, credits, balance",
    ),
    ("plans: [{code: p, name: P, trial_days: -1}]", "plans[0].trial_days", "between 0 and 3650"),
    (
        "plans: [{code: p, name: P, trial_days: 1.5}]",
        "plans[0].trial_days",
        "expected a whole number, got the number 1.5",
    ),
    ("plans: [{code: p, name: P, base_fee: -1}]", "plans[0].base_fee", "cannot be negative"),
    (
        "plans: [{code: p, name: P, base_fee: abc}]",
        "plans[0].base_fee",
        "'abc' is not a finite decimal number",
    ),
    (
        "plans: [{code: p, name: P, base_fee: .inf}]",
        "plans[0].base_fee",
        "'.inf' is not a finite decimal number",
    ),
    (
        "plans: [{code: p, name: P, base_fee: .nan}]",
        "plans[0].base_fee",
        "not a finite decimal number",
    ),
    (
        "plans: [{code: p, name: P, base_fee: 0x1F}]",
        "plans[0].base_fee",
        "'0x1F' is not a finite decimal number",
    ),
    (
        "plans: [{code: p, name: P, base_fee: true}]",
        "plans[0].base_fee",
        "expected a decimal number, got true",
    ),
    (
        "plans: [{code: p, name: P, base_fee: 0.0000000000001}]",
        "plans[0].base_fee",
        "has more than 12 decimal places",
    ),
    (
        "plans: [{code: p, name: P, base_fee: 1000000000000000000}]",
        "plans[0].base_fee",
        "too large",
    ),
    (
        "plans: [{code: p, name: P, metadata: [a]}]",
        "plans[0].metadata",
        "expected a mapping, got a list",
    ),
    (
        "plans: [{code: p, name: P, metadata: {x: .inf}}]",
        "plans[0].metadata.x",
        "'.inf' is not a finite number",
    ),
    (
        "plans: [{code: p, name: P, consumption_model: credits}]",
        "plans[0]",
        "a credits plan needs 'units_per_credit'",
    ),
    (
        "plans: [{code: p, name: P, consumption_model: credits, units_per_credit: 0}]",
        "plans[0].units_per_credit",
        "must be greater than 0",
    ),
    (
        "plans: [{code: p, name: P, units_per_credit: 1000}]",
        "plans[0].units_per_credit",
        "applies to credits plans only",
    ),
    (
        "plans: [{code: p, name: P}, {code: p, name: Q}]",
        "plans[1].code",
        "plan 'p' is declared twice (first at plans[0])",
    ),
    (
        plan_with("{meter: m, unit_prise: 1}"),
        "plans[0].charges[0].unit_prise",
        "unknown field 'unit_prise'",
    ),
    (plan_with("{unit_price: 1}"), "plans[0].charges[0]", "missing required field 'meter'"),
    (
        plan_with("{meter: m, price_model: tiered}"),
        "plans[0].charges[0].price_model",
        "is not one of per_unit, graduated, volume, package",
    ),
    (
        plan_with("{meter: m, price_model: graduated}"),
        "plans[0].charges[0]",
        "a graduated charge needs tiers",
    ),
    (
        plan_with("{meter: m, price_model: volume, tiers: []}"),
        "plans[0].charges[0].tiers",
        "a volume charge needs tiers",
    ),
    (
        plan_with("{meter: m, price_model: graduated, unit_price: 1, tiers: [{unit_price: 1}]}"),
        "plans[0].charges[0].unit_price",
        "priced by its tiers",
    ),
    (
        plan_with("{meter: m, tiers: [{unit_price: 1}]}"),
        "plans[0].charges[0].tiers",
        "a per_unit charge has no tiers",
    ),
    (
        plan_with("{meter: m, price_model: package, unit_price: 1}"),
        "plans[0].charges[0]",
        "a package charge needs 'package_size'",
    ),
    (
        plan_with("{meter: m, price_model: package, unit_price: 1, package_size: 0}"),
        "plans[0].charges[0].package_size",
        "must be greater than 0",
    ),
    (
        plan_with("{meter: m, unit_price: 1, package_size: 100}"),
        "plans[0].charges[0].package_size",
        "applies to package charges only",
    ),
    (
        plan_with("{meter: m, unit_price: 1, margin_percent: 12.34567}"),
        "plans[0].charges[0].margin_percent",
        "has more than 4 decimal places",
    ),
    (
        plan_with("{meter: m, unit_price: 1, margin_percent: 100000}"),
        "plans[0].charges[0].margin_percent",
        "too large",
    ),
    (
        plan_with("{meter: m, unit_price: 0.0000000000005}"),
        "plans[0].charges[0].unit_price",
        "0.0000000000005 has more than 12 decimal places",
    ),
    (
        plan_with("{meter: m, included_quantity: -5}"),
        "plans[0].charges[0].included_quantity",
        "cannot be negative",
    ),
    (
        plan_with("{meter: m, price_model: graduated, tiers: [{up_to: 10}]}"),
        "plans[0].charges[0].tiers[0]",
        "a tier needs 'unit_price', 'flat_fee' or both",
    ),
    (
        plan_with(
            "{meter: m, price_model: graduated, tiers: [{up_to: 0, unit_price: 1}, "
            "{unit_price: 1}]}"
        ),
        "plans[0].charges[0].tiers[0].up_to",
        "must be greater than 0",
    ),
    (
        plan_with(
            "{meter: m, price_model: graduated, tiers: [{up_to: 10, unit_price: 1}, "
            "{up_to: 5, unit_price: 1}, {unit_price: 1}]}"
        ),
        "plans[0].charges[0].tiers[1].up_to",
        "tier bounds must increase",
    ),
    (
        plan_with("{meter: m, price_model: graduated, tiers: [{up_to: 10, unit_price: 1}]}"),
        "plans[0].charges[0].tiers[0].up_to",
        "the last tier must be open-ended",
    ),
    (
        plan_with("{meter: m, price_model: graduated, tiers: [{unit_price: 1}, {unit_price: 2}]}"),
        "plans[0].charges[0].tiers[0].up_to",
        "only the last tier may be open-ended",
    ),
    (
        plan_with(
            "{meter: m, price_model: volume, tiers: [{up_to: 10, unit_price: -1}, {unit_price: 1}]}"
        ),
        "plans[0].charges[0].tiers[0].unit_price",
        "cannot be negative",
    ),
    (
        plan_with("{meter: m, unit_price: 1}\n      - {meter: m, unit_price: 2}"),
        "plans[0].charges",
        "a plan has at most one charge per meter",
    ),
    (
        "meters: [{code: m, event_name: e, aggregation: sum}]",
        "meters[0]",
        "a sum meter needs 'property'",
    ),
    (
        "meters: [{code: m, event_name: e, aggregation: avg, property: p}]",
        "meters[0].aggregation",
        "'avg' is not one of sum, count, max, unique_count, latest",
    ),
    ("meters: [{code: m, aggregation: count}]", "meters[0]", "missing required field 'event_name'"),
    (
        "meters: [{code: m, event_name: e, aggregation: count, filters: [a]}]",
        "meters[0].filters",
        "expected a mapping of property path to allowed values",
    ),
    (
        "meters: [{code: m, event_name: e, aggregation: count, filters: {tier: pro}}]",
        "meters[0].filters.tier",
        "expected a non-empty list of allowed values",
    ),
    (
        "meters: [{code: m, event_name: e, aggregation: count, group_by: model}]",
        "meters[0].group_by",
        "expected a list, got the string 'model'",
    ),
    (
        "meters: [{code: m, event_name: e, aggregation: count, group_by: [1]}]",
        "meters[0].group_by[0]",
        "expected a property path, got the number 1",
    ),
    (
        "meters: [{code: m, event_name: e, aggregation: count},"
        " {code: m, event_name: f, aggregation: count}]",
        "meters[1].code",
        "meter 'm' is declared twice (first at meters[0])",
    ),
]


@pytest.mark.parametrize(
    "text, location, reason", INVALID, ids=[f"{i}:{case[2][:40]}" for i, case in enumerate(INVALID)]
)
def test_every_invalid_file_is_refused_with_its_place(text, location, reason):
    error = invalid(text)
    assert error.location == location
    assert reason in error.reason
    assert error.message.startswith("prices.yaml")
    if location:
        assert f": {location}: " in error.message


def test_invalid_json_is_refused():
    for text, reason in [
        ('{"plans": [}', "invalid JSON: Expecting value"),
        ('{"plans": [], "plans": []}', "duplicate key 'plans'"),
        ('{"plans": [{"code": "p", "name": "P", "base_fee": NaN}]}', "NaN is not allowed"),
    ]:
        assert reason in invalid(text).message


def test_unreadable_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PricingFileInvalid) as caught:
        parse_pricing(path=missing)
    assert caught.value.message == f"{missing}: cannot read the file: No such file or directory"


def test_yaml_syntax_error_has_the_line():
    error = invalid("plans:\n  - code: p\n    name: [unclosed\n")
    assert error.line == 4 and "invalid YAML" in error.message
    assert error.message.startswith("prices.yaml:4: invalid YAML")


# --- loading ---------------------------------------------------------------------------------


def snapshot() -> dict:
    return {
        "meters": sorted(
            Meter.objects.values_list("code", "name", "unit", "event_name", "property")
        ),
        "plans": sorted(Plan.objects.values_list("code", "version", "spec_hash")),
        "charges": PlanCharge.objects.count(),
        "tiers": PriceTier.objects.count(),
    }


@pytest.mark.django_db
def test_demo_file_loads_and_stores_exact_prices():
    summary = load_pricing(path=DEMO)
    assert {r.outcome for r in summary.meters + summary.plans} == {Outcome.CREATED}
    assert [(r.code, r.version) for r in summary.plans] == [
        ("pro", 1),
        ("credits", 1),
        ("payg", 1),
        ("scale", 1),
        ("batch", 1),
        ("enterprise-annual", 1),
        ("team-fortnightly", 1),
        ("migrated", 1),
        ("committed", 1),
        ("committed-upfront", 1),
        ("annual-usage-monthly", 1),
        ("gpu-quarterly", 1),
    ]
    pro = Plan.objects.get(code="pro", version=1)
    assert pro.base_fee == Decimal("49") and pro.trial_days == 14
    charge = pro.charges.get(meter__code="input_tokens")
    assert charge.price_model == "graduated"
    assert [(t.up_to, t.unit_price) for t in charge.tiers.order_by("position")] == [
        (Decimal(100_000_000), Decimal("0.000000300000")),
        (None, Decimal("0.000000250000")),
    ]
    assert pro.charges.get(meter__code="cached_input_tokens").unit_price == Decimal("0.000000075")
    payg = Plan.objects.get(code="payg")
    assert payg.consumption_model == "balance" and payg.base_fee == 0
    assert payg.charges.get(meter__code="cached_input_tokens").margin_percent == Decimal("10.5")
    assert Plan.objects.get(code="credits").units_per_credit == Decimal(1000)
    gpu = Meter.objects.get(code="gpu_seconds")
    assert (gpu.filters, gpu.group_by, gpu.unit) == (
        {"status": ["succeeded"]},
        ["gpu_type"],
        "seconds",
    )


@pytest.mark.django_db
def test_reloading_an_unchanged_file_changes_nothing():
    load_pricing(path=DEMO)
    before = snapshot()
    summary = load_pricing(path=DEMO)
    assert {r.outcome for r in summary.meters + summary.plans} == {Outcome.UNCHANGED}
    assert not summary.changed
    assert snapshot() == before


@pytest.mark.django_db
def test_changing_one_price_publishes_that_plan_only_as_its_next_version():
    load_pricing(text=SMALL)
    changed = SMALL.replace("unit_price: 0.0000015", "unit_price: 0.0000014")
    summary = load_pricing(text=changed)
    assert [(r.code, r.version, r.outcome) for r in summary.plans] == [
        ("starter", 1, Outcome.UNCHANGED),
        ("growth", 2, Outcome.NEW_VERSION),
    ]
    assert {r.outcome for r in summary.meters} == {Outcome.UNCHANGED}
    assert Plan.objects.filter(code="starter").count() == 1
    old, new = Plan.objects.filter(code="growth").order_by("version")
    tier = PriceTier.objects.get(charge__plan=old, position=1)
    assert tier.unit_price == Decimal("0.0000015")  # the signed version is untouched
    assert PriceTier.objects.get(charge__plan=new, position=1).unit_price == Decimal("0.0000014")
    # Loading the changed file again is a no-op; going back is version 3, not version 1.
    assert not load_pricing(text=changed).changed
    back = load_pricing(text=SMALL)
    assert back.plans[1] == PlanResult("growth", 3, Outcome.NEW_VERSION)
    assert back.plans[1].describe() == "plan growth: new version 3"


@pytest.mark.django_db
def test_same_numbers_written_differently_are_the_same_plan():
    load_pricing(text=SMALL)
    rewritten = (
        SMALL.replace("9.99", '"9.990"')
        .replace("0.000002\n", "2e-6\n")
        .replace("1_000_000", "1000000.0")
    )
    assert not load_pricing(text=rewritten).changed


@pytest.mark.django_db
def test_a_plan_published_through_the_service_is_unchanged_by_the_same_file():
    pricing = parse_pricing(text=SMALL)
    for meter in pricing.meters:
        services.ensure_meter(**meter.as_kwargs())
    for spec in pricing.plans:
        services.publish_plan(spec=spec)
    assert not load_pricing(text=SMALL).changed


@pytest.mark.django_db
def test_meter_definition_change_is_a_conflict_and_changes_nothing():
    load_pricing(text=SMALL)
    before = snapshot()
    conflicting = (
        SMALL.replace(
            "meters:\n", "meters:\n  - {code: fresh, event_name: e, aggregation: count}\n"
        )
        .replace("unit_price: 0.0000015", "unit_price: 0.0000014")
        .replace("property: usage.output_tokens", "property: usage.total_tokens")
    )
    with pytest.raises(errors.MeterConflict) as caught:
        load_pricing(text=conflicting, source="prices.yaml")
    assert caught.value.message == (
        "prices.yaml:3: meters[1]: meter 'tokens' exists with a different property; "
        "create a new meter instead"
    )
    assert caught.value.code == "meter_conflict"
    assert snapshot() == before  # the new meter before it was not kept either
    assert not Meter.objects.filter(code="fresh").exists()


@pytest.mark.django_db
def test_unknown_meter_fails_at_load_with_its_place_and_rolls_back():
    load_pricing(text=SMALL)
    before = snapshot()
    broken = (
        SMALL.replace("unit_price: 0.0000015", "unit_price: 0.0000014")
        + """\
  - code: later
    name: Later
    charges:
      - meter: nowhere
"""
    )
    with pytest.raises(errors.MeterNotFound) as caught:
        load_pricing(text=broken, source="prices.yaml")
    assert caught.value.message == (
        "prices.yaml:34: plans[2].charges[0].meter: meter 'nowhere' does not exist"
    )
    assert snapshot() == before  # growth v2, published before the failure, was rolled back


@pytest.mark.django_db
def test_meter_name_and_unit_may_change():
    load_pricing(text=SMALL)
    summary = load_pricing(text=SMALL.replace("name: Tokens", "name: Output tokens"))
    assert summary.meters[0].outcome == Outcome.UPDATED
    assert summary.meters[0].describe() == "meter tokens: updated name"
    assert Meter.objects.get(code="tokens").name == "Output tokens"


@pytest.mark.django_db
def test_dry_run_reports_and_saves_nothing():
    summary = load_pricing(path=DEMO, dry_run=True)
    assert summary.dry_run and summary.changed
    assert not Plan.objects.exists() and not Meter.objects.exists()


@pytest.mark.django_db
def test_publisher_is_recorded():
    user = get_user_model().objects.create_user("finance")
    load_pricing(text=SMALL, published_by_id=user.pk)
    assert set(Plan.objects.values_list("published_by_id", flat=True)) == {user.pk}


# --- manage.py load_pricing ------------------------------------------------------------------


def run_command(*args: str) -> tuple[int, str, str]:
    """Run the command as manage.py does: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    # manage.py closes the database connections when a command ends; here that would
    # close the test's own transaction.
    with (
        mock.patch.object(connections, "close_all"),
        mock.patch.object(sys, "stdout", out),
        mock.patch.object(sys, "stderr", err),
    ):
        try:
            execute_from_command_line(["manage.py", "load_pricing", *args, "--no-color"])
            status = 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
    return status, out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_command_prints_what_it_did(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text(SMALL)
    status, out, err = run_command(str(path))
    assert status == 0, err
    assert out.splitlines() == [
        "meter tokens: created",
        "meter calls: created",
        "plan starter: created (version 1)",
        "plan growth: created (version 1)",
        f"{path}: 2 meters, 2 plans (4 created).",
    ]
    status, out, _ = run_command(str(path))
    assert status == 0
    assert out.splitlines()[-3:] == [
        "plan starter: unchanged (version 1)",
        "plan growth: unchanged (version 1)",
        f"{path}: 2 meters, 2 plans (4 unchanged); nothing changed.",
    ]
    path.write_text(SMALL.replace("9.99", "12.99"))
    status, out, _ = run_command(str(path))
    assert status == 0
    assert "plan starter: new version 2" in out.splitlines()
    assert out.splitlines()[-1] == f"{path}: 2 meters, 2 plans (3 unchanged, 1 new version)."


@pytest.mark.django_db
def test_command_fails_with_the_message_and_a_non_zero_status(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text(plan_with("{meter: m, price_model: graduated}"))
    status, out, err = run_command(str(path))
    assert status == 1
    assert out == ""
    assert err.strip() == (
        f"CommandError: {path}:8: plans[0].charges[0]: a graduated charge needs tiers"
    )
    status, _, err = run_command(str(tmp_path / "missing.yaml"))
    assert status == 1 and "cannot read the file: No such file or directory" in err
    assert not Plan.objects.exists()


@pytest.mark.django_db
def test_command_meter_conflict_exits_non_zero_and_keeps_the_database(tmp_path):
    call_command("load_pricing", str(DEMO), stdout=io.StringIO())
    before = snapshot()
    path = tmp_path / "demo.yaml"
    path.write_text(
        DEMO.read_text().replace("property: llm.output_tokens", "property: llm.total_tokens")
    )
    status, _, err = run_command(str(path))
    assert status == 1
    assert "meters[1]: meter 'output_tokens' exists with a different property" in err
    assert snapshot() == before


@pytest.mark.django_db
def test_command_dry_run_and_stdin(monkeypatch):
    out = io.StringIO()
    call_command("load_pricing", str(DEMO), "--dry-run", stdout=out)
    assert out.getvalue().splitlines()[-1].endswith("dry run, nothing was saved.")
    assert not Plan.objects.exists()
    monkeypatch.setattr(sys, "stdin", io.StringIO(SMALL))
    out = io.StringIO()
    call_command("load_pricing", "-", stdout=out)
    assert out.getvalue().splitlines()[-1] == "<stdin>: 2 meters, 2 plans (4 created)."
    with pytest.raises(CommandError, match="no user 'ghost'"):
        call_command("load_pricing", str(DEMO), "--published-by", "ghost")
