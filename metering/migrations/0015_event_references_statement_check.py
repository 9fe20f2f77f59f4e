"""An event's customer, subscription, model price and project exist: one set-based check
per INSERT statement instead of PostgreSQL's per-row foreign keys (issue 14).

Each foreign key of ``metering_event`` ran one RI query per inserted row at commit
(``SELECT 1 FROM ONLY billing_customer x WHERE id = $1 FOR KEY SHARE OF x``, four per
event). A batch has only a few hundred distinct customers, subscriptions, prices and
projects, so the check below locks and looks up each distinct key once per statement.
Measured on a shared 2-core machine (2026-12-07, bench database of 200 customers):

- the events' INSERT statements alone, 10 x 1,000 rows in one session, constraints
  checked immediately: 365-710 ms with the keys, 203-494 ms with this check (alternating
  pairs, every pair 16-19 us less per event); one-row INSERTs cost about 22 us more each
  (the statement check's fixed cost), about 1 % of a single event's PostgreSQL CPU;
- ``bench/ingest_cpu.py --batches 15`` (PostgreSQL CPU per batched event, 7 alternating
  pairs): lower with this check in every pair, by 3 to 30 % (medians 0.136 ms with the
  keys, 0.114 ms with the check); by 8 % or more in only 4 of the 7 pairs, the machine's
  noise being of the same size. Single events (``--single``): no difference seen.

The same guarantees as the keys had, and the same error (SQLSTATE 23503,
``foreign_key_violation``: Django raises ``IntegrityError``):

- Inserting: ``metering_event_references_exist``, AFTER INSERT FOR EACH STATEMENT over
  the transition table, locks every referenced row ``FOR KEY SHARE`` (as the RI query
  does), in id order per table, and refuses the statement if one is missing. Events are
  append-only (0003), so no UPDATE of theirs can change a reference.
- Deleting or re-keying a referenced row: ``metering_event_refuse_orphans``, AFTER DELETE
  and AFTER UPDATE OF id row triggers on billing_customer, billing_subscription,
  metering_modelprice and billing_project, refuses while an event refers to it. Each
  lookup has an index whose first column is the key: metering_event_idempotency and
  (customer_id, timestamp); metering_event_subscription_id_c934bad2;
  metering_event_model_price_id_87a9e1de; metering_event_project (partial, project_id IS
  NOT NULL, which ``project_id = $1`` implies).

Races under READ COMMITTED (Django's default), an event inserted (I) while its customer
(or price …) is deleted (D), both ways:

- D first: D's row lock (its xmax) is on the row when I's check asks for FOR KEY SHARE,
  so I waits for D. D commits: the lock finds the row deleted, I is refused (23503). D
  rolls back: I locks the row and goes on.
- I first: I holds FOR KEY SHARE on the row until it ends, so D's DELETE waits for I
  while deleting the row. I commits: D deletes the row, and its AFTER trigger, run after
  that wait with a new snapshot, sees I's committed event and refuses (23503). I rolls
  back: nothing refers to the row any more and D goes on.

The delete side is an AFTER row trigger, as PostgreSQL's own RI actions are. A BEFORE row
trigger would be as safe: PostgreSQL locks the row before it fires BEFORE row triggers
(GetTupleForTrigger), so the check would also run after the wait (tried with two
sessions). What matters is that the lookup runs after D has waited for I's KEY SHARE lock,
in a new READ COMMITTED snapshot (a VOLATILE function's queries each take one).

Under REPEATABLE READ a delete would not see an event committed after its snapshot and
would go on (the RI triggers use a cross-check snapshot for that, which PL/pgSQL has
not); nothing in the project deletes these rows at that level (Django's default is READ
COMMITTED), and under SERIALIZABLE predicate locking should catch the pair (not tested).

Differences from the keys: the check runs at the end of the INSERT statement, not at
commit (the keys were DEFERRABLE INITIALLY DEFERRED; rating writes the rows events refer
to before the events), so the KEY SHARE locks are taken there rather than at commit. And
TRUNCATE fires no row trigger: truncating billing_customer, billing_subscription,
metering_modelprice or billing_project without metering_event is no longer refused on
the events' account (customers and subscriptions still have other keys that refuse it).
Nothing but the test suite's flush truncates, and it truncates every table at once.
"""

from django.db import migrations, models

