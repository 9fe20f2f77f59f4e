"""The dialects of a provider's ``usage`` object, each read as six token kinds
(``TokenKinds``), and the field names they use: a key a letter or two from a counted name is
a typo, refused (``refuse_near_misses``). ``metering.normalize`` decides which dialect
applies.

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
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from dataclasses import astuple, dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from metering.errors import UsageNotUnderstood
from metering.usage_counts import MAX_COUNT, count, exceeds, nested, optional, required

# Providers whose Chat Completions usage leaves reasoning out of completion_tokens.
_REASONING_BESIDE_COMPLETION = frozenset({"x-ai", "perplexity"})

_ANTHROPIC_MARKERS = frozenset(
    {"cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation", "server_tool_use"}
)
OWN_MARKERS = frozenset(
    {"cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens"}
)


@dataclass(frozen=True)
class GeminiNames:
    """The names of Gemini's counts in one spelling (the REST API's camelCase, or the
    google-genai SDK's snake_case)."""

    prompt: str
    candidates: str
    cached: str
    thoughts: str
    tool_use: str
    total: str

    def all(self) -> tuple[str, ...]:
        return astuple(self)


GEMINI_CAMEL = GeminiNames(
    prompt="promptTokenCount",
    candidates="candidatesTokenCount",
    cached="cachedContentTokenCount",
    thoughts="thoughtsTokenCount",
    tool_use="toolUsePromptTokenCount",
    total="totalTokenCount",
)
GEMINI_SNAKE = GeminiNames(
    prompt="prompt_token_count",
    candidates="candidates_token_count",
    cached="cached_content_token_count",
    thoughts="thoughts_token_count",
    tool_use="tool_use_prompt_token_count",
    total="total_token_count",
)
GEMINI_CAMEL_KEYS = frozenset(GEMINI_CAMEL.all())
GEMINI_SNAKE_KEYS = frozenset(GEMINI_SNAKE.all())

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
        *GEMINI_CAMEL.all(),
        *GEMINI_SNAKE.all(),
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
# What a JSON-decoded count or field usually is: never a Mapping (asked of an ABC otherwise).
_NOT_MAPPINGS = frozenset({int, Decimal, str, bool, float, list, type(None)})


# --- the dialects ------------------------------------------------------------------------


class TokenKinds(NamedTuple):
    """What each dialect's reader returns: the counts of ``NormalizedUsage``, in its order
    (``normalize_usage`` adds the provider and model in front)."""

    input_tokens: int  # neither read from nor written to a cache
    cache_read_tokens: int
    cache_write_tokens: int  # any TTL
    cache_write_1h_tokens: int  # the part of cache_write_tokens with a 1-hour TTL
    output_tokens: int  # reasoning included
    reasoning_tokens: int


def read_input_family(u: Mapping[str, Any], where: str) -> tuple[TokenKinds, str]:
    anthropic = not _ANTHROPIC_MARKERS.isdisjoint(u)
    responses = "input_tokens_details" in u
    own = not OWN_MARKERS.isdisjoint(u)
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


