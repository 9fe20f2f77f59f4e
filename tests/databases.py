"""A database of a test's own, for the tests that migrate back and forth: Django's default
connection points at it for the ``with`` block, and it is dropped afterwards, however the
block ends. The worker's test database never leaves the latest migrations, so nothing has
to migrate it forward again for the tests after (that took as long as the way back: a
minute or more), and a test failing half-way cannot leave it on an old schema."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction

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


@contextmanager
def committed_rows() -> Iterator[None]:
    """Rows written (and committed) in the ``with`` block to the test database outside any
    test's transaction — a seed that several tests read, each in its own rolled-back
    transaction — and removed at the block's end: every table empty before it is emptied
    again (by DELETE with triggers and foreign-key checks off, as after a ``transaction=True``
    test: billing.devtools.pytest_plugin); a table that held rows before must hold the same
    number after (the block may add to empty tables only). The planner's statistics are put
    back too (a seed's ANALYZE, committed here, would otherwise change the plans of the
    tests after, which read real plans: tests/plans.py): the column statistics of a table
    that had none before are removed, and every table's and index's size estimates restored.
    For a class- or module-scoped fixture, under ``django_db_blocker.unblock()``."""
    quote = connection.ops.quote_name
    introspection = connection.introspection
    tables = sorted(introspection.django_table_names(only_existing=True, include_views=False))

    def counts() -> dict[str, int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT " + ", ".join(f"(SELECT count(*) FROM {quote(t)})" for t in tables)
            )
            return dict(zip(tables, cursor.fetchone(), strict=True))

    def statistics() -> tuple[dict[int, tuple], dict[int, str]]:
        """The size estimates of the tables and their indexes; a fingerprint of each one's
        column statistics."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.oid, c.relpages, c.reltuples, c.relallvisible FROM pg_class c"
                " WHERE c.oid = ANY(%(t)s::regclass[]) OR c.oid IN (SELECT indexrelid"
                " FROM pg_index WHERE indrelid = ANY(%(t)s::regclass[]))",
                {"t": tables},
            )
            sizes = {oid: rest for oid, *rest in cursor.fetchall()}
            cursor.execute(
                "SELECT starelid::oid, md5(string_agg(s::text, ',' ORDER BY staattnum,"
                " stainherit)) FROM pg_statistic s WHERE starelid = ANY(%s::regclass[])"
                " GROUP BY starelid",
                [tables],
            )
            return sizes, dict(cursor.fetchall())

    assert not connection.in_atomic_block, "outside any test's transaction"
    before, (sizes, stats) = counts(), statistics()
    try:
        yield
    finally:
        after, (_, stats_after) = counts(), statistics()
        kept = {t: (before[t], after[t]) for t in tables if before[t] and after[t] != before[t]}
        redone = [oid for oid in stats if stats_after.get(oid) != stats[oid]]
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = replica")
            for table in tables:
                if not before[table] and after[table]:
                    cursor.execute(f"DELETE FROM {quote(table)}")
            new = [oid for oid in stats_after if oid not in stats]
            cursor.execute("DELETE FROM pg_statistic WHERE starelid = ANY(%s::oid[])", [new])
            for oid, (pages, tuples, visible) in sizes.items():
                cursor.execute(
                    "UPDATE pg_class SET relpages = %s, reltuples = %s, relallvisible = %s"
                    " WHERE oid = %s",
                    [pages, tuples, visible, oid],
                )
        assert not kept, f"tables that held rows before the seed changed: {kept}"
        assert not redone, f"statistics there before the seed changed (oids): {redone}"
