"""The usage half of the API: ingest events, authorize before compute, holds, usage read
from the counters, and the model price catalog.

Scopes: ``ingest`` for POST /events, /events/batch, /authorize and /holds (a product
backend's hot path needs nothing more); ``read`` for the GETs.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from billing import limits, selectors
from billing.api import query
from billing.api.errors import APIError, error_body, reference_reused
from billing.api.idempotency import idempotent, idempotent_claimed
from billing.api.pagination import PARAMETERS as PAGE_PARAMETERS
from billing.api.pagination import paginate
from billing.api.query import PAGE_PARAMS, APIView
from billing.api.serializers import (
    CurrencyField,
    Money,
    NoBody,
    StrictSerializer,
    list_response,
)
from billing.api.views import errors, idempotency_parameter
from billing.errors import BillingError
from ledger import errors as ledger_errors
from ledger import services as ledger
from ledger.models import Hold
from metering import inbox, rating, services
from metering.models import ModelPrice
from metering.selectors import (
    EstimateRequest,
    MeterUsage,
    ModelUsageTotal,
    current_model_prices,
    estimate_usage,
    usage_report,
)

MAX_BATCH = 1000
MAX_PROPERTIES_BYTES = 32 * 1024
INGEST = {"POST": "ingest"}


# --- serializers --------------------------------------------------------------------------------


class EventSerializer(StrictSerializer):
    idempotency_key = serializers.CharField(
        max_length=255, help_text="Unique per customer: a retry with the same key is charged once."
    )
    customer = serializers.CharField(max_length=200, help_text="The customer's external_id.")
    event_name = serializers.CharField(max_length=200, help_text="Meters read events by name.")
    timestamp = serializers.DateTimeField(
        required=False, help_text="RFC 3339 with an offset; default now. Not in the future."
    )
    properties = serializers.JSONField(
        required=False,
        default=dict,
        help_text="Free-form. LLM usage: `model`, optional `provider`, and the provider's raw "
        "`usage` object (OpenAI, Anthropic, Gemini …), normalised to token kinds.",
    )

    def validate_timestamp(self, value: datetime) -> datetime:
        raw = self.initial_data.get("timestamp") if isinstance(self.initial_data, dict) else None
        if isinstance(raw, str) and not _has_offset(raw):
            raise serializers.ValidationError("timestamp needs a UTC offset (e.g. Z)")
        return value.astimezone(UTC)

    def validate_properties(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("properties must be a JSON object")
        if len(json.dumps(value, default=str)) > MAX_PROPERTIES_BYTES:
            raise serializers.ValidationError(
                f"properties may hold at most {MAX_PROPERTIES_BYTES} bytes of JSON"
            )
        return value


RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def _has_offset(text: str) -> bool:
    """An RFC 3339 timestamp, with its offset (ISO 8601's other spellings are refused)."""
    return RFC3339.fullmatch(text) is not None


class EventResultSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    idempotency_key = serializers.CharField()
    status = serializers.ChoiceField(choices=["accepted", "duplicate"])
    amount = Money(help_text="Charged for this event (negative: credited back).")
    currency = serializers.CharField()
    cost = Money(required=False, help_text="The provider's cost, USD (LLM events).")
    ledger_transaction = serializers.IntegerField(
        allow_null=True,
        help_text="The ledger transaction that posted it: one per customer per rating pass, "
        "shared by that pass's events, its legs their sums; null when it moved nothing.",
    )


class AsyncEventResultSerializer(serializers.Serializer):
    idempotency_key = serializers.CharField()
    customer = serializers.CharField()
    status = serializers.ChoiceField(
        choices=["pending", "duplicate"],
        help_text="pending: stored, to be rated within about a second; duplicate: this "
        "customer already sent that key, nothing is stored again. Both answered 202.",
    )


class AsyncBatchItemSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["pending", "duplicate", "rejected"])
    error = serializers.DictField(required=False)


class AsyncBatchResultSerializer(serializers.Serializer):
    data = AsyncBatchItemSerializer(many=True)
    pending = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()


class BatchSerializer(StrictSerializer):
    events = serializers.ListField(child=serializers.JSONField(), max_length=MAX_BATCH)


class BatchItemSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "rejected"])
    event = EventResultSerializer(required=False)
    error = serializers.DictField(required=False)


class BatchResultSerializer(serializers.Serializer):
    data = BatchItemSerializer(many=True)
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()


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

    def validate(self, data):
        if ("amount" in data) == ("model" in data):
            raise serializers.ValidationError({"amount": "give either amount or model"})
        if "amount" in data and (
            "input_tokens" in self.initial_data or "max_output_tokens" in self.initial_data
        ):
            raise serializers.ValidationError({"amount": "token estimates go with a model"})
        return data


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


