"""Expected failures of metering and rating, each with a stable code the API exposes.

They are ``billing.errors.BillingError`` subclasses, so the API renders them in its one
error format with their own status."""

from __future__ import annotations

from billing.errors import BillingError


class MeteringError(BillingError):
    code = "invalid_event"
    http_status = 400


class InvalidEvent(MeteringError):
    code = "invalid_event"


class UsageNotUnderstood(MeteringError):
    """A provider usage object that cannot be read as token counts."""

    code = "invalid_usage"


class UnknownProvider(MeteringError):
    code = "unknown_provider"


class UnknownModel(MeteringError):
    """No catalog price for the model: refused, never rated at zero."""

    code = "unknown_model"
    http_status = 422


class UnknownEventName(MeteringError):
    code = "unknown_event_name"
    http_status = 422


class TimestampInFuture(MeteringError):
    code = "timestamp_in_future"


class TimestampTooOld(MeteringError):
    code = "timestamp_before_subscription"
    http_status = 422


class PeriodClosed(MeteringError):
    """Usage timestamped inside a period whose invoice is final: it can no longer be billed
    there (late usage is accepted only while the period's draft is open)."""

    code = "period_closed"
    http_status = 422


class SubscriptionPastDue(MeteringError):
    code = "subscription_past_due"
    http_status = 402
    error_type = "balance_error"


class NoSubscription(MeteringError):
    code = "no_active_subscription"
    http_status = 422


class InsufficientFunds(MeteringError):
    code = "insufficient_funds"
    http_status = 402
    error_type = "balance_error"


class InsufficientCredits(MeteringError):
    code = "insufficient_credits"
    http_status = 402
    error_type = "balance_error"


class CreditLimitExceeded(MeteringError):
    code = "credit_limit_exceeded"
    http_status = 402
    error_type = "balance_error"


class EventAlreadyRecorded(MeteringError):
    """A hold settled with an event that was already recorded: it would settle nothing."""

    code = "event_already_recorded"
    http_status = 409
    error_type = "conflict_error"


class HoldPartlySettled(MeteringError):
    code = "hold_partly_settled"
    http_status = 409
    error_type = "conflict_error"


class TimestampAfterSubscription(MeteringError):
    """Usage timestamped at or after the end of a subscription that ends at its period end
    (canceled at period end): no period of the subscription would ever invoice it."""

    code = "timestamp_after_subscription"
    http_status = 422


class RatingFailed(MeteringError):
    """An event accepted asynchronously that rating could not handle for a reason other
    than a refusal (a defect, data a column cannot hold): recorded on the incoming event so
    that it does not hold up the others; the log has the exception."""

    code = "rating_failed"
    http_status = 500


class NothingToHold(MeteringError):
    """A hold asked for usage that costs nothing now (inside the allowance, or free)."""

    code = "nothing_to_hold"


class HoldReferenceReused(MeteringError):
    """A hold's reference that already placed another hold (another wallet or amount)."""

    code = "reference_reused"
    http_status = 409
    error_type = "conflict_error"


class NoUsagePeriod(MeteringError):
    """Usage asked without a start for a customer that never subscribed: there is no
    current period to default to."""

    code = "parameter_missing"
