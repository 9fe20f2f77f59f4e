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

How each provider's fields are counted is told, and done, in ``metering.usage_dialects``
(OpenAI Chat Completions and Responses, Anthropic, Gemini, Bedrock Converse, our own
names); how one count is read and refused, in ``metering.usage_counts``.

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

from collections.abc import Mapping
from typing import Any, NamedTuple

from genai_prices import data_snapshot

from billing.meters import LLM_FIELDS
from metering.errors import InvalidEvent, UnknownProvider, UsageNotUnderstood
from metering.usage_counts import shown, type_name
from metering.usage_dialects import (
    GEMINI_CAMEL,
    GEMINI_CAMEL_KEYS,
    GEMINI_SNAKE,
    GEMINI_SNAKE_KEYS,
    OWN_MARKERS,
    read_bedrock_converse,
    read_chat_completions,
    read_gemini,
    read_input_family,
    refuse_near_misses,
)

__all__ = ["OPENAI_COMPATIBLE", "NormalizedUsage", "normalize_usage"]

USAGE_PARAM = "properties.usage"
PROVIDER_PARAM = "properties.provider"
MODEL_PARAM = "properties.model"

# OpenAI-compatible servers that genai-prices does not list: accepted as a provider and
# kept by name (``litellm`` takes the provider from a ``vendor/model`` prefix when it can).
OPENAI_COMPATIBLE = frozenset({"openai-compatible", "litellm", "vllm", "ollama", "lmstudio"})


class NormalizedUsage(NamedTuple):
    """Immutable, as a tuple: built for every event, and a tuple is made in one step where a
    frozen dataclass sets each of its eight fields through ``object.__setattr__``."""

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
        return (
            self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
        ) + self.output_tokens

    def as_dict(self) -> dict[str, int | str]:
        return {name: getattr(self, name) for name in LLM_FIELDS}


def normalize_usage(usage: Any, *, provider: Any = None, model: Any = None) -> NormalizedUsage:
    """Read ``usage`` (a provider's usage object or whole response, JSON-decoded) as token
    kinds. Raises ``UsageNotUnderstood``, ``UnknownProvider`` or ``InvalidEvent`` (model).
    ``provider`` and ``model`` are a client's values, checked here (a name, None or "";
    anything else refused as such), so typed ``Any``: not ``str | None``, which a compiled
    build (mypyc) would enforce with a TypeError before the check."""
    if type(usage) is not dict and not isinstance(usage, Mapping):
        raise UsageNotUnderstood(
            f"usage must be an object, not {type_name(usage)}", param=USAGE_PARAM
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
    if type(counts) is not dict and not isinstance(counts, Mapping):
        raise UsageNotUnderstood(
            f"{where} must be an object with token counts, not {type_name(counts)}",
            param=where,
        )

    if model is None or model == "":
        model = found_model if isinstance(found_model, str) else ""
    elif not isinstance(model, str):
        raise InvalidEvent(f"model must be a string, not {type_name(model)}", param=MODEL_PARAM)

    provider_id = _provider_from_name(provider, model) if provider else _provider_for_model(model)
    refuse_near_misses(counts, where)

    # 2.-5. Which dialect the counts are in: decided by the keys (see the module docstring).
    if "input_tokens" in counts or "output_tokens" in counts:
        kinds, shape_provider = read_input_family(counts, where)
    elif "prompt_tokens" in counts or "completion_tokens" in counts:
        kinds = read_chat_completions(counts, where, provider_id)
        shape_provider = "openai"
    elif not GEMINI_CAMEL_KEYS.isdisjoint(counts):
        if not GEMINI_SNAKE_KEYS.isdisjoint(counts):
            raise UsageNotUnderstood(
                f"{where} mixes camelCase and snake_case Gemini counts", param=where
            )
        kinds = read_gemini(counts, where, GEMINI_CAMEL)
        shape_provider = "google"
    elif not GEMINI_SNAKE_KEYS.isdisjoint(counts):
        kinds = read_gemini(counts, where, GEMINI_SNAKE)
        shape_provider = "google"
    elif "inputTokens" in counts or "outputTokens" in counts:
        kinds = read_bedrock_converse(counts, where)
        shape_provider = "aws"
    elif not OWN_MARKERS.isdisjoint(counts):
        kinds, shape_provider = read_input_family(counts, where)  # refused: no input_tokens
    else:
        raise UsageNotUnderstood(
            f"{where} has no token counts in a known provider's format "
            "(OpenAI, Anthropic, Gemini, Bedrock Converse or our own names)",
            param=where,
        )
    # the two names and the six kinds, in NormalizedUsage's order (TokenKinds is a tuple)
    return _new_tuple(NormalizedUsage, (provider_id or shape_provider, model, *kinds))


_new_tuple = tuple.__new__  # a NamedTuple's own __new__, without its Python frame


# --- providers ------------------------------------------------------------------------------
# Lookups are cached per genai-prices snapshot (a price update may bring a new one) and the
# caches are bounded, because provider and model names come from API clients.

_CACHE_LIMIT = 4096
_cache_snapshot: object = None
_provider_ids: dict[str, str | None] = {}
_model_providers: dict[str, str | None] = {}
# A provider's name as clients send it → its id, for names the snapshot lists (their id
# does not depend on the model): the common case without stripping and lowering it.
_named_providers: dict[str, str] = {}


def _catalog() -> list[Any]:
    global _cache_snapshot
    snapshot = data_snapshot.get_snapshot()
    if snapshot is not _cache_snapshot:
        _provider_ids.clear()
        _model_providers.clear()
        _named_providers.clear()
        _cache_snapshot = snapshot
    return snapshot.providers


def _provider_from_name(name: Any, model: str) -> str:
    """The genai-prices id of a provider named by the client."""
    if not isinstance(name, str):
        raise UnknownProvider(
            f"provider must be a string, not {type_name(name)}", param=PROVIDER_PARAM
        )
    providers = _catalog()
    named = _named_providers.get(name)
    if named is not None:
        return named
    key = name.strip().lower()
    if key not in _provider_ids:
        if len(_provider_ids) >= _CACHE_LIMIT:
            _provider_ids.clear()
        found = data_snapshot.find_provider_by_id(providers, key) if key else None
        _provider_ids[key] = found.id if found is not None else None
    provider_id = _provider_ids[key]
    if provider_id is not None:
        if len(_named_providers) >= _CACHE_LIMIT:
            _named_providers.clear()
        _named_providers[name] = provider_id
        return provider_id
    if key in OPENAI_COMPATIBLE:
        return (_provider_for_model(model) if key == "litellm" and "/" in model else None) or key
    raise UnknownProvider(
        f"unknown provider {shown(name)}: use a genai-prices provider id such as "
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
