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
    .venv/bin/python bench/ingest_cpu.py --database-url postgres://…/mydb --async \
        --batches 600 --drain-every 200             # the same with Prefer: respond-async

``--http`` sends each batch as JSON through the whole request path in this process
(middleware, authentication, parsing, rating, the response rendered; ``--keyed`` adds an
Idempotency-Key): the server's CPU per event without a server, sockets or clients.

``--async`` posts single events as ``--single`` does with ``Prefer: respond-async``: each
request's CPU is the acceptance's alone (stored in the inbox, 202). Every ``--drain-every``
accepted events (default: all of them, at the end) ``metering.inbox.rate_until_empty``
rates what waits, in process, as the Celery task would (its 0.5 s gathering sleep skipped:
it costs no CPU), and that CPU is printed apart, per event rated: an asynchronous event
costs both on the same cores. ``--drain-every 200`` is about what one of the task's passes
finds at the bench's async rate. Beside each acceptance it sends the bench's no-op request
(``NOOP_PATH``, the same key) and prints its CPU and the ratio of the no-op's CPU to an
asynchronous event's (acceptance + rating), both taken under the same load: a yardstick
for comparing versions on a busy machine, not ``make bench-ingest``'s async ÷ no-op (the
test client's no-op costs about twice the 2.4 ms a server worker spends on it, and the
clients' CPU is not in it). Where the database has
``pg_stat_statements`` (create the extension after ``--seed``), the statements of each phase
are counted per event, with their execution and planning time (this database's only, reset
before measuring).

``--seed`` migrates and seeds the database (emptied first: it must be one of your own) and
ANALYZEs it. Without it the database is reused as seeded; each run's keys are new. As the
server's workers do, the process freezes its start-up objects out of the garbage
collector's sight before measuring (billing/project/memory.py).

Beside this process's CPU it prints its PostgreSQL backend's (``/proc``, a server on this
machine only; clock ticks summed over the measured batches), which a statement's own
changes move and the Python figure does not show."""

from __future__ import annotations

import argparse
import contextlib
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

import psycopg  # noqa: E402

from bench.harness.db import analyze, drop_database, with_database  # noqa: E402
from bench.harness.processes import migrate, setup_django  # noqa: E402
from bench.ingest_load import BATCH_SIZE, CUSTOMERS, NOOP_PATH, make_event, seed  # noqa: E402
from billing.project.memory import freeze_startup_objects  # noqa: E402


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
    parser.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="--single with Prefer: respond-async; rating what was accepted measured apart",
    )
    parser.add_argument(
        "--drain-every",
        type=int,
        default=0,
        help="--async: rate what waits after this many acceptances (default: at the end)",
    )
    args = parser.parse_args()
    if args.seed:
        name = args.database_url.rsplit("/", 1)[1].split("?")[0]
        drop_database(with_database(args.database_url, "postgres"), name, recreate=True)
    setup_django(args.database_url)
    if args.seed:
        migrate()
        seed()
        # statistics as autovacuum keeps them (and make bench-ingest takes before its runs):
        # plans made on empty-table statistics seq-scan ledger_account in every posting
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            analyze(conn)
    # as the server's workers do (billing/project/wsgi.py): without it a quarter of this
    # process's CPU was the collector walking Django's start-up objects, batch after batch
    freeze_startup_objects()
    from django.utils import timezone

    from metering import rating
    from metering.api.ingest import parse_event

    if args.asynchronous:
        return _run_async(args)
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


def _run_async(args: argparse.Namespace) -> int:
    """``--async``: single events accepted through the test client one after another, what
    waits rated by ``rate_until_empty`` every ``--drain-every``; each phase's CPU apart."""
    from metering import inbox

    inbox.GATHER_SECONDS = 0  # the task's wait between partial passes: no CPU, only time
    post = _http_poster(False, True, prefer_async=True, scopes=["read", "ingest"])
    customers = [f"bench-cus-{i:04d}" for i in range(CUSTOMERS)]
    rng = random.Random(1)
    run = uuid.uuid4().hex[:8]
    backend, statements = _Backend(), _Statements()
    accept, drain = _Phase("accept", backend, statements), _Phase("drain", backend, statements)
    noop = _Phase("noop", backend, statements)
    total, waiting, drained = args.warm_up + args.batches, 0, 0
    for n in range(total):
        measured = n >= args.warm_up
        body = json.dumps(make_event(rng, f"async-{run}:{n}", customers))
        with accept.measure(measured, events=1):
            answer = post(body, "")
        assert answer["status"] == "pending", answer
        with noop.measure(measured, events=1):
            post.noop()  # type: ignore[attr-defined]
        waiting += 1
        last_of_warm_up, last = n == args.warm_up - 1, n == total - 1
        if last_of_warm_up or last or (args.drain_every and waiting >= args.drain_every):
            with drain.measure(measured and not last_of_warm_up, events=waiting):
                rated = inbox.rate_until_empty()
            assert rated == waiting, (rated, waiting)
            drained += rated
            waiting = 0
    accept.report()
    drain.report()
    noop.report()
    per = [accept.cpu_ms_per_event(), drain.cpu_ms_per_event()]
    event_ms = per[0][0] + per[1][0] + per[0][1] + per[1][1]
    noop_ms = sum(noop.cpu_ms_per_event())
    print(
        f"async total_ms_per_event python={per[0][0] + per[1][0]:.4f} "
        f"postgres={per[0][1] + per[1][1]:.4f} (accept + drain); "
        f"noop_ms_per_request={noop_ms:.4f} noop_cpu/async_cpu={noop_ms / event_ms:.3f}"
    )
    statements.close()
    return 0


