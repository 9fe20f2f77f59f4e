"""How figures are printed: progress on stderr; on stdout the report, which ends with one
JSON line holding every figure (the exit status says whether the checks passed)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


def progress(message: str) -> None:
    """Progress goes to stderr; stdout holds the report and ends with the JSON line."""
    print(message, file=sys.stderr, flush=True)


def fmt(value: float | None, pattern: str = "{:,.0f}") -> str:
    return "—" if value is None else pattern.format(value)


# --- the machine -------------------------------------------------------------------------


def print_machine(
    machine: dict[str, Any], *, settings: Sequence[str], lines: Iterable[tuple[str, str]]
) -> None:
    """The "Machine" block: CPUs, PostgreSQL and the ``settings`` of it the benchmark
    depends on, Python, the load average, then the benchmark's own ``lines``."""
    print()
    print("Machine")
    print(
        f"  CPUs               {machine['cpu_count']} ({machine['cpus_usable']} usable), "
        f"{machine['cpu_model']}"
    )
    print(f"  PostgreSQL         {machine['postgresql_version']}, {machine['database']}")
    print(
        "  server settings    " + ", ".join(f"{name}={machine.get(name, '?')}" for name in settings)
    )
    print(f"  Python             {machine['python']} on {machine['platform']}")
    if "load_average" in machine:  # the three of them, taken at the start
        print(
            "  load average       {} / {} / {} (1, 5, 15 min, at start)".format(
                *machine["load_average"]
            )
        )
    else:
        print(f"  load average       {machine['load_average_1m']} (1 min, before setup)")
    for label, text in lines:
        print(f"  {label:<19}{text}")
    print()


def cpu_shares(share: dict[str, float]) -> str:
    """'group 41%, group 30%, …': the groups that used at least half a percent."""
    return ", ".join(f"{group} {part:.0%}" for group, part in share.items() if part >= 0.005)


# --- targets -----------------------------------------------------------------------------


def at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def at_most(value: float | None, target: float) -> bool | None:
    return None if value is None else value <= target


def target_floor(value: float | None, target: float, **where: Any) -> dict[str, Any]:
    """A target the value must reach (a rate, a ratio); ``where``: what it was measured at
    (writers, clients), first in the dict."""
    return {**where, "target": target, "value": value, "met": at_least(value, target)}


def target_ceiling(value: float | None, target: float, **where: Any) -> dict[str, Any]:
    """A target the value must stay under (a latency)."""
    return {**where, "target": target, "value": value, "met": at_most(value, target)}


VERDICTS = {True: "MET", False: "NOT MET", None: "not measured"}


# --- checks and the end ------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def print_checks(checks: Iterable[Check], *, failures: Sequence[str] = ()) -> bool:
    """The checks, then the failures that are not checks (a run that did not finish), then
    the verdict. True if every check passed and nothing failed."""
    checks = list(checks)
    print()
    print("Checks")
    for check in checks:
        print(f"  {'OK  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    for failure in failures:
        print(f"  FAIL {failure}")
    ok = all(check.ok for check in checks) and not failures
    print(f"Verification: {'OK' if ok else 'FAILED'}")
    return ok


def finish(summary: dict[str, Any]) -> int:
    """The JSON line, last on stdout; the exit status: 1 if verification failed."""
    print(json.dumps(summary, default=str), flush=True)
    if not summary["verification_ok"]:
        print(f"{summary['benchmark']} benchmark: verification FAILED", file=sys.stderr)
        return 1
    return 0
