"""The staff roles (docs/finance-admin.md), as groups:

- Finance viewer: sees every page of the four apps (and the audit trail), changes nothing.
- Finance operator: the viewer's pages, plus the finance actions — top-ups, adjustments
  (asking for approval when large) and approving others' requests, credit grants (grant,
  void, refund, expire), invoices (finalize, void, credit notes, payments). Not API keys,
  webhook endpoints, alerts, auto top-up settings, plans, customers' creation, users.
- Administrator: every permission there is when this runs (new models' permissions must be
  added to it by a later migration, or given to superusers only).

Permissions are created here first (Django makes them after migrating, too late for a
fresh database)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

FINANCE_APPS = ("ledger", "billing", "metering", "invoicing")
OPERATOR_EXTRA = [
    ("billing", "change_customer"),  # the top-up, adjustment and grant pages of a customer
    ("billing", "change_creditgrant"),  # void, refund, expire
    ("billing", "add_adjustmentrequest"),
    ("billing", "approve_adjustmentrequest"),
    ("invoicing", "change_invoice"),  # finalize, void, credit notes, record payments
    ("invoicing", "add_creditnote"),
    ("invoicing", "add_payment"),
]
ROLES = ("Finance viewer", "Finance operator", "Administrator")


def create_roles(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    assign_roles(apps)


def assign_roles(apps):
    """The groups and their permissions (the permissions must exist). Also used by the tests
    after a transactional test's flush has emptied the tables."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    views = Permission.objects.filter(
        content_type__app_label__in=FINANCE_APPS, codename__startswith="view_"
    )
    viewer, _ = Group.objects.get_or_create(name="Finance viewer")
    viewer.permissions.set(views)
    operator, _ = Group.objects.get_or_create(name="Finance operator")
    extra = [
        Permission.objects.get(content_type__app_label=app, codename=codename)
        for app, codename in OPERATOR_EXTRA
    ]
    operator.permissions.set([*views, *extra])
    administrator, _ = Group.objects.get_or_create(name="Administrator")
    administrator.permissions.set(Permission.objects.all())


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0018_audit_trail_and_approvals"),
        ("invoicing", "0008_audit_trail"),
        ("metering", "0012_event_project"),
        ("ledger", "0005_drop_loop_posting_function"),
        ("auth", "__latest__"),
        ("contenttypes", "__latest__"),
        ("admin", "__latest__"),
        ("sessions", "__latest__"),
        ("axes", "__latest__"),
        ("django_celery_beat", "__latest__"),
        ("otp_totp", "__latest__"),
        ("pghistory", "__latest__"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
