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

from billing.models.alerts import (
    Alert,
    AlertFiring,
    AlertKind,
    AlertScope,
    AlertSource,
    AlertState,
    AlertStatus,
    FiringAction,
)
from billing.models.api_keys import APIKey, IdempotencyRecord
from billing.models.approvals import AdjustmentRequest, ApprovalKind, ApprovalStatus

# The audit trail: pghistory event models of the staff-facing models above (last: it
# tracks them) and the list of their events.
from billing.models.audit import AuditEvent  # noqa: E402, I001
from billing.models.auto_top_up import (
    IN_FLIGHT_STATUSES,
    AttemptStatus,
    AutoTopUp,
    AutoTopUpAttempt,
)
from billing.models.common import PRICE_DIGITS, PRICE_PLACES, price_field
from billing.models.credits import (
    AllocationKind,
    CreditAllocation,
    CreditGrant,
    GrantSource,
    GrantStatus,
)
from billing.models.currencies import CurrencySetting
from billing.models.customers import (
    DEFAULT_DAYS_UNTIL_DUE,
    MAX_DAYS_UNTIL_DUE,
    BillingMode,
    CollectionMethod,
    Customer,
    PortalMember,
    Wallet,
)
from billing.models.outbox import EventType, OutboundEvent
from billing.models.plan_credits import (
    GrantCadence,
    GrantExpiry,
    PlanCreditGrant,
    Rollover,
    SubscriptionCreditGrant,
)
from billing.models.plans import (
    Aggregation,
    BillingTime,
    CommitmentBilling,
    ConsumptionModel,
    Interval,
    Meter,
    Plan,
    PlanCharge,
    PriceModel,
    PriceTier,
    RoundingRule,
)
from billing.models.projects import Project, ProjectHold, ProjectSpend, ProjectStatus
from billing.models.subscriptions import (
    MarginOverride,
    Subscription,
    SubscriptionPhase,
    SubscriptionStatus,
)
from billing.models.webhooks import (
    ALL_EVENTS,
    DUE_STATUSES,
    DeliveryStatus,
    EndpointStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = [
    "AdjustmentRequest",
    "AuditEvent",
    "ApprovalKind",
    "ApprovalStatus",
    "PRICE_DIGITS",
    "PRICE_PLACES",
    "price_field",
    "BillingMode",
    "CollectionMethod",
    "DEFAULT_DAYS_UNTIL_DUE",
    "MAX_DAYS_UNTIL_DUE",
    "CurrencySetting",
    "Customer",
    "PortalMember",
    "Wallet",
    "Interval",
    "BillingTime",
    "CommitmentBilling",
    "ConsumptionModel",
    "RoundingRule",
    "Plan",
    "Aggregation",
    "Meter",
    "PriceModel",
    "PlanCharge",
    "PriceTier",
    "SubscriptionStatus",
    "Subscription",
    "SubscriptionPhase",
    "MarginOverride",
    "APIKey",
    "IdempotencyRecord",
    "GrantSource",
    "GrantStatus",
    "CreditGrant",
    "AllocationKind",
    "CreditAllocation",
    "EventType",
    "OutboundEvent",
    "ALL_EVENTS",
    "DUE_STATUSES",
    "EndpointStatus",
    "DeliveryStatus",
    "WebhookEndpoint",
    "WebhookDelivery",
    "WebhookAttempt",
    "AlertKind",
    "AlertScope",
    "AlertSource",
    "AlertStatus",
    "FiringAction",
    "Alert",
    "AlertState",
    "AlertFiring",
    "AutoTopUp",
    "AutoTopUpAttempt",
    "AttemptStatus",
    "IN_FLIGHT_STATUSES",
    "GrantCadence",
    "GrantExpiry",
    "Rollover",
    "PlanCreditGrant",
    "SubscriptionCreditGrant",
    "Project",
    "ProjectSpend",
    "ProjectHold",
    "ProjectStatus",
]
