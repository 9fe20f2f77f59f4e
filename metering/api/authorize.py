"""POST /authorize: before compute, may this customer spend this much? (scope ``ingest``).

The request is priced by ``metering.selectors.estimate_usage``; its input serializer is
shared with POST /holds (``metering.api.holds``), which reserves what it estimates.
"""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from billing import limits
from billing.api.fields import CurrencyField, Money, StrictSerializer
from billing.api.idempotency import idempotent
from billing.api.query import APIView
from billing.api.views import errors, idempotency_parameter
from metering.api.ingest import INGEST, _money
from metering.selectors import EstimateRequest, estimate_usage


class EstimateInputSerializer(StrictSerializer):
    customer = serializers.CharField(max_length=200)
    amount = Money(required=False, min_value=Decimal(0), help_text="Either an amount …")
    currency = CurrencyField(
        units=limits.LEDGER_UNITS,
        required=False,
        help_text="ISO 4217 or a ledger unit (CREDITS, TOKENS); default the customer's.",
    )
    model = serializers.CharField(max_length=200, required=False, help_text="… or a model")
    provider = serializers.CharField(max_length=100, required=False)
    input_tokens = serializers.IntegerField(min_value=0, max_value=10**12, default=0)
    max_output_tokens = serializers.IntegerField(min_value=0, max_value=10**12, default=0)
    event_name = serializers.CharField(max_length=200, required=False)
    project = serializers.CharField(
        max_length=200,
        required=False,
        help_text="One of the customer's projects (its key): its budget must allow the "
        "amount too (else `allowed` is false, `reason` `budget_exceeded`; an archived "
        "project: `project_archived`). Unknown: 404 `project_not_found`.",
    )

    def validate(self, data):
        if ("amount" in data) == ("model" in data):
            raise serializers.ValidationError({"amount": "give either amount or model"})
        if "amount" in data and (
            "input_tokens" in self.initial_data or "max_output_tokens" in self.initial_data
        ):
            raise serializers.ValidationError({"amount": "token estimates go with a model"})
        return data


def estimate_request(values: dict) -> EstimateRequest:
    """The estimate an ``EstimateInputSerializer``'s validated data asks for."""
    return EstimateRequest(
        customer=values["customer"],
        amount=values.get("amount"),
        currency=values.get("currency"),
        model=values.get("model"),
        provider=values.get("provider"),
        input_tokens=values.get("input_tokens", 0),
        output_tokens=values.get("max_output_tokens", 0),
        event_name=values.get("event_name"),
        project=values.get("project"),
    )


class AuthorizeResultSerializer(serializers.Serializer):
    allowed = serializers.BooleanField()
    customer = serializers.CharField()
    currency = serializers.CharField()
    amount = Money(help_text="What the request would be charged now.")
    available = Money(
        help_text="Posted − held: the same figure as `available` in GET "
        "/customers/{id}/balance (negative when a postpaid wallet is overdrawn)."
    )
    spendable = Money(
        allow_null=True,
        help_text="The headroom: what may still be spent now, `available` plus the credit "
        "limit of a postpaid wallet (the wallet's floor below zero); null: no limit. "
        "`allowed` is `amount` ≤ `spendable`.",
    )
    reason = serializers.CharField(allow_null=True)


class AuthorizeView(APIView):
    required_scopes = INGEST

    @extend_schema(
        operation_id="authorize",
        tags=["usage"],
        summary="Before compute: may this customer spend this much?",
        description="Give an `amount`, or a `model` with `input_tokens` and `max_output_tokens`: "
        "the request is priced as rating would price it now (plan, allowance left, tiers, "
        "margins) and compared with what the wallet may still spend, and with what the "
        "`project`'s budget has left this period when one is named. Nothing is reserved: "
        "use POST /holds for that.",
        request=EstimateInputSerializer,
        responses={200: AuthorizeResultSerializer, **errors(400, 404, 409, 413, 422)},
        parameters=[idempotency_parameter()],
        examples=[
            OpenApiExample(
                "A model call",
                request_only=True,
                value={
                    "customer": "acme",
                    "model": "gpt-4o",
                    "input_tokens": 2000,
                    "max_output_tokens": 1000,
                },
            )
        ],
    )
    @idempotent
    def post(self, request):
        data = EstimateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = estimate_usage(request=estimate_request(data.validated_data))
        # AuthorizeResultSerializer's shape, built directly: this answers before compute.
        return Response(
            {
                "allowed": result.allowed,
                "customer": result.customer.external_id,
                "currency": result.currency,
                "amount": _money(result.amount),
                "available": _money(result.balance),  # posted − held, as on /balance
                "spendable": None if result.available is None else _money(result.available),
                "reason": result.reason,
            }
        )
