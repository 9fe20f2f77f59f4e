"""A plan's recurring credit grant declared three ways — the pricing file, POST /api/v1/plans
and the admin's plan forms — read by the one reader (billing.pricing.grants) and checked by
the one rule set (validate_plan_spec): the same grant is the same plan version whichever way
it came, and each mistake is refused by all three with the same words."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from billing import services
from billing.models import Plan, PlanCreditGrant
from billing.pricing.load import load_pricing
from billing.pricing.reading import PricingFileInvalid
from tests.billing import conftest as billing_fixtures
from tests.billing import test_admin as admin_fixtures
from tests.billing.test_admin import url

pytestmark = pytest.mark.django_db
api, api_key, make_key = billing_fixtures.api, billing_fixtures.api_key, billing_fixtures.make_key
staff, staff_client = admin_fixtures.staff, admin_fixtures.staff_client

GRANT = {
    "amount": "1000",
    "cadence": "month",
    "expiry": "period_end",
    "rollover": "capped",
    "rollover_cap": "500",
    "rollover_periods": 2,
    "priority": 25,
    "name": "Monthly credits",
}

FILE = """
meters:
  - {code: units, event_name: api.call, aggregation: sum, property: units}
plans:
  - code: team
    name: Team
    interval: year
    consumption_model: %(model)s
    %(units)s
    charges:
      - {meter: units}
    credit_grant:
%(grant)s
"""


def pricing_file(grant: dict, model: str = "credits") -> str:
    lines = "\n".join(f"      {key}: {json.dumps(value)}" for key, value in grant.items())
    units = "units_per_credit: 1" if model == "credits" else ""
    return FILE % {"model": model, "units": units, "grant": lines}


def api_body(grant, model: str = "credits") -> dict:
    body = {
        "code": "team",
        "name": "Team",
        "interval": "year",
        "consumption_model": model,
        "charges": [{"meter": "units"}],
        "credit_grant": grant,
    }
    if model == "credits":
        body["units_per_credit"] = "1"
    return body


def test_the_same_grant_from_the_file_the_api_and_the_admin_is_one_plan_version(api, staff_client):
    summary = load_pricing(text=pricing_file(GRANT), source="pricing.yaml")
    assert [r.describe() for r in summary.plans] == ["plan team: created (version 1)"]
    plan = Plan.objects.get(code="team")
    rule = PlanCreditGrant.objects.get(plan=plan)
    assert (rule.amount, rule.cadence, rule.rollover, rule.rollover_cap) == (
        Decimal(1000),
        "month",
        "capped",
        Decimal(500),
    )
    assert (rule.rollover_periods, rule.priority, rule.expiry_days) == (2, 25, None)
    # the API: the same plan, unchanged (200), shown as it was declared
    response = api.post("/api/v1/plans", api_body(GRANT), format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["version"] == 1
    assert response.json()["credit_grant"] == {**GRANT, "expiry": "period_end"}
    # the admin: the publish form, untouched, publishes nothing
    form = admin_fixtures.publish_form(plan, units_per_credit="1", credit_grant=json.dumps(GRANT))
    answer = staff_client.post(url("billing_plan_publish", plan.pk), form)
    assert answer.status_code == 302, answer.context["form"].errors
    assert Plan.objects.filter(code="team").count() == 1
    # a changed grant is a new version; version 1 keeps its own
    changed = api.post("/api/v1/plans", api_body({**GRANT, "amount": "2000"}), format="json")
    assert changed.status_code == 201 and changed.json()["version"] == 2
    assert PlanCreditGrant.objects.get(plan=plan).amount == Decimal(1000)
    # and the admin's form starts from the version's grant
    page = staff_client.get(url("billing_plan_publish", plan.pk))
    assert json.loads(page.context["form"]["credit_grant"].value()) == {**GRANT}


def test_a_plan_without_a_grant_keeps_its_version_and_hash():
    load_pricing(text=pricing_file(GRANT).split("    credit_grant:")[0], source="p.yaml")
    plan = Plan.objects.get(code="team")
    spec = services.plan_spec_of(plan)
    assert spec.credit_grant is None
    assert "credit_grant" not in json.dumps(spec.canonical_hash())


REFUSED = [
    # (grant, model, where, reason)
    (
        {"amount": "10"},
        "metered",
        "credit_grant",
        "a recurring credit grant needs a credits plan",
    ),
    (
        {"amount": "10", "cadence": "once", "rollover": "all"},
        "credits",
        "credit_grant.rollover",
        "a grant made once has no next grant to roll over into",
    ),
    ({"amount": "10", "rollover": "capped"}, "credits", "credit_grant", "needs 'rollover_cap'"),
    (
        {"amount": "10", "rollover_cap": "5"},
        "credits",
        "credit_grant.rollover_cap",
        "applies to rollover: capped only",
    ),
    ({"amount": "10", "expiry": "days"}, "credits", "credit_grant", "needs 'expiry_days'"),
    (
        {"amount": "10", "rollover_periods": 2},
        "credits",
        "credit_grant.rollover_periods",
        "applies to rollover: all or capped",
    ),
    ({"amount": "10", "rolover": "all"}, "credits", "credit_grant.rolover", "unknown field"),
    ({"amount": "0"}, "credits", "credit_grant.amount", "must be greater than 0"),
    (
        {"amount": "0.0000000000001"},
        "credits",
        "credit_grant.amount",
        "more than 12 decimal places",
    ),
    ({"amount": "10", "cadence": "week"}, "credits", "credit_grant.cadence", "is not one of"),
    ({"amount": "10", "priority": 1001}, "credits", "credit_grant.priority", "between 0 and"),
]


@pytest.mark.parametrize("grant, model, where, reason", REFUSED)
def test_what_a_grant_cannot_express_is_refused_alike_by_the_file_the_api_and_the_admin(
    api, staff_client, grant, model, where, reason
):
    with pytest.raises(PricingFileInvalid) as refused:
        load_pricing(text=pricing_file(grant, model), source="pricing.yaml")
    assert refused.value.location == f"plans[0].{where}"
    assert reason in refused.value.reason
    assert refused.value.line is not None  # the file's line is named

    api.post(
        "/api/v1/meters",
        {"code": "units", "event_name": "api.call", "aggregation": "sum", "property": "units"},
        format="json",
    )
    response = api.post("/api/v1/plans", api_body(grant, model), format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["param"] == where and reason in error["message"], error

    form = {
        "code": "team",
        "name": "Team",
        "currency": "USD",
        "interval": "year",
        "consumption_model": model,
        "base_fee": "0",
        "trial_days": "0",
        "units_per_credit": "1" if model == "credits" else "",
        "charges": '[{"meter": "units"}]',
        "credit_grant": json.dumps(grant),
    }
    answer = staff_client.post(url("billing_plan_add"), form)
    assert answer.status_code == 200
    problems = " ".join(m for messages in answer.context["form"].errors.values() for m in messages)
    assert reason in problems, problems
    assert not Plan.objects.filter(code="team").exists()


def test_a_list_of_grants_is_refused_saying_a_plan_has_one():
    text = pricing_file(GRANT).split("    credit_grant:")[0] + "    credit_grant: [{amount: 10}]\n"
    with pytest.raises(PricingFileInvalid) as refused:
        load_pricing(text=text, source="p.yaml")
    assert "a plan carries one recurring credit grant" in refused.value.reason