def read_chat_completions(u: Mapping[str, Any], where: str, provider_id: str | None) -> TokenKinds:
    if type(u) is dict and provider_id not in _REASONING_BESIDE_COMPLETION:
        kinds = _chat_completions_plainly(u)
        if kinds is not None:
            return kinds
    prompt = required(u, "prompt_tokens", where)
    output = optional(u, "completion_tokens", where)

    cached: int | None = None
    cache_write = 0
    cached_param = cache_write_param = f"{where}.prompt_tokens_details"
    prompt_details = nested(u, "prompt_tokens_details", where)
    if prompt_details is not None:
        details_where = f"{where}.prompt_tokens_details"
        cached_param = f"{details_where}.cached_tokens"
        cache_write_param = f"{details_where}.cache_write_tokens"
        cache_write = optional(prompt_details, "cache_write_tokens", details_where)
        if prompt_details.get("cached_tokens") is not None:
            cached = count(prompt_details["cached_tokens"], details_where, "cached_tokens")
    if cached is None:
        cached = 0
        for key in ("cached_tokens", "cache_read_input_tokens", "cached_prompt_text_tokens"):
            if u.get(key) is not None:
                cached = count(u[key], where, key)
                cached_param = f"{where}.{key}"
                break

    completion_details = nested(u, "completion_tokens_details", where)
    if completion_details is not None and completion_details.get("reasoning_tokens") is not None:
        reasoning_param = f"{where}.completion_tokens_details.reasoning_tokens"
        reasoning = count(
            completion_details["reasoning_tokens"],
            f"{where}.completion_tokens_details",
            "reasoning_tokens",
        )
    else:
        reasoning_param = f"{where}.reasoning_tokens"
        reasoning = optional(u, "reasoning_tokens", where)

    if provider_id in _REASONING_BESIDE_COMPLETION:
        beside = reasoning
        if provider_id == "perplexity":
            beside += optional(u, "citation_tokens", where)
        total = u.get("total_tokens")
        if beside and total is not None and count(total, where, "total_tokens") == prompt + output:
            beside = 0  # the provider's own total says completion_tokens already holds them
        output += beside

    if cached > prompt:
        raise exceeds(cached_param, "cache reads", f"{where}.prompt_tokens")
    if cached + cache_write > prompt:
        raise exceeds(cache_write_param, "cache reads and writes", f"{where}.prompt_tokens")
    if reasoning > output:
        raise exceeds(reasoning_param, "reasoning tokens", f"{where}.completion_tokens")
    return TokenKinds(
        input_tokens=prompt - cached - cache_write,
        cache_read_tokens=cached,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=0,
        output_tokens=output,
        reasoning_tokens=reasoning,
    )


def _chat_completions_plainly(u: dict[str, Any]) -> TokenKinds | None:
    """``read_chat_completions`` of its common object, without a call a count: whole ``int``
    counts in range, the details plain dicts, nothing exceeding what holds it, and a
    provider that counts reasoning inside completion_tokens. The same kinds, read from the
    same fields in the same order of preference; None for anything else, which the general
    reading reads again from the start (and refuses, naming the field)."""
    prompt = u.get("prompt_tokens")
    output = u.get("completion_tokens")
    if output is None:
        output = 0
    cached: Any
    cache_write: Any
    reasoning: Any
    details = u.get("prompt_tokens_details")
    if details is None:
        cached = None
        cache_write = 0
    elif type(details) is dict:
        cached = details.get("cached_tokens")
        cache_write = details.get("cache_write_tokens")
        if cache_write is None:
            cache_write = 0
    else:
        return None
    if cached is None:
        for key in ("cached_tokens", "cache_read_input_tokens", "cached_prompt_text_tokens"):
            cached = u.get(key)
            if cached is not None:
                break
        else:
            cached = 0
    details = u.get("completion_tokens_details")
    if details is None:
        reasoning = None
    elif type(details) is dict:
        reasoning = details.get("reasoning_tokens")
    else:
        return None
    if reasoning is None:
        reasoning = u.get("reasoning_tokens")
        if reasoning is None:
            reasoning = 0
    if (
        type(prompt) is int
        and type(output) is int
        and type(cached) is int
        and type(cache_write) is int
        and type(reasoning) is int
        and 0 <= prompt <= MAX_COUNT
        and 0 <= output <= MAX_COUNT
        and 0 <= cached
        and 0 <= cache_write
        and cached + cache_write <= prompt
        and 0 <= reasoning <= output
    ):
        return TokenKinds(
            input_tokens=prompt - cached - cache_write,
            cache_read_tokens=cached,
            cache_write_tokens=cache_write,
            cache_write_1h_tokens=0,
            output_tokens=output,
            reasoning_tokens=reasoning,
        )
    return None


