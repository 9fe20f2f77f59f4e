"""A fresh machine has no PostgreSQL or Redis: the embedded ones start, are reused, stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

REPO = Path(__file__).resolve().parent.parent


def servers(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "billing.devtools.servers", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_embedded_services_start_are_reused_and_stop(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env["BILLING_DATA_DIR"] = str(tmp_path / "data")
    try:
        started = servers(["start"], env)
        assert started.returncode == 0, started.stderr
        urls = dict(line.split("=", 1) for line in started.stdout.split())
        with psycopg.connect(urls["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert redis.Redis.from_url(urls["REDIS_URL"]).ping()

        again = servers(["start"], env)  # reused, not started twice
        assert dict(line.split("=", 1) for line in again.stdout.split()) == urls

        stopped = servers(["stop"], env)
        assert "embedded postgres: stopped" in stopped.stdout, stopped.stderr
        assert "embedded redis: stopped" in stopped.stdout
        status = servers(["status"], env).stdout
        assert "embedded postgres: stopped" in status and "embedded redis: stopped" in status
    finally:
        servers(["stop"], env)


def test_exec_reports_no_tests_collected_as_failure():
    env = {**os.environ, "DATABASE_URL": "postgresql://unused", "REDIS_URL": "redis://unused"}
    failed = servers(["exec", "--", sys.executable, "-c", "raise SystemExit(5)"], env)
    assert failed.returncode == 1
    passed = servers(["exec", "--", sys.executable, "-c", "raise SystemExit(0)"], env)
    assert passed.returncode == 0
    broken = servers(["exec", "--", sys.executable, "-c", "raise SystemExit(3)"], env)
    assert broken.returncode == 3
