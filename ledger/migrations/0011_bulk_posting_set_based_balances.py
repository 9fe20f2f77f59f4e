"""``ledger_post_transactions_bulk`` (0003) with its balances updated set-based and fewer
statements per call (issue 14, session 19).

Rating posts each part's transactions (one per customer, four legs) with one call. The
call's cost was mostly statements run per row or run twice (pg_stat_statements, bench
seed, 22 batches of 1,000 events: the function 559 ms in all, of which the owned
balances' conditional UPDATE 101 ms in 8,622 executions, one per account in a loop, and
the lookup of every transaction again by reference to return it 38 ms). Now:

- owned balances: locked by one ``SELECT … ORDER BY account_id FOR NO KEY UPDATE`` (the
  lock an UPDATE takes; still taken in account-id order: a locking clause locks rows in
  the ORDER BY's order),
  then changed by one conditional UPDATE; if it changed fewer rows than there are
  accounts, the first account in id order it skipped is reported as the loop reported
  it (LG005 without a balance row, else LG001 with the same message and detail). Hot
  accounts keep their loop: a part has one or two.
- the transactions inserted are returned from the INSERT's own RETURNING; only a replay
  is looked up by reference.
- the payload's transactions are read in one pass (references, hashes, and the first
  whose entries are not a list of two or more), its legs with their accounts in another
  (a primary-key probe per leg), the legs' first bad amount and first unknown account
  found in the same pass.

Same contract, errors (codes and messages, checked in the same order) and lock order:
transaction rows in reference order, then owned balances in account-id order, then a free
bucket per hot account.

Measured (same seed, bench/ingest_cpu.py, 20 batches of 1,000 after 2 of warm-up, quiet
2-core machine, pg_stat_statements): the function 594 ms before, 421 ms after (the owned
balances 111 ms in 8,732 UPDATEs before; the lock 34 ms and the UPDATE 34 ms in 88 each
after); PostgreSQL CPU per event (/proc, six alternating pairs of 30 batches) 0.1156 ms
before, 0.1110 ms after on average (-4 %). Direct calls of 50 transactions of four legs:
the backend's CPU per call 6.0-7.0 ms before, 4.8-5.0 ms after.

Every ``array_agg`` names its order (``ORDER BY`` inside the aggregate), as 0003's did: a
subquery's ORDER BY does not bind an aggregate over it, and PostgreSQL 16+ may sort the
input for another aggregate's DISTINCT (review, session 19; the test with references out
of payload order: tests/ledger/test_bulk_balances.py).
"""

from importlib import import_module

from django.db import migrations

