"""Single-column indexes of foreign keys that a composite index or unique constraint
already leads with: one index less to write for every row rating inserts or updates
(issue 14). Only the index goes: Django's own AlterField would drop and re-add the
foreign key, which re-checks every row of the table under lock."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
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
                    'DROP INDEX IF EXISTS "ledger_balance_account_id_c2c102a5"',
                    reverse_sql='CREATE INDEX IF NOT EXISTS "ledger_balance_account_id_c2c102a5" ON "ledger_balance" ("account_id")',
                ),
            ],
        ),
    ]
