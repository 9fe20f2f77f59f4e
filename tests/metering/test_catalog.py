"""metering.catalog: ``cost_of`` against genai-prices' own ``calc_price`` for every model of
its snapshot that we can represent; the import (idempotent, manual rows untouched, changed
prices from the import on); ``find_price`` resolution; the per-process cache.

The agreement tests need no database: they build unsaved ``ModelPrice`` rows from the
snapshot with the importer's own helpers (``_versions``, ``_price_fields``,
``_clause_to_json``), exactly as ``import_genai_prices`` does.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from django.core.management import call_command
from django.db import IntegrityError
from genai_prices import Usage
from genai_prices.data_snapshot import get_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from metering import catalog
from metering.errors import UnknownModel
from metering.models import ModelPrice
from metering.normalize import NormalizedUsage
from tests.factories import CATALOG_EPOCH, ModelPriceFactory

SNAPSHOT = get_snapshot()
OUR_PRICE_KEYS = frozenset(catalog.PRICE_COLUMNS)
NOW = datetime.now(UTC).replace(microsecond=0)
EPOCH = CATALOG_EPOCH


# --- helpers: the snapshot as genai-prices sees it ------------------------------------------------


def priced_keys(model_price: Any) -> set[str]:
    """The price keys a genai-prices ModelPrice actually sets."""
    return {k for k, v in model_price.__dict__.items() if not k.startswith("_") and v is not None}


def constraints(model: Any, kind: str) -> list[Any]:
    if not isinstance(model.prices, list):
        return []
    return [c.constraint for c in model.prices if type(c.constraint).__name__ == kind]


def outside_time_of_day(model: Any, day: date) -> datetime | None:
    """A moment of ``day`` at which none of the model's time-of-day prices applies."""
    windows = constraints(model, "TimeOfDateConstraint")
    for minute in range(0, 24 * 60, 15):
        moment = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=UTC)
        if not any(w.active(moment) for w in windows):
            return moment
    return None


def usage(
    input_tokens: int,
    cache_read: int = 0,
    cache_write: int = 0,
    cache_write_1h: int = 0,
    output: int = 0,
    reasoning: int = 0,
) -> NormalizedUsage:
    """Ours: input_tokens excludes the cache."""
    return NormalizedUsage(
        "", "", input_tokens, cache_read, cache_write, cache_write_1h, output, reasoning
    )


def as_genai_usage(u: NormalizedUsage) -> Usage:
    """genai-prices' Usage: input_tokens is the whole prompt; output includes reasoning."""
    return Usage(
        input_tokens=u.input_tokens + u.cache_read_tokens + u.cache_write_tokens,
        cache_read_tokens=u.cache_read_tokens,
        cache_write_tokens=u.cache_write_tokens,
        cache_write_1h_tokens=u.cache_write_1h_tokens,
        output_tokens=u.output_tokens,
        output_reasoning_tokens=u.reasoning_tokens,
    )


def prompt_of(prompt: int, output: int = 2_000, reasoning: int = 700) -> NormalizedUsage:
    """A prompt of exactly ``prompt`` tokens split over every input kind."""
    cache_read = prompt * 4 // 10
    cache_write = prompt // 10
    cache_write_1h = cache_write // 3
    return usage(
        prompt - cache_read - cache_write,
        cache_read,
        cache_write,
        cache_write_1h,
        output,
        reasoning,
    )


BASE_MIXES = (
    usage(0),  # nothing at all: only a per-request price remains
    usage(1_000, output=500),  # plain
    usage(3_000, 20_000, 5_000, 2_000, 1_500, 700),  # cache reads and writes, 1-hour writes
    usage(12, output=4_000, reasoning=3_999),  # nearly all reasoning
    usage(0, 7_000, 0, 0, 10),  # the whole prompt from the cache
    usage(0, 0, 9_000, 9_000, 10),  # only one-hour cache writes
    usage(400_000, 150_000, 50_000, 20_000, 9_000, 3_000),  # above every long-context tier
)


def tier_starts(model_price: Any) -> set[int]:
    starts = set()
    for value in model_price.__dict__.values():
        if type(value).__name__ == "TieredPrices":
            starts.update(t.start for t in value.tiers)
    return starts


