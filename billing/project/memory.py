"""A server process's memory after start-up: what it loaded once is frozen out of the
garbage collector's sight.

Django, the apps, the admin and the URLconf leave a few hundred thousand long-lived
objects in every worker. CPython's cyclic collector walks all of them in each full
collection, which a request that allocates much (rating a batch of 1,000 events makes
hundreds of thousands of objects) sets off every few batches: in process
(bench/ingest_cpu.py --http, batches of 1,000, 2026-12-07) the slowest batches cost 0.25-0.29
ms of CPU an event against a median of 0.12-0.14; with the start-up objects frozen the
slowest cost 0.13-0.18. ``gc.freeze()`` (Python 3.7+, as Instagram runs Django) moves
them to a generation the collector never visits; they are never freed, which they never
were anyway. The thresholds are left as they are: raising them made the single events'
pauses longer (one collection over many more young objects)."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Load what a worker would otherwise load on its first request (the URLconf and the
    views it imports), collect once, freeze what is left; returns how many objects are
    frozen. Call it once a process is set up, before it serves."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 — imports the views
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
