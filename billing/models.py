"""The commercial core: customers, wallets, meters, plans, subscriptions and API keys.

Design overview
===============
Customers are addressed by the product's own ``external_id``. Each customer has one wallet
per currency; a wallet *is* a ledger account (``ledger.Account``, owned by the customer
through the ledger's generic owner fields) plus how it may be spent: ``prepaid`` wallets
refuse what they cannot cover, ``postpaid`` wallets go into overdraft down to their credit
limit (none = unlimited). Balances live in the ledger only; nothing here caches one.

Plans are versioned and immutable once published: ``(code, version)`` is unique and an edit
publishes version N+1 (``billing.services.publish_plan``, used by the pricing file, the API
and the admin alike). A subscription keeps the version it signed. A plan has a base fee per
interval, trial days, one consumption model (metered: included allowance + overage,
invoiced; credits: prepaid blocks where 1 credit = ``units_per_credit`` units; balance:
prepaid money debited at real cost) and one charge per meter with its price model (per
unit, graduated, volume, package) and tiers. Unit prices carry 12 decimal places.

A meter (``Meter``) says how usage events become a quantity: the events it reads, how it
aggregates them over a period, the property it reads, the events it keeps and the
dimensions it splits usage by. It belongs here, with the plans that price it; metering
reads meters to rate events (its table is still ``metering_meter``, where it began).

A subscription's periods are half-open UTC intervals [start, end) computed from its billing
anchor (month arithmetic clamps to the month's last day and returns to the anchor day).
Plan changes and cancellations are recorded as *phases* — which plan version applied from
when to when — so that the period close can prorate the base fee exactly.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now

from ledger.models import Account

PRICE_DIGITS, PRICE_PLACES = 30, 12


def price_field(**kwargs) -> models.DecimalField:
    return models.DecimalField(max_digits=PRICE_DIGITS, decimal_places=PRICE_PLACES, **kwargs)


class BillingMode(models.TextChoices):
    PREPAID = "prepaid", "Prepaid (refuses what it cannot cover)"
    POSTPAID = "postpaid", "Postpaid (overdraft up to the credit limit, invoiced)"


class Customer(models.Model):
    external_id = models.CharField(max_length=200, unique=True)
    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True, default="")
    currency = models.CharField(max_length=16, default="USD")
    billing_mode = models.CharField(
        max_length=10, choices=BillingMode.choices, default=BillingMode.PREPAID
    )
    address_line1 = models.CharField(max_length=200, blank=True, default="")
    address_line2 = models.CharField(max_length=200, blank=True, default="")
    city = models.CharField(max_length=100, blank=True, default="")
    state = models.CharField(max_length=100, blank=True, default="")
    postal_code = models.CharField(max_length=30, blank=True, default="")
    country = models.CharField(max_length=2, blank=True, default="", help_text="ISO 3166-1")
    tax_id = models.CharField(max_length=50, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    stripe_customer_id = models.CharField(max_length=100, blank=True, default="")
    # the portal's low-balance alert (set by the customer's users)
    low_balance_threshold = price_field(
        null=True, blank=True, help_text="E-mail when the available balance falls below this."
    )
    low_balance_email = models.EmailField(blank=True, default="")
    low_balance_alerted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.external_id})"


class PortalMember(models.Model):
    """A person of the customer's who signs in to the portal. A user belongs to one customer
    and sees only its data; a customer may have several."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="portal_member"
    )
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="members")
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(db_default=Now())

    def __str__(self) -> str:
        return f"{self.user.email} at {self.customer.external_id}"


class Wallet(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="wallets")
    currency = models.CharField(max_length=16)
    account = models.OneToOneField(Account, on_delete=models.PROTECT, related_name="wallet")
    billing_mode = models.CharField(max_length=10, choices=BillingMode.choices)
    credit_limit = price_field(
        null=True, blank=True, help_text="Postpaid: how far below zero; empty = no limit."
    )
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "currency"], name="billing_wallet_currency"
            ),
            models.CheckConstraint(
                condition=Q(billing_mode="postpaid") | Q(credit_limit__isnull=True),
                name="billing_wallet_limit_postpaid_only",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.external_id} {self.currency} wallet"


class Interval(models.TextChoices):
    MONTH = "month", "Monthly"
    YEAR = "year", "Yearly"


class ConsumptionModel(models.TextChoices):
    METERED = "metered", "Metered: included allowance + overage, invoiced"
    CREDITS = "credits", "Credits: prepaid blocks, 1 credit = N units"
    BALANCE = "balance", "Balance: prepaid money debited at real cost"


