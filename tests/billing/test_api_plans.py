"""Meters and versioned plans through the v1 API: publish (v1, unchanged, v2), read the latest
or a given version, every price-model rule, and cursor pagination of both lists."""

from __future__ import annotations

import copy
import json

import pytest

from billing.models import Meter, Plan, PlanCharge, PriceTier
from tests.billing.conftest import assert_error, post_raw

pytestmark = pytest.mark.django_db

PRO = {
    "code": "pro",
    "name": "Pro",
    "description": "For teams",
    "currency": "USD",
    "interval": "month",
    "base_fee": "49.00",
    "trial_days": 14,
    "consumption_model": "metered",
    "metadata": {"tier": "pro"},
    "charges": [
        {
            "meter": "output_tokens",
            "price_model": "graduated",
            "included_quantity": "1000000",
            "tiers": [
                {"up_to": "10000000", "unit_price": "0.000002"},
                {"up_to": None, "unit_price": "0.0000015", "flat_fee": "5"},
            ],
        },
        {
            "meter": "requests",
            "price_model": "package",
            "unit_price": "1.50",
            "package_size": "1000",
        },
        {"meter": "images", "unit_price": "0.04"},
        {"meter": "input_tokens", "margin_percent": "12.5"},
    ],
}

PRO_CHARGES_OUT = [
    {
        "meter": "output_tokens",
        "price_model": "graduated",
        "included_quantity": "1000000.000000000000",
        "unit_price": "0.000000000000",
        "package_size": None,
        "margin_percent": None,
        "tiers": [
            {
                "up_to": "10000000.000000000000",
                "unit_price": "0.000002000000",
                "flat_fee": "0.000000000000",
                "package_size": None,
            },
            {
                "up_to": None,
                "unit_price": "0.000001500000",
                "flat_fee": "5.000000000000",
                "package_size": None,
            },
        ],
        "flat_fee_at_zero": False,
        "minimum_amount": None,
        "prorated": False,
        "interval": "",
        "interval_count": 1,
    },
    {
        "meter": "requests",
        "price_model": "package",
        "included_quantity": "0.000000000000",
        "unit_price": "1.500000000000",
        "package_size": "1000.000000000000",
        "margin_percent": None,
        "tiers": [],
        "flat_fee_at_zero": False,
        "minimum_amount": None,
        "prorated": False,
        "interval": "",
        "interval_count": 1,
    },
    {
        "meter": "images",
        "price_model": "per_unit",
        "included_quantity": "0.000000000000",
        "unit_price": "0.040000000000",
        "package_size": None,
        "margin_percent": None,
        "tiers": [],
        "flat_fee_at_zero": False,
        "minimum_amount": None,
        "prorated": False,
        "interval": "",
        "interval_count": 1,
    },
    {
        "meter": "input_tokens",
        "price_model": "per_unit",
        "included_quantity": "0.000000000000",
        "unit_price": "0.000000000000",
        "package_size": None,
        "margin_percent": "12.5000",
        "tiers": [],
        "flat_fee_at_zero": False,
        "minimum_amount": None,
        "prorated": False,
        "interval": "",
        "interval_count": 1,
    },
]


@pytest.fixture
def meters(make_meter):
    return [
        make_meter("output_tokens"),
        make_meter("requests", aggregation="count", property=""),
        make_meter("images", property="images"),
        make_meter("input_tokens", property="llm.input_tokens"),
    ]


def without_volatile(body: dict) -> dict:
    body = dict(body)
    assert isinstance(body.pop("id"), int)
    assert body.pop("published_at").endswith("Z")
    return body


# --- POST /plans: versions -------------------------------------------------------------------


def test_publish_a_plan_creates_version_one(api, meters):
    response = api.post("/api/v1/plans", PRO)
    assert response.status_code == 201, response.json()
    assert without_volatile(response.json()) == {
        "code": "pro",
        "version": 1,
        "name": "Pro",
        "description": "For teams",
        "currency": "USD",
        "interval": "month",
        "base_fee": "49.000000000000",
        "trial_days": 14,
        "consumption_model": "metered",
        "units_per_credit": None,
        "metadata": {"tier": "pro"},
        "charges": PRO_CHARGES_OUT,
        "credit_grant": None,
        "rounding": "",  # not said: the currency's rule, else half even
        "minimum_amount": None,
        "commitment_amount": None,
        "commitment_billing": "in_arrears",
        "interval_count": 1,
        "billing_time": "anniversary",
        "billing_anchor_day": None,
        "charges_interval": "",
        "charges_interval_count": 1,
    }
    plan = Plan.objects.get()
    assert response.json()["id"] == plan.pk
    assert plan.published_by_id is None
    assert PlanCharge.objects.filter(plan=plan).count() == 4
    assert PriceTier.objects.filter(charge__plan=plan).count() == 2


