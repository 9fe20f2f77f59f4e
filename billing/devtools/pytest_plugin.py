"""pytest runs in development mode (loaded first: ``-p billing.devtools.pytest_plugin`` in
pyproject.toml).

The settings are production's by default (DEBUG off, addresses required). A test run is a
development command like ``make run``: before pytest-django imports the settings, the
development defaults of ``billing.devtools.servers`` are filled in (variables already set are
kept). Tests that check the production rules import the settings in a subprocess with an
environment of their own.
"""

import contextlib
import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from billing.devtools import servers

servers.use_development_environment()


def _own_redis_database_per_worker() -> None:
    """Under pytest-xdist (``make test`` runs the suite in worker processes), each worker
    has its own test database (pytest-django names it ``test_<name>_gw<n>``) and here its
    own Redis database: the workers' rows have the same ids, so cache keys (throttles,
    idempotency, live fragments' stamps) and Celery queues would otherwise meet. The
    worker's database is the URL's, plus one plus the worker's number (of Redis's 16)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    url = os.environ.get("REDIS_URL", "")
    if not worker.startswith("gw") or not url:
        return
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    number = (base + 1 + int(worker.removeprefix("gw"))) % 16
    os.environ["REDIS_URL"] = urlunsplit(parts._replace(path=f"/{number}"))


_own_redis_database_per_worker()


def _empty_tables_quickly() -> None:
    """Empty the test database after a ``transaction=True`` test by DELETE, not TRUNCATE.

    Django's flush truncates every table (65 of them here): PostgreSQL gives each truncated
    table and index a new file, which took 1.3–2.7 s per test on this project's machines,
    while a test leaves rows in a handful of tables. Deleting from the tables that hold rows,
    with triggers and foreign-key checks off for the statement's transaction
    (``session_replication_role = replica``, which needs a superuser: the ledger's triggers
    refuse DELETE otherwise), leaves the same empty database in tens of milliseconds. Without
    a superuser, Django's own flush runs. Sequences are not reset, as flush is told here; the
    ``post_migrate`` signal is emitted as flush emits it (content types, permissions).
    """
    from django.core.management import call_command
    from django.core.management.sql import emit_post_migrate_signal
    from django.db import connections, transaction
    from django.test import testcases

    original = getattr(testcases.TransactionTestCase, "_fixture_teardown")  # noqa: B009 - private to the stubs

    def fixture_teardown(self: Any) -> None:
        if self.available_apps is not None or self.serialized_rollback:
            return original(self)
        for alias in self._databases_names(include_mirrors=False):
            connection = connections[alias]
            if connection.vendor != "postgresql":
                call_command("flush", verbosity=0, interactive=False, database=alias)
                continue
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_setting('is_superuser') = 'on'")
                superuser = cursor.fetchone()[0]
            if not superuser:
                call_command("flush", verbosity=0, interactive=False, database=alias)
                continue
            tables = sorted(
                connection.introspection.django_table_names(only_existing=True, include_views=False)
            )
            quote = connection.ops.quote_name
            with transaction.atomic(using=alias), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT " + ", ".join(f"EXISTS (SELECT FROM {quote(t)})" for t in tables)
                )
                found = zip(tables, cursor.fetchone(), strict=True)
                holding = [table for table, has_rows in found if has_rows]
                if holding:
                    cursor.execute("SET LOCAL session_replication_role = replica")
                    for table in holding:
                        cursor.execute(f"DELETE FROM {quote(table)}")
            emit_post_migrate_signal(0, False, alias)

    setattr(testcases.TransactionTestCase, "_fixture_teardown", fixture_teardown)  # noqa: B010


_empty_tables_quickly()


_SHARED_TEMPLATES: list[str] = []  # made or used by this worker, dropped at its end


def _migrate_once_for_all_workers() -> None:
    """Under pytest-xdist, the first worker to create its test database migrates it and
    copies it as a template; the others create theirs from that template (PostgreSQL's
    ``CREATE DATABASE … TEMPLATE``, Django's ``TEST["TEMPLATE"]``), then migrate finds
    nothing to apply. Migrating an empty database takes 40–70 s of a core, and the workers
    did it side by side on the same cores. A PostgreSQL advisory lock orders the workers; the
    template is named after the run (``PYTEST_XDIST_TESTRUNUID``), so two runs on one server
    never share one, and the first worker to finish drops it (a worker that comes later finds
    none and migrates, as before). ``--reuse-db`` keeps each worker's database: unchanged."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")
    if not worker.startswith("gw") or not run:
        return
    from django.db.backends.postgresql.creation import DatabaseCreation

    original = DatabaseCreation.create_test_db

    def create_test_db(
        self: Any,
        verbosity: int = 1,
        autoclobber: bool = False,
        serialize: bool = True,
        keepdb: bool = False,
    ) -> str:
        name = self._get_test_db_name()
        if keepdb or not name.endswith(f"_{worker}"):
            return original(self, verbosity, autoclobber, serialize, keepdb)
        template = f"{name.removesuffix(f'_{worker}')}_migrated_{run[:12]}"
        quote = self.connection.ops.quote_name
        test_settings = self.connection.settings_dict["TEST"]
        with self._nodb_cursor() as lock:
            lock.execute("SELECT pg_advisory_lock(hashtext(%s))", [template])
            try:
                lock.execute("SELECT 1 FROM pg_database WHERE datname = %s", [template])
                _SHARED_TEMPLATES.append(template)
                if lock.fetchone():
                    before = test_settings.get("TEMPLATE")
                    test_settings["TEMPLATE"] = template
                    try:
                        return original(self, verbosity, autoclobber, serialize, keepdb)
                    finally:
                        test_settings["TEMPLATE"] = before
                name = original(self, verbosity, autoclobber, serialize, keepdb)
                self.connection.close()  # a template is copied only while no one is on it
                lock.execute(f"CREATE DATABASE {quote(template)} TEMPLATE {quote(name)}")
                return name
            finally:
                lock.execute("SELECT pg_advisory_unlock(hashtext(%s))", [template])

    setattr(DatabaseCreation, "create_test_db", create_test_db)  # noqa: B010


_migrate_once_for_all_workers()


def pytest_sessionfinish() -> None:
    """Drop the template this worker made or used (if another worker has not yet; if another
    is copying it right now, that one drops it at its end). By psycopg itself: pytest-django
    blocks Django's database access outside tests."""
    _close_reclaimer()
    if not _SHARED_TEMPLATES:
        return
    import psycopg
    from django.db import connection
    from psycopg import sql

    params = {**connection.get_connection_params(), "dbname": "postgres", "autocommit": True}
    with psycopg.connect(**params) as server:
        for template in _SHARED_TEMPLATES:
            try:
                server.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(template))
                )
            except psycopg.Error:
                pass


