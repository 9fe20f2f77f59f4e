"""metering.normalize: provider usage objects, built with the official SDK types and dumped
as a product backend forwards them, read as five token kinds; agreement with genai-prices'
own extraction; refusals with the offending field named. Pure: no database."""

from __future__ import annotations

import copy
import json
import warnings
from decimal import Decimal
from typing import Any

import anthropic.types as anthropic_types
import genai_prices
import pytest
from google.genai import types as genai_types
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import CompletionUsage
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails
from openai.types.responses import ResponseUsage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from metering.errors import InvalidEvent, UnknownProvider, UsageNotUnderstood
from metering.normalize import NormalizedUsage, normalize_usage
from metering.usage_counts import MAX_COUNT

KINDS = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
)


def kinds(usage: NormalizedUsage) -> dict[str, int]:
    return {kind: getattr(usage, kind) for kind in KINDS}


def expected(
    input_tokens: int = 0,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    output_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> dict[str, int]:
    return dict(
        input_tokens=input_tokens,
        cache_read_tokens=cache_read_tokens,
        cache_write_tokens=cache_write_tokens,
        cache_write_1h_tokens=cache_write_1h_tokens,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning_tokens,
    )


def as_json(data: Any) -> Any:
    """What the API hands over: JSON decoded with parse_float=Decimal."""
    return json.loads(json.dumps(data), parse_float=Decimal)


# --- SDK builders ----------------------------------------------------------------------------


def openai_chat_usage(prompt: int, cached: int, completion: int, reasoning: int) -> dict:
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached, audio_tokens=0),
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=reasoning, audio_tokens=0, rejected_prediction_tokens=0
        ),
    ).model_dump()


def openai_responses_usage(
    prompt: int, cached: int, output: int, reasoning: int, cache_write: int = 0
) -> dict:
    return ResponseUsage(
        input_tokens=prompt,
        input_tokens_details=InputTokensDetails(
            cached_tokens=cached, cache_write_tokens=cache_write
        ),
        output_tokens=output,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
        total_tokens=prompt + output,
    ).model_dump()


def anthropic_usage(
    uncached: int,
    read: int,
    write_5m: int,
    write_1h: int,
    output: int,
    thinking: int | None = None,
) -> dict:
    return anthropic_types.Usage(
        input_tokens=uncached,
        cache_read_input_tokens=read,
        cache_creation_input_tokens=write_5m + write_1h,
        cache_creation=anthropic_types.CacheCreation(
            ephemeral_5m_input_tokens=write_5m, ephemeral_1h_input_tokens=write_1h
        ),
        output_tokens=output,
        output_tokens_details=(
            None
            if thinking is None
            else anthropic_types.OutputTokensDetails(thinking_tokens=thinking)
        ),
        server_tool_use=anthropic_types.ServerToolUsage(
            web_search_requests=0, web_fetch_requests=0
        ),
        service_tier="standard",
    ).model_dump()


def gemini_usage_metadata(
    prompt: int, cached: int, candidates: int, thoughts: int, tool_use: int = 0
) -> genai_types.GenerateContentResponseUsageMetadata:
    return genai_types.GenerateContentResponseUsageMetadata(
        prompt_token_count=prompt,
        cached_content_token_count=cached or None,
        candidates_token_count=candidates,
        thoughts_token_count=thoughts or None,
        tool_use_prompt_token_count=tool_use or None,
        total_token_count=prompt + tool_use + candidates + thoughts,
    )


# --- exact counts, provider by provider --------------------------------------------------------


def test_openai_chat_completions_cached_tokens_leave_the_input():
    usage = normalize_usage(
        openai_chat_usage(prompt=1200, cached=1000, completion=300, reasoning=256),
        provider="openai",
        model="o4-mini",
    )
    assert kinds(usage) == expected(
        input_tokens=200, cache_read_tokens=1000, output_tokens=300, reasoning_tokens=256
    )
    assert (usage.provider, usage.model) == ("openai", "o4-mini")
    assert usage.prompt_tokens == 1200
    assert usage.total_tokens == 1500


