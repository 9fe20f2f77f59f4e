"""Input and output shapes of the core's resources: customers and their wallets, balances
and credit grants, ledger transactions, meters, plans and subscriptions. The field types and
the strict input they share with every app's API are in ``billing.api.fields``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing import limits, services
from billing import selectors as billing_selectors
from billing.api.fields import (
    BoundedDateTime,
    CurrencyField,
    ExactJSONValue,
    MetadataField,
    Money,
    Price,
    StrictBoolean,
    StrictDecimal,
    StrictInputMixin,
    StrictIntegerField,
    StrictSerializer,
)
from billing.models import (
    MAX_DAYS_UNTIL_DUE,
    Aggregation,
    BillingMode,
    CollectionMethod,
    ConsumptionModel,
    Customer,
    GrantCadence,
    GrantExpiry,
    Interval,
    Meter,
    Plan,
    PlanCharge,
    PriceModel,
    PriceTier,
    Rollover,
    Subscription,
    SubscriptionStatus,
    Wallet,
)
from ledger import selectors as ledger_selectors

# --- customers ---------------------------------------------------------------------------


class BalanceSerializer(serializers.Serializer):
    currency = serializers.CharField()
    posted = Money(help_text="The sum of posted ledger entries.")
    held = Money(help_text="Reserved by pending holds.")
    available = Money(
        help_text="Posted − held, everywhere in this API (POST /authorize returns the same "
        "figure; what may still be spent including a credit limit is its `spendable`)."
    )


class WalletSerializer(serializers.Serializer):
    currency = serializers.CharField()
    billing_mode = serializers.ChoiceField(choices=BillingMode.choices)
    credit_limit = Money(allow_null=True, help_text="Postpaid: how far below zero; null = none.")
    balance = serializers.SerializerMethodField()

    @extend_schema_field(BalanceSerializer)
    def get_balance(self, wallet: Wallet) -> dict:
        view = ledger_selectors.get_balance(account=wallet.account)
        return BalanceSerializer(
            {
                "currency": view.currency,
                "posted": view.posted,
                "held": view.held,
                "available": view.available,
            }
        ).data


class AddressSerializer(StrictSerializer):
    line1 = serializers.CharField(
        source="address_line1", max_length=200, required=False, allow_blank=True
    )
    line2 = serializers.CharField(
        source="address_line2", max_length=200, required=False, allow_blank=True
    )
    city = serializers.CharField(max_length=100, required=False, allow_blank=True)
    state = serializers.CharField(max_length=100, required=False, allow_blank=True)
    postal_code = serializers.CharField(max_length=30, required=False, allow_blank=True)
    country = serializers.RegexField(
        r"^[A-Z]{2}$", required=False, allow_blank=True, help_text="ISO 3166-1 alpha-2"
    )


class PhaseSerializer(serializers.Serializer):
    plan = serializers.CharField(source="plan.code")
    plan_version = serializers.IntegerField(source="plan.version")
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField(allow_null=True)


class SubscriptionSerializer(serializers.ModelSerializer):
    customer = serializers.CharField(source="customer.external_id")
    plan = serializers.CharField(source="plan.code")
    plan_version = serializers.IntegerField(source="plan.version")
    scheduled_plan = serializers.SerializerMethodField()
    phases = PhaseSerializer(many=True)

    class Meta:
        model = Subscription
        fields = [
            "id",
            "customer",
            "plan",
            "plan_version",
            "status",
            "started_at",
            "billing_anchor",
            "billing_time",
            "billing_anchor_day",
            "current_period_start",
            "current_period_end",
            "trial_ends_at",
            "cancel_at_period_end",
            "canceled_at",
            "ended_at",
            "scheduled_plan",
            "phases",
            "metadata",
            "created_at",
        ]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_scheduled_plan(self, subscription: Subscription) -> str | None:
        plan = subscription.scheduled_plan
        return f"{plan.code}@{plan.version}" if plan else None


class CustomerSerializer(serializers.ModelSerializer):
    address = serializers.SerializerMethodField()
    wallets = WalletSerializer(many=True)
    subscription = serializers.SerializerMethodField()

    class Meta:
        model = Customer
        fields = [
            "id",
            "external_id",
            "name",
            "email",
            "currency",
            "billing_mode",
            "collection_method",
            "days_until_due",
            "address",
            "tax_id",
            "metadata",
            "stripe_customer_id",
            "created_at",
            "wallets",
            "subscription",
        ]

    @extend_schema_field(AddressSerializer)
    def get_address(self, customer: Customer) -> dict:
        return AddressSerializer(customer).data

    @extend_schema_field(SubscriptionSerializer(allow_null=True))
    def get_subscription(self, customer: Customer) -> dict | None:
        live = (
            customer.subscriptions.exclude(status=SubscriptionStatus.CANCELED)
            .select_related("plan")
            .first()
        )
        return SubscriptionSerializer(live).data if live else None


def _shared(serializer: serializers.Serializer, cls: type[serializers.Serializer]):
    """One ``cls`` for the whole page (kept in the page's context), its fields built once:
    DRF builds and deep-copies a serializer's fields for every instance made, which for a
    page of customers (address, balance and subscription serializers per row) cost more
    than the page's queries."""
    made = serializer.context.setdefault("shared_serializers", {})
    if cls not in made:
        made[cls] = cls(context=serializer.context)
    return made[cls]


class _PageWalletSerializer(WalletSerializer):
    """A wallet as ``WalletSerializer`` shows it, its balance read for the whole page at once
    (``context["balances"]``: account id → BalanceView)."""

    def get_balance(self, wallet: Wallet) -> dict:
        view = self.context["balances"][wallet.account_id]
        return _shared(self, BalanceSerializer).to_representation(
            {
                "currency": view.currency,
                "posted": view.posted,
                "held": view.held,
                "available": view.available,
            }
        )


class _PageCustomerSerializer(CustomerSerializer):
    """``CustomerSerializer``'s payload from ``billing.selectors.list_customers``'
    prefetches: the same fields, a handful of queries per page instead of several per
    customer."""

    wallets = _PageWalletSerializer(many=True)

    def get_address(self, customer: Customer) -> dict:
        return _shared(self, AddressSerializer).to_representation(customer)

    def get_subscription(self, customer: Customer) -> dict | None:
        live = customer.live_subscriptions  # type: ignore[attr-defined]  # a Prefetch to_attr
        return _shared(self, SubscriptionSerializer).to_representation(live[0]) if live else None


def customer_payloads(customers: list[Customer]) -> list[dict]:
    """``CustomerSerializer``'s payload of each customer, read from
    ``billing.selectors.list_customers`` (its prefetches), the wallets' balances in one
    query: a handful of queries whatever the number of customers."""
    balances = billing_selectors.wallet_balances(
        [wallet.account for customer in customers for wallet in customer.wallets.all()]
    )
    page = _PageCustomerSerializer(customers, many=True, context={"balances": balances})
    return list(page.data)  # (a ReturnList; typed as the dict a single instance gives)


COLLECTION_METHOD_HELP = (
    "charge_automatically (default): finalizing an invoice charges the customer's saved "
    "card through the payment provider. send_invoice: the invoice is sent with a due date "
    "(days_until_due after finalization) and waits for the customer to pay (a transfer "
    "recorded by finance, or the portal's pay button); nothing is charged automatically."
)


def days_until_due_field() -> StrictIntegerField:
    return StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=MAX_DAYS_UNTIL_DUE,
        help_text="send_invoice only: the invoice is due this many days after finalization "
        "(default 30). Refused with charge_automatically (null there).",
    )