def _read_responses(u: Mapping[str, Any], where: str) -> TokenKinds:
    prompt = required(u, "input_tokens", where)
    output = required(u, "output_tokens", where)
    cached = cache_write = reasoning = 0
    input_details = nested(u, "input_tokens_details", where)
    if input_details is not None:
        input_where = f"{where}.input_tokens_details"
        cached = optional(input_details, "cached_tokens", input_where)
        cache_write = optional(input_details, "cache_write_tokens", input_where)
        if cached + cache_write > prompt:
            key = "cached_tokens" if cached > prompt else "cache_write_tokens"
            raise exceeds(f"{input_where}.{key}", "cache reads and writes", f"{where}.input_tokens")
    output_details = nested(u, "output_tokens_details", where)
    if output_details is not None:
        output_where = f"{where}.output_tokens_details"
        reasoning = optional(output_details, "reasoning_tokens", output_where)
        if reasoning > output:
            raise exceeds(
                f"{output_where}.reasoning_tokens", "reasoning tokens", f"{where}.output_tokens"
            )
    return TokenKinds(
        input_tokens=prompt - cached - cache_write,
        cache_read_tokens=cached,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=0,
        output_tokens=output,
        reasoning_tokens=reasoning,
    )


def _read_anthropic(u: Mapping[str, Any], where: str) -> TokenKinds:
    if type(u) is dict:
        kinds = _anthropic_plainly(u)
        if kinds is not None:
            return kinds
    uncached = required(u, "input_tokens", where)
    output = required(u, "output_tokens", where)
    cache_read = optional(u, "cache_read_input_tokens", where)
    cache_write = optional(u, "cache_creation_input_tokens", where)
    cache_write_1h = 0
    by_ttl = nested(u, "cache_creation", where)
    if by_ttl is not None:
        ttl_where = f"{where}.cache_creation"
        cache_write_5m = optional(by_ttl, "ephemeral_5m_input_tokens", ttl_where)
        cache_write_1h = optional(by_ttl, "ephemeral_1h_input_tokens", ttl_where)
        if u.get("cache_creation_input_tokens") is None:
            cache_write = cache_write_5m + cache_write_1h
        elif cache_write_5m + cache_write_1h > cache_write:
            raise exceeds(ttl_where, "cache writes by TTL", f"{where}.cache_creation_input_tokens")
    reasoning = _reasoning_in_output_details(u, where, output)
    return TokenKinds(
        input_tokens=uncached,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=cache_write_1h,
        output_tokens=output,
        reasoning_tokens=reasoning,
    )


def _anthropic_plainly(u: dict[str, Any]) -> TokenKinds | None:
    """``_read_anthropic`` of its common object, without a call a count (as
    ``_chat_completions_plainly``): None for anything it would refuse or that is not plain
    (an int outside 0..MAX_COUNT, a Decimal, a detail that is not a dict), which the general
    reading then reads from the start."""
    uncached = u.get("input_tokens")
    output = u.get("output_tokens")
    cache_read = u.get("cache_read_input_tokens")
    if cache_read is None:
        cache_read = 0
    written = u.get("cache_creation_input_tokens")
    if written is None:
        cache_write = 0
    elif type(written) is int and 0 <= written <= MAX_COUNT:
        cache_write = written
    else:
        return None
    cache_write_1h: Any = 0
    reasoning: Any
    by_ttl = u.get("cache_creation")
    if by_ttl is not None:
        if type(by_ttl) is not dict:
            return None
        cache_write_5m = by_ttl.get("ephemeral_5m_input_tokens")
        if cache_write_5m is None:
            cache_write_5m = 0
        cache_write_1h = by_ttl.get("ephemeral_1h_input_tokens")
        if cache_write_1h is None:
            cache_write_1h = 0
        if not (
            type(cache_write_5m) is int
            and type(cache_write_1h) is int
            and 0 <= cache_write_5m <= MAX_COUNT
            and 0 <= cache_write_1h <= MAX_COUNT
        ):
            return None
        if written is None:
            cache_write = cache_write_5m + cache_write_1h
        elif cache_write_5m + cache_write_1h > cache_write:
            return None
    reasoning = _plain_details_reasoning(u)
    if reasoning is None:
        return None
    if (
        type(uncached) is int
        and type(output) is int
        and type(cache_read) is int
        and type(reasoning) is int
        and 0 <= uncached <= MAX_COUNT
        and 0 <= output <= MAX_COUNT
        and 0 <= cache_read <= MAX_COUNT
        and 0 <= reasoning <= output
    ):
        return TokenKinds(
            input_tokens=uncached,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            cache_write_1h_tokens=cache_write_1h,
            output_tokens=output,
            reasoning_tokens=reasoning,
        )
    return None