POST = r"""
CREATE OR REPLACE FUNCTION ledger_post_transactions_bulk(p_transactions jsonb)
RETURNS TABLE (idx integer, transaction_id bigint, replayed boolean,
               effective_at timestamptz, recorded_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    n_tx integer := jsonb_array_length(p_transactions);
    tx_ref text[];
    tx_hash text[];
    no_ref boolean;
    n_refs bigint;
    short_tx integer;
    leg_tx integer[];
    leg_account bigint[];
    leg_amount numeric[];
    leg_currency text[];
    leg_delta numeric[];
    leg_hot boolean[];
    bad_amount bigint;
    bad_account bigint;
    tx_id bigint[];
    tx_effective timestamptz[];
    tx_recorded timestamptz[];
    n_new bigint;
    own_acc bigint[];
    own_delta numeric[];
    own_done bigint[];
    hot_acc bigint[];
    hot_delta numeric[];
    bad record;
    v_row bigint;
    k integer;
BEGIN
    -- 1. Validate everything before writing anything.
    IF n_tx IS NULL OR n_tx = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005', MESSAGE = 'nothing to post';
    END IF;
    SELECT array_agg(t.ref ORDER BY t.i), array_agg(t.hash ORDER BY t.i), bool_or(t.ref IS NULL OR t.ref = ''),
           count(DISTINCT t.ref), min(t.i) FILTER (WHERE t.short)
      INTO tx_ref, tx_hash, no_ref, n_refs, short_tx
      FROM (SELECT t.i::integer AS i, t.tx ->> 'reference' AS ref,
                   t.tx ->> 'payload_hash' AS hash,
                   jsonb_typeof(t.tx -> 'entries') IS DISTINCT FROM 'array'
                   OR jsonb_array_length(t.tx -> 'entries') < 2 AS short
              FROM jsonb_array_elements(p_transactions) WITH ORDINALITY AS t(tx, i)
             ORDER BY t.i) AS t;
    IF no_ref THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005', MESSAGE = 'a transaction needs a reference';
    END IF;
    IF n_refs <> n_tx THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005',
            MESSAGE = 'the same reference appears twice in one bulk posting';
    END IF;
    IF short_tx IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'LG003',
            MESSAGE = format('transaction %s needs at least two entries', tx_ref[short_tx]);
    END IF;

    -- The legs in payload order, each with its account (looked up by primary key, one
    -- probe per leg: never a join of the JSON to the whole account table, whose size the
    -- planner cannot weigh against the JSON's), the first bad amount and the first leg
    -- without an account.
    SELECT array_agg(l.i ORDER BY l.k), array_agg(l.acc ORDER BY l.k),
           array_agg(l.amt ORDER BY l.k), array_agg(a.currency ORDER BY l.k),
           array_agg(CASE WHEN a.normal_balance = 'debit' THEN l.amt ELSE -l.amt END
                     ORDER BY l.k),
           array_agg(a.is_hot ORDER BY l.k),
           min(l.k) FILTER (WHERE l.amt IS NULL OR l.amt = 0 OR l.amt <> round(l.amt, 12)),
           min(l.k) FILTER (WHERE a.currency IS NULL)
      INTO leg_tx, leg_account, leg_amount, leg_currency, leg_delta, leg_hot,
           bad_amount, bad_account
      FROM (SELECT t.i::integer AS i, (e.leg ->> 'account_id')::bigint AS acc,
                   (e.leg ->> 'amount')::numeric AS amt,
                   row_number() OVER (ORDER BY t.i, e.j) AS k
              FROM jsonb_array_elements(p_transactions) WITH ORDINALITY AS t(tx, i)
             CROSS JOIN LATERAL jsonb_array_elements(t.tx -> 'entries')
                        WITH ORDINALITY AS e(leg, j)
             ORDER BY t.i, e.j) AS l
      LEFT JOIN LATERAL (SELECT a.currency, a.normal_balance, a.is_hot
                           FROM ledger_account a WHERE a.id = l.acc OFFSET 0) AS a ON true;
    IF bad_amount IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005', MESSAGE = format(
            'transaction %s has an entry amount that is zero, missing or finer than 1e-12',
            tx_ref[leg_tx[bad_amount]]);
    END IF;
    IF bad_account IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'LG004', MESSAGE = format(
            'account %s does not exist', coalesce(leg_account[bad_account]::text, 'null'));
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
    --    idempotency: a concurrent twin waits here for the first to commit. Each input
    --    transaction gets its new row's id and times, or NULLs if it was posted before.
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
        RETURNING lt.id, lt.reference, lt.effective_at, lt.recorded_at
    )
    SELECT array_agg(s.id ORDER BY s.i), array_agg(s.effective_at ORDER BY s.i),
           array_agg(s.recorded_at ORDER BY s.i), count(s.id)
      INTO tx_id, tx_effective, tx_recorded, n_new
      FROM (SELECT u.i, ins.id, ins.effective_at, ins.recorded_at
              FROM unnest(tx_ref) WITH ORDINALITY AS u(ref, i)
              LEFT JOIN inserted AS ins ON ins.reference = u.ref
             ORDER BY u.i) AS s;

    IF n_new = n_tx THEN
        RETURN QUERY
            SELECT u.i::integer, u.id, false, u.eff, u.rec
              FROM unnest(tx_id, tx_effective, tx_recorded) WITH ORDINALITY
                   AS u(id, eff, rec, i);
    ELSE
        -- Replays: the reference existed; the same payload is the same posting.
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
        RETURN QUERY
            SELECT u.i::integer, coalesce(u.id, lt.id), u.id IS NULL,
                   coalesce(u.eff, lt.effective_at), coalesce(u.rec, lt.recorded_at)
              FROM unnest(tx_ref, tx_id, tx_effective, tx_recorded) WITH ORDINALITY
                   AS u(ref, id, eff, rec, i)
              LEFT JOIN ledger_transaction lt ON u.id IS NULL AND lt.reference = u.ref
             ORDER BY u.i;
        IF n_new = 0 THEN
            RETURN;  -- every transaction was a replay: nothing more to write
        END IF;
    END IF;

    -- 3. The entries of the new transactions, in one statement (the balance trigger sees
    --    each transaction's entries together).
    INSERT INTO ledger_entry (transaction_id, account_id, currency, amount)
    SELECT tx_id[u.t], u.acc, u.cur, u.amt
      FROM unnest(leg_tx, leg_account, leg_currency, leg_amount) AS u(t, acc, cur, amt)
     WHERE tx_id[u.t] IS NOT NULL;

    -- 4. Balances: each account's change in its normal direction, summed over the new
    --    transactions (an account whose change sums to zero is not touched).
    --    In account-id order. Every array_agg here and above names its order: from
    --    PostgreSQL 16 on, the planner may sort an aggregate's input for another
    --    aggregate's DISTINCT or ORDER BY (count(DISTINCT t.ref) above), which would
    --    hand an unordered array_agg its rows in that order, not the subquery's.
    SELECT array_agg(g.acc ORDER BY g.acc) FILTER (WHERE NOT g.hot),
           array_agg(g.delta ORDER BY g.acc) FILTER (WHERE NOT g.hot),
           array_agg(g.acc ORDER BY g.acc) FILTER (WHERE g.hot),
           array_agg(g.delta ORDER BY g.acc) FILTER (WHERE g.hot)
      INTO own_acc, own_delta, hot_acc, hot_delta
      FROM (SELECT u.acc, u.hot, sum(u.delta) AS delta
              FROM unnest(leg_tx, leg_account, leg_delta, leg_hot) AS u(t, acc, delta, hot)
             WHERE tx_id[u.t] IS NOT NULL
             GROUP BY u.acc, u.hot
            HAVING sum(u.delta) <> 0
             ORDER BY u.acc) AS g;

    --    Owned accounts first: their rows locked in account-id order (no deadlocks
    --    between postings; the locking clause locks in the ORDER BY's order), then one
    --    UPDATE that checks each floor against the newest committed balance (this
    --    statement's snapshot is taken after the locks were granted).
    IF own_acc IS NOT NULL THEN
        PERFORM FROM ledger_balance b
          WHERE b.account_id = ANY(own_acc) AND b.bucket = 0
          ORDER BY b.account_id
            FOR NO KEY UPDATE;
        WITH changed AS (
            UPDATE ledger_balance b
               SET posted = b.posted + u.delta, version = b.version + 1, updated_at = now()
              FROM unnest(own_acc, own_delta) AS u(acc, delta)
             WHERE b.account_id = u.acc AND b.bucket = 0
               AND (u.delta >= 0 OR b.floor IS NULL OR b.posted + u.delta - b.held >= b.floor)
            RETURNING b.account_id
        )
        SELECT array_agg(c.account_id) INTO own_done FROM changed AS c;
        IF coalesce(cardinality(own_done), 0) < cardinality(own_acc) THEN
            -- The first account, in id order, the UPDATE left alone: no balance row, or
            -- one that cannot cover the change (its row as it is: not changed).
            SELECT u.acc AS id, -u.delta AS required, b.id AS row_id,
                   b.posted - b.held AS available, b.floor INTO bad
              FROM unnest(own_acc, own_delta) AS u(acc, delta)
              LEFT JOIN ledger_balance b ON b.account_id = u.acc AND b.bucket = 0
             WHERE u.acc <> ALL(coalesce(own_done, '{}'))
             ORDER BY u.acc
             LIMIT 1;
            IF bad.row_id IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'LG005',
                    MESSAGE = format('account %s has no balance row', bad.id);
            END IF;
            RAISE EXCEPTION USING ERRCODE = 'LG001',
                MESSAGE = format(
                    'account %s has %s available; this posting needs %s (floor %s)',
                    bad.id, bad.available, bad.required, coalesce(bad.floor, 0)),
                DETAIL = json_build_object('account_id', bad.id, 'available', bad.available,
                                           'required', bad.required, 'floor', bad.floor)::text;
        END IF;
    END IF;

    --    Then hot accounts: the first bucket nobody else holds.
    FOR k IN 1..coalesce(cardinality(hot_acc), 0) LOOP
        UPDATE ledger_balance b
           SET posted = b.posted + hot_delta[k], version = b.version + 1, updated_at = now()
         WHERE b.id = (SELECT s.id FROM ledger_balance s WHERE s.account_id = hot_acc[k]
                        LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING b.id INTO v_row;
        IF NOT FOUND THEN
            -- Every bucket is busy: wait for a random one.
            UPDATE ledger_balance b
               SET posted = b.posted + hot_delta[k], version = b.version + 1,
                   updated_at = now()
             WHERE b.id = (SELECT s.id FROM ledger_balance s WHERE s.account_id = hot_acc[k]
                            ORDER BY random() LIMIT 1);
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'LG005',
                    MESSAGE = format('hot account %s has no balance rows', hot_acc[k]);
            END IF;
        END IF;
    END LOOP;
END $$;
"""


def _previous() -> str:
    """0003's function, as 0003 made it."""
    bulk = import_module("ledger.migrations.0003_set_based_posting")
    return bulk.POST.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


class Migration(migrations.Migration):
    dependencies = [("ledger", "0010_entry_checks_one_query")]

    operations = [migrations.RunSQL(POST, _previous())]
