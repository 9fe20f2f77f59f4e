"""Demo data for ``make run``: an admin login, the system accounts and a few wallets with
history. Idempotent: every posting has a fixed reference, so running it again changes
nothing."""

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from ledger import services
from ledger.models import Account, NormalBalance

DEMO_WALLETS = [
    # code, name, prepaid?, overdraft limit, top-up
    ("acme", "Acme Robotics", True, None, Decimal("500.00")),
    ("globex", "Globex AI", False, Decimal("1000.00"), Decimal("0")),
    ("initech", "Initech Labs", True, None, Decimal("25.00")),
]


class Command(BaseCommand):
    help = "Load demo data (safe to run more than once)."

    def handle(self, *args, **options):
        user_model = get_user_model()
        if not user_model.objects.filter(username="admin").exists():
            user_model.objects.create_superuser("admin", "admin@example.com", "admin")
        world = services.ensure_system_account(
            code="@World",
            currency="USD",
            normal_balance=NormalBalance.DEBIT,
            name="Outside world (money entering or leaving)",
        )
        revenue = services.ensure_system_account(code="@Revenue", currency="USD", name="Revenue")
        tokens_source = services.ensure_system_account(
            code="@Tokens",
            currency="TOKENS",
            normal_balance=NormalBalance.DEBIT,
            name="Tokens consumed (source)",
        )
        for code, name, prepaid, limit, top_up in DEMO_WALLETS:
            wallet = Account.objects.filter(code=f"wallet:{code}:USD", currency="USD").first()
            if wallet is None:
                wallet = services.create_account(
                    code=f"wallet:{code}:USD",
                    currency="USD",
                    name=f"{name} — USD wallet",
                    allow_negative=not prepaid,
                    negative_limit=limit,
                    owner_type="demo.customer",
                    owner_id=code,
                )
            usage = Account.objects.filter(code=f"usage:{code}", currency="TOKENS").first()
            if usage is None:
                usage = services.create_account(
                    code=f"usage:{code}",
                    currency="TOKENS",
                    name=f"{name} — tokens used",
                    owner_type="demo.customer",
                    owner_id=code,
                )
            if top_up:
                services.post_transaction(
                    reference=f"demo:top-up:{code}",
                    legs=[services.debit(world, top_up), services.credit(wallet, top_up)],
                    description=f"Demo top-up for {name}",
                )
            for n in range(1, 6):
                tokens = Decimal(1200 * n)
                price = (tokens * Decimal("0.000002500")).quantize(Decimal("1e-12"))
                services.post_transactions(
                    transactions=[
                        services.TransactionSpec(
                            reference=f"demo:usage:{code}:{n}:tokens",
                            legs=[
                                services.debit(tokens_source, tokens),
                                services.credit(usage, tokens),
                            ],
                            description=f"{int(tokens)} tokens (gpt-4o-mini)",
                        ),
                        services.TransactionSpec(
                            reference=f"demo:usage:{code}:{n}:money",
                            legs=[services.debit(wallet, price), services.credit(revenue, price)],
                            description=f"{int(tokens)} tokens at $2.50 per million",
                        ),
                    ]
                )
        self.stdout.write(self.style.SUCCESS("Demo data ready (admin / admin)."))
