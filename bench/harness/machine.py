"""The facts every report starts with: the machine, where the database server came from,
and the server's settings that change the figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg

from billing.devtools import servers  # imports no Django


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


def database_origin(env_url: str | None, url: str) -> str:
    """Was the server given from outside, or is it billing.devtools.servers' embedded one?
    (``servers exec`` exports DATABASE_URL either way, so look at where it points.)"""
    if env_url is None:
        return "embedded (started from billing.devtools.servers, DATABASE_URL unset)"
    socket_dir = dict(parse_qsl(urlsplit(url).query)).get("host") or urlsplit(url).hostname
    embedded_dir = servers.data_dir() / "postgres"
    if socket_dir and Path(unquote(socket_dir)).resolve() == embedded_dir.resolve():
        return f"embedded (billing.devtools.servers, socket in {embedded_dir})"
    return "external (DATABASE_URL set)"


def server_url_and_facts() -> tuple[str, dict[str, Any]]:
    """The database server to use (DATABASE_URL, else the embedded one) and the machine's
    facts with where that server came from."""
    env_url = os.environ.get("DATABASE_URL")
    server_url = env_url or servers.database_url()
    machine = machine_facts()
    machine["database"] = database_origin(env_url, server_url)
    machine["database_embedded"] = machine["database"].startswith("embedded")
    return server_url, machine


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
