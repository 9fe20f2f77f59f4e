import os

from django.core.wsgi import get_wsgi_application

from billing.project.memory import freeze_startup_objects

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing.project.settings")
application = get_wsgi_application()
# What every worker loaded once is kept out of the garbage collector's walks
# (billing/project/memory.py says why).
freeze_startup_objects()
