"""The processes a benchmark runs: this one's Django; spawned load processes (writers,
clients) that start once and meet the main process at a barrier for every run; the HTTP
server (gunicorn) and Celery workers, each in a session of its own so that stopping it
ends its children too; and the command's exit on SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from bench.harness import REPO_DIR
from bench.harness.report import progress

SETTINGS_MODULE = "billing.project.settings"
START_TIMEOUT = 120.0  # for load processes to start and to reach a barrier
SERVER_START_TIMEOUT = 60.0
WORKER_START_TIMEOUT = 90.0
REQUEST_TIMEOUT = 300.0


def django_environment(database_url: str) -> dict[str, str]:
    """What a process of the product needs to run as in production on ``database_url``:
    the settings, DEBUG off (no debug cursor recording every query)."""
    return {
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
        "DJANGO_DEBUG": "0",
    }


def setup_django(database_url: str) -> None:
    """Set Django up in this process on ``database_url``, DEBUG off. The addresses production
    must be given (allowed hosts, the portal's URL) are filled in as ``servers exec``
    does, so that a benchmark also runs without it; REDIS_URL is exported for the processes
    started later, so that none of them tries to start an embedded Redis."""
    from billing.devtools import servers

    os.environ.update(DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE=SETTINGS_MODULE)
    servers.use_development_environment()
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-secret")
    import django

    django.setup()
    from django.conf import settings

    os.environ.setdefault("REDIS_URL", settings.REDIS_URL)


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: processes stop


def run_command(main: Callable[[Sequence[str]], int]) -> None:
    """Run a benchmark's ``main`` and exit with its status; SIGTERM unwinds it like an
    error (servers and workers stopped, databases dropped), Ctrl-C too, exiting 130."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        status = main(sys.argv[1:])
    except KeyboardInterrupt:  # the servers, the workers and the databases are gone by now
        progress("interrupted")
        status = 130
    sys.exit(status)


# --- load processes ----------------------------------------------------------------------


class SpawnedPool:
    """``size`` spawned processes running ``target(index, barriers, commands, results,
    *args)`` (which calls ``serve``), started once and reused by every run: a run with n
    processes uses 0..n-1, which meet the main process at the barrier for n."""

    def __init__(
        self,
        target: Callable[..., None],
        *,
        size: int,
        counts: Sequence[int],
        kind: str,
        args: Sequence[Any] = (),
    ):
        # spawn, not fork: each process starts clean, with nothing of this one (least of
        # all its Django connection) inherited.
        context = mp.get_context("spawn")
        self.kind = kind
        self.barriers = {n: context.Barrier(n + 1) for n in counts}
        self.results: Queue[tuple[str, Any]] = context.Queue()
        self.commands: list[Queue[tuple[int, Any] | None]] = [context.Queue() for _ in range(size)]
        self.processes = [
            context.Process(
                target=target,
                args=(i, self.barriers, self.commands[i], self.results, *args),
                name=f"bench-{kind}-{i}",
                daemon=True,
            )
            for i in range(size)
        ]
        for process in self.processes:
            process.start()
        ready = 0
        while ready < size:
            kind_, _ = self._get(START_TIMEOUT)
            ready += kind_ == "ready"

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.processes if p.pid is not None}

    def _get(self, timeout: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [p.name for p in self.processes if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"{self.kind} process(es) died: {', '.join(dead)}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.kind}s did not answer in time") from None

    def send(self, spec: Any, n: int) -> None:
        """Hand the run to processes 0..n-1; they prepare, then wait at the barrier."""
        for i in range(n):
            self.commands[i].put((n, spec))

    def start(self, n: int) -> None:
        """Meet them at the barrier: the run starts now."""
        self.barriers[n].wait(timeout=START_TIMEOUT)

    def collect(self, n: int, timeout: float) -> list[Any]:
        """The n processes' results, as each finishes."""
        results: list[Any] = []
        while len(results) < n:
            kind, payload = self._get(timeout)
            if kind == "result":
                results.append(payload)
        return results

    def close(self, *, graceful: bool = True) -> None:
        """Let the processes finish; after an error or Ctrl-C, end them at once."""
        if graceful:
            for commands in self.commands:
                commands.put(None)
        for process in self.processes:
            if graceful:
                process.join(timeout=10)
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(timeout=10)


def serve(
    index: int,
    barriers: dict[int, Barrier],
    commands: Queue[tuple[int, Any] | None],
    results: Queue[tuple[str, Any]],
    *,
    run: Callable[[Any, Any], Any],
    failed: Callable[[Exception], Any],
    prepare: Callable[[Any], Any] | None = None,
) -> None:
    """A spawned process's loop: for each run it is sent, ``prepare(spec)`` (not timed:
    connections, data), meet at the run's barrier, ``run(spec, prepared)``, report the
    result; an exception is reported as ``failed(exc)``, after the barrier, so that the
    others do not hang. What ``prepare`` returned is closed only when the next run comes:
    its PostgreSQL backend must outlive the main process's CPU accounting of the run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    results.put(("ready", index))
    prepared: Any = None
    while (command := commands.get()) is not None:
        n, spec = command
        if prepared is not None:
            prepared.close()
            prepared = None
        failure: Exception | None = None
        try:
            prepared = prepare(spec) if prepare is not None else None
        except Exception as exc:
            failure = exc
        try:
            barriers[n].wait(timeout=START_TIMEOUT)
            if failure is not None:
                raise failure
            result = run(spec, prepared)
        except Exception as exc:  # report, do not hang the main process
            result = failed(exc)
        results.put(("result", result))
    if prepared is not None:
        prepared.close()


# --- the HTTP server ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HttpClient:
    """One keep-alive HTTP connection to the server on 127.0.0.1 (http.client reconnects
    by itself after a response that closes it, as gunicorn's sync workers do)."""

    def __init__(self, port: int, headers: dict[str, str]):
        self.port = port
        self.headers = headers
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        self.bodies: list[bytes] = []  # what a client encoded before its run, if anything

    def request(
        self, method: str, path: str, body: bytes | None = None, extra: dict | None = None
    ) -> tuple[int, bytes]:
        try:
            headers = {**self.headers, **extra} if extra else self.headers
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # the next request opens a new connection
            raise

    def close(self) -> None:
        self.conn.close()


class HttpServer:
    """gunicorn serving billing.project.wsgi:application on 127.0.0.1, as in production (DEBUG off,
    no autoreload), in its own session so that stop() ends it and all its workers."""

    def __init__(
        self, *, workers: int, worker_class: str, threads: int, database_url: str, log_dir: Path
    ):
        self.workers = workers
        self.worker_class = worker_class
        self.threads = threads if worker_class == "gthread" else 1
        self.database_url = database_url
        self.log_path = log_dir / "gunicorn.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def description(self) -> str:
        threads = f" × {self.threads} threads" if self.worker_class == "gthread" else ""
        return f"gunicorn, {self.workers} {self.worker_class} workers{threads}"

    @property
    def group(self) -> int | None:
        """The process group of the master and its workers."""
        return self.process.pid if self.process is not None else None

    def start(self, *, probe: str, headers: dict[str, str]) -> None:
        """Start it and wait until GET ``probe`` answers 200."""
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "billing.project.wsgi:application",
            f"--bind=127.0.0.1:{self.port}",
            f"--workers={self.workers}",
            f"--worker-class={self.worker_class}",
            f"--threads={self.threads}",
            "--timeout=300",  # a batch may wait long for its customers' locks
            "--graceful-timeout=10",
            "--keep-alive=30",  # gthread: keep the clients' connections between requests
            "--backlog=2048",
            "--log-level=warning",
            f"--chdir={REPO_DIR}",
        ]
        env = {**os.environ, **django_environment(self.database_url), "LOG_LEVEL": "WARNING"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, not it: stop() ends it
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        client = HttpClient(self.port, headers)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited ({self.process.returncode}):\n{self.log_tail()}"
                )
            try:
                status, answer = client.request("GET", probe)
                if status == 200:
                    break
                raise RuntimeError(f"server answered {status}: {answer[:300]!r}")
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server did not answer:\n{self.log_tail()}") from None
                time.sleep(0.2)
        client.close()

    def stop(self, *, graceful: bool = True) -> None:
        """TERM: workers finish their requests and exit; after an error or Ctrl-C, INT:
        gunicorn's quick shutdown. Whatever is left after that is killed."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM if graceful else signal.SIGINT)
        try:
            self.process.wait(timeout=20 if graceful else 5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# --- Celery workers ----------------------------------------------------------------------


# A worker of the product's Celery app; with BENCH_CELERY_QUEUE its default queue is that
# one, so that the tasks it queues itself stay on the benchmark's queue. Run with -c.
WORKER_BOOT = (
    "import os, sys; from billing.project.celery import app; "
    "queue = os.environ.get('BENCH_CELERY_QUEUE'); "
    "queue and app.conf.__setitem__('task_default_queue', queue); "
    "reuse = os.environ.get('BENCH_CELERY_DB_REUSE_MAX'); "
    "reuse and app.conf.__setitem__('CELERY_DB_REUSE_MAX', int(reuse)); "
    "app.worker_main(sys.argv[1:])"
)


class CeleryWorkers:
    """``count`` Celery workers (each in its own session) on one database, with the
    product's settings (late acknowledgement, prefetch 1, DEBUG off): ``pool`` "solo" or
    "prefork" with ``concurrency``; with ``queue``, they consume that queue only and it is
    their default (tasks they queue go there too); ``db_reuse_max`` sets
    CELERY_DB_REUSE_MAX."""

    def __init__(
        self,
        *,
        database_url: str,
        log_dir: Path,
        count: int = 1,
        pool: str = "solo",
        concurrency: int = 1,
        queue: str | None = None,
        db_reuse_max: int | None = None,
    ):
        self.database_url, self.log_dir = database_url, log_dir
        self.count, self.pool, self.concurrency = count, pool, concurrency
        self.queue, self.db_reuse_max = queue, db_reuse_max
        self.prefix = queue or f"bench-worker-{secrets.token_hex(4)}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []

    def start(self) -> None:
        env = {**os.environ, **django_environment(self.database_url), "LOG_LEVEL": "WARNING"}
        if self.queue:
            env["BENCH_CELERY_QUEUE"] = self.queue
        if self.db_reuse_max:
            env["BENCH_CELERY_DB_REUSE_MAX"] = str(self.db_reuse_max)
        host = socket.gethostname()
        for n in range(self.count):
            name = f"{self.prefix}-{n + 1}"
            queues = ["--queues", self.queue] if self.queue else []
            with (self.log_dir / f"{name}.log").open("ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            WORKER_BOOT,
                            "worker",
                            "--pool",
                            self.pool,
                            "--concurrency",
                            str(self.concurrency),
                            *queues,
                            "--hostname",
                            f"{name}@{host}",
                            "--loglevel",
                            "WARNING",
                            "--without-heartbeat",
                            "--without-gossip",
                            "--without-mingle",
                        ],
                        cwd=REPO_DIR,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # stop() ends it with its pool children
                    )
                )
            self.names.append(f"{name}@{host}")

    def wait_ready(self) -> None:
        """Until every worker answers a ping (connected to the broker, consuming)."""
        from billing.project.celery import app

        deadline = time.monotonic() + WORKER_START_TIMEOUT
        waiting = set(self.names)
        while waiting:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"a worker exited ({process.returncode}):\n{self.log_tail()}"
                    )
            for reply in app.control.ping(destination=sorted(waiting), timeout=1.0) or []:
                waiting -= set(reply)
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"workers {sorted(waiting)} did not answer:\n{self.log_tail()}")

    @property
    def groups(self) -> set[int]:
        """Their process groups (each worker with its pool children)."""
        return {p.pid for p in self.processes if p.poll() is None}

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def stop(self) -> None:
        """TERM (warm shutdown: running tasks finish), then KILL what is left."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        tails = []
        for path in sorted(self.log_dir.glob(f"{self.prefix}-*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(tails)


def parse_counts(parser: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    """A comma-separated option of process counts ("1,4,16"), sorted, each at least 1."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        parser.error(f"{option} must be comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        parser.error(f"{option} needs at least one count, each ≥ 1")
    return values