def test_openai_chat_without_details_and_with_nulls():
    dumped = CompletionUsage(prompt_tokens=10, completion_tokens=5, total_tokens=15).model_dump()
    assert dumped["prompt_tokens_details"] is None
    assert kinds(normalize_usage(dumped, provider="openai")) == expected(
        input_tokens=10, output_tokens=5
    )
    sparse = CompletionUsage(
        prompt_tokens=10,
        completion_tokens=5,
        total_tokens=15,
        prompt_tokens_details=PromptTokensDetails(),
        completion_tokens_details=CompletionTokensDetails(),
    ).model_dump()
    assert kinds(normalize_usage(sparse)) == expected(input_tokens=10, output_tokens=5)


def test_openai_chat_cache_write_tokens_leave_the_input_too():
    dumped = CompletionUsage(
        prompt_tokens=1000,
        completion_tokens=10,
        total_tokens=1010,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=300, cache_write_tokens=600),
    ).model_dump()
    assert kinds(normalize_usage(dumped, provider="openai")) == expected(
        input_tokens=100, cache_read_tokens=300, cache_write_tokens=600, output_tokens=10
    )


def test_openai_chat_completion_response_gives_the_model():
    response = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [],
        "usage": openai_chat_usage(prompt=50, cached=0, completion=7, reasoning=0),
    }
    usage = normalize_usage(as_json(response))
    assert (usage.provider, usage.model) == ("openai", "gpt-4o-2024-08-06")
    assert kinds(usage) == expected(input_tokens=50, output_tokens=7)
    assert normalize_usage(response, model="my-deployment").model == "my-deployment"


def test_openai_embeddings_usage_has_no_output():
    usage = normalize_usage({"prompt_tokens": 8, "total_tokens": 8}, model="text-embedding-3-small")
    assert kinds(usage) == expected(input_tokens=8)


def test_openai_responses_api():
    usage = normalize_usage(
        openai_responses_usage(prompt=5000, cached=4096, output=900, reasoning=512, cache_write=4),
        provider="openai",
        model="gpt-5",
    )
    assert kinds(usage) == expected(
        input_tokens=900,
        cache_read_tokens=4096,
        cache_write_tokens=4,
        output_tokens=900,
        reasoning_tokens=512,
    )
    assert usage.prompt_tokens == 5000


def test_openai_responses_object_gives_the_model():
    response = {
        "id": "resp_1",
        "object": "response",
        "model": "gpt-5-mini-2025-08-07",
        "output": [],
        "usage": openai_responses_usage(prompt=100, cached=0, output=20, reasoning=0),
    }
    usage = normalize_usage(as_json(response))
    assert (usage.provider, usage.model) == ("openai", "gpt-5-mini-2025-08-07")
    assert kinds(usage) == expected(input_tokens=100, output_tokens=20)


def test_anthropic_input_tokens_already_exclude_the_cache():
    usage = normalize_usage(
        anthropic_usage(uncached=20, read=1000, write_5m=200, write_1h=300, output=400),
        model="claude-sonnet-4-5",
    )
    assert kinds(usage) == expected(
        input_tokens=20,
        cache_read_tokens=1000,
        cache_write_tokens=500,
        cache_write_1h_tokens=300,
        output_tokens=400,
    )
    assert usage.provider == "anthropic"
    assert usage.prompt_tokens == 1520


def test_anthropic_thinking_tokens_are_part_of_the_output():
    usage = normalize_usage(
        anthropic_usage(uncached=30, read=0, write_5m=0, write_1h=0, output=900, thinking=700)
    )
    assert kinds(usage) == expected(input_tokens=30, output_tokens=900, reasoning_tokens=700)


def test_anthropic_plain_sdk_dump_with_nulls():
    dumped = anthropic_types.Usage(input_tokens=12, output_tokens=34).model_dump()
    assert dumped["cache_creation_input_tokens"] is None
    usage = normalize_usage(dumped)
    assert kinds(usage) == expected(input_tokens=12, output_tokens=34)
    assert usage.provider == "anthropic"


