"""Read an LLM provider's ``usage`` object as five token kinds.

A product backend copies the ``usage`` object (or the whole response) from its LLM
provider's reply into ``properties.usage``. ``normalize_usage`` turns it into a
``NormalizedUsage``, one shape for every provider:

    input_tokens           prompt tokens neither read from nor written to a cache
    cache_read_tokens      prompt tokens read from a cache
    cache_write_tokens     prompt tokens written to a cache (any TTL)
    cache_write_1h_tokens  the part of cache_write_tokens written with a 1-hour TTL
    output_tokens          all output tokens, reasoning/thinking included
    reasoning_tokens       the part of output_tokens spent reasoning

``prompt_tokens`` (= input + cache read + cache write) is the whole prompt and
``total_tokens`` (= prompt + output) everything the call used.

How each provider's fields are counted
======================================

The mapping agrees with ``genai_prices.extract_usage`` for the same objects (the tests
check it); where genai-prices' ``input_tokens`` is the whole prompt, ours is the whole
prompt less cache reads and writes. A missing or ``null`` optional field counts 0.

OpenAI Chat Completions, and every OpenAI-compatible API (Azure, Groq, DeepSeek, xAI,
Mistral, Together, Fireworks, OpenRouter, ...)::

    prompt_tokens (required)                    whole prompt, cache reads and writes included
    prompt_tokens_details.cached_tokens         -> cache_read_tokens
    prompt_tokens_details.cache_write_tokens    -> cache_write_tokens
    prompt_tokens - cached - cache_write        -> input_tokens
    completion_tokens (0 if absent: embeddings) -> output_tokens (reasoning included)
    completion_tokens_details.reasoning_tokens  -> reasoning_tokens

  When ``prompt_tokens_details.cached_tokens`` is absent, a top-level ``cached_tokens``,
  ``cache_read_input_tokens`` (Databricks) or ``cached_prompt_text_tokens`` (xAI) is read
  instead; when ``completion_tokens_details.reasoning_tokens`` is absent, a top-level
  ``reasoning_tokens`` (Databricks, Modal, xAI, Perplexity).
  xAI and Perplexity leave reasoning out of ``completion_tokens`` (xAI's ``total_tokens``
  is prompt + completion + reasoning), so for provider ``x-ai`` and ``perplexity``
  output = completion + reasoning (+ Perplexity's ``citation_tokens``), as genai-prices
  counts them; unless ``total_tokens`` equals prompt + completion, which says the
  reasoning is already inside (a gateway that re-counted it), and then nothing is added.

OpenAI Responses API::

    input_tokens (required)                     whole prompt, cache reads and writes included
    input_tokens_details.cached_tokens          -> cache_read_tokens
    input_tokens_details.cache_write_tokens     -> cache_write_tokens
    input_tokens - cached - cache_write         -> input_tokens
    output_tokens (required)                    -> output_tokens (reasoning included)
    output_tokens_details.reasoning_tokens      -> reasoning_tokens

  (``cache_write_tokens_details`` by OpenAI TTL is not split out: cache_write_1h_tokens is
  Anthropic's 1-hour TTL only.)

Anthropic Messages (also Claude on Bedrock, Vertex AI and Azure)::

    input_tokens (required)                     -> input_tokens (already excludes cache)
    cache_read_input_tokens                     -> cache_read_tokens
    cache_creation_input_tokens                 -> cache_write_tokens
      (absent: cache_creation.ephemeral_5m_input_tokens + ephemeral_1h_input_tokens)
    cache_creation.ephemeral_1h_input_tokens    -> cache_write_1h_tokens
    output_tokens (required)                    -> output_tokens (thinking included)
    output_tokens_details.thinking_tokens       -> reasoning_tokens

Google Gemini ``usageMetadata``, camelCase as the REST API sends it or snake_case as the
google-genai SDK's ``model_dump()`` gives it (``prompt_token_count``, ...)::

    promptTokenCount (required)                 prompt, cached content included
    toolUsePromptTokenCount                     added to the prompt (see below)
    cachedContentTokenCount                     -> cache_read_tokens
    promptTokenCount + toolUsePromptTokenCount
      - cachedContentTokenCount                 -> input_tokens
    candidatesTokenCount + thoughtsTokenCount   -> output_tokens
    thoughtsTokenCount                          -> reasoning_tokens
    (cache_write_tokens is 0: Gemini bills cache storage by time, not writes)

  Gemini reports thoughts beside the candidates, not inside them, and bills them as
  output; ``totalTokenCount`` = prompt + tool-use prompt + candidates + thoughts. Tool-use
  prompt tokens (the results of Google Search, code execution, ... fed back to the model)
  are likewise reported beside ``promptTokenCount`` and billed as input, so they are
  uncached input here, exactly as genai-prices adds them to its input.

Amazon Bedrock Converse (provider ``aws``)::

    inputTokens (required)                      -> input_tokens (already excludes cache)
    cacheReadInputTokens                        -> cache_read_tokens
    cacheWriteInputTokens                       -> cache_write_tokens
    outputTokens (required)                     -> output_tokens

Our own field names (an already normalised object, e.g. ``NormalizedUsage.as_dict()``)::

    input_tokens, output_tokens (required), cache_read_tokens, cache_write_tokens,
    cache_write_1h_tokens, reasoning_tokens; ``input_tokens`` excludes the cache here.
    ``prompt_tokens`` and ``total_tokens``, when present, must agree with them.

Audio, image and other modality breakdowns are counted inside input and output; they
are not split out.

Which reading applies
=====================

The keys decide, never the provider name alone, because the same API shape is served
by many providers (Claude on Vertex sends Anthropic's shape with provider ``google``):

1. ``usageMetadata`` / ``usage_metadata`` or ``usage`` at the top: a whole response.
   The counts are read from inside it and the model, unless given, from its
   ``modelVersion`` / ``model_version`` or ``model``.
2. ``input_tokens`` or ``output_tokens``: the input-tokens family, told apart by marker
   keys that only one dialect uses:
   ``input_tokens_details`` → OpenAI Responses (the API and the SDK always send it);
   ``cache_creation_input_tokens``, ``cache_read_input_tokens``, ``cache_creation`` or
   ``server_tool_use`` → Anthropic (the API always sends the cache fields);
   ``cache_read_tokens``, ``cache_write_tokens``, ``cache_write_1h_tokens`` or a
   top-level ``reasoning_tokens`` → our own names. Markers of two dialects are refused
   as ambiguous, so a Responses object is never read with our rules or Anthropic's.
   With no marker at all the three dialects read ``{input_tokens, output_tokens}`` the
   same way (nothing cached), so the answer does not depend on the guess.
3. ``prompt_tokens`` or ``completion_tokens``: OpenAI Chat Completions (and compatible).
4. Gemini's count keys, camelCase or snake_case (not both).
5. ``inputTokens`` / ``outputTokens``: Bedrock Converse.
Anything else is refused (our own names without ``input_tokens`` included).

The provider, when given, is resolved to its genai-prices id ("Google", "vertex_ai" →
``google``; "bedrock" → ``aws``); a few OpenAI-compatible servers genai-prices does not
list (``OPENAI_COMPATIBLE``) are kept by name. When not given it is inferred from the
model name as genai-prices does (``claude`` → anthropic, ``gpt-`` → openai, ``gemini`` →
google, ``grok`` → x-ai, ...; a ``vendor/model`` prefix naming a provider also counts),
then from the shape (Gemini → google, Anthropic markers → anthropic, Chat Completions or
Responses → openai, Converse → aws), else it is ``""``.

Every count must be a non-negative whole number: an ``int`` or an integral ``Decimal``
(the JSON parser reads numbers with ``parse_float=Decimal``). Floats, fractions, negative
numbers, booleans and strings are refused, as are cache reads and writes larger than the
prompt, reasoning larger than the output and 1-hour writes larger than all writes.
Refusals raise ``UsageNotUnderstood`` naming the offending field
(``properties.usage.prompt_tokens``). This runs for every ingested event, so it reads
the dicts directly rather than through genai-prices' generic extractors (several times
slower).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from genai_prices import data_snapshot

from billing.meters import LLM_FIELDS
from metering.errors import InvalidEvent, UnknownProvider, UsageNotUnderstood

__all__ = ["OPENAI_COMPATIBLE", "NormalizedUsage", "normalize_usage"]

USAGE_PARAM = "properties.usage"
PROVIDER_PARAM = "properties.provider"
MODEL_PARAM = "properties.model"

# No single call comes near this; it keeps sums far inside PostgreSQL's bigint and refuses
# a Decimal such as 1E+999999 before int() is asked to build it.
MAX_COUNT = 10**15

# OpenAI-compatible servers that genai-prices does not list: accepted as a provider and
# kept by name (``litellm`` takes the provider from a ``vendor/model`` prefix when it can).
OPENAI_COMPATIBLE = frozenset({"openai-compatible", "litellm", "vllm", "ollama", "lmstudio"})

# Providers whose Chat Completions usage leaves reasoning out of completion_tokens.
_REASONING_BESIDE_COMPLETION = frozenset({"x-ai", "perplexity"})

_ANTHROPIC_MARKERS = frozenset(
    {"cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation", "server_tool_use"}
)
_OWN_MARKERS = frozenset(
    {"cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens"}
)
_GEMINI_CAMEL = (
    "promptTokenCount",
    "candidatesTokenCount",
    "cachedContentTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
    "totalTokenCount",
)
_GEMINI_SNAKE = (
    "prompt_token_count",
    "candidates_token_count",
    "cached_content_token_count",
    "thoughts_token_count",
    "tool_use_prompt_token_count",
    "total_token_count",
)
_GEMINI_CAMEL_KEYS = frozenset(_GEMINI_CAMEL)
_GEMINI_SNAKE_KEYS = frozenset(_GEMINI_SNAKE)

# Every count the readers below take: a key one or two letters away from one of these is
# almost surely a typo of it (``completion_tokns``), and read as it is it would count 0 —
# charged as free. Such a key is refused, naming the field it resembles.
_READ_NAMES = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "cache_read_input_tokens",
        "cached_prompt_text_tokens",
        "citation_tokens",
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "ephemeral_5m_input_tokens",
        "ephemeral_1h_input_tokens",
        "thinking_tokens",
        "inputTokens",
        "outputTokens",
        "cacheReadInputTokens",
        "cacheWriteInputTokens",
        "cache_read_tokens",
        "cache_write_1h_tokens",
        *_GEMINI_CAMEL,
        *_GEMINI_SNAKE,
    }
)
# Fields the providers document beside those (not counted here, or objects holding counts):
# never mistaken for a typo, however close to a counted name.
_OTHER_NAMES = frozenset(
    {
        "total_tokens",
        "totalTokens",
        "prompt_tokens_details",
        "completion_tokens_details",
        "input_tokens_details",
        "output_tokens_details",
        "cache_creation",
        "cache_write_tokens_details",
        "audio_tokens",
        "text_tokens",
        "image_tokens",
        "accepted_prediction_tokens",
        "rejected_prediction_tokens",
        "server_tool_use",
        "web_search_requests",
        "web_fetch_requests",
        "service_tier",
        "num_sources_used",
        "cacheReadInputTokenCount",
        "cacheWriteInputTokenCount",
        "promptTokensDetails",
        "candidatesTokensDetails",
        "cacheTokensDetails",
        "toolUsePromptTokensDetails",
        "candidates_tokens_details",
        "cache_tokens_details",
        "tool_use_prompt_tokens_details",
        "trafficType",
        "traffic_type",
    }
)
_KNOWN_NAMES = _READ_NAMES | _OTHER_NAMES


@dataclass(frozen=True, slots=True)
class NormalizedUsage:
    provider: str
    model: str
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cache_write_1h_tokens: int
    output_tokens: int
    reasoning_tokens: int

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt: uncached input, cache reads and cache writes."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def as_dict(self) -> dict[str, int | str]:
        return {name: getattr(self, name) for name in LLM_FIELDS}


def normalize_usage(
    usage: Any, *, provider: str | None = None, model: str | None = None
) -> NormalizedUsage:
    """Read ``usage`` (a provider's usage object or whole response, JSON-decoded) as token
    kinds. Raises ``UsageNotUnderstood``, ``UnknownProvider`` or ``InvalidEvent`` (model)."""
    if not isinstance(usage, Mapping):
        raise UsageNotUnderstood(
            f"usage must be an object, not {_type_name(usage)}", param=USAGE_PARAM
        )

    # 1. A whole response: read the counts inside it, and the model beside them.
    counts: Mapping[str, Any] = usage
    where = USAGE_PARAM
    found_model: Any = None
    if "usageMetadata" in usage or "usage_metadata" in usage:
        key = "usageMetadata" if "usageMetadata" in usage else "usage_metadata"
        counts = usage[key]
        where = f"{USAGE_PARAM}.{key}"
        found_model = usage.get("modelVersion") or usage.get("model_version")
    elif "usage" in usage:
        counts = usage["usage"]
        where = f"{USAGE_PARAM}.usage"
        found_model = usage.get("model")
    else:
        found_model = usage.get("model")
    if not isinstance(counts, Mapping):
        raise UsageNotUnderstood(
            f"{where} must be an object with token counts, not {_type_name(counts)}",
            param=where,
        )

    if model is None or model == "":
        model = found_model if isinstance(found_model, str) else ""
    elif not isinstance(model, str):
        raise InvalidEvent(f"model must be a string, not {_type_name(model)}", param=MODEL_PARAM)

    provider_id = _provider_from_name(provider, model) if provider else _provider_for_model(model)
    _refuse_near_misses(counts, where)

    # 2.-5. Which dialect the counts are in: decided by the keys (see the module docstring).
    if "input_tokens" in counts or "output_tokens" in counts:
        kinds, shape_provider = _read_input_family(counts, where)
    elif "prompt_tokens" in counts or "completion_tokens" in counts:
        kinds = _read_chat_completions(counts, where, provider_id)
        shape_provider = "openai"
    elif not _GEMINI_CAMEL_KEYS.isdisjoint(counts):
        if not _GEMINI_SNAKE_KEYS.isdisjoint(counts):
            raise UsageNotUnderstood(
                f"{where} mixes camelCase and snake_case Gemini counts", param=where
            )
        kinds = _read_gemini(counts, where, _GEMINI_CAMEL)
        shape_provider = "google"
    elif not _GEMINI_SNAKE_KEYS.isdisjoint(counts):
        kinds = _read_gemini(counts, where, _GEMINI_SNAKE)
        shape_provider = "google"
    elif "inputTokens" in counts or "outputTokens" in counts:
        kinds = _read_bedrock_converse(counts, where)
        shape_provider = "aws"
    elif not _OWN_MARKERS.isdisjoint(counts):
        kinds, shape_provider = _read_input_family(counts, where)  # refused: no input_tokens
    else:
        raise UsageNotUnderstood(
            f"{where} has no token counts in a known provider's format "
            "(OpenAI, Anthropic, Gemini, Bedrock Converse or our own names)",
            param=where,
        )
    return NormalizedUsage(provider_id or shape_provider, model, *kinds)


# --- the dialects ------------------------------------------------------------------------
# Each returns (input, cache_read, cache_write, cache_write_1h, output, reasoning).

_Kinds = tuple[int, int, int, int, int, int]


def _read_input_family(u: Mapping[str, Any], where: str) -> tuple[_Kinds, str]:
    anthropic = not _ANTHROPIC_MARKERS.isdisjoint(u)
    responses = "input_tokens_details" in u
    own = not _OWN_MARKERS.isdisjoint(u)
    if anthropic + responses + own > 1 or (own and "output_tokens_details" in u):
        raise UsageNotUnderstood(
            f"{where} mixes fields of different formats (OpenAI Responses "
            "input_tokens_details, Anthropic cache_*_input_tokens, our cache_*_tokens)",
            param=where,
        )
    if responses:
        return _read_responses(u, where), "openai"
    if anthropic:
        return _read_anthropic(u, where), "anthropic"
    return _read_own(u, where), ""


def _read_chat_completions(u: Mapping[str, Any], where: str, provider_id: str | None) -> _Kinds:
    prompt = _required(u, "prompt_tokens", where)
    output = _optional(u, "completion_tokens", where)

    cached: int | None = None
    cache_write = 0
    cached_param = cache_write_param = f"{where}.prompt_tokens_details"
    prompt_details = _object(u, "prompt_tokens_details", where)
    if prompt_details is not None:
        details_where = f"{where}.prompt_tokens_details"
        cached_param = f"{details_where}.cached_tokens"
        cache_write_param = f"{details_where}.cache_write_tokens"
        cache_write = _optional(prompt_details, "cache_write_tokens", details_where)
        if prompt_details.get("cached_tokens") is not None:
            cached = _count(prompt_details["cached_tokens"], details_where, "cached_tokens")
    if cached is None:
        cached = 0
        for key in ("cached_tokens", "cache_read_input_tokens", "cached_prompt_text_tokens"):
            if u.get(key) is not None:
                cached = _count(u[key], where, key)
                cached_param = f"{where}.{key}"
                break

    completion_details = _object(u, "completion_tokens_details", where)
    if completion_details is not None and completion_details.get("reasoning_tokens") is not None:
        reasoning_param = f"{where}.completion_tokens_details.reasoning_tokens"
        reasoning = _count(
            completion_details["reasoning_tokens"],
            f"{where}.completion_tokens_details",
            "reasoning_tokens",
        )
    else:
        reasoning_param = f"{where}.reasoning_tokens"
        reasoning = _optional(u, "reasoning_tokens", where)

    if provider_id in _REASONING_BESIDE_COMPLETION:
        beside = reasoning
        if provider_id == "perplexity":
            beside += _optional(u, "citation_tokens", where)
        total = u.get("total_tokens")
        if beside and total is not None and _count(total, where, "total_tokens") == prompt + output:
            beside = 0  # the provider's own total says completion_tokens already holds them
        output += beside

    if cached > prompt:
        raise _exceeds(cached_param, "cache reads", f"{where}.prompt_tokens")
    if cached + cache_write > prompt:
        raise _exceeds(cache_write_param, "cache reads and writes", f"{where}.prompt_tokens")
    if reasoning > output:
        raise _exceeds(reasoning_param, "reasoning tokens", f"{where}.completion_tokens")
    return prompt - cached - cache_write, cached, cache_write, 0, output, reasoning


def _read_responses(u: Mapping[str, Any], where: str) -> _Kinds:
    prompt = _required(u, "input_tokens", where)
    output = _required(u, "output_tokens", where)
    cached = cache_write = reasoning = 0
    input_details = _object(u, "input_tokens_details", where)
    if input_details is not None:
        input_where = f"{where}.input_tokens_details"
        cached = _optional(input_details, "cached_tokens", input_where)
        cache_write = _optional(input_details, "cache_write_tokens", input_where)
        if cached + cache_write > prompt:
            key = "cached_tokens" if cached > prompt else "cache_write_tokens"
            raise _exceeds(
                f"{input_where}.{key}", "cache reads and writes", f"{where}.input_tokens"
            )
    output_details = _object(u, "output_tokens_details", where)
    if output_details is not None:
        output_where = f"{where}.output_tokens_details"
        reasoning = _optional(output_details, "reasoning_tokens", output_where)
        if reasoning > output:
            raise _exceeds(
                f"{output_where}.reasoning_tokens", "reasoning tokens", f"{where}.output_tokens"
            )
    return prompt - cached - cache_write, cached, cache_write, 0, output, reasoning


def _read_anthropic(u: Mapping[str, Any], where: str) -> _Kinds:
    uncached = _required(u, "input_tokens", where)
    output = _required(u, "output_tokens", where)
    cache_read = _optional(u, "cache_read_input_tokens", where)
    cache_write = _optional(u, "cache_creation_input_tokens", where)
    cache_write_1h = 0
    by_ttl = _object(u, "cache_creation", where)
    if by_ttl is not None:
        ttl_where = f"{where}.cache_creation"
        cache_write_5m = _optional(by_ttl, "ephemeral_5m_input_tokens", ttl_where)
        cache_write_1h = _optional(by_ttl, "ephemeral_1h_input_tokens", ttl_where)
        if u.get("cache_creation_input_tokens") is None:
            cache_write = cache_write_5m + cache_write_1h
        elif cache_write_5m + cache_write_1h > cache_write:
            raise _exceeds(ttl_where, "cache writes by TTL", f"{where}.cache_creation_input_tokens")
    reasoning = _reasoning_in_output_details(u, where, output)
    return uncached, cache_read, cache_write, cache_write_1h, output, reasoning


def _read_gemini(u: Mapping[str, Any], where: str, names: tuple[str, ...]) -> _Kinds:
    prompt_key, candidates_key, cached_key, thoughts_key, tool_use_key, _ = names
    prompt = _required(u, prompt_key, where)
    tool_use_prompt = _optional(u, tool_use_key, where)
    cached = _optional(u, cached_key, where)
    thoughts = _optional(u, thoughts_key, where)
    output = _optional(u, candidates_key, where) + thoughts
    if cached > prompt:
        raise _exceeds(f"{where}.{cached_key}", "cached content tokens", f"{where}.{prompt_key}")
    return prompt + tool_use_prompt - cached, cached, 0, 0, output, thoughts


def _read_bedrock_converse(u: Mapping[str, Any], where: str) -> _Kinds:
    uncached = _required(u, "inputTokens", where)
    output = _required(u, "outputTokens", where)
    cache_read = _optional(u, "cacheReadInputTokens", where)
    cache_write = _optional(u, "cacheWriteInputTokens", where)
    return uncached, cache_read, cache_write, 0, output, 0


def _read_own(u: Mapping[str, Any], where: str) -> _Kinds:
    """Our own names, or a bare {input_tokens, output_tokens} that no marker places."""
    uncached = _required(u, "input_tokens", where)
    output = _required(u, "output_tokens", where)
    cache_read = _optional(u, "cache_read_tokens", where)
    cache_write = _optional(u, "cache_write_tokens", where)
    cache_write_1h = _optional(u, "cache_write_1h_tokens", where)
    if cache_write_1h > cache_write:
        raise _exceeds(
            f"{where}.cache_write_1h_tokens", "1-hour cache writes", f"{where}.cache_write_tokens"
        )
    if "reasoning_tokens" in u:
        reasoning = _optional(u, "reasoning_tokens", where)
        if reasoning > output:
            raise _exceeds(
                f"{where}.reasoning_tokens", "reasoning tokens", f"{where}.output_tokens"
            )
    else:
        reasoning = _reasoning_in_output_details(u, where, output)
    prompt = uncached + cache_read + cache_write
    if (
        u.get("prompt_tokens") is not None
        and _count(u["prompt_tokens"], where, "prompt_tokens") != prompt
    ):
        raise UsageNotUnderstood(
            f"{where}.prompt_tokens must equal input_tokens + cache_read_tokens + "
            f"cache_write_tokens ({prompt}): here input_tokens excludes the cache",
            param=f"{where}.prompt_tokens",
        )
    if u.get("total_tokens") is not None and _count(u["total_tokens"], where, "total_tokens") != (
        prompt + output
    ):
        raise UsageNotUnderstood(
            f"{where}.total_tokens must equal the prompt plus output_tokens ({prompt + output})",
            param=f"{where}.total_tokens",
        )
    return uncached, cache_read, cache_write, cache_write_1h, output, reasoning


def _reasoning_in_output_details(u: Mapping[str, Any], where: str, output: int) -> int:
    """Anthropic's output_tokens_details.thinking_tokens (or a Responses-style
    reasoning_tokens there): a part of output_tokens."""
    details = _object(u, "output_tokens_details", where)
    if details is None:
        return 0
    details_where = f"{where}.output_tokens_details"
    key = "thinking_tokens" if details.get("thinking_tokens") is not None else "reasoning_tokens"
    reasoning = _optional(details, key, details_where)
    if reasoning > output:
        raise _exceeds(f"{details_where}.{key}", "reasoning tokens", f"{where}.output_tokens")
    return reasoning


# --- typos ---------------------------------------------------------------------------------


def _refuse_near_misses(counts: Mapping[str, Any], where: str) -> None:
    """Refuse a key of the counts, or of an object inside them, that is not a field any
    provider documents but lies a letter or two from one that is counted. Unknown keys
    that resemble nothing counted (a provider's new field) pass, as they always have."""
    for key, value in counts.items():
        _refuse_near_miss(counts, key, where)
        if isinstance(value, Mapping):
            for inner in value:
                _refuse_near_miss(value, inner, f"{where}.{key}")


def _refuse_near_miss(obj: Mapping[str, Any], key: str, where: str) -> None:
    if key in _KNOWN_NAMES:
        return
    meant = _resembles(key)
    if meant is not None and meant not in obj:
        raise UsageNotUnderstood(
            f"{where}.{key} is not a usage field; did you mean {meant}? "
            "(a misspelt count would be read as 0 and charged as free)",
            param=f"{where}.{key}",
        )


@functools.lru_cache(maxsize=1024)
def _resembles(key: str) -> str | None:
    if len(key) > 64:
        return None
    close = difflib.get_close_matches(key, _READ_NAMES, n=1, cutoff=0.85)
    return close[0] if close else None


# --- counts --------------------------------------------------------------------------------


def _count(value: Any, where: str, key: str) -> int:
    if type(value) is int:
        if 0 <= value <= MAX_COUNT:
            return value
    elif type(value) is Decimal:
        if value.is_finite() and 0 <= value <= MAX_COUNT and value == value.to_integral_value():
            return int(value)
    raise UsageNotUnderstood(
        f"{where}.{key} must be a whole number of tokens from 0 to {MAX_COUNT}, "
        f"not {_shown(value)}",
        param=f"{where}.{key}",
    )


def _required(u: Mapping[str, Any], key: str, where: str) -> int:
    value = u.get(key)
    if value is None:
        raise UsageNotUnderstood(f"{where}.{key} is required", param=f"{where}.{key}")
    return _count(value, where, key)


def _optional(u: Mapping[str, Any], key: str, where: str) -> int:
    value = u.get(key)
    return 0 if value is None else _count(value, where, key)


def _object(u: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any] | None:
    value = u.get(key)
    if value is None or isinstance(value, Mapping):
        return value
    raise UsageNotUnderstood(
        f"{where}.{key} must be an object, not {_type_name(value)}", param=f"{where}.{key}"
    )


def _exceeds(param: str, what: str, limit: str) -> UsageNotUnderstood:
    return UsageNotUnderstood(f"{param}: {what} exceed {limit}", param=param)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    shown = repr(value)
    return f"{shown[:40]}..." if len(shown) > 43 else shown


# --- providers ------------------------------------------------------------------------------
# Lookups are cached per genai-prices snapshot (a price update may bring a new one) and the
# caches are bounded, because provider and model names come from API clients.

_CACHE_LIMIT = 4096
_cache_snapshot: object = None
_provider_ids: dict[str, str | None] = {}
_model_providers: dict[str, str | None] = {}


def _catalog() -> list[Any]:
    global _cache_snapshot
    snapshot = data_snapshot.get_snapshot()
    if snapshot is not _cache_snapshot:
        _provider_ids.clear()
        _model_providers.clear()
        _cache_snapshot = snapshot
    return snapshot.providers


def _provider_from_name(name: Any, model: str) -> str:
    """The genai-prices id of a provider named by the client."""
    if not isinstance(name, str):
        raise UnknownProvider(
            f"provider must be a string, not {_type_name(name)}", param=PROVIDER_PARAM
        )
    key = name.strip().lower()
    providers = _catalog()
    if key not in _provider_ids:
        if len(_provider_ids) >= _CACHE_LIMIT:
            _provider_ids.clear()
        found = data_snapshot.find_provider_by_id(providers, key) if key else None
        _provider_ids[key] = found.id if found is not None else None
    provider_id = _provider_ids[key]
    if provider_id is not None:
        return provider_id
    if key in OPENAI_COMPATIBLE:
        return (_provider_for_model(model) if key == "litellm" and "/" in model else None) or key
    raise UnknownProvider(
        f"unknown provider {_shown(name)}: use a genai-prices provider id such as "
        "openai, anthropic, google, x-ai, mistral, deepseek or groq",
        param=PROVIDER_PARAM,
    )


def _provider_for_model(model: str) -> str | None:
    """The provider genai-prices finds for a model name, else the provider named by a
    ``vendor/`` prefix, else None."""
    if not model:
        return None
    providers = _catalog()
    if model in _model_providers:
        return _model_providers[model]
    if len(_model_providers) >= _CACHE_LIMIT:
        _model_providers.clear()
    ref = model.strip().lower()
    found = next(
        (p for p in providers if p.model_match is not None and p.model_match.is_match(ref)), None
    )
    if found is None and "/" in ref:
        found = data_snapshot.find_provider_by_id(providers, ref.partition("/")[0])
    _model_providers[model] = provider_id = found.id if found is not None else None
    return provider_id
