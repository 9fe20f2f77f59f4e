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
-- Every INSERT statement into ledger_entry must balance per transaction and currency.
-- By induction every transaction then balances, whoever wrote the SQL: a transaction's
-- first statement cannot be a lone entry (a single non-zero amount never sums to zero)
-- and later statements can only add balanced sets. A statement-level trigger over the
-- transition table checks the new rows once per statement, with no index lookups: far
-- cheaper at commit than a deferred per-row constraint trigger re-summing the
-- transaction for every entry.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER ledger_entry_balanced AFTER INSERT ON ledger_entry
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_balanced();

-- An entry's account exists and has the entry's currency: one composite foreign key
-- (Django's own account_id key is not created; see Entry.account).
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
--
-- Legs are read once into arrays and each account is fetched by primary key; later
-- statements work on the arrays only. (Joining the JSON to ledger_account instead lets the
-- planner guess 10,000 legs and scan the whole account table on every posting.)
CREATE FUNCTION ledger_post_transactions(p_transactions jsonb)
RETURNS TABLE (idx integer, transaction_id bigint, replayed boolean,
               effective_at timestamptz, recorded_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    n_tx integer := jsonb_array_length(p_transactions);
    tx jsonb;
    leg record;
    acc record;
    bal record;
    i integer;
    v_ref text;
    v_refs text[] := '{}';
    v_id bigint;
    v_hash text;
    v_effective timestamptz;
    v_recorded timestamptz;
    v_new_id bigint[];
    leg_tx integer[] := '{}';
    leg_account bigint[] := '{}';
    leg_currency text[] := '{}';
    leg_amount numeric[] := '{}';
    leg_delta numeric[] := '{}';
    leg_hot boolean[] := '{}';
    v_row bigint;
    v_avail numeric;
    v_floor numeric;
BEGIN
    -- 1. Validate everything before writing anything.
    IF n_tx IS NULL OR n_tx = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005', MESSAGE = 'nothing to post';
    END IF;
    FOR i IN 1..n_tx LOOP
        tx := p_transactions -> (i - 1);
        v_ref := tx ->> 'reference';
        IF v_ref IS NULL OR v_ref = '' THEN
            RAISE EXCEPTION USING ERRCODE = 'LG005', MESSAGE = 'a transaction needs a reference';
        END IF;
        IF v_ref = ANY(v_refs) THEN
            RAISE EXCEPTION USING ERRCODE = 'LG005',
                MESSAGE = 'the same reference appears twice in one bulk posting';
        END IF;
        v_refs := v_refs || v_ref;
        IF jsonb_typeof(tx -> 'entries') IS DISTINCT FROM 'array'
           OR jsonb_array_length(tx -> 'entries') < 2 THEN
            RAISE EXCEPTION USING ERRCODE = 'LG003',
                MESSAGE = format('transaction %s needs at least two entries', v_ref);
        END IF;
        FOR leg IN SELECT * FROM jsonb_to_recordset(tx -> 'entries')
                                 AS x(account_id bigint, amount numeric) LOOP
            IF leg.amount IS NULL OR leg.amount = 0 OR leg.amount <> round(leg.amount, 12) THEN
                RAISE EXCEPTION USING ERRCODE = 'LG005', MESSAGE = format(
                    'transaction %s has an entry amount that is zero, missing or finer '
                    'than 1e-12', v_ref);
            END IF;
            SELECT a.currency, a.normal_balance, a.is_hot INTO acc
              FROM ledger_account a WHERE a.id = leg.account_id;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'LG004', MESSAGE = format(
                    'account %s does not exist', coalesce(leg.account_id::text, 'null'));
            END IF;
            leg_tx := leg_tx || i;
            leg_account := leg_account || leg.account_id;
            leg_currency := leg_currency || acc.currency;
            leg_amount := leg_amount || leg.amount;
            -- the change of the account's balance in its normal direction
            leg_delta := leg_delta || CASE WHEN acc.normal_balance = 'debit'
                                           THEN leg.amount ELSE -leg.amount END;
            leg_hot := leg_hot || acc.is_hot;
        END LOOP;
    END LOOP;

    SELECT v_refs[u.t] AS reference, u.cur AS currency, sum(u.amt) AS total INTO bal
      FROM unnest(leg_tx, leg_currency, leg_amount) AS u(t, cur, amt)
     GROUP BY u.t, u.cur HAVING sum(u.amt) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LG003', MESSAGE = format(
            'transaction %s does not balance in %s: debits and credits differ by %s',
            bal.reference, bal.currency, bal.total);
    END IF;

    -- 2. Insert the transaction rows in reference order (a fixed order, so two bulk
    --    postings sharing references cannot deadlock). The unique index on reference
    --    decides idempotency: a concurrent twin waits here for the first to commit.
    v_new_id := array_fill(NULL::bigint, ARRAY[n_tx]);
    FOR i IN SELECT s.i FROM generate_subscripts(v_refs, 1) AS s(i) ORDER BY v_refs[s.i] LOOP
        tx := p_transactions -> (i - 1);
        v_id := NULL;
        INSERT INTO ledger_transaction AS lt
               (reference, payload_hash, description, metadata, effective_at, recorded_at,
                reverses_id, hold_id)
        VALUES (v_refs[i], tx ->> 'payload_hash',
                coalesce(tx ->> 'description', ''), coalesce(tx -> 'metadata', '{}'),
                coalesce((tx ->> 'effective_at')::timestamptz, now()), now(),
                (tx ->> 'reverses_id')::bigint, (tx ->> 'hold_id')::bigint)
        ON CONFLICT (reference) DO NOTHING
        RETURNING lt.id, lt.effective_at, lt.recorded_at INTO v_id, v_effective, v_recorded;

        IF v_id IS NULL THEN
            SELECT lt.id, lt.payload_hash, lt.effective_at, lt.recorded_at
              INTO v_id, v_hash, v_effective, v_recorded
              FROM ledger_transaction lt WHERE lt.reference = v_refs[i];
            IF v_hash IS DISTINCT FROM tx ->> 'payload_hash' THEN
                RAISE EXCEPTION USING ERRCODE = 'LG002', MESSAGE = format(
                    'reference %s was already used for a different transaction (%s)',
                    v_refs[i], v_id);
            END IF;
            replayed := true;
        ELSE
            v_new_id[i] := v_id;
            replayed := false;
        END IF;
        idx := i; transaction_id := v_id;
        effective_at := v_effective; recorded_at := v_recorded;
        RETURN NEXT;
    END LOOP;

    IF (SELECT bool_and(x IS NULL) FROM unnest(v_new_id) AS x) THEN
        RETURN;  -- every transaction was a replay: nothing more to write
    END IF;

    -- 3. The entries of the new transactions, in one statement (the balance trigger sees
    --    each transaction's entries together).
    INSERT INTO ledger_entry (transaction_id, account_id, currency, amount)
    SELECT v_new_id[u.t], u.acc, u.cur, u.amt
      FROM unnest(leg_tx, leg_account, leg_currency, leg_amount) AS u(t, acc, cur, amt)
     WHERE v_new_id[u.t] IS NOT NULL;

    -- 4. Balances. Owned accounts first, locked in id order (no deadlocks between
    --    postings), each with a conditional UPDATE that checks the floor against the
    --    newest committed balance. Then hot accounts: the first bucket nobody else holds.
    FOR bal IN
        SELECT u.acc AS id, u.hot AS is_hot, sum(u.delta) AS delta
          FROM unnest(leg_tx, leg_account, leg_delta, leg_hot) AS u(t, acc, delta, hot)
         WHERE v_new_id[u.t] IS NOT NULL
         GROUP BY u.acc, u.hot
         ORDER BY u.hot, u.acc
    LOOP
        CONTINUE WHEN bal.delta = 0;
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