def test_anthropic_cache_creation_without_its_total_is_summed():
    dumped = {
        "input_tokens": 5,
        "output_tokens": 6,
        "cache_read_input_tokens": None,
        "cache_creation": {"ephemeral_5m_input_tokens": 7, "ephemeral_1h_input_tokens": 8},
    }
    assert kinds(normalize_usage(dumped, provider="anthropic")) == expected(
        input_tokens=5, cache_write_tokens=15, cache_write_1h_tokens=8, output_tokens=6
    )


def test_anthropic_message_gives_the_model():
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-opus-4-1-20250805",
        "content": [],
        "usage": anthropic_usage(uncached=3, read=0, write_5m=0, write_1h=0, output=4),
    }
    usage = normalize_usage(as_json(message))
    assert (usage.provider, usage.model) == ("anthropic", "claude-opus-4-1-20250805")


def test_claude_on_vertex_keeps_the_provider_and_reads_anthropic_fields():
    usage = normalize_usage(
        anthropic_usage(uncached=10, read=90, write_5m=0, write_1h=0, output=5),
        provider="vertex_ai",
        model="claude-sonnet-4@20250514",
    )
    assert usage.provider == "google"
    assert kinds(usage) == expected(input_tokens=10, cache_read_tokens=90, output_tokens=5)


@pytest.mark.parametrize("by_alias", [False, True], ids=["snake_case", "camelCase"])
def test_gemini_usage_metadata_thoughts_are_output_beside_candidates(by_alias):
    metadata = gemini_usage_metadata(prompt=1000, cached=600, candidates=200, thoughts=150)
    dumped = metadata.model_dump(by_alias=by_alias, exclude_none=True)
    assert ("promptTokenCount" in dumped) is by_alias
    usage = normalize_usage(as_json(dumped), model="gemini-2.5-pro")
    assert kinds(usage) == expected(
        input_tokens=400, cache_read_tokens=600, output_tokens=350, reasoning_tokens=150
    )
    assert usage.provider == "google"
    assert usage.total_tokens == 1350 == metadata.total_token_count


def test_gemini_tool_use_prompt_tokens_are_uncached_input():
    metadata = gemini_usage_metadata(prompt=100, cached=40, candidates=10, thoughts=0, tool_use=25)
    usage = normalize_usage(metadata.model_dump(by_alias=True, exclude_none=True))
    assert kinds(usage) == expected(input_tokens=85, cache_read_tokens=40, output_tokens=10)
    assert usage.total_tokens == metadata.total_token_count


@pytest.mark.parametrize("by_alias", [False, True], ids=["snake_case", "camelCase"])
def test_gemini_response_gives_the_model(by_alias):
    response = genai_types.GenerateContentResponse(
        model_version="gemini-2.5-flash",
        response_id="r1",
        usage_metadata=gemini_usage_metadata(prompt=70, cached=0, candidates=9, thoughts=21),
    ).model_dump(by_alias=by_alias, exclude_none=True)
    usage = normalize_usage(as_json(response))
    assert (usage.provider, usage.model) == ("google", "gemini-2.5-flash")
    assert kinds(usage) == expected(input_tokens=70, output_tokens=30, reasoning_tokens=21)
    assert normalize_usage(response, model="gemini-pro-latest").model == "gemini-pro-latest"


def test_gemini_mixed_case_is_refused():
    with pytest.raises(UsageNotUnderstood) as refused:
        normalize_usage({"promptTokenCount": 5, "candidates_token_count": 3})
    assert refused.value.param == "properties.usage"


def test_bedrock_converse():
    usage = normalize_usage(
        {
            "inputTokens": 12,
            "outputTokens": 30,
            "cacheReadInputTokens": 400,
            "cacheWriteInputTokens": 50,
            "totalTokens": 492,
        },
        provider="bedrock",
        model="anthropic.claude-3-5-haiku-20241022-v1:0",
    )
    assert usage.provider == "aws"
    assert kinds(usage) == expected(
        input_tokens=12, cache_read_tokens=400, cache_write_tokens=50, output_tokens=30
    )


