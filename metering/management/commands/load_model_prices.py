"""manage.py load_model_prices: import the model price catalog from genai-prices' offline
data snapshot (no network). Idempotent: a second run adds nothing unless a price changed."""

from django.core.management.base import BaseCommand

from metering.catalog import import_genai_prices


class Command(BaseCommand):
    help = "Import provider model prices from the genai-prices data snapshot."

    def handle(self, *args, **options):
        report = import_genai_prices()
        self.stdout.write(
            f"{report.source}: {report.models} models; {report.created} price versions added, "
            f"{report.updated} future versions corrected, {report.unchanged} unchanged, "
            f"{report.skipped} skipped"
        )
