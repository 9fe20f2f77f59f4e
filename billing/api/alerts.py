"""Alerts in the v1 API (``billing.alerts``):

    GET    /alerts                          definitions, newest first (?customer=&kind=&plan=)
    POST   /alerts                          create one (Idempotency-Key)
    GET    /alerts/{id}, PATCH, DELETE      one definition; PATCH changes name, threshold,
                                            currency, recipients, enabled
    GET    /customers/{external_id}/alerts  where the customer's subjects stand now
                                            (?status=triggered: the active ones)

What an alert watches (kind, scope, customer, plan, meter) is fixed once created; another
subject is another alert. Scopes: the GETs need ``read``, the writes ``write``.
"""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from billing import alerts, errors, limits, selectors
from billing.api import query
from billing.api.fields import CurrencyField, Money, StrictSerializer, list_response
from billing.api.idempotency import idempotent
from billing.api.pagination import PARAMETERS as PAGE_PARAMETERS
from billing.api.pagination import paginate
from billing.api.views import errors as error_responses
from billing.api.views import idempotency_parameter
from billing.models import Alert, AlertKind, AlertScope, AlertState, AlertStatus, Meter

MAX_VERSION = 2**31 - 1


class AlertSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=AlertKind.choices)
    scope = serializers.ChoiceField(choices=AlertScope.choices)
    customer = serializers.CharField(
        source="customer.external_id", allow_null=True, default=None, help_text="scope customer"
    )
    plan = serializers.SerializerMethodField(help_text="scope plan: the plan's code")
    plan_version = serializers.IntegerField(
        allow_null=True, help_text="null: every version of the plan."
    )
    threshold = Money(
        help_text="An amount (balance, spend), a number of credits, a share of the allowance "
        "(0.8 = 80 %), or 0 (negative margin)."
    )
    currency = serializers.SerializerMethodField(
        help_text="balance_below / spend_above; null: the customer's own currency."
    )
    meter = serializers.CharField(
        source="meter.code", allow_null=True, default=None, help_text="usage_above_share"
    )
    per_model = serializers.BooleanField()
    recipients = serializers.ListField(child=serializers.EmailField())
    enabled = serializers.BooleanField()
    source = serializers.CharField(  # type: ignore[assignment]  # a field named like Field.source
        help_text="api, admin or portal (the portal's own setting)."
    )
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_plan(self, alert: Alert) -> str | None:
        return alert.plan_code or None

    def get_currency(self, alert: Alert) -> str | None:
        return alert.currency or None


class AlertCreateSerializer(StrictSerializer):
    kind = serializers.ChoiceField(choices=AlertKind.choices)
    scope = serializers.ChoiceField(
        choices=AlertScope.choices,
        required=False,
        help_text="Default: customer when `customer` is given, plan when `plan` is.",
    )
    customer = serializers.CharField(
        max_length=200, required=False, help_text="The customer's external_id (scope customer)."
    )
    plan = serializers.SlugField(
        max_length=100, required=False, help_text="A plan's code (scope plan)."
    )
    plan_version = serializers.IntegerField(
        min_value=1,
        max_value=MAX_VERSION,
        required=False,
        help_text="Only subscribers of this version; absent: every version.",
    )
    threshold = Money(
        required=False,
        help_text="Required except for negative_margin (0). balance_below may be negative.",
    )
    currency = CurrencyField(
        units=limits.LEDGER_UNITS,
        required=False,
        help_text="balance_below / spend_above; absent: the customer's own currency.",
    )
    meter = serializers.SlugField(
        max_length=100, required=False, help_text="usage_above_share: the meter's code."
    )
    per_model = serializers.BooleanField(
        required=False, default=False, help_text="negative_margin: one subject per model."
    )
    recipients = serializers.ListField(
        child=serializers.EmailField(max_length=254),
        required=False,
        default=list,
        max_length=alerts.MAX_RECIPIENTS,
    )
    enabled = serializers.BooleanField(required=False, default=True)
    name = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)


