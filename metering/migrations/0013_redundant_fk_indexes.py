"""Single-column indexes of foreign keys that a composite index or unique constraint
already leads with: one index less to write for every row rating inserts or updates
(issue 14). Only the index goes: Django's own AlterField would drop and re-add the
foreign key, which re-checks every row of the table under lock. A key that is mostly NULL
(a transaction's hold, an event's project) keeps an index of the rows where it is set."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    # CONCURRENTLY: no table is locked against writes while an index goes or is built.
    atomic = False

    dependencies = [
        ("billing", "0036_audit_created_at_indexes"),
        ("metering", "0012_event_project"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="dailyusage",
                    name="customer",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.customer",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "metering_dailyusage_customer_id_40a0dd66"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "metering_dailyusage_customer_id_40a0dd66" ON "metering_dailyusage" ("customer_id")',
                ),
            ],
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="dailyusage",
                    name="subscription",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.subscription",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "metering_dailyusage_subscription_id_ed14a3cd"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "metering_dailyusage_subscription_id_ed14a3cd" ON "metering_dailyusage" ("subscription_id")',
                ),
            ],
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="event",
                    name="customer",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.customer",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "metering_event_customer_id_6954f977"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "metering_event_customer_id_6954f977" ON "metering_event" ("customer_id")',
                ),
            ],
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="incomingevent",
                    name="customer",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.customer",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "metering_incomingevent_customer_id_280cb24b"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "metering_incomingevent_customer_id_280cb24b" ON "metering_incomingevent" ("customer_id")',
                ),
            ],
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="modelusage",
                    name="customer",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.customer",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "metering_modelusage_customer_id_ac739471"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "metering_modelusage_customer_id_ac739471" ON "metering_modelusage" ("customer_id")',
                ),
            ],
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="modelusage",
                    name="subscription",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.subscription",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "metering_modelusage_subscription_id_62ae5946"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "metering_modelusage_subscription_id_62ae5946" ON "metering_modelusage" ("subscription_id")',
                ),
            ],
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="periodusage",
                    name="subscription",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.subscription",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "metering_periodusage_subscription_id_8b10bcbd"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "metering_periodusage_subscription_id_8b10bcbd" ON "metering_periodusage" ("subscription_id")',
                ),
            ],
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="event",
                    name="project",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.project",
                    ),
                ),
                migrations.AddIndex(
                    model_name="event",
                    index=models.Index(
                        condition=models.Q(("project__isnull", False)),
                        fields=["project"],
                        name="metering_event_project",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'CREATE INDEX CONCURRENTLY IF NOT EXISTS "metering_event_project" ON "metering_event" ("project_id") '
                    'WHERE "project_id" IS NOT NULL',
                    reverse_sql='DROP INDEX CONCURRENTLY IF EXISTS "metering_event_project"',
                ),
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "metering_event_project_id_b5e6e420"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "metering_event_project_id_b5e6e420" ON "metering_event" ("project_id")',
                ),
            ],
        ),
    ]
