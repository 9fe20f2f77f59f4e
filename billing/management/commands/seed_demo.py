"""Demo data for ``make run``: an admin login, the demo price list (pricing/demo.yaml), and
four customers — prepaid, postpaid, metered and credits — with subscriptions that began
``HISTORY_DAYS`` ago and usage in their first period, which has therefore ended: the
period close (beat, or "Close due periods" in the admin) invoices it at once.

initech's wallet has an auto top-up (offline in the demo): the first beat run refills it.
A webhook endpoint subscribed to every event points at the demo's own receiver
(billing.devtools.webhook_receiver, development only): made first, so every event the
seeding and beat emit is delivered to it, signed, and logged in the admin.

Staff users in each role (operator, approver, viewer; password = name) and one large
adjustment of acme's waiting for approval (docs/finance-admin.md).

Three more customers (stark, wayne, tyrell) have a finance history: subscriptions that
began months ago, LLM usage in every period, and their ended periods closed and finalized
as of each period's end, the older invoices paid (a bank transfer recorded), the last
ones still owed (they pay by invoice, collection method send_invoice: nothing charges
them automatically, not even the demo's offline auto-pay): the finance home's revenue per
month, MRR change, receivables by age and top customers read them.

Idempotent: customers are created once, every posting has a fixed reference, and an
unchanged pricing file changes nothing. Safe to run at every start."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from billing import alerts, projects, services, webhooks
from billing.devtools import webhook_receiver
from billing.models import (
    ALL_EVENTS,
    AlertKind,
    AlertScope,
    AutoTopUp,
    BillingMode,
    CollectionMethod,
    Customer,
    SubscriptionStatus,
    WebhookEndpoint,
)
from billing.periods import midnight
from billing.portal import services as portal
from billing.pricing.load import load_pricing
from invoicing import payments, reconciliation
from invoicing import services as invoicing
from invoicing.models import Invoice
from metering import rating
from metering.catalog import import_genai_prices
from metering.management.commands.simulate_usage import CALLS, PROJECTS, raw_usage

DEMO_PRICING_FILE = Path(settings.BASE_DIR) / "pricing" / "demo.yaml"

DEMO_CUSTOMERS = [
    # external_id, name, billing mode, credit limit, plan, top-up
    ("acme", "Acme Robotics", BillingMode.PREPAID, None, "payg", Decimal("500.00")),
    ("globex", "Globex AI", BillingMode.POSTPAID, Decimal("1000.00"), "pro", None),
    ("initech", "Initech Labs", BillingMode.PREPAID, None, "scale", Decimal("25.00")),
    ("hooli", "Hooli Search", BillingMode.PREPAID, None, "credits", None),
    ("soylent", "Soylent Studio", BillingMode.PREPAID, None, "team-fortnightly", Decimal("100")),
]
# Plans a customer may switch to in the portal (monthly USD; enterprise is sold by sales).
DEMO_SELF_SERVE_PLANS = ["payg", "pro", "scale", "batch"]
DEMO_CREDITS = {"hooli": Decimal("250000")}  # prepaid credit packs
# An auto top-up (made once; finance may change it afterwards): initech's wallet starts at
# 25.00 and its first period's usage takes it below the threshold, so the first beat run
# (every 30 s) refills it — offline in the demo (PAYMENTS_OFFLINE), by card with Stripe.
DEMO_AUTO_TOP_UPS = {
    "initech": {
        "threshold": Decimal("25.00"),
        "target": Decimal("40.00"),
        "monthly_cap": Decimal("200.00"),
        "cool_off_seconds": 60,
    }
}
HISTORY_DAYS = 33  # the first monthly period has ended when the demo starts


def fortnightly_start(now):
    """A Wednesday 12 days before the last Monday: on the team-fortnightly plan (every other
    Monday) its first, shorter period — 12 of 14 days, 28.00 → 24.00 — has ended when the
    demo starts, and exactly that one (the next runs to the Monday after next)."""
    monday = midnight(now) - timedelta(days=now.weekday())
    return monday - timedelta(days=12)


# When a demo customer's subscription starts, other than HISTORY_DAYS ago.
DEMO_STARTS = {"soylent": fortnightly_start}
HISTORY_EVENTS = 40  # LLM calls per customer in that period


class Command(BaseCommand):
    help = "Load demo data (safe to run more than once)."

    @transaction.atomic
    def handle(self, *args, **options):
        user_model = get_user_model()
        if not user_model.objects.filter(username="admin").exists():
            user_model.objects.create_superuser("admin", "admin@example.com", "admin")
        self.stdout.write(f"  webhooks: {_seed_webhook_endpoint()}")
        report = import_genai_prices()
        self.stdout.write(
            f"  model catalog ({report.source}): {report.created} price versions added, "
            f"{report.unchanged} unchanged"
        )
        summary = load_pricing(path=DEMO_PRICING_FILE)
        for line in summary.lines():
            self.stdout.write(f"  {line}")
        for plan_code in DEMO_SELF_SERVE_PLANS:  # what the portal's Plan page offers
            services.set_plan_self_serve(code=plan_code, self_serve=True)
        started = timezone.now() - timedelta(days=HISTORY_DAYS)
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
                    customer=customer,
                    plan=services.latest_plan(code=plan_code),
                    trial_days=0,
                    # back-dated: the first period is invoiced by the next close
                    start=DEMO_STARTS[external_id](timezone.now())
                    if external_id in DEMO_STARTS
                    else started,
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
                _seed_promotional_credits(customer)
            if external_id in DEMO_AUTO_TOP_UPS:
                _seed_auto_top_up(customer, DEMO_AUTO_TOP_UPS[external_id])
        _seed_portal_users()
        self.stdout.write(f"  staff in the roles: {_seed_staff()}")
        _seed_alerts()
        self.stdout.write(f"  projects with budgets: {_seed_projects()}")
        accepted = _seed_history(started)
        self.stdout.write(f"  usage history: {accepted} events in the demo's first period")
        self.stdout.write(f"  finance history: {_seed_finance_history(timezone.now())}")
        run = reconciliation.run_reconciliation(
            start=started.replace(hour=0, minute=0, second=0, microsecond=0),
            end=timezone.now(),
            triggered_by="seed_demo",
            alert=False,
        )
        self.stdout.write(f"  reconciliation of the demo's history: {run.status}")
        self.stdout.write(self.style.SUCCESS("Demo data ready (admin / admin)."))


def _seed_projects() -> int:
    """The demo's projects and their budgets (made once; finance may change them)."""
    made = 0
    for external_id, projects_of in PROJECTS.items():
        customer = Customer.objects.get(external_id=external_id)
        for key, (name, limit) in projects_of.items():
            if not customer.projects.filter(key=key).exists():
                projects.create_project(
                    customer=customer, key=key, name=name, spend_limit=Decimal(limit)
                )
            made += 1
    return made