def test_publishing_the_same_plan_again_returns_it_unchanged(api, meters):
    first = api.post("/api/v1/plans", PRO)
    again = api.post("/api/v1/plans", PRO)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert Plan.objects.count() == 1


def test_the_same_plan_written_differently_is_unchanged(api, meters):
    first = api.post("/api/v1/plans", PRO).json()
    same = copy.deepcopy(PRO)
    same["base_fee"] = "49"
    same["charges"][0]["included_quantity"] = "1000000.000"
    same["charges"][0]["tiers"][0]["flat_fee"] = "0"
    same["charges"][1]["included_quantity"] = "0"
    text = json.dumps(same)
    assert '"base_fee": "49"' in text
    response = post_raw(api, "/api/v1/plans", text.replace('"base_fee": "49"', '"base_fee": 49.0'))
    assert response.status_code == 200, response.json()
    assert response.json() == first


def test_a_changed_plan_is_published_as_the_next_version(api, meters):
    v1 = api.post("/api/v1/plans", PRO).json()
    changed = copy.deepcopy(PRO)
    changed["base_fee"] = "59.00"
    changed["charges"][2]["unit_price"] = "0.05"
    response = api.post("/api/v1/plans", changed)
    assert response.status_code == 201, response.json()
    v2 = response.json()
    assert v2["version"] == 2 and v2["id"] != v1["id"]
    assert v2["base_fee"] == "59.000000000000"
    assert v2["charges"][2]["unit_price"] == "0.050000000000"
    # v1 is immutable.
    assert Plan.objects.get(pk=v1["id"]).base_fee == 49
    # The same v2 body again: unchanged, still v2.
    again = api.post("/api/v1/plans", changed)
    assert again.status_code == 200 and again.json() == v2
    # Going back to v1's body is a change too: v3.
    back = api.post("/api/v1/plans", PRO)
    assert back.status_code == 201 and back.json()["version"] == 3
    assert back.json()["base_fee"] == "49.000000000000"


@pytest.mark.parametrize(
    "change",
    [
        {"name": "Pro (2026)"},
        {"description": "Changed"},
        {"trial_days": 0},
        {"metadata": {"tier": "pro", "x": 1}},
        {"charges": PRO["charges"][:2]},
    ],
)
def test_any_change_publishes_a_new_version(api, meters, change):
    api.post("/api/v1/plans", PRO)
    response = api.post("/api/v1/plans", {**PRO, **change})
    assert response.status_code == 201, response.json()
    assert response.json()["version"] == 2


def test_get_plan_returns_the_latest_and_a_given_version(api, meters):
    v1 = api.post("/api/v1/plans", PRO).json()
    v2 = api.post("/api/v1/plans", {**PRO, "base_fee": "59"}).json()
    assert api.get("/api/v1/plans/pro").json() == v2
    assert api.get("/api/v1/plans/pro?version=1").json() == v1
    assert api.get("/api/v1/plans/pro?version=2").json() == v2
    assert api.get("/api/v1/plans/pro?version=").json() == v2


def test_get_an_unknown_plan_or_version(api, meters):
    api.post("/api/v1/plans", PRO)
    assert_error(
        api.get("/api/v1/plans/enterprise"),
        404,
        "plan_not_found",
        message="plan 'enterprise' does not exist",
    )
    assert_error(
        api.get("/api/v1/plans/pro?version=2"),
        404,
        "plan_not_found",
        message="plan 'pro' does not exist in version 2",
    )


@pytest.mark.parametrize("version", ["abc", "0", "-1", "1.5", "99999999999"])
def test_get_plan_with_a_bad_version(api, meters, version):
    api.post("/api/v1/plans", PRO)
    assert_error(
        api.get(f"/api/v1/plans/pro?version={version}"),
        400,
        "invalid_parameter",
        param="version",
        message="version must be a positive integer",
    )


