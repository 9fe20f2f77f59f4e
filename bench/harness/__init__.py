"""What the benchmarks share. Each benchmark (``bench/<name>.py``) is the workload — its
data, its scenarios, its checks and the figures it reports; everything else is here:

    machine    the machine's and the PostgreSQL server's facts, printed with every report
    cpu        CPU time per group of processes between two snapshots of /proc
    stats      ratios, medians, percentiles, timers, pg_stat_activity sampling, and a
               profile of every statement Django sends
    db         throw-away databases (create, copy, drop), settling a database before a run
               (ANALYZE, CHECKPOINT), table-scan counts
    seeding    meters through the services, rows by COPY beside the models' defaults
    processes  the Django environment, spawned load processes meeting at a barrier, the
               HTTP server (gunicorn) and Celery workers, the command's exit on a signal
    report     progress, figures, targets, checks, and the JSON line that ends the output

Nothing here imports Django at module level: a benchmark sets Django up (``processes.
setup_django``) for the database it has just created."""

from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]  # the checkout: where the apps are imported from
