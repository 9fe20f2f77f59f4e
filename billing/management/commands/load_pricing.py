"""``manage.py load_pricing FILE`` ensures the file's meters and publishes its plans, in one
transaction (see ``billing.pricing`` and docs/pricing-file.md). Running it again with the
same file changes nothing; a changed plan is published as its next version."""

import sys

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from billing import errors
from billing.pricing.load import load_pricing


class Command(BaseCommand):
    help = "Load meters and plans from a pricing file (YAML or JSON); safe to run again."

    def add_arguments(self, parser):
        parser.add_argument(
            "file", help="The pricing file (.yaml, .yml or .json), or - for standard input."
        )
        parser.add_argument(
            "--format",
            choices=["yaml", "json"],
            help="Override the format guessed from the extension or content.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Report what would change, then roll everything back.",
        )
        parser.add_argument(
            "--published-by",
            metavar="USERNAME",
            help="Record this staff user as the publisher of new versions.",
        )

    def handle(
        self,
        *args,
        file: str,
        format: str | None,
        dry_run: bool,
        published_by: str | None,
        **options,
    ):
        published_by_id = None
        if published_by:
            user = get_user_model().objects.filter(username=published_by).first()
            if user is None:
                raise CommandError(f"no user {published_by!r}")
            published_by_id = user.pk
        if file == "-":
            source = {"text": sys.stdin.read(), "source": "<stdin>"}
        else:
            source = {"path": file}
        try:
            summary = load_pricing(
                **source, format=format, published_by_id=published_by_id, dry_run=dry_run
            )
        except errors.BillingError as exc:
            raise CommandError(exc.message) from None
        for line in summary.lines():
            self.stdout.write(line)
        counts: dict[str, int] = {}
        for result in summary.results:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        tally = ", ".join(f"{n} {outcome.replace('_', ' ')}" for outcome, n in counts.items())
        verdict = f"{summary.source}: {len(summary.meters)} meters, {len(summary.plans)} plans" + (
            f" ({tally})" if tally else ""
        )
        if dry_run:
            self.stdout.write(self.style.WARNING(f"{verdict}; dry run, nothing was saved."))
        elif summary.changed:
            self.stdout.write(self.style.SUCCESS(f"{verdict}."))
        else:
            self.stdout.write(self.style.SUCCESS(f"{verdict}; nothing changed."))
