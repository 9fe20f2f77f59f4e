"""The Django project: how the apps become one site and one set of workers.

``settings`` (and ``typecheck_settings``, the same settings for mypy), ``urls`` (the root
URLconf), ``celery`` (the Celery application), ``wsgi`` and ``asgi`` (the server entry
points: ``gunicorn billing.project.wsgi``). No business rules live here.
"""
