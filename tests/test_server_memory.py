"""The web server's and the Celery worker's start-up objects are frozen out of the garbage
collector's walks (billing/project/memory.py says why), in a process of their own as a
server starts: importing the WSGI module, or a Celery worker process starting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_celery import database_url_of_test_db

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import gc, json, sys
before = gc.get_freeze_count()
{start}
print(json.dumps({{"before": before, "after": gc.get_freeze_count(),
                   "views": "metering.api.ingest" in sys.modules}}))
"""


def run(start: str) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url_of_test_db()}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(start=start)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.django_db
def test_the_wsgi_application_freezes_what_it_loaded_views_included():
    seen = run("import billing.project.wsgi")
    assert seen["before"] == 0
    # Django, the apps, the admin and the URLconf's views: well over 100,000 objects.
    assert seen["after"] > 100_000
    assert seen["views"] is True


@pytest.mark.django_db
def test_a_celery_worker_process_freezes_what_it_loaded():
    seen = run(
        "from billing.project.celery import app\n"
        "import django; django.setup()\n"
        "from celery import signals\n"
        "signals.worker_process_init.send(sender=None)"
    )
    assert seen["before"] == 0
    assert seen["after"] > 100_000
    assert seen["views"] is True
