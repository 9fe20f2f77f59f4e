"""Expected failures of invoicing, each with a stable code the API and the admin show.

They are ``billing.errors.BillingError`` subclasses, so the API renders them in its one
error format with their own status."""

from __future__ import annotations

from billing.errors import BillingError


class InvoicingError(BillingError):
    code = "invoicing_error"
    http_status = 400


class InvoicingValidation(InvoicingError):
    code = "invalid_parameter"


class InvoicingNotFound(InvoicingError):
    code = "invoice_not_found"
    http_status = 404
    error_type = "not_found_error"


class InvoiceNotDraft(InvoicingError):
    code = "invoice_not_draft"
    http_status = 409
    error_type = "conflict_error"


class InvoiceNotFinal(InvoicingError):
    code = "invoice_not_final"
    http_status = 409
    error_type = "conflict_error"


class InvoiceHasPayments(InvoicingError):
    code = "invoice_has_payments"
    http_status = 409
    error_type = "conflict_error"


class PrepaidCommitmentInvoice(InvoicingError):
    """A commitment invoiced in advance is settled by its period's invoice: that one is
    credited (it carries the breakage), and this one is voided only before the close."""

    code = "prepaid_commitment_invoice"
    http_status = 409
    error_type = "conflict_error"


class ReferenceReused(InvoicingError):
    code = "reference_reused"
    http_status = 409
    error_type = "conflict_error"


class NoLiveSubscription(InvoicingError):
    code = "no_active_subscription"
    http_status = 422


class NothingOwed(InvoicingError):
    code = "nothing_owed"
    http_status = 409
    error_type = "conflict_error"


class PaymentsUnavailable(InvoicingError):
    """No payment provider: no ``STRIPE_SECRET_KEY`` and offline payments not turned on
    (``PAYMENTS_OFFLINE``). Nothing is written."""

    code = "payments_unavailable"
    http_status = 409
    error_type = "conflict_error"


class CurrencyMismatch(InvoicingError):
    code = "currency_mismatch"
    http_status = 409
    error_type = "conflict_error"


class NotRefundable(InvoicingError):
    """The grant cannot be refunded: not purchased credits, nothing left, expired, or credits
    held."""

    code = "not_refundable"
    http_status = 409
    error_type = "conflict_error"


class RefundFailed(InvoicingError):
    """Stripe refused or could not be reached; the refund stays ``failed`` and a retry
    sends it again (with the same idempotency key: it is refunded once)."""

    code = "refund_failed"
    http_status = 502
    error_type = "api_error"


class CreditGrantNotFound(InvoicingNotFound):
    code = "credit_grant_not_found"
