"""The staff roles kept whole as models are added (docs/finance-admin.md, *Roles*).

The groups are made once by the data migration ``billing/migrations/0019_staff_roles.py``
with the permissions there were then. A model added by a later release brings new
permissions, which that migration never saw: after every ``migrate`` (Django's
``post_migrate``, sent once per app after its permissions are created) the groups that
exist gain

- *Administrator*: every permission there is;
- *Finance viewer* and *Finance operator*: every ``view_*`` permission of the four finance
  apps (ledger, billing, metering, invoicing).

Permissions are only added: what staff removed from a group by hand is given back at the
next upgrade only for the administrator (who has every permission by definition); a group
that was deleted is not made again."""

from __future__ import annotations

from typing import Any

FINANCE_APPS = ("ledger", "billing", "metering", "invoicing")
VIEW_ROLES = ("Finance viewer", "Finance operator")
ADMINISTRATOR = "Administrator"


def sync_roles(**kwargs: Any) -> None:
    """``post_migrate`` receiver: the roles that exist gain the permissions of new models."""
    from django.contrib.auth.models import Group, Permission

    using = kwargs.get("using", "default")
    groups = {
        g.name: g for g in Group.objects.using(using).filter(name__in=(*VIEW_ROLES, ADMINISTRATOR))
    }
    if not groups:
        return
    administrator = groups.get(ADMINISTRATOR)
    if administrator is not None:
        missing = Permission.objects.using(using).exclude(group=administrator)
        administrator.permissions.add(*missing)
    views = Permission.objects.using(using).filter(
        content_type__app_label__in=FINANCE_APPS, codename__startswith="view_"
    )
    for name in VIEW_ROLES:
        group = groups.get(name)
        if group is not None:
            group.permissions.add(*views.exclude(group=group))
