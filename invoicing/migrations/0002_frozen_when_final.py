"""A finalized invoice is frozen by the database itself: its figures, number and period
cannot change, and its lines cannot be added, changed or removed. What may still change
after finalization: status, payments, credits, the PDF and dunning fields."""

from django.db import migrations

FROZEN = """
CREATE FUNCTION invoicing_refuse_final_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'draft' AND (
        NEW.number IS DISTINCT FROM OLD.number
        OR NEW.series_id IS DISTINCT FROM OLD.series_id
        OR NEW.display_number IS DISTINCT FROM OLD.display_number
        OR NEW.customer_id IS DISTINCT FROM OLD.customer_id
        OR NEW.subscription_id IS DISTINCT FROM OLD.subscription_id
        OR NEW.period_start IS DISTINCT FROM OLD.period_start
        OR NEW.period_end IS DISTINCT FROM OLD.period_end
        OR NEW.currency IS DISTINCT FROM OLD.currency
        OR NEW.subtotal IS DISTINCT FROM OLD.subtotal
        OR NEW.tax IS DISTINCT FROM OLD.tax
        OR NEW.tax_percentage IS DISTINCT FROM OLD.tax_percentage
        OR NEW.total IS DISTINCT FROM OLD.total
        OR NEW.balance_applied IS DISTINCT FROM OLD.balance_applied
        OR NEW.amount_due IS DISTINCT FROM OLD.amount_due
        OR NEW.usage_charged IS DISTINCT FROM OLD.usage_charged
        OR NEW.fees_precise IS DISTINCT FROM OLD.fees_precise
        OR NEW.rounding IS DISTINCT FROM OLD.rounding
        OR NEW.finalized_at IS DISTINCT FROM OLD.finalized_at
        OR NEW.ledger_transaction_id IS DISTINCT FROM OLD.ledger_transaction_id
        OR NEW.status = 'draft'
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'IV001',
            MESSAGE = format('invoice %s is finalized: its figures cannot change '
                             '(issue a credit note or void it)', OLD.display_number);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER invoicing_invoice_frozen BEFORE UPDATE ON invoicing_invoice
    FOR EACH ROW EXECUTE FUNCTION invoicing_refuse_final_change();

CREATE FUNCTION invoicing_refuse_final_line() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    invoice_status text;
BEGIN
    SELECT status INTO invoice_status FROM invoicing_invoice
     WHERE id = COALESCE(NEW.invoice_id, OLD.invoice_id);
    IF invoice_status IS NOT NULL AND invoice_status <> 'draft' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'IV001',
            MESSAGE = 'the lines of a finalized invoice cannot change';
    END IF;
    RETURN COALESCE(NEW, OLD);
END $$;

CREATE TRIGGER invoicing_line_frozen BEFORE INSERT OR UPDATE OR DELETE ON invoicing_invoiceline
    FOR EACH ROW EXECUTE FUNCTION invoicing_refuse_final_line();

-- An invoice is never deleted once it has a number.
CREATE FUNCTION invoicing_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.number IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'IV001',
            MESSAGE = format('invoice %s is finalized and cannot be deleted', OLD.display_number);
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER invoicing_invoice_kept BEFORE DELETE ON invoicing_invoice
    FOR EACH ROW EXECUTE FUNCTION invoicing_refuse_delete();
"""

UNDO = """
DROP TRIGGER invoicing_invoice_kept ON invoicing_invoice;
DROP FUNCTION invoicing_refuse_delete();
DROP TRIGGER invoicing_line_frozen ON invoicing_invoiceline;
DROP FUNCTION invoicing_refuse_final_line();
DROP TRIGGER invoicing_invoice_frozen ON invoicing_invoice;
DROP FUNCTION invoicing_refuse_final_change();
"""


class Migration(migrations.Migration):
    dependencies = [("invoicing", "0001_initial")]
    operations = [migrations.RunSQL(FROZEN, UNDO)]
