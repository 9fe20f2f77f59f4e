"""The schema's ``webhooks`` section (OpenAPI 3.1): one entry per event type, the request the
product POSTs to an endpoint, with the payload's schema. Read by drf-spectacular through
``SPECTACULAR_SETTINGS["WEBHOOKS"]``.

The ``data`` of each type is built in one place per resource (``billing.webhooks.payloads``,
``invoicing.events``); the serializers below describe those dicts, and
tests/billing/test_webhooks_api.py checks real payloads against them. Types another feature
emits (alerts, auto top-up, low balance, expiring credits, refused usage) are documented
here as free-form objects until that feature describes its payload (``DATA`` below)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, OpenApiWebhook, extend_schema
from rest_framework import serializers

from billing.api.fields import Money
from billing.models import BillingTime, EventType, GrantSource, GrantStatus, SubscriptionStatus

SIGNING = (
    "Signed the Standard Webhooks way: headers `webhook-id` (the event's id, the same on "
    "every attempt: deduplicate on it), `webhook-timestamp` (Unix seconds) and "
    "`webhook-signature` (`v1,<base64 HMAC-SHA256>` of `id.timestamp.body` with the "
    "endpoint's secret). Verify with the `standardwebhooks` library: "
    "`Webhook(secret).verify(body, headers)`. Answer any 2xx within 10 seconds; anything "
    "else is retried with backoff for about three days (docs/webhooks.md)."
)


class InvoiceData(serializers.Serializer):
    object = serializers.ChoiceField(choices=["invoice"])
    id = serializers.IntegerField()
    number = serializers.CharField(allow_null=True, help_text="None while a draft.")
    customer = serializers.CharField(help_text="The customer's external_id.")
    subscription = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["draft", "open", "past_due", "paid", "void"])
    currency = serializers.CharField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    subtotal = Money()
    tax_name = serializers.CharField(allow_blank=True)
    tax_percentage = serializers.DecimalField(max_digits=9, decimal_places=4)
    tax = Money()
    total = Money()
    balance_applied = Money()
    amount_due = Money()
    amount_paid = Money()
    amount_credited = Money()
    amount_remaining = Money()
    finalized_at = serializers.DateTimeField(allow_null=True)
    due_at = serializers.DateTimeField(allow_null=True)
    paid_at = serializers.DateTimeField(allow_null=True)
    voided_at = serializers.DateTimeField(allow_null=True)
    payment_attempts = serializers.IntegerField()
    next_payment_attempt_at = serializers.DateTimeField(allow_null=True)


class CreditNoteData(serializers.Serializer):
    object = serializers.ChoiceField(choices=["credit_note"])
    id = serializers.IntegerField()
    number = serializers.CharField()
    invoice = serializers.IntegerField()
    invoice_number = serializers.CharField(allow_null=True)
    customer = serializers.CharField()
    currency = serializers.CharField()
    reason = serializers.CharField()
    amount = Money(help_text="Net of tax.")
    tax = Money()
    total = Money()
    against_receivable = Money()
    to_balance = Money(help_text="Credited to the customer's wallet.")
    created_at = serializers.DateTimeField()


class SubscriptionData(serializers.Serializer):
    object = serializers.ChoiceField(choices=["subscription"])
    id = serializers.IntegerField()
    customer = serializers.CharField()
    plan = serializers.CharField()
    plan_version = serializers.IntegerField()
    status = serializers.ChoiceField(
        choices=SubscriptionStatus.values, help_text="past_due: suspended until paid."
    )
    started_at = serializers.DateTimeField()
    billing_anchor = serializers.DateTimeField()
    billing_time = serializers.ChoiceField(choices=BillingTime.values)
    billing_anchor_day = serializers.IntegerField(
        allow_null=True,
        help_text="billing_time calendar: the day of the month, or the ISO weekday (weekly).",
    )
    current_period_start = serializers.DateTimeField()
    current_period_end = serializers.DateTimeField()
    trial_ends_at = serializers.DateTimeField(allow_null=True)
    cancel_at_period_end = serializers.BooleanField()
    canceled_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    scheduled_plan = serializers.CharField(allow_null=True, help_text="code@version")
    metadata = serializers.DictField()


class CreditGrantData(serializers.Serializer):
    object = serializers.ChoiceField(choices=["credit_grant"])
    id = serializers.IntegerField()
    customer = serializers.CharField()
    name = serializers.CharField()
    source = serializers.ChoiceField(choices=GrantSource.values)  # type: ignore[assignment]
    priority = serializers.IntegerField()
    currency = serializers.CharField()
    amount = Money()
    remaining = Money()
    status = serializers.ChoiceField(choices=GrantStatus.values)
    expires_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)


class CreditsExpiredData(CreditGrantData):
    expired_amount = Money(help_text="What left the wallet at this expiry.")


class ReconciliationDifferenceData(serializers.Serializer):
    check = serializers.ChoiceField(
        choices=["balances", "usage_ledger", "invoice_usage", "invoice_ledger", "stripe_clearing"]
    )
    currency = serializers.CharField()
    item = serializers.CharField(help_text='What differs, e.g. "invoice 42 INV-000042".')
    cause = serializers.CharField()
    expected = serializers.DecimalField(max_digits=60, decimal_places=24, coerce_to_string=True)
    actual = serializers.DecimalField(max_digits=60, decimal_places=24, coerce_to_string=True)
    difference = serializers.DecimalField(
        max_digits=60, decimal_places=24, coerce_to_string=True, help_text="actual − expected"
    )


class ReconciliationFailedData(serializers.Serializer):
    object = serializers.ChoiceField(choices=["reconciliation_run"])
    id = serializers.IntegerField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField(help_text="Exclusive.")
    scope = serializers.CharField(allow_null=True, help_text="A currency; null: every one.")
    difference_count = serializers.IntegerField()
    failed_checks = serializers.ListField(child=serializers.CharField())
    differences = ReconciliationDifferenceData(
        many=True, help_text="The first five of each failed check (the admin lists them all)."
    )


INVOICE_TYPES = (
    EventType.INVOICE_CREATED,
    EventType.INVOICE_FINALIZED,
    EventType.INVOICE_PAID,
    EventType.INVOICE_PAYMENT_FAILED,
    EventType.INVOICE_VOIDED,
)
SUBSCRIPTION_TYPES = (
    EventType.SUBSCRIPTION_CREATED,
    EventType.SUBSCRIPTION_UPDATED,
    EventType.SUBSCRIPTION_CANCELED,
    EventType.SUBSCRIPTION_SUSPENDED,
    EventType.SUBSCRIPTION_REACTIVATED,
)

class BudgetExceededData(serializers.Serializer):
    """``billing.projects.note_budget_exceeded``'s data (docs/budgets.md)."""

    object = serializers.ChoiceField(choices=["project"])
    customer = serializers.CharField(help_text="The customer's external_id.")
    project = serializers.CharField(help_text="The project's key.")
    name = serializers.CharField()
    spend_limit = Money(allow_null=True)
    currency = serializers.CharField()
    spent = Money(help_text="Charged to the project this period when usage was refused.")
    refused_amount = Money(help_text="What the refused usage would have cost.")
    period_start = serializers.DateTimeField()


