"""Usage events are append-only: the database refuses to change or delete one.

A correction to usage is a new event (or a ledger reversal), never an edit: what was
acknowledged to a product backend stays exactly as it was received."""

from django.db import migrations

APPEND_ONLY = r"""
CREATE FUNCTION metering_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'MT001',
        MESSAGE = 'usage events are append-only: post a correction instead';
END $$;
CREATE TRIGGER metering_event_append_only
    BEFORE UPDATE OR DELETE ON metering_event
    FOR EACH ROW EXECUTE FUNCTION metering_event_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS metering_event_append_only ON metering_event;
DROP FUNCTION IF EXISTS metering_event_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("metering", "0002_events_catalog_counters")]

    operations = [migrations.RunSQL(APPEND_ONLY, DROP)]
