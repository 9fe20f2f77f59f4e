"""Celery for real: a worker process on the Redis broker runs a ledger task against the test
database; the beat schedule declared in settings lands in django-celery-beat's tables."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection
from django.utils import timezone

from ledger import selectors, services
from ledger.models import HoldStatus
from ledger.tasks import release_expired_holds
from tests.conftest import unique

REPO = Path(__file__).resolve().parent.parent


def database_url_of_test_db() -> str:
    s = connection.settings_dict
    host = s["HOST"] or ""
    auth = quote(s["USER"] or "postgres") + (f":{quote(s['PASSWORD'])}" if s["PASSWORD"] else "")
    if host.startswith("/"):
        return f"postgresql://{auth}@/{s['NAME']}?host={host}"
    port = f":{s['PORT']}" if s["PORT"] else ""
    return f"postgresql://{auth}@{host}{port}/{s['NAME']}"


def start_worker(queue: str) -> subprocess.Popen:
    """A Celery worker process (solo pool) consuming ``queue``, on the test database."""
    env = {**os.environ, "DATABASE_URL": database_url_of_test_db(), "DB_CONN_MAX_AGE": "0"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "billing",
            "worker",
            "--pool",
            "solo",
            "--queues",
            queue,
            "--loglevel",
            "WARNING",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=REPO,
        env=env,
    )


def stop_worker(worker: subprocess.Popen) -> None:
    worker.terminate()
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()


@pytest.fixture
def worker_queue():
    """A Celery worker process consuming a queue of its own, on the test database."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    worker = start_worker(queue)
    try:
        yield queue
    finally:
        stop_worker(worker)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_releases_expired_holds(worker_queue, revenue, make_wallet):
    wallet = make_wallet("10")
    hold = services.place_hold(
        reference=unique(),
        account=wallet,
        destination=revenue,
        amount="4",
        expires_at=timezone.now() - timedelta(seconds=1),
    )
    result = release_expired_holds.apply_async(queue=worker_queue)
    assert result.get(timeout=60) == 1
    hold.refresh_from_db()
    assert hold.status == HoldStatus.EXPIRED
    assert selectors.get_balance(account=wallet).held == Decimal("0")
    # Delivered again (Redis visibility timeout, a retry): nothing more happens.
    assert release_expired_holds.apply_async(queue=worker_queue).get(timeout=60) == 0


@pytest.mark.django_db(transaction=True)
def test_beat_schedule_is_stored_in_the_database():
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    from billing.project.celery import app

    DatabaseScheduler(app=app)  # what `celery beat` does at start: sync the code's schedule
    deadline = time.monotonic() + 5
    while not PeriodicTask.objects.filter(name="ledger-release-expired-holds").exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    task = PeriodicTask.objects.get(name="ledger-release-expired-holds")
    assert task.task == "ledger.tasks.release_expired_holds"
    assert task.enabled
