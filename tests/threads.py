"""Real threads for concurrency tests: each has its own database connection (Django's are
per thread), all start together at a barrier, and each closes its connections at the end."""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connections


def run_concurrently(worker: Callable[[int], object], threads: int) -> list[object]:
    """Run worker(i) in ``threads`` threads released together; return results or exceptions."""
    barrier = threading.Barrier(threads)
    results: list[object] = [None] * threads

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = worker(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results[i] = exc
        finally:
            connections.close_all()

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a worker thread hung (deadlock?)"
    return results