def test_xai_reasoning_is_beside_completion_tokens():
    # xAI's own example: total = prompt + completion + reasoning.
    xai = {
        "prompt_tokens": 19,
        "completion_tokens": 1,
        "total_tokens": 320,
        "prompt_tokens_details": {"cached_tokens": 6},
        "completion_tokens_details": {"reasoning_tokens": 300},
    }
    usage = normalize_usage(xai, provider="xai", model="grok-3-mini")
    assert usage.provider == "x-ai"
    assert kinds(usage) == expected(
        input_tokens=13, cache_read_tokens=6, output_tokens=301, reasoning_tokens=300
    )
    assert normalize_usage(xai, model="grok-3-mini").output_tokens == 301  # inferred x-ai


def test_xai_reasoning_already_inside_per_total_is_not_added_again():
    via_gateway = {
        "prompt_tokens": 19,
        "completion_tokens": 301,
        "total_tokens": 320,
        "completion_tokens_details": {"reasoning_tokens": 300},
    }
    usage = normalize_usage(via_gateway, model="x-ai/grok-3-mini")
    assert usage.provider == "x-ai"
    assert kinds(usage) == expected(input_tokens=19, output_tokens=301, reasoning_tokens=300)


@pytest.mark.parametrize(
    ("provider", "provider_id"),
    [
        ("azure", "azure"),
        ("groq", "groq"),
        ("deepseek", "deepseek"),
        ("mistral", "mistral"),
        ("together", "together"),
        ("together_ai", "together"),
        ("fireworks", "fireworks"),
        ("openrouter", "openrouter"),
        ("OpenAI", "openai"),
        ("vllm", "vllm"),
    ],
)
def test_openai_compatible_providers(provider, provider_id):
    usage = normalize_usage(
        openai_chat_usage(prompt=100, cached=60, completion=20, reasoning=5), provider=provider
    )
    assert usage.provider == provider_id
    assert kinds(usage) == expected(
        input_tokens=40, cache_read_tokens=60, output_tokens=20, reasoning_tokens=5
    )


def test_databricks_top_level_cache_and_reasoning():
    usage = normalize_usage(
        {
            "prompt_tokens": 100,
            "completion_tokens": 50,
            "total_tokens": 150,
            "cache_read_input_tokens": 30,
            "reasoning_tokens": 20,
        },
        provider="databricks",
    )
    assert kinds(usage) == expected(
        input_tokens=70, cache_read_tokens=30, output_tokens=50, reasoning_tokens=20
    )


# --- our own names, and telling the input_tokens dialects apart ------------------------------


def test_own_names_and_round_trip():
    usage = normalize_usage(
        {
            "input_tokens": 10,
            "cache_read_tokens": 20,
            "cache_write_tokens": 30,
            "cache_write_1h_tokens": 5,
            "output_tokens": 40,
            "reasoning_tokens": 15,
        },
        provider="anthropic",
        model="claude-haiku-4-5",
    )
    assert kinds(usage) == expected(10, 20, 30, 5, 40, 15)
    assert usage.as_dict() == {
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        **expected(10, 20, 30, 5, 40, 15),
        "prompt_tokens": 60,
        "total_tokens": 100,
    }
    again = normalize_usage(as_json(usage.as_dict()))
    assert again == usage


def test_own_names_without_provider_or_model_have_no_provider():
    usage = normalize_usage({"input_tokens": 1, "output_tokens": 2, "cache_read_tokens": 3})
    assert (usage.provider, usage.model) == ("", "")
    assert kinds(usage) == expected(input_tokens=1, cache_read_tokens=3, output_tokens=2)


def test_own_names_with_an_inclusive_prompt_total_are_refused():
    # input_tokens counted OpenAI's way (cache included) is caught by the stated prompt_tokens.
    with pytest.raises(UsageNotUnderstood) as refused:
        normalize_usage(
            {"input_tokens": 100, "cache_read_tokens": 60, "output_tokens": 5, "prompt_tokens": 100}
        )
    assert refused.value.param == "properties.usage.prompt_tokens"