def mixes_for(model_price: Any) -> list[NormalizedUsage]:
    """The base mixes, and prompts exactly at and one token above each tier threshold."""
    mixes = list(BASE_MIXES)
    for start in sorted(tier_starts(model_price)):
        mixes += [prompt_of(start), prompt_of(start + 1)]
    return mixes


def genai_total(u: NormalizedUsage, provider: Any, model: Any, at: datetime) -> tuple[Decimal, str]:
    """genai-prices' own total for ``model``: through ``genai_prices.calc_price`` by the model's
    id when that id finds this model; otherwise (an id its own match rule does not accept)
    through the model's ``calc_price``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unsupported usage key must not pass silently
        try:
            result = genai_prices.calc_price(
                as_genai_usage(u), model.id, provider_id=provider.id, genai_request_timestamp=at
            )
        except LookupError:
            result = None
        if result is not None and result.model is model:
            return result.total_price, "calc_price"
        return model.calc_price(
            as_genai_usage(u), provider, genai_request_timestamp=at
        ).total_price, "ModelInfo.calc_price"


def import_rows() -> list[ModelPrice]:
    """Unsaved rows, built from the snapshot as import_genai_prices builds them."""
    rows = []
    for provider in SNAPSHOT.providers:
        for position, model in enumerate(provider.models):
            versions, _notes = catalog._versions(model)
            match = catalog._clause_to_json(model.match)
            for effective_from, model_price in versions:
                fields, _left_out = catalog._price_fields(model_price)
                fields["time_windows"] = catalog._time_windows(model, model_price)
                rows.append(
                    ModelPrice(
                        provider=provider.id,
                        model=model.id,
                        match=match,
                        position=position,
                        effective_from=effective_from,
                        **fields,
                    )
                )
    return rows


CATALOG = catalog.Catalog(import_rows())


@dataclass
class Comparison:
    compared: set[tuple[str, str]]
    excluded: Counter
    checks: int
    via: Counter
    mismatches: list[tuple]
    features: Counter


def compare_all() -> Comparison:
    result = Comparison(set(), Counter(), 0, Counter(), [], Counter())
    for provider in SNAPSHOT.providers:
        for model in provider.models:
            entry = CATALOG.by_id[(provider.id, model.id.lower())]
            assert (entry.provider, entry.model) == (provider.id, model.id)
            time_of_day = bool(constraints(model, "TimeOfDateConstraint"))
            moments = [NOW]
            for constraint in constraints(model, "StartDateConstraint"):
                start = datetime.combine(constraint.start_date, time(12), tzinfo=UTC)
                moments += [start, start - timedelta(days=1)]
            if time_of_day:  # agree only where no time-of-day price applies
                moments = [outside_time_of_day(model, m.date()) for m in moments]
            unmodelled = priced_keys(model.get_prices(NOW)) - OUR_PRICE_KEYS
            if unmodelled:
                result.excluded[", ".join(sorted(unmodelled))] += 1
                continue
            if any(m is None for m in moments):
                result.excluded["time-of-day price at every hour"] += 1
                continue
            result.compared.add((provider.id, model.id))
            if time_of_day:
                result.features["time-of-day (compared off its windows)"] += 1
            for at in moments:
                ours = entry.version_at(at)
                if ours is None:
                    continue  # no version yet: we refuse (UnknownModel), genai-prices guesses
                theirs = model.get_prices(at)
                if priced_keys(theirs) - OUR_PRICE_KEYS:
                    continue  # an older version with kinds we do not rate
                for key in priced_keys(theirs):
                    result.features[key] += 1
                if tier_starts(theirs):
                    result.features["tiers"] += 1
                for u in mixes_for(theirs):
                    expected, via = genai_total(u, provider, model, at)
                    result.via[via] += 1
                    got = catalog.cost_of(ours, u).total
                    result.checks += 1
                    if got != expected:
                        result.mismatches.append((provider.id, model.id, at, u, got, expected))
    return result


# --- cost_of against genai-prices -----------------------------------------------------------------


def test_cost_of_agrees_exactly_with_genai_prices_for_every_representable_model():
    result = compare_all()
    models = sum(len(p.models) for p in SNAPSHOT.providers)
    print(
        f"\ncost_of vs genai_prices.calc_price: {len(result.compared)} of {models} models "
        f"compared ({result.checks} usage/time checks; {dict(result.via)}); "
        f"{sum(result.excluded.values())} excluded: {dict(result.excluded.most_common())}; "
        f"features covered: {dict(result.features)}"
    )
    assert result.mismatches == []
    # The comparison is not vacuous: most models, every price kind we model, tiers, dates.
    assert len(result.compared) + sum(result.excluded.values()) == models
    assert len(result.compared) >= 0.9 * models
    for feature in (*OUR_PRICE_KEYS, "tiers", "time-of-day (compared off its windows)"):
        assert result.features[feature] > 0, feature
    # Every exclusion names a price key we do not rate (or a price that is all time-of-day).
    assert all(
        reason == "time-of-day price at every hour"
        or set(reason.split(", ")).isdisjoint(OUR_PRICE_KEYS)
        for reason in result.excluded
    )


def _representable_models() -> list[tuple[Any, Any]]:
    found = []
    for provider in SNAPSHOT.providers:
        for model in provider.models:
            if constraints(model, "TimeOfDateConstraint"):
                continue
            if not priced_keys(model.get_prices(NOW)) - OUR_PRICE_KEYS:
                found.append((provider, model))
    return found


REPRESENTABLE_MODELS = _representable_models()
COUNT = st.integers(min_value=0, max_value=2_000_000)


@settings(max_examples=400, deadline=None)
@given(
    which=st.integers(min_value=0, max_value=len(REPRESENTABLE_MODELS) - 1),
    uncached=COUNT,
    cache_read=COUNT,
    cache_write=COUNT,
    one_hour_share=st.fractions(min_value=0, max_value=1),
    output=COUNT,
    reasoning_share=st.fractions(min_value=0, max_value=1),
)
def test_cost_of_agrees_with_genai_prices_on_random_usage(
    which, uncached, cache_read, cache_write, one_hour_share, output, reasoning_share
):
    provider, model = REPRESENTABLE_MODELS[which]
    u = usage(
        uncached,
        cache_read,
        cache_write,
        int(cache_write * one_hour_share),
        output,
        int(output * reasoning_share),
    )
    ours = CATALOG.by_id[(provider.id, model.id.lower())].version_at(NOW)
    expected, _ = genai_total(u, provider, model, NOW)
    assert catalog.cost_of(ours, u).total == expected


def unsaved_price(**prices: Any) -> ModelPrice:
    columns = {
        k: (Decimal(v) if v is not None else None) for k, v in prices.items() if k != "tiers"
    }
    return ModelPrice(provider="acme", model="m", tiers=prices.get("tiers") or [], **columns)


def test_cost_of_prices_each_kind_at_its_parent_when_it_has_no_price_of_its_own():
    # 1,000 uncached input, 2,000 cache reads, 3,000 cache writes of which 1,000 for an hour,
    # 4,000 output of which 1,500 reasoning; one request.
    u = usage(1_000, 2_000, 3_000, 1_000, 4_000, 1_500)
    only_input_and_output = unsaved_price(input_mtok="2", output_mtok="8")
    cost = catalog.cost_of(only_input_and_output, u)
    assert cost.input == Decimal("0.002")  # 1,000 × 2 / 1M
    assert cost.cache_read == Decimal("0.004")  # at the input price
    assert cost.cache_write == Decimal("0.006")  # both TTLs at the input price
    assert cost.output == Decimal("0.032")  # reasoning at the output price
    assert cost.requests == 0
    assert cost.total == Decimal("0.044")

    every_kind = unsaved_price(
        input_mtok="2",
        output_mtok="8",
        cache_read_mtok="0.2",
        cache_write_mtok="2.5",
        cache_write_1h_mtok="4",
        reasoning_mtok="10",
        requests_kcount="5",
    )
    cost = catalog.cost_of(every_kind, u)
    assert cost.cache_read == Decimal("0.0004")  # 2,000 × 0.2 / 1M
    assert cost.cache_write == Decimal("0.009")  # 2,000 × 2.5 / 1M + 1,000 × 4 / 1M
    assert cost.output == Decimal("0.035")  # 2,500 × 8 / 1M + 1,500 × 10 / 1M
    assert cost.requests == Decimal("0.005")  # 5 per thousand requests
    assert cost.total == Decimal("0.0514")  # 0.002 + 0.0004 + 0.009 + 0.035 + 0.005

    one_hour_only = unsaved_price(input_mtok="2", output_mtok="8", cache_write_1h_mtok="4")
    # 5-minute writes at the input price (no cache-write price), 1-hour writes at 4
    assert catalog.cost_of(one_hour_only, u).cache_write == Decimal("0.008")


def test_a_tier_prices_every_token_once_the_whole_prompt_is_above_it():
    tiered = unsaved_price(
        input_mtok="1.25",
        output_mtok="10",
        cache_read_mtok="0.125",
        tiers=[
            {"above_input_tokens": 200_000, "input_mtok": "2.5", "output_mtok": "15"},
            {"above_input_tokens": 500_000, "input_mtok": "5"},
        ],
    )
    # Prompt exactly 200,000 (150,000 uncached + 50,000 cached): not above the tier.
    at_threshold = catalog.cost_of(tiered, usage(150_000, 50_000, output=1_000)).total
    assert at_threshold == Decimal("0.1875") + Decimal("0.00625") + Decimal("0.01")
    # One more cached token: input and output at the tier's prices; cache reads keep theirs.
    above = catalog.cost_of(tiered, usage(150_000, 50_001, output=1_000)).total
    assert above == Decimal("0.375") + Decimal("0.006250125") + Decimal("0.015")
    # Above both: the higher tier's input, the lower tier's output (no output price there).
    far = catalog.cost_of(tiered, usage(600_000, output=1_000)).total
    assert far == Decimal("3") + Decimal("0.015")


def test_every_model_id_resolves_to_itself_and_agrees_with_genai_prices_model_lookup():
    """Each model id finds its own row; where genai-prices finds a model for the id (within
    the provider or its fallbacks), it is the same model."""
    genai_found = ours_only = 0
    for provider in SNAPSHOT.providers:
        for model in provider.models:
            found = CATALOG.resolve(provider.id, model.id)
            assert (found.provider, found.model) == (provider.id, model.id)
            try:
                their_provider, theirs = SNAPSHOT.find_provider_model(
                    model.id, None, provider.id, None
                )
            except LookupError:
                ours_only += 1
                continue
            genai_found += 1
            assert (their_provider.id, theirs.id) == (provider.id, model.id)
    assert genai_found > 2000
    print(f"\nmodel ids: {genai_found} found by both, {ours_only} only by our exact-id rule")


# --- time-of-day prices ---------------------------------------------------------------------------


def time_of_day_models() -> list[tuple[Any, Any]]:
    return [
        (provider, model)
        for provider in SNAPSHOT.providers
        for model in provider.models
        if constraints(model, "TimeOfDateConstraint")
    ]


def test_time_of_day_prices_become_the_versions_time_windows():
    models = time_of_day_models()
    assert models, "the snapshot has time-of-day prices"
    for _provider, model in models:
        versions, _notes = catalog._versions(model)
        windows = [catalog._time_windows(model, price) for _, price in versions]
        assert any(windows), model.id
        for window in (w for ws in windows for w in ws):
            assert window["start"] != window["end"] and window.get("input_mtok"), model.id


def test_a_model_with_time_of_day_prices_is_never_costed_below_the_provider_price():
    u = usage(10_000, 2_000, output=1_000)
    below = []
    for provider, model in time_of_day_models():
        entry = CATALOG.by_id[(provider.id, model.id.lower())]
        for minute in range(0, 24 * 60, 30):
            at = datetime.combine(NOW.date(), time(minute // 60, minute % 60), tzinfo=UTC)
            ours = catalog.cost_of(entry.version_at(at), u, at).total
            theirs = model.calc_price(as_genai_usage(u), provider, genai_request_timestamp=at)
            if ours < theirs.total_price:
                below.append((model.id, at.time(), ours, theirs.total_price))
    assert below == []


# --- the import (database) ------------------------------------------------------------------------


def snapshot_model(provider_id: str, model_id: str) -> Any:
    provider = next(p for p in SNAPSHOT.providers if p.id == provider_id)
    return next(m for m in provider.models if m.id == model_id)


def columns(row: ModelPrice) -> dict[str, Any]:
    return {
        field: getattr(row, field)
        for field in (*catalog.PRICE_COLUMNS.values(), "tiers", "effective_from", "source")
    }


@pytest.mark.django_db
def test_import_creates_rows_once_leaves_manual_rows_and_dates_a_changed_price_from_the_import():
    # Finance staff's own rows: a model genai-prices does not know, and a negotiated version
    # of one it does.
    own_model = ModelPrice.objects.create(
        provider="openai",
        model="acme-fine-tune",
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        input_mtok=Decimal("7"),
        output_mtok=Decimal("21"),
    )
    assert snapshot_model("anthropic", "claude-sonnet-4-5")  # exists in the snapshot
    negotiated = ModelPrice.objects.create(
        provider="anthropic",
        model="claude-sonnet-4-5",
        match={"starts_with": "claude-sonnet-4-5"},
        effective_from=datetime(2026, 5, 1, tzinfo=UTC),
        input_mtok=Decimal("2.1"),
        output_mtok=Decimal("11"),
    )
    manual_before = {row.pk: columns(row) for row in (own_model, negotiated)}

    # 1. First import, through the management command.
    out = io.StringIO()
    call_command("load_model_prices", stdout=out)
    model_count = sum(len(p.models) for p in SNAPSHOT.providers)
    # A model finance staff priced by hand (claude-sonnet-4-5) is left to them entirely.
    sonnet = snapshot_model("anthropic", "claude-sonnet-4-5")
    version_count = sum(
        len(catalog._versions(m)[0])
        for p in SNAPSHOT.providers
        for m in p.models
        if (p.id, m.id) != ("anthropic", sonnet.id)
    )
    imported = ModelPrice.objects.exclude(source="manual")
    assert imported.count() == version_count
    assert out.getvalue() == (
        f"genai-prices {genai_prices.__version__}: {model_count} models; {version_count} price "
        "versions added, 0 future versions corrected, 0 unchanged, 1 skipped\n"
    )
    assert set(imported.values_list("source", flat=True)) == {
        f"genai-prices {genai_prices.__version__}"
    }
    gpt_4o = imported.get(provider="openai", model="gpt-4o")
    assert (gpt_4o.input_mtok, gpt_4o.output_mtok, gpt_4o.cache_read_mtok) == (
        Decimal("2.5"),
        Decimal("10"),
        Decimal("1.25"),
    )
    assert gpt_4o.effective_from == EPOCH
    assert "web_searches_kcount" in gpt_4o.notes  # priced by OpenAI, not rated here
    assert not imported.filter(model="acme-fine-tune").exists()

    # 2. The previous import had another price for gpt-4o (as if the snapshot changed since).
    ModelPrice.objects.filter(pk=gpt_4o.pk).update(input_mtok=Decimal("2"))
    second_run = datetime.now(UTC)
    report = catalog.import_genai_prices(now=second_run)
    assert (report.models, report.created, report.skipped) == (model_count, 1, 1)
    assert ModelPrice.objects.exclude(source="manual").count() == version_count + 1
    new = ModelPrice.objects.get(provider="openai", model="gpt-4o", effective_from=second_run)
    assert (new.input_mtok, new.output_mtok, new.cache_read_mtok) == (
        Decimal("2.5"),
        Decimal("10"),
        Decimal("1.25"),
    )
    assert (new.match, new.position) == (gpt_4o.match, gpt_4o.position)

    # Events before the import are still priced by the old version, from it on by the new.
    before = catalog.find_price(
        provider="openai", model="gpt-4o-2024-08-06", at=second_run - timedelta(microseconds=1)
    )
    after = catalog.find_price(provider="openai", model="gpt-4o-2024-08-06", at=second_run)
    assert (before.pk, before.input_mtok) == (gpt_4o.pk, Decimal("2"))
    assert (after.pk, after.input_mtok) == (new.pk, Decimal("2.5"))

    # Manual rows: untouched by either run, and nothing imported in their place.
    for pk, values in manual_before.items():
        assert columns(ModelPrice.objects.get(pk=pk)) == values
    assert ModelPrice.objects.filter(source="manual").count() == 2
    assert not ModelPrice.objects.filter(model="acme-fine-tune").exclude(source="manual").exists()
    sonnet_versions = ModelPrice.objects.filter(provider="anthropic", model="claude-sonnet-4-5")
    assert not sonnet_versions.exclude(source="manual").exists()


@pytest.mark.django_db
def test_a_corrected_historical_price_does_not_replace_the_current_price():
    model = snapshot_model("anthropic", "claude-opus-4-6")
    versions = sorted(catalog._versions(model)[0], key=lambda v: v[0])
    assert len(versions) == 2 and versions[1][0] < NOW  # EPOCH (tiered) and 2026-03-13 (flat)
    catalog.import_genai_prices()
    # The earlier import had another (historical) output price for the first version.
    ModelPrice.objects.filter(
        provider="anthropic", model="claude-opus-4-6", effective_from=versions[0][0]
    ).update(output_mtok=Decimal("24"))
    second_run = datetime.now(UTC)
    catalog.import_genai_prices(now=second_run)
    current = catalog.find_price(
        provider="anthropic", model="claude-opus-4-6", at=second_run + timedelta(seconds=1)
    )
    # Whatever the import does with the old version, the price from now on is the snapshot's
    # current one: a 300,000-token prompt is costed as genai-prices costs it today.
    u = usage(300_000, output=1_000)
    provider = next(p for p in SNAPSHOT.providers if p.id == "anthropic")
    expected = model.calc_price(as_genai_usage(u), provider, genai_request_timestamp=second_run)
    assert catalog.cost_of(current, u).total == expected.total_price


@pytest.mark.django_db
def test_a_revised_future_price_does_not_apply_before_its_date():
    model = snapshot_model("google", "gemini-3.6-flash")
    versions = sorted(catalog._versions(model)[0], key=lambda v: v[0])
    assert [v[0] for v in versions] == [EPOCH, datetime(2027, 1, 1, tzinfo=UTC)]
    assert NOW < versions[1][0]
    catalog.import_genai_prices()
    # The earlier import had another price announced for 2027.
    ModelPrice.objects.filter(
        provider="google", model="gemini-3.6-flash", effective_from=versions[1][0]
    ).update(input_mtok=Decimal("1.4"))
    second_run = datetime.now(UTC)
    catalog.import_genai_prices(now=second_run)
    provider = next(p for p in SNAPSHOT.providers if p.id == "google")
    u = usage(10_000, output=1_000)
    for at in (second_run + timedelta(seconds=1), versions[1][0] + timedelta(days=1)):
        row = catalog.find_price(provider="google", model="gemini-3.6-flash", at=at)
        expected = model.calc_price(as_genai_usage(u), provider, genai_request_timestamp=at)
        assert catalog.cost_of(row, u).total == expected.total_price, at


@pytest.mark.django_db
def test_a_manual_row_at_a_snapshot_versions_date_does_not_break_the_import():
    # The shape of tests/conftest.py's `model_prices` rows: manual, from 2000-01-01.
    manual = ModelPrice.objects.create(
        provider="openai",
        model="gpt-4o",
        effective_from=EPOCH,
        input_mtok=Decimal("2"),
        output_mtok=Decimal("8"),
    )
    try:
        catalog.import_genai_prices()
    except IntegrityError as error:
        pytest.fail(f"the import failed: {error}")
    assert columns(ModelPrice.objects.get(pk=manual.pk)) == columns(manual)
    assert ModelPrice.objects.filter(provider="anthropic").exists()


# --- find_price -----------------------------------------------------------------------------------


def price(provider: str, model: str, **fields: Any) -> ModelPrice:
    """A catalog row, effective since EPOCH, 1 / 2 USD per million input / output tokens
    unless given; not invalidating the catalog cache (the tests say when they do)."""
    return ModelPriceFactory(provider=provider, model=model, **fields)


def found(model: str, provider: str = "openai", at: datetime = NOW) -> tuple[str, str]:
    row = catalog.find_price(provider=provider, model=model, at=at)
    return row.provider, row.model


@pytest.mark.django_db
def test_find_price_by_exact_id_match_rule_and_compact_date(model_prices):
    assert found("gpt-4o") == ("openai", "gpt-4o")
    assert found("gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert found("gpt-4o-2024-08-06") == ("openai", "gpt-4o")  # {"starts_with": "gpt-4o-2024"}
    assert found("GPT-4o-2024-08-06") == ("openai", "gpt-4o")  # names are case-insensitive
    assert found("gpt-4o-mini-2024-07-18") == ("openai", "gpt-4o-mini")
    assert found("claude-sonnet-4-5-20250929", "anthropic") == ("anthropic", "claude-sonnet-4-5")
    assert found("gemini-2.5-pro-preview-06-05", "google") == ("google", "gemini-2.5-pro")
    # The id matches exactly even when the row's rule would not accept it.
    price("acme", "acme-large", match={"starts_with": "acme-large-v"})
    price("acme", "acme-dated", match={"equals": "acme-dated-2025-01-15"}, position=1)
    catalog.invalidate()
    # A compact date (as LiteLLM and OpenRouter write it) is read as the dashed one.
    assert found("acme-dated-20250115", "acme") == ("acme", "acme-dated")
    with pytest.raises(UnknownModel):
        catalog.find_price(provider="acme", model="acme-dated-20250230", at=NOW)
    assert found("acme-large", "acme") == ("acme", "acme-large")
    assert found("acme-large-v3", "acme") == ("acme", "acme-large")
    with pytest.raises(UnknownModel):
        catalog.find_price(provider="acme", model="acme-largest", at=NOW)


@pytest.mark.django_db
def test_find_price_tries_rules_in_position_order():
    price("acme", "acme-pro-vision", match={"starts_with": "acme-pro-vision"}, position=0)
    price("acme", "acme-pro", match={"starts_with": "acme-pro"}, position=1)
    price("acme", "acme-mini", match={"contains": "mini"}, position=2)
    price("acme", "acme-mini-special", match={"ends_with": "-mini-special"}, position=3)
    price("acme", "acme-rx", match={"regex": r"^acme-rx-\d+$"}, position=4)
    price(
        "acme",
        "acme-and",
        match={"and": [{"starts_with": "acme-and"}, {"ends_with": "-eu"}]},
        position=5,
    )
    assert found("acme-pro-vision-0915", "acme") == ("acme", "acme-pro-vision")
    assert found("acme-pro-0915", "acme") == ("acme", "acme-pro")
    # Listed earlier, the generic rule wins over the more specific one listed later.
    assert found("x-mini-special", "acme") == ("acme", "acme-mini")
    assert found("acme-rx-12", "acme") == ("acme", "acme-rx")
    with pytest.raises(UnknownModel):
        catalog.find_price(provider="acme", model="acme-rx-12b", at=NOW)
    assert found("acme-and-2-eu", "acme") == ("acme", "acme-and")
    with pytest.raises(UnknownModel):
        catalog.find_price(provider="acme", model="acme-and-2-us", at=NOW)
    # Swap the positions: now the specific one comes first.
    ModelPrice.objects.filter(model="acme-mini").update(position=9)
    catalog.invalidate()
    assert found("x-mini-special", "acme") == ("acme", "acme-mini-special")
    assert found("x-mini", "acme") == ("acme", "acme-mini")


@pytest.mark.django_db
def test_find_price_falls_back_to_the_providers_genai_prices_names(model_prices):
    # Azure serves OpenAI's models; Google (Vertex) serves Anthropic's.
    assert found("gpt-4o-mini", "azure") == ("openai", "gpt-4o-mini")
    assert found("gpt-4o-2024-11-20", "azure") == ("openai", "gpt-4o")
    assert found("claude-sonnet-4-5@20250929", "google") == ("anthropic", "claude-sonnet-4-5")
    # No fallback the other way, nor from a provider genai-prices does not name.
    with pytest.raises(UnknownModel):
        catalog.find_price(provider="anthropic", model="gpt-4o", at=NOW)
    with pytest.raises(UnknownModel):
        catalog.find_price(provider="acme", model="gpt-4o", at=NOW)
    # The provider's own row comes before the fallback.
    price("azure", "gpt-4o-mini", match={"starts_with": "gpt-4o-mini"}, input_mtok=Decimal("0.2"))
    catalog.invalidate()
    assert found("gpt-4o-mini", "azure") == ("azure", "gpt-4o-mini")
    assert found("gpt-4o", "azure") == ("openai", "gpt-4o")


@pytest.mark.django_db
def test_find_price_refuses_unknown_models_and_times_before_the_first_version(model_prices):
    with pytest.raises(UnknownModel) as unknown:
        catalog.find_price(provider="openai", model="gpt-9-ultra", at=NOW)
    assert (unknown.value.code, unknown.value.param) == ("unknown_model", "properties.model")
    assert unknown.value.http_status == 422

    launch = datetime(2026, 6, 1, tzinfo=UTC)
    price("acme", "acme-new", effective_from=launch, input_mtok=Decimal("3"))
    price("acme", "acme-new", effective_from=launch + timedelta(days=30), input_mtok=Decimal("4"))
    catalog.invalidate()
    with pytest.raises(UnknownModel) as too_early:
        catalog.find_price(provider="acme", model="acme-new", at=launch - timedelta(microseconds=1))
    assert too_early.value.param == "timestamp"
    assert catalog.find_price(provider="acme", model="acme-new", at=launch).input_mtok == 3
    at_change = launch + timedelta(days=30)
    assert catalog.find_price(
        provider="acme", model="acme-new", at=at_change - timedelta(microseconds=1)
    ).input_mtok == Decimal("3")
    assert catalog.find_price(provider="acme", model="acme-new", at=at_change).input_mtok == 4
    assert catalog.find_price(provider="acme", model="acme-new", at=NOW).input_mtok == 4


@pytest.mark.django_db
def test_a_new_price_version_added_in_the_admin_keeps_the_models_match_rule(model_prices):
    # Finance adds a negotiated gpt-4o price from June on; match and position left as is.
    june = datetime(2026, 6, 1, tzinfo=UTC)
    negotiated = price("openai", "gpt-4o", effective_from=june, input_mtok=Decimal("2"))
    catalog.invalidate()
    assert found("gpt-4o") == ("openai", "gpt-4o")
    old = catalog.find_price(
        provider="openai", model="gpt-4o-2024-08-06", at=june - timedelta(days=1)
    )
    assert old.pk == model_prices["gpt-4o"].pk
    new = catalog.find_price(provider="openai", model="gpt-4o-2024-08-06", at=june)
    assert new.pk == negotiated.pk


# --- the per-process cache ------------------------------------------------------------------------


@pytest.mark.django_db
def test_catalog_cache_reloads_on_invalidate_and_when_rows_are_added(monkeypatch, model_prices):
    monkeypatch.setattr(catalog, "CATALOG_RECHECK_SECONDS", 3600)
    with pytest.raises(UnknownModel):
        catalog.find_price(provider="acme", model="acme-late", at=NOW)
    price("acme", "acme-late")
    with pytest.raises(UnknownModel):  # cached: not rechecked within the hour
        catalog.find_price(provider="acme", model="acme-late", at=NOW)
    catalog.invalidate()
    assert found("acme-late", "acme") == ("acme", "acme-late")

    monkeypatch.setattr(catalog, "CATALOG_RECHECK_SECONDS", 0)
    with pytest.raises(UnknownModel):
        catalog.find_price(provider="acme", model="acme-later", at=NOW)
    price("acme", "acme-later")  # no invalidate(): as if another process added it
    assert found("acme-later", "acme") == ("acme", "acme-later")
    # A new version of a known model, too.
    price("acme", "acme-later", effective_from=NOW - timedelta(hours=1), input_mtok=Decimal("9"))
    assert catalog.find_price(provider="acme", model="acme-later", at=NOW).input_mtok == 9


@pytest.mark.django_db
def test_catalog_cache_reloads_when_a_rows_match_rule_is_edited_elsewhere(monkeypatch):
    monkeypatch.setattr(catalog, "CATALOG_RECHECK_SECONDS", 0)
    price("acme", "acme-chat", match={"starts_with": "acme-chat-"})
    assert found("acme-chat-0915", "acme") == ("acme", "acme-chat")
    with pytest.raises(UnknownModel):
        catalog.find_price(provider="acme", model="acme-assistant-1", at=NOW)
    # The admin (another process) widens the rule: a plain UPDATE, no invalidate() here.
    ModelPrice.objects.filter(model="acme-chat").update(
        match={"or": [{"starts_with": "acme-chat-"}, {"starts_with": "acme-assistant-"}]}
    )
    assert found("acme-assistant-1", "acme") == ("acme", "acme-chat")