class UsageGroupSerializer(serializers.Serializer):
    quantity = serializers.CharField(help_text="Decimal string.")
    amount = serializers.CharField(help_text="Decimal string.")


class MeterUsageSerializer(serializers.Serializer):
    meter = serializers.CharField()
    unit = serializers.CharField()
    quantity = serializers.CharField(help_text="Decimal string.")
    included_quantity = serializers.CharField(help_text="Inside the plan's allowance.")
    overage_quantity = serializers.CharField(help_text="Beyond the allowance.")
    amount = serializers.CharField(help_text="What the quantity is worth under the plan.")
    currency = serializers.CharField()
    groups = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        help_text="With group_by: one object per value, {<dimension>: value, quantity, amount}.",
    )


class ModelUsageSerializer(serializers.Serializer):
    provider = serializers.CharField()
    model = serializers.CharField()
    currency = serializers.CharField()
    events = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    cache_read_tokens = serializers.IntegerField()
    cache_write_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField()
    amount = serializers.CharField(help_text="Charged, decimal string.")
    cost = serializers.CharField(help_text="The provider's cost, USD.")
    margin = serializers.CharField(allow_null=True, help_text="amount − cost (USD only).")


class CurrencyTotalSerializer(serializers.Serializer):
    currency = serializers.CharField()
    amount = serializers.CharField()


# "from" is a Python keyword: the serializer is built with type() to have a field of that name.
UsageSerializer = type(
    "UsageSerializer",
    (serializers.Serializer,),
    {
        "customer": serializers.CharField(),
        "from": serializers.DateTimeField(help_text="Start of the range (inclusive)."),
        "to": serializers.DateTimeField(help_text="End of the range (exclusive)."),
        "meters": MeterUsageSerializer(many=True),
        "totals": CurrencyTotalSerializer(many=True),
        "models": ModelUsageSerializer(many=True),
        "__module__": __name__,
    },
)


class ModelPriceSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelPrice
        fields = [
            "id",
            "provider",
            "model",
            "name",
            "effective_from",
            "input_mtok",
            "output_mtok",
            "cache_read_mtok",
            "cache_write_mtok",
            "cache_write_1h_mtok",
            "reasoning_mtok",
            "requests_kcount",
            "tiers",
            "source",
        ]


# --- helpers ----------------------------------------------------------------------------------


def _text(raw: dict, name: str, max_length: int, prefix: str) -> str:
    value = raw.get(name)
    param = f"{prefix}{name}"
    if value is None:
        raise APIError(400, "parameter_missing", "This field is required.", param=param)
    if not isinstance(value, str):
        raise APIError(400, "invalid_parameter", "Not a valid string.", param=param)
    if not value.strip():
        raise APIError(400, "invalid_parameter", "This field may not be blank.", param=param)
    if len(value) > max_length:
        raise APIError(
            400,
            "invalid_parameter",
            f"Ensure this field has no more than {max_length} characters.",
            param=param,
        )
    if "\x00" in value:
        raise APIError(400, "invalid_parameter", "Null characters are not allowed.", param=param)
    return value


EVENT_FIELDS = frozenset({"idempotency_key", "customer", "event_name", "timestamp", "properties"})


def _unknown_event_field(raw: dict, prefix: str) -> APIError:
    unknown = next(key for key in raw if key not in EVENT_FIELDS)
    return APIError(
        400,
        "unknown_parameter",
        f"{unknown!r} is not a field of an event (check its spelling; free-form values go "
        "in properties)",
        param=f"{prefix}{unknown}",
    )