def test_publish_a_credits_plan(api, meters):
    response = api.post(
        "/api/v1/plans",
        {
            "code": "credits",
            "name": "Credits",
            "consumption_model": "credits",
            "units_per_credit": "1000",
            "charges": [{"meter": "output_tokens"}],
        },
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["consumption_model"], body["units_per_credit"]) == ("credits", "1000.000000000000")
    assert (body["base_fee"], body["trial_days"], body["interval"]) == (
        "0.000000000000",
        0,
        "month",
    )


def test_publish_a_yearly_volume_plan_with_json_numbers(api, meters):
    response = post_raw(
        api,
        "/api/v1/plans",
        """{
        "code": "yearly", "name": "Yearly", "interval": "year", "base_fee": 0.1,
        "charges": [{"meter": "output_tokens", "price_model": "volume",
                     "tiers": [{"up_to": 100, "unit_price": 0.3},
                               {"up_to": null, "unit_price": 0.0000015}]}]}""",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["base_fee"] == "0.100000000000"
    assert body["charges"][0]["tiers"] == [
        {
            "up_to": "100.000000000000",
            "unit_price": "0.300000000000",
            "flat_fee": "0.000000000000",
            "package_size": None,
        },
        {
            "up_to": None,
            "unit_price": "0.000001500000",
            "flat_fee": "0.000000000000",
            "package_size": None,
        },
    ]


# --- POST /plans: validation --------------------------------------------------------------------


def plan_with(charge: dict, **fields) -> dict:
    return {"code": "bad", "name": "Bad", **fields, "charges": [charge]}


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (
            plan_with({"meter": "output_tokens", "price_model": "graduated"}),
            "charges[0].tiers",
            "a graduated charge needs tiers",
        ),
        (
            plan_with({"meter": "output_tokens", "price_model": "volume", "tiers": []}),
            "charges[0].tiers",
            "a volume charge needs tiers",
        ),
        (
            plan_with(
                {
                    "meter": "output_tokens",
                    "price_model": "graduated",
                    "tiers": [{"up_to": "10"}, {"up_to": "20"}],
                }
            ),
            "charges[0].tiers[1].up_to",
            "the last tier must be open-ended (up_to null)",
        ),
        (
            plan_with(
                {"meter": "output_tokens", "price_model": "graduated", "tiers": [{"up_to": "10"}]}
            ),
            "charges[0].tiers[0].up_to",
            "the last tier must be open-ended (up_to null)",
        ),
        (
            plan_with(
                {
                    "meter": "output_tokens",
                    "price_model": "graduated",
                    "tiers": [{"up_to": None}, {"up_to": None}],
                }
            ),
            "charges[0].tiers[0].up_to",
            "only the last tier may be open-ended",
        ),
        (
            plan_with(
                {
                    "meter": "output_tokens",
                    "price_model": "graduated",
                    "tiers": [{"up_to": "10"}, {"up_to": "5"}, {"up_to": None}],
                }
            ),
            "charges[0].tiers[1].up_to",
            "tier bounds must increase",
        ),
        (
            plan_with(
                {
                    "meter": "output_tokens",
                    "price_model": "volume",
                    "tiers": [{"up_to": "10"}, {"up_to": "10"}, {"up_to": None}],
                }
            ),
            "charges[0].tiers[1].up_to",
            "tier bounds must increase",
        ),
        (
            plan_with(
                {
                    "meter": "output_tokens",
                    "price_model": "graduated",
                    "tiers": [{"up_to": "0"}, {"up_to": None}],
                }
            ),
            "charges[0].tiers[0].up_to",
            "tier bounds must increase",
        ),
        (
            plan_with({"meter": "output_tokens", "price_model": "package", "unit_price": "1"}),
            "charges[0].package_size",
            "a package charge needs package_size > 0",
        ),
        (
            plan_with({"meter": "output_tokens", "price_model": "package", "package_size": "0"}),
            "charges[0].package_size",
            "a package charge needs package_size > 0",
        ),
        (
            plan_with({"meter": "output_tokens", "price_model": "package", "package_size": "-5"}),
            "charges[0].package_size",
            "a package charge needs package_size > 0",
        ),
        (
            plan_with(
                {"meter": "output_tokens", "price_model": "per_unit", "tiers": [{"up_to": None}]}
            ),
            "charges[0].tiers",
            "a per_unit charge has no tiers",
        ),
        (
            plan_with({"meter": "output_tokens"}, consumption_model="credits"),
            "units_per_credit",
            "a credits plan needs units_per_credit > 0",
        ),
        (
            plan_with(
                {"meter": "output_tokens"}, consumption_model="credits", units_per_credit="0"
            ),
            "units_per_credit",
            "a credits plan needs units_per_credit > 0",
        ),
        (
            plan_with(
                {"meter": "output_tokens"}, consumption_model="credits", units_per_credit="-2"
            ),
            "units_per_credit",
            "a credits plan needs units_per_credit > 0",
        ),
        (
            {
                "code": "bad",
                "name": "Bad",
                "charges": [{"meter": "output_tokens"}, {"meter": "output_tokens"}],
            },
            "charges",
            "a plan has at most one charge per meter",
        ),
    ],
)
def test_price_model_rules(api, meters, body, param, message):
    response = api.post("/api/v1/plans", body)
    assert_error(response, 400, "invalid_parameter", param=param, message=message)
    assert not Plan.objects.exists()


