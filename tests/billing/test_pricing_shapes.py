"""The plan shapes of issue 18 through the three ways a plan is published — the pricing
file, ``POST /api/v1/plans`` and the admin — which must accept the same plans and refuse
the same ones with the same message (one validator: ``services.validate_plan_spec``).
What each shape is worth is checked by hand in tests/invoicing/test_pricing_shapes.py."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

import pytest
from django.urls import reverse

from billing import services
from billing.models import Plan
from billing.pricing.load import load_pricing
from billing.pricing.reading import PricingFileInvalid
from tests.conftest import unique
from tests.factories import MeterFactory

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("pricing", "p@x.example", None))
    return client


@pytest.fixture
def meter_code(db) -> str:
    return MeterFactory(code=unique("m")).code


def body(charge: dict | None = None, **plan) -> dict:
    return {
        "code": unique("p"),
        "name": "P",
        "currency": "USD",
        "interval": "month",
        "base_fee": "0",
        "trial_days": 0,
        "consumption_model": "metered",
        "charges": [charge] if charge is not None else [],
        **plan,
    }


def via_file(plan: dict) -> Plan | str:
    try:
        load_pricing(text=json.dumps({"plans": [plan]}), source="t.json")
    except PricingFileInvalid as exc:
        return exc.reason
    return Plan.objects.get(code=plan["code"])


def via_api(api, plan: dict) -> Plan | str:
    response = api.post("/api/v1/plans", plan)
    if response.status_code != 201:
        return response.json()["error"]["message"]
    return Plan.objects.get(code=plan["code"])


ADMIN_PLAN_FIELDS = ("rounding", "minimum_amount", "commitment_amount")


def via_admin(client, plan: dict, **extra: str) -> Plan | str:
    form = {
        key: value
        for key, value in plan.items()
        if key not in ("charges", "metadata") and not (key in ADMIN_PLAN_FIELDS and value is None)
    }
    form.update(description="", units_per_credit="", charges=json.dumps(plan["charges"]))
    form.update(extra)
    response = client.post(reverse("admin:billing_plan_add"), form)
    if response.status_code != 302:
        errors = response.context["form"].errors
        return " ".join(str(e) for field_errors in errors.values() for e in field_errors)
    return Plan.objects.get(code=plan["code"])


def published_three_ways(api, client, plan: dict) -> list[Plan]:
    """The same plan through the file, the API and the admin (three codes)."""
    plans = []
    for publish in (via_file, lambda p: via_api(api, p), lambda p: via_admin(client, p)):
        result = publish({**plan, "code": unique("p")})
        assert isinstance(result, Plan), result
        plans.append(result)
    hashes = {services.plan_spec_of(p).canonical_hash() == p.spec_hash for p in plans}
    assert hashes == {True}
    specs = [services.plan_spec_of(p) for p in plans]
    assert specs[0].charges == specs[1].charges == specs[2].charges
    return plans


def refused_three_ways(api, client, plan: dict, message: str) -> None:
    for publish in (via_file, lambda p: via_api(api, p), lambda p: via_admin(client, p)):
        result = publish({**plan, "code": unique("p")})
        assert isinstance(result, str), f"accepted: {result}"
        assert message in result, result
    assert not Plan.objects.exists()


# --- a. per-tier package sizes ----------------------------------------------------------------


def test_a_tier_package_size_is_accepted_alike_and_kept_exactly(api, staff_client, meter_code):
    charge = {
        "meter": meter_code,
        "price_model": "graduated",
        "tiers": [
            {"up_to": "1000", "unit_price": "0"},
            {"up_to": "3000", "unit_price": "5", "package_size": "500"},
            {"up_to": None, "unit_price": "0.01"},
        ],
    }
    for plan in published_three_ways(api, staff_client, body(charge)):
        tiers = list(plan.charges.get().tiers.order_by("position"))
        assert [t.package_size for t in tiers] == [None, D(500), None]


@pytest.mark.parametrize("size", ["0", "0.0"])
def test_a_tier_package_size_of_zero_is_refused_alike(api, staff_client, meter_code, size):
    charge = {
        "meter": meter_code,
        "price_model": "volume",
        "tiers": [{"up_to": None, "unit_price": "1", "package_size": size}],
    }
    refused_three_ways(
        api, staff_client, body(charge), "a tier's package_size must be greater than 0"
    )


def test_a_plan_without_the_new_fields_keeps_its_hash(meter_code):
    """Plans published before these shapes existed must not look changed (a new version
    for every plan at the next load of an unchanged pricing file)."""
    spec = services.PlanSpec(
        code="p",
        name="P",
        charges=(
            services.ChargeSpec(
                meter=meter_code,
                price_model="graduated",
                tiers=(services.TierSpec(up_to=None, unit_price=D(1)),),
            ),
        ),
    )
    body = json.loads(json.dumps(_plain_without_new_fields(spec)))
    assert "package_size" not in body["charges"][0]["tiers"][0]
    assert spec.canonical_hash() == _hash_of(body)


def _plain_without_new_fields(spec: services.PlanSpec) -> dict:
    """The spec as the hash read it before issue 18 (the fields of the time only)."""
    tiers = [
        {"flat_fee": "0", "unit_price": format(t.unit_price.normalize(), "f"), "up_to": None}
        for t in spec.charges[0].tiers
    ]
    charge = spec.charges[0]
    return {
        "base_fee": "0",
        "charges": [
            {
                "included_quantity": "0",
                "margin_percent": None,
                "meter": charge.meter,
                "package_size": None,
                "price_model": charge.price_model,
                "tiers": tiers,
                "unit_price": "0",
            }
        ],
        "code": spec.code,
        "consumption_model": "metered",
        "currency": "USD",
        "description": "",
        "interval": "month",
        "metadata": {},
        "name": spec.name,
        "trial_days": 0,
        "units_per_credit": None,
    }


def _hash_of(body: dict) -> str:
    import hashlib

    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


# --- b. the first tier's flat fee at zero usage -------------------------------------------------


def tiered(meter_code: str, **charge) -> dict:
    return {
        "meter": meter_code,
        "price_model": "volume",
        "tiers": [
            {"up_to": "100", "unit_price": "1", "flat_fee": "10"},
            {"up_to": None, "unit_price": "0.5"},
        ],
        **charge,
    }


def test_flat_fee_at_zero_is_accepted_alike(api, staff_client, meter_code):
    for plan in published_three_ways(
        api, staff_client, body(tiered(meter_code, flat_fee_at_zero=True))
    ):
        assert plan.charges.get().flat_fee_at_zero is True


@pytest.mark.parametrize(
    ("charge", "message"),
    [
        (
            {"unit_price": "1", "price_model": "per_unit", "tiers": []},
            "flat_fee_at_zero applies to graduated and volume charges only",
        ),
        (
            {"tiers": [{"up_to": None, "unit_price": "1"}]},
            "flat_fee_at_zero charges the first tier's flat fee, and the first tier has none",
        ),
    ],
)
def test_flat_fee_at_zero_where_it_means_nothing_is_refused_alike(
    api, staff_client, meter_code, charge, message
):
    refused_three_ways(
        api, staff_client, body(tiered(meter_code, flat_fee_at_zero=True, **charge)), message
    )


@pytest.mark.parametrize("field", ["flat_fee_at_zero", "prorated"])
@pytest.mark.parametrize("value", ["yes", "true", 1, "on"])
def test_a_charges_options_are_true_or_false_alike(api, staff_client, meter_code, field, value):
    """The file reads JSON/YAML true and false only; the API and the admin's charges box
    took DRF's booleans ("yes", "on", 1, "true"): one plan accepted one way and refused
    another. Now refused alike, "expected true or false"."""
    plan = body(tiered(meter_code, **{field: value}))
    refused_three_ways(api, staff_client, plan, "expected true or false")


# --- c. the rounding rule, chosen per plan ---------------------------------------------------


def test_rounding_is_accepted_alike_and_the_currencys_by_default(api, staff_client, meter_code):
    for plan in published_three_ways(api, staff_client, body(rounding="half_up")):
        assert plan.rounding == "half_up"
    # explicit: wins over the currency's rule (invoicing.money.rounding_rule_for)
    for plan in published_three_ways(api, staff_client, body(rounding="half_even")):
        assert plan.rounding == "half_even"
    # left out: the currency's rule, else half even
    for plan in published_three_ways(api, staff_client, body()):
        assert plan.rounding == ""


def test_an_unknown_rounding_rule_is_refused_alike_by_the_file_and_the_api(api):
    message = "rounding must be one of half_even, half_up"
    assert via_file(body(rounding="bankers")) == message
    assert via_api(api, body(rounding="bankers")) == message
    assert not Plan.objects.exists()


# --- d. minimums per charge and per subscription -------------------------------------------


def test_minimums_are_accepted_alike(api, staff_client, meter_code):
    charge = {"meter": meter_code, "unit_price": "0.1", "minimum_amount": "20"}
    for plan in published_three_ways(api, staff_client, body(charge, minimum_amount="100.50")):
        assert plan.minimum_amount == D("100.50")
        assert plan.charges.get().minimum_amount == D(20)


@pytest.mark.parametrize("where", ["plan", "charge"])
def test_a_minimum_of_zero_is_refused_alike(api, staff_client, meter_code, where):
    charge = {"meter": meter_code, "unit_price": "0.1"}
    if where == "charge":
        plan = body({**charge, "minimum_amount": "0"})
    else:
        plan = body(charge, minimum_amount="0")
    refused_three_ways(
        api, staff_client, plan, "minimum_amount must be greater than 0 (leave it out for none)"
    )


def test_a_minimum_on_a_credits_plan_is_refused_alike(api, staff_client, meter_code):
    plan = body(
        {"meter": meter_code}, consumption_model="credits", units_per_credit="1000",
        minimum_amount="10",
    )  # fmt: skip
    plan_form_extra = {"units_per_credit": "1000"}
    message = "a minimum is money, and a credits plan's usage is drawn in credits"
    assert message in via_file(plan)
    assert message in via_api(api, plan)
    assert message in via_admin(staff_client, plan, **plan_form_extra)


def test_the_demo_file_shows_every_shape():
    from billing.pricing.parse import parse_pricing
    from tests.billing.test_pricing import DEMO

    migrated = {p.code: p for p in parse_pricing(path=DEMO).plans}["migrated"]
    requests, gpu = migrated.charges
    assert requests.tiers[1].package_size == D(10_000)
    assert gpu.flat_fee_at_zero is True and gpu.prorated is True
    assert migrated.rounding == "half_up"
    assert (migrated.minimum_amount, requests.minimum_amount) == (D(100), D(10))
    committed = {p.code: p for p in parse_pricing(path=DEMO).plans}["committed"]
    assert committed.commitment_amount == D(500) and committed.rounding == ""
    assert committed.commitment_billing == "in_arrears"
    upfront = {p.code: p for p in parse_pricing(path=DEMO).plans}["committed-upfront"]
    assert (upfront.commitment_amount, upfront.commitment_billing) == (D(500), "in_advance")


# --- f. prepaid commitments ------------------------------------------------------------------


def test_a_commitment_is_accepted_alike(api, staff_client, meter_code):
    charge = {"meter": meter_code, "unit_price": "0.1", "minimum_amount": "5"}
    for plan in published_three_ways(api, staff_client, body(charge, commitment_amount="100.5")):
        assert plan.commitment_amount == D("100.5")
        assert plan.charges.get().minimum_amount == D(5)  # a charge's minimum may stay


@pytest.mark.parametrize(
    ("extra", "admin_extra", "message"),
    [
        ({"commitment_amount": "0"}, {},
         "commitment_amount must be greater than 0 (leave it out for none)"),
        ({"commitment_amount": "100", "minimum_amount": "50"}, {},
         "a plan has a commitment_amount or a minimum_amount, not both"),
        ({"commitment_amount": "100", "consumption_model": "balance"}, {},
         "commitment_amount applies to metered plans"),
        ({"commitment_amount": "100", "consumption_model": "credits", "units_per_credit": "10"},
         {"units_per_credit": "10"}, "commitment_amount applies to metered plans"),
    ],
)  # fmt: skip
def test_a_commitment_is_refused_alike(api, staff_client, meter_code, extra, admin_extra, message):
    plan = body({"meter": meter_code}, **extra)
    assert message in via_file(plan)
    response = api.post("/api/v1/plans", plan)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "commitment_amount"
    assert message in response.json()["error"]["message"]
    assert message in via_admin(staff_client, plan, **admin_extra)
    assert not Plan.objects.exists()


def test_a_commitment_that_is_not_a_number_is_refused_by_the_file_and_the_api(api, meter_code):
    assert via_file(body(commitment_amount="lots")) == "'lots' is not a finite decimal number"
    response = api.post("/api/v1/plans", body(commitment_amount="lots"))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "commitment_amount"


def test_a_commitment_billed_in_advance_is_accepted_alike(api, staff_client, meter_code):
    charge = {"meter": meter_code, "unit_price": "0.1"}
    plan = body(charge, commitment_amount="100", commitment_billing="in_advance")
    for published in published_three_ways(api, staff_client, plan):
        assert published.commitment_billing == "in_advance"
        assert services.plan_spec_of(published).commitment_billing == "in_advance"
    response = api.get(f"/api/v1/plans/{published.code}")
    assert response.json()["commitment_billing"] == "in_advance"


def test_in_arrears_is_the_default_and_keeps_a_plans_hash(meter_code):
    """A plan that does not say commitment_billing is billed in arrears (today's behaviour)
    and hashes as before the field existed: loading an unchanged file publishes nothing."""
    plan = via_file(body({"meter": meter_code}, commitment_amount="100"))
    assert isinstance(plan, Plan) and plan.commitment_billing == "in_arrears"
    spec = services.plan_spec_of(plan)
    assert spec.canonical_hash() == plan.spec_hash
    # left out of the hash at its default, as every field added later
    field = {f.name: f for f in dataclasses.fields(services.PlanSpec)}["commitment_billing"]
    assert field.metadata.get("hash") == "omit_default" and field.default == "in_arrears"
    in_advance = dataclasses.replace(spec, commitment_billing="in_advance")
    assert in_advance.canonical_hash() != spec.canonical_hash()


@pytest.mark.parametrize(
    ("extra", "admin_extra", "message"),
    [
        ({"commitment_billing": "in_advance"}, {},
         "commitment_billing applies to a plan with a commitment_amount"),
        ({"commitment_amount": "100", "commitment_billing": "upfront"}, None,
         "commitment_billing must be one of in_arrears, in_advance"),
    ],
)  # fmt: skip
def test_commitment_billing_is_refused_alike(
    api, staff_client, meter_code, extra, admin_extra, message
):
    plan = body({"meter": meter_code}, **extra)
    assert message in via_file(plan)
    response = api.post("/api/v1/plans", plan)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "commitment_billing"
    assert message in response.json()["error"]["message"]
    if admin_extra is not None:  # the admin offers the two choices only
        assert message in via_admin(staff_client, plan, **admin_extra)
    assert not Plan.objects.exists()


# --- e. usage charges prorated for a period billed in part -------------------------------------


def test_prorated_is_accepted_alike(api, staff_client, meter_code):
    charge = {"meter": meter_code, "unit_price": "0.1", "prorated": True}
    for plan in published_three_ways(api, staff_client, body(charge)):
        assert plan.charges.get().prorated is True


def test_prorated_on_a_credits_plan_is_refused_alike(api, staff_client, meter_code):
    plan = body(
        {"meter": meter_code, "prorated": True}, consumption_model="credits",
        units_per_credit="1000",
    )  # fmt: skip
    message = "prorated applies to metered and balance plans"
    assert message in via_file(plan)
    assert message in via_api(api, plan)
    assert message in via_admin(staff_client, plan, units_per_credit="1000")
