"""``manage.py create_api_key --name NAME --scopes read,write,ingest`` prints a new secret
once; only its hash is stored."""

from django.core.management.base import BaseCommand, CommandError

from billing import errors, services


class Command(BaseCommand):
    help = "Create an API key and print its secret (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--scopes", default="read,write,ingest", help="Comma-separated: read, write, ingest"
        )

    def handle(self, *args, name: str, scopes: str, **options):
        try:
            key, secret = services.create_api_key(
                name=name, scopes=[s.strip() for s in scopes.split(",") if s.strip()]
            )
        except errors.BillingError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(
            f"API key {key.name!r} ({', '.join(key.scopes)}). "
            "Store the secret now: it is not shown again."
        )
        self.stdout.write(secret)