def test_the_second_charge_is_named_in_the_error(api, meters):
    response = api.post(
        "/api/v1/plans",
        {
            "code": "bad",
            "name": "Bad",
            "charges": [
                {"meter": "output_tokens"},
                {
                    "meter": "requests",
                    "price_model": "graduated",
                    "tiers": [{"up_to": "100"}, {"up_to": "50"}, {"up_to": None}],
                },
            ],
        },
    )
    assert_error(
        response,
        400,
        "invalid_parameter",
        param="charges[1].tiers[1].up_to",
        message="tier bounds must increase",
    )


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"name": "Pro"}, "parameter_missing", "code"),
        ({"code": "pro"}, "parameter_missing", "name"),
        ({"code": "Pro Plan", "name": "Pro"}, "invalid_parameter", "code"),
        ({"code": "pro", "name": "Pro", "currency": "usd"}, "invalid_parameter", "currency"),
        ({"code": "pro", "name": "Pro", "interval": "fortnight"}, "invalid_parameter", "interval"),
        ({"code": "pro", "name": "Pro", "base_fee": "-1"}, "invalid_parameter", "base_fee"),
        (
            {"code": "pro", "name": "Pro", "base_fee": "1.0000000000001"},
            "invalid_parameter",
            "base_fee",
        ),
        ({"code": "pro", "name": "Pro", "trial_days": -1}, "invalid_parameter", "trial_days"),
        ({"code": "pro", "name": "Pro", "trial_days": 3651}, "invalid_parameter", "trial_days"),
        (
            {"code": "pro", "name": "Pro", "consumption_model": "vibes"},
            "invalid_parameter",
            "consumption_model",
        ),
        (
            {"code": "pro", "name": "Pro", "charges": {"meter": "output_tokens"}},
            "invalid_parameter",
            "charges",
        ),
    ],
)
def test_invalid_plan_fields(api, meters, body, code, param):
    assert_error(api.post("/api/v1/plans", body), 400, code, param=param)
    assert not Plan.objects.exists()


@pytest.mark.parametrize(
    ("charge", "param"),
    [
        ({"meter": "output_tokens", "unit_price": "-1"}, "charges[0].unit_price"),
        ({"meter": "output_tokens", "price_model": "tiered"}, "charges[0].price_model"),
        ({"price_model": "per_unit"}, "charges[0].meter"),
        (
            {
                "meter": "output_tokens",
                "price_model": "graduated",
                "tiers": [{"up_to": "10", "unit_price": "-1"}, {"up_to": None}],
            },
            "charges[0].tiers[0].unit_price",
        ),
    ],
)
def test_serializer_errors_in_charges_name_the_charge_like_service_errors(
    api, meters, charge, param
):
    response = api.post("/api/v1/plans", plan_with(charge))
    body = response.json()
    assert response.status_code == 400
    assert body["error"]["param"] == param