def read_gemini(u: Mapping[str, Any], where: str, names: GeminiNames) -> TokenKinds:
    if type(u) is dict:
        kinds = _gemini_plainly(u, names)
        if kinds is not None:
            return kinds
    prompt = required(u, names.prompt, where)
    tool_use_prompt = optional(u, names.tool_use, where)
    cached = optional(u, names.cached, where)
    thoughts = optional(u, names.thoughts, where)
    output = optional(u, names.candidates, where) + thoughts
    if cached > prompt:
        raise exceeds(f"{where}.{names.cached}", "cached content tokens", f"{where}.{names.prompt}")
    return TokenKinds(
        input_tokens=prompt + tool_use_prompt - cached,
        cache_read_tokens=cached,
        cache_write_tokens=0,
        cache_write_1h_tokens=0,
        output_tokens=output,
        reasoning_tokens=thoughts,
    )


def _gemini_plainly(u: dict[str, Any], names: GeminiNames) -> TokenKinds | None:
    """``read_gemini`` of its common object, without a call a count (as
    ``_chat_completions_plainly``): whole ``int`` counts in range, the cached content
    inside the prompt; None for anything else, read again by the general reading."""
    prompt = u.get(names.prompt)
    tool_use_prompt = _zero_if_none(u.get(names.tool_use))
    cached = _zero_if_none(u.get(names.cached))
    thoughts = _zero_if_none(u.get(names.thoughts))
    candidates = _zero_if_none(u.get(names.candidates))
    if _whole(prompt, tool_use_prompt, cached, thoughts, candidates) and cached <= prompt:
        return TokenKinds(
            prompt + tool_use_prompt - cached, cached, 0, 0, candidates + thoughts, thoughts
        )
    return None


def _plain_details_reasoning(u: dict[str, Any]) -> Any:
    """The reasoning count in ``output_tokens_details`` as ``_reasoning_in_output_details``
    reads it (thinking_tokens, else reasoning_tokens, else 0), not yet checked; None when
    the details are not a plain dict."""
    details = u.get("output_tokens_details")
    if details is None:
        return 0
    if type(details) is not dict:
        return None
    reasoning = details.get("thinking_tokens")
    if reasoning is None:
        reasoning = details.get("reasoning_tokens")
    return _zero_if_none(reasoning)


def _whole(*counts: Any) -> bool:
    """Each of ``counts`` an ``int`` from 0 to MAX_COUNT: what ``count`` passes as it is
    (the plain readings' test of all their counts in one call)."""
    for value in counts:
        if type(value) is not int or not 0 <= value <= MAX_COUNT:
            return False
    return True


def _zero_if_none(value: Any) -> Any:
    """An optional count as ``optional`` takes it: a missing or null one counts 0."""
    return 0 if value is None else value


def read_bedrock_converse(u: Mapping[str, Any], where: str) -> TokenKinds:
    uncached = required(u, "inputTokens", where)
    output = required(u, "outputTokens", where)
    cache_read = optional(u, "cacheReadInputTokens", where)
    cache_write = optional(u, "cacheWriteInputTokens", where)
    return TokenKinds(
        input_tokens=uncached,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=0,
        output_tokens=output,
        reasoning_tokens=0,
    )