def parse_event(raw: object, *, prefix: str = "", now: datetime | None = None) -> rating.EventIn:
    """An event from request JSON, checked field by field as ``EventSerializer`` documents.

    Hand-written rather than a DRF serializer: a batch parses a thousand of these, and a
    serializer instance per event cost more than rating the event."""
    if not isinstance(raw, dict):
        raise APIError(
            400, "invalid_parameter", "an event is a JSON object", param=prefix[:-1] or None
        )
    if not raw.keys() <= EVENT_FIELDS:  # a typo is refused, not ignored (StrictSerializer)
        raise _unknown_event_field(raw, prefix)
    key = _text(raw, "idempotency_key", 255, prefix)
    customer = _text(raw, "customer", 200, prefix)
    event_name = _text(raw, "event_name", 200, prefix)
    timestamp = raw.get("timestamp")
    if timestamp is None:
        moment = now or timezone.now()
    else:
        moment = None
        if isinstance(timestamp, str) and _has_offset(timestamp):
            try:
                text = timestamp[:-1] + "Z" if timestamp.endswith("z") else timestamp
                if "." in text:  # Python reads at most microseconds: drop finer digits
                    head, _, tail = text.partition(".")
                    digits = len(tail) - len(tail.lstrip("0123456789"))
                    text = f"{head}.{tail[: min(digits, 6)]}{tail[digits:]}"
                moment = datetime.fromisoformat(text).astimezone(UTC)
            except (ValueError, OverflowError):
                moment = None
        if moment is None:
            raise APIError(
                400,
                "invalid_parameter",
                "timestamp must be an RFC 3339 timestamp with a UTC offset (e.g. Z)",
                param=f"{prefix}timestamp",
            )
        if moment < limits.EARLIEST_DATE:
            raise APIError(
                400,
                "invalid_parameter",
                f"timestamp must not lie before {limits.EARLIEST_DATE:%Y-%m-%d} (docs/api.md)",
                param=f"{prefix}timestamp",
            )
    properties = raw.get("properties", {})
    if not isinstance(properties, dict):
        raise APIError(
            400,
            "invalid_parameter",
            "properties must be a JSON object",
            param=f"{prefix}properties",
        )
    size = len(json.dumps(properties, default=str, ensure_ascii=False).encode())
    if size > MAX_PROPERTIES_BYTES:
        raise APIError(
            400,
            "invalid_parameter",
            f"properties may hold at most {MAX_PROPERTIES_BYTES} bytes of JSON",
            param=f"{prefix}properties",
        )
    return rating.EventIn(key, customer, event_name, moment, properties)


def _money(value: Decimal) -> str:
    return format(value.quantize(rating.LEDGER_QUANTUM), "f")


def _event_payload(outcome: rating.Outcome) -> dict:
    """``EventResultSerializer``'s shape, built directly (a thousand per batch)."""
    row = outcome.event or {}
    payload = {
        "id": row.get("id"),
        "idempotency_key": row.get("idempotency_key"),
        "status": outcome.status,
        "amount": _money(row.get("amount", Decimal(0))),
        "currency": row.get("currency", ""),
        "ledger_transaction": row.get("ledger_transaction_id"),
    }
    if row.get("cost") is not None:
        payload["cost"] = _money(row["cost"])
    return payload


def _error_payload(error: BillingError | ledger_errors.LedgerError) -> dict:
    return error_body(error.http_status, error.code, error.message, getattr(error, "param", None))[
        "error"
    ]


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


EVENT_EXAMPLE = {
    "idempotency_key": "req_01J9Z3K8",
    "customer": "acme",
    "event_name": "llm.completion",
    "timestamp": "2026-11-23T12:00:00Z",
    "properties": {
        "model": "gpt-4o",
        "provider": "openai",
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024},
        },
    },
}


def prefer_parameter() -> OpenApiParameter:
    return OpenApiParameter(
        "Prefer",
        {"type": "string", "enum": ["respond-async"]},
        OpenApiParameter.HEADER,
        required=False,
        description="respond-async: answer 202 once the events are stored and deduplicated, "
        "rate them within about a second (as an API key set to asynchronous ingestion "
        "does for every request). What rating refuses then is recorded on the event: GET "
        "/events?status=rejected. Answered with Preference-Applied: respond-async.",
    )


def _wants_async(request) -> bool:
    """RFC 7240: ``Prefer`` holds comma-separated preferences, tokens case-insensitive."""
    if getattr(request.auth, "ingest_async", False):
        return True
    header = request.headers.get("Prefer", "")
    return any(
        part.split(";", 1)[0].strip().lower() == "respond-async" for part in header.split(",")
    )


def _batch_answer(results: list, taken: str) -> dict:
    """A batch's answer: each event's result and the counts, ``taken`` being "accepted"
    (rated) or "pending" (stored for rating)."""
    counts = {taken: 0, "duplicate": 0, "rejected": 0}
    for result in results:
        counts[result["status"]] += 1
    return {
        "data": results,
        taken: counts[taken],
        "duplicates": counts["duplicate"],
        "rejected": counts["rejected"],
    }


def _async_response(payload: dict, code: int) -> Response:
    response = Response(payload, status=code)
    response["Preference-Applied"] = "respond-async"
    return response


# --- views ----------------------------------------------------------------------------------------


