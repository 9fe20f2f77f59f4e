"""The sums-match-legs trigger (0006) reads a transaction's events and entries by their
indexes, whatever the statistics say.

Its query is planned once per connection and the plan is kept. A connection that planned it
while metering_event and ledger_entry were nearly empty (a new database, or statistics not
yet refreshed: autovacuum off) kept a plan that scans both tables whole for every
transaction; measured in bench/ingest.py as the tables grew by tens of thousands of rows,
one execution went from 29 ms to 880 ms, 0.4-2.3 ms per event, against 0.004-0.006 ms by
index. The lookups it makes are always by transaction id (indexed), so a sequential scan is
never the better plan here; the transition table, which has no index, is still scanned.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("metering", "0007_async_ingest")]

    operations = [
        migrations.RunSQL(
            "ALTER FUNCTION metering_event_sums_match_legs() SET enable_seqscan = off",
            "ALTER FUNCTION metering_event_sums_match_legs() RESET enable_seqscan",
        )
    ]
