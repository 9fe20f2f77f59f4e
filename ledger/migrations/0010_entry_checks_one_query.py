"""ledger_check_balanced (0009) as one query, the transactions looked up without a lock,
and ledger_balance filled half full so that postings' updates stay HOT (issue 14,
session 18).

The entries' statement trigger ran two queries, each planned once and kept but each with
an executor started and ended on every call (for a single event's posting, their start-up
was most of the trigger's cost: perf on the backend). One query now, the same checks in
the same order (an Append under LIMIT 1: a branch runs only if the ones before found
nothing), the same errors: 23503 for a missing (account, currency), then for a missing
transaction, then LG003 for a transaction that does not balance in a currency.

The transactions an insert's entries name are looked up, not locked FOR KEY SHARE: a
ledger_transaction row can be neither deleted nor updated (``ledger_transaction_immutable``,
0002, refuses both), so no concurrent statement can take it away between the check and the
commit, and the lock (a tuple lock written to the row and to the WAL, once per posting)
protected nothing. An uncommitted transaction of another session is not found, as the
key's lookup did not find it. Accounts can be deleted (when no entry refers to them) and
stay locked, as 0009 locks them.

``ledger_balance`` rows are only ever updated in place (posted, held, version, time: no
indexed column), two to four per posting; with full pages most of those updates were not
HOT and wrote an entry into both of its indexes (measured on the bench seed: 31 % HOT).
``fillfactor = 50`` leaves room for a new version of every row of a page (existing pages
are not rewritten: see metering 0017).
"""

from importlib import import_module

from django.db import migrations

CHECK = r"""
CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT c.balance, c.col, c.val, c.tbl, c.transaction_id, c.currency, c.total INTO bad
      FROM (
        -- The references first, as the keys' row triggers fired before the balance check.
        SELECT false AS balance, 'account_id, currency' AS col,
               k.account_id || ', ' || k.currency AS val, 'ledger_account' AS tbl,
               NULL::bigint AS transaction_id, NULL::text AS currency, NULL::numeric AS total
          FROM (SELECT DISTINCT n.account_id, n.currency FROM new_entries n
                 ORDER BY 1, 2) AS k
         WHERE NOT EXISTS (SELECT FROM ledger_account a
                            WHERE a.id = k.account_id AND a.currency = k.currency
                              FOR KEY SHARE)
        UNION ALL
        SELECT false, 'transaction_id', k.id::text, 'ledger_transaction', NULL, NULL, NULL
          FROM (SELECT DISTINCT n.transaction_id AS id FROM new_entries n) AS k
         WHERE NOT EXISTS (SELECT FROM ledger_transaction t WHERE t.id = k.id)
        UNION ALL
        SELECT true, NULL, NULL, NULL, n.transaction_id, n.currency::text, sum(n.amount)
          FROM new_entries n
         GROUP BY n.transaction_id, n.currency
        HAVING sum(n.amount) <> 0
      ) AS c
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF NOT bad.balance THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = format('insert or update on table "ledger_entry" violates foreign key '
                             'ledger_entry.%s', bad.col),
            DETAIL = format('Key (%s)=(%s) is not present in table "%s".',
                            bad.col, coalesce(bad.val, 'null'), bad.tbl);
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'LG003',
        MESSAGE = format('transaction %s does not balance in %s (off by %s)',
                         bad.transaction_id, bad.currency, bad.total);
END $$;
"""


def _previous_check() -> str:
    """0009's function, as 0009 made it (its other functions and triggers stay)."""
    references = import_module("ledger.migrations.0009_entry_references_statement_check")
    return references.CHECK.split("CREATE FUNCTION ledger_entry_refuse_orphans")[0]


class Migration(migrations.Migration):
    dependencies = [("ledger", "0009_entry_references_statement_check")]

    operations = [
        migrations.RunSQL(CHECK, _previous_check()),
        migrations.RunSQL(
            "ALTER TABLE ledger_balance SET (fillfactor = 50);",
            "ALTER TABLE ledger_balance RESET (fillfactor);",
        ),
    ]
