"""Single-column indexes of foreign keys that a composite index or unique constraint
already leads with: one index less to write for every row rating inserts or updates
(issue 14). Only the index goes: Django's own AlterField would drop and re-add the
foreign key, which re-checks every row of the table under lock. A key that is mostly NULL
(a transaction's hold, an event's project) keeps an index of the rows where it is set."""

from django.db import migrations

from ledger.migration_ops import indexed_where_set, unindexed


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
