"""Rules the database itself enforces, and the posting function.

Error codes raised here (custom SQLSTATEs in class "LG"); ``ledger.errors`` maps them to
the stable error codes of the API:

    LG001 insufficient_funds        LG004 account_not_found
    LG002 reference_reused          LG005 invalid_transaction
    LG003 unbalanced_transaction    LG010 ledger_immutable
"""

from django.db import migrations

IMMUTABLE = """
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'LG010',
        MESSAGE = format('%s rows are immutable: post a reversal instead of %s',
                         TG_TABLE_NAME, lower(TG_OP));
END $$;

CREATE TRIGGER ledger_entry_immutable BEFORE UPDATE OR DELETE ON ledger_entry
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_transaction_immutable BEFORE UPDATE OR DELETE ON ledger_transaction
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
"""

BALANCED = """
-- Runs at COMMIT (deferred) for every inserted entry: its transaction must balance per
-- currency and have at least two entries, whoever inserted the rows.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT currency, sum(amount) AS total INTO bad
      FROM ledger_entry WHERE transaction_id = NEW.transaction_id
     GROUP BY currency HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LG003',
            MESSAGE = format('transaction %s does not balance in %s (off by %s)',
                             NEW.transaction_id, bad.currency, bad.total);
    END IF;
    IF (SELECT count(*) FROM ledger_entry WHERE transaction_id = NEW.transaction_id) < 2 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LG003',
            MESSAGE = format('transaction %s has fewer than two entries', NEW.transaction_id);
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_entry_balanced AFTER INSERT ON ledger_entry
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();

-- An entry's currency is its account's currency.
ALTER TABLE ledger_entry ADD CONSTRAINT ledger_entry_account_currency_fk
    FOREIGN KEY (account_id, currency) REFERENCES ledger_account (id, currency);
"""

