"""One posting function: the loop of 0002 (``ledger_post_transactions``) is dropped; every
posting the single statement (``ledger.services.posting._POST_ONE``) does not take goes
through the set-based function of 0003 (``ledger_post_transactions_bulk``), whatever its
size.

The two had the same contract, error codes and lock order; the loop was kept for 2 to 31
transactions per call as cheaper. Measured (PostgreSQL 15, the 2-core machine shared with
other work; the function's SELECT inside a transaction, median of 300 alternating calls;
transactions of 2 and 4 legs, each on its own wallet and the hot @Revenue): the set-based
function costs about 0.15 ms more per call from 1 to 8 transactions (1.25x at 1, 1.2x at 2,
1.07x at 8), the same at 16, 5 % less at 32. Through rating, the main caller (one
transaction per customer of a part), the post_transactions call of a 2-customer batch took
0.97-0.99 ms with the loop and 0.88-1.02 ms with the set-based function (medians of three
runs each; 8 customers: 1.62-1.72 and 1.61-1.71 ms), in batches of 5 to 15 ms: no
difference to see, so not worth a second copy of every posting rule.

Nothing else calls the loop: no trigger, no other function (0002's triggers call
``ledger_refuse_change`` and ``ledger_check_balanced``; 0004's guards are called by the
single statement). The reverse migration re-creates it from 0002.
"""

import importlib

from django.db import migrations

LOOP = importlib.import_module("ledger.migrations.0002_database_rules").POST

DROP_LOOP = "DROP FUNCTION ledger_post_transactions(jsonb);"


class Migration(migrations.Migration):
    dependencies = [("ledger", "0004_single_posting_statement")]

    operations = [migrations.RunSQL(DROP_LOOP, reverse_sql=LOOP)]