@pytest.mark.parametrize(
    ("charge", "param"),
    [
        ({"meter": "output_tokens", "package_size": ""}, "charges[0].package_size"),
        ({"meter": "output_tokens", "margin_percent": ""}, "charges[0].margin_percent"),
        ({"meter": "output_tokens", "minimum_amount": " "}, "charges[0].minimum_amount"),
        (
            {
                "meter": "output_tokens",
                "price_model": "graduated",
                "tiers": [{"up_to": "", "unit_price": "1"}],
            },
            "charges[0].tiers[0].up_to",
        ),
        (
            {
                "meter": "output_tokens",
                "price_model": "graduated",
                "tiers": [{"up_to": None, "package_size": ""}],
            },
            "charges[0].tiers[0].package_size",
        ),
    ],
)
def test_a_blank_string_is_not_null(api, meters, charge, param):
    """DRF reads "" as null for a nullable decimal: an open-ended tier or no package from a
    blank form field, silently. Only an explicit null is null; "" is refused."""
    response = api.post("/api/v1/plans", plan_with(charge))
    assert_error(response, 400, "invalid_parameter", param=param)
    assert not Plan.objects.exists()


def test_a_charge_on_an_unknown_meter_is_meter_not_found(api, meters):
    response = api.post("/api/v1/plans", plan_with({"meter": "gpu_seconds"}))
    assert_error(
        response,
        404,
        "meter_not_found",
        param="charges[0].meter",
        message="meter 'gpu_seconds' does not exist",
    )
    assert not Plan.objects.exists()


def test_a_charge_on_an_unknown_meter_is_refused_and_changes_nothing(api, meters):
    response = api.post("/api/v1/plans", plan_with({"meter": "gpu_seconds"}))
    assert response.status_code in (400, 404)
    assert response.json()["error"]["code"] in ("invalid_parameter", "meter_not_found")
    assert not Plan.objects.exists()


def test_publish_plan_service_raises_meter_not_found(db, meters):
    from billing import errors, services

    spec = services.PlanSpec(
        code="x",
        name="X",
        charges=(
            services.ChargeSpec(meter="output_tokens"),
            services.ChargeSpec(meter="gpu_seconds"),
        ),
    )
    with pytest.raises(errors.MeterNotFound) as caught:
        services.publish_plan(spec=spec)
    assert (caught.value.code, caught.value.http_status, caught.value.param) == (
        "meter_not_found",
        404,
        "charges[1].meter",
    )
    assert not Plan.objects.exists()


def test_a_failed_new_version_leaves_the_current_one(api, meters):
    api.post("/api/v1/plans", PRO)
    broken = copy.deepcopy(PRO)
    broken["charges"][0]["tiers"][1]["up_to"] = "5"
    assert api.post("/api/v1/plans", broken).status_code == 400
    assert list(Plan.objects.values_list("version", flat=True)) == [1]
    assert api.get("/api/v1/plans/pro").json()["version"] == 1


def test_a_read_only_key_cannot_publish(read_api, meters):
    assert_error(read_api.post("/api/v1/plans", PRO), 403, "insufficient_scope")
    assert not Plan.objects.exists()


# --- GET /plans ----------------------------------------------------------------------------------


def test_list_plans_shows_the_latest_version_of_each(api, meters, make_plan):
    basic = make_plan("basic", base_fee="10")
    make_plan("pro", base_fee="49")
    pro_v2 = make_plan("pro", base_fee="59")
    team = make_plan("team", base_fee="99")
    body = api.get("/api/v1/plans").json()
    assert body["has_more"] is False
    assert [(p["code"], p["version"], p["id"]) for p in body["data"]] == [
        ("team", 1, team.pk),
        ("pro", 2, pro_v2.pk),
        ("basic", 1, basic.pk),
    ]
    assert body["data"][1]["base_fee"] == "59.000000000000"
    assert body["data"][1] == api.get("/api/v1/plans/pro").json()


def test_list_plans_pages(api, meters, make_plan):
    plans = [make_plan(f"plan-{n}") for n in range(5)]
    ids = [p.pk for p in plans][::-1]

    def page(query: str):
        body = api.get(f"/api/v1/plans?{query}").json()
        return [p["id"] for p in body["data"]], body["has_more"]

    assert page("limit=2") == (ids[:2], True)
    assert page(f"limit=2&starting_after={ids[1]}") == (ids[2:4], True)
    assert page(f"limit=2&starting_after={ids[3]}") == (ids[4:], False)
    assert page("limit=5") == (ids, False)


@pytest.mark.parametrize("path", ["/api/v1/plans", "/api/v1/meters"])
@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("starting_after=x", "starting_after"),
        ("starting_after=-5", "starting_after"),
    ],
)
def test_lists_refuse_bad_pagination(api, path, query, param):
    assert_error(api.get(f"{path}?{query}"), 400, "invalid_parameter", param=param)