CHECKS = r"""
CREATE FUNCTION metering_event_references_exist() RETURNS trigger LANGUAGE plpgsql
SET jit = off AS $$
DECLARE
    missing record;
BEGIN
    SELECT m.tbl, m.col, m.id INTO missing FROM (
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
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = format('insert or update on table "metering_event" violates foreign key '
                             'metering_event.%s', missing.col),
            DETAIL = format('Key (%s)=(%s) is not present in table "%s".',
                            missing.col, missing.id, missing.tbl);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER metering_event_references_exist
    AFTER INSERT ON metering_event
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION metering_event_references_exist();

CREATE FUNCTION metering_event_refuse_orphans() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    col text;
BEGIN
    IF TG_TABLE_NAME = 'billing_customer' THEN
        col := 'customer_id';
        PERFORM FROM metering_event e WHERE e.customer_id = OLD.id LIMIT 1;
    ELSIF TG_TABLE_NAME = 'billing_subscription' THEN
        col := 'subscription_id';
        PERFORM FROM metering_event e WHERE e.subscription_id = OLD.id LIMIT 1;
    ELSIF TG_TABLE_NAME = 'metering_modelprice' THEN
        col := 'model_price_id';
        PERFORM FROM metering_event e WHERE e.model_price_id = OLD.id LIMIT 1;
    ELSIF TG_TABLE_NAME = 'billing_project' THEN
        col := 'project_id';
        PERFORM FROM metering_event e WHERE e.project_id = OLD.id LIMIT 1;
    ELSE
        RAISE EXCEPTION 'metering_event_refuse_orphans() is not for table %', TG_TABLE_NAME;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = format('%s on table "%s" violates foreign key metering_event.%s',
                             lower(TG_OP), TG_TABLE_NAME, col),
            DETAIL = format('Key (id)=(%s) is still referenced from table "metering_event".',
                            OLD.id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER metering_event_keeps_customer AFTER DELETE ON billing_customer
    FOR EACH ROW EXECUTE FUNCTION metering_event_refuse_orphans();
CREATE TRIGGER metering_event_keeps_customer_id AFTER UPDATE OF id ON billing_customer
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION metering_event_refuse_orphans();
CREATE TRIGGER metering_event_keeps_subscription AFTER DELETE ON billing_subscription
    FOR EACH ROW EXECUTE FUNCTION metering_event_refuse_orphans();
CREATE TRIGGER metering_event_keeps_subscription_id AFTER UPDATE OF id ON billing_subscription
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION metering_event_refuse_orphans();
CREATE TRIGGER metering_event_keeps_model_price AFTER DELETE ON metering_modelprice
    FOR EACH ROW EXECUTE FUNCTION metering_event_refuse_orphans();
CREATE TRIGGER metering_event_keeps_model_price_id AFTER UPDATE OF id ON metering_modelprice
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION metering_event_refuse_orphans();
CREATE TRIGGER metering_event_keeps_project AFTER DELETE ON billing_project
    FOR EACH ROW EXECUTE FUNCTION metering_event_refuse_orphans();
CREATE TRIGGER metering_event_keeps_project_id AFTER UPDATE OF id ON billing_project
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION metering_event_refuse_orphans();
"""

DROP = """
DROP TRIGGER IF EXISTS metering_event_references_exist ON metering_event;
DROP FUNCTION IF EXISTS metering_event_references_exist();
DROP TRIGGER IF EXISTS metering_event_keeps_customer ON billing_customer;
DROP TRIGGER IF EXISTS metering_event_keeps_customer_id ON billing_customer;
DROP TRIGGER IF EXISTS metering_event_keeps_subscription ON billing_subscription;
DROP TRIGGER IF EXISTS metering_event_keeps_subscription_id ON billing_subscription;
DROP TRIGGER IF EXISTS metering_event_keeps_model_price ON metering_modelprice;
DROP TRIGGER IF EXISTS metering_event_keeps_model_price_id ON metering_modelprice;
DROP TRIGGER IF EXISTS metering_event_keeps_project ON billing_project;
DROP TRIGGER IF EXISTS metering_event_keeps_project_id ON billing_project;
DROP FUNCTION IF EXISTS metering_event_refuse_orphans();
"""


def _unconstrained(name: str, to: str, **options: object) -> migrations.AlterField:
    return migrations.AlterField(
        model_name="event",
        name=name,
        field=models.ForeignKey(
            on_delete=models.PROTECT,
            related_name="+",
            to=to,
            db_constraint=False,
            **options,  # type: ignore[arg-type]
        ),
    )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0036_audit_created_at_indexes"),
        ("metering", "0014_margin_usage"),
    ]

    # The checks first, then the keys go (and back the other way): no moment without either.
    operations = [
        migrations.RunSQL(CHECKS, DROP),
        _unconstrained("customer", "billing.customer", db_index=False),
        _unconstrained("subscription", "billing.subscription", null=True),
        _unconstrained("model_price", "metering.modelprice", null=True, blank=True),
        _unconstrained("project", "billing.project", null=True, blank=True, db_index=False),
    ]