@pytest.mark.parametrize("provider", [None, "openai", "anthropic", "mistral"])
def test_bare_input_and_output_read_the_same_in_every_dialect(provider):
    usage = normalize_usage({"input_tokens": 11, "output_tokens": 22}, provider=provider)
    assert kinds(usage) == expected(input_tokens=11, output_tokens=22)


def test_a_responses_usage_is_never_read_with_our_names():
    dumped = openai_responses_usage(prompt=1000, cached=800, output=10, reasoning=0)
    assert kinds(normalize_usage(dumped, provider="mistral")) == expected(
        input_tokens=200, cache_read_tokens=800, output_tokens=10
    )
    with pytest.raises(UsageNotUnderstood) as refused:
        normalize_usage({**dumped, "cache_read_tokens": 800})
    assert refused.value.param == "properties.usage"


def test_anthropic_and_responses_markers_together_are_refused():
    dumped = openai_responses_usage(prompt=10, cached=0, output=1, reasoning=0)
    with pytest.raises(UsageNotUnderstood):
        normalize_usage({**dumped, "cache_read_input_tokens": 0})


# --- providers and models ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider_id"),
    [
        ("gpt-4.1-mini", "openai"),
        ("o3-2025-04-16", "openai"),
        ("claude-3-7-sonnet-latest", "anthropic"),
        ("anthropic/claude-sonnet-4", "anthropic"),
        ("models/gemini-2.0-flash", "google"),
        ("grok-4", "x-ai"),
        ("deepseek-reasoner", "deepseek"),
        ("mistral-large-latest", "mistral"),
        ("openai/o4-mini", "openai"),
    ],
)
def test_provider_inferred_from_the_model(model, provider_id):
    usage = normalize_usage({"prompt_tokens": 1, "completion_tokens": 1}, model=model)
    assert usage.provider == provider_id


@pytest.mark.parametrize(
    ("usage", "provider_id"),
    [
        ({"prompt_tokens": 1, "completion_tokens": 1}, "openai"),
        ({"input_tokens": 1, "output_tokens": 1, "input_tokens_details": None}, "openai"),
        ({"input_tokens": 1, "output_tokens": 1, "cache_read_input_tokens": 0}, "anthropic"),
        ({"promptTokenCount": 1}, "google"),
        ({"inputTokens": 1, "outputTokens": 1}, "aws"),
        ({"input_tokens": 1, "output_tokens": 1}, ""),
    ],
)
def test_provider_inferred_from_the_shape(usage, provider_id):
    assert normalize_usage(usage, model="llama-3.3-70b").provider == provider_id


@pytest.mark.parametrize("provider", ["acme-llm", "not a provider", 42])
def test_unknown_provider(provider):
    with pytest.raises(UnknownProvider) as refused:
        normalize_usage({"prompt_tokens": 1, "completion_tokens": 1}, provider=provider)
    assert refused.value.param == "properties.provider"
    assert refused.value.code == "unknown_provider"


def test_model_must_be_a_string():
    with pytest.raises(InvalidEvent) as refused:
        normalize_usage({"prompt_tokens": 1}, model=7)  # type: ignore[arg-type]
    assert refused.value.param == "properties.model"


# --- counts ---------------------------------------------------------------------------------


def test_integral_decimals_are_counts():
    usage = normalize_usage(
        {
            "prompt_tokens": Decimal("1000"),
            "completion_tokens": Decimal("2E+2"),
            "prompt_tokens_details": {"cached_tokens": Decimal("100.000")},
            "completion_tokens_details": {"reasoning_tokens": Decimal("-0")},
        }
    )
    assert kinds(usage) == expected(input_tokens=900, cache_read_tokens=100, output_tokens=200)
    assert all(type(value) is int for value in kinds(usage).values())
    parsed = as_json({"prompt_tokens": 5, "completion_tokens": 6.0})
    assert normalize_usage(parsed).output_tokens == 6


