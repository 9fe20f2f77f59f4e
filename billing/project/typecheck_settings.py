"""The settings the type checker loads (pyproject.toml, ``[tool.django-stubs]``).

django-stubs imports the settings to learn the installed apps and their models; it never
connects to the database or the cache. ``billing.project.settings`` refuses to load in production
mode without its required variables, and in development mode starts the embedded servers,
so here production mode is chosen and the required variables that are unset get
placeholders that nothing connects to. The settings themselves are ``billing.project.settings``'s,
unchanged. (Read by mypy only: no process serves with this module.)
"""

import os

os.environ["DJANGO_DEBUG"] = "0"  # production mode: no embedded servers, no secret-key file
for _name, _placeholder in {
    "DJANGO_SECRET_KEY": "type-checking-only",
    "DJANGO_ALLOWED_HOSTS": "localhost",
    "PORTAL_BASE_URL": "http://localhost",
    "DATABASE_URL": "postgres://type-checking-only@localhost:1/none",
    "REDIS_URL": "redis://localhost:1/0",
}.items():
    os.environ.setdefault(_name, _placeholder)

from billing.project.settings import *  # noqa: E402, F403
