"""One validator for plans (billing.services.validate_plan_spec): what the pricing file
refuses, the API and the admin refuse too — they all publish through publish_plan."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import errors, services
from billing.models import Plan
from billing.pricing import parse as pricing
from billing.services import ChargeSpec, PlanSpec, TierSpec

pytestmark = pytest.mark.django_db

D = Decimal

BAD_SPECS = [
    (
        PlanSpec(code="p", name="P", units_per_credit=D(-5)),
        "units_per_credit",
        {"units_per_credit": "-5"},
    ),
    (
        PlanSpec(code="p", name="P", charges=(ChargeSpec(meter="m", package_size=D(-3)),)),
        "charges[0].package_size",
        {"charges": [{"meter": "m", "package_size": "-3"}]},
    ),
    (
        PlanSpec(
            code="p",
            name="P",
            charges=(
                ChargeSpec(
                    meter="m",
                    price_model="graduated",
                    unit_price=D(1),
                    tiers=(TierSpec(up_to=None, unit_price=D(1)),),
                ),
            ),
        ),
        "charges[0].unit_price",
        {
            "charges": [
                {
                    "meter": "m",
                    "price_model": "graduated",
                    "unit_price": "1",
                    "tiers": [{"up_to": None, "unit_price": "1"}],
                }
            ]
        },
    ),
    (PlanSpec(code="p", name="P", currency="ABC"), "currency", {"currency": "ABC"}),
]


@pytest.mark.parametrize(("spec", "param", "_"), BAD_SPECS)
def test_the_shared_validator_refuses(spec, param, _):
    with pytest.raises(errors.ValidationFailed) as caught:
        services.validate_plan_spec(spec)
    assert caught.value.param == param


@pytest.mark.parametrize(("_", "param", "body"), BAD_SPECS)
def test_the_api_refuses_what_the_file_refuses(api, make_meter, _, param, body):
    make_meter("m")
    response = api.post("/api/v1/plans", {"code": "p", "name": "P", **body}, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["param"] == param
    assert not Plan.objects.filter(code="p").exists()


@pytest.mark.parametrize(("_", "param", "body"), BAD_SPECS)
def test_the_pricing_file_refuses_the_same(_, param, body):
    import json

    text = json.dumps({"version": 1, "plans": [{"code": "p", "name": "P", **body}]})
    with pytest.raises(pricing.PricingFileInvalid):
        pricing.parse_pricing(text=text, source="p.json")