def test_an_empty_list(api):
    assert api.get("/api/v1/plans").json() == {"data": [], "has_more": False}
    assert api.get("/api/v1/meters").json() == {"data": [], "has_more": False}


# --- meters --------------------------------------------------------------------------------------


OUTPUT_TOKENS = {
    "code": "output_tokens",
    "name": "Output tokens",
    "event_name": "llm.completion",
    "aggregation": "sum",
    "property": "usage.output_tokens",
    "filters": {"provider": ["openai", "anthropic"]},
    "group_by": ["model"],
    "unit": "tokens",
}


def test_create_a_meter(api):
    response = api.post("/api/v1/meters", OUTPUT_TOKENS)
    assert response.status_code == 201, response.json()
    body = dict(response.json())
    meter = Meter.objects.get()
    assert body.pop("id") == meter.pk
    assert body.pop("created_at").endswith("Z")
    assert body == OUTPUT_TOKENS
    assert (meter.filters, meter.group_by) == ({"provider": ["openai", "anthropic"]}, ["model"])


def test_create_a_count_meter_with_defaults(api):
    response = api.post(
        "/api/v1/meters", {"code": "requests", "event_name": "api.request", "aggregation": "count"}
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert {k: body[k] for k in ("name", "property", "filters", "group_by", "unit")} == {
        "name": "",
        "property": "",
        "filters": {},
        "group_by": [],
        "unit": "",
    }


def test_a_duplicate_meter_is_a_conflict(api):
    api.post("/api/v1/meters", OUTPUT_TOKENS)
    response = api.post("/api/v1/meters", {**OUTPUT_TOKENS, "aggregation": "max"})
    assert_error(
        response, 409, "meter_exists", param="code", message="meter 'output_tokens' already exists"
    )
    assert Meter.objects.get().aggregation == "sum"


@pytest.mark.parametrize(
    ("change", "code", "param"),
    [
        ({"property": ""}, "invalid_parameter", "property"),
        ({"aggregation": "avg"}, "invalid_parameter", "aggregation"),
        ({"code": "output tokens"}, "invalid_parameter", "code"),
        ({"code": None}, "parameter_missing", "code"),
        ({"event_name": None}, "parameter_missing", "event_name"),
        ({"filters": ["provider"]}, "invalid_parameter", "filters"),
        ({"group_by": "model"}, "invalid_parameter", "group_by"),
        ({"group_by": [f"d{i}" for i in range(11)]}, "invalid_parameter", "group_by"),
    ],
)
def test_invalid_meters(api, change, code, param):
    body = {k: v for k, v in {**OUTPUT_TOKENS, **change}.items() if v is not None}
    assert_error(api.post("/api/v1/meters", body), 400, code, param=param)
    assert not Meter.objects.exists()


@pytest.mark.parametrize("aggregation", ["sum", "max", "unique_count", "latest"])
def test_every_aggregation_but_count_needs_a_property(api, aggregation):
    response = api.post(
        "/api/v1/meters", {"code": "m", "event_name": "e", "aggregation": aggregation}
    )
    assert_error(
        response,
        400,
        "invalid_parameter",
        param="property",
        message=f"a {aggregation} meter needs the property it reads",
    )


def test_a_meter_may_filter_on_a_fractional_value(api):
    response = post_raw(
        api,
        "/api/v1/meters",
        '{"code": "m", "event_name": "e", '
        '"aggregation": "count", "filters": {"temperature": [0.5]}}',
    )
    assert response.status_code == 201, response.json()


def test_list_meters_pages(api, make_meter):
    ids = [make_meter(f"m{n}").pk for n in range(3)][::-1]
    first = api.get("/api/v1/meters?limit=2").json()
    assert [m["id"] for m in first["data"]] == ids[:2] and first["has_more"] is True
    assert first["data"][0]["code"] == "m2"
    rest = api.get(f"/api/v1/meters?limit=2&starting_after={ids[1]}").json()
    assert [m["id"] for m in rest["data"]] == ids[2:] and rest["has_more"] is False


def test_a_read_only_key_lists_but_cannot_create_meters(read_api, make_meter):
    make_meter("m1")
    assert [m["code"] for m in read_api.get("/api/v1/meters").json()["data"]] == ["m1"]
    assert_error(read_api.post("/api/v1/meters", OUTPUT_TOKENS), 403, "insufficient_scope")
