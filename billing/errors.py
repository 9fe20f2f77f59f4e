"""Expected failures of the commercial core, each with a stable code the API exposes."""

from __future__ import annotations


class BillingError(Exception):
    code = "billing_error"
    http_status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class ValidationFailed(BillingError):
    code = "invalid_parameter"


class ChargesIntervalMisaligned(ValidationFailed):
    """A plan's charges' cadence that does not divide its period evenly (its charge periods
    would straddle a plan period's end)."""

    code = "charges_interval_misaligned"


class CustomerExists(BillingError):
    code = "customer_exists"
    http_status = 409


class CustomerNotFound(BillingError):
    code = "customer_not_found"
    http_status = 404


class WalletNotFound(BillingError):
    code = "wallet_not_found"
    http_status = 404


class PlanNotFound(BillingError):
    code = "plan_not_found"
    http_status = 404


class MeterNotFound(BillingError):
    code = "meter_not_found"
    http_status = 404


class MeterConflict(BillingError):
    code = "meter_conflict"
    http_status = 409


class MeterExists(BillingError):
    code = "meter_exists"
    http_status = 409


class SubscriptionNotFound(BillingError):
    code = "subscription_not_found"
    http_status = 404


class SubscriptionExists(BillingError):
    code = "subscription_exists"
    http_status = 409


class SubscriptionCanceled(BillingError):
    code = "subscription_canceled"
    http_status = 409


class CurrencyMismatch(BillingError):
    code = "currency_mismatch"


class CreditLimitBelowBalance(BillingError):
    code = "credit_limit_below_balance"
    http_status = 409


class PeriodClosePending(BillingError):
    """A change "at period end" asked while the subscription's current period has already
    ended and the period close has not caught up yet (a back-dated subscription, or the
    close behind): the period end would lie in the past."""

    code = "period_close_pending"
    http_status = 409


# --- projects: budgets inside a customer (billing.projects) ---------------------------------


class ProjectNotFound(BillingError):
    code = "project_not_found"
    http_status = 404


class ProjectExists(BillingError):
    code = "project_exists"
    http_status = 409


class ProjectArchived(BillingError):
    """New usage named an archived project."""

    code = "project_archived"
    http_status = 409


class BudgetExceeded(BillingError):
    """The project's spend this period would pass its limit."""

    code = "budget_exceeded"
    http_status = 402


class ApprovalBySameUser(BillingError):
    """Four eyes: the staff user who asked for an adjustment cannot decide it."""

    code = "approval_by_requester"
    http_status = 403


class AdjustmentAlreadyDecided(BillingError):
    code = "adjustment_already_decided"
    http_status = 409


class WithdrawalByOther(BillingError):
    """Only the staff user who asked for an adjustment may withdraw it (others reject it)."""

    code = "withdrawal_by_other"
    http_status = 403
