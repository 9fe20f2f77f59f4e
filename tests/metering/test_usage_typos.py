"""A misspelt count in a provider's usage object is refused, naming the field it resembles,
instead of being read as 0 and charged as free (a verification pass of issue 13 sent
``{"prompt_tokens": 1000, "completion_tokns": 5000000}`` and was charged for the input
only). Keys no provider documents that resemble no counted field still pass: providers add
fields, and a new one must not stop ingestion."""

from __future__ import annotations

import pytest

from metering.errors import UsageNotUnderstood
from metering.normalize import normalize_usage


@pytest.mark.parametrize(
    ("usage", "param", "meant"),
    [
        (
            {"prompt_tokens": 1000, "completion_tokns": 5000000},
            "properties.usage.completion_tokns",
            "completion_tokens",
        ),
        (
            {"prompt_tokens": 1000, "prompt_tokens_details": {"cachd_tokens": 800}},
            "properties.usage.prompt_tokens_details.cachd_tokens",
            "cached_tokens",
        ),
        (
            {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokns": 4000},
            "properties.usage.cache_creation_input_tokns",
            "cache_creation_input_tokens",
        ),
        (
            {"promptTokenCount": 10, "candidatesTokenCont": 900},
            "properties.usage.candidatesTokenCont",
            "candidatesTokenCount",
        ),
        (
            {"usage": {"prompt_tokens": 3, "completion_token": 7}},
            "properties.usage.usage.completion_token",
            "completion_tokens",
        ),
    ],
    ids=["openai-output", "openai-cached", "anthropic-cache-write", "gemini-output", "nested"],
)
def test_a_misspelt_count_is_refused_naming_what_it_resembles(usage, param, meant):
    with pytest.raises(UsageNotUnderstood) as refused:
        normalize_usage(usage, provider="openai", model="gpt-4o")
    assert refused.value.param == param
    assert meant in refused.value.message


@pytest.mark.parametrize(
    "usage",
    [
        # Documented fields beside the counted ones, close as some of them are.
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        # A field no provider sends today, resembling nothing counted: a provider's new one.
        {"prompt_tokens": 10, "completion_tokens": 5, "video_seconds": 3, "premium": True},
        # Both the count and something close to it: the count is there, nothing is lost.
        {"input_tokens": 10, "output_tokens": 5, "output_token": 5},
    ],
    ids=["documented", "new-field", "count-present"],
)
def test_fields_that_are_not_typos_pass(usage):
    normalized = normalize_usage(usage, provider="openai", model="gpt-4o")
    assert normalized.output_tokens == 5


# --- through the API: the reproduction -------------------------------------------------

from decimal import Decimal  # noqa: E402

from metering.models import Event  # noqa: E402
from tests.billing import conftest as billing_fixtures  # noqa: E402
from tests.metering import test_api_usage as usage_api  # noqa: E402

api = billing_fixtures.api
api_key = billing_fixtures.api_key
make_key = billing_fixtures.make_key
make_customer = billing_fixtures.make_customer
make_meter = billing_fixtures.make_meter
make_plan = billing_fixtures.make_plan
acme, ai_plan, ai = usage_api.acme, usage_api.ai_plan, usage_api.ai


@pytest.mark.django_db
def test_a_misspelt_output_count_through_the_api_is_refused_and_charges_nothing(api, ai):
    body = usage_api.llm_body("typo-1", {"prompt_tokens": 1000, "completion_tokns": 5000000})
    response = api.post("/api/v1/events", body)
    billing_fixtures.assert_error(
        response, 400, "invalid_usage", param="properties.usage.completion_tokns"
    )
    assert not Event.objects.exists()
    assert usage_api.balance(ai) == (Decimal(10), Decimal(0), Decimal(10))


@pytest.mark.django_db
@pytest.mark.parametrize("when", ["0001-01-01T00:00:00Z", "1999-12-31T23:59:59Z"])
def test_an_event_before_2000_is_refused_as_a_timestamp_out_of_range(api, ai, when):
    body = {**usage_api.llm_body("old-1", {"prompt_tokens": 10}), "timestamp": when}
    response = api.post("/api/v1/events", body)
    billing_fixtures.assert_error(response, 400, "invalid_parameter", param="timestamp")
    batch = api.post("/api/v1/events/batch", {"events": [body]})
    assert batch.status_code == 200
    [result] = batch.json()["data"]
    assert result["status"] == "rejected" and result["error"]["param"] == "events[0].timestamp"
    assert not Event.objects.exists()