@pytest.mark.parametrize(
    "bad",
    [
        -1,
        Decimal("-3"),
        Decimal("1.5"),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("1E+999999"),
        MAX_COUNT + 1,
        2.0,
        True,
        False,
        "12",
        [],
        {},
    ],
    ids=repr,
)
@pytest.mark.parametrize(
    ("template", "param"),
    [
        ({"prompt_tokens": "X", "completion_tokens": 1}, "properties.usage.prompt_tokens"),
        (
            {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": "X"}},
            "properties.usage.prompt_tokens_details.cached_tokens",
        ),
        (
            {"model": "claude-x", "usage": {"input_tokens": 1, "output_tokens": "X"}},
            "properties.usage.usage.output_tokens",
        ),
        (
            {"input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": "X"},
            "properties.usage.cache_creation_input_tokens",
        ),
        (
            {"usageMetadata": {"promptTokenCount": 5, "thoughtsTokenCount": "X"}},
            "properties.usage.usageMetadata.thoughtsTokenCount",
        ),
        ({"prompt_token_count": "X"}, "properties.usage.prompt_token_count"),
        (
            {"input_tokens": 1, "output_tokens": 1, "cache_write_tokens": "X"},
            "properties.usage.cache_write_tokens",
        ),
    ],
)
def test_counts_that_are_not_whole_non_negative_numbers_are_refused(bad, template, param):
    usage = copy.deepcopy(template)
    *parents, key = param.removeprefix("properties.usage.").split(".")
    target = usage
    for parent in parents:
        target = target[parent]
    target[key] = bad
    with pytest.raises(UsageNotUnderstood) as refused:
        normalize_usage(usage)
    assert refused.value.param == param
    assert refused.value.code == "invalid_usage"


@pytest.mark.parametrize(
    ("usage", "param"),
    [
        ({"completion_tokens": 5}, "properties.usage.prompt_tokens"),
        ({"prompt_tokens": None, "completion_tokens": 5}, "properties.usage.prompt_tokens"),
        ({"input_tokens": 5}, "properties.usage.output_tokens"),
        ({"cache_read_tokens": 5}, "properties.usage.input_tokens"),
        ({"candidatesTokenCount": 5}, "properties.usage.promptTokenCount"),
        # a streaming message_delta: cumulative output only, not a whole call
        (
            anthropic_types.MessageDeltaUsage(output_tokens=15).model_dump(),
            "properties.usage.input_tokens",
        ),
    ],
)
def test_missing_required_counts_are_refused(usage, param):
    with pytest.raises(UsageNotUnderstood) as refused:
        normalize_usage(usage)
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("usage", "param"),
    [
        (
            openai_chat_usage(prompt=10, cached=11, completion=1, reasoning=0),
            "properties.usage.prompt_tokens_details.cached_tokens",
        ),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 6},
            },
            "properties.usage.prompt_tokens_details.cache_write_tokens",
        ),
        (
            {"prompt_tokens": 10, "completion_tokens": 1, "cached_tokens": 11},
            "properties.usage.cached_tokens",
        ),
        (
            openai_chat_usage(prompt=10, cached=0, completion=5, reasoning=6),
            "properties.usage.completion_tokens_details.reasoning_tokens",
        ),
        (
            openai_responses_usage(prompt=10, cached=11, output=1, reasoning=0),
            "properties.usage.input_tokens_details.cached_tokens",
        ),
        (
            openai_responses_usage(prompt=10, cached=0, output=5, reasoning=6),
            "properties.usage.output_tokens_details.reasoning_tokens",
        ),
        (
            anthropic_usage(uncached=1, read=0, write_5m=0, write_1h=0, output=5, thinking=6),
            "properties.usage.output_tokens_details.thinking_tokens",
        ),
        (
            {
                "input_tokens": 1,
                "output_tokens": 1,
                "cache_creation_input_tokens": 4,
                "cache_creation": {"ephemeral_5m_input_tokens": 2, "ephemeral_1h_input_tokens": 3},
            },
            "properties.usage.cache_creation",
        ),
        (
            {"usageMetadata": {"promptTokenCount": 10, "cachedContentTokenCount": 11}},
            "properties.usage.usageMetadata.cachedContentTokenCount",
        ),
        (
            {"input_tokens": 1, "output_tokens": 5, "reasoning_tokens": 6},
            "properties.usage.reasoning_tokens",
        ),
        (
            {
                "input_tokens": 1,
                "output_tokens": 1,
                "cache_write_tokens": 2,
                "cache_write_1h_tokens": 3,
            },
            "properties.usage.cache_write_1h_tokens",
        ),
        (
            {"input_tokens": 1, "output_tokens": 1, "total_tokens": 3},
            "properties.usage.total_tokens",
        ),
    ],
)
def test_parts_larger_than_their_whole_are_refused(usage, param):
    with pytest.raises(UsageNotUnderstood) as refused:
        normalize_usage(usage)
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("usage", "param"),
    [
        (None, "properties.usage"),
        ([{"prompt_tokens": 1}], "properties.usage"),
        ("{}", "properties.usage"),
        (12, "properties.usage"),
        ({}, "properties.usage"),
        ({"tokens": 12}, "properties.usage"),
        ({"model": "gpt-4o", "usage": None}, "properties.usage.usage"),
        ({"usageMetadata": [1]}, "properties.usage.usageMetadata"),
        (
            {"prompt_tokens": 1, "prompt_tokens_details": [3]},
            "properties.usage.prompt_tokens_details",
        ),
        (
            {"input_tokens": 1, "output_tokens": 1, "cache_creation": 5},
            "properties.usage.cache_creation",
        ),
    ],
)
def test_usage_that_is_not_an_object_of_counts_is_refused(usage, param):
    with pytest.raises(UsageNotUnderstood) as refused:
        normalize_usage(usage)
    assert refused.value.param == param