class EventCreateView(APIView):
    required_scopes = INGEST

    @extend_schema(
        operation_id="events_create",
        tags=["usage"],
        summary="Ingest one usage event: stored, rated and posted to the ledger at once",
        request=EventSerializer,
        responses={
            201: EventResultSerializer,
            200: EventResultSerializer,
            202: AsyncEventResultSerializer,
            **errors(400, 402, 404, 409, 413, 422),
        },
        parameters=[idempotency_parameter(), prefer_parameter()],
        examples=[OpenApiExample("LLM call", request_only=True, value=EVENT_EXAMPLE)],
    )
    @idempotent_claimed
    def post(self, request):
        event = parse_event(request.data)
        if _wants_async(request):
            acceptance = inbox.accept_events([event])[0]
            if acceptance.status == "rejected":
                raise acceptance.error
            return _async_response(
                {
                    "idempotency_key": event.idempotency_key,
                    "customer": event.customer,
                    "status": acceptance.status,
                },
                status.HTTP_202_ACCEPTED,  # a duplicate too: its status says so
            )
        outcome = rating.ingest_events([event])[0]
        if outcome.status == "rejected":
            raise outcome.error
        code = status.HTTP_201_CREATED if outcome.status == "accepted" else status.HTTP_200_OK
        return Response(_event_payload(outcome), status=code)


class EventBatchView(APIView):
    required_scopes = INGEST

    @extend_schema(
        operation_id="events_batch",
        tags=["usage"],
        summary=f"Ingest up to {MAX_BATCH} events; each accepted, duplicate or rejected alone",
        request=BatchSerializer,
        responses={
            200: BatchResultSerializer,
            202: AsyncBatchResultSerializer,
            **errors(400, 409, 413),
        },
        parameters=[idempotency_parameter(), prefer_parameter()],
    )
    @idempotent_claimed
    def post(self, request):
        body = request.data
        if isinstance(body, dict) and not body.keys() <= {"events"}:
            unknown = next(key for key in body if key != "events")
            raise APIError(
                400,
                "unknown_parameter",
                f"{unknown!r} is not a parameter of this request (check its spelling)",
                param=unknown,
            )
        if not isinstance(body, dict) or not isinstance(body.get("events"), list):
            raise APIError(400, "invalid_parameter", 'send {"events": [...]}', param="events")
        raw_events = body["events"]
        if len(raw_events) > MAX_BATCH:
            raise APIError(
                413, "batch_too_large", f"at most {MAX_BATCH} events per batch", param="events"
            )
        results: list[dict | None] = [None] * len(raw_events)
        valid, positions = [], []
        now = timezone.now()
        for index, raw in enumerate(raw_events):
            try:
                valid.append(parse_event(raw, prefix=f"events[{index}].", now=now))
            except APIError as error:
                results[index] = {
                    "index": index,
                    "status": "rejected",
                    "error": error_body(400, error.error_code, str(error.detail), error.param)[
                        "error"
                    ],
                }
                continue
            positions.append(index)
        if _wants_async(request):
            return self._accept_async(valid, positions, results)
        outcomes = rating.ingest_events(valid) if valid else []
        for index, outcome in zip(positions, outcomes, strict=True):
            if outcome.status == "rejected":
                results[index] = {
                    "index": index,
                    "status": "rejected",
                    "error": _error_payload(outcome.error),
                }
            else:
                results[index] = {
                    "index": index,
                    "status": outcome.status,
                    "event": _event_payload(outcome),
                }
        return Response(_batch_answer(results, "accepted"))

    def _accept_async(
        self, valid: list[rating.EventIn], positions: list[int], results: list[dict | None]
    ) -> Response:
        acceptances = inbox.accept_events(valid) if valid else []
        for index, acceptance in zip(positions, acceptances, strict=True):
            item: dict = {"index": index, "status": acceptance.status}
            if acceptance.error is not None:
                item["error"] = _error_payload(acceptance.error)
            results[index] = item
        return _async_response(_batch_answer(results, "pending"), status.HTTP_202_ACCEPTED)


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
    )


