"""A database of a test's own, for the tests that migrate back and forth: Django's default
connection points at it for the ``with`` block, and it is dropped afterwards, however the
block ends. The worker's test database never leaves the latest migrations, so nothing has
to migrate it forward again for the tests after (that took as long as the way back: a
minute or more), and a test failing half-way cannot leave it on an old schema."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

from bench.harness.db import clone_database, drop_database
from tests.test_celery import database_url_of_test_db


@contextmanager
def own_database(*, copy_of: str | None = None) -> Iterator[str]:
    """A new database next to the test database: empty (nothing migrated: the test migrates
    it as far as it needs), or with ``copy_of`` a copy of that migrated database (no one
    may be connected to it: the ``migrated_test_database_copy`` fixture's). Needs a
    ``transaction=True`` test: the connection is closed to switch databases."""
    url, test_database = database_url_of_test_db(), connection.settings_dict["NAME"]
    name = f"{test_database}_own"
    assert not connection.in_atomic_block, "a transaction=True test: the connection is closed"
    connection.close()
    if copy_of:
        clone_database(url, copy_of, name, file_copy=False)
    else:
        drop_database(url, name, recreate=True)
    connection.settings_dict["NAME"] = name
    try:
        yield name
    finally:
        connection.close()
        connection.settings_dict["NAME"] = test_database
        drop_database(url, name)
