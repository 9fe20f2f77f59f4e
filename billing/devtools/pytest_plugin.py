"""pytest runs in development mode (loaded first, with ``-p billing.testing`` in pyproject).

The settings are production's by default (DEBUG off, addresses required). A test run is a
development command like ``make run``: before pytest-django imports the settings, the
development defaults of ``billing.devservices`` are filled in (variables already set are
kept). Tests that check the production rules import the settings in a subprocess with an
environment of their own.
"""

from billing import devservices

devservices.use_development_environment()
