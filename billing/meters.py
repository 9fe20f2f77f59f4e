"""What a meter may read of an LLM event, fixed by the commercial core that validates meters
and plans: the reserved ``llm.`` paths (the fields of metering's normalised usage,
``metering.normalize.NormalizedUsage.as_dict``) and which of them the model price catalog
can price (``metering.catalog`` prices exactly these token kinds)."""

from __future__ import annotations

# Every field a meter can read under ``llm.``.
LLM_FIELDS = (
    "provider",
    "model",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "prompt_tokens",
    "total_tokens",
)

# Which of our token kinds a meter on ``llm.<kind>`` prices, for catalog-priced charges
# (plan publishing checks charges against these keys).
CATALOG_KINDS = {
    "llm.input_tokens": ("input",),
    "llm.cache_read_tokens": ("cache_read",),
    "llm.cache_write_tokens": ("cache_write",),
    "llm.output_tokens": ("output",),
    "llm.prompt_tokens": ("input", "cache_read", "cache_write"),
    # the whole call: every token kind and the provider's per-request price, if any
    "llm.total_tokens": ("input", "cache_read", "cache_write", "output", "requests"),
}
