"""Demo data for ``make run``: an admin login, the demo price list (pricing/demo.yaml), and
three customers — prepaid, postpaid and metered — with subscriptions and some history.

Idempotent: customers are created once, every posting has a fixed reference, and an
unchanged pricing file changes nothing. Safe to run at every start."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from billing import services
from billing.models import BillingMode, Customer, SubscriptionStatus
from billing.pricing import load_pricing
from metering.catalog import import_genai_prices

DEMO_PRICING_FILE = Path(settings.BASE_DIR) / "pricing" / "demo.yaml"

DEMO_CUSTOMERS = [
    # external_id, name, billing mode, credit limit, plan, top-up
    ("acme", "Acme Robotics", BillingMode.PREPAID, None, "payg", Decimal("500.00")),
    ("globex", "Globex AI", BillingMode.POSTPAID, Decimal("1000.00"), "pro", None),
    ("initech", "Initech Labs", BillingMode.PREPAID, None, "scale", Decimal("25.00")),
    ("hooli", "Hooli Search", BillingMode.PREPAID, None, "credits", None),
]
DEMO_CREDITS = {"hooli": Decimal("250000")}  # prepaid credit packs


class Command(BaseCommand):
    help = "Load demo data (safe to run more than once)."

    @transaction.atomic
    def handle(self, *args, **options):
        user_model = get_user_model()
        if not user_model.objects.filter(username="admin").exists():
            user_model.objects.create_superuser("admin", "admin@example.com", "admin")
        report = import_genai_prices()
        self.stdout.write(
            f"  model catalog ({report.source}): {report.created} price versions added, "
            f"{report.unchanged} unchanged"
        )
        summary = load_pricing(path=DEMO_PRICING_FILE)
        for line in summary.lines():
            self.stdout.write(f"  {line}")
        for external_id, name, mode, limit, plan_code, top_up in DEMO_CUSTOMERS:
            customer = Customer.objects.filter(external_id=external_id).first()
            if customer is None:
                customer = services.create_customer(
                    external_id=external_id,
                    name=name,
                    email=f"billing@{external_id}.example",
                    billing_mode=mode,
                    credit_limit=limit,
                    country="US",
                )
            if not customer.subscriptions.exclude(status=SubscriptionStatus.CANCELED).exists():
                services.create_subscription(
                    customer=customer, plan=services.latest_plan(code=plan_code), trial_days=0
                )
            if top_up:
                services.top_up(
                    customer=customer,
                    amount=top_up,
                    reference="demo-initial-top-up",
                    description="Demo: initial top-up",
                )
            if external_id in DEMO_CREDITS:
                services.ensure_wallet(customer=customer, currency="CREDITS")
                services.top_up(
                    customer=customer,
                    amount=DEMO_CREDITS[external_id],
                    currency="CREDITS",
                    reference="demo-credit-pack",
                    description="Demo: credit pack",
                )
        self.stdout.write(self.style.SUCCESS("Demo data ready (admin / admin)."))
