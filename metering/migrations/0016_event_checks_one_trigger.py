"""metering_event's two statement-level checks as one trigger running one query (issue 14).

Every INSERT into metering_event fired two AFTER … FOR EACH STATEMENT triggers over the same
transition table: ``metering_event_references_exist`` (0015: the events' customers,
subscriptions, model prices and projects exist, locked FOR KEY SHARE) and then
``metering_event_sums_match_legs`` (0006/0008: Σ of each ledger transaction's events = its
owned legs). A single event's write paid each one's fixed cost twice over: the trigger
event, the PL/pgSQL call with its ``SET`` options saved and restored
(``fmgr_security_definer``), the transition table registered, the cached plan checked and
its relations locked, an executor started and ended. Measured on a private PostgreSQL 15
(track_functions, bench seed, single events): 0.26 ms and 0.26 ms of function time per
event, of which their queries' execution was 0.12 and 0.12; perf on the backend put
``fmgr_security_definer`` (the two functions) at 9.6 % of its CPU.

``metering_event_checks`` runs both checks as one query, the reference lookups first and
the sums after them (an Append under LIMIT 1: the sums' CTEs are not run when a reference
is missing), so a statement is refused with the same error as before, in the same order:
23503 ``foreign_key_violation`` for a missing reference (as the keys did), else MT002 for
sums that do not match. The reference lookups now also read by index whatever the planner
thinks of a small table (``enable_seqscan = off``, as 0008 set for the sums): in the bench's
database of 200 customers the cached plan scanned billing_customer and billing_subscription
whole (200 rows each, for one event); by key they are one index probe each, the same plan a
large table gets anyway. The transition table is scanned as before (it has no index).
"""

from django.db import migrations

CHECKS = r"""
-- jit off: without statistics for the transition table the check's estimated cost passes
-- jit_above_cost, and compiling it (25 to 70 ms) cost a hundred times running it.
-- enable_seqscan off: every lookup here is by a key with an index (0008's reason).
CREATE FUNCTION metering_event_checks() RETURNS trigger LANGUAGE plpgsql
SET jit = off SET enable_seqscan = off AS $$
DECLARE
    bad record;
BEGIN
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
    SELECT c.missing, c.tbl, c.col, c.id, c.cur, c.events_total, c.legs_total INTO bad
      FROM (
        -- the references, first (locked FOR KEY SHARE in id order per table, as 0015)
        SELECT true AS missing, m.tbl, m.col, m.id, NULL::text AS cur,
               NULL::numeric AS events_total, NULL::numeric AS legs_total
          FROM (
            SELECT 'billing_customer' AS tbl, 'customer_id' AS col, k.id, l.id AS found
              FROM (SELECT DISTINCT n.customer_id AS id FROM new_events n
                     WHERE n.customer_id IS NOT NULL ORDER BY 1) AS k
              LEFT JOIN LATERAL (SELECT r.id FROM billing_customer r WHERE r.id = k.id
                                 FOR KEY SHARE) AS l ON true
            UNION ALL
            SELECT 'billing_subscription', 'subscription_id', k.id, l.id
              FROM (SELECT DISTINCT n.subscription_id AS id FROM new_events n
                     WHERE n.subscription_id IS NOT NULL ORDER BY 1) AS k
              LEFT JOIN LATERAL (SELECT r.id FROM billing_subscription r WHERE r.id = k.id
                                 FOR KEY SHARE) AS l ON true
            UNION ALL
            SELECT 'metering_modelprice', 'model_price_id', k.id, l.id
              FROM (SELECT DISTINCT n.model_price_id AS id FROM new_events n
                     WHERE n.model_price_id IS NOT NULL ORDER BY 1) AS k
              LEFT JOIN LATERAL (SELECT r.id FROM metering_modelprice r WHERE r.id = k.id
                                 FOR KEY SHARE) AS l ON true
            UNION ALL
            SELECT 'billing_project', 'project_id', k.id, l.id
              FROM (SELECT DISTINCT n.project_id AS id FROM new_events n
                     WHERE n.project_id IS NOT NULL ORDER BY 1) AS k
              LEFT JOIN LATERAL (SELECT r.id FROM billing_project r WHERE r.id = k.id
                                 FOR KEY SHARE) AS l ON true
          ) AS m
         WHERE m.found IS NULL
        UNION ALL
        -- then each transaction's events against its owned legs (0006)
        SELECT false, NULL, NULL, coalesce(events.id, legs.id),
               coalesce(events.cur, legs.cur)::text,
               coalesce(events.total, 0), coalesce(legs.total, 0)
          FROM events FULL JOIN legs ON legs.id = events.id AND legs.cur = events.cur
         WHERE coalesce(events.total, 0) <> coalesce(legs.total, 0)
      ) AS c
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF bad.missing THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = format('insert or update on table "metering_event" violates foreign key '
                             'metering_event.%s', bad.col),
            DETAIL = format('Key (%s)=(%s) is not present in table "%s".',
                            bad.col, bad.id, bad.tbl);
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'MT002',
        MESSAGE = format('the events of ledger transaction %s sum to %s %s, its legs to %s',
                         bad.id, bad.events_total, bad.cur, bad.legs_total);
END $$;
CREATE TRIGGER metering_event_checks
    AFTER INSERT ON metering_event
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION metering_event_checks();

DROP TRIGGER metering_event_references_exist ON metering_event;
DROP TRIGGER metering_event_sums_match_legs ON metering_event;
DROP FUNCTION metering_event_references_exist();
DROP FUNCTION metering_event_sums_match_legs();
"""

# Back: the two functions and triggers as 0015 and 0006/0008 left them.
BACK = r"""
DROP TRIGGER IF EXISTS metering_event_checks ON metering_event;
DROP FUNCTION IF EXISTS metering_event_checks();
"""


def _back_sql() -> list[str]:
    from importlib import import_module

    sums = import_module("metering.migrations.0006_agg_events_sum_to_legs")
    references = import_module("metering.migrations.0015_event_references_statement_check")
    # 0015's CHECKS also creates the orphans' function and triggers, which stay: only its
    # first part (up to the orphans' function) is made again.
    created = references.CHECKS.split("CREATE FUNCTION metering_event_refuse_orphans")[0]
    return [
        BACK,
        sums.SUM_RULE,
        "ALTER FUNCTION metering_event_sums_match_legs() SET enable_seqscan = off",
        created,
    ]


class Migration(migrations.Migration):
    dependencies = [("metering", "0015_event_references_statement_check")]

    operations = [migrations.RunSQL(CHECKS, _back_sql())]
