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
        ("ledger", "0006_entry_index_by_account_transaction"),
    ]

    operations = [
        unindexed(
            "balance",
            "account",
            "ledger.account",
            "balance_rows",
            index="ledger_balance_account_id_c2c102a5",
            table="ledger_balance",
        ),
        indexed_where_set(
            "transaction",
            "hold",
            "ledger.hold",
            "settlements",
            index="ledger_transaction_hold_id_bae4c0e6",
            table="ledger_transaction",
            name="ledger_transaction_hold",
        ),
    ]