def _seed_alerts() -> None:
    """Initech's low-balance setting (its 25 USD are below 50: the first beat fires it, the
    e-mail on the console) and an alert on models that cost more than they earn."""
    initech = Customer.objects.get(external_id="initech")
    if alerts.portal_low_balance(initech) is None:
        alerts.update_alert_settings(
            customer=initech, threshold=Decimal(50), email="billing@initech.example"
        )
    name = "Demo: models losing money"
    if not alerts.list_alerts().filter(name=name).exists():
        alerts.create_alert(
            name=name,
            kind=AlertKind.NEGATIVE_MARGIN,
            scope=AlertScope.ALL,
            threshold=Decimal(0),
            per_model=True,
            recipients=["finance@seller.example"],
        )


DEMO_WEBHOOK_DESCRIPTION = "Demo: the local webhook receiver (every event)"


def _seed_webhook_endpoint() -> str:
    """An endpoint for every event at the demo's receiver (made once; its URL follows the
    web server's HOST and PORT). Only where http and local addresses are allowed
    (``WEBHOOK_ALLOW_INSECURE_URLS``, on in development)."""
    if not settings.WEBHOOK_ALLOW_INSECURE_URLS:
        return "no demo endpoint (WEBHOOK_ALLOW_INSECURE_URLS is off)"
    url = webhook_receiver.receiver_url()
    endpoint = WebhookEndpoint.objects.filter(description=DEMO_WEBHOOK_DESCRIPTION).first()
    if endpoint is None:
        endpoint = webhooks.create_endpoint(
            url=url, enabled_events=[ALL_EVENTS], description=DEMO_WEBHOOK_DESCRIPTION
        )
    elif endpoint.url != url:
        endpoint = webhooks.update_endpoint(endpoint_id=endpoint.pk, url=url)
    return f"every event to {endpoint.url}"