# The data serializer of each event type; a type absent here is a free-form object.
DATA: dict[str, type[serializers.Serializer]] = {
    **{kind.value: InvoiceData for kind in INVOICE_TYPES},
    **{kind.value: SubscriptionData for kind in SUBSCRIPTION_TYPES},
    EventType.CREDIT_NOTE_CREATED.value: CreditNoteData,
    EventType.CREDITS_GRANTED.value: CreditGrantData,
    EventType.CREDITS_EXPIRED.value: CreditsExpiredData,
    EventType.RECONCILIATION_FAILED.value: ReconciliationFailedData,
    EventType.BUDGET_EXCEEDED.value: BudgetExceededData,
}

WHEN = {
    EventType.INVOICE_CREATED: "A period closed: a draft invoice exists (late usage may "
    "still amend it until its grace period ends).",
    EventType.INVOICE_FINALIZED: "The invoice is numbered and final; payment is collected.",
    EventType.INVOICE_PAID: "Nothing is owed on the invoice any more.",
    EventType.INVOICE_PAYMENT_FAILED: "An attempt to collect failed; `payment_attempts` "
    "counts them and `next_payment_attempt_at` is the next retry (null after the last).",
    EventType.INVOICE_VOIDED: "The invoice was voided.",
    EventType.CREDIT_NOTE_CREATED: "A credit note was issued against an invoice.",
    EventType.CREDITS_GRANTED: "Credits were granted or bought.",
    EventType.CREDITS_EXPIRED: "What was left of a credit grant expired.",
    EventType.SUBSCRIPTION_CREATED: "A customer subscribed.",
    EventType.SUBSCRIPTION_UPDATED: "A plan change (now, scheduled or applied at the period "
    "end), or a cancellation asked for at the period end.",
    EventType.SUBSCRIPTION_CANCELED: "The subscription ended.",
    EventType.SUBSCRIPTION_SUSPENDED: "Dunning gave up: usage is refused until it is paid.",
    EventType.SUBSCRIPTION_REACTIVATED: "What a suspended subscription owed was paid.",
    EventType.RECONCILIATION_FAILED: "The daily (or a manual) reconciliation found "
    "differences between the ledger, the rated events, the invoices and the payments "
    "(docs/reconciliation.md). Raised once per run and set of differences.",
    EventType.BUDGET_EXCEEDED: "A project's usage was refused for its budget, the first time "
    "this period (a new limit re-arms it).",
}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace(".", "_").split("_"))


def _envelope(kind: EventType) -> type[serializers.Serializer]:
    data = DATA.get(kind.value)
    data_field = (
        data()
        if data is not None
        else serializers.DictField(help_text="Documented with the feature that emits it.")
    )
    return type(
        f"{_camel(kind.value)}Webhook",
        (serializers.Serializer,),
        {
            "type": serializers.ChoiceField(choices=[kind.value]),
            "timestamp": serializers.DateTimeField(help_text="When it happened (RFC 3339)."),
            "data": data_field,
            "__module__": __name__,
        },
    )


def _webhook(kind: EventType) -> OpenApiWebhook:
    when = WHEN.get(kind, "")
    return OpenApiWebhook(
        name=kind.value,
        decorator=extend_schema(
            summary=kind.label,
            description=f"{when} {SIGNING}".strip(),
            request=_envelope(kind),
            responses={
                200: OpenApiResponse(description="Any 2xx: received. Anything else: retried.")
            },
        ),
    )


WEBHOOKS = [_webhook(kind) for kind in EventType]