POST = r"""
-- Posts one or more transactions all-or-nothing in a single round trip.
--
-- p_transactions: a JSON array of
--   {"reference", "payload_hash", "description", "metadata", "effective_at" (or null),
--    "reverses_id", "hold_id", "entries": [{"account_id", "amount"}, ...]}
-- returns one row per input transaction (1-based idx) with its id and whether it
-- already existed (an idempotent replay).
CREATE FUNCTION ledger_post_transactions(p_transactions jsonb)
RETURNS TABLE (idx integer, transaction_id bigint, replayed boolean,
               effective_at timestamptz, recorded_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    bal record;
    v_id bigint;
    v_hash text;
    v_effective timestamptz;
    v_recorded timestamptz;
    v_new_idx integer[] := '{}';
    v_new_id bigint[] := '{}';
    v_row bigint;
    v_avail numeric;
    v_floor numeric;
BEGIN
    -- 1. Validate everything before writing anything.
    SELECT x.account_id INTO v_row
      FROM jsonb_array_elements(p_transactions) AS d(doc),
           jsonb_to_recordset(d.doc -> 'entries') AS x(account_id bigint, amount numeric)
      LEFT JOIN ledger_account a ON a.id = x.account_id
     WHERE a.id IS NULL LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LG004',
            MESSAGE = format('account %s does not exist', coalesce(v_row::text, 'null'));
    END IF;

    FOR t IN
        SELECT d.doc ->> 'reference' AS reference, count(*) AS n,
               bool_or(x.amount IS NULL OR x.amount = 0
                       OR x.amount <> round(x.amount, 12)) AS bad_amount
          FROM jsonb_array_elements(p_transactions) AS d(doc)
          LEFT JOIN LATERAL jsonb_to_recordset(d.doc -> 'entries')
               AS x(account_id bigint, amount numeric) ON true
         GROUP BY d.doc ->> 'reference'
    LOOP
        IF t.reference IS NULL OR t.reference = '' THEN
            RAISE EXCEPTION USING ERRCODE = 'LG005', MESSAGE = 'a transaction needs a reference';
        END IF;
        IF t.bad_amount THEN
            RAISE EXCEPTION USING ERRCODE = 'LG005', MESSAGE = format(
                'transaction %s has an entry amount that is zero, missing or finer than 1e-12',
                t.reference);
        END IF;
    END LOOP;
    IF (SELECT count(DISTINCT d.doc ->> 'reference') <> count(*)
          FROM jsonb_array_elements(p_transactions) AS d(doc)) THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005',
            MESSAGE = 'the same reference appears twice in one bulk posting';
    END IF;

    SELECT d.doc ->> 'reference' AS reference, a.currency, sum(x.amount) AS total,
           count(*) AS n INTO t
      FROM jsonb_array_elements(p_transactions) AS d(doc),
           jsonb_to_recordset(d.doc -> 'entries') AS x(account_id bigint, amount numeric)
      JOIN ledger_account a ON a.id = x.account_id
     GROUP BY d.doc ->> 'reference', a.currency
    HAVING sum(x.amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LG003', MESSAGE = format(
            'transaction %s does not balance in %s: debits and credits differ by %s',
            t.reference, t.currency, t.total);
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_transactions) AS d(doc)
                WHERE jsonb_array_length(coalesce(d.doc -> 'entries', '[]')) < 2) THEN
        RAISE EXCEPTION USING ERRCODE = 'LG003',
            MESSAGE = 'a transaction needs at least two entries';
    END IF;

    -- 2. Insert the transaction rows in reference order (a fixed order, so two bulk
    --    postings sharing references cannot deadlock). The unique index on reference
    --    decides idempotency: a concurrent twin waits here for the first to commit.
    FOR t IN
        SELECT d.n::integer AS n, d.doc
          FROM jsonb_array_elements(p_transactions) WITH ORDINALITY AS d(doc, n)
         ORDER BY d.doc ->> 'reference'
    LOOP
        v_id := NULL;
        INSERT INTO ledger_transaction AS lt
               (reference, payload_hash, description, metadata, effective_at, recorded_at,
                reverses_id, hold_id)
        VALUES (t.doc ->> 'reference', t.doc ->> 'payload_hash',
                coalesce(t.doc ->> 'description', ''), coalesce(t.doc -> 'metadata', '{}'),
                coalesce((t.doc ->> 'effective_at')::timestamptz, now()), now(),
                (t.doc ->> 'reverses_id')::bigint, (t.doc ->> 'hold_id')::bigint)
        ON CONFLICT (reference) DO NOTHING
        RETURNING lt.id, lt.effective_at, lt.recorded_at INTO v_id, v_effective, v_recorded;

        IF v_id IS NULL THEN
            SELECT lt.id, lt.payload_hash, lt.effective_at, lt.recorded_at
              INTO v_id, v_hash, v_effective, v_recorded
              FROM ledger_transaction lt WHERE lt.reference = t.doc ->> 'reference';
            IF v_hash IS DISTINCT FROM t.doc ->> 'payload_hash' THEN
                RAISE EXCEPTION USING ERRCODE = 'LG002', MESSAGE = format(
                    'reference %s was already used for a different transaction (%s)',
                    t.doc ->> 'reference', v_id);
            END IF;
            idx := t.n; transaction_id := v_id; replayed := true;
        ELSE
            v_new_idx := v_new_idx || t.n;
            v_new_id := v_new_id || v_id;
            idx := t.n; transaction_id := v_id; replayed := false;
        END IF;
        effective_at := v_effective; recorded_at := v_recorded;
        RETURN NEXT;
    END LOOP;

    IF cardinality(v_new_id) = 0 THEN
        RETURN;  -- every transaction was a replay: nothing more to write
    END IF;

    -- 3. The entries of the new transactions, in one statement.
    INSERT INTO ledger_entry (transaction_id, account_id, currency, amount)
    SELECT m.id, x.account_id, a.currency, x.amount
      FROM unnest(v_new_idx, v_new_id) AS m(n, id)
      JOIN jsonb_array_elements(p_transactions) WITH ORDINALITY AS d(doc, n) ON d.n = m.n
      CROSS JOIN LATERAL jsonb_to_recordset(d.doc -> 'entries')
           AS x(account_id bigint, amount numeric)
      JOIN ledger_account a ON a.id = x.account_id;

    -- 4. Balances. Owned accounts first, locked in id order (no deadlocks between
    --    postings), each with a conditional UPDATE that checks the floor against the
    --    newest committed balance. Then hot accounts: the first bucket nobody else holds.
    FOR bal IN
        SELECT a.id, a.is_hot,
               sum(x.amount) * CASE WHEN a.normal_balance = 'debit' THEN 1 ELSE -1 END AS delta
          FROM unnest(v_new_idx) AS m(n)
          JOIN jsonb_array_elements(p_transactions) WITH ORDINALITY AS d(doc, n) ON d.n = m.n
          CROSS JOIN LATERAL jsonb_to_recordset(d.doc -> 'entries')
               AS x(account_id bigint, amount numeric)
          JOIN ledger_account a ON a.id = x.account_id
         GROUP BY a.id, a.is_hot, a.normal_balance
         ORDER BY a.is_hot, a.id
    LOOP
        IF NOT bal.is_hot THEN
            UPDATE ledger_balance b
               SET posted = b.posted + bal.delta, version = b.version + 1, updated_at = now()
             WHERE b.account_id = bal.id AND b.bucket = 0
               AND (bal.delta >= 0 OR b.floor IS NULL OR b.posted + bal.delta - b.held >= b.floor)
            RETURNING b.id INTO v_row;
            IF NOT FOUND THEN
                SELECT b.posted - b.held, b.floor INTO v_avail, v_floor
                  FROM ledger_balance b WHERE b.account_id = bal.id AND b.bucket = 0;
                IF NOT FOUND THEN
                    RAISE EXCEPTION USING ERRCODE = 'LG005',
                        MESSAGE = format('account %s has no balance row', bal.id);
                END IF;
                RAISE EXCEPTION USING ERRCODE = 'LG001',
                    MESSAGE = format(
                        'account %s has %s available; this posting needs %s (floor %s)',
                        bal.id, v_avail, -bal.delta, coalesce(v_floor, 0)),
                    DETAIL = json_build_object('account_id', bal.id, 'available', v_avail,
                                               'required', -bal.delta, 'floor', v_floor)::text;
            END IF;
        ELSE
            UPDATE ledger_balance b
               SET posted = b.posted + bal.delta, version = b.version + 1, updated_at = now()
             WHERE b.id = (SELECT s.id FROM ledger_balance s WHERE s.account_id = bal.id
                            LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING b.id INTO v_row;
            IF NOT FOUND THEN
                -- Every bucket is busy: wait for a random one.
                UPDATE ledger_balance b
                   SET posted = b.posted + bal.delta, version = b.version + 1,
                       updated_at = now()
                 WHERE b.id = (SELECT s.id FROM ledger_balance s WHERE s.account_id = bal.id
                                ORDER BY random() LIMIT 1);
                IF NOT FOUND THEN
                    RAISE EXCEPTION USING ERRCODE = 'LG005',
                        MESSAGE = format('hot account %s has no balance rows', bal.id);
                END IF;
            END IF;
        END IF;
    END LOOP;
END $$;
"""

DROP = """
DROP FUNCTION IF EXISTS ledger_post_transactions(jsonb);
ALTER TABLE ledger_entry DROP CONSTRAINT IF EXISTS ledger_entry_account_currency_fk;
DROP TRIGGER IF EXISTS ledger_entry_balanced ON ledger_entry;
DROP FUNCTION IF EXISTS ledger_check_balanced();
DROP TRIGGER IF EXISTS ledger_entry_immutable ON ledger_entry;
DROP TRIGGER IF EXISTS ledger_transaction_immutable ON ledger_transaction;
DROP FUNCTION IF EXISTS ledger_refuse_change();
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]

    operations = [
        migrations.RunSQL(IMMUTABLE + BALANCED + POST, reverse_sql=DROP),
    ]