class CustomerCreateSerializer(StrictSerializer):
    external_id = serializers.RegexField(
        r"^[A-Za-z0-9._:@\-]{1,200}$",
        help_text="Your own id for the customer: letters, digits and . _ : @ -",
    )
    name = serializers.CharField(max_length=200)
    email = serializers.EmailField(max_length=254, required=False, allow_blank=True, default="")
    currency = CurrencyField(
        required=False,
        default="USD",
        help_text="ISO 4217 code of the customer's wallet.",
    )
    billing_mode = serializers.ChoiceField(choices=BillingMode.choices, default="prepaid")
    credit_limit = Money(
        required=False,
        allow_null=True,
        min_value=Decimal(0),
        help_text="Postpaid only: the overdraft limit; omit for none.",
    )
    collection_method = serializers.ChoiceField(
        choices=CollectionMethod.choices,
        default=CollectionMethod.CHARGE_AUTOMATICALLY,
        help_text=COLLECTION_METHOD_HELP,
    )
    days_until_due = days_until_due_field()
    address = AddressSerializer(required=False)
    tax_id = serializers.CharField(max_length=50, required=False, allow_blank=True, default="")
    metadata = MetadataField()


class CreditGrantSerializer(serializers.Serializer):
    grant_id = serializers.IntegerField(
        allow_null=True, help_text="null: credits outside any grant (they never expire)."
    )
    name = serializers.CharField()
    # (a field named like Field.source: DRF's metaclass takes declared fields off the
    # class, so nothing is shadowed; the stubs see a class attribute)
    source = serializers.CharField(  # type: ignore[assignment]
        allow_null=True, help_text="purchase, promotional, adjustment"
    )
    priority = serializers.IntegerField(allow_null=True, help_text="Lower is drawn first.")
    currency = serializers.CharField()
    granted = Money(allow_null=True)
    remaining = Money()
    expires_at = serializers.DateTimeField(allow_null=True)