class AlertUpdateSerializer(StrictSerializer):
    """Every field optional; what is absent is left as it is."""

    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    threshold = Money(required=False)
    currency = CurrencyField(
        units=limits.LEDGER_UNITS,
        required=False,
        allow_blank=True,
        help_text='"" for the customer\'s own currency.',
    )
    recipients = serializers.ListField(
        child=serializers.EmailField(max_length=254),
        required=False,
        max_length=alerts.MAX_RECIPIENTS,
    )
    enabled = serializers.BooleanField(required=False)


class AlertStateSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    alert = serializers.IntegerField(source="alert_id")
    kind = serializers.CharField(source="alert.kind")
    name = serializers.CharField(source="alert.name")
    subject = serializers.CharField(
        source="subject_key", help_text='"" or e.g. "day:2026-12-06|model:openai/gpt-4o".'
    )
    status = serializers.ChoiceField(choices=AlertStatus.choices)
    value = serializers.DecimalField(
        source="last_value", max_digits=60, decimal_places=12, allow_null=True
    )
    limit = serializers.DecimalField(max_digits=60, decimal_places=12, allow_null=True)
    crossings = serializers.IntegerField()
    triggered_at = serializers.DateTimeField(allow_null=True)
    resolved_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField()


def _meter(code: str | None) -> Meter | None:
    if code is None:
        return None
    meter = Meter.objects.filter(code=code).first()
    if meter is None:
        raise errors.MeterNotFound(f"no meter {code!r}", param="meter")
    return meter


def _payload(alert: Alert) -> dict:
    return AlertSerializer(alerts.get_alert(alert_id=alert.pk)).data


class AlertListCreateView(query.APIView):
    query_params = {"GET": ("customer", "kind", "plan", *query.PAGE_PARAMS)}

    @extend_schema(
        operation_id="alerts_list",
        tags=["alerts"],
        summary="Alert definitions, newest first",
        description="`customer` lists that customer's own alerts (not the plan alerts that "
        "reach it: GET /customers/{external_id}/alerts shows those). `starting_after` is an "
        "alert's `id`.",
        parameters=[
            OpenApiParameter(
                "customer",
                {"type": "string", "maxLength": 200},
                description="The customer's external_id.",
            ),
            OpenApiParameter("kind", {"type": "string", "enum": AlertKind.values}, description=""),
            OpenApiParameter(
                "plan", {"type": "string", "maxLength": 100}, description="A plan's code."
            ),
            *PAGE_PARAMETERS,
        ],
        responses={200: list_response(AlertSerializer), **error_responses(400, 404)},
    )
    def get(self, request):
        external_id = query.text(request, "customer")
        kind = query.choice(request, "kind", AlertKind.values)
        plan_code = query.text(request, "plan", max_length=100)
        customer = (
            None
            if external_id is None
            else selectors.get_customer(external_id=external_id, param="customer")
        )
        found = alerts.list_alerts(customer=customer, kind=kind, plan_code=plan_code)
        return Response(paginate(request, found, lambda alert: AlertSerializer(alert).data))

    @extend_schema(
        operation_id="alerts_create",
        tags=["alerts"],
        summary="Create an alert",
        description="Fires once each time its value crosses the threshold (strictly: a "
        "value equal to it is no crossing) and re-arms when the value recovers; e-mails the "
        "recipients and emits `alert.triggered` / `alert.resolved` (and `wallet.low_balance` "
        "for balance_below). Evaluated every minute. Refused with 400 invalid_parameter "
        "(`param` naming the field) when the definition makes no sense, 404 when the "
        "customer, plan or meter does not exist.",
        request=AlertCreateSerializer,
        responses={201: AlertSerializer, **error_responses(400, 404, 409)},
        parameters=[idempotency_parameter()],
        examples=[
            OpenApiExample(
                "Low balance of one customer",
                request_only=True,
                value={
                    "kind": "balance_below",
                    "customer": "acme-42",
                    "threshold": "20.00",
                    "recipients": ["ops@acme.test"],
                },
            ),
            OpenApiExample(
                "80 % of the included tokens, for every subscriber of a plan",
                request_only=True,
                value={
                    "kind": "usage_above_share",
                    "plan": "pro",
                    "meter": "tokens",
                    "threshold": "0.8",
                },
            ),
            OpenApiExample(
                "Models that lose money, per day",
                request_only=True,
                value={"kind": "negative_margin", "scope": "all", "per_model": True},
            ),
        ],
    )
    @idempotent
    def post(self, request):
        data = AlertCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        external_id = values.pop("customer", None)
        plan_code = values.pop("plan", "")
        scope = values.pop("scope", None) or (
            AlertScope.CUSTOMER
            if external_id is not None
            else AlertScope.PLAN
            if plan_code
            else AlertScope.ALL
            if values["kind"] == AlertKind.NEGATIVE_MARGIN
            else None
        )
        if scope is None:
            raise errors.ValidationFailed(
                "name the customer (or the plan) the alert watches", param="customer"
            )
        if "threshold" not in values:
            if values["kind"] != AlertKind.NEGATIVE_MARGIN:
                raise errors.ValidationFailed("threshold is required", param="threshold")
            values["threshold"] = Decimal(0)
        customer = (
            None
            if external_id is None
            else selectors.get_customer(external_id=external_id, param="customer")
        )
        alert = alerts.create_alert(
            scope=scope,
            customer=customer,
            plan_code=plan_code,
            meter=_meter(values.pop("meter", None)),
            **values,
        )
        return Response(_payload(alert), status=status.HTTP_201_CREATED)