DEMO_PORTAL_USERS = [
    ("acme", "ann@acme.example"),
    ("globex", "bo@globex.example"),
    ("hooli", "cy@hooli.example"),  # a credits plan: the portal's credits page
]


def _seed_promotional_credits(customer: Customer) -> None:
    """Welcome credits drawn before the credit pack, expiring in two weeks (made once)."""
    from billing import credits

    if customer.credit_grants.filter(reference__endswith=":demo-welcome").exists():
        return
    credits.grant_credits(
        customer=customer,
        amount=Decimal("20000"),
        name="Welcome credits",
        expires_at=timezone.now() + timedelta(days=14),
        reference="demo-welcome",
    )


def _seed_auto_top_up(customer: Customer, settings: dict) -> None:
    wallet = services.wallet_for(customer=customer)
    if not AutoTopUp.objects.filter(wallet=wallet).exists():
        services.set_auto_top_up(wallet=wallet, enabled=True, **settings)


DEMO_PORTAL_PASSWORD = "portal-demo"


def _seed_portal_users() -> None:
    """A portal user for two demo customers, with a known password (demo only)."""
    for external_id, email in DEMO_PORTAL_USERS:
        customer = Customer.objects.get(external_id=external_id)
        member = portal.invite_member(customer=customer, email=email)
        if not member.user.has_usable_password():
            member.user.set_password(DEMO_PORTAL_PASSWORD)
            member.user.save(update_fields=["password"])


def _seed_history(started) -> int:
    """LLM calls spread over each demo customer's first period (idempotent keys: a rerun
    records nothing twice)."""
    rng = random.Random(7)
    events = []
    for external_id, *_ in DEMO_CUSTOMERS:
        for n in range(HISTORY_EVENTS):
            provider, model, shape = rng.choice(CALLS)
            at = started + timedelta(days=29 * n / HISTORY_EVENTS, hours=rng.randint(0, 20))
            events.append(
                rating.EventIn(
                    idempotency_key=f"demo-history-{n}",
                    customer=external_id,
                    event_name="llm.completion",
                    timestamp=at,
                    properties={
                        "model": model,
                        "provider": provider,
                        "usage": raw_usage(shape, rng),
                    },
                )
            )
    outcomes = rating.ingest_events(events)
    return sum(1 for outcome in outcomes if outcome.status == "accepted")


# Customers with months of history (see the module's docstring): external_id, name, plan,
# how many monthly periods ago it began, LLM calls per period, how many of its newest
# invoices are left owed. They pay by invoice (collection method send_invoice, as customers
# on net terms do): finalizing charges nothing — neither Stripe nor make run's offline
# auto-pay (OFFLINE_AUTO_PAY) in the worker's follow-up — so what is owed stays owed.
# Finalized a day after their period's end and due FINANCE_HISTORY_DAYS_UNTIL_DUE later:
# the newest is current whatever today's date, the third newest past due.
FINANCE_HISTORY = [
    ("stark", "Stark Analytics", "scale", 5, 30, 3),
    ("wayne", "Wayne Media", "pro", 4, 24, 2),
    ("tyrell", "Tyrell Research", "batch", 3, 18, 1),
]
FINANCE_HISTORY_FINALIZED_AFTER = timedelta(days=1)
FINANCE_HISTORY_DAYS_UNTIL_DUE = 30