class AllowanceSerializer(serializers.Serializer):
    meter = serializers.CharField()
    included = Price()
    used = Price()
    remaining = Price()


class CustomerBalanceSerializer(serializers.Serializer):
    customer = serializers.CharField()
    balances = BalanceSerializer(many=True)
    credits = CreditGrantSerializer(many=True)
    allowances = AllowanceSerializer(many=True)


class TopUpSerializer(StrictSerializer):
    amount = Money(min_value=Decimal("0.000000000001"))
    currency = CurrencyField(
        units=frozenset({"CREDITS"}),
        required=False,
        help_text="Defaults to the customer's currency; CREDITS buys credits on a credits plan.",
    )
    reference = serializers.CharField(
        max_length=200,
        required=False,
        help_text="Your reference for the payment; the same reference tops up once.",
    )
    description = serializers.CharField(
        max_length=500, required=False, allow_blank=True, default=""
    )


class CreditGrantCreateSerializer(StrictSerializer):
    amount = Money(min_value=Decimal("0.000000000001"), help_text="Credits to grant.")
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    source = serializers.ChoiceField(  # type: ignore[assignment]  # as CreditGrantSerializer.source
        choices=["promotional", "adjustment"],
        default="promotional",
        help_text="Credits bought are top-ups in CREDITS, not grants made here.",
    )
    priority = serializers.IntegerField(
        min_value=0,
        max_value=1000,
        required=False,
        allow_null=True,
        default=None,
        help_text="Lower is drawn first; default 10 (promotional) or 20 (adjustment).",
    )
    expires_at = BoundedDateTime(
        max_years_ahead=limits.MAX_EXPIRY_YEARS,
        required=False,
        allow_null=True,
        default=None,
        help_text="Empty: never expires. In the future, at most 100 years ahead.",
    )
    reference = serializers.CharField(
        max_length=200,
        required=False,
        help_text="Your reference; the same reference grants once.",
    )


class CreditGrantDetailSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    customer = serializers.CharField(source="customer.external_id")
    name = serializers.CharField()
    source = serializers.CharField()  # type: ignore[assignment]  # as CreditGrantSerializer.source
    priority = serializers.IntegerField()
    currency = serializers.CharField()
    amount = Money()
    remaining = Money()
    used = Money()
    status = serializers.CharField(help_text="active, depleted, expired or voided")
    expires_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    ledger_transaction = serializers.IntegerField(source="ledger_transaction_id")


class EntrySerializer(serializers.Serializer):
    account = serializers.CharField(source="account.code")
    currency = serializers.CharField()
    direction = serializers.SerializerMethodField()
    amount = Money(help_text="Always positive; see direction.")

    @extend_schema_field(serializers.ChoiceField(choices=["debit", "credit"]))
    def get_direction(self, entry) -> str:
        return "debit" if entry.amount > 0 else "credit"

    def to_representation(self, entry):
        data = super().to_representation(entry)
        data["amount"] = self.fields["amount"].to_representation(abs(entry.amount))
        return data


class TransactionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    reference = serializers.CharField()
    description = serializers.CharField()
    metadata = serializers.DictField()
    effective_at = serializers.DateTimeField()
    recorded_at = serializers.DateTimeField()
    reverses = serializers.IntegerField(source="reverses_id", allow_null=True)
    entries = EntrySerializer(many=True)


