"""Query plans for the reads-at-scale tests (docs/benchmarks.md, Session 11): what a read
really reads, from EXPLAIN (ANALYZE, FORMAT JSON) of the statements it sends. Statistics
are real (the tests ANALYZE after filling the tables). A bound must not depend on the plan
the statistics happen to pick (earlier tests in the same worker leave theirs: pg_class's
sizes outlive a rolled-back transaction): a test reads again with the planner pushed off
the plan it took (``nested_loops_off``, ``sorts_off``) to show its statement has no other
plan worth taking."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def explain(sql: str) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
        raw = cursor.fetchone()[0]
    return (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]


def statements(read: Callable[[], Any]) -> list[str]:
    """The SELECT statements ``read`` sends (a ``WITH … SELECT`` too: the audit trail's),
    as sent (parameters inlined)."""
    with CaptureQueriesContext(connection) as captured:
        read()
    return [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].lstrip().startswith(("SELECT", "WITH"))
    ]


def rows_read(read: Callable[[], Any], tables: set[str]) -> dict[str, Any]:
    """For every statement of ``read`` touching ``tables``: the rows its scans of them read
    (returned and removed by a filter, × loops, summed) and any sequential scan of them."""
    total, seq_scans = 0, []
    for sql in statements(read):
        for node in nodes(explain(sql)):
            if node.get("Relation Name") in tables:
                read = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
                total += int(read * node.get("Actual Loops", 1))
                if node["Node Type"] == "Seq Scan":
                    seq_scans.append(node["Relation Name"])
    return {"rows": total, "seq_scans": seq_scans}


def analyze(*tables: str) -> None:
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"ANALYZE {table}")


def nested_loops_off() -> None:
    """For the rest of the test's transaction, a planner that takes any other join first,
    as one planning from misleading statistics may (CI's PostgreSQL 15 planned a hash join
    over a scan of a whole table from the statistics earlier tests left): a read that is
    bounded only while the planner happens to pick a nested loop is then seen reading the
    table. A statement that cannot be planned otherwise reads the same rows."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_nestloop = off")


def sorts_off() -> None:
    """For the rest of the test's transaction, a planner that avoids sorting (as one that
    misjudges how many rows a filter keeps may): an ``ORDER BY … LIMIT`` bounded only while
    the planner happens to sort a few rows is then seen walking an index over the table."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