class Plan(models.Model):
    """One immutable version of a plan."""

    code = models.SlugField(max_length=100)
    version = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    currency = models.CharField(max_length=16, default="USD")
    interval = models.CharField(max_length=5, choices=Interval.choices, default=Interval.MONTH)
    base_fee = price_field(default=Decimal(0))
    trial_days = models.PositiveIntegerField(default=0)
    consumption_model = models.CharField(
        max_length=10, choices=ConsumptionModel.choices, default=ConsumptionModel.METERED
    )
    units_per_credit = price_field(
        null=True, blank=True, help_text="Credits model: how many units one credit buys."
    )
    metadata = models.JSONField(default=dict, blank=True)
    spec_hash = models.CharField(max_length=64, help_text="What was published; unchanged = same.")
    published_at = models.DateTimeField(db_default=Now())
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        ordering = ["code", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["code", "version"], name="billing_plan_version"),
            models.CheckConstraint(condition=Q(base_fee__gte=0), name="billing_plan_fee_positive"),
            models.CheckConstraint(
                condition=~Q(consumption_model="credits") | Q(units_per_credit__gt=0),
                name="billing_plan_credits_need_units",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.code} v{self.version})"


class Aggregation(models.TextChoices):
    SUM = "sum", "Sum of the property"
    COUNT = "count", "Count of events"
    MAX = "max", "Maximum of the property"
    UNIQUE_COUNT = "unique_count", "Count of distinct property values"
    LATEST = "latest", "Latest value of the property"


class Meter(models.Model):
    code = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200, blank=True, default="")
    event_name = models.CharField(max_length=200, db_index=True)
    aggregation = models.CharField(max_length=20, choices=Aggregation.choices)
    property = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="Dotted path into the event's properties; empty for count.",
    )
    filters = models.JSONField(
        default=dict, blank=True, help_text='Property path → allowed values, e.g. {"tier": ["pro"]}'
    )
    group_by = models.JSONField(
        default=list, blank=True, help_text='Dimensions usage is split by, e.g. ["model"]'
    )
    unit = models.CharField(max_length=30, blank=True, default="", help_text="e.g. tokens")
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        # the table keeps its name from when meters lived in metering (billing 0007)
        db_table = "metering_meter"
        constraints = [
            models.CheckConstraint(
                condition=Q(aggregation="count") | ~Q(property=""),
                name="metering_meter_property_required",
            ),
        ]

    def __str__(self) -> str:
        return self.code


class PriceModel(models.TextChoices):
    PER_UNIT = "per_unit", "Per unit"
    GRADUATED = "graduated", "Graduated tiers (each tier priced on its own units)"
    VOLUME = "volume", "Volume tiers (all units at the tier reached)"
    PACKAGE = "package", "Package (per started block of units)"


class PlanCharge(models.Model):
    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="charges")
    meter = models.ForeignKey("Meter", on_delete=models.PROTECT, related_name="+")
    included_quantity = price_field(default=Decimal(0))
    price_model = models.CharField(
        max_length=10, choices=PriceModel.choices, default=PriceModel.PER_UNIT
    )
    unit_price = price_field(
        default=Decimal(0), help_text="Per unit, or per package for the package model."
    )
    package_size = price_field(null=True, blank=True)
    margin_percent = models.DecimalField(
        max_digits=9,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Markup over the provider's cost for catalog-priced usage.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["plan", "meter"], name="billing_charge_meter"),
            models.CheckConstraint(
                condition=Q(included_quantity__gte=0, unit_price__gte=0),
                name="billing_charge_non_negative",
            ),
            models.CheckConstraint(
                condition=~Q(price_model="package") | Q(package_size__gt=0),
                name="billing_charge_package_size",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan} · {self.meter_id}"


class PriceTier(models.Model):
    charge = models.ForeignKey(PlanCharge, on_delete=models.CASCADE, related_name="tiers")
    position = models.PositiveSmallIntegerField()
    up_to = price_field(null=True, blank=True, help_text="Last unit of the tier; empty = ∞.")
    unit_price = price_field(default=Decimal(0))
    flat_fee = price_field(default=Decimal(0))

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["charge", "position"], name="billing_tier_position"),
        ]

    def __str__(self) -> str:
        bound = "∞" if self.up_to is None else self.up_to
        return f"up to {bound} at {self.unit_price}"


class SubscriptionStatus(models.TextChoices):
    TRIALING = "trialing", "Trialing"
    ACTIVE = "active", "Active"
    PAST_DUE = "past_due", "Past due"
    CANCELED = "canceled", "Canceled"


