"""Development-only tooling: nothing in production imports it, except the settings in
development mode (``DJANGO_DEBUG=1``), which ask ``servers`` for the embedded servers.

``servers``: embedded PostgreSQL and Redis when DATABASE_URL / REDIS_URL are unset
(``python -m billing.devtools.servers exec -- CMD``, what ``make test`` runs); ``run``:
``make run``, the whole product with demo data; ``pytest_plugin``: puts a test run in
development mode (``-p billing.devtools.pytest_plugin`` in pyproject.toml).
"""