class AuthorizeView(APIView):
    required_scopes = INGEST

    @extend_schema(
        operation_id="authorize",
        tags=["usage"],
        summary="Before compute: may this customer spend this much?",
        description="Give an `amount`, or a `model` with `input_tokens` and `max_output_tokens`: "
        "the request is priced as rating would price it now (plan, allowance left, tiers, "
        "margins) and compared with what the wallet may still spend. Nothing is reserved: "
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


class HoldCreateView(APIView):
    required_scopes = INGEST

    @extend_schema(
        operation_id="holds_create",
        tags=["usage"],
        summary="Reserve funds for a long task: out of the available balance at once",
        description="Give an `amount`, or a `model` with `input_tokens` and "
        "`max_output_tokens` (reserves what that call could cost at most). Settle it with "
        "the actual usage, release it, or let it expire (`expires_in`).",
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


# --- usage ---------------------------------------------------------------------------------------


def _parse_moment(raw: str, param: str) -> datetime:
    """``query.parse_moment`` (a date or an RFC 3339 timestamp, as every list route reads
    them), and far enough from the calendar's ends for the report's range checks."""
    moment = query.parse_moment(raw, param)
    try:
        moment + timedelta(days=401)  # the range checks must not overflow
        moment - timedelta(days=1)
    except OverflowError:
        raise query.invalid(param, f"{param} is out of range") from None
    return moment


class UsageView(APIView):
    query_params = {"GET": ("from", "to", "group_by")}

    @extend_schema(
        operation_id="customers_usage",
        tags=["usage"],
        summary="Usage and its worth per meter, from the counters",
        description="Default: the current billing period, exactly (with no live "
        "subscription: the last period of the latest one; a customer that never subscribed "
        "must give `from`, else `400 parameter_missing`). An empty `from` or `to` is the "
        "default. With `from` and `to`: "
        "whole UTC days, `from` inclusive and `to` exclusive (a time inside a day includes "
        "that day). "
        "`group_by` splits each meter by one of its dimensions (e.g. `model`). `models` "
        "gives LLM usage per model with the provider's cost beside the amount charged.",
        parameters=[
            OpenApiParameter("from", str, description="Date or RFC 3339 timestamp."),
            OpenApiParameter("to", str, description="Date or RFC 3339 timestamp."),
            OpenApiParameter("group_by", str, description="A meter dimension, e.g. model."),
        ],
        responses={200: UsageSerializer, **errors(400, 404)},
    )
    def get(self, request, external_id: str):
        customer = selectors.get_customer(external_id=external_id)
        # An empty (or blank) from / to is the same as none: the default range.
        raw_from = request.query_params.get("from", "").strip() or None
        raw_to = request.query_params.get("to", "").strip() or None
        group_by = request.query_params.get("group_by")
        report = usage_report(
            customer=customer,
            start=_parse_moment(raw_from, "from") if raw_from else None,
            end=_parse_moment(raw_to, "to") if raw_to else None,
            group_by=group_by,
        )
        return Response(
            {
                "customer": report.customer.external_id,
                "from": report.range_from,
                "to": report.range_to,
                "meters": [_meter_payload(usage, group_by) for usage in report.meters],
                "totals": [{"currency": c, "amount": _num(a)} for c, a in report.totals.items()],
                "models": [_model_payload(row) for row in report.models],
            }
        )


def _num(value: Decimal) -> str:
    """A decimal string without trailing zeros beyond the ledger's 12 places."""
    value = rating.ledger_round(value)
    text = format(value.normalize(), "f")
    return text


def _meter_payload(usage: MeterUsage, group_by: str | None) -> dict:
    item = {
        "meter": usage.meter.code,
        "unit": usage.meter.unit,
        "quantity": _num(usage.quantity),
        "included_quantity": _num(usage.included_quantity),
        "overage_quantity": _num(usage.overage_quantity),
        "amount": _num(usage.amount),
        "currency": usage.currency,
    }
    if usage.groups is not None:
        item["groups"] = [
            {group_by: group.value, "quantity": _num(group.quantity), "amount": _num(group.amount)}
            for group in usage.groups
        ]
    return item


def _model_payload(row: ModelUsageTotal) -> dict:
    return {
        "provider": row.provider,
        "model": row.model,
        "currency": row.currency,
        "events": row.events,
        "input_tokens": row.input_tokens,
        "cache_read_tokens": row.cache_read_tokens,
        "cache_write_tokens": row.cache_write_tokens,
        "output_tokens": row.output_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "amount": _num(row.amount),
        "cost": _num(row.cost),
        "margin": None if row.margin is None else _num(row.margin),
    }


# --- model catalog ------------------------------------------------------------------------------


class ModelListView(APIView):
    query_params = {"GET": ("provider", *PAGE_PARAMS)}

    @extend_schema(
        operation_id="models_list",
        tags=["usage"],
        summary="The model price catalog in force (USD per million tokens)",
        parameters=[
            *PAGE_PARAMETERS,
            OpenApiParameter("provider", str, description="Only this provider's models."),
        ],
        responses={200: list_response(ModelPriceSerializer), **errors(400)},
    )
    def get(self, request):
        provider = request.query_params.get("provider")
        if provider is not None and not re.fullmatch(r"[A-Za-z0-9._\-]{1,100}", provider):
            raise APIError(400, "invalid_parameter", "provider is a provider id", param="provider")
        prices = current_model_prices(provider=provider or None)
        return Response(paginate(request, prices, lambda m: ModelPriceSerializer(m).data))
