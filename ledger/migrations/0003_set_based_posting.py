"""A set-based twin of the posting function, for bulks: many transactions (a batch of rated
usage events: a thousand transactions of four legs) cost a handful of statements, not a
loop of statements per transaction and per leg. A single posting stays with the loop of
0002, which is cheaper for one (``ledger.services`` picks by size).

Same contract, same error codes, same order of locks as 0002: validate everything before writing anything; insert the transaction rows in
reference order (two bulks sharing references cannot deadlock), the unique index on
reference deciding idempotency; the entries of the new transactions in one statement;
then the balances — owned accounts in id order with the floor checked by a conditional
UPDATE, then hot accounts on the first free bucket.

Accounts are read with ``id = ANY(<the distinct ids of the legs>)``, a primary-key lookup
per distinct account, and joined to the legs in memory: never a join of the JSON to the
whole account table (the planner cannot estimate JSON rows and would scan it).
"""

from django.db import migrations

POST = r"""
CREATE FUNCTION ledger_post_transactions_bulk(p_transactions jsonb)
RETURNS TABLE (idx integer, transaction_id bigint, replayed boolean,
               effective_at timestamptz, recorded_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    n_tx integer := jsonb_array_length(p_transactions);
    tx_ref text[];
    tx_hash text[];
    leg_tx integer[];
    leg_account bigint[];
    leg_amount numeric[];
    leg_currency text[];
    leg_delta numeric[];
    leg_hot boolean[];
    acc_ids bigint[];
    new_idx integer[];
    new_id bigint[];
    tx_id bigint[];
    bad record;
    bal record;
    v_row bigint;
    v_avail numeric;
    v_floor numeric;
BEGIN
    -- 1. Validate everything before writing anything.
    IF n_tx IS NULL OR n_tx = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005', MESSAGE = 'nothing to post';
    END IF;
    SELECT array_agg(t.tx ->> 'reference' ORDER BY t.i),
           array_agg(t.tx ->> 'payload_hash' ORDER BY t.i)
      INTO tx_ref, tx_hash
      FROM jsonb_array_elements(p_transactions) WITH ORDINALITY AS t(tx, i);
    IF EXISTS (SELECT 1 FROM unnest(tx_ref) AS r WHERE r IS NULL OR r = '') THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005', MESSAGE = 'a transaction needs a reference';
    END IF;
    IF (SELECT count(DISTINCT r) FROM unnest(tx_ref) AS r) <> n_tx THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005',
            MESSAGE = 'the same reference appears twice in one bulk posting';
    END IF;
    SELECT t.tx ->> 'reference' AS reference INTO bad
      FROM jsonb_array_elements(p_transactions) AS t(tx)
     WHERE jsonb_typeof(t.tx -> 'entries') IS DISTINCT FROM 'array'
        OR jsonb_array_length(t.tx -> 'entries') < 2
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LG003',
            MESSAGE = format('transaction %s needs at least two entries', bad.reference);
    END IF;

    SELECT array_agg(t.i::integer ORDER BY t.i, e.j),
           array_agg((e.leg ->> 'account_id')::bigint ORDER BY t.i, e.j),
           array_agg((e.leg ->> 'amount')::numeric ORDER BY t.i, e.j)
      INTO leg_tx, leg_account, leg_amount
      FROM jsonb_array_elements(p_transactions) WITH ORDINALITY AS t(tx, i)
     CROSS JOIN LATERAL jsonb_array_elements(t.tx -> 'entries') WITH ORDINALITY AS e(leg, j);
    SELECT tx_ref[u.t] AS reference INTO bad
      FROM unnest(leg_tx, leg_amount) AS u(t, amt)
     WHERE u.amt IS NULL OR u.amt = 0 OR u.amt <> round(u.amt, 12)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005', MESSAGE = format(
            'transaction %s has an entry amount that is zero, missing or finer than 1e-12',
            bad.reference);
    END IF;

    acc_ids := ARRAY(SELECT DISTINCT a FROM unnest(leg_account) AS a WHERE a IS NOT NULL);
    SELECT array_agg(c.currency ORDER BY u.k),
           array_agg(CASE WHEN c.normal_balance = 'debit' THEN u.amt ELSE -u.amt END
                     ORDER BY u.k),
           array_agg(c.is_hot ORDER BY u.k),
           count(c.id)
      INTO leg_currency, leg_delta, leg_hot, v_row
      FROM unnest(leg_account, leg_amount) WITH ORDINALITY AS u(acc, amt, k)
      LEFT JOIN (SELECT a.id, a.currency, a.normal_balance, a.is_hot
                   FROM ledger_account a WHERE a.id = ANY(acc_ids)) AS c ON c.id = u.acc;
    IF v_row <> cardinality(leg_account) THEN
        SELECT u.acc INTO bad
          FROM unnest(leg_account) AS u(acc)
         WHERE u.acc IS NULL OR NOT EXISTS (SELECT 1 FROM ledger_account a WHERE a.id = u.acc)
         LIMIT 1;
        RAISE EXCEPTION USING ERRCODE = 'LG004', MESSAGE = format(
            'account %s does not exist', coalesce(bad.acc::text, 'null'));
    END IF;

    SELECT tx_ref[u.t] AS reference, u.cur AS currency, sum(u.amt) AS total INTO bad
      FROM unnest(leg_tx, leg_currency, leg_amount) AS u(t, cur, amt)
     GROUP BY u.t, u.cur HAVING sum(u.amt) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LG003', MESSAGE = format(
            'transaction %s does not balance in %s: debits and credits differ by %s',
            bad.reference, bad.currency, bad.total);
    END IF;

    -- 2. The transaction rows, in reference order (a fixed order, so two bulk postings
    --    sharing references cannot deadlock). The unique index on reference decides
    --    idempotency: a concurrent twin waits here for the first to commit.
    WITH inserted AS (
        INSERT INTO ledger_transaction AS lt
               (reference, payload_hash, description, metadata, effective_at, recorded_at,
                reverses_id, hold_id)
        SELECT t.tx ->> 'reference', t.tx ->> 'payload_hash',
               coalesce(t.tx ->> 'description', ''), coalesce(t.tx -> 'metadata', '{}'),
               coalesce((t.tx ->> 'effective_at')::timestamptz, now()), now(),
               (t.tx ->> 'reverses_id')::bigint, (t.tx ->> 'hold_id')::bigint
          FROM jsonb_array_elements(p_transactions) AS t(tx)
         ORDER BY t.tx ->> 'reference'
        ON CONFLICT (reference) DO NOTHING
        RETURNING lt.id, lt.reference
    )
    SELECT array_agg(u.i::integer), array_agg(ins.id)
      INTO new_idx, new_id
      FROM inserted AS ins
      JOIN unnest(tx_ref) WITH ORDINALITY AS u(ref, i) ON u.ref = ins.reference;

    tx_id := array_fill(NULL::bigint, ARRAY[n_tx]);
    IF new_idx IS NOT NULL THEN
        SELECT array_agg(m.id ORDER BY s.i)
          INTO tx_id
          FROM generate_series(1, n_tx) AS s(i)
          LEFT JOIN unnest(new_idx, new_id) AS m(i, id) ON m.i = s.i;
    END IF;

    -- Replays: the reference existed; the same payload is the same posting.
    IF new_idx IS NULL OR cardinality(new_idx) < n_tx THEN
        SELECT lt.reference, lt.id INTO bad
          FROM ledger_transaction lt
          JOIN unnest(tx_ref, tx_hash, tx_id) AS u(ref, hash, id) ON lt.reference = u.ref
         WHERE u.id IS NULL AND lt.payload_hash IS DISTINCT FROM u.hash
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'LG002', MESSAGE = format(
                'reference %s was already used for a different transaction (%s)',
                bad.reference, bad.id);
        END IF;
    END IF;

    RETURN QUERY
        SELECT u.i::integer, lt.id, u.id IS NULL, lt.effective_at, lt.recorded_at
          FROM unnest(tx_ref, tx_id) WITH ORDINALITY AS u(ref, id, i)
          JOIN ledger_transaction lt ON lt.reference = u.ref
         ORDER BY u.i;

    IF new_idx IS NULL THEN
        RETURN;  -- every transaction was a replay: nothing more to write
    END IF;

    -- 3. The entries of the new transactions, in one statement (the balance trigger sees
    --    each transaction's entries together).
    INSERT INTO ledger_entry (transaction_id, account_id, currency, amount)
    SELECT tx_id[u.t], u.acc, u.cur, u.amt
      FROM unnest(leg_tx, leg_account, leg_currency, leg_amount) AS u(t, acc, cur, amt)
     WHERE tx_id[u.t] IS NOT NULL;

    -- 4. Balances. Owned accounts first, locked in id order (no deadlocks between
    --    postings), each with a conditional UPDATE that checks the floor against the
    --    newest committed balance. Then hot accounts: the first bucket nobody else holds.
    FOR bal IN
        SELECT u.acc AS id, u.hot AS is_hot, sum(u.delta) AS delta
          FROM unnest(leg_tx, leg_account, leg_delta, leg_hot) AS u(t, acc, delta, hot)
         WHERE tx_id[u.t] IS NOT NULL
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

class Migration(migrations.Migration):
    dependencies = [("ledger", "0002_database_rules")]

    operations = [
        migrations.RunSQL(
            POST,
            reverse_sql="DROP FUNCTION IF EXISTS ledger_post_transactions_bulk(jsonb);",
        ),
    ]
