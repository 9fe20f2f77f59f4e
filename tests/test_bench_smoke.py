"""The benchmarks are part of the product's promises: a smoke run of the ingest benchmark
(1-second runs, fewer clients) in the test suite, so a change that breaks it — or breaks
one of its checks: events stored once, Σ event amounts = the wallets' ledger movement,
counters = events, balances = Σ entries — fails here, not in the next benchmark session.
It prints figures too short to mean anything; the targets are measured by `make
bench-ingest`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_celery import database_url_of_test_db

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.django_db
def test_the_ingest_benchmark_runs_and_its_checks_pass():
    env = {**os.environ, "DATABASE_URL": database_url_of_test_db()}
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
