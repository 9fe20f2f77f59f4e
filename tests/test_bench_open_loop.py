"""bench-ingest's open-loop runs (bench/ingest_open.py): requests leave on a schedule that
does not wait for answers, each latency runs from the request's scheduled send time (a
stalled server is not hidden: coordinated omission), the offered rate is the given
fraction of the closed-loop run's, and the report labels the figures as a proposed
target beside the issue's, which stay as they are. A fake clock, no server: nothing here
times anything. The smoke run (test_bench_smoke.py) runs them for real."""

from __future__ import annotations

import random
import threading

import pytest

from bench import ingest
from bench.ingest_load import judge
from bench.ingest_open import (
    MIN_OPEN_REQUESTS,
    arrival_offsets,
    figures,
    plan,
    run_schedule,
    share,
)
from bench.ingest_report import RunResult, open_loop_summary, print_open_loop

RUN = {"fraction": 0.5, "capacity": 16.0, "capacity_run": "single × 16", "threads": 8}


class FakeClock:
    """Time that moves only when slept or when a request 'takes' time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_latency_runs_from_the_scheduled_time_when_the_server_stalls():
    clock = FakeClock()
    sent_at: list[float] = []

    def send(i: int, thread: int) -> bool:
        sent_at.append(clock() - 100.0)
        clock.sleep(1.0)  # every answer takes a second: the schedule falls behind
        return True

    timings = run_schedule([0.0, 0.1, 0.2], send, threads=1, clock=clock, sleep=clock.sleep)

    assert sent_at == pytest.approx([0.0, 1.0, 2.0])
    # from the send, each took 1 s; from the schedule, the later ones waited behind the stall
    assert timings.latencies == pytest.approx([1.0, 1.9, 2.8])
    assert timings.send_lags == pytest.approx([0.0, 0.9, 1.8])
    assert timings.elapsed == pytest.approx(3.0)


def test_requests_wait_for_their_time_and_a_failed_one_counts_no_latency():
    clock = FakeClock()
    answered = iter([True, False, True])

    def send(i: int, thread: int) -> bool:
        clock.sleep(0.01)
        return next(answered)

    timings = run_schedule([0.5, 1.0, 2.0], send, threads=1, clock=clock, sleep=clock.sleep)

    assert timings.send_lags == pytest.approx([0.0, 0.0, 0.0])
    assert timings.latencies == pytest.approx([0.01, 0.01])  # the failed one is not a latency
    assert timings.elapsed == pytest.approx(2.01)


def test_every_scheduled_request_is_sent_once_from_several_threads():
    sent: list[int] = []
    lock = threading.Lock()

    def send(i: int, thread: int) -> bool:
        with lock:
            sent.append(i)
        return True

    timings = run_schedule([0.0] * 50, send, threads=8)

    assert sorted(sent) == list(range(50))
    assert len(timings.latencies) == len(timings.send_lags) == 50


def test_the_plan_keeps_the_rate_and_sends_at_least_a_few_requests():
    assert plan(20.0, 10.0) == (200, pytest.approx(10.0))
    total, window = plan(0.7, 1.0)  # a smoke run's batches: fewer than one a second
    assert total == MIN_OPEN_REQUESTS
    assert total / window == pytest.approx(0.7)
    with pytest.raises(ValueError):
        plan(0.0, 10.0)


def test_the_requests_are_shared_over_the_clients_and_sorted_within_the_window():
    assert [share(10, 4, i) for i in range(4)] == [3, 3, 2, 2]
    assert sum(share(7, 16, i) for i in range(16)) == 7
    offsets = arrival_offsets(random.Random(1), 100, 2.0)
    assert len(offsets) == 100 and offsets == sorted(offsets)
    assert 0.0 <= offsets[0] and offsets[-1] < 2.0


def test_figures_give_p50_p95_p99_from_the_scheduled_time_and_the_send_lag():
    result = figures(
        [i / 1000 for i in range(1, 101)], [0.001] * 100, scheduled=100, offered=5, **RUN
    )
    assert result["schedule"] == "poisson"
    assert result["latency_from_scheduled_ms"] == {"p50": 50, "p95": 95, "p99": 99, "max": 100}
    assert result["send_lag_ms"]["p99"] == 1
    assert result["offered_requests_per_second"] == 5


def test_options_default_to_half_the_capacity_for_as_long_as_the_other_runs():
    args = ingest.parse_args([])
    assert (args.open_loop_fraction, args.open_loop_seconds, args.no_open_loop) == (0.5, 10, False)
    quick = ingest.parse_args(["--quick"])
    assert quick.open_loop_seconds == 2  # the smoke runs stay short
    chosen = ingest.parse_args(["--open-loop-fraction", "0.3", "--open-loop-seconds", "5"])
    assert (chosen.open_loop_fraction, chosen.open_loop_seconds) == (0.3, 5)
    assert ingest.parse_args(["--no-open-loop"]).no_open_loop is True
    with pytest.raises(SystemExit):
        ingest.parse_args(["--open-loop-fraction", "0"])


def run_result(scenario: str, clients: int, requests: int, seconds: float, **extra) -> RunResult:
    return RunResult(
        scenario=scenario,
        clients=clients,
        requests=requests,
        events=requests,
        seconds=seconds,
        events_per_second=round(requests / seconds, 1),
        requests_per_second=round(requests / seconds, 1),
        latency_ms={"p50": 1.0, "p90": 1.0, "p99": 1.0, "max": 1.0},
        statuses={},
        problems={},
        first_error="",
        client_cpu_seconds=0.0,
        cpu_share={},
        cpu_ms_per_event={},
        machine_busy=0.0,
        wait_events={},
        statements={},
        **extra,
    )


def test_the_open_run_offers_the_fraction_of_what_the_closed_run_measured():
    args = ingest.parse_args(["--open-loop-fraction", "0.5", "--open-loop-seconds", "10"])
    base = ingest.RunSpec(scenario="open-batch", clients=1, seconds=0)
    closed = run_result("batch", 4, requests=27, seconds=20.0)  # 1.35 batches/s

    spec = ingest.open_loop_spec(args, base, closed)

    assert spec is not None and spec.clients == 4
    assert spec.open_requests / spec.seconds == pytest.approx(0.675, rel=0.05)
    assert spec.open_capacity == pytest.approx(1.35)
    assert ingest.open_loop_spec(args, base, run_result("batch", 4, 0, 20.0)) is None


def test_the_summary_is_labelled_a_proposed_target_and_judged_against_the_issues_bounds(
    capsys,
):
    latency = {"p50": 40.0, "p95": 80.0, "p99": 99.0, "max": 120.0}
    single = run_result(
        "open-single",
        16,
        requests=80,
        seconds=10.0,
        open_loop={
            **figures([], [], scheduled=80, offered=8.0, **RUN),
            "latency_from_scheduled_ms": latency,
        },
    )

    summary = open_loop_summary([run_result("single", 16, 160, 10.0), single], 0.5)

    assert summary is not None
    assert summary["label"] == "open loop at 0.5 × capacity (proposed target, not the issue's)"
    assert summary["single"]["proposed_p99_ms"] == 100
    assert summary["single"]["proposed_p99_met"] is True
    assert summary["single"]["achieved_requests_per_second"] == 8.0
    assert "batch" not in summary
    assert open_loop_summary([run_result("single", 16, 160, 10.0)], 0.5) is None
    print_open_loop(summary)
    printed = capsys.readouterr().out
    assert "Open loop at 0.5 × capacity (proposed target, not the issue's)" in printed
    assert "p95 80.0 ms, p99 99.0 ms" in printed and "proposed p99 ≤ 100 ms: met" in printed


def test_a_batch_answer_counts_its_accepted_events_and_its_duplicates():
    problems: dict[str, int] = {}

    def problem(code: str, message: str, count: int = 1) -> None:
        problems[code] = problems.get(code, 0) + count

    answer = b'{"accepted": 997, "duplicates": 3, "rejected": 0, "data": []}'
    assert judge("open-batch", 200, answer, problem) == 997
    assert problems == {"duplicate": 3}
    assert judge("open-single", 201, b"{}", problem) == 1
    assert judge("open-single", 503, b'{"error": {"code": "busy"}}', problem) == 0
    assert problems["503:busy"] == 1
