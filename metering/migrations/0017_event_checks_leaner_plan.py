"""metering_event_checks (0016) with a plan a third smaller, and the usage counters' tables
filled half full so that their updates stay HOT (issue 14, session 18).

The check's query is planned once per connection and kept, but every call of the trigger
starts and ends an executor for the whole plan: for a single event that start-up, not the
lookups, was most of the trigger's cost (perf on the backend, session 18:
``ExecInitNode`` under the check's ``Limit`` a third of the trigger's samples, the four
lookups and the sums a few microseconds each). The same checks, in the same order, with
the same errors, with fewer nodes to start:

- each reference is looked up by a ``NOT EXISTS (… FOR KEY SHARE)`` subplan run on the
  distinct keys in id order (the lock taken as the LATERAL join took it: LockRows on the
  row found by its primary key), instead of a LEFT JOIN LATERAL and a filter on its NULLs
  (two nodes fewer a table);
- the sums are one aggregate per (transaction, currency) over the events' side and the
  legs' side appended (an event gives its amount in its currency and its tokens in
  ``TOKENS``), refused where the two sums differ, instead of two aggregated CTEs, a CTE of
  ids read twice and a hash FULL JOIN of the two sides. A currency found on one side only
  sums to 0 on the other, as the FULL JOIN's coalesce made it.

The sums still re-read the transactions' events from metering_event (by
``metering_event_ledger_transaction_id``), not from the transition table: events can be
added to a transaction by a later statement (a replayed posting's events point at the
transaction posted before), and only a re-read sees those; refusing a later statement's
events would need the same index probe to find them.

Counters (metering_periodusage, metering_dailyusage, metering_modelusage,
metering_marginusage) are only ever updated in place (quantity, amounts, counts, times:
no indexed column), several times per event. With full pages an update cannot put the
row's new version on its own page: it is not HOT, and every index of the table gets an
entry for it (measured on the bench seed, batches and single events: 17-36 % of their
updates HOT). ``fillfactor = 50`` leaves room for a new version of every row of a page.
New pages are filled to half; the pages a table has now are left as they are (no rewrite:
a row moves to a half-filled page on its next non-HOT update), ``VACUUM FULL`` rewrites
them at once.
"""

from importlib import import_module

from django.db import migrations

CHECKS = r"""
CREATE OR REPLACE FUNCTION metering_event_checks() RETURNS trigger LANGUAGE plpgsql
SET jit = off SET enable_seqscan = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT c.missing, c.tbl, c.col, c.id, c.cur, c.events_total, c.legs_total INTO bad
      FROM (
        -- the references, first (locked FOR KEY SHARE in id order per table, as 0015)
        SELECT true AS missing, m.tbl, m.col, m.id, NULL::text AS cur,
               NULL::numeric AS events_total, NULL::numeric AS legs_total
          FROM (
            SELECT 'billing_customer' AS tbl, 'customer_id' AS col, k.id
              FROM (SELECT DISTINCT n.customer_id AS id FROM new_events n
                     WHERE n.customer_id IS NOT NULL ORDER BY 1) AS k
             WHERE NOT EXISTS (SELECT FROM billing_customer r WHERE r.id = k.id
                                  FOR KEY SHARE)
            UNION ALL
            SELECT 'billing_subscription', 'subscription_id', k.id
              FROM (SELECT DISTINCT n.subscription_id AS id FROM new_events n
                     WHERE n.subscription_id IS NOT NULL ORDER BY 1) AS k
             WHERE NOT EXISTS (SELECT FROM billing_subscription r WHERE r.id = k.id
                                  FOR KEY SHARE)
            UNION ALL
            SELECT 'metering_modelprice', 'model_price_id', k.id
              FROM (SELECT DISTINCT n.model_price_id AS id FROM new_events n
                     WHERE n.model_price_id IS NOT NULL ORDER BY 1) AS k
             WHERE NOT EXISTS (SELECT FROM metering_modelprice r WHERE r.id = k.id
                                  FOR KEY SHARE)
            UNION ALL
            SELECT 'billing_project', 'project_id', k.id
              FROM (SELECT DISTINCT n.project_id AS id FROM new_events n
                     WHERE n.project_id IS NOT NULL ORDER BY 1) AS k
             WHERE NOT EXISTS (SELECT FROM billing_project r WHERE r.id = k.id
                                  FOR KEY SHARE)
          ) AS m
        UNION ALL
        -- then each transaction's events against its owned legs (0006): per currency,
        -- the events' sum and the legs' sum, side by side
        SELECT false, NULL, NULL, t.id, v.cur, sum(v.events), sum(v.legs)
          FROM (SELECT DISTINCT n.ledger_transaction_id AS id FROM new_events n
                 WHERE n.ledger_transaction_id IS NOT NULL) AS t
         CROSS JOIN LATERAL (
               SELECT x.cur, x.total, 0::numeric
                 FROM metering_event e
                CROSS JOIN LATERAL (VALUES
                      (e.currency::text, e.amount),
                      ('TOKENS', (e.input_tokens + e.cache_read_tokens + e.cache_write_tokens
                                  + e.output_tokens)::numeric)) AS x(cur, total)
                WHERE e.ledger_transaction_id = t.id
               UNION ALL
               SELECT en.currency::text, 0::numeric, en.amount
                 FROM ledger_entry en
                WHERE en.transaction_id = t.id
                  AND NOT EXISTS (SELECT FROM ledger_account a
                                   WHERE a.id = en.account_id AND a.is_hot)
          ) AS v(cur, events, legs)
         GROUP BY t.id, v.cur
        HAVING sum(v.events) <> sum(v.legs)
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
"""

COUNTERS = (
    "metering_periodusage",
    "metering_dailyusage",
    "metering_modelusage",
    "metering_marginusage",
)
FILL_HALF = "".join(f"ALTER TABLE {table} SET (fillfactor = 50);\n" for table in COUNTERS)
FILL_WHOLE = "".join(f"ALTER TABLE {table} RESET (fillfactor);\n" for table in COUNTERS)


def _previous_checks() -> str:
    """0016's function, as 0016 created it (its trigger stays as it is)."""
    one_trigger = import_module("metering.migrations.0016_event_checks_one_trigger")
    created = one_trigger.CHECKS.split("CREATE TRIGGER metering_event_checks")[0]
    return created.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


class Migration(migrations.Migration):
    dependencies = [("metering", "0016_event_checks_one_trigger")]

    operations = [
        migrations.RunSQL(CHECKS, _previous_checks()),
        migrations.RunSQL(FILL_HALF, FILL_WHOLE),
    ]
