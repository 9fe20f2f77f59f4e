"""Shared fixtures. The suite runs on real PostgreSQL and Redis (see billing.devservices)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from ledger import services
from ledger.models import Account, NormalBalance


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def world(db) -> Account:
    """The outside world: debit-normal, hot, may go negative."""
    return services.ensure_system_account(
        code="@World", currency="USD", normal_balance=NormalBalance.DEBIT
    )


@pytest.fixture
def revenue(db) -> Account:
    return services.ensure_system_account(code="@Revenue", currency="USD")


@pytest.fixture
def make_wallet(db, world):
    """make_wallet(funds=..., allow_negative=..., negative_limit=..., currency=...)"""

    def make(
        funds: Decimal | str | int = 0,
        *,
        allow_negative: bool = False,
        negative_limit: Decimal | str | None = None,
        currency: str = "USD",
    ) -> Account:
        wallet = services.create_account(
            code=unique("wallet"),
            currency=currency,
            allow_negative=allow_negative,
            negative_limit=Decimal(negative_limit) if negative_limit is not None else None,
            owner_type="tests.customer",
            owner_id=unique("cus"),
        )
        if Decimal(funds):
            source = (
                world
                if currency == "USD"
                else services.ensure_system_account(
                    code="@World", currency=currency, normal_balance=NormalBalance.DEBIT
                )
            )
            services.post_transaction(
                reference=unique("fund"),
                legs=[services.debit(source, funds), services.credit(wallet, funds)],
            )
        return wallet

    return make


@pytest.fixture(autouse=True, scope="session")
def _celery_test_queue():
    """Tasks the tests enqueue without a worker (after-commit follow-ups) go to a queue of
    their own, emptied at the end, so that they never reach the broker's default queue a
    development worker (``make run``) consumes."""
    from billing.celery import app

    queue = f"tests-{uuid.uuid4().hex[:8]}"
    default = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    yield
    app.conf.task_default_queue = default
    with app.connection_for_write() as connection:
        try:
            connection.default_channel.queue_delete(queue)
        except Exception:  # noqa: BLE001 - it may never have been declared
            pass


@pytest.fixture(autouse=True)
def _fresh_metering_caches():
    """The catalog and plan caches are per process; tests change the tables under them."""
    from metering import catalog, rating

    catalog.invalidate()
    rating.clear_caches()
    yield
    catalog.invalidate()
    rating.clear_caches()


# A few real catalog rows (USD per million tokens, as genai-prices 0.2.3 has them).
MODEL_PRICES = [
    # provider, model, match, input, output, cache read, cache write, tiers
    (
        "openai",
        "gpt-4o",
        {"or": [{"equals": "gpt-4o"}, {"starts_with": "gpt-4o-2024"}]},
        "2.5",
        "10",
        "1.25",
        None,
        [],
    ),
    ("openai", "gpt-4o-mini", {"starts_with": "gpt-4o-mini"}, "0.15", "0.6", "0.075", None, []),
    (
        "anthropic",
        "claude-sonnet-4-5",
        {"starts_with": "claude-sonnet-4-5"},
        "3",
        "15",
        "0.3",
        "3.75",
        [],
    ),
    (
        "google",
        "gemini-2.5-pro",
        {"starts_with": "gemini-2.5-pro"},
        "1.25",
        "10",
        "0.125",
        None,
        [
            {
                "above_input_tokens": 200000,
                "input_mtok": "2.5",
                "output_mtok": "15",
                "cache_read_mtok": "0.25",
            }
        ],
    ),
]


@pytest.fixture
def model_prices(db):
    """Catalog rows for gpt-4o, gpt-4o-mini, claude-sonnet-4-5 and gemini-2.5-pro."""
    from datetime import UTC, datetime

    from metering import catalog
    from metering.models import ModelPrice

    rows = []
    for position, (provider, model, match, inp, out, read, write, tiers) in enumerate(MODEL_PRICES):
        rows.append(
            ModelPrice.objects.create(
                provider=provider,
                model=model,
                match=match,
                position=position,
                effective_from=datetime(2000, 1, 1, tzinfo=UTC),
                input_mtok=Decimal(inp),
                output_mtok=Decimal(out),
                cache_read_mtok=Decimal(read),
                cache_write_mtok=Decimal(write) if write else None,
                tiers=tiers,
            )
        )
    catalog.invalidate()
    return {row.model: row for row in rows}