class AlertDetailView(query.APIView):
    @extend_schema(
        operation_id="alerts_retrieve",
        tags=["alerts"],
        summary="An alert",
        responses={200: AlertSerializer, **error_responses(404)},
    )
    def get(self, request, alert_id: int):
        return Response(AlertSerializer(alerts.get_alert(alert_id=alert_id)).data)

    @extend_schema(
        operation_id="alerts_update",
        tags=["alerts"],
        summary="Change an alert's name, threshold, currency, recipients or enabled flag",
        description="A partial update. A new threshold or currency re-arms the alert's "
        "triggered subjects: one still past the new threshold fires again, with the new "
        "figures.",
        request=AlertUpdateSerializer,
        responses={200: AlertSerializer, **error_responses(400, 404)},
    )
    def patch(self, request, alert_id: int):
        alert = alerts.get_alert(alert_id=alert_id)
        data = AlertUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        alert = alerts.update_alert(alert=alert, **data.validated_data)
        return Response(_payload(alert))

    @extend_schema(
        operation_id="alerts_destroy",
        tags=["alerts"],
        summary="Delete an alert with its states and history",
        description="Events already emitted stay in the outbox.",
        request=None,
        responses={204: None, **error_responses(404)},
    )
    def delete(self, request, alert_id: int):
        alerts.delete_alert(alert=alerts.get_alert(alert_id=alert_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class CustomerAlertsView(query.APIView):
    query_params = {"GET": ("status", *query.PAGE_PARAMS)}

    @extend_schema(
        operation_id="customers_alerts",
        tags=["alerts"],
        summary="Where the customer's alert subjects stand (its own and its plan's alerts)",
        description="One state per alert and subject (a day, a model), with the value last "
        "seen and what it was compared with; `status=triggered` gives the active ones. "
        "`starting_after` is a state's `id`.",
        parameters=[
            OpenApiParameter(
                "status", {"type": "string", "enum": AlertStatus.values}, description=""
            ),
            *PAGE_PARAMETERS,
        ],
        responses={200: list_response(AlertStateSerializer), **error_responses(400, 404)},
    )
    def get(self, request, external_id: str):
        customer = selectors.get_customer(external_id=external_id)
        state_filter = query.choice(request, "status", AlertStatus.values)
        found = alerts.alert_states(customer=customer)
        if state_filter is not None:
            found = found.filter(status=state_filter)
        return Response(paginate(request, found, _state))


def _state(state: AlertState) -> dict:
    return AlertStateSerializer(state).data
