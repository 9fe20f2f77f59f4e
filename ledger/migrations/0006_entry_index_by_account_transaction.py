"""Entries indexed by (account, transaction) instead of (account, id): the same lookups by
account, and an account's transactions newest first straight from the index (a customer's
ledger history, billing.selectors.customer_transaction_ids). The new index is built before
the old one goes, so no moment is without one."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("ledger", "0005_drop_loop_posting_function"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="entry",
            index=models.Index(fields=["account", "transaction"], name="ledger_entry_account_txn"),
        ),
        migrations.RemoveIndex(
            model_name="entry",
            name="ledger_entry_account_id",
        ),
    ]
