"""What the benchmarks share: the throw-away database, machine and server facts, and how
figures are printed. Each benchmark names its own database."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from billing import devservices  # imports no Django


def with_database(url: str, name: str, **params: str) -> str:
    """``url`` naming database ``name``; the query string (``host=/socket/dir`` …) is kept
    and ``params`` are added to it."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(path=f"/{name}", query=urlencode(query, safe="/")))


def database_origin(env_url: str | None, url: str) -> str:
    """Was the server given from outside, or is it billing.devservices' embedded one?
    (``devservices exec`` exports DATABASE_URL either way, so look at where it points.)"""
    if env_url is None:
        return "embedded (started from billing.devservices, DATABASE_URL unset)"
    socket_dir = dict(parse_qsl(urlsplit(url).query)).get("host") or urlsplit(url).hostname
    embedded_dir = devservices.data_dir() / "postgres"
    if socket_dir and Path(unquote(socket_dir)).resolve() == embedded_dir.resolve():
        return f"embedded (billing.devservices, socket in {embedded_dir})"
    return "external (DATABASE_URL set)"


def progress(message: str) -> None:
    """Progress goes to stderr; stdout holds the report and ends with the JSON line."""
    print(message, file=sys.stderr, flush=True)


def drop_database(server_url: str, name: str, *, recreate: bool = False) -> None:
    """Drop the database ``name`` (FORCE: ends any session left on it); with ``recreate``,
    create it again."""
    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        identifier = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
        if recreate:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(identifier))


@contextmanager
def bench_database(server_url: str, name: str, keep: bool) -> Iterator[None]:
    """A fresh database ``name`` for the run, dropped at the end unless ``keep``."""
    drop_database(server_url, name, recreate=True)
    try:
        yield
    finally:
        from django.apps import apps

        if apps.ready:
            from django.db import connections

            connections.close_all()
        if keep:
            progress(f"kept database {name}")
        else:
            drop_database(server_url, name)


def server_facts(conn: psycopg.Connection[Any]) -> dict[str, str]:
    names = (
        "server_version",
        "synchronous_commit",
        "fsync",
        "shared_buffers",
        "max_connections",
        "autovacuum",
    )
    facts = {
        name: str(conn.execute("SELECT current_setting(%s)", [name]).fetchone()[0])
        for name in names
    }
    facts["postgresql_version"] = facts.pop("server_version")
    return facts


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


def machine_facts() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model or platform.processor() or "unknown",
        "platform": platform.platform(),
        "python": platform.python_version(),
        # A busy machine skews every figure: the load before the runs is part of the result.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def fmt(value: float | None, pattern: str = "{:,.0f}") -> str:
    return "—" if value is None else pattern.format(value)
