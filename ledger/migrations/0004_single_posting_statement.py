"""Guards for the single-statement posting of ``ledger.services.posting`` (``_POST_ONE``).

One transaction of a few legs on distinct accounts — a top-up, a payment, a transfer — is
posted by one prepared statement (data-modifying CTEs: the transaction row, its entries,
the balance rows) instead of a call of ``ledger_post_transactions``. A statement cannot
raise by itself, so it calls these two functions:

    ledger_posting_guard     before anything is written (in the WHERE of the transaction
                             row's INSERT): every account exists (LG004), and the legs
                             balance per currency (LG003), worded as the posting function
                             words them (the entries' trigger checks the balance again)
    ledger_posting_applied   after the balance rows were changed: each leg found its
                             balance row (LG005 otherwise; every account has one from
                             its creation, so this only guards against hand-made rows)
"""

from django.db import migrations

FUNCTIONS = r"""
CREATE FUNCTION ledger_posting_guard(
    p_reference text, p_accounts bigint[], p_amounts numeric[], p_found bigint,
    p_balanced boolean
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_missing bigint;
    off record;
BEGIN
    IF p_found < cardinality(p_accounts) THEN
        SELECT u.acc INTO v_missing
          FROM unnest(p_accounts) AS u(acc)
         WHERE u.acc IS NULL OR NOT EXISTS (SELECT 1 FROM ledger_account a WHERE a.id = u.acc)
         LIMIT 1;
        RAISE EXCEPTION USING ERRCODE = 'LG004', MESSAGE = format(
            'account %s does not exist', coalesce(v_missing::text, 'null'));
    END IF;
    IF NOT p_balanced THEN
        SELECT a.currency, sum(u.amt) AS total INTO off
          FROM unnest(p_accounts, p_amounts) AS u(acc, amt)
          JOIN ledger_account a ON a.id = u.acc
         GROUP BY a.currency HAVING sum(u.amt) <> 0 ORDER BY a.currency LIMIT 1;
        RAISE EXCEPTION USING ERRCODE = 'LG003', MESSAGE = format(
            'transaction %s does not balance in %s: debits and credits differ by %s',
            p_reference, off.currency, off.total);
    END IF;
    RETURN true;
END $$;

CREATE FUNCTION ledger_posting_applied(p_expected bigint, p_applied bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF p_applied IS DISTINCT FROM p_expected THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005', MESSAGE = format(
            '%s of this posting''s %s accounts have no balance row',
            p_expected - p_applied, p_expected);
    END IF;
    RETURN true;
END $$;
"""

DROP = """
DROP FUNCTION IF EXISTS ledger_posting_applied(bigint, bigint);
DROP FUNCTION IF EXISTS ledger_posting_guard(text, bigint[], numeric[], bigint, boolean);
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0003_set_based_posting")]

    operations = [migrations.RunSQL(FUNCTIONS, reverse_sql=DROP)]