class _Phase:
    """CPU of this process and of its PostgreSQL backend over the measured calls of one
    phase, and (``_Statements``) the statements those calls ran."""

    def __init__(self, name: str, backend: _Backend, statements: _Statements) -> None:
        self.name, self.backend, self.statements = name, backend, statements
        self.cpu = self.wall = 0.0
        self.ticks = self.events = self.calls = 0
        self.counts: dict[int, list] = {}

    @contextlib.contextmanager
    def measure(self, measured: bool, *, events: int):
        if not measured:
            yield self
            return
        before = self.statements.snapshot()
        ticks = self.backend.ticks()
        cpu, wall = time.process_time(), time.perf_counter()
        yield self
        self.cpu += time.process_time() - cpu
        self.wall += time.perf_counter() - wall
        self.ticks += self.backend.ticks() - ticks
        self.statements.add(self.counts, before, self.statements.snapshot())
        self.events += events
        self.calls += 1

    def cpu_ms_per_event(self) -> tuple[float, float]:
        events = max(self.events, 1)
        return self.cpu * 1000 / events, self.ticks * self.backend.ms_per_tick / events

    def report(self) -> None:
        python, postgres = self.cpu_ms_per_event()
        events = max(self.events, 1)
        print(
            f"{self.name}: events={self.events} calls={self.calls} "
            f"cpu_ms_per_event={python:.4f} wall_ms_per_event={self.wall * 1000 / events:.4f} "
            + (
                f"postgres_cpu_ms_per_event={postgres:.4f}"
                if self.backend.readable
                else "postgres_cpu_ms_per_event=unavailable"
            )
        )
        if not self.statements.available:
            return
        rows = sorted(self.counts.values(), key=lambda r: -(r[2] + r[3]))
        calls = sum(r[1] for r in rows)
        exec_ms, plan_ms = sum(r[2] for r in rows), sum(r[3] for r in rows)
        print(
            f"  statements_per_event={calls / events:.2f} exec_ms_per_event={exec_ms / events:.4f} "
            f"plan_ms_per_event={plan_ms / events:.4f}"
        )
        for query, n, ex, pl in rows[:12]:
            text = " ".join(query.split())[:110]
            print(
                f"  {n / events:6.3f}/ev exec {ex / events:.4f} plan {pl / events:.4f} ms  {text}"
            )


class _Statements:
    """pg_stat_statements of this database, read on a connection of its own (so that the
    reading is neither counted nor charged to the measured backend), when the extension is
    there."""

    def __init__(self) -> None:
        import psycopg
        from django.db import connection

        self.available = False
        settings = connection.settings_dict
        self.conn = psycopg.connect(
            dbname=settings["NAME"],
            user=settings["USER"],
            host=settings["HOST"],
            port=settings["PORT"] or 5432,
            autocommit=True,
        )
        installed = self.conn.execute(
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_stat_statements')"
        ).fetchone()
        if installed and installed[0]:
            self.available = True
            self.conn.execute(
                "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database "
                "WHERE datname = current_database()), 0)"
            )

    def snapshot(self) -> dict[int, tuple]:
        if not self.available:
            return {}
        rows = self.conn.execute(
            "SELECT queryid, query, calls, total_exec_time, total_plan_time "
            "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database "
            "WHERE datname = current_database()) AND query NOT LIKE '%pg_stat_statements%' "
            "AND query NOT LIKE '%pg_backend_pid%'"
        ).fetchall()
        return {row[0]: row[1:] for row in rows}

    @staticmethod
    def add(counts: dict[int, list], before: dict[int, tuple], after: dict[int, tuple]) -> None:
        for queryid, (query, calls, exec_ms, plan_ms) in after.items():
            _, calls0, exec0, plan0 = before.get(queryid, (query, 0, 0.0, 0.0))
            if calls > calls0:
                row = counts.setdefault(queryid, [query, 0, 0.0, 0.0])
                row[1] += calls - calls0
                row[2] += exec_ms - exec0
                row[3] += plan_ms - plan0

    def close(self) -> None:
        self.conn.close()


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


def _http_poster(
    keyed: bool, single: bool = False, *, prefer_async: bool = False, scopes=("ingest",)
):
    """A function posting a batch's JSON to /api/v1/events/batch (``single``: an event's to
    /api/v1/events) through Django's test client (the whole middleware stack, in this
    process) with a new API key of the ingest scope; the answer's JSON. ``prefer_async``
    asks for ``Prefer: respond-async`` and expects 202. Its ``noop()`` sends the bench's
    no-op request (a key of the ``read`` scope too)."""
    from django.test import Client

    from tests.factories import APIKeyFactory

    key = APIKeyFactory(name=f"cpu-{uuid.uuid4().hex[:8]}", scopes=list(scopes))
    client = Client(
        HTTP_AUTHORIZATION=f"Bearer {key.secret}",
        HTTP_X_FORWARDED_PROTO="https",
        SERVER_NAME="localhost",  # an allowed host
    )

    def post(body: str, idempotency_key: str) -> dict:
        headers = {"HTTP_IDEMPOTENCY_KEY": idempotency_key} if keyed else {}
        if prefer_async:
            headers["HTTP_PREFER"] = "respond-async"
        response = client.post(
            "/api/v1/events" if single else "/api/v1/events/batch",
            body,
            content_type="application/json",
            **headers,
        )
        expected = (202,) if prefer_async else (200, 201)
        assert response.status_code in expected, response.content[:500]
        return json.loads(response.content)

    def noop() -> None:
        response = client.get(NOOP_PATH)
        assert response.status_code == 200, response.content[:500]

    post.noop = noop  # type: ignore[attr-defined]
    return post


if __name__ == "__main__":
    sys.exit(main())