# --- meters and plans -----------------------------------------------------------------------


class MeterSerializer(StrictInputMixin, serializers.ModelSerializer):
    code = serializers.SlugField(max_length=100)
    aggregation = serializers.ChoiceField(choices=Aggregation.choices)
    filters = serializers.DictField(
        child=serializers.ListField(child=ExactJSONValue()), required=False, default=dict
    )
    group_by = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, default=list, max_length=10
    )

    class Meta:
        model = Meter
        fields = [
            "id",
            "code",
            "name",
            "event_name",
            "aggregation",
            "property",
            "filters",
            "group_by",
            "unit",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]
        extra_kwargs: dict[str, dict[str, Any]] = {"code": {"validators": []}}


class TierSerializer(StrictInputMixin, serializers.ModelSerializer):
    up_to = Price(
        allow_null=True,
        required=False,
        default=None,
        help_text="Last unit of the tier; null for the open-ended last tier.",
    )
    unit_price = Price(
        required=False, default=Decimal(0), min_value=Decimal(0), limit=limits.MAX_PRICE
    )
    flat_fee = Price(
        required=False, default=Decimal(0), min_value=Decimal(0), limit=limits.MAX_PRICE
    )

    package_size = Price(
        required=False,
        allow_null=True,
        default=None,
        help_text="Units of this tier counted in blocks of this size, rounded up; unit_price "
        "is then per block. Null: per unit.",
    )

    class Meta:
        model = PriceTier
        fields = ["up_to", "unit_price", "flat_fee", "package_size"]


class ChargeSerializer(StrictInputMixin, serializers.ModelSerializer):
    # other systems' names for a charge's cadence: refused with the name it has here
    unknown_field_hints = services.CHARGE_FIELD_HINTS
    meter = serializers.SlugField(
        max_length=100, source="meter.code", help_text="The code of an existing meter."
    )
    price_model = serializers.ChoiceField(choices=PriceModel.choices, default="per_unit")
    included_quantity = Price(required=False, default=Decimal(0), min_value=Decimal(0))
    unit_price = Price(
        required=False, default=Decimal(0), min_value=Decimal(0), limit=limits.MAX_PRICE
    )
    package_size = Price(required=False, allow_null=True, default=None)
    margin_percent = StrictDecimal(
        max_digits=9,
        decimal_places=4,
        required=False,
        allow_null=True,
        default=None,
        coerce_to_string=True,
    )
    tiers = TierSerializer(many=True, required=False, default=list)
    minimum_amount = Price(
        required=False,
        allow_null=True,
        default=None,
        limit=limits.MAX_PRICE,
        help_text="The least this charge is invoiced per period (prorated for part of a "
        "period); the shortfall is its own line. Null: none.",
    )
    prorated = StrictBoolean(
        required=False,
        default=False,
        help_text="For a period billed in part: the tier chosen on the whole quantity, the "
        "amount prorated by the time billed (Lago's prorated charges).",
    )
    flat_fee_at_zero = StrictBoolean(
        required=False,
        default=False,
        help_text="Graduated and volume: the first tier's flat fee is invoiced even for a "
        "period without billable usage (Lago's convention).",
    )
    # Checked by validate_plan_spec (the pricing file's and the admin's message and code).
    interval = serializers.CharField(
        max_length=20,
        required=False,
        allow_blank=True,
        default="",
        help_text="Metered plans: this charge's own cadence (day, week, month, quarter, "
        "year), a whole multiple of the subscription's billing period — GPU hours billed "
        "quarterly on a monthly plan; its usage is invoiced when its own period ends. Empty: "
        "every billing period. Refused with charges_interval_misaligned when it is not a "
        "whole number of billing periods.",
    )
    interval_count = serializers.IntegerField(
        required=False,
        default=1,
        help_text="With interval: the charge's period lasts this many of them.",
    )

    class Meta:
        model = PlanCharge
        fields = [
            "meter",
            "price_model",
            "included_quantity",
            "unit_price",
            "package_size",
            "margin_percent",
            "tiers",
            "flat_fee_at_zero",
            "minimum_amount",
            "prorated",
            "interval",
            "interval_count",
        ]


