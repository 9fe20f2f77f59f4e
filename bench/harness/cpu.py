"""Where the machine's CPU went during a run, from /proc.

A snapshot is every process's CPU time so far; a run's figure is the difference between
the snapshots taken at its start and its end, summed by group ("server workers",
"PostgreSQL", the load clients …: each benchmark names its groups with a ``classify``
function). A process that ended during the run is not counted (its time is gone with it),
except PostgreSQL backends, whose time the postmaster collects as its reaped children's
(``ended_backends``: their time before the run, known from the start's snapshot, taken
off); a process that started is counted whole. The shares are of all the
machine's cores for the run's wall time: a large share outside the benchmark's own groups
means the machine was not its alone, while the CPU milliseconds per operation stay
comparable when it was not."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    command: str
    pgrp: int  # the process group: a server or worker started in a session of its own
    cpu: float  # its own CPU seconds
    children_cpu: float  # CPU seconds of its children that have ended (and were reaped)
    cmdline: str  # PostgreSQL processes only: "postgres: 15/main: user database host …"
    ppid: int = 0  # its parent's pid

    @property
    def is_postgres(self) -> bool:
        return self.command.startswith("postgres")


def read_processes() -> dict[int, Proc]:
    """Every process we can see."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
            command = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            cmdline = ""
            if command.startswith("postgres"):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        found[int(entry.name)] = Proc(
            command=command,
            pgrp=int(fields[2]),
            cpu=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
            children_cpu=(int(fields[13]) + int(fields[14])) / CLOCK_TICKS,
            cmdline=cmdline,
            ppid=int(fields[1]),
        )
    return found


def machine_ticks() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat (user to
    steal; guest time is inside user already)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS


def postgres_database(proc: Proc, processes: dict[int, Proc]) -> str | None:
    """The database a PostgreSQL process works for, from its title: a backend's ("postgres:
    [cluster:] user database host(port) state"), an autovacuum worker's ("… autovacuum
    worker database"), a parallel worker's leader's ("… parallel worker for PID n"). None
    for the server's own processes (the postmaster, WAL writer, checkpointer …)."""
    words = proc.cmdline.split()
    if words[:1] != ["postgres:"]:
        return None
    for i in range(1, len(words) - 4):
        if words[i : i + 4] == ["parallel", "worker", "for", "PID"] and words[i + 4].isdigit():
            leader = processes.get(int(words[i + 4]))
            if leader is None or leader is proc:
                return None
            return postgres_database(leader, processes)
    for i in range(1, len(words) - 2):
        if words[i : i + 2] == ["autovacuum", "worker"]:
            return words[i + 2]
    for i in range(3, len(words)):
        if "(" in words[i] or words[i] == "[local]":  # the client's address
            return words[i - 1]
    return None


Classify = Callable[[int, Proc, dict[int, Proc]], str]


@dataclass
class CpuUse:
    seconds: dict[str, float]  # CPU seconds by group, the largest first
    share: dict[str, float]  # of all cores during the run, by group (3 places)
    machine_busy: float  # share of the machine's CPU time used during the run (3 places)

    def ms_per(self, group: str, units: int) -> float | None:
        """CPU milliseconds of ``group`` per event, request, close … (3 places)."""
        return round(self.seconds.get(group, 0.0) * 1000 / units, 3) if units else None


class CpuMeter:
    """CPU seconds per group of processes between start() and stop(wall).
    ``classify(pid, process, all processes)`` names a process's group; with
    ``ended_backends``, the time the PostgreSQL backends that ended during the run spent
    in it (whatever their database) is counted under that name: what their postmaster
    collected of its children since the start, less what those of them seen at the start
    had used by then. (Without it, a backend that ended took its time with it: the
    server's connections closed at their age limit, DB_CONN_MAX_AGE, and a run's
    PostgreSQL share fell from about 0.45 of the machine to 0.12 while the machine was
    0.95 busy: bench-ingest, 2026-12-08.)"""

    def __init__(self, classify: Classify, *, ended_backends: str | None = None):
        self.classify = classify
        self.ended_backends = ended_backends
        self.before: dict[int, Proc] = {}
        self.machine_before = (0.0, 0.0)

    def start(self) -> None:
        self.before = read_processes()
        self.machine_before = machine_ticks()

    def stop(self, wall: float) -> CpuUse:
        after = read_processes()
        busy, total = machine_ticks()
        used: dict[str, float] = defaultdict(float)
        for pid, proc in after.items():
            start = self.before.get(pid)
            same = start is not None and start.command == proc.command
            own = proc.cpu - (start.cpu if same else 0.0)
            used[self.classify(pid, proc, after)] += max(0.0, own)
            if self.ended_backends and proc.is_postgres and " -D " in f" {proc.cmdline} ":
                ended = proc.children_cpu - (start.children_cpu if same else 0.0)
                if same:  # the time its ended children had used before the run
                    ended -= sum(
                        child.cpu
                        for child_pid, child in self.before.items()
                        if child.ppid == pid and child_pid not in after
                    )
                used[self.ended_backends] += max(0.0, ended)
        capacity = wall * (os.cpu_count() or 1)
        ordered = sorted(used.items(), key=lambda item: -item[1])
        return CpuUse(
            seconds=dict(ordered),
            share={group: round(seconds / capacity, 3) for group, seconds in ordered},
            machine_busy=round(
                (busy - self.machine_before[0]) / max(1e-9, total - self.machine_before[1]), 3
            ),
        )
