"""bench-ingest's closed-loop batch clients encode their first batches before the run
(bench/ingest_load.py ``prebuilt_batches``): enough for the run at the rate it names, the
keys as the loop would have drawn them, and what the loop draws past them new. No server:
the smoke run (test_bench_smoke.py) sends them for real."""

from __future__ import annotations

import json
import math
import random

from bench.ingest_load import (
    BATCH_SIZE,
    PREBUILT_EVENTS_PER_SECOND,
    RunSpec,
    batch_body,
    prebuilt_batches,
    run_prefix,
)

CUSTOMERS = ("a", "b", "c")


def keys(body: bytes) -> list[str]:
    return [event["idempotency_key"] for event in json.loads(body)["events"]]


def test_a_client_prebuilds_its_share_of_the_run_with_the_loops_keys():
    spec = RunSpec(scenario="batch", clients=4, seconds=0.5, customers=CUSTOMERS)
    bodies = prebuilt_batches(2, spec)
    assert len(bodies) == math.ceil(PREBUILT_EVENTS_PER_SECOND * 0.5 / 4 / BATCH_SIZE) == 2
    prefix = f"{run_prefix('batch', 4)}2:"
    assert keys(bodies[0]) == [f"{prefix}1:{n}" for n in range(BATCH_SIZE)]
    assert keys(bodies[1]) == [f"{prefix}2:{n}" for n in range(BATCH_SIZE)]
    # the draws the loop made before: the same seed, the same events (their times aside)
    rng = random.Random("batch/4/2")
    again = json.loads(batch_body(rng, prefix, 1, CUSTOMERS))["events"]
    first = json.loads(bodies[0])["events"]
    for event in (*again, *first):
        del event["timestamp"]
    assert first == again


def test_the_batches_drawn_past_the_prebuilt_ones_reuse_no_key():
    spec = RunSpec(scenario="batch-keyed", clients=2, seconds=0.2, customers=CUSTOMERS)
    bodies = prebuilt_batches(0, spec)
    prefix = f"{run_prefix('batch-keyed', 2)}0:"
    later = batch_body(random.Random("more"), prefix, len(bodies) + 1, CUSTOMERS)
    seen = [key for body in [*bodies, later] for key in keys(body)]
    assert len(seen) == len(set(seen)) == (len(bodies) + 1) * BATCH_SIZE
