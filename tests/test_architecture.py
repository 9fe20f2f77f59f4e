"""The layers (issue 15, docs/architecture.md): ledger ← commercial core ← metering ←
invoicing ← interfaces, each importing only what lies below it. import-linter checks the
contract in pyproject.toml over every import, inside functions too; these tests run it in
the suite, prove it refuses an import against the layers, and refuse an application
module that no layer names (it would go unchecked)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("billing", "ledger", "metering", "invoicing")
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    return [
        [name.strip() for name in layer.replace("|", ":").split(":")]
        for layer in contract["layers"]
    ]


def _modules(root: Path) -> list[str]:
    """Every application module: each package's files, its migrations and the packages'
    own ``__init__`` files left out (they hold no code of a layer)."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if "migrations" in parts or parts == (package, "__init__"):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append(".".join(parts))
    return found


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120
    )


def test_the_imports_keep_to_the_layers():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_every_application_module_belongs_to_a_layer():
    named = [name for layer in _layers() for name in layer]
    unplaced = [
        module
        for module in _modules(ROOT)
        if not any(module == name or module.startswith(name + ".") for name in named)
    ]
    assert unplaced == [], f"add these to a layer in pyproject.toml: {unplaced}"
    assert len(set(named)) == len(named), "a module is named by two layers"


def test_an_import_against_the_layers_inside_a_function_is_refused(tmp_path):
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("static", "*.pyc")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint(tmp_path).returncode == 0
    with (tmp_path / "billing" / "credits.py").open("a") as module:
        module.write("\n\ndef _probe():\n    from metering import rating  # the core reaching up\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "billing.credits is not allowed to import metering.rating" in result.stdout
