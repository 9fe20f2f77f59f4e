from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        from billing.api import schema  # noqa: F401 - registers the OpenAPI auth extension
        from billing.roles import sync_roles

        # the staff roles gain later models' permissions after every migrate
        post_migrate.connect(sync_roles, dispatch_uid="billing.roles.sync_roles")
