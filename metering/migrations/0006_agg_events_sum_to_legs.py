"""A usage transaction's legs are exactly the sums of its events, enforced by PostgreSQL.

A customer's accepted events of one rating part are posted as one ledger transaction
(``metering.rating``); each event keeps its own amount and token counts and points at the
transaction. After every statement that inserts events (rating's one COPY per part), a
statement-level trigger compares, for each transaction the new rows point at and for every
currency, the sum over *all* its events with the sum of its entries on owned accounts (the
customer's side of each leg; the other side is a hot system account — ``@TokensServed``,
``@Revenue``, ``@CreditsUsed`` — which the ledger's own balance rule ties to it):

    TOKENS:           Σ events (input + cache read + cache write + output tokens)
                      = the customer's ``tokens:<id>`` entry
    the event's currency (USD, CREDITS …):
                      Σ events' amount = the wallet's entry (a debit is positive)

A mismatch, an extra event for a transaction already complete, or a leg no event explains
is refused with SQLSTATE MT002 and nothing of the statement stays. Events are
append-only (0003) and so are ledger entries, so what is checked here stays true.

Why a statement trigger, not a deferred row trigger: one check per statement is one
set-based query over the statement's transactions; a row trigger would sum a transaction's
events once per event (a thousand events of one customer: a million rows read). The rule
holds because rating posts the transaction before it inserts its events, in one statement,
in the same database transaction.
"""

from django.db import migrations

SUM_RULE = r"""
-- jit off: without statistics for the transition table the check's estimated cost passes
-- jit_above_cost, and compiling it (25 to 70 ms) cost a hundred times running it.
CREATE FUNCTION metering_event_sums_match_legs() RETURNS trigger LANGUAGE plpgsql
SET jit = off AS $$
DECLARE
    bad record;
BEGIN
    -- Per transaction, by its index (LATERAL): the transition table has no statistics,
    -- and a join planned without them scanned every event and entry (180 ms a part on
    -- 100,000 events; this way 1 to 2 ms).
    WITH ids AS (
        SELECT DISTINCT n.ledger_transaction_id AS id
          FROM new_events n WHERE n.ledger_transaction_id IS NOT NULL
    ), by_currency AS (
        SELECT ids.id, s.cur, s.amount, s.tokens
          FROM ids CROSS JOIN LATERAL (
               SELECT e.currency AS cur, sum(e.amount) AS amount,
                      sum(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens
                          + e.output_tokens) AS tokens
                 FROM metering_event e WHERE e.ledger_transaction_id = ids.id
                GROUP BY e.currency) AS s
    ), events AS (
        SELECT id, cur, sum(total) AS total FROM (
            SELECT id, cur, amount AS total FROM by_currency
            UNION ALL SELECT id, 'TOKENS', tokens FROM by_currency) AS u
         GROUP BY 1, 2
    ), legs AS (
        SELECT ids.id, l.cur, l.total
          FROM ids CROSS JOIN LATERAL (
               SELECT en.currency AS cur, sum(en.amount) AS total
                 FROM ledger_entry en
                WHERE en.transaction_id = ids.id
                  AND NOT EXISTS (SELECT FROM ledger_account a
                                   WHERE a.id = en.account_id AND a.is_hot)
                GROUP BY en.currency) AS l
    )
    SELECT coalesce(events.id, legs.id) AS id, coalesce(events.cur, legs.cur) AS cur,
           coalesce(events.total, 0) AS events_total, coalesce(legs.total, 0) AS legs_total
      INTO bad
      FROM events FULL JOIN legs ON legs.id = events.id AND legs.cur = events.cur
     WHERE coalesce(events.total, 0) <> coalesce(legs.total, 0)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'MT002',
            MESSAGE = format('the events of ledger transaction %s sum to %s %s, its legs to %s',
                             bad.id, bad.events_total, bad.cur, bad.legs_total);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER metering_event_sums_match_legs
    AFTER INSERT ON metering_event
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION metering_event_sums_match_legs();
"""

DROP = """
DROP TRIGGER IF EXISTS metering_event_sums_match_legs ON metering_event;
DROP FUNCTION IF EXISTS metering_event_sums_match_legs();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0005_agg_event_transaction"),
        ("ledger", "0004_single_posting_statement"),
    ]

    operations = [migrations.RunSQL(SUM_RULE, DROP)]
