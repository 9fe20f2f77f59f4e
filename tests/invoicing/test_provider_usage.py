"""Provider usage import (invoicing.provider_usage): OpenAI's and Anthropic's usage and cost
exports, as their Admin APIs publish them, read and matched per day and model against the
metered daily counters; a gap beyond the tolerance is listed, one within it is not."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import pytest
from django.core.management import call_command

from invoicing import provider_usage
from ledger.models import Transaction
from metering.models import ModelUsage
from tests.factories import SubscriptionFactory
from tests.invoicing.conftest import START

pytestmark = pytest.mark.django_db

D = Decimal
DAY = date(2026, 4, 10)
DAY_UNIX = 1775779200  # 2026-04-10T00:00:00Z

OPENAI_USAGE = {
    "object": "page",
    "data": [
        {
            "object": "bucket",
            "start_time": DAY_UNIX,
            "end_time": DAY_UNIX + 86400,
            "results": [
                {
                    "object": "organization.usage.completions.result",
                    "input_tokens": 1_000_000,  # cached included
                    "output_tokens": 200_000,
                    "input_cached_tokens": 400_000,
                    "num_model_requests": 120,
                    "project_id": None,
                    "user_id": None,
                    "api_key_id": None,
                    "model": "gpt-4o",
                    "batch": None,
                },
                {
                    "object": "organization.usage.completions.result",
                    "input_tokens": 5_000,
                    "output_tokens": 100,
                    "input_cached_tokens": 0,
                    "num_model_requests": 3,
                    "model": "gpt-4o-mini",
                },
            ],
        }
    ],
    "has_more": False,
    "next_page": None,
}

OPENAI_COSTS = {
    "object": "page",
    "data": [
        {
            "object": "bucket",
            "start_time": DAY_UNIX,
            "end_time": DAY_UNIX + 86400,
            "results": [
                {
                    "object": "organization.costs.result",
                    "amount": {"value": 2.0, "currency": "usd"},
                    "line_item": "gpt-4o, input",
                    "project_id": None,
                },
                {
                    "object": "organization.costs.result",
                    "amount": {"value": 2.0, "currency": "usd"},
                    "line_item": "gpt-4o, output",
                    "project_id": None,
                },
            ],
        }
    ],
    "has_more": False,
    "next_page": None,
}

ANTHROPIC_USAGE = {
    "data": [
        {
            "starting_at": "2026-04-10T00:00:00Z",
            "ending_at": "2026-04-11T00:00:00Z",
            "results": [
                {
                    "uncached_input_tokens": 1500,
                    "cache_creation": {
                        "ephemeral_1h_input_tokens": 1000,
                        "ephemeral_5m_input_tokens": 500,
                    },
                    "cache_read_input_tokens": 200,
                    "output_tokens": 500,
                    "server_tool_use": {"web_search_requests": 0},
                    "api_key_id": None,
                    "workspace_id": None,
                    "model": "claude-sonnet-4-5",
                    "service_tier": "standard",
                    "context_window": "0-200k",
                }
            ],
        }
    ],
    "has_more": False,
    "next_page": None,
}

ANTHROPIC_COSTS = {
    "data": [
        {
            "starting_at": "2026-04-10T00:00:00Z",
            "ending_at": "2026-04-11T00:00:00Z",
            "results": [
                {
                    "amount": "1.7500",  # cents
                    "currency": "USD",
                    "cost_type": "tokens",
                    "description": "Claude Sonnet 4.5 Usage - Input Tokens",
                    "model": "claude-sonnet-4-5",
                    "service_tier": "standard",
                    "token_type": "uncached_input_tokens",
                    "context_window": "0-200k",
                    "workspace_id": None,
                }
            ],
        }
    ],
    "has_more": False,
    "next_page": None,
}


def metered(provider: str, model: str, **counts) -> ModelUsage:
    subscription = SubscriptionFactory()
    return ModelUsage.objects.create(
        customer_id=subscription.customer_id,
        subscription=subscription,
        period_start=START,
        day=counts.pop("day", DAY),
        provider=provider,
        model=model,
        currency="USD",
        event_count=1,
        **counts,
    )


def test_openai_usage_and_costs_are_read_as_published():
    export = provider_usage.parse_export(json.dumps(OPENAI_USAGE), provider="openai")
    export = provider_usage.parse_export(json.dumps(OPENAI_COSTS), provider="openai", export=export)
    gpt4o = export.rows[(DAY, "gpt-4o")]
    assert (gpt4o.prompt, gpt4o.cache_read, gpt4o.output) == (1_000_000, 400_000, 200_000)
    assert gpt4o.cost == D("4.0")  # two line items of one model add up, as decimals
    assert export.rows[(DAY, "gpt-4o-mini")].cost is None
    assert export.formats == ["json", "json"]


def test_anthropic_usage_counts_the_whole_prompt_and_costs_are_cents():
    export = provider_usage.parse_export(json.dumps(ANTHROPIC_USAGE), provider="anthropic")
    provider_usage.parse_export(json.dumps(ANTHROPIC_COSTS), provider="anthropic", export=export)
    row = export.rows[(DAY, "claude-sonnet-4-5")]
    assert (row.prompt, row.cache_read, row.output) == (1500 + 200 + 1500, 200, 500)
    assert row.cost == D("0.0175")


def test_a_gap_beyond_the_tolerance_is_listed_and_one_within_it_is_not(settings):
    settings.PROVIDER_USAGE_TOKEN_TOLERANCE = D("0.01")
    settings.PROVIDER_USAGE_COST_TOLERANCE = D("0.05")
    # gpt-4o: prompt within 1 % (995,000 + cached 400,000 … of 1,000,000), output 10 % short,
    # cost 0.02 USD off (within); gpt-4o-mini not metered at all; gpt-4.1 metered only.
    metered(
        "openai",
        "gpt-4o",
        input_tokens=595_000,
        cache_read_tokens=400_000,
        output_tokens=180_000,
        cost=D("3.98"),
    )
    metered("openai", "gpt-4.1", input_tokens=10, output_tokens=1, cost=D("0.01"))
    metered("anthropic", "gpt-4o", input_tokens=1)  # another provider: never matched
    export = provider_usage.parse_export(json.dumps(OPENAI_USAGE), provider="openai")
    provider_usage.parse_export(json.dumps(OPENAI_COSTS), provider="openai", export=export)
    match = provider_usage.match_export(export)
    by_model = {row.model: row for row in match.rows}
    assert set(by_model) == {"gpt-4o", "gpt-4o-mini", "gpt-4.1"}
    [gap] = by_model["gpt-4o"].gaps
    assert (gap.kind, gap.theirs, gap.ours, gap.note) == (
        "output",
        "200000",
        "180000",
        "+20,000 tokens",
    )
    assert by_model["gpt-4o-mini"].gaps[0].note == "not metered by us"
    assert by_model["gpt-4.1"].gaps[0].note == "not in the provider's export"
    settings.PROVIDER_USAGE_TOKEN_TOLERANCE = D("0.2")
    assert provider_usage.match_export(export).rows[1].gaps == []  # gpt-4o within 20 %


def test_an_anthropic_cost_gap_is_found():
    metered(
        "anthropic",
        "claude-sonnet-4-5",
        input_tokens=1500,
        cache_read_tokens=200,
        cache_write_tokens=1500,
        output_tokens=500,
        cost=D("0.5"),
    )
    export = provider_usage.parse_export(json.dumps(ANTHROPIC_USAGE), provider="anthropic")
    provider_usage.parse_export(json.dumps(ANTHROPIC_COSTS), provider="anthropic", export=export)
    [row] = provider_usage.match_export(export).rows
    assert [(g.kind, g.theirs, g.ours) for g in row.gaps] == [("cost", "0.0175", "0.5")]


def test_csv_exports_of_both_providers():
    openai_csv = (
        "date,model,input_tokens,input_cached_tokens,output_tokens\n"
        "2026-04-10,gpt-4o,1000,0,10\n2026-04-10,gpt-4o,500,100,5\n"
    )
    export = provider_usage.parse_export(openai_csv.encode(), provider="openai")
    row = export.rows[(DAY, "gpt-4o")]
    assert (row.prompt, row.cache_read, row.output) == (1500, 100, 15)
    anthropic_csv = (
        "starting_at,model,uncached_input_tokens,cache_read_input_tokens,"
        "ephemeral_5m_input_tokens,output_tokens,amount\n"
        "2026-04-10T00:00:00Z,claude-sonnet-4-5,100,20,30,40,0.25\n"
    )
    export = provider_usage.parse_export(anthropic_csv, provider="anthropic")
    row = export.rows[(DAY, "claude-sonnet-4-5")]
    assert (row.prompt, row.cache_read, row.output, row.cost) == (150, 20, 40, D("0.25"))


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "a JSON object"),
        ('{"data": [{"results": []}]}', "no start_time"),
        ("{not json", "not valid JSON"),
        ("day,tokens\n1,2\n", "model column"),
        (
            '{"data": [{"start_time": 1775779200, "results": [{"input_tokens": 1.5}]}]}',
            "a count",
        ),
        (
            '{"data": [{"start_time": 1, "results": [{"amount": {"value": 1, "currency": '
            '"eur"}}]}]}',
            "only USD",
        ),
    ],
)
def test_malformed_exports_are_refused_with_where(content, message):
    with pytest.raises(provider_usage.ExportError, match=message):
        provider_usage.parse_export(content, provider="openai")


def test_the_command_prints_the_gaps_and_never_touches_the_ledger(tmp_path, capsys):
    path = tmp_path / "usage.json"
    path.write_text(json.dumps(OPENAI_USAGE))
    before = Transaction.objects.count()
    with pytest.raises(SystemExit) as exit_:
        call_command("import_provider_usage", "--provider", "openai", str(path))
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert "2026-04-10 gpt-4o: missing: theirs in export, ours — (not metered by us)" in out
    assert "2 day/model rows, 2 with gaps" in out
    assert Transaction.objects.count() == before
