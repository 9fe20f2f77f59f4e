"""``manage.py close_periods [--as-of TIMESTAMP] [--finalize]``: the period close by hand.

Runs the same services as the beat schedule, in this process: operators catching up, tests
and demos moving time forward. Safe to run again: what was closed stays closed once.

With ``--finalize`` it also does, in this process, what a worker does after each
finalization (``after_finalization``: collect payment, then the PDF and the e-mail), so the
invoices are in their final state when the command returns — paid at once in offline mode
(``PAYMENTS_OFFLINE``), charged with Stripe, open without a payment provider. A worker
running the queued task as well finds each step done (every step is idempotent)."""

from __future__ import annotations

from collections import Counter

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from invoicing import services
from invoicing.models import Invoice


class Command(BaseCommand):
    help = "Close every billing period that has ended (and optionally finalize drafts)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--as-of",
            help="RFC 3339 timestamp to close as of (default: now), e.g. 2027-01-01T00:00:00Z",
        )
        parser.add_argument(
            "--finalize",
            action="store_true",
            help="also finalize drafts whose grace period has passed as of that time",
        )

    def handle(self, *args, **options):
        as_of = None
        if options["as_of"]:
            as_of = parse_datetime(options["as_of"])
            if as_of is None or as_of.tzinfo is None:
                raise CommandError("--as-of takes an RFC 3339 timestamp with a time zone")
        closed = services.close_due_periods(as_of=as_of)
        self.stdout.write(f"{closed} period(s) closed into draft invoices")
        if options["finalize"]:
            ids = services.due_draft_ids(as_of=as_of)
            for invoice_id in ids:
                services.finalize_invoice(invoice_id=invoice_id, now=as_of)
            self.stdout.write(f"{len(ids)} invoice(s) finalized")
            for invoice_id in ids:
                services.after_finalization(invoice_id=invoice_id)
            statuses = Counter(Invoice.objects.filter(pk__in=ids).values_list("status", flat=True))
            if statuses:
                self.stdout.write(
                    ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
                )