def _read_own(u: Mapping[str, Any], where: str) -> TokenKinds:
    """Our own names, or a bare {input_tokens, output_tokens} that no marker places."""
    if type(u) is dict:
        kinds = _own_plainly(u)
        if kinds is not None:
            return kinds
    uncached = required(u, "input_tokens", where)
    output = required(u, "output_tokens", where)
    cache_read = optional(u, "cache_read_tokens", where)
    cache_write = optional(u, "cache_write_tokens", where)
    cache_write_1h = optional(u, "cache_write_1h_tokens", where)
    if cache_write_1h > cache_write:
        raise exceeds(
            f"{where}.cache_write_1h_tokens", "1-hour cache writes", f"{where}.cache_write_tokens"
        )
    if "reasoning_tokens" in u:
        reasoning = optional(u, "reasoning_tokens", where)
        if reasoning > output:
            raise exceeds(f"{where}.reasoning_tokens", "reasoning tokens", f"{where}.output_tokens")
    else:
        reasoning = _reasoning_in_output_details(u, where, output)
    prompt = uncached + cache_read + cache_write
    if (
        u.get("prompt_tokens") is not None
        and count(u["prompt_tokens"], where, "prompt_tokens") != prompt
    ):
        raise UsageNotUnderstood(
            f"{where}.prompt_tokens must equal input_tokens + cache_read_tokens + "
            f"cache_write_tokens ({prompt}): here input_tokens excludes the cache",
            param=f"{where}.prompt_tokens",
        )
    if u.get("total_tokens") is not None and count(u["total_tokens"], where, "total_tokens") != (
        prompt + output
    ):
        raise UsageNotUnderstood(
            f"{where}.total_tokens must equal the prompt plus output_tokens ({prompt + output})",
            param=f"{where}.total_tokens",
        )
    return TokenKinds(
        input_tokens=uncached,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=cache_write_1h,
        output_tokens=output,
        reasoning_tokens=reasoning,
    )


def _own_plainly(u: dict[str, Any]) -> TokenKinds | None:
    """``_read_own`` of its common object, without a call a count (as
    ``_chat_completions_plainly``): whole ``int`` counts in range, nothing exceeding what
    holds it, a stated prompt or total equal to ours; None for anything else, read again
    by the general reading (which refuses it, naming the field)."""
    uncached: Any = u.get("input_tokens")
    output: Any = u.get("output_tokens")
    cache_read = _zero_if_none(u.get("cache_read_tokens"))
    cache_write = _zero_if_none(u.get("cache_write_tokens"))
    cache_write_1h = _zero_if_none(u.get("cache_write_1h_tokens"))
    reasoning: Any
    if "reasoning_tokens" in u:
        reasoning = _zero_if_none(u["reasoning_tokens"])
    else:
        reasoning = _plain_details_reasoning(u)
        if reasoning is None:
            return None
    if not (
        _whole(uncached, output, cache_read, cache_write, cache_write_1h, reasoning)
        and cache_write_1h <= cache_write
        and reasoning <= output
    ):
        return None
    prompt = uncached + cache_read + cache_write
    for stated, ours in (
        (u.get("prompt_tokens"), prompt),
        (u.get("total_tokens"), prompt + output),
    ):
        if stated is not None and (type(stated) is not int or stated != ours or stated > MAX_COUNT):
            return None
    return TokenKinds(uncached, cache_read, cache_write, cache_write_1h, output, reasoning)


def _reasoning_in_output_details(u: Mapping[str, Any], where: str, output: int) -> int:
    """Anthropic's output_tokens_details.thinking_tokens (or a Responses-style
    reasoning_tokens there): a part of output_tokens."""
    details = nested(u, "output_tokens_details", where)
    if details is None:
        return 0
    details_where = f"{where}.output_tokens_details"
    key = "thinking_tokens" if details.get("thinking_tokens") is not None else "reasoning_tokens"
    reasoning = optional(details, key, details_where)
    if reasoning > output:
        raise exceeds(f"{details_where}.{key}", "reasoning tokens", f"{where}.output_tokens")
    return reasoning


# --- typos ---------------------------------------------------------------------------------


def refuse_near_misses(counts: Mapping[str, Any], where: str) -> None:
    """Refuse a key of the counts, or of an object inside them, that is not a field any
    provider documents but lies a letter or two from one that is counted. Unknown keys
    that resemble nothing counted (a provider's new field) pass, as they always have."""
    if type(counts) is dict and counts.keys() <= _KNOWN_NAMES:
        # The common case, said without a call a key: every key a documented field (so no
        # near miss), and every object inside a plain dict of documented fields too.
        for value in counts.values():
            if type(value) is dict:
                if not value.keys() <= _KNOWN_NAMES:
                    break
            elif type(value) not in _NOT_MAPPINGS and isinstance(value, Mapping):
                break
        else:
            return
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
