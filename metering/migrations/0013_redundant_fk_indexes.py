"""Single-column indexes of foreign keys that a composite index or unique constraint
already leads with: one index less to write for every row rating inserts or updates
(issue 14). Only the index goes: Django's own AlterField would drop and re-add the
foreign key, which re-checks every row of the table under lock. A key that is mostly NULL
(a transaction's hold, an event's project) keeps an index of the rows where it is set."""

import django.db.models.deletion
from django.db import migrations, models


def _key(to: str, related_name: str, *, null: bool = False) -> models.ForeignKey:
    return models.ForeignKey(
        blank=null,
        db_index=False,
        null=null,
        on_delete=django.db.models.deletion.PROTECT,
        related_name=related_name,
        to=to,
    )


def _create(name: str, table: str, column: str, where: str = "") -> str:
    return f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{table}" ("{column}"){where}'


def _drop(name: str) -> str:
    return f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"'


def unindexed(model: str, field: str, to: str, related_name: str, *, index: str, table: str):
    """The key's own index dropped (a composite one leads with it)."""
    return migrations.SeparateDatabaseAndState(
        state_operations=[
            migrations.AlterField(model_name=model, name=field, field=_key(to, related_name))
        ],
        database_operations=[
            migrations.RunSQL(_drop(index), reverse_sql=_create(index, table, f"{field}_id"))
        ],
    )


def indexed_where_set(
    model: str, field: str, to: str, related_name: str, *, index: str, table: str, name: str
):
    """The key's own index replaced by one of the rows where it is set."""
    column = f"{field}_id"
    return migrations.SeparateDatabaseAndState(
        state_operations=[
            migrations.AlterField(
                model_name=model, name=field, field=_key(to, related_name, null=True)
            ),
            migrations.AddIndex(
                model_name=model,
                index=models.Index(
                    condition=models.Q((f"{field}__isnull", False)), fields=[field], name=name
                ),
            ),
        ],
        database_operations=[
            migrations.RunSQL(
                _create(name, table, column, f' WHERE "{column}" IS NOT NULL'),
                reverse_sql=_drop(name),
            ),
            migrations.RunSQL(_drop(index), reverse_sql=_create(index, table, column)),
        ],
    )


class Migration(migrations.Migration):
    # CONCURRENTLY: no table is locked against writes while an index goes or is built.
    atomic = False

    dependencies = [
        ("billing", "0036_audit_created_at_indexes"),
        ("metering", "0012_event_project"),
    ]

    operations = [
        unindexed(
            "dailyusage",
            "customer",
            "billing.customer",
            "+",
            index="metering_dailyusage_customer_id_40a0dd66",
            table="metering_dailyusage",
        ),
        unindexed(
            "dailyusage",
            "subscription",
            "billing.subscription",
            "+",
            index="metering_dailyusage_subscription_id_ed14a3cd",
            table="metering_dailyusage",
        ),
        unindexed(
            "event",
            "customer",
            "billing.customer",
            "+",
            index="metering_event_customer_id_6954f977",
            table="metering_event",
        ),
        unindexed(
            "incomingevent",
            "customer",
            "billing.customer",
            "+",
            index="metering_incomingevent_customer_id_280cb24b",
            table="metering_incomingevent",
        ),
        unindexed(
            "modelusage",
            "customer",
            "billing.customer",
            "+",
            index="metering_modelusage_customer_id_ac739471",
            table="metering_modelusage",
        ),
        unindexed(
            "modelusage",
            "subscription",
            "billing.subscription",
            "+",
            index="metering_modelusage_subscription_id_62ae5946",
            table="metering_modelusage",
        ),
        unindexed(
            "periodusage",
            "subscription",
            "billing.subscription",
            "+",
            index="metering_periodusage_subscription_id_8b10bcbd",
            table="metering_periodusage",
        ),
        indexed_where_set(
            "event",
            "project",
            "billing.project",
            "+",
            index="metering_event_project_id_b5e6e420",
            table="metering_event",
            name="metering_event_project",
        ),
    ]
