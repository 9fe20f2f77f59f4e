"""The benchmarks' databases: throw-away ones created next to the database DATABASE_URL
names (and file-level copies of them), dropped at the end unless kept; what is done to a
database before each timed run; and table-scan counts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bench.harness import REPO_DIR
from bench.harness.report import progress
from bench.harness.stats import Timer


def with_database(url: str, name: str, **params: str) -> str:
    """``url`` naming database ``name``; the query string (``host=/socket/dir`` …) is kept
    and ``params`` are added to it."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(path=f"/{name}", query=urlencode(query, safe="/")))


def drop_database(server_url: str, name: str, *, recreate: bool = False) -> None:
    """Drop the database ``name`` (FORCE: ends any session left on it); with ``recreate``,
    create it again."""
    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        identifier = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
        if recreate:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(identifier))


def clone_database(server_url: str, template: str, name: str, *, file_copy: bool = True) -> float:
    """A file-level copy of ``template`` (no one may be connected to it); its seconds.
    Without ``file_copy`` (a small template: a migrated, unseeded database), PostgreSQL 15's
    default WAL_LOG strategy copies it through the WAL, without the two checkpoints
    FILE_COPY costs (about a second against four for the suite's 16 MB, on a shared server)."""
    timer = Timer()
    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        if file_copy and int(conn.execute("SHOW server_version_num").fetchone()[0]) >= 150000:
            # PostgreSQL 15+: WAL_LOG, the default, writes the whole copy to WAL
            statement = sql.SQL("{} STRATEGY FILE_COPY").format(statement)
        conn.execute(statement)
    return timer.seconds


class Databases:
    """The run's throw-away databases on one server: each created fresh (or copied), all
    dropped when the ``with`` block ends, however it ends, unless ``keep``."""

    def __init__(self, server_url: str, *, keep: bool):
        self.server_url, self.keep = server_url, keep
        self.names: list[str] = []

    def create(self, name: str, *, template: str | None = None) -> str:
        """A fresh, empty database ``name`` (one left by an earlier run is dropped); its URL.
        With ``template``, a copy of that small (migrated, unseeded) database instead."""
        self.names.append(name)
        if template:
            clone_database(self.server_url, template, name, file_copy=False)
        else:
            drop_database(self.server_url, name, recreate=True)
        return with_database(self.server_url, name)

    def clone(self, template: str, name: str) -> float:
        """``name`` as a file-level copy of ``template``; the copy's seconds."""
        self.names.append(name)
        return clone_database(self.server_url, template, name)

    def __enter__(self) -> Databases:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        from django.apps import apps

        if apps.ready:  # Django's connections to them must not outlive them
            from django.db import connections

            connections.close_all()
        for name in self.names:
            if self.keep:
                progress(f"kept database {name}")
            else:
                drop_database(self.server_url, name)


def checkpoint(conn: psycopg.Connection[Any]) -> None:
    """Start each run with no checkpoint pending (needs superuser; skipped without)."""
    try:
        conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        pass


def analyze(conn: psycopg.Connection[Any]) -> None:
    """ANALYZE the whole database: statistics of the tables as they are now, as autovacuum
    keeps them in production. Besides the statistics, it invalidates the plans every
    session has cached on the analyzed tables (PL/pgSQL statements, foreign-key checks,
    prepared statements), so each is planned again for the tables' present size.
    Needs owner or superuser rights on the tables; a table it may not analyze is skipped
    with a warning by PostgreSQL itself."""
    conn.execute("ANALYZE")


def settle(conn: psycopg.Connection[Any]) -> None:
    """Before a run that follows runs which grew the tables (not timed): ANALYZE, then a
    CHECKPOINT. A bench database starts empty and grows by tens of thousands of rows a
    minute, on servers that may run with autovacuum off (a CI setting; the reports print
    it). Without the ANALYZE a long-lived connection keeps the plans it cached while the
    tables were nearly empty — a trigger's statement, a foreign-key check — and a later run
    measures their sequential scans, not the product (docs/benchmarks.md, 2026-12-06: the
    ingest batches at a third to a fifth of their rate). In production autovacuum's analyze keeps
    statistics and plans up to date; its own work is what these runs leave out."""
    analyze(conn)
    checkpoint(conn)


def migrate_in_subprocess(database_url: str) -> list[str]:
    """``manage.py migrate`` on ``database_url``, in a process of its own (this one's Django
    is set up for another database); returns the migrations it applied."""

    def applied() -> set[str]:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT app || '.' || name FROM django_migrations").fetchall()
        return {name for (name,) in rows}

    before = applied()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "--verbosity", "0"],
        cwd=REPO_DIR,
        env={**os.environ, "DATABASE_URL": database_url, "DJANGO_DEBUG": "0"},
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return sorted(applied() - before)


# Accounts whose balance rows do not add up to their entries (signed by the account's
# normal balance): 0 when the books reconcile.
ACCOUNTS_OFF_THEIR_ENTRIES = (
    "SELECT count(*) FROM ledger_account a"
    " LEFT JOIN (SELECT account_id, sum(posted) AS posted FROM ledger_balance"
    "            GROUP BY account_id) b ON b.account_id = a.id"
    " LEFT JOIN (SELECT account_id, sum(amount) AS signed FROM ledger_entry"
    "            GROUP BY account_id) e ON e.account_id = a.id"
    " WHERE coalesce(b.posted, 0) <> coalesce(e.signed, 0)"
    "       * CASE WHEN a.normal_balance = 'debit' THEN 1 ELSE -1 END"
)


# --- table scans -------------------------------------------------------------------------


def table_scans(url: str, tables: list[str]) -> dict[str, tuple[int, int, int]]:
    """table → (sequential scans, rows they read, index scans) so far. (Backends report
    their counts when their transactions end, at most once a second, and when they exit:
    read after the run's connections are closed.)"""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0) "
            "FROM pg_stat_user_tables WHERE relname = ANY(%s)",
            [tables],
        ).fetchall()
    return {name: (seq, read, idx) for name, seq, read, idx in rows}


def scans_during(
    before: dict[str, tuple[int, int, int]], url: str, tables: list[str]
) -> dict[str, dict[str, int]]:
    """The scans since ``before`` (table_scans), by table."""
    time.sleep(1.5)  # past the statistics flush interval
    after = table_scans(url, tables)
    return {
        table: {
            "seq_scans": after[table][0] - before.get(table, (0, 0, 0))[0],
            "seq_rows_read": after[table][1] - before.get(table, (0, 0, 0))[1],
            "index_scans": after[table][2] - before.get(table, (0, 0, 0))[2],
        }
        for table in sorted(after)
    }