def _seed_finance_history(now) -> str:
    """The FINANCE_HISTORY customers, made once: a subscription back-dated to the start of
    the month ``months`` months ago, ``calls`` LLM calls in each of its periods, every ended
    period closed, finalized as of a day after its end, and all but its newest ``owed``
    invoices paid by a recorded transfer."""
    rng = random.Random(11)
    made = []
    for external_id, name, plan_code, months, calls, owed in FINANCE_HISTORY:
        if Customer.objects.filter(external_id=external_id).exists():
            continue
        customer = services.create_customer(
            external_id=external_id,
            name=name,
            email=f"billing@{external_id}.example",
            billing_mode=BillingMode.POSTPAID,
            credit_limit=None,
            country="US",
            collection_method=CollectionMethod.SEND_INVOICE,
            days_until_due=FINANCE_HISTORY_DAYS_UNTIL_DUE,
        )
        month = midnight(now).replace(day=1)
        for _ in range(months):
            month = (month - timedelta(days=1)).replace(day=1)
        subscription = services.create_subscription(
            customer=customer,
            plan=services.latest_plan(code=plan_code),
            trial_days=0,
            start=month,
            now=now,
        )
        span = (now - month).total_seconds()
        events = []
        for n in range(calls * months):
            provider, model, shape = rng.choice(CALLS)
            events.append(
                rating.EventIn(
                    idempotency_key=f"demo-finance-history-{n}",
                    customer=external_id,
                    event_name="llm.completion",
                    timestamp=month
                    + timedelta(seconds=span * (n + rng.random()) / (calls * months)),
                    properties={
                        "model": model,
                        "provider": provider,
                        "usage": raw_usage(shape, rng),
                    },
                )
            )
        rating.ingest_events(events)
        invoicing.close_subscription_periods(subscription_id=subscription.pk, as_of=now)
        drafts = list(Invoice.objects.filter(subscription=subscription).order_by("period_start"))
        for position, draft in enumerate(drafts):
            invoice = invoicing.finalize_invoice(
                invoice_id=draft.pk,
                now=min(draft.period_end + FINANCE_HISTORY_FINALIZED_AFTER, now),
            )
            if position < len(drafts) - owed and invoice.amount_remaining > 0:
                payments.record_offline_payment(
                    invoice_id=invoice.pk, reference=f"demo-transfer-{invoice.pk}"
                )
        made.append(f"{external_id} ({len(drafts)} invoices)")
    return ", ".join(made) or "already there"


# Staff in each role (docs/finance-admin.md), password = user name, and one large adjustment
# waiting for approval: sign in as "approver" to approve what "operator" asked for, then
# read it in the audit trail.
DEMO_STAFF = [
    ("operator", "Finance operator"),
    ("approver", "Finance operator"),
    ("viewer", "Finance viewer"),
]
DEMO_LARGE_ADJUSTMENT = Decimal("1500.00")


def _seed_staff() -> str:
    from django.contrib.auth.models import Group

    user_model = get_user_model()
    made = []
    for username, role in DEMO_STAFF:
        group = Group.objects.filter(name=role).first()
        if group is None:  # (the roles migration's groups were removed)
            continue
        user = user_model.objects.filter(username=username).first()
        if user is None:
            user = user_model.objects.create_user(
                username, f"{username}@example.com", username, is_staff=True
            )
            user.groups.add(group)
            made.append(username)
    operator = user_model.objects.filter(username="operator").first()
    if operator is not None:
        services.request_adjustment(
            customer=Customer.objects.get(external_id="acme"),
            amount=max(DEMO_LARGE_ADJUSTMENT, services.approval_threshold("USD") or Decimal(0)),
            reason="Demo: SLA credit for last month's outage",
            staff_user_id=operator.pk,
            reference="demo-large-adjustment",
        )
    return ", ".join(made) or "already there"
