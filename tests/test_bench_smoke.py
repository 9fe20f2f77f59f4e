"""The benchmarks are part of the product's promises: a smoke run of the ingest benchmark
(1-second runs, fewer clients) in the test suite, so a change that breaks it — or breaks
one of its checks: events stored once, Σ event amounts = the wallets' ledger movement,
counters = events, balances = Σ entries, Σ events of each usage transaction = its legs —
fails here, not in the next benchmark session. The figures issue 14's targets need (the
no-op request rate, the in-process rate) and the targets themselves must be in the JSON
line, and so must the open-loop runs' latencies (a proposed target, not the issue's).
It prints figures too short to mean anything; the targets are measured by `make
bench-ingest`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from tests.test_celery import database_url_of_test_db

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.django_db
def test_the_ingest_benchmark_runs_and_its_checks_pass(migrated_test_database_copy):
    env = {**os.environ, "DATABASE_URL": database_url_of_test_db()}
    # A bench database of its own: two test runs on one server must not drop each other's.
    name = f"{connection.settings_dict['NAME']}_bench_ingest"
    result = subprocess.run(
        [
            sys.executable,
            "bench/ingest.py",
            "--seconds",
            "1",
            "--single-clients",
            "4",
            "--batch-clients",
            "2",
            "--authorize-clients",
            "1",
            "--database-name",
            name,
            "--template-database",
            migrated_test_database_copy,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Verification: OK" in result.stdout, output[-4000:]
    ok_line = "OK   Σ events of each usage transaction = its legs"
    assert ok_line in result.stdout, output[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    rates = summary["events_per_second"]
    assert rates["noop_requests"] > 0 and rates["in_process"] > 0, rates
    assert rates["async"] > 0, rates  # accepted with Prefer: respond-async, then rated
    assert summary["async_accepted_to_posted_ms"]["p99"] is not None, summary
    assert "OK   async × 4: event rows = events accepted" in result.stdout, output[-4000:]
    targets = summary["targets"]
    assert targets["batch/raw_ceiling"]["target"] == 0.2
    assert targets["batch/raw_ceiling"]["stretch"] == 0.35
    assert targets["batch_p99_ms"]["target"] == 500
    assert targets["single/noop"]["target"] == 0.5
    assert targets["single/noop"]["value"] is not None
    assert targets["single_p99_ms"]["target"] == 100
    assert targets["authorize_p99_ms"]["target"] == 20
    assert all(t["met"] in (True, False) for t in targets.values()), targets
    # The open-loop runs (a proposed target, beside the and not among them): their
    # events pass the same checks, every scheduled request was answered, and the JSON line
    # holds the latencies from the scheduled send times.
    open_loop = summary["open_loop"]
    assert open_loop["label"] == "open loop at 0.5 × capacity (proposed target, not the issue's)"
    assert "open_loop" not in targets and "open-single" not in json.dumps(targets)
    for kind, clients in (("single", 4), ("batch", 2)):
        figures = open_loop[kind]
        assert figures["latency_from_scheduled_ms"]["p99"] is not None, figures
        assert figures["achieved_requests_per_second"] > 0, figures
        assert f"OK   open-{kind} × {clients}: every scheduled request answered" in result.stdout
        assert f"OK   open-{kind} × {clients}: event rows = events accepted" in result.stdout
