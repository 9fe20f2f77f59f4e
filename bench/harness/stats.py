"""What a run measures besides CPU: ratios, medians and latency percentiles; what the
database's backends were doing (pg_stat_activity, sampled); and where the time of a Django
connection goes, statement by statement."""

from __future__ import annotations

import collections
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg

SAMPLE_INTERVAL = 0.05  # seconds between pg_stat_activity samples during a run


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values measured (None: not measured), 3 places."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def percentile_ms(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted seconds, in milliseconds."""
    if not ordered:
        return None
    return round(ordered[max(1, math.ceil(q * len(ordered))) - 1] * 1000, 2)


def latency_ms(seconds: Iterable[float]) -> dict[str, float | None]:
    """p50, p90, p99 and the maximum of latencies in seconds, in milliseconds."""
    ordered = sorted(seconds)
    return {
        "p50": percentile_ms(ordered, 0.50),
        "p90": percentile_ms(ordered, 0.90),
        "p99": percentile_ms(ordered, 0.99),
        "max": percentile_ms(ordered, 1.0),
    }


class Timer:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


# --- what the backends are doing ---------------------------------------------------------


def normalise_query(query: str) -> str:
    text = re.sub(r"\s+", " ", query).strip()
    text = re.sub(r"\(\$\d+(?:, \$\d+)*\)(?:, \(\$\d+(?:, \$\d+)*\))+", "(…), …", text)
    return text[:90]


def sample_activity(
    conn: psycopg.Connection[Any], database: str, names: list[str], seconds: float
) -> tuple[dict[str, float], dict[str, float]]:
    """What the backends of ``database`` named (application_name) ``names`` are doing,
    sampled for ``seconds``: the share of samples per wait event ("CPU" when active and not
    waiting; "client" when idle, i.e. waiting for the process on the other end: Python,
    the network, its loop), and the share of active samples per statement (the top 8)."""
    waits: collections.Counter[str] = collections.Counter()
    statements: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rows = conn.execute(
            "SELECT state, wait_event_type, wait_event, query FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = ANY(%s) AND pid <> pg_backend_pid()",
            [database, names],
        ).fetchall()
        for state, wait_type, wait_event, query in rows:
            if state == "active":
                waits[f"{wait_type}:{wait_event}" if wait_type else "CPU"] += 1
                statements[normalise_query(query or "")] += 1
            elif state == "idle in transaction":
                waits["client (in transaction)"] += 1
            else:
                waits["client (between transactions)"] += 1
        time.sleep(SAMPLE_INTERVAL)
    total = sum(waits.values()) or 1
    active = sum(statements.values()) or 1
    return (
        {label: round(n / total, 3) for label, n in waits.most_common()},
        {label: round(n / active, 3) for label, n in statements.most_common(8)},
    )


# --- every statement of a Django connection, timed ---------------------------------------


SAVEPOINT_ID = re.compile(r'"?s\d+_x\d+"?')
SPACES = re.compile(r"\s+")


def statement_label(text: str) -> str:
    return SPACES.sub(" ", SAVEPOINT_ID.sub("<sp>", text)).strip()


class QueryProfile:
    """Every statement Django sends on the connection, and every commit, timed (as the
    client sees it: round trip and server time). Install with ``connection.
    execute_wrapper(profile)`` and ``connection._commit = profile.wrap_commit(…)``."""

    def __init__(self) -> None:
        self.stats: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
        self.labels: dict[str, str] = {}  # SQL text → label (the regexes run once per text)

    def __call__(self, execute: Callable, sql_text: str, params: Any, many: bool, context: Any):
        started = time.perf_counter()
        try:
            return execute(sql_text, params, many, context)
        finally:
            elapsed = time.perf_counter() - started
            label = self.labels.get(sql_text)
            if label is None:
                label = self.labels[sql_text] = statement_label(sql_text)
            entry = self.stats[label]
            entry[0] += 1
            entry[1] += elapsed

    def wrap_commit(self, commit: Callable[[], None]) -> Callable[[], None]:
        def timed() -> None:
            started = time.perf_counter()
            try:
                commit()
            finally:
                entry = self.stats["COMMIT"]
                entry[0] += 1
                entry[1] += time.perf_counter() - started

        return timed

    def summary(self, wall: float, operations: int, unit: str) -> dict[str, Any]:
        """Statements, commits and time per operation (``unit``: "close" …), and by
        statement."""
        total_db = sum(s for _, s in self.stats.values())
        queries = sum(n for label, (n, _) in self.stats.items() if label != "COMMIT")
        per = max(operations, 1)
        rows = sorted(self.stats.items(), key=lambda item: -item[1][1])
        return {
            "statements": queries,
            "commits": self.stats["COMMIT"][0] if "COMMIT" in self.stats else 0,
            f"statements_per_{unit}": round(queries / per, 2),
            "database_seconds": round(total_db, 2),
            "python_seconds": round(wall - total_db, 2),
            f"ms_per_{unit}": round(wall / per * 1000, 3),
            f"database_ms_per_{unit}": round(total_db / per * 1000, 3),
            f"python_ms_per_{unit}": round((wall - total_db) / per * 1000, 3),
            "by_statement": [
                {
                    "statement": label,
                    "count": n,
                    f"per_{unit}": round(n / per, 2),
                    "total_seconds": round(s, 3),
                    "mean_ms": round(s / n * 1000, 3) if n else None,
                    "share_of_wall": round(s / wall, 3) if wall else None,
                }
                for label, (n, s) in rows
            ],
        }
