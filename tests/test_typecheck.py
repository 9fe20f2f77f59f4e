"""Type checking (issue 15): mypy with django-stubs and djangorestframework-stubs over the
four apps, configured in pyproject.toml and run by `make lint`. These tests run it in the
suite, check that it reads every application module, and prove that it refuses a type
error (so a configuration that checks nothing cannot pass).

mypy keeps its cache under .data/mypy (pyproject.toml): the first run of a checkout takes
about half a minute, later ones a few seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("billing", "ledger", "metering", "invoicing")
MYPY = str(Path(sys.executable).parent / "mypy")


def _mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MYPY, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _application_modules() -> list[Path]:
    return [
        path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.relative_to(ROOT).parts
    ]


# The whole check starts when this module is collected, so that it runs beside the rest of
# the suite (a first run of a fresh checkout takes 40–90 s of one core) instead of after it.
# Under pytest-xdist every worker collects every module: only the first one (gw0) starts it,
# as the other workers' checks would take as long and, but for the one that runs the test,
# never be read. A worker that runs the test without a check of its own runs mypy then, on
# the cache gw0's check has written by then (a few seconds).
_WHOLE_CHECK = (
    subprocess.Popen([MYPY], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0"
    else None
)


def test_the_apps_type_check_clean():
    if _WHOLE_CHECK is None:
        result = _mypy()
    else:
        stdout, stderr = _WHOLE_CHECK.communicate(timeout=600)
        result = subprocess.CompletedProcess(
            _WHOLE_CHECK.args, _WHOLE_CHECK.returncode, stdout, stderr
        )
    assert result.returncode == 0, result.stdout + result.stderr
    # every application module, migrations aside, is among the files checked
    checked = f"Success: no issues found in {len(_application_modules())} source files"
    assert checked in result.stdout, result.stdout


def test_a_type_error_is_refused(tmp_path):
    """A model field used as the wrong type, through a reverse relation (the wallet of a
    ledger account, declared in billing): refused. Only django-stubs' plugin, with the
    settings and apps it loads, knows ``Account.wallet``."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from ledger.models import Account\n"
        "def probe(account: Account) -> int:\n"
        "    return account.wallet.currency\n"
    )
    result = _mypy(str(probe))
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Incompatible return value type (got "str", expected "int")' in result.stdout
