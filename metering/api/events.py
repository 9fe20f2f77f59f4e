"""``GET /events``: a customer's usage events, rated and still waiting, cursor-paginated and
filtered (unknown query parameters refused: ``billing.api.query``). It shares its path with
``POST /events`` (``metering.api.ingest``), which the view here extends. Scope: ``read``.
API keys belong to the installation, not to one customer: the list covers every customer.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import (
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import serializers
from rest_framework.response import Response

from billing import selectors
from billing.api import query
from billing.api.errors import APIError
from billing.api.fields import Money
from billing.api.pagination import PARAMETERS as PAGE_PARAMETERS
from billing.api.query import CREATED_HELP
from billing.api.views import errors
from metering import selectors as metering_selectors
from metering.api import ingest
from metering.models import Event, IncomingEvent, IncomingStatus

# --- events -------------------------------------------------------------------------------


class EventTokensSerializer(serializers.Serializer):
    input = serializers.IntegerField(
        source="input_tokens", help_text="Prompt tokens neither read from nor written to a cache."
    )
    cache_read = serializers.IntegerField(source="cache_read_tokens")
    cache_write = serializers.IntegerField(source="cache_write_tokens")
    output = serializers.IntegerField(source="output_tokens", help_text="Reasoning included.")
    reasoning = serializers.IntegerField(source="reasoning_tokens")


class EventModelPriceSerializer(serializers.Serializer):
    """The version of the model price catalog the event was priced from (GET /models)."""

    id = serializers.IntegerField()
    provider = serializers.CharField()
    model = serializers.CharField()
    effective_from = serializers.DateTimeField()


class UsageEventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    idempotency_key = serializers.CharField()
    status = serializers.SerializerMethodField(
        help_text="accepted: rated and posted. (pending and rejected: see IncomingEvent.)"
    )
    customer = serializers.CharField(source="customer.external_id")
    event_name = serializers.CharField()
    timestamp = serializers.DateTimeField()
    received_at = serializers.DateTimeField()
    properties = serializers.JSONField()
    project = serializers.CharField(
        source="project.key",
        allow_null=True,
        default=None,
        help_text="The customer's project it was charged to (docs/budgets.md); null: none.",
    )
    subscription = serializers.IntegerField(source="subscription_id", allow_null=True)
    period_start = serializers.DateTimeField(
        allow_null=True, help_text="The billing period the event was rated in."
    )
    provider = serializers.CharField()
    model = serializers.CharField()
    tokens = EventTokensSerializer(source="*")
    amount = Money(help_text="What the customer was charged for it, in `currency`.")
    currency = serializers.CharField()
    cost = Money(help_text="What the provider charges for it, USD (LLM events).")
    model_price = EventModelPriceSerializer(
        allow_null=True, help_text="null: not priced from the model catalog."
    )
    ledger_transaction = serializers.IntegerField(
        source="ledger_transaction_id",
        allow_null=True,
        help_text="The ledger transaction that posted it (GET /customers/{id}/transactions): "
        "one per customer per rating pass, shared by that pass's events, its legs their "
        "sums; null when it moved neither tokens nor money.",
    )

    def get_status(self, event) -> str:
        return "accepted"


class IncomingEventSerializer(serializers.Serializer):
    """An event accepted asynchronously and not rated (yet): ``pending``, or ``rejected``
    by rating with its error. Its ``id`` numbers the submission, not an event."""

    id = serializers.IntegerField()
    idempotency_key = serializers.CharField()
    customer = serializers.CharField(source="customer.external_id")
    event_name = serializers.CharField()
    timestamp = serializers.DateTimeField()
    received_at = serializers.DateTimeField()
    properties = serializers.JSONField()
    project = serializers.SerializerMethodField(help_text="The project named; null: none.")
    status = serializers.ChoiceField(choices=IncomingStatus.values)
    error = serializers.SerializerMethodField()

    def get_project(self, row: IncomingEvent) -> str | None:
        return row.project or None

    def get_error(self, row: IncomingEvent) -> dict | None:
        if row.status != IncomingStatus.REJECTED:
            return None
        return {
            "type": "invalid_request_error",
            "code": row.error_code,
            "message": row.error_message,
            "param": row.error_param or None,
        }


# GET /events lists rated events, or with status=pending|rejected the incoming ones.
EventListSerializer = type(
    "EventListSerializer",
    (serializers.Serializer,),
    {
        "data": PolymorphicProxySerializer(
            component_name="EventOrIncoming",
            serializers=[UsageEventSerializer, IncomingEventSerializer],
            resource_type_field_name=None,
            many=True,
        ),
        "has_more": serializers.BooleanField(),
        "__module__": __name__,
    },
)

EVENT_FILTERS = ("customer", "from", "to", "event_name", "status", "idempotency_key")
EVENT_STATUSES = ("accepted", *IncomingStatus.values)


class EventListCreateView(ingest.EventCreateView):
    required_scopes = {**ingest.INGEST, "GET": "read"}
    query_params = {"GET": (*EVENT_FILTERS, *query.PAGE_PARAMS)}

    @extend_schema(
        operation_id="events_list",
        tags=["usage"],
        summary="A customer's usage events, newest first, with price, cost, tokens and "
        "ledger transaction",
        description="Ordered by `timestamp`, then `id`, both descending. `from` is inclusive "
        "and `to` exclusive. `starting_after` is the `id` of the last event of the previous "
        "page (an event of the same customer); an event ingested meanwhile with an older "
        "timestamp appears on a later page, never twice. Events sent synchronously and "
        "refused are not stored; events accepted with Prefer: respond-async are listed with "
        "`status=pending` until rated and `status=rejected` if rating refused them.",
        parameters=[
            OpenApiParameter(
                "customer",
                {"type": "string", "maxLength": 200},
                required=True,
                description="The customer's external_id.",
            ),
            OpenApiParameter("from", str, description=CREATED_HELP + " Inclusive."),
            OpenApiParameter("to", str, description=CREATED_HELP + " Exclusive."),
            OpenApiParameter(
                "event_name", {"type": "string", "maxLength": 200}, description="Exactly."
            ),
            OpenApiParameter(
                "status",
                {"type": "string", "enum": list(EVENT_STATUSES)},
                description="accepted (the default): rated events. pending: accepted "
                "asynchronously (Prefer: respond-async), not rated yet. rejected: accepted "
                "asynchronously and refused by rating, with the error (sending the key "
                "again takes it up again). These two are ordered by arrival, newest first, "
                "and `starting_after` takes their `id`.",
            ),
            OpenApiParameter(
                "idempotency_key",
                {"type": "string", "maxLength": 255},
                description="The event sent under this key, whatever became of it: without "
                "`status`, the rated event if there is one, else the pending or rejected one.",
            ),
            *PAGE_PARAMETERS,
        ],
        responses={200: EventListSerializer, **errors(400, 404)},
    )
    def get(self, request):
        external_id = query.text(request, "customer")
        if external_id is None:
            raise APIError(
                400,
                "parameter_missing",
                "customer is required: events are listed per customer",
                param="customer",
            )
        since, until = query.time_range(request, "from", "to")
        event_name = query.text(request, "event_name")
        status = query.choice(request, "status", EVENT_STATUSES)
        key = query.text(request, "idempotency_key", max_length=255)
        limit = query.limit(request)
        after_id = query.object_id(request, "starting_after")
        customer = selectors.get_customer(external_id=external_id, param="customer")
        if status in IncomingStatus.values or (
            status is None
            and key is not None
            and not metering_selectors.event_exists(customer=customer, idempotency_key=key)
        ):
            # accepted asynchronously and not rated: newest arrival first, paged by id
            listed: QuerySet = metering_selectors.list_incoming(
                customer=customer,
                status=status,
                idempotency_key=key,
                since=since,
                until=until,
                event_name=event_name,
            )
            if after_id is not None:
                listed = listed.filter(id__lt=after_id)
            serializer: type[serializers.Serializer] = IncomingEventSerializer
        else:
            listed = metering_selectors.list_events(
                customer=customer, since=since, until=until, event_name=event_name
            )
            if key is not None:
                listed = listed.filter(idempotency_key=key)
            if after_id is not None:
                after = metering_selectors.event_cursor(event_id=after_id, customer=customer)
                if after is None:
                    raise query.invalid(
                        "starting_after",
                        "starting_after must be the id of an event of the customer",
                    )
                listed = metering_selectors.events_after(listed, after=after)
            serializer = UsageEventSerializer
        rows: list[Event | IncomingEvent] = list(listed[: limit + 1])
        for row in rows:
            row.customer = customer
        return Response(
            {
                "data": serializer(rows[:limit], many=True).data,
                "has_more": len(rows) > limit,
            }
        )