class Subscription(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(max_length=10, choices=SubscriptionStatus.choices)
    started_at = models.DateTimeField()
    billing_anchor = models.DateTimeField()
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    trial_ends_at = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    canceled_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    scheduled_plan = models.ForeignKey(
        Plan,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Takes effect at the end of the current period.",
    )
    invoiced_through = models.DateTimeField(
        null=True,
        blank=True,
        help_text="End of the last finalized period: usage timestamped before it is refused.",
    )
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            # One live subscription per customer.
            models.UniqueConstraint(
                fields=["customer"],
                condition=~Q(status="canceled"),
                name="billing_one_live_subscription",
            ),
            models.CheckConstraint(
                condition=Q(current_period_end__gt=F("current_period_start")),
                name="billing_subscription_period_order",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.external_id} on {self.plan}"


class SubscriptionPhase(models.Model):
    """Which plan version applied to a subscription from ``starts_at`` until ``ends_at``."""

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="phases")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ends_at__isnull=True) | Q(ends_at__gte=F("starts_at")),
                name="billing_phase_order",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan} from {self.starts_at:%Y-%m-%d %H:%M}"


class MarginOverride(models.Model):
    """A customer's own markup over the provider's cost for catalog-priced charges: for one
    meter, or (meter empty) for all of them. It replaces the plan charge's margin."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="margins")
    meter = models.ForeignKey(
        "Meter", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    margin_percent = models.DecimalField(max_digits=9, decimal_places=4)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "meter"],
                name="billing_margin_per_meter",
                nulls_distinct=False,
            ),
            models.CheckConstraint(
                condition=Q(margin_percent__gt=-100), name="billing_margin_above_minus_100"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.external_id}: {self.margin_percent} % on {self.meter or 'all'}"


class APIKey(models.Model):
    """A product backend's key. The secret is shown once; only its SHA-256 is stored (the
    secret is 256 random bits, so a fast hash is safe and keeps lookups O(1))."""

    SCOPES = ("read", "write", "ingest")

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=20, help_text="The start of the secret, to recognise it.")
    secret_hash = models.CharField(max_length=64, unique=True)
    scopes = ArrayField(models.CharField(max_length=10), default=list)
    rate_limit_per_minute = models.PositiveIntegerField(default=6000)
    ingest_async = models.BooleanField(
        default=False,
        help_text="Answer POST /events and /events/batch with 202 once the events are stored, "
        "and rate them a moment later, as if every request sent Prefer: respond-async.",
    )
    created_at = models.DateTimeField(db_default=Now())
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class IdempotencyRecord(models.Model):
    """The first response to a POST with an Idempotency-Key, replayed to its retries."""

    api_key = models.ForeignKey(APIKey, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField(db_default=Now(), db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "key"], name="billing_idempotency_key"),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.key})"


class GrantSource(models.TextChoices):
    PURCHASE = "purchase", "Purchase (credit pack or top-up)"
    PROMOTIONAL = "promotional", "Promotional (free)"
    ADJUSTMENT = "adjustment", "Adjustment by finance staff"


class GrantStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    DEPLETED = "depleted", "Used up"
    EXPIRED = "expired", "Expired"
    VOIDED = "voided", "Voided"


class CreditGrant(models.Model):
    """A block of a wallet's balance with its own priority and expiry (``billing.credits``).

    Granting posts a ledger transaction that credits the wallet; every debit of the wallet
    is then allocated to its live grants in drain order — lowest ``priority`` first, then
    the soonest expiry, then the oldest — and what no grant covers comes from the wallet's
    ungranted funds last. Each allocation is a ``CreditAllocation`` row and is named in the
    debit's ledger metadata (``grants``). At ``expires_at`` whatever is left is debited from
    the wallet to ``@CreditsExpired``. ``remaining`` only falls, and only under the
    customer's usage lock (the lock rating holds)."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="credit_grants")
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="grants")
    currency = models.CharField(max_length=16)
    name = models.CharField(max_length=200)
    source = models.CharField(max_length=12, choices=GrantSource.choices)
    priority = models.PositiveSmallIntegerField(
        default=50, help_text="Lower is used first (promotional grants default to 10)."
    )
    amount = price_field()
    remaining = price_field()
    status = models.CharField(
        max_length=10, choices=GrantStatus.choices, default=GrantStatus.ACTIVE
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never.")
    reference = models.CharField(max_length=255, unique=True)
    ledger_transaction = models.OneToOneField(
        "ledger.Transaction", on_delete=models.PROTECT, related_name="credit_grant"
    )
    ended_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    # Not a column: set on the grant ``billing.credits.grant_credits`` returns, True when the
    # reference was granted already and this is that first grant (an idempotent retry).
    replayed: bool

    class Meta:
        ordering = ["priority", F("expires_at").asc(nulls_last=True), "id"]
        indexes = [
            models.Index(
                fields=["wallet", "priority", "expires_at", "id"],
                condition=Q(status="active"),
                name="billing_grant_live",
            ),
            models.Index(
                fields=["expires_at"],
                condition=Q(status="active", expires_at__isnull=False),
                name="billing_grant_expiry",
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="billing_grant_amount_positive"),
            models.CheckConstraint(
                condition=Q(remaining__gte=0, remaining__lte=F("amount")),
                name="billing_grant_remaining_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(status="active") | Q(ended_at__isnull=False),
                name="billing_grant_ended_when_not_active",
            ),
        ]

    def __str__(self) -> str:
        left, amount = self.remaining.normalize(), self.amount.normalize()
        return f"{self.name} ({left:f} of {amount:f} {self.currency})"

    @property
    def used(self) -> Decimal:
        return self.amount - self.remaining


class AllocationKind(models.TextChoices):
    USAGE = "usage", "Usage"
    EXPIRY = "expiry", "Expiry"
    VOID = "void", "Voided"
    ADJUSTMENT = "adjustment", "Adjustment"
    INVOICE = "invoice", "Invoice paid from the balance"


class CreditAllocation(models.Model):
    """How much of one ledger debit of a wallet one grant paid."""

    grant = models.ForeignKey(CreditGrant, on_delete=models.PROTECT, related_name="allocations")
    ledger_transaction = models.ForeignKey(
        "ledger.Transaction", on_delete=models.PROTECT, related_name="credit_allocations"
    )
    amount = price_field()
    kind = models.CharField(max_length=12, choices=AllocationKind.choices)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["grant", "ledger_transaction"], name="billing_allocation_once"
            ),
            models.CheckConstraint(
                condition=Q(amount__gt=0), name="billing_allocation_amount_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.amount.normalize():f} from grant {self.grant_id}"


class EventType(models.TextChoices):
    """What the product tells the seller's own systems (outbound webhooks, ``billing.outbox``).
    Names follow Stripe's ``resource.action`` convention."""

    INVOICE_CREATED = "invoice.created", "Invoice created"
    INVOICE_FINALIZED = "invoice.finalized", "Invoice finalized"
    INVOICE_PAID = "invoice.paid", "Invoice paid"
    INVOICE_PAYMENT_FAILED = "invoice.payment_failed", "Invoice payment failed"
    INVOICE_VOIDED = "invoice.voided", "Invoice voided"
    CREDIT_NOTE_CREATED = "credit_note.created", "Credit note created"
    WALLET_LOW_BALANCE = "wallet.low_balance", "Wallet balance low"
    CREDITS_GRANTED = "credits.granted", "Credits granted"
    CREDITS_EXPIRING = "credits.expiring", "Credits expiring soon"
    CREDITS_EXPIRED = "credits.expired", "Credits expired"
    ALERT_TRIGGERED = "alert.triggered", "Alert triggered"
    ALERT_RESOLVED = "alert.resolved", "Alert resolved"
    AUTO_TOP_UP_SUCCEEDED = "auto_top_up.succeeded", "Auto top-up succeeded"
    AUTO_TOP_UP_FAILED = "auto_top_up.failed", "Auto top-up failed"
    SUBSCRIPTION_CREATED = "subscription.created", "Subscription created"
    SUBSCRIPTION_UPDATED = "subscription.updated", "Subscription changed plan"
    SUBSCRIPTION_CANCELED = "subscription.canceled", "Subscription canceled"
    SUBSCRIPTION_SUSPENDED = "subscription.suspended", "Subscription suspended"
    SUBSCRIPTION_REACTIVATED = "subscription.reactivated", "Subscription reactivated"
    USAGE_REFUSED = "usage.refused", "Accepted usage refused by rating"


class OutboundEvent(models.Model):
    """One thing that happened, recorded in the same database transaction as the change it
    reports (a transactional outbox): it is never announced for a change that rolled back
    and never lost for one that committed. Delivery to the seller's endpoints reads from
    here. ``dedupe_key`` makes emitting idempotent: a task run twice records its event
    once."""

    public_id = models.CharField(max_length=40, unique=True)
    type = models.CharField(max_length=40, choices=EventType.choices)
    customer = models.ForeignKey(
        Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    data = models.JSONField()
    dedupe_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(db_default=Now(), db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["customer", "-id"], name="billing_event_customer")]

    def __str__(self) -> str:
        return f"{self.type} {self.public_id}"
