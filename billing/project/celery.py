"""The Celery application (cookiecutter-django pattern)."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing.project.settings")

app = Celery("billing")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Celery's Django fixup closes the database connection around every task unless told to
# reuse it: a fresh PostgreSQL backend per task cost the period close about as much
# database CPU as the close itself (bench/close: 47 s → 29 s for 2,000 closes). The fixup
# reads this key as is (not through the CELERY_ namespace); 0 restores the default.
app.conf["CELERY_DB_REUSE_MAX"] = int(os.environ.get("CELERY_DB_REUSE_MAX", "100")) or None
app.autodiscover_tasks()


@signals.worker_ready.connect
@signals.worker_process_init.connect
def _freeze_startup_objects(**_kwargs) -> None:
    """A worker's start-up objects out of the garbage collector's walks, as the web
    server's (billing/project/memory.py): in the main process once it is ready, and in
    each pool process forked from it."""
    from billing.project.memory import freeze_startup_objects

    freeze_startup_objects()
