"""Writes of the commercial core. Money moves only through ``ledger.services``.

    customers      create_customer, update_customer, edit_customer (fields, collection method
                   and credit limit), collection_terms
    wallets        create_wallet, wallet_for, ensure_wallet, set_credit_limit, top_up,
                   adjust_balance; customer_account, usage_account (the TOKENS account)
    plans          create_meter, ensure_meter, rename_meter; PlanSpec, ChargeSpec, TierSpec,
                   validate_plan_spec, publish_plan, plan_spec_of, latest_plan,
                   set_plan_self_serve
    subscriptions  create_subscription, change_subscription, cancel_subscription,
                   base_fee_proration, emit_subscription_event (its outbound event)
    locks          lock_customer_usage, lock_subscription_customer: the customer usage lock
    approvals      request_adjustment (posts, or asks for approval when large),
                   request_top_up, request_credit_grant (the admin's, the same way),
                   approve_adjustment, reject_adjustment, withdraw_adjustment, needs_approval,
                   AdjustmentOutcome
    api_keys       create_api_key, revoke_api_key, hash_secret
    idempotency    purge_idempotency_records
    auto_top_up    set_auto_top_up, get_auto_top_up, due_auto_top_ups, charge_currency

The rest of the project calls the core's writes through this package (``from billing import
services``: the API, the portal, the admin, the commands, metering, invoicing, the tests):
the names below are its interface; which module holds each is the core's own business.
"""

from billing.services.api_keys import SECRET_PREFIX, create_api_key, hash_secret, revoke_api_key
from billing.services.approvals import (
    AdjustmentOutcome,
    approval_threshold,
    approve_adjustment,
    needs_approval,
    reject_adjustment,
    request_adjustment,
    request_credit_grant,
    request_top_up,
    withdraw_adjustment,
)
from billing.services.auto_top_up import (
    MAX_AUTO_TOP_UP_FAILURES,
    MAX_COOL_OFF_SECONDS,
    AutoTopUpNotFound,
    WalletNotPrepaid,
    available_balance_subquery,
    charge_currency,
    due_auto_top_ups,
    get_auto_top_up,
    set_auto_top_up,
)
from billing.services.cadence import validate_billing_cadence
from billing.services.customers import (
    CUSTOMER_EDITABLE,
    KEEP,
    collection_terms,
    create_customer,
    edit_customer,
    update_customer,
)
from billing.services.idempotency import IDEMPOTENCY_RETENTION, purge_idempotency_records
from billing.services.locks import (
    PLAN_VERSION_LOCK,
    lock_customer_usage,
    lock_subscription_customer,
)
from billing.services.plans import (
    CATALOG_METER_PROPERTIES,
    CHARGE_FIELD_HINTS,
    LLM_PATHS,
    MAX_EXPIRY_DAYS,
    MAX_GRANT_PRIORITY,
    MAX_ROLLOVER_PERIODS,
    METER_FIELDS,
    PLAN_GRANT_PRIORITY,
    ChargeSpec,
    CreditGrantSpec,
    PlanSpec,
    TierSpec,
    create_meter,
    credit_grant_spec_of,
    ensure_meter,
    latest_plan,
    plan_spec_of,
    plan_version_of,
    publish_plan,
    rename_meter,
    set_plan_self_serve,
    validate_plan_spec,
)
from billing.services.subscriptions import (
    FUTURE_START_TOLERANCE,
    ProrationLine,
    base_fee_proration,
    cancel_subscription,
    change_subscription,
    create_subscription,
    emit_subscription_event,
)
from billing.services.wallets import (
    ADJUSTMENTS,
    CREDITS,
    TOKENS,
    TOKENS_SERVED,
    WORLD,
    adjust_balance,
    create_wallet,
    customer_account,
    ensure_wallet,
    set_credit_limit,
    top_up,
    usage_account,
    wallet_for,
)

__all__ = [
    "AdjustmentOutcome",
    "approval_threshold",
    "approve_adjustment",
    "needs_approval",
    "reject_adjustment",
    "withdraw_adjustment",
    "request_adjustment",
    "request_credit_grant",
    "request_top_up",
    "MAX_AUTO_TOP_UP_FAILURES",
    "MAX_COOL_OFF_SECONDS",
    "AutoTopUpNotFound",
    "WalletNotPrepaid",
    "available_balance_subquery",
    "charge_currency",
    "due_auto_top_ups",
    "get_auto_top_up",
    "set_auto_top_up",
    "ADJUSTMENTS",
    "CATALOG_METER_PROPERTIES",
    "CREDITS",
    "CUSTOMER_EDITABLE",
    "FUTURE_START_TOLERANCE",
    "IDEMPOTENCY_RETENTION",
    "KEEP",
    "LLM_PATHS",
    "METER_FIELDS",
    "PLAN_VERSION_LOCK",
    "SECRET_PREFIX",
    "TOKENS",
    "TOKENS_SERVED",
    "WORLD",
    "ChargeSpec",
    "CHARGE_FIELD_HINTS",
    "CreditGrantSpec",
    "MAX_EXPIRY_DAYS",
    "MAX_GRANT_PRIORITY",
    "MAX_ROLLOVER_PERIODS",
    "PLAN_GRANT_PRIORITY",
    "credit_grant_spec_of",
    "PlanSpec",
    "ProrationLine",
    "TierSpec",
    "adjust_balance",
    "base_fee_proration",
    "cancel_subscription",
    "emit_subscription_event",
    "change_subscription",
    "create_api_key",
    "collection_terms",
    "create_customer",
    "create_meter",
    "create_subscription",
    "create_wallet",
    "customer_account",
    "edit_customer",
    "ensure_meter",
    "ensure_wallet",
    "hash_secret",
    "latest_plan",
    "set_plan_self_serve",
    "lock_customer_usage",
    "lock_subscription_customer",
    "plan_spec_of",
    "plan_version_of",
    "publish_plan",
    "purge_idempotency_records",
    "rename_meter",
    "revoke_api_key",
    "set_credit_limit",
    "top_up",
    "update_customer",
    "usage_account",
    "validate_plan_spec",
    "validate_billing_cadence",
    "wallet_for",
]