# --- dead rows between tests -------------------------------------------------------------

_TEST_DATABASES: dict[str, str] = {}  # alias -> the test database pytest-django created
PAGES_TO_RECLAIM = 128  # 1 MB of 8 kB pages in an empty table
_reclaimer: Any = None  # one psycopg connection to the test database, autocommit
_UNRECLAIMABLE: set[int] = set()


def _record_test_databases() -> None:
    """Remember the name of each PostgreSQL test database once created (by whichever
    ``create_test_db`` is in place, the shared-template one above included)."""
    from django.db.backends.postgresql.creation import DatabaseCreation

    original = DatabaseCreation.create_test_db

    def create_test_db(self: Any, *args: Any, **kwargs: Any) -> str:
        name = original(self, *args, **kwargs)
        _TEST_DATABASES[self.connection.alias] = name
        return name

    setattr(DatabaseCreation, "create_test_db", create_test_db)  # noqa: B010


_record_test_databases()


def _close_reclaimer() -> None:
    global _reclaimer
    if _reclaimer is not None:
        with contextlib.suppress(Exception):
            _reclaimer.close()
        _reclaimer = None


def _reclaim_dead_rows() -> None:
    """Give the empty tables whose files have grown new, empty files, as a new test
    database has.

    A test's rows are rolled back and a seed's deleted, but their dead tuples stay in the
    table and index files until a VACUUM; with autovacuum off (as on this project's shared
    PostgreSQL) or behind, the bulk seeds of the reads-at-scale tests left 120,000 dead
    rows in a dozen tables, every later scan of them read thousands of pages, and the
    planner saw large tables where a fresh database has empty ones: the audit trail's
    tests after them took 16–70 s each instead of 1–3 s. After each test, a table of the
    test database that holds no row but whose file has reached ``PAGES_TO_RECLAIM`` pages
    is truncated, with the (empty) tables that reference it: nothing is lost, sequences
    go on, triggers do not fire (``session_replication_role = replica``: a superuser only,
    as for the fast teardown above), the planner's size estimates of the tables and their
    indexes are put back as they were (TRUNCATE resets them) and the column statistics
    are kept (TRUNCATE keeps them). Tables that hold rows (a class's committed seed) are
    left until they are emptied."""
    global _reclaimer
    if "default" not in _TEST_DATABASES:
        return
    import psycopg
    from django.db import connections
    from psycopg import sql

    connection = connections["default"]
    if connection.vendor != "postgresql":
        return
    tables: set[int] = set()
    try:
        if _reclaimer is None:
            params = {**connection.get_connection_params(), "autocommit": True}
            params["dbname"] = _TEST_DATABASES["default"]
            _reclaimer = psycopg.connect(**params)
            superuser = _reclaimer.execute(
                "SELECT current_setting('is_superuser') = 'on'"
            ).fetchone()
            if not (superuser and superuser[0]):
                _TEST_DATABASES.clear()  # the fast way needs a superuser: never again
                _close_reclaimer()
                return
        dead = [
            row[0]
            for row in _reclaimer.execute(
                "SELECT oid FROM pg_class WHERE relkind = 'r' AND relpersistence = 'p'"
                " AND relnamespace = 'public'::regnamespace"
                " AND pg_relation_size(oid) >= %s * current_setting('block_size')::int",
                [PAGES_TO_RECLAIM],
            ).fetchall()
        ]
        if not dead:
            return
        references = _reclaimer.execute(
            "SELECT conrelid, confrelid FROM pg_constraint WHERE contype = 'f'"
        ).fetchall()
        names = {
            oid: sql.Identifier(schema, table)
            for oid, schema, table in _reclaimer.execute(
                "SELECT c.oid, n.nspname, c.relname FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')"
            ).fetchall()
        }
        empty: dict[int, bool] = {}

        def is_empty(oid: int) -> bool:
            if oid not in empty:
                query = sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(names[oid])
                empty[oid] = _reclaimer.execute(query).fetchone()[0]
            return empty[oid]

        for table in dead:
            if table in _UNRECLAIMABLE:
                continue
            group, todo = {table}, [table]
            while todo:  # and every table that references one of them (TRUNCATE's rule)
                referenced_table = todo.pop()
                for referencing, referenced in references:
                    if referenced == referenced_table and referencing not in group:
                        group.add(referencing)
                        todo.append(referencing)
            if all(is_empty(oid) for oid in group):
                tables |= group
        if not tables:
            return
        with _reclaimer.transaction():
            # A class's set-up data, uncommitted in the test's connection, looks empty from
            # here and its locks hold the TRUNCATE off: give up at once, try again later.
            _reclaimer.execute("SET LOCAL lock_timeout = '50ms'")
            _reclaimer.execute("SET LOCAL session_replication_role = replica")
            # Locked first, then found empty again: a row another connection (a live
            # server's thread, a rater still running) committed since the look above stays.
            listed = sql.SQL(", ").join(names[oid] for oid in sorted(tables))
            _reclaimer.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(listed))
            empty.clear()
            if not all(is_empty(oid) for oid in tables):
                return
            sizes = _reclaimer.execute(
                "SELECT oid, relpages, reltuples, relallvisible FROM pg_class"
                " WHERE oid = ANY(%(t)s) OR oid IN (SELECT indexrelid FROM pg_index"
                " WHERE indrelid = ANY(%(t)s))",
                {"t": sorted(tables)},
            ).fetchall()
            _reclaimer.execute(sql.SQL("TRUNCATE {}").format(listed))
            with _reclaimer.cursor() as cursor:
                cursor.executemany(
                    "UPDATE pg_class SET relpages = %s, reltuples = %s, relallvisible = %s"
                    " WHERE oid = %s",
                    [(pages, tuples, visible, oid) for oid, pages, tuples, visible in sizes],
                )
    except psycopg.errors.LockNotAvailable:
        pass  # a test's leftover connection holds a lock: tried again after the next test
    except psycopg.Error:
        # A server restarted under a test, a table TRUNCATE refuses: the files stay as they
        # are (only slower); the tables are not tried again.
        _UNRECLAIMABLE.update(tables)
        _close_reclaimer()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    if nextitem is None:
        _close_reclaimer()  # the test database is dropped in this teardown
        return (yield)
    try:
        return (yield)
    finally:
        _reclaim_dead_rows()
