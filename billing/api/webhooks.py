"""Outbound webhooks in the API: the seller's endpoints (``/webhook-endpoints``), the
deliveries of each with their attempt log, a manual resend, and the outbound events
(``/webhook-events``). The secret of an endpoint is in the answer of its creation and of
``rotate-secret`` only. GETs need ``read``; POST, PATCH and DELETE need ``write``.

The payload of each event type is documented in the schema's ``webhooks`` section
(``billing.api.webhook_schema``)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from billing import selectors, webhooks
from billing.api import query
from billing.api.fields import MetadataField, NoBody, StrictSerializer, list_response
from billing.api.idempotency import idempotent
from billing.api.pagination import PARAMETERS as PAGE_PARAMETERS
from billing.api.pagination import paginate
from billing.api.query import PAGE_PARAMS, APIView
from billing.api.views import errors, idempotency_parameter
from billing.models import (
    ALL_EVENTS,
    DeliveryStatus,
    EndpointStatus,
    EventType,
    OutboundEvent,
    WebhookDelivery,
    WebhookEndpoint,
)

EVENT_TYPE_CHOICES = [ALL_EVENTS, *EventType.values]

# --- serializers ------------------------------------------------------------------------------


class WebhookEndpointSerializer(serializers.ModelSerializer):
    enabled_events = serializers.ListField(child=serializers.CharField())
    metadata = serializers.DictField()

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "description",
            "enabled_events",
            "status",
            "disabled_reason",
            "disabled_at",
            "consecutive_failures",
            "failing_since",
            "secret_rotated_at",
            "metadata",
            "created_at",
            "updated_at",
        ]


class WebhookEndpointWithSecretSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(
        allow_null=True,
        help_text="whsec_…: verify the signatures with it. Shown here only, once: a replay "
        "of this request (same Idempotency-Key, Idempotent-Replayed: true) answers null, as "
        "the secret is not stored with the idempotency record — rotate it if it was lost.",
    )

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]


class _EventTypes(serializers.ListField):
    def __init__(self, **kwargs):
        super().__init__(
            child=serializers.ChoiceField(choices=EVENT_TYPE_CHOICES),
            min_length=1,
            max_length=len(EVENT_TYPE_CHOICES),
            **kwargs,
        )


class WebhookEndpointCreateSerializer(StrictSerializer):
    url = serializers.CharField(
        max_length=2000, help_text="https:// and a public address (http in development)."
    )
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    enabled_events = _EventTypes(
        required=False,
        default=[ALL_EVENTS],
        help_text='Event types to receive, or ["*"] (the default) for all of them.',
    )
    metadata = MetadataField()


class WebhookEndpointUpdateSerializer(StrictSerializer):
    url = serializers.CharField(max_length=2000, required=False)
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    enabled_events = _EventTypes(required=False)
    metadata = MetadataField(default=serializers.empty)
    status = serializers.ChoiceField(
        choices=EndpointStatus.choices,
        required=False,
        help_text="disabled stops deliveries; enabled starts them again and clears the "
        "failure count.",
    )


class ResendEventSerializer(StrictSerializer):
    event = serializers.CharField(
        max_length=40, help_text="The event's id (evt_…, the webhook-id header)."
    )


class DeletedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    deleted = serializers.BooleanField()


class WebhookAttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    manual = serializers.BooleanField()
    url = serializers.CharField()
    started_at = serializers.DateTimeField()
    duration_ms = serializers.IntegerField()
    succeeded = serializers.BooleanField()
    status_code = serializers.IntegerField(allow_null=True)
    response_body = serializers.CharField(allow_blank=True, help_text="The first 2,000 characters.")
    error = serializers.CharField(allow_blank=True, help_text="A timeout, a refused connection…")


class WebhookDeliverySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    endpoint = serializers.IntegerField(source="endpoint_id")
    event = serializers.CharField(source="event.public_id", help_text="The webhook-id header.")
    event_type = serializers.CharField(source="event.type")
    status = serializers.ChoiceField(choices=DeliveryStatus.choices)
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    last_attempt_at = serializers.DateTimeField(allow_null=True)
    last_status_code = serializers.IntegerField(allow_null=True)
    last_response_body = serializers.CharField(allow_blank=True)
    last_error = serializers.CharField(allow_blank=True)
    succeeded_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class WebhookDeliveryDetailSerializer(WebhookDeliverySerializer):
    attempt_log = WebhookAttemptSerializer(many=True, help_text="Newest first.")


class OutboundEventSerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id", help_text="The webhook-id header.")
    type = serializers.ChoiceField(choices=EventType.values)
    customer = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField(help_text="The payload's timestamp.")
    # (a field named like Serializer.data: DRF's metaclass takes declared fields off the
    # class, so nothing is shadowed; the stubs see a class attribute)
    data = serializers.DictField(  # type: ignore[assignment]
        help_text="The payload's data (see the schema's webhooks)."
    )

    def get_customer(self, event: OutboundEvent) -> str | None:
        return event.customer.external_id if event.customer else None


class OutboundEventPageSerializer(OutboundEventSerializer):
    cursor = serializers.IntegerField(
        source="pk", help_text="Pass it as starting_after for the next page."
    )


def without_secret(body):
    """What an Idempotency-Key stores of an answer carrying a secret: the answer with
    ``secret`` null (the secret is shown once; a replay does not show it again)."""
    if isinstance(body, dict) and "secret" in body:
        return {**body, "secret": None}
    return body


def _delivery(delivery_id: int) -> WebhookDelivery:
    found = (
        WebhookDelivery.objects.select_related("event")
        .prefetch_related("attempt_log")
        .filter(pk=delivery_id)
        .first()
    )
    if found is None:
        raise webhooks.WebhookDeliveryNotFound(f"webhook delivery {delivery_id} does not exist")
    return found


# --- endpoints --------------------------------------------------------------------------------


class WebhookEndpointListCreateView(APIView):
    query_params = {"GET": PAGE_PARAMS}

    @extend_schema(
        operation_id="webhook_endpoints_list",
        tags=["webhooks"],
        summary="Webhook endpoints, newest first",
        parameters=PAGE_PARAMETERS,
        responses={200: list_response(WebhookEndpointSerializer), **errors(400)},
    )
    def get(self, request):
        return Response(
            paginate(
                request,
                WebhookEndpoint.objects.all(),
                lambda e: WebhookEndpointSerializer(e).data,
            )
        )

    @extend_schema(
        operation_id="webhook_endpoints_create",
        tags=["webhooks"],
        summary="Add an endpoint; its signing secret is in this answer only",
        description="Events of the types chosen are POSTed to the URL, signed the Standard "
        "Webhooks way (webhook-id, webhook-timestamp, webhook-signature) with the secret "
        "returned here, once. An invalid or refused URL is `invalid_url`.",
        request=WebhookEndpointCreateSerializer,
        responses={201: WebhookEndpointWithSecretSerializer, **errors(400, 409)},
        parameters=[idempotency_parameter()],
        examples=[
            OpenApiExample(
                "Invoices only",
                request_only=True,
                value={
                    "url": "https://billing-hooks.example.com/ai-billing",
                    "description": "ERP sync",
                    "enabled_events": ["invoice.finalized", "invoice.paid"],
                },
            )
        ],
    )
    @idempotent(redact=without_secret)
    def post(self, request):
        data = WebhookEndpointCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint = webhooks.create_endpoint(**data.validated_data)
        return Response(
            WebhookEndpointWithSecretSerializer(endpoint).data, status=status.HTTP_201_CREATED
        )


class WebhookEndpointDetailView(APIView):
    @extend_schema(
        operation_id="webhook_endpoints_retrieve",
        tags=["webhooks"],
        summary="A webhook endpoint (without its secret)",
        responses={200: WebhookEndpointSerializer, **errors(404)},
    )
    def get(self, request, endpoint_id: int):
        return Response(WebhookEndpointSerializer(webhooks.get_endpoint(endpoint_id)).data)

    @extend_schema(
        operation_id="webhook_endpoints_update",
        tags=["webhooks"],
        summary="Change an endpoint's URL, event types, description or metadata; "
        "disable or enable it",
        request=WebhookEndpointUpdateSerializer,
        responses={200: WebhookEndpointSerializer, **errors(400, 404)},
    )
    def patch(self, request, endpoint_id: int):
        webhooks.get_endpoint(endpoint_id)  # 404 before the body's errors
        data = WebhookEndpointUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        state = values.pop("status", None)
        enabled = None if state is None else state == EndpointStatus.ENABLED
        endpoint = webhooks.update_endpoint(endpoint_id=endpoint_id, enabled=enabled, **values)
        return Response(WebhookEndpointSerializer(endpoint).data)

    @extend_schema(
        operation_id="webhook_endpoints_delete",
        tags=["webhooks"],
        summary="Delete an endpoint and its delivery log",
        responses={200: DeletedSerializer, **errors(404)},
    )
    def delete(self, request, endpoint_id: int):
        webhooks.delete_endpoint(endpoint_id=endpoint_id)
        return Response({"id": endpoint_id, "deleted": True})


class WebhookEndpointRotateSecretView(APIView):
    @extend_schema(
        operation_id="webhook_endpoints_rotate_secret",
        tags=["webhooks"],
        summary="A new signing secret, in this answer only; the old one stops at once",
        request=NoBody,
        responses={200: WebhookEndpointWithSecretSerializer, **errors(400, 404, 409)},
        parameters=[idempotency_parameter()],
    )
    @idempotent(redact=without_secret)
    def post(self, request, endpoint_id: int):
        NoBody(data=request.data).is_valid(raise_exception=True)
        endpoint = webhooks.rotate_secret(endpoint_id=endpoint_id)
        return Response(WebhookEndpointWithSecretSerializer(endpoint).data)


class WebhookEndpointResendEventView(APIView):
    @extend_schema(
        operation_id="webhook_endpoints_resend_event",
        tags=["webhooks"],
        summary="Send an event to this endpoint now: again, or for the first time",
        description="For an event the endpoint never got (created after it, or not wanting "
        "its type then) or got and lost. The attempt is queued; read the delivery to see "
        "its outcome. An unknown event is `webhook_event_not_found` (404).",
        request=ResendEventSerializer,
        responses={202: WebhookDeliverySerializer, **errors(400, 404, 409)},
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request, endpoint_id: int):
        webhooks.get_endpoint(endpoint_id)  # 404 before the body's errors
        data = ResendEventSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        public_id = data.validated_data["event"]
        event = OutboundEvent.objects.filter(public_id=public_id).first()
        if event is None:
            raise webhooks.WebhookEventNotFound(
                f"event {public_id!r} does not exist", param="event"
            )
        delivery = webhooks.resend_event(event_id=event.pk, endpoint_id=endpoint_id)
        return Response(
            WebhookDeliverySerializer(_delivery(delivery.pk)).data,
            status=status.HTTP_202_ACCEPTED,
        )


DELIVERY_FILTERS = ("status",)


class WebhookEndpointDeliveriesView(APIView):
    query_params = {"GET": (*DELIVERY_FILTERS, *PAGE_PARAMS)}

    @extend_schema(
        operation_id="webhook_endpoints_deliveries",
        tags=["webhooks"],
        summary="An endpoint's deliveries, newest first",
        parameters=[
            OpenApiParameter(
                "status", {"type": "string", "enum": DeliveryStatus.values}, description=""
            ),
            *PAGE_PARAMETERS,
        ],
        responses={200: list_response(WebhookDeliverySerializer), **errors(400, 404)},
    )
    def get(self, request, endpoint_id: int):
        endpoint = webhooks.get_endpoint(endpoint_id)
        chosen = query.choice(request, "status", DeliveryStatus.values)
        deliveries = endpoint.deliveries.select_related("event")
        if chosen is not None:
            deliveries = deliveries.filter(status=chosen)
        return Response(paginate(request, deliveries, lambda d: WebhookDeliverySerializer(d).data))


class WebhookDeliveryDetailView(APIView):
    @extend_schema(
        operation_id="webhook_deliveries_retrieve",
        tags=["webhooks"],
        summary="A delivery with the log of its attempts and the responses",
        responses={200: WebhookDeliveryDetailSerializer, **errors(404)},
    )
    def get(self, request, delivery_id: int):
        return Response(WebhookDeliveryDetailSerializer(_delivery(delivery_id)).data)


class WebhookDeliveryResendView(APIView):
    @extend_schema(
        operation_id="webhook_deliveries_resend",
        tags=["webhooks"],
        summary="Send the delivery's event again, now (one more attempt)",
        description="Whatever the delivery's status: a failed delivery, or one the receiver "
        "lost. The attempt is queued; read the delivery to see its outcome.",
        request=NoBody,
        responses={202: WebhookDeliverySerializer, **errors(400, 404, 409)},
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request, delivery_id: int):
        NoBody(data=request.data).is_valid(raise_exception=True)
        webhooks.resend_delivery(delivery_id=delivery_id)
        return Response(
            WebhookDeliverySerializer(_delivery(delivery_id)).data,
            status=status.HTTP_202_ACCEPTED,
        )


# --- events -----------------------------------------------------------------------------------


class OutboundEventListView(APIView):
    query_params = {"GET": ("type", "customer", *PAGE_PARAMS)}

    @extend_schema(
        operation_id="webhook_events_list",
        tags=["webhooks"],
        summary="Outbound events (what the webhooks deliver), newest first",
        description="Kept whether or not an endpoint received them. `starting_after` is "
        "the `id` of an event's position, as given by `cursor`.",
        parameters=[
            OpenApiParameter("type", {"type": "string", "enum": EventType.values}, description=""),
            OpenApiParameter(
                "customer",
                {"type": "string", "maxLength": 200},
                description="The customer's external_id.",
            ),
            *PAGE_PARAMETERS,
        ],
        responses={200: list_response(OutboundEventPageSerializer), **errors(400, 404)},
    )
    def get(self, request):
        kind = query.choice(request, "type", EventType.values)
        external_id = query.text(request, "customer")
        events = OutboundEvent.objects.select_related("customer")
        if kind is not None:
            events = events.filter(type=kind)
        if external_id is not None:
            customer = selectors.get_customer(external_id=external_id, param="customer")
            events = events.filter(customer=customer)
        return Response(paginate(request, events, lambda e: OutboundEventPageSerializer(e).data))
