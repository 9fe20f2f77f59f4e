"""``GET`` / ``PUT /customers/{external_id}/wallets/{currency}/auto-top-up``: a prepaid
wallet's auto top-up (docs/auto-top-up.md).

PUT replaces the settings as a whole (what is not sent takes its default) through
``billing.services.set_auto_top_up``, the service the admin and the portal use; sending the
same body again changes nothing. Input is strict: unknown fields refused, booleans and
integers only as JSON booleans and integers (``"true"`` or ``"60"`` are refused). Scopes:
GET ``read``, PUT ``write``.
"""

from __future__ import annotations

from decimal import Decimal

from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.response import Response

from billing import selectors, services
from billing.api.fields import Money, StrictIntegerField, StrictSerializer
from billing.api.query import APIView
from billing.api.views import errors
from billing.models import AutoTopUp, AutoTopUpAttempt
from billing.models.auto_top_up import DEFAULT_COOL_OFF_SECONDS, DEFAULT_MAX_FAILURES
from invoicing import auto_top_up as charging

RECENT_ATTEMPTS = 5


class StrictBooleanField(serializers.BooleanField):
    """A JSON ``true`` or ``false``, nothing that merely reads as one."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            raise serializers.ValidationError("must be true or false", code="invalid")
        return data


class AutoTopUpInputSerializer(StrictSerializer):
    enabled = StrictBooleanField(help_text="On or off.")
    threshold = Money(
        min_value=Decimal(0),
        help_text="Refill when the available balance falls below this (the wallet's unit: "
        "money, or credits for the CREDITS wallet).",
    )
    target = Money(help_text="Refill up to this available balance; above threshold.")
    monthly_cap = Money(
        help_text="At most this much money charged per calendar month (UTC), in the charge "
        "currency (the wallet's, or the customer's for credits). Positive."
    )
    cool_off_seconds = StrictIntegerField(
        required=False,
        default=DEFAULT_COOL_OFF_SECONDS,
        min_value=0,
        max_value=services.MAX_COOL_OFF_SECONDS,
        help_text="At least this long between two attempts.",
    )
    max_failures = StrictIntegerField(
        required=False,
        default=DEFAULT_MAX_FAILURES,
        min_value=1,
        max_value=services.MAX_AUTO_TOP_UP_FAILURES,
        help_text="Turned off after this many failed attempts in a row.",
    )


class AutoTopUpAttemptSerializer(serializers.ModelSerializer):
    amount = Money(help_text="Money charged.")
    currency = serializers.CharField(source="charge_currency")
    credit_amount = Money(help_text="Credited to the wallet, in its unit.")
    payment_intent = serializers.CharField(source="payment_intent_id", allow_null=True)

    class Meta:
        model = AutoTopUpAttempt
        fields = [
            "id",
            "status",
            "amount",
            "currency",
            "credit_amount",
            "payment_intent",
            "offline",
            "failure_code",
            "failure_message",
            "created_at",
            "completed_at",
        ]


class AutoTopUpSerializer(serializers.ModelSerializer):
    currency = serializers.CharField(source="wallet.currency", help_text="The wallet's unit.")
    charge_currency = serializers.SerializerMethodField()
    threshold = Money()
    target = Money()
    monthly_cap = Money()
    charged_this_month = serializers.SerializerMethodField()
    recent_attempts = serializers.SerializerMethodField()

    class Meta:
        model = AutoTopUp
        fields = [
            "currency",
            "enabled",
            "threshold",
            "target",
            "monthly_cap",
            "charge_currency",
            "cool_off_seconds",
            "max_failures",
            "consecutive_failures",
            "last_attempt_at",
            "disabled_reason",
            "disabled_at",
            "skipped_reason",
            "charged_this_month",
            "recent_attempts",
            "updated_at",
        ]

    def get_charge_currency(self, auto: AutoTopUp) -> str:
        return services.charge_currency(auto.wallet)

    @extend_schema_field(Money(help_text="Charged (or in flight) this calendar month."))
    def get_charged_this_month(self, auto: AutoTopUp) -> str:
        total = charging.charged_this_month(auto_top_up=auto, now=self.context["now"])
        return Money().to_representation(total)

    @extend_schema_field(AutoTopUpAttemptSerializer(many=True))
    def get_recent_attempts(self, auto: AutoTopUp) -> list[dict]:
        attempts = auto.attempts.order_by("-id")[:RECENT_ATTEMPTS]
        return list(AutoTopUpAttemptSerializer(attempts, many=True).data)


def _payload(auto: AutoTopUp) -> dict:
    return AutoTopUpSerializer(auto, context={"now": timezone.now()}).data


class AutoTopUpView(APIView):
    @extend_schema(
        operation_id="wallets_auto_top_up_retrieve",
        tags=["customers"],
        summary="A prepaid wallet's auto top-up: settings, state and recent attempts",
        responses={200: AutoTopUpSerializer, **errors(404)},
    )
    def get(self, request, external_id: str, currency: str):
        customer = selectors.get_customer(external_id=external_id)
        wallet = services.wallet_for(customer=customer, currency=currency)
        return Response(_payload(services.get_auto_top_up(wallet=wallet)))

    @extend_schema(
        operation_id="wallets_auto_top_up_update",
        tags=["customers"],
        summary="Set a prepaid wallet's auto top-up (all its settings)",
        description="When the wallet's available balance falls below `threshold`, the "
        "customer's saved default card is charged off-session to bring it back to `target`, "
        "at most one attempt at a time, `cool_off_seconds` apart, within `monthly_cap`. "
        "After `max_failures` failed attempts in a row it turns itself off "
        "(`disabled_reason`); turning it on again starts the count over. Prepaid wallets "
        "only (409 wallet_not_prepaid).",
        request=AutoTopUpInputSerializer,
        responses={200: AutoTopUpSerializer, **errors(400, 404, 409)},
        examples=[
            OpenApiExample(
                "Refill to 100 below 20",
                request_only=True,
                value={
                    "enabled": True,
                    "threshold": "20.00",
                    "target": "100.00",
                    "monthly_cap": "500.00",
                    "cool_off_seconds": 600,
                    "max_failures": 3,
                },
            )
        ],
    )
    def put(self, request, external_id: str, currency: str):
        customer = selectors.get_customer(external_id=external_id)
        wallet = services.wallet_for(customer=customer, currency=currency)
        data = AutoTopUpInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        auto = services.set_auto_top_up(wallet=wallet, **data.validated_data)
        return Response(_payload(auto))
