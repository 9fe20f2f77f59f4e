"""A meter's definition is fixed once it exists (as the services and the admin already
keep it: only its name and unit change). PostgreSQL now refuses (SQLSTATE BL001) an UPDATE
of what a meter reads and how — code, event name, aggregation, property, filters, group-by —
from any path: rating caches meters per process and notices only added or removed ones
(their count and highest id), so a definition changed behind its back would be priced by
the old one until the process restarts."""

from django.db import migrations

FORWARD = r"""
CREATE FUNCTION billing_meter_definition_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.code, NEW.event_name, NEW.aggregation, NEW.property, NEW.filters, NEW.group_by)
       IS DISTINCT FROM
       (OLD.code, OLD.event_name, OLD.aggregation, OLD.property, OLD.filters, OLD.group_by)
    THEN
        RAISE EXCEPTION USING ERRCODE = 'BL001',
            MESSAGE = format('meter %s: its definition is fixed once created; create a new meter',
                             OLD.code);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER billing_meter_definition_fixed
    BEFORE UPDATE ON metering_meter
    FOR EACH ROW EXECUTE FUNCTION billing_meter_definition_fixed();
"""

BACKWARD = r"""
DROP TRIGGER IF EXISTS billing_meter_definition_fixed ON metering_meter;
DROP FUNCTION IF EXISTS billing_meter_definition_fixed();
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0007_meter_moves_to_core")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
