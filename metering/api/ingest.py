"""Usage events in: POST /events and /events/batch, rated at once or (``Prefer:
respond-async``) stored to be rated within about a second.

Scope ``ingest`` (a product backend's hot path needs nothing more; /authorize and /holds,
``metering.api.authorize`` and ``metering.api.holds``, take the same). The rest of the usage
API: ``metering.api.usage_report`` (GET /customers/{id}/usage) and
``metering.api.model_prices`` (GET /models).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from billing import limits
from billing.api.errors import APIError, error_body
from billing.api.fields import Money, StrictSerializer
from billing.api.idempotency import idempotent_claimed
from billing.api.query import APIView
from billing.api.renderers import CheckedJSON, FastJSONRenderer
from billing.api.views import errors, idempotency_parameter
from billing.errors import BillingError
from ledger import errors as ledger_errors
from metering import inbox, rating

MAX_BATCH = 1000
MAX_PROPERTIES_BYTES = 32 * 1024
INGEST = {"POST": "ingest"}


# --- serializers --------------------------------------------------------------------------------


# The longest each text field of an event may be: parse_event's limits, and _plain_event's
# (the serializers that document them say the same).
KEY_MAX_LENGTH = 255
NAME_MAX_LENGTH = 200


class EventSerializer(StrictSerializer):
    idempotency_key = serializers.CharField(
        max_length=KEY_MAX_LENGTH,
        help_text="Unique per customer: a retry with the same key is charged once.",
    )
    customer = serializers.CharField(
        max_length=NAME_MAX_LENGTH, help_text="The customer's external_id."
    )
    event_name = serializers.CharField(
        max_length=NAME_MAX_LENGTH, help_text="Meters read events by name."
    )
    timestamp = serializers.DateTimeField(
        required=False, help_text="RFC 3339 with an offset; default now. Not in the future."
    )
    properties = serializers.JSONField(
        required=False,
        default=dict,
        help_text="Free-form. LLM usage: `model`, optional `provider`, and the provider's raw "
        "`usage` object (OpenAI, Anthropic, Gemini …), normalised to token kinds.",
    )
    project = serializers.CharField(
        max_length=NAME_MAX_LENGTH,
        required=False,
        help_text="The key of one of the customer's projects (created first: POST "
        "/customers/{external_id}/projects): the event is charged to its budget, and refused "
        "with 402 `budget_exceeded` past its limit; an unknown key is refused "
        "(`project_not_found`), never created.",
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
    # (a field named like Serializer.data: DRF's metaclass takes declared fields off the
    # class, so nothing is shadowed; the stubs see a class attribute)
    data = AsyncBatchItemSerializer(many=True)  # type: ignore[assignment]
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
    data = BatchItemSerializer(many=True)  # type: ignore[assignment]  # as in the async one
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()


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


EVENT_FIELDS = frozenset(
    {"idempotency_key", "customer", "event_name", "timestamp", "properties", "project"}
)


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
    key = _text(raw, "idempotency_key", KEY_MAX_LENGTH, prefix)
    customer = _text(raw, "customer", NAME_MAX_LENGTH, prefix)
    event_name = _text(raw, "event_name", NAME_MAX_LENGTH, prefix)
    timestamp = raw.get("timestamp")
    moment: datetime | None
    if timestamp is None:
        moment = now or timezone.now()
    else:
        moment = _read_timestamp(timestamp) if isinstance(timestamp, str) else None
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
    properties_json = _properties_json(properties)
    if properties_json is None:
        raise APIError(
            400,
            "invalid_parameter",
            f"properties may hold at most {MAX_PROPERTIES_BYTES} bytes of JSON",
            param=f"{prefix}properties",
        )
    project = _text(raw, "project", NAME_MAX_LENGTH, prefix) if "project" in raw else None
    return rating.EventIn(
        key,
        customer,
        event_name,
        moment,
        properties,
        project=project,
        properties_json=properties_json,
    )


def _read_timestamp(timestamp: str) -> datetime | None:
    """An RFC 3339 timestamp with its offset, in UTC; None when it is not one."""
    if not _has_offset(timestamp):
        return None
    try:
        text = timestamp[:-1] + "Z" if timestamp.endswith("z") else timestamp
        if "." in text:  # Python reads at most microseconds: drop finer digits
            head, _, tail = text.partition(".")
            digits = len(tail) - len(tail.lstrip("0123456789"))
            text = f"{head}.{tail[: min(digits, 6)]}{tail[digits:]}"
        return datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _plain_event(raw: object, now: datetime, moments: dict[str, datetime]) -> rating.EventIn | None:
    """``parse_event``'s answer for an event it takes, found with fewer steps (a batch
    parses a thousand); None for anything else, which ``parse_event`` then reads (and
    refuses with its own error, or takes). What must hold: whatever this returns,
    ``parse_event`` returns the same for — only plain ``str`` and ``dict`` values pass
    (what JSON gives), each check here being one of its checks or a stricter one.
    ``moments``: timestamps already read (events of a batch often share one), each one
    that ``parse_event`` takes."""
    if type(raw) is not dict or not raw.keys() <= EVENT_FIELDS:
        return None
    get = raw.get
    key, customer, event_name = get("idempotency_key"), get("customer"), get("event_name")
    if (
        type(key) is not str
        or type(customer) is not str
        or type(event_name) is not str
        or not 0 < len(key) <= KEY_MAX_LENGTH
        or not 0 < len(customer) <= NAME_MAX_LENGTH
        or not 0 < len(event_name) <= NAME_MAX_LENGTH
        # "may not be blank" is ``not value.strip()``: for a non-empty value, isspace()
        or key.isspace()
        or customer.isspace()
        or event_name.isspace()
        or "\x00" in key
        or "\x00" in customer
        or "\x00" in event_name
    ):
        return None
    timestamp = get("timestamp")
    moment: datetime | None
    if timestamp is None:
        moment = now
    elif type(timestamp) is str:
        moment = moments.get(timestamp)
        if moment is None:
            moment = _read_timestamp(timestamp)
            if moment is None or moment < limits.EARLIEST_DATE:
                return None
            moments[timestamp] = moment
    else:
        return None
    properties = get("properties", None)
    if properties is None:
        if "properties" in raw:
            return None
        properties = {}
    elif type(properties) is not dict:
        return None
    properties_json = _properties_json(properties)
    if properties_json is None:
        return None
    project = get("project")
    if project is not None or "project" in raw:
        if (
            type(project) is not str
            or not 0 < len(project) <= NAME_MAX_LENGTH
            or project.isspace()
            or "\x00" in project
        ):
            return None
    return rating.EventIn(
        key,
        customer,
        event_name,
        moment,
        properties,
        project=project,
        properties_json=properties_json,
    )


_PROPERTIES_ENCODER = msgspec.json.Encoder()


def _properties_json(properties: dict) -> str | None:
    """``properties`` as JSON text, or None when it is too large: at most
    ``MAX_PROPERTIES_BYTES`` bytes as ``json.dumps(properties, default=str,
    ensure_ascii=False)`` writes it (the measure the API documents).

    Written by msgspec (0.7 µs an event instead of 6–8, measured 2026-12-07): for the values
    ExactJSONParser reads (JSON's types, exact numbers as Decimal) it writes the same text
    without the blank after each ``,`` and ``:`` — the same escapes, UTF-8, a Decimal as
    its quoted text as ``default=str`` does — which PostgreSQL's jsonb stores alike. So the
    documented measure is at most twice msgspec's length, and is taken only when that
    could pass the limit."""
    try:
        compact = _PROPERTIES_ENCODER.encode(properties)
    except (TypeError, ValueError, OverflowError):  # not from a JSON body: as before
        compact = None
    if compact is not None and len(compact) * 2 <= MAX_PROPERTIES_BYTES:
        return compact.decode()
    text = json.dumps(properties, default=str, ensure_ascii=False)
    if len(text) * 4 > MAX_PROPERTIES_BYTES and len(text.encode()) > MAX_PROPERTIES_BYTES:
        return None
    return text


def _money(value: Decimal) -> str:
    """``format(value.quantize(LEDGER_QUANTUM), "f")``, the ledger's 12 places written out.

    Found as ``str`` of the quantized value (0.1 µs, ``format`` 0.3–0.5), which writes the
    same unless it chooses scientific notation: with the exponent at -12, only below 1e-6
    in size (zero included: "0E-12"), and then with an "E", so ``format`` is asked then."""
    quantized = value.quantize(LEDGER_QUANTUM)
    text = str(quantized)
    return format(quantized, "f") if "E" in text else text


LEDGER_QUANTUM = rating.LEDGER_QUANTUM
_ZERO = Decimal(0)


def _event_payload(outcome: rating.Outcome) -> dict:
    """``EventResultSerializer``'s shape, built directly (a thousand per batch)."""
    row = outcome.event or {}
    get = row.get
    payload = {
        "id": get("id"),
        "idempotency_key": get("idempotency_key"),
        "status": outcome.status,
        "amount": _money(get("amount", _ZERO)),
        "currency": get("currency", ""),
        "ledger_transaction": get("ledger_transaction_id"),
    }
    cost = get("cost")
    if cost is not None:
        payload["cost"] = _money(cost)
    return payload


def _error_payload(error: BillingError | ledger_errors.LedgerError) -> dict:
    return error_body(error.http_status, error.code, error.message, getattr(error, "param", None))[
        "error"
    ]


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


def _parse_batch(
    raw_events: list, now: datetime
) -> tuple[list[rating.EventIn], list[int], list[dict | None]]:
    """A batch's events read: those taken, their positions, and each position's result so
    far (an event refused here has its error; the others None)."""
    results: list[dict | None] = [None] * len(raw_events)
    valid: list[rating.EventIn] = []
    positions: list[int] = []
    moments: dict[str, datetime] = {}
    for index, raw in enumerate(raw_events):
        event = _plain_event(raw, now, moments)
        if event is None:
            try:
                event = parse_event(raw, prefix=f"events[{index}].", now=now)
            except APIError as error:
                results[index] = {
                    "index": index,
                    "status": "rejected",
                    "error": error_body(400, error.error_code, str(error.detail), error.param)[
                        "error"
                    ],
                }
                continue
        valid.append(event)
        positions.append(index)
    return valid, positions, results


def _rated_answer(
    positions: list[int], outcomes: list[rating.Outcome], results: list[dict | None]
) -> dict:
    """A rated batch's answer. Each value of it is built here as a str, int or None (its
    amounts as text), so it is written without the renderer's check (``CheckedJSON``) —
    unless rating refused an event: its error's values are rating's."""
    checked = True
    for index, outcome in zip(positions, outcomes, strict=True):
        status = outcome.status
        if status == "rejected":
            assert outcome.error is not None, "a rejected event carries its error"
            checked = False
            results[index] = {
                "index": index,
                "status": "rejected",
                "error": _error_payload(outcome.error),
            }
        else:
            results[index] = {"index": index, "status": status, "event": _event_payload(outcome)}
    answer = _batch_answer(results, "accepted")
    return CheckedJSON(answer) if checked else answer


def _async_response(payload: dict, code: int) -> Response:
    response = Response(payload, status=code)
    response["Preference-Applied"] = "respond-async"
    return response


# --- views ----------------------------------------------------------------------------------------


class EventCreateView(APIView):
    required_scopes = INGEST
    renderer_classes = [FastJSONRenderer]

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
        examples=[
            OpenApiExample("LLM call", request_only=True, value=EVENT_EXAMPLE),
            OpenApiExample(
                "Charged to a project's budget",
                request_only=True,
                value={**EVENT_EXAMPLE, "project": "team-search"},
            ),
        ],
    )
    @idempotent_claimed
    def post(self, request):
        event = _plain_event(request.data, timezone.now(), {}) or parse_event(request.data)
        if _wants_async(request):
            acceptance = inbox.accept_events([event])[0]
            if acceptance.status == "rejected":
                assert acceptance.error is not None, "a rejected event carries its error"
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
            assert outcome.error is not None, "a rejected event carries its error"
            raise outcome.error
        code = status.HTTP_201_CREATED if outcome.status == "accepted" else status.HTTP_200_OK
        return Response(_event_payload(outcome), status=code)


class EventBatchView(APIView):
    required_scopes = INGEST
    renderer_classes = [FastJSONRenderer]

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
        valid, positions, results = _parse_batch(raw_events, timezone.now())
        if _wants_async(request):
            return self._accept_async(valid, positions, results)
        outcomes = rating.ingest_events(valid) if valid else []
        return Response(_rated_answer(positions, outcomes, results))

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
