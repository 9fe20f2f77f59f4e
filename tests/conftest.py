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


MIGRATED_COPY = "migrated_test_database_copy"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker, request):
    """pytest-django's test database, plus — when a collected test asks for
    ``migrated_test_database_copy`` — a copy of it made right after its creation, while
    nothing else is connected to it (PostgreSQL copies a template only then) and before any
    test wrote to it; dropped at the end. The benchmarks' smoke tests create their bench
    databases from the copy (a second, where migrating an empty one took about a minute),
    a migration test migrates a copy of it back and forth (tests/databases.py)."""
    items = request.session.items
    if not any(MIGRATED_COPY in getattr(item, "fixturenames", ()) for item in items):
        yield None
        return
    from django.db import connection, connections

    from bench.harness.db import clone_database, drop_database
    from tests.test_celery import database_url_of_test_db

    url, name = database_url_of_test_db(), f"{connection.settings_dict['NAME']}_migrated"
    with django_db_blocker.unblock():
        connections.close_all()
        clone_database(url, connection.settings_dict["NAME"], name, file_copy=False)
    yield name
    drop_database(url, name)


@pytest.fixture(scope="session")
def migrated_test_database_copy(django_db_setup) -> str:
    """The name of a copy of the freshly migrated test database, to copy again (a template:
    no one connects to it)."""
    assert django_db_setup, "made by django_db_setup when a collected test asks for it"
    return django_db_setup


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
