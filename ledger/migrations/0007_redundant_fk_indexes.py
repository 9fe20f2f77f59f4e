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
        ("ledger", "0006_entry_index_by_account_transaction"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="balance",
                    name="account",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="balance_rows",
                        to="ledger.account",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "ledger_balance_account_id_c2c102a5"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "ledger_balance_account_id_c2c102a5" ON "ledger_balance" ("account_id")',
                ),
            ],
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="transaction",
                    name="hold",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="settlements",
                        to="ledger.hold",
                    ),
                ),
                migrations.AddIndex(
                    model_name="transaction",
                    index=models.Index(
                        condition=models.Q(("hold__isnull", False)),
                        fields=["hold"],
                        name="ledger_transaction_hold",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'CREATE INDEX CONCURRENTLY IF NOT EXISTS "ledger_transaction_hold" ON "ledger_transaction" ("hold_id") '
                    'WHERE "hold_id" IS NOT NULL',
                    reverse_sql='DROP INDEX CONCURRENTLY IF EXISTS "ledger_transaction_hold"',
                ),
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "ledger_transaction_hold_id_bae4c0e6"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "ledger_transaction_hold_id_bae4c0e6" ON "ledger_transaction" ("hold_id")',
                ),
            ],
        ),
    ]
