"""``manage.py reconcile [--day YYYY-MM-DD | --start YYYY-MM-DD --end YYYY-MM-DD]
[--currency USD]``: run the reconciliation (``invoicing.reconciliation``) by hand.

The day defaults to yesterday (UTC), as the daily task; a range is inclusive of both days.
The run is stored (one row per period and scope: running it again replaces it) and an
alert is raised on differences, as by the task. Exits 1 when the books disagree."""

from __future__ import annotations

from datetime import date, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from invoicing import reconciliation


def _date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--{name}: a date as YYYY-MM-DD, not {value!r}") from None


class Command(BaseCommand):
    help = "Reconcile the ledger, rated events, invoices and payments for a day or a range."

    def add_arguments(self, parser):
        parser.add_argument("--day", help="one UTC day (default: yesterday)")
        parser.add_argument("--start", help="first day of a range")
        parser.add_argument("--end", help="last day of a range (inclusive)")
        parser.add_argument("--currency", default="", help="one currency (default: every one)")

    def handle(self, *args, **options):
        if options["start"] or options["end"]:
            if not (options["start"] and options["end"]) or options["day"]:
                raise CommandError("give --start and --end together, or --day")
            first, last = _date(options["start"], "start"), _date(options["end"], "end")
        else:
            first = last = (
                _date(options["day"], "day")
                if options["day"]
                else timezone.now().date() - timedelta(days=1)
            )
        if last < first:
            raise CommandError("--end is before --start")
        start = reconciliation.day_bounds(first)[0]
        end = reconciliation.day_bounds(last)[1]
        run = reconciliation.run_reconciliation(
            start=start,
            end=end,
            currency=options["currency"].upper(),
            triggered_by="manage.py reconcile",
        )
        for check in run.checks:
            mark = "ok" if check["passed"] else f"FAILED: {check['difference_count']}"
            self.stdout.write(f"{check['label']}: {mark}")
            for d in check["differences"]:
                self.stdout.write(
                    f"  {d['currency']} {d['item']}: {d['cause']} "
                    f"(expected {d['expected']}, actual {d['actual']})"
                )
        self.stdout.write(f"{run} in {run.duration_ms} ms")
        if run.difference_count:
            raise SystemExit(1)