class CreditGrantRuleSchema(serializers.Serializer):
    """The shape of a plan's ``credit_grant`` for the OpenAPI schema; the values are read by
    ``billing.pricing.grants`` (``CreditGrantRuleField``)."""

    amount = Money(help_text="Per grant: credits (credits plan) or money (balance plan).")
    cadence = serializers.ChoiceField(choices=GrantCadence.choices, default="period")
    expiry = serializers.ChoiceField(choices=GrantExpiry.choices, default="period_end")
    expiry_days = serializers.IntegerField(
        min_value=1, max_value=3650, required=False, help_text="With expiry: days only."
    )
    rollover = serializers.ChoiceField(choices=Rollover.choices, default="none")
    rollover_cap = Money(required=False, help_text="With rollover: capped only.")
    rollover_periods = serializers.IntegerField(
        min_value=1,
        max_value=120,
        required=False,
        help_text="How many later periods a grant may roll into; left out: no limit.",
    )
    priority = serializers.IntegerField(min_value=0, max_value=1000, default=30)
    name = serializers.CharField(max_length=200, required=False)


@extend_schema_field(CreditGrantRuleSchema)
class CreditGrantRuleField(serializers.Field):
    """A plan's recurring credit grant, read by ``billing.pricing.grants`` (the reader the
    pricing file and the admin use too); written back as that reader's JSON."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        kwargs.setdefault("default", None)
        kwargs.setdefault(
            "help_text",
            "The plan's recurring credit grant (credits and balance plans): amount, cadence "
            "(period, month, once), expiry (period_end, days + expiry_days, never), rollover "
            "(none, all, capped + rollover_cap), rollover_periods, priority, name. See "
            "docs/pricing-file.md.",
        )
        super().__init__(**kwargs)

    def get_attribute(self, instance):
        return getattr(instance, "credit_grant", None) if isinstance(instance, Plan) else None

    def to_internal_value(self, data):
        from billing.pricing.grants import PricingFileInvalid, credit_grant_from_json

        try:
            return credit_grant_from_json(data)
        except PricingFileInvalid as exc:
            field = (exc.location or "").removeprefix("credit_grant").lstrip(".")
            detail = {field: [exc.reason]} if field else exc.reason
            raise serializers.ValidationError(detail) from None

    def to_representation(self, value):
        from billing.pricing.grants import credit_grant_as_json

        if isinstance(value, services.CreditGrantSpec):
            return credit_grant_as_json(value)
        return credit_grant_as_json(services.credit_grant_spec_of(value))


class PlanSerializer(StrictInputMixin, serializers.ModelSerializer):
    code = serializers.SlugField(max_length=100)
    currency = CurrencyField(default="USD", help_text="ISO 4217 code.")
    interval = serializers.ChoiceField(choices=Interval.choices, default="month")
    base_fee = Price(
        required=False, default=Decimal(0), min_value=Decimal(0), limit=limits.MAX_PRICE
    )
    trial_days = serializers.IntegerField(required=False, default=0, min_value=0, max_value=3650)
    consumption_model = serializers.ChoiceField(choices=ConsumptionModel.choices, default="metered")
    units_per_credit = Price(required=False, allow_null=True, default=None)
    metadata = MetadataField()
    charges = ChargeSerializer(many=True, required=False, default=list)
    credit_grant = CreditGrantRuleField()
    # Checked by validate_plan_spec (the pricing file's and the admin's message), not here.
    rounding = serializers.CharField(
        max_length=20,
        required=False,
        allow_blank=True,
        default="",
        help_text="How its invoices round to the minor unit: half_even or half_up; left out "
        "(or empty): the currency's rule, else half_even.",
    )
    minimum_amount = Price(
        required=False,
        allow_null=True,
        default=None,
        limit=limits.MAX_PRICE,
        help_text="The least a subscription is invoiced per period before tax (prorated for "
        "part of a period); the shortfall is its own line. Null: none.",
    )
    commitment_amount = Price(
        required=False,
        allow_null=True,
        default=None,
        limit=limits.MAX_PRICE,
        help_text="Metered plans: a prepaid commitment per period (prorated for part of a "
        "period), invoiced whatever the usage and drawn down by the period's usage charges; "
        "usage beyond it is overage, what is left expires. Null: none.",
    )
    # Checked by validate_plan_spec (the pricing file's and the admin's message).
    commitment_billing = serializers.CharField(
        max_length=20,
        required=False,
        default="in_arrears",
        help_text="When the commitment is invoiced: in_arrears (the default), at the "
        "period's close with its usage; in_advance, on an invoice of its own when the period "
        "opens (paid up front), the close invoicing only the overage.",
    )
    # Ranges checked by validate_plan_spec (the pricing file's and the admin's message).
    interval_count = serializers.IntegerField(
        required=False,
        default=1,
        help_text="A period lasts this many intervals (2 with week: every two weeks); 1 to "
        "the count of five years.",
    )
    billing_time = serializers.CharField(
        max_length=20,
        required=False,
        default="anniversary",
        help_text="What new subscriptions count periods from: anniversary (their start, the "
        "default) or calendar (a first period prorated by day up to the anchor day).",
    )
    billing_anchor_day = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Calendar billing: the day of the month 1–31 (month, quarter, year; "
        "clamped to short months) or the ISO weekday 1 (Monday) to 7 (week). Null: the 1st, "
        "or Monday.",
    )
    # Checked by validate_plan_spec (the pricing file's and the admin's message and code).
    charges_interval = serializers.CharField(
        max_length=20,
        required=False,
        allow_blank=True,
        default="",
        help_text="Metered plans: the usage charges billed on a finer cadence (day, week, "
        "month, quarter, year) that divides the plan's period evenly — a yearly plan's usage "
        "every month; the base fee stays per plan period. Empty: the plan's own interval. "
        "Refused with charges_interval_misaligned when it does not divide the period.",
    )
    charges_interval_count = serializers.IntegerField(
        required=False,
        default=1,
        help_text="With charges_interval: the charges' period lasts this many of them.",
    )

    class Meta:
        model = Plan
        fields = [
            "id",
            "code",
            "version",
            "name",
            "description",
            "currency",
            "interval",
            "base_fee",
            "trial_days",
            "consumption_model",
            "units_per_credit",
            "metadata",
            "charges",
            "credit_grant",
            "rounding",
            "minimum_amount",
            "commitment_amount",
            "commitment_billing",
            "interval_count",
            "billing_time",
            "billing_anchor_day",
            "charges_interval",
            "charges_interval_count",
            "published_at",
        ]
        read_only_fields = ["id", "version", "published_at"]
        extra_kwargs = {"description": {"required": False, "default": ""}}


# --- subscriptions ------------------------------------------------------------------------


class SubscriptionCreateSerializer(StrictSerializer):
    customer = serializers.CharField(max_length=200, help_text="The customer's external_id.")
    plan = serializers.SlugField(max_length=100, help_text="The plan's code.")
    plan_version = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=2**31 - 1,
        help_text="Defaults to the latest version.",
    )
    start = BoundedDateTime(
        required=False,
        help_text="Default now; not before 2000-01-01, not in the future; whole seconds (a "
        "fraction is dropped). A start in the past back-dates the subscription: its periods "
        "since the start are invoiced by the period close, usage in them included.",
    )
    trial_days = serializers.IntegerField(
        required=False, min_value=0, max_value=3650, help_text="Overrides the plan's trial."
    )
    # Ranges checked by the plan validator's rules (validate_billing_cadence).
    billing_time = serializers.CharField(
        max_length=20,
        required=False,
        help_text="Overrides the plan's: anniversary (periods from the start) or calendar "
        "(a first period prorated by day up to the first anchor day).",
    )
    billing_anchor_day = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="With billing_time calendar: the day of the month 1–31 or the ISO weekday "
        "1–7 for weekly plans (default the plan's, else the 1st or Monday).",
    )


class SubscriptionChangeSerializer(StrictSerializer):
    plan = serializers.SlugField(max_length=100)
    plan_version = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1)
    at = serializers.ChoiceField(choices=["now", "period_end"], default="now")


class SubscriptionCancelSerializer(StrictSerializer):
    at = serializers.ChoiceField(choices=["now", "period_end"], default="period_end")


class ProrationLineSerializer(serializers.Serializer):
    plan = serializers.CharField(source="plan.code")
    plan_version = serializers.IntegerField(source="plan.version")
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField()
    amount = Money(help_text="The base fee for this part of the current period, unrounded.")


class SubscriptionChangeResultSerializer(serializers.Serializer):
    subscription = SubscriptionSerializer()
    proration = ProrationLineSerializer(many=True)
