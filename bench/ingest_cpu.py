"""Rating's Python CPU per event, in process: batches of 1,000 (bench/ingest.py's events and
seed) rated by metering.rating.ingest_events one after another, each batch's
``time.process_time`` divided by its accepted events; the median of the batches (and of
the repeats) is printed. No HTTP, no server: meant to compare two versions of rating in
the same session on a shared machine (the figure is this process's CPU, so other load on
the machine moves it less than wall time), e.g.

    .venv/bin/python bench/ingest_cpu.py --database-url postgres://…/mydb --seed
    .venv/bin/python bench/ingest_cpu.py --database-url postgres://…/mydb --batches 12
    .venv/bin/python bench/ingest_cpu.py --database-url postgres://…/mydb --profile out.prof
    .venv/bin/python bench/ingest_cpu.py --database-url postgres://…/mydb --batch-size 1 \
        --batches 300                               # single events, one after another
    .venv/bin/python bench/ingest_cpu.py --database-url postgres://…/mydb --http
                                    # POST /api/v1/events/batch through Django's test client
    .venv/bin/python bench/ingest_cpu.py --database-url postgres://…/mydb --single \
        --batch-size 1 --batches 300                # POST /api/v1/events, one by one

``--http`` sends each batch as JSON through the whole request path in this process
(middleware, authentication, parsing, rating, the response rendered; ``--keyed`` adds an
Idempotency-Key): the server's CPU per event without a server, sockets or clients.

``--seed`` migrates and seeds the database (emptied first: it must be one of your own).
Without it the database is reused as seeded; each run's keys are new.

Beside this process's CPU it prints its PostgreSQL backend's (``/proc``, a server on this
machine only; clock ticks summed over the measured batches), which a statement's own
changes move and the Python figure does not show."""

from __future__ import annotations

import argparse
import cProfile
import json
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(REPO_DIR))

from bench.harness.db import drop_database, with_database  # noqa: E402
from bench.harness.processes import migrate, setup_django  # noqa: E402
from bench.ingest_load import BATCH_SIZE, CUSTOMERS, make_event, seed  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--seed", action="store_true", help="empty, migrate and seed it first")
    parser.add_argument("--batches", type=int, default=10, help="measured batches")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="events per batch")
    parser.add_argument("--warm-up", type=int, default=2, help="batches before measuring")
    parser.add_argument("--profile", help="cProfile the measured batches into this file")
    parser.add_argument("--http", action="store_true", help="through Django's test client")
    parser.add_argument("--keyed", action="store_true", help="--http with an Idempotency-Key")
    parser.add_argument(
        "--single", action="store_true", help="--http, one event per POST /api/v1/events"
    )
    args = parser.parse_args()
    if args.seed:
        name = args.database_url.rsplit("/", 1)[1].split("?")[0]
        drop_database(with_database(args.database_url, "postgres"), name, recreate=True)
    setup_django(args.database_url)
    if args.seed:
        migrate()
        seed()
    from django.utils import timezone

    from metering import rating
    from metering.api.ingest import parse_event

    post = _http_poster(args.keyed, args.single) if args.http or args.keyed or args.single else None

    customers = [f"bench-cus-{i:04d}" for i in range(CUSTOMERS)]
    rng = random.Random(1)
    run = uuid.uuid4().hex[:8]
    profiler = cProfile.Profile(time.process_time) if args.profile else None
    per_event: list[float] = []
    wall_per_event: list[float] = []
    backend = _Backend()
    backend_ticks, measured_events = 0, 0
    for batch in range(args.warm_up + args.batches):
        now = timezone.now()
        raw = [make_event(rng, f"cpu-{run}:{batch}:{n}", customers) for n in range(args.batch_size)]
        if post is not None:
            body = json.dumps(raw[0] if args.single else {"events": raw})
        else:
            parsed = [parse_event(event, now=now) for event in raw]
        measured = batch >= args.warm_up
        if measured and profiler is not None:
            profiler.enable()
        ticks = backend.ticks()
        started, wall = time.process_time(), time.perf_counter()
        if post is not None:
            answer = post(body, f"cpu-{run}:{batch}")
        else:
            outcomes = rating.ingest_events(parsed)
        cpu, wall = time.process_time() - started, time.perf_counter() - wall
        ticks = backend.ticks() - ticks
        if measured and profiler is not None:
            profiler.disable()
        if post is not None:
            accepted = 1 if args.single else answer["accepted"]
        else:
            accepted = sum(o.status == "accepted" for o in outcomes)
        assert accepted == len(raw), answer if post is not None else {o.status for o in outcomes}
        if measured:
            per_event.append(cpu * 1000 / accepted)
            wall_per_event.append(wall * 1000 / accepted)
            backend_ticks += ticks
            measured_events += accepted
    if profiler is not None:
        profiler.dump_stats(args.profile)
    print(
        f"cpu_ms_per_event median={statistics.median(per_event):.4f} "
        f"min={min(per_event):.4f} max={max(per_event):.4f} batches={len(per_event)} "
        f"wall_ms_per_event median={statistics.median(wall_per_event):.4f} "
        + (
            "postgres_cpu_ms_per_event "
            f"total={backend_ticks * backend.ms_per_tick / measured_events:.4f}"
            if backend.readable
            else "postgres_cpu_ms_per_event=unavailable (not a local server)"
        )
    )
    return 0


class _Backend:
    """The CPU time of this process's PostgreSQL backend, from /proc (a server on this
    machine, readable by this user; clock ticks, so only the total over many batches
    means anything)."""

    def __init__(self) -> None:
        import os

        self.ms_per_tick = 1000 / os.sysconf("SC_CLK_TCK")
        self.readable = self._path().exists()

    def _path(self) -> Path:
        from django.db import connection

        with connection.cursor() as cursor:  # asked each time: a request may reconnect
            cursor.execute("SELECT pg_backend_pid()")
            return Path(f"/proc/{cursor.fetchone()[0]}/stat")

    def ticks(self) -> int:
        if not self.readable:
            return 0
        fields = self._path().read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def _http_poster(keyed: bool, single: bool = False):
    """A function posting a batch's JSON to /api/v1/events/batch through Django's test
    client (the whole middleware stack, in this process) with a new API key of the
    ingest scope; the answer's JSON."""
    from django.test import Client

    from tests.factories import APIKeyFactory

    key = APIKeyFactory(name=f"cpu-{uuid.uuid4().hex[:8]}", scopes=["ingest"])
    client = Client(
        HTTP_AUTHORIZATION=f"Bearer {key.secret}",
        HTTP_X_FORWARDED_PROTO="https",
        SERVER_NAME="localhost",  # an allowed host
    )

    def post(body: str, idempotency_key: str) -> dict:
        headers = {"HTTP_IDEMPOTENCY_KEY": idempotency_key} if keyed else {}
        response = client.post(
            "/api/v1/events" if single else "/api/v1/events/batch",
            body,
            content_type="application/json",
            **headers,
        )
        assert response.status_code in (200, 201), response.content[:500]
        return json.loads(response.content)

    return post


if __name__ == "__main__":
    sys.exit(main())
