"""Shared fixtures. The suite runs on real PostgreSQL and Redis (see billing.devtools.servers)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from ledger import services
from ledger.models import Account, NormalBalance
from tests.factories import MODEL_PRICES, LedgerAccountFactory, create_model_prices, unique

__all__ = ["MODEL_PRICES", "unique"]


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
        return LedgerAccountFactory(
            funds=funds,
            allow_negative=allow_negative,
            negative_limit=negative_limit,
            currency=currency,
        )

    return make


@pytest.fixture(autouse=True, scope="session")
def _celery_test_queue():
    """Tasks the tests enqueue without a worker (after-commit follow-ups) go to a queue of
    their own, emptied at the end, so that they never reach the broker's default queue a
    development worker (``make run``) consumes."""
    from billing.project.celery import app

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


@pytest.fixture
def model_prices(db):
    """Catalog rows for gpt-4o, gpt-4o-mini, claude-sonnet-4-5 and gemini-2.5-pro."""
    return create_model_prices()
