"""`make bench-reads` at a tiny scale in the suite, so the benchmark never rots: its seed
runs through every table it fills (and its consistency checks pass), every API, portal and
admin read it enumerates from the URLconf answers 200 through gunicorn, and the JSON line
holds each read's figures and its target. The figures mean nothing at this scale; the
targets are measured by `make bench-reads` (docs/benchmarks.md, Session 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from bench.harness.db import drop_database
from tests.test_celery import database_url_of_test_db

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.django_db
def test_the_reads_benchmark_seeds_times_every_read_and_its_checks_pass(
    migrated_test_database_copy,
):
    url = database_url_of_test_db()
    # a bench database of its own: two test runs on one server must not drop each other's
    name = f"{connection.settings_dict['NAME']}_bench_reads"
    command = [
        sys.executable,
        "bench/reads.py",
        "--scale",
        "0.0002",
        "--requests",
        "1",
        "--clients",
        "1,2",
        "--database-name",
        name,
        "--template-database",
        migrated_test_database_copy,
    ]
    try:
        result = subprocess.run(
            command,
            cwd=REPO,
            env={**os.environ, "DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        drop_database(url, name)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Verification: OK" in result.stdout, output[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["customers"] == 20 and summary["events"] == 2_000
    assert summary["transactions"] == 2_020
    reads = {row["route"]: row for row in summary["reads"]}
    reads.update({row["path"]: row for row in summary["reads"] if row["kind"] == "admin"})
    for route in (
        "/api/v1/customers/<str:external_id>/transactions",
        "/api/v1/customers/<str:external_id>/balance",
        "/api/v1/events",
        "/portal/usage/events.csv",
        "/portal/live/events",
        "/admin/",
        "/admin/ledger/transaction/",
        "/admin/billing/customer/",
        "/admin/invoicing/invoice/",
        "/admin/metering/event/",
    ):
        assert reads[route]["statuses"] == [200], route
        assert reads[route]["p95_ms_1"] is not None and reads[route]["p95_ms_2"] is not None
    assert {row["kind"] for row in summary["reads"]} == {"api", "portal", "admin"}
    assert all(row["target_ms"] in (50.0, 300.0) for row in summary["reads"])
