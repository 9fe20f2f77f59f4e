"""``make run``: the whole product on one machine, with demo data.

Starts embedded PostgreSQL and Redis when DATABASE_URL / REDIS_URL are unset, migrates,
loads the demo data, then runs the web server, one Celery worker, Celery beat and a usage
simulator (``manage.py simulate_usage``), with offline payments turned on
(``PAYMENTS_OFFLINE=1`` unless set: the demo moves no money). Ctrl-C stops everything it
started, the embedded servers included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from billing.devtools import servers

HOST = os.environ.get("HOST", "127.0.0.1")
PORT = os.environ.get("PORT", "8000")


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # same clean shutdown as Ctrl-C


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    python = sys.executable
    manage = [python, str(servers.REPO_DIR / "manage.py")]
    with servers.services_for_command():
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing.project.settings")
        # The demo pays offline (no money moves): an explicit opt-in, never a default.
        os.environ.setdefault("PAYMENTS_OFFLINE", "1")
        subprocess.run([*manage, "migrate", "--no-input"], check=True)
        subprocess.run([*manage, "seed_demo"], check=True)
        commands = {
            "web": [*manage, "runserver", f"{HOST}:{PORT}", "--noreload"],
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "billing",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
            ],
            "beat": [python, "-m", "celery", "-A", "billing", "beat", "--loglevel", "INFO"],
        }
        if os.environ.get("SIMULATE", "1") != "0":
            # A small product backend sending LLM usage for the demo customers.
            commands["simulator"] = [*manage, "simulate_usage", "--url", f"http://{HOST}:{PORT}"]
        children = {name: subprocess.Popen(cmd) for name, cmd in commands.items()}
        print(
            "\n"
            f"  Admin:     http://{HOST}:{PORT}/admin/   (user: admin, password: admin)\n"
            f"  Portal:    http://{HOST}:{PORT}/portal/  (user: ann@acme.example, "
            "bo@globex.example or cy@hooli.example — credits —, password: portal-demo)\n"
            f"  API docs:  http://{HOST}:{PORT}/api/docs/\n"
            f"  Database:  {os.environ['DATABASE_URL']}\n"
            f"  Redis:     {os.environ['REDIS_URL']}\n"
            "  Usage:     a simulator sends LLM usage for acme, globex, initech and hooli\n"
            "             every second (SIMULATE=0 make run to switch it off)\n"
            "  Ctrl-C stops the server, the worker, beat, the simulator and the embedded "
            "services.\n",
            flush=True,
        )
        try:
            while all(child.poll() is None for child in children.values()):
                time.sleep(0.5)
            failed = [name for name, child in children.items() if child.poll() is not None]
            print(f"{', '.join(failed)} stopped; shutting down the rest", file=sys.stderr)
        except KeyboardInterrupt:
            print("\nstopping…", flush=True)
        finally:
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children.values():
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()
    return 0


if __name__ == "__main__":
    if sys.argv[1:]:
        print("usage: python -m billing.devtools.run")
        sys.exit(2)
    sys.exit(main())