def test_normalized_usage_is_frozen():
    usage = normalize_usage({"input_tokens": 1, "output_tokens": 2})
    with pytest.raises(AttributeError):
        usage.output_tokens = 3  # type: ignore[misc]


# --- agreement with genai-prices ---------------------------------------------------------------


def genai_prices_kinds(response: dict, *, provider_id: str, api_flavor: str) -> dict[str, int]:
    """genai-prices' extraction in our kinds: its input_tokens is the whole prompt."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extracted = genai_prices.extract_usage(
            response, provider_id=provider_id, api_flavor=api_flavor
        ).usage
    value = extracted.reported_value
    cache_write = value("cache_write_tokens") or (
        value("cache_write_5m_tokens") + value("cache_write_1h_tokens")
    )
    return expected(
        input_tokens=value("input_tokens") - value("cache_read_tokens") - cache_write,
        cache_read_tokens=value("cache_read_tokens"),
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=value("cache_write_1h_tokens"),
        output_tokens=value("output_tokens"),
        reasoning_tokens=value("output_reasoning_tokens"),
    )


counts = st.integers(min_value=0, max_value=2_000_000)


@st.composite
def prompt_split(draw: st.DrawFn) -> tuple[int, int, int]:
    """(whole prompt, cache read, cache write) with reads and writes inside the prompt."""
    prompt = draw(counts)
    read = draw(st.integers(0, prompt))
    write = draw(st.integers(0, prompt - read))
    return prompt, read, write


@st.composite
def output_split(draw: st.DrawFn) -> tuple[int, int]:
    output = draw(counts)
    return output, draw(st.integers(0, output))


@settings(max_examples=60, deadline=None)
@given(
    prompt=prompt_split(),
    output=output_split(),
    provider_and_flavor=st.sampled_from(
        [
            ("openai", "chat"),
            ("azure", "chat"),
            ("groq", "default"),
            ("deepseek", "chat"),
            ("mistral", "default"),
            ("fireworks", "chat"),
            ("openrouter", "chat"),
            ("x-ai", "chat"),
        ]
    ),
)
def test_chat_completions_agree_with_genai_prices(prompt, output, provider_and_flavor):
    provider, flavor = provider_and_flavor
    (whole, read, write), (completion, reasoning) = prompt, output
    dumped = CompletionUsage(
        prompt_tokens=whole,
        completion_tokens=completion,
        total_tokens=whole + completion + (reasoning if provider == "x-ai" else 0),
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=read, cache_write_tokens=write if provider in ("openai", "azure") else 0
        ),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning),
    ).model_dump()
    ours = kinds(normalize_usage(as_json(dumped), provider=provider))
    assert ours == genai_prices_kinds({"usage": dumped}, provider_id=provider, api_flavor=flavor)


@settings(max_examples=40, deadline=None)
@given(prompt=prompt_split(), output=output_split())
def test_responses_agree_with_genai_prices(prompt, output):
    (whole, read, write), (out, reasoning) = prompt, output
    dumped = openai_responses_usage(whole, read, out, reasoning, cache_write=write)
    ours = kinds(normalize_usage(as_json(dumped), provider="openai"))
    assert ours == genai_prices_kinds(
        {"usage": dumped}, provider_id="openai", api_flavor="responses"
    )


@settings(max_examples=40, deadline=None)
@given(
    uncached=counts,
    read=counts,
    write_5m=counts,
    write_1h=counts,
    output=output_split(),
    thinking_reported=st.booleans(),
)
def test_anthropic_agrees_with_genai_prices(
    uncached, read, write_5m, write_1h, output, thinking_reported
):
    out, thinking = output
    dumped = anthropic_usage(
        uncached, read, write_5m, write_1h, out, thinking if thinking_reported else None
    )
    ours = kinds(normalize_usage(as_json(dumped), provider="anthropic"))
    assert ours == genai_prices_kinds(
        {"usage": dumped}, provider_id="anthropic", api_flavor="default"
    )


@settings(max_examples=40, deadline=None)
@given(
    prompt=counts,
    cached_share=st.integers(0, 100),
    candidates=counts,
    thoughts=counts,
    tool_use=counts,
    by_alias=st.booleans(),
)
def test_gemini_agrees_with_genai_prices(
    prompt, cached_share, candidates, thoughts, tool_use, by_alias
):
    metadata = gemini_usage_metadata(
        prompt, prompt * cached_share // 100, candidates, thoughts, tool_use
    )
    ours = kinds(
        normalize_usage(as_json(metadata.model_dump(by_alias=by_alias, exclude_none=True)))
    )
    # genai-prices reads the REST API's camelCase only.
    camel = {"usageMetadata": metadata.model_dump(by_alias=True, exclude_none=True)}
    assert ours == genai_prices_kinds(camel, provider_id="google", api_flavor="default")


@settings(max_examples=30, deadline=None)
@given(uncached=counts, read=counts, write=counts, output=counts)
def test_bedrock_converse_agrees_with_genai_prices(uncached, read, write, output):
    converse = {
        "inputTokens": uncached,
        "outputTokens": output,
        "cacheReadInputTokens": read,
        "cacheWriteInputTokens": write,
        "totalTokens": uncached + read + write + output,
    }
    ours = kinds(normalize_usage(as_json(converse), provider="aws"))
    assert ours == genai_prices_kinds({"usage": converse}, provider_id="aws", api_flavor="default")


@settings(max_examples=40, deadline=None)
@given(
    kinds_in=st.tuples(counts, counts, counts, counts, output_split()),
    model=st.sampled_from(["", "gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro"]),
)
def test_own_names_round_trip(kinds_in, model):
    uncached, read, write, write_1h_share, (output, reasoning) = kinds_in
    original = NormalizedUsage(
        provider="",
        model=model,
        input_tokens=uncached,
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=min(write_1h_share, write),
        output_tokens=output,
        reasoning_tokens=reasoning,
    )
    again = normalize_usage(as_json(original.as_dict()))
    assert kinds(again) == kinds(original)
    assert again.model == model
