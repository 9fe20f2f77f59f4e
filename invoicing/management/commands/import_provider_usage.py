"""``manage.py import_provider_usage --provider openai|anthropic FILE [FILE …]``: match a
provider's usage and cost exports (formats in ``invoicing.provider_usage``) against what
we metered, per UTC day and model, and print the gaps. Read-only; exits 1 on gaps."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from invoicing import provider_usage


class Command(BaseCommand):
    help = "Match a provider's usage/cost export against metered usage (read-only)."

    def add_arguments(self, parser):
        parser.add_argument("--provider", required=True, choices=["openai", "anthropic"])
        parser.add_argument("files", nargs="+", help="JSON or CSV exports (usage and costs)")
        parser.add_argument("--all", action="store_true", help="print matching rows too")

    def handle(self, *args, **options):
        export = None
        for name in options["files"]:
            try:
                export = provider_usage.parse_export(
                    Path(name).read_bytes(), provider=options["provider"], export=export
                )
            except (OSError, provider_usage.ExportError) as error:
                raise CommandError(f"{name}: {error}") from None
        assert export is not None
        match = provider_usage.match_export(export)
        for row in match.rows:
            if not row.gaps and not options["all"]:
                continue
            status = "; ".join(
                f"{g.kind}: theirs {g.theirs}, ours {g.ours} ({g.note})" for g in row.gaps
            )
            self.stdout.write(f"{row.day} {row.model}: {status or 'ok'}")
        self.stdout.write(
            f"{len(match.rows)} day/model rows, {len(match.gaps)} with gaps "
            f"(tolerance {match.token_tolerance:%} of tokens, {match.cost_tolerance} USD)"
        )
        if match.gaps:
            raise SystemExit(1)
