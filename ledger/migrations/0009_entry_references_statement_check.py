"""An entry's transaction and its account (with the account's currency) exist: checked once
per INSERT statement by the entries' balance trigger, instead of two foreign keys checked
row by row (issue 14).

Every ledger entry ran two RI queries through SPI: ``ledger_entry_account_currency_fk``
(0002, at the end of its statement) and Django's key on ``transaction_id`` (DEFERRABLE
INITIALLY DEFERRED: at commit), a lookup, a lock and an executor started and ended each,
eight for a single event's four legs. Measured on a private PostgreSQL 15 (bench seed,
single events, pg_stat_statements): 2 x 3.7 RI queries per event, 0.009 and 0.007 ms of
execution each, and about as much again around each (the trigger event, SPI, the cached
plan checked and locked); perf put the deferred ones alone at 2.4 % of the backend's CPU.
A batch pays them for every entry of its postings.

``ledger_check_balanced`` (0002), already run once per INSERT statement over the
transition table, now first locks each distinct (account, currency) and each distinct
transaction the new entries name, FOR KEY SHARE in id order (as the RI queries lock them),
and refuses the statement if one is missing, with SQLSTATE 23503 (foreign_key_violation:
Django raises IntegrityError) as the keys did; then checks the balance (LG003) as before.
A wrong currency for its account is a missing (account, currency) pair, as it was for the
composite key.

The other direction: a transaction row can be neither deleted nor updated
(``ledger_transaction_immutable``, 0002). An account's DELETE, or an UPDATE of its id or
currency, is refused by ``ledger_entry_refuse_orphans`` (AFTER row triggers, as
PostgreSQL's RI actions) while an entry refers to it, by the (account_id, transaction_id)
index. Races, READ COMMITTED, as for metering 0015: an insert that locked the account
first makes the delete wait for its KEY SHARE lock, and the delete's trigger, run after the
wait in a new snapshot, sees the committed entry and refuses; a delete first makes the
insert's lock wait, then find the row gone, and refuse.

Differences from the keys: the transaction's existence is checked at the end of the INSERT
statement, not at commit (the key was deferred: nothing in the project inserts entries
before their transaction, which they point at by its generated id). TRUNCATE fires no row
trigger: truncating ledger_account or ledger_transaction without ledger_entry is no longer
refused on the entries' account (ledger_balance's key still refuses it for accounts; only
the test suite's flush truncates, every table at once).
"""

from django.db import migrations, models

CHECK = r"""
CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    -- The references first, as the keys' row triggers fired before this one.
    SELECT m.col, m.val, m.tbl INTO bad FROM (
        SELECT 'account_id, currency' AS col, k.account_id || ', ' || k.currency AS val,
               'ledger_account' AS tbl, l.id AS found
          FROM (SELECT DISTINCT n.account_id, n.currency FROM new_entries n
                 ORDER BY 1, 2) AS k
          LEFT JOIN LATERAL (SELECT a.id FROM ledger_account a
                              WHERE a.id = k.account_id AND a.currency = k.currency
                                FOR KEY SHARE) AS l ON true
        UNION ALL
        SELECT 'transaction_id', k.id::text, 'ledger_transaction', l.id
          FROM (SELECT DISTINCT n.transaction_id AS id FROM new_entries n ORDER BY 1) AS k
          LEFT JOIN LATERAL (SELECT t.id FROM ledger_transaction t WHERE t.id = k.id
                                FOR KEY SHARE) AS l ON true
    ) AS m
     WHERE m.found IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = format('insert or update on table "ledger_entry" violates foreign key '
                             'ledger_entry.%s', bad.col),
            DETAIL = format('Key (%s)=(%s) is not present in table "%s".',
                            bad.col, coalesce(bad.val, 'null'), bad.tbl);
    END IF;
    SELECT transaction_id, currency, sum(amount) AS total INTO bad
      FROM new_entries GROUP BY transaction_id, currency HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LG003',
            MESSAGE = format('transaction %s does not balance in %s (off by %s)',
                             bad.transaction_id, bad.currency, bad.total);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION ledger_entry_refuse_orphans() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM FROM ledger_entry e WHERE e.account_id = OLD.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = format('%s on table "ledger_account" violates foreign key '
                             'ledger_entry.account_id, currency', lower(TG_OP)),
            DETAIL = format('Key (id, currency)=(%s, %s) is still referenced from table '
                            '"ledger_entry".', OLD.id, OLD.currency);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_entry_keeps_account AFTER DELETE ON ledger_account
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_refuse_orphans();
CREATE TRIGGER ledger_entry_keeps_account_key AFTER UPDATE OF id, currency ON ledger_account
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.currency IS DISTINCT FROM NEW.currency)
    EXECUTE FUNCTION ledger_entry_refuse_orphans();
"""

# Back: the balance check alone, as 0002 made it (the keys are made again below).
UNCHECK = r"""
DROP TRIGGER IF EXISTS ledger_entry_keeps_account ON ledger_account;
DROP TRIGGER IF EXISTS ledger_entry_keeps_account_key ON ledger_account;
DROP FUNCTION IF EXISTS ledger_entry_refuse_orphans();
CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT transaction_id, currency, sum(amount) AS total INTO bad
      FROM new_entries GROUP BY transaction_id, currency HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LG003',
            MESSAGE = format('transaction %s does not balance in %s (off by %s)',
                             bad.transaction_id, bad.currency, bad.total);
    END IF;
    RETURN NULL;
END $$;
"""

DROP_ACCOUNT_KEY = "ALTER TABLE ledger_entry DROP CONSTRAINT ledger_entry_account_currency_fk;"
ADD_ACCOUNT_KEY = """
ALTER TABLE ledger_entry ADD CONSTRAINT ledger_entry_account_currency_fk
    FOREIGN KEY (account_id, currency) REFERENCES ledger_account (id, currency);
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0008_account_hot_index")]

    # The checks first, then the keys go (and back the other way): no moment without either.
    operations = [
        migrations.RunSQL(CHECK, UNCHECK),
        migrations.RunSQL(DROP_ACCOUNT_KEY, ADD_ACCOUNT_KEY),
        migrations.AlterField(
            model_name="entry",
            name="transaction",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=models.PROTECT,
                related_name="entries",
                to="ledger.transaction",
            ),
        ),
    ]
