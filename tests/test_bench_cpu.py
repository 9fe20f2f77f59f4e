"""The benchmarks' CPU figures (bench/harness/cpu.py): a PostgreSQL backend that ends during
a run (a connection closed at its age limit, say) is counted for the time it spent in the
run, which its postmaster collects when it reaps it, not for its whole life nor not at all.
Snapshots are made up here: nothing is timed."""

from __future__ import annotations

import pytest

from bench.harness import cpu
from bench.harness.cpu import CpuMeter, Proc

POSTMASTER = "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main"


def backend(cpu_seconds: float, database: str = "bench") -> Proc:
    return Proc(
        "postgres",
        pgrp=10,
        cpu=cpu_seconds,
        children_cpu=0.0,
        cmdline=f"postgres: 15/main: postgres {database} 127.0.0.1(5000) idle",
        ppid=10,
    )


def postmaster(reaped: float) -> Proc:
    return Proc("postgres", pgrp=10, cpu=1.0, children_cpu=reaped, cmdline=POSTMASTER, ppid=1)


def classify(pid: int, proc: Proc, processes: dict[int, Proc]) -> str:
    return "PostgreSQL" if proc.is_postgres else "other"


@pytest.fixture
def snapshots(monkeypatch):
    taken: list[dict[int, Proc]] = []
    monkeypatch.setattr(cpu, "read_processes", lambda: taken.pop(0))
    monkeypatch.setattr(cpu, "machine_ticks", lambda: (0.0, 0.0))
    return taken


def test_a_backend_ending_in_the_run_counts_its_time_in_the_run_alone(snapshots):
    # at the start: backend 11 has used 30 s (earlier runs), 12 has used 5 s; during the
    # run 11 uses 2 s more and ends (the postmaster reaps it: 32 s), 12 uses 3 s, and 13
    # is born, uses 1 s and ends (reaped: 1 s)
    snapshots.append({10: postmaster(100.0), 11: backend(30.0), 12: backend(5.0)})
    snapshots.append({10: postmaster(100.0 + 32.0 + 1.0), 12: backend(8.0)})
    meter = CpuMeter(classify, ended_backends="PostgreSQL")
    meter.start()
    used = meter.stop(wall=10.0)
    # 12's 3 s, 11's 2 s and 13's 1 s; the postmaster's own time did not move
    assert used.seconds["PostgreSQL"] == pytest.approx(6.0)


def test_without_ended_backends_an_ended_backend_takes_its_time_with_it(snapshots):
    snapshots.append({10: postmaster(100.0), 11: backend(30.0), 12: backend(5.0)})
    snapshots.append({10: postmaster(132.0), 12: backend(8.0)})
    meter = CpuMeter(classify)
    meter.start()
    assert meter.stop(wall=10.0).seconds["PostgreSQL"] == pytest.approx(3.0)
