"""The settings' production rules, each checked by importing the settings in a fresh
process with an environment of the test's making: DEBUG is off unless turned on; with it
off the secret key, the allowed hosts, the portal's address, the database and Redis must be
given (no default `*`, no 127.0.0.1, no fallback key, no embedded server started); the
development commands turn DEBUG on and fill in the development defaults."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as test_settings

REPO = Path(__file__).resolve().parent.parent

SHOW = (
    "import json, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'billing.project.settings'\n"
    "from django.conf import settings as s\n"
    "print(json.dumps({'DEBUG': s.DEBUG, 'SECRET_KEY': s.SECRET_KEY, "
    "'ALLOWED_HOSTS': s.ALLOWED_HOSTS, 'PORTAL_BASE_URL': s.PORTAL_BASE_URL, "
    "'DATABASE': s.DATABASES['default']['NAME'], 'REDIS_URL': s.REDIS_URL, "
    "'CSP': s.CONTENT_SECURITY_POLICY}))"
)


def run(args: list[str], env: dict[str, str], data_dir: Path) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        args,
        cwd=REPO,
        env={**base, "BILLING_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def load_settings(env: dict[str, str], data_dir: Path) -> dict | str:
    """The settings a process with ``env`` gets, or the error it refuses to start with."""
    result = run([sys.executable, "-c", SHOW], env, data_dir)
    if result.returncode != 0:
        return result.stderr.strip().splitlines()[-1]
    return json.loads(result.stdout.strip().splitlines()[-1])


def production_env() -> dict[str, str]:
    """Everything production must set (the servers are the test run's own)."""
    return {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "billing.example.com",
        "PORTAL_BASE_URL": "https://billing.example.com",
        "DATABASE_URL": os.environ.get("DATABASE_URL") or database_url(),
        "REDIS_URL": test_settings.REDIS_URL,
        # A payment provider: without one check --deploy warns (invoicing.W002, W003).
        "STRIPE_SECRET_KEY": "sk_live_placeholder",
        "STRIPE_WEBHOOK_SECRET": "whsec_placeholder",
    }


def database_url() -> str:
    db = test_settings.DATABASES["default"]
    host = db["HOST"]
    where = f"?host={host}" if host.startswith("/") else ""
    netloc = "" if where else f"{host}:{db['PORT'] or 5432}"
    return f"postgres://{db['USER']}@{netloc}/postgres{where}"


def no_embedded_server_started(data_dir: Path) -> bool:
    return not (data_dir / "postgres").exists() and not (data_dir / "redis").exists()


def test_with_nothing_set_the_settings_refuse_and_start_nothing(tmp_path):
    error = load_settings({}, tmp_path)
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY must be set" in error
    assert no_embedded_server_started(tmp_path)


def test_production_loads_with_everything_set_and_debug_is_off_by_default(tmp_path):
    env = production_env()
    loaded = load_settings(env, tmp_path)
    assert isinstance(loaded, dict), loaded
    assert loaded["DEBUG"] is False
    assert loaded["SECRET_KEY"] == env["DJANGO_SECRET_KEY"]
    assert loaded["ALLOWED_HOSTS"] == ["billing.example.com"]
    assert loaded["PORTAL_BASE_URL"] == "https://billing.example.com"
    assert "script-src 'self'" in loaded["CSP"] and "unsafe-inline" not in loaded["CSP"]
    assert no_embedded_server_started(tmp_path)


@pytest.mark.parametrize(
    "missing",
    ["DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "PORTAL_BASE_URL", "DATABASE_URL", "REDIS_URL"],
)
def test_production_refuses_to_start_without_each_required_setting(tmp_path, missing):
    env = {k: v for k, v in production_env().items() if k != missing}
    error = load_settings(env, tmp_path)
    assert isinstance(error, str) and f"ImproperlyConfigured: {missing} must be set" in error
    assert no_embedded_server_started(tmp_path)  # no embedded database or Redis instead


@pytest.mark.parametrize("value", ["", " ", ","])
def test_empty_allowed_hosts_are_refused_too(tmp_path, value):
    env = {**production_env(), "DJANGO_ALLOWED_HOSTS": value}
    assert "ImproperlyConfigured: DJANGO_ALLOWED_HOSTS must be set" in load_settings(env, tmp_path)


def test_debug_is_on_only_when_asked_and_then_has_development_defaults(tmp_path):
    env = {"DJANGO_DEBUG": "1", "DATABASE_URL": production_env()["DATABASE_URL"]}
    env["REDIS_URL"] = test_settings.REDIS_URL
    first, second = load_settings(env, tmp_path), load_settings(env, tmp_path)
    assert isinstance(first, dict), first
    assert first["DEBUG"] is True
    assert first["ALLOWED_HOSTS"] == ["*"]
    assert first["PORTAL_BASE_URL"] == "http://127.0.0.1:8000"
    # a random key made once for this data folder, never one written in the source
    assert len(first["SECRET_KEY"]) > 40 and first["SECRET_KEY"] == second["SECRET_KEY"]
    assert (tmp_path / "secret_key").read_text().strip() == first["SECRET_KEY"]
    assert load_settings(env, tmp_path / "other")["SECRET_KEY"] != first["SECRET_KEY"]
    for off in ("0", "false", "no", ""):
        assert load_settings({**env, "DJANGO_DEBUG": off}, tmp_path) == (
            "django.core.exceptions.ImproperlyConfigured: DJANGO_SECRET_KEY must be set: DEBUG "
            "is off (production). For development set DJANGO_DEBUG=1, or use `make run` / "
            "`make test`."
        )


def test_the_development_commands_turn_debug_on(tmp_path):
    """`make test`, the benchmarks (`billing.devtools.servers exec`) and `make run` (the same
    services_for_command) run their commands with the development defaults; variables
    already set are kept."""
    show = [sys.executable, "-c", SHOW]
    env = {k: production_env()[k] for k in ("DATABASE_URL", "REDIS_URL")}
    result = run(
        [sys.executable, "-m", "billing.devtools.servers", "exec", "--", *show], env, tmp_path
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["DEBUG"] is True
    assert loaded["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1", "[::1]"]
    kept = {**env, "DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "k" * 50}
    result = run(
        [sys.executable, "-m", "billing.devtools.servers", "exec", "--", *show], kept, tmp_path
    )
    assert json.loads(result.stdout.strip().splitlines()[-1])["DEBUG"] is False


def test_pytest_runs_in_development_mode():
    assert (
        os.environ["DJANGO_DEBUG"] == "1"
    )  # set by billing.devtools.pytest_plugin before the settings


def test_check_deploy_is_clean_with_the_production_settings(tmp_path):
    result = run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        production_env(),
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_without_a_payment_provider_and_with_offline_payments(tmp_path):
    env = production_env()
    del env["STRIPE_SECRET_KEY"], env["STRIPE_WEBHOOK_SECRET"]
    result = run([sys.executable, "manage.py", "check", "--deploy"], env, tmp_path)
    output = result.stdout + result.stderr
    assert "invoicing.W002" in output and "invoicing.W003" in output, output
    assert "invoicing.W001" not in output, output
    result = run(
        [sys.executable, "manage.py", "check", "--deploy"],
        {**env, "PAYMENTS_OFFLINE": "1"},
        tmp_path,
    )
    assert "invoicing.W001" in result.stdout + result.stderr
