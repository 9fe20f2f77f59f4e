"""Part of bench/ingest.py (not a command): the open-loop runs. After the closed-loop runs
(each client sends its next request when the last is answered, so at saturation the mean
latency is clients ÷ throughput, Little's law, whatever the server does), requests are
sent on a fixed schedule instead, at a rate set in advance: a fraction (0.5 by default)
of the throughput the closed-loop run measured. The schedule does not wait for answers,
and each latency is taken from the request's SCHEDULED send time, not from when a client
thread got round to sending it: a server that stalls makes every request scheduled
during the stall late, and that lateness is counted (no coordinated omission).

The schedule: Poisson arrivals. ``total`` requests (the rate × the run's seconds, at
least MIN_OPEN_REQUESTS) are spread over the client processes, and each process draws its
share's send times uniformly over the window and sorts them — a Poisson process
conditioned on its count; the processes' schedules together are one such process at the
offered rate. Each process sends from a pool of threads, one connection each, so that a
slow answer does not hold back the next send; how late each send left (send lag) is
reported beside the latency, to show whether the clients kept up.

What this measures is the proposed target of docs/benchmarks.md ("Session 17", "Session
18: open-loop latency"), not issue 14's: the issue's targets stay judged on the
closed-loop runs."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.harness.stats import percentile_ms

# open-loop scenario → the closed-loop scenario whose throughput sets its rate
OPEN_SCENARIOS = {"open-single": "single", "open-batch": "batch"}
DEFAULT_FRACTION = 0.5
DEFAULT_THREADS = 8  # sending threads per client process
MIN_OPEN_REQUESTS = 2  # a short run at a low rate still sends something
# The latency bounds, proposed for the open loop (not the targets).
PROPOSED_P99_MS = {"open-single": 100.0, "open-batch": 500.0}


def open_loop_label(fraction: float) -> str:
    return f"open loop at {fraction:g} × capacity (proposed target, not the issue's)"


def plan(rate: float, seconds: float) -> tuple[int, float]:
    """(requests, window seconds) of an open-loop run offering ``rate`` requests/s for about
    ``seconds``: at least MIN_OPEN_REQUESTS, the window stretched to keep the rate."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("an open-loop run needs a positive rate and length")
    total = max(MIN_OPEN_REQUESTS, round(rate * seconds))
    return total, total / rate


def share(total: int, processes: int, index: int) -> int:
    """How many of ``total`` requests process ``index`` of ``processes`` sends."""
    return total // processes + (1 if index < total % processes else 0)


def arrival_offsets(rng: random.Random, count: int, window: float) -> list[float]:
    """``count`` send times in [0, window), seconds from the start, in order: uniform
    order statistics, i.e. the arrivals of a Poisson process given its count."""
    return sorted(rng.uniform(0.0, window) for _ in range(count))


class Timings:
    """What run_schedule measured, seconds, in the order requests were answered."""

    def __init__(self) -> None:
        self.latencies: list[float] = []  # answered − scheduled (requests answered)
        self.send_lags: list[float] = []  # sent − scheduled (every request sent)
        self.elapsed = 0.0  # start → the last answer


def run_schedule(
    offsets: Sequence[float],
    send: Callable[[int, int], bool],
    *,
    threads: int,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> Timings:
    """Send request i at start + offsets[i], in order, from ``threads`` threads:
    ``send(i, thread)`` sends it and says whether it was answered. A request is never
    dropped: when every thread is busy it leaves late, and its latency still runs from its
    scheduled time."""
    timings = Timings()
    lock = threading.Lock()
    pending = iter(range(len(offsets)))
    start = clock()

    def worker(thread: int) -> None:
        while True:
            with lock:
                i = next(pending, None)
            if i is None:
                return
            due = start + offsets[i]
            wait = due - clock()
            if wait > 0:
                sleep(wait)
            sent = clock()
            answered = send(i, thread)
            done = clock()
            with lock:
                timings.send_lags.append(sent - due)
                if answered:
                    timings.latencies.append(done - due)
                    timings.elapsed = max(timings.elapsed, done - start)

    workers = [
        threading.Thread(target=worker, args=(t,), name=f"open-loop-{t}", daemon=True)
        for t in range(max(1, min(threads, len(offsets))))
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return timings


def figures(
    latencies: Sequence[float],
    send_lags: Sequence[float],
    *,
    scheduled: int,
    offered: float,
    fraction: float,
    capacity: float,
    capacity_run: str,
    threads: int,
) -> dict[str, Any]:
    """An open-loop run's figures: the offered rate, ``fraction`` of the closed-loop
    ``capacity_run``'s ``capacity`` (requests/s), latency from the scheduled send time
    (p50, p95, p99, max, ms) and how late sends left (p50, p99, max, ms)."""
    ordered, lags = sorted(latencies), sorted(send_lags)
    return {
        "schedule": "poisson",
        "offered_requests_per_second": round(offered, 3),
        "fraction": fraction,
        "capacity_requests_per_second": round(capacity, 3),
        "capacity_run": capacity_run,
        "threads_per_client": threads,
        "scheduled": scheduled,
        "latency_from_scheduled_ms": {
            name: percentile_ms(ordered, q)
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
        },
        "send_lag_ms": {
            name: percentile_ms(lags, q) for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
        },
    }


def proposed_p99_met(scenario: str, p99_ms: float | None) -> bool | None:
    return None if p99_ms is None else p99_ms <= PROPOSED_P99_MS[scenario]
