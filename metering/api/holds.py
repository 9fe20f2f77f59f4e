"""Holds: reserve funds for a long task, then settle them with the actual usage, release
them, or let them expire. POST /holds, GET /holds/{id}, POST /holds/{id}/settle and
/holds/{id}/release.

Scopes: ``ingest`` for the POSTs, ``read`` for the GET. The work is
``metering.services`` (placing and settling) and ``ledger.services`` (releasing).
"""

from __future__ import annotations

from decimal import Decimal

from django.core.serializers.json import DjangoJSONEncoder
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from billing import selectors
from billing.api.errors import reference_reused
from billing.api.fields import Money, NoBody, StrictSerializer
from billing.api.idempotency import idempotent
from billing.api.query import APIView
from billing.api.views import errors, idempotency_parameter
from ledger import errors as ledger_errors
from ledger import services as ledger
from ledger.models import Hold
from metering import services
from metering.api.authorize import EstimateInputSerializer, estimate_request
from metering.api.ingest import INGEST, EventResultSerializer, _event_payload, parse_event


class HoldInputSerializer(EstimateInputSerializer):
    expires_in = serializers.IntegerField(
        min_value=1, max_value=7 * 24 * 3600, default=3600, help_text="Seconds; default 1 h."
    )
    reference = serializers.CharField(
        max_length=200, required=False, help_text="Yours; the same reference holds once."
    )


class HoldSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    customer = serializers.CharField()
    currency = serializers.CharField()
    amount = Money()
    settled_amount = Money()
    status = serializers.CharField()
    expires_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    resolved_at = serializers.DateTimeField(allow_null=True)


class SettleInputSerializer(StrictSerializer):
    event = serializers.JSONField(
        required=False,
        encoder=DjangoJSONEncoder,  # fractional numbers arrive as Decimal
        help_text="The actual usage, as for POST /events: rated and posted.",
    )
    amount = Money(required=False, min_value=Decimal("0.000000000001"))
    final = serializers.BooleanField(default=True, help_text="With amount: release the rest.")
    reference = serializers.CharField(max_length=200, required=False)

    def validate(self, data):
        if ("event" in data) == ("amount" in data):
            raise serializers.ValidationError({"event": "give either event or amount"})
        return data


class SettleResultSerializer(serializers.Serializer):
    hold = HoldSerializer()
    event = EventResultSerializer(required=False)
    ledger_transaction = serializers.IntegerField(allow_null=True)


def _hold_payload(hold: Hold) -> dict:
    return HoldSerializer(
        {
            "id": hold.pk,
            "customer": selectors.hold_customer(hold=hold).external_id,
            "currency": hold.currency,
            "amount": hold.amount,
            "settled_amount": hold.settled_amount,
            "status": hold.status,
            "expires_at": hold.expires_at,
            "created_at": hold.created_at,
            "resolved_at": hold.resolved_at,
        }
    ).data


class HoldCreateView(APIView):
    required_scopes = INGEST

    @extend_schema(
        operation_id="holds_create",
        tags=["usage"],
        summary="Reserve funds for a long task: out of the available balance at once",
        description="Give an `amount`, or a `model` with `input_tokens` and "
        "`max_output_tokens` (reserves what that call could cost at most). Settle it with "
        "the actual usage, release it, or let it expire (`expires_in`). With `project`: "
        "refused past the project's budget (402 `budget_exceeded`), and counted against it "
        "while pending; the settling event is charged to that project.",
        request=HoldInputSerializer,
        responses={
            201: HoldSerializer,
            200: HoldSerializer,
            **errors(400, 402, 404, 409, 413, 422),
        },
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request):
        data = HoldInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        placed = services.place_usage_hold(
            request=estimate_request(values),
            expires_in=values["expires_in"],
            reference=values.get("reference"),
        )
        code = status.HTTP_201_CREATED if placed.created else status.HTTP_200_OK
        return Response(_hold_payload(placed.hold), status=code)


class HoldDetailView(APIView):
    @extend_schema(
        operation_id="holds_retrieve",
        tags=["usage"],
        summary="A hold",
        responses={200: HoldSerializer, **errors(404)},
    )
    def get(self, request, hold_id: int):
        return Response(_hold_payload(selectors.get_wallet_hold(hold_id=hold_id)))


class HoldSettleView(APIView):
    required_scopes = INGEST

    @extend_schema(
        operation_id="holds_settle",
        tags=["usage"],
        summary="Settle a hold with the actual usage; what is left is released",
        description="With `event` (as for POST /events): the event is rated and posted "
        "against the hold and the rest released, in one transaction; usage costing more than "
        "was held takes the excess from the available balance (refused with 402 if it is not "
        "there, and the hold stays). With `amount`: settle that much (`final: false` keeps "
        "the rest held, for streams settled in parts).",
        request=SettleInputSerializer,
        responses={200: SettleResultSerializer, **errors(400, 402, 404, 409, 413, 422)},
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request, hold_id: int):
        hold = selectors.get_wallet_hold(hold_id=hold_id)
        data = SettleInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        if "event" in values:
            event = parse_event(values["event"], prefix="event.")
            outcome = services.settle_hold_with_usage(hold_id=hold.pk, event=event)
            hold.refresh_from_db()
            return Response(
                {
                    "hold": _hold_payload(hold),
                    "event": _event_payload(outcome),
                    "ledger_transaction": (outcome.event or {}).get("ledger_transaction_id"),
                }
            )
        try:
            posted = services.settle_hold_by_amount(
                hold_id=hold.pk,
                amount=values["amount"],
                final=values["final"],
                reference=values.get("reference"),
            )
        except ledger_errors.ReferenceReused:
            raise reference_reused(values.get("reference"), "settlement") from None
        hold.refresh_from_db()
        return Response({"hold": _hold_payload(hold), "ledger_transaction": posted.pk})


class HoldReleaseView(APIView):
    required_scopes = INGEST

    @extend_schema(
        operation_id="holds_release",
        tags=["usage"],
        summary="Release a hold without charge",
        request=None,
        responses={200: HoldSerializer, **errors(400, 404, 409)},
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request, hold_id: int):
        NoBody(data=request.data).is_valid(raise_exception=True)
        hold = selectors.get_wallet_hold(hold_id=hold_id)
        return Response(_hold_payload(ledger.release_hold(hold_id=hold.pk)))
