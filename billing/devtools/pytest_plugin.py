"""pytest runs in development mode (loaded first: ``-p billing.devtools.pytest_plugin`` in
pyproject.toml).

The settings are production's by default (DEBUG off, addresses required). A test run is a
development command like ``make run``: before pytest-django imports the settings, the
development defaults of ``billing.devtools.servers`` are filled in (variables already set are
kept). Tests that check the production rules import the settings in a subprocess with an
environment of their own.
"""

from billing.devtools import servers

servers.use_development_environment()
