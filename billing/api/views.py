"""The product API, version 1 (see shared API.md). Views are thin: parse, call one service
or selector, serialize."""

from __future__ import annotations

from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import serializers, status
from rest_framework.response import Response

from billing import selectors, services
from billing.api import serializers as s
from billing.api.errors import reference_reused
from billing.api.fields import list_response
from billing.api.idempotency import idempotent
from billing.api.pagination import PARAMETERS as PAGE_PARAMETERS
from billing.api.pagination import page_parameters, paginate
from billing.api.query import PAGE_PARAMS, APIView
from billing.models import Meter, Subscription
from ledger import errors as ledger_errors
from metering import selectors as metering_selectors


class ErrorDetailSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="invalid_request_error, authentication_error, …")
    code = serializers.CharField(help_text="Stable, machine-readable.")
    message = serializers.CharField(help_text="For humans.")
    param = serializers.CharField(allow_null=True, help_text="The parameter at fault, if any.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    described = {
        400: "Invalid request (code: invalid_parameter, parameter_missing, unknown_parameter, "
        "duplicate_key, amount_too_large, invalid_json, …); see docs/api.md",
        401: "Missing or invalid API key (authentication_required, invalid_api_key, "
        "api_key_revoked)",
        402: "Cannot be paid (insufficient_funds, credit_limit_exceeded, insufficient_credits, "
        "budget_exceeded)",
        403: "The key lacks the scope (insufficient_scope)",
        404: "Not found",
        409: "Conflict (idempotency_key_reused, idempotency_key_in_use, customer_exists, "
        "period_close_pending, …)",
        413: "Too large (batch_too_large, payload_too_large)",
        422: "Cannot be processed as sent (unknown_model, unknown_event_name, "
        "no_active_subscription, timestamp_before_subscription, timestamp_after_subscription, "
        "period_closed)",
        429: "Rate limited (rate_limited); see Retry-After",
    }
    # 400: every route refuses a query parameter it does not take (unknown_parameter).
    chosen = {400, 401, 403, 429, *statuses}
    return {
        code: OpenApiResponse(ErrorSerializer, description=described[code])
        for code in sorted(chosen)
    }


def idempotency_parameter() -> OpenApiParameter:
    return OpenApiParameter(
        "Idempotency-Key",
        {"type": "string", "minLength": 1, "maxLength": 255},
        OpenApiParameter.HEADER,
        required=False,
        description="Retries with the same key and body return the first response "
        "(Idempotent-Replayed: true); another body with the key is refused (409).",
    )


def _customer_payload(customer) -> dict:
    """The customer as GET /customers shows each: read through its prefetches (wallets,
    live subscription with its phases, balances), five queries."""
    return s.customer_payloads([selectors.list_customers().get(pk=customer.pk)])[0]


# --- customers ------------------------------------------------------------------------------


class CustomerCreateView(APIView):
    @extend_schema(
        operation_id="customers_create",
        tags=["customers"],
        summary="Create a customer and its wallet",
        request=s.CustomerCreateSerializer,
        responses={201: s.CustomerSerializer, **errors(400, 409)},
        parameters=[idempotency_parameter()],
        examples=[
            OpenApiExample(
                "Postpaid customer",
                request_only=True,
                value={
                    "external_id": "acme-42",
                    "name": "Acme Robotics",
                    "email": "billing@acme.test",
                    "currency": "USD",
                    "billing_mode": "postpaid",
                    "credit_limit": "500.00",
                },
            )
        ],
    )
    @idempotent
    def post(self, request):
        data = s.CustomerCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        address = values.pop("address", {})
        customer = services.create_customer(**values, **address)
        return Response(_customer_payload(customer), status=status.HTTP_201_CREATED)


class CustomerDetailView(APIView):
    @extend_schema(
        operation_id="customers_retrieve",
        tags=["customers"],
        summary="A customer with its wallets and subscription",
        responses={200: s.CustomerSerializer, **errors(404)},
    )
    def get(self, request, external_id: str):
        return Response(_customer_payload(selectors.get_customer(external_id=external_id)))


class CustomerBalanceView(APIView):
    @extend_schema(
        operation_id="customers_balance",
        tags=["customers"],
        summary="Balances per currency, credits and allowances left this period",
        responses={200: s.CustomerBalanceSerializer, **errors(404)},
    )
    def get(self, request, external_id: str):
        customer = selectors.get_customer(external_id=external_id)
        balance = metering_selectors.customer_balance(customer)
        return Response(s.CustomerBalanceSerializer(balance).data)


class TopUpView(APIView):
    @extend_schema(
        operation_id="customers_top_up",
        tags=["customers"],
        summary="Add funds to the customer's wallet",
        request=s.TopUpSerializer,
        responses={
            201: s.TransactionSerializer,
            200: s.TransactionSerializer,
            **errors(400, 404, 409),
        },
        parameters=[idempotency_parameter()],
        examples=[
            OpenApiExample(
                "Top-up", request_only=True, value={"amount": "25.00", "reference": "pi_3Nx…"}
            )
        ],
    )
    @idempotent
    def post(self, request, external_id: str):
        customer = selectors.get_customer(external_id=external_id)
        data = s.TopUpSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            posted = services.top_up(customer=customer, **data.validated_data)
        except ledger_errors.ReferenceReused:
            raise reference_reused(data.validated_data.get("reference"), "top-up") from None
        transaction = selectors.ledger_transaction(posted.pk)
        code = status.HTTP_200_OK if posted.replayed else status.HTTP_201_CREATED
        return Response(s.TransactionSerializer(transaction).data, status=code)


class CreditGrantListCreateView(APIView):
    query_params = {"GET": PAGE_PARAMS}

    @extend_schema(
        operation_id="customers_credit_grants",
        tags=["customers"],
        summary="The customer's credit grants, newest first (live and ended)",
        parameters=PAGE_PARAMETERS,
        responses={200: list_response(s.CreditGrantDetailSerializer), **errors(400, 404)},
    )
    def get(self, request, external_id: str):
        customer = selectors.get_customer(external_id=external_id)
        queryset = customer.credit_grants.select_related("customer")
        return Response(
            paginate(request, queryset, lambda g: s.CreditGrantDetailSerializer(g).data)
        )

    @extend_schema(
        operation_id="customers_grant_credits",
        tags=["customers"],
        summary="Grant credits (promotional or an adjustment), with a priority and expiry",
        description=(
            "Credits land in the customer's CREDITS wallet at once. Debits draw on grants "
            "lowest priority first, then soonest expiry, then oldest; what is left at "
            "expires_at expires."
        ),
        request=s.CreditGrantCreateSerializer,
        responses={
            201: s.CreditGrantDetailSerializer,
            200: s.CreditGrantDetailSerializer,
            **errors(400, 404, 409),
        },
        parameters=[idempotency_parameter()],
        examples=[
            OpenApiExample(
                "Promotional credits",
                request_only=True,
                value={
                    "amount": "5000",
                    "name": "Welcome credits",
                    "expires_at": "2027-01-31T00:00:00Z",
                    "reference": "welcome-acme",
                },
            )
        ],
    )
    @idempotent
    def post(self, request, external_id: str):
        from billing import credits

        customer = selectors.get_customer(external_id=external_id)
        data = s.CreditGrantCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        grant = credits.grant_credits(customer=customer, **data.validated_data)
        code = status.HTTP_200_OK if grant.replayed else status.HTTP_201_CREATED
        return Response(s.CreditGrantDetailSerializer(grant).data, status=code)


class CustomerTransactionsView(APIView):
    query_params = {"GET": PAGE_PARAMS}

    @extend_schema(
        operation_id="customers_transactions",
        tags=["customers"],
        summary="The customer's ledger history, newest first, with entries",
        parameters=PAGE_PARAMETERS,
        responses={200: list_response(s.TransactionSerializer), **errors(400, 404)},
    )
    def get(self, request, external_id: str):
        customer = selectors.get_customer(external_id=external_id)
        limit, after = page_parameters(request)
        # the page's ids from the index first (billing.selectors.customer_transaction_ids)
        ids = selectors.customer_transaction_ids(customer, limit=limit + 1, before=after)
        queryset = selectors.transactions_with_entries(ids)
        return Response(paginate(request, queryset, lambda t: s.TransactionSerializer(t).data))


# --- meters and plans -------------------------------------------------------------------------


class MeterListCreateView(APIView):
    query_params = {"GET": PAGE_PARAMS}

    @extend_schema(
        operation_id="meters_list",
        tags=["meters"],
        summary="Meters",
        parameters=PAGE_PARAMETERS,
        responses={200: list_response(s.MeterSerializer), **errors(400)},
    )
    def get(self, request):
        return Response(paginate(request, Meter.objects.all(), lambda m: s.MeterSerializer(m).data))

    @extend_schema(
        operation_id="meters_create",
        tags=["meters"],
        summary="Create a meter",
        request=s.MeterSerializer,
        responses={201: s.MeterSerializer, **errors(400, 409)},
        parameters=[idempotency_parameter()],
        examples=[
            OpenApiExample(
                "Output tokens by model",
                request_only=True,
                value={
                    "code": "output_tokens",
                    "event_name": "llm.completion",
                    "aggregation": "sum",
                    "property": "usage.output_tokens",
                    "group_by": ["model"],
                    "unit": "tokens",
                },
            )
        ],
    )
    @idempotent
    def post(self, request):
        data = s.MeterSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        meter = services.create_meter(**data.validated_data)
        return Response(s.MeterSerializer(meter).data, status=status.HTTP_201_CREATED)


class PlanListCreateView(APIView):
    query_params = {"GET": PAGE_PARAMS}

    @extend_schema(
        operation_id="plans_list",
        tags=["plans"],
        summary="Published plans (latest version of each) with their charges",
        parameters=PAGE_PARAMETERS,
        responses={200: list_response(s.PlanSerializer), **errors(400)},
    )
    def get(self, request):
        return Response(
            paginate(request, selectors.latest_plans(), lambda p: s.PlanSerializer(p).data)
        )

    @extend_schema(
        operation_id="plans_create",
        tags=["plans"],
        summary="Publish a plan, or a new version of one",
        description="An unchanged plan returns the current version with 200; a changed one "
        "is published as the next version with 201. Subscriptions keep the "
        "version they signed.",
        request=s.PlanSerializer,
        responses={201: s.PlanSerializer, 200: s.PlanSerializer, **errors(400, 404, 409)},
        parameters=[idempotency_parameter()],
        examples=[
            OpenApiExample(
                "Graduated output tokens",
                request_only=True,
                value={
                    "code": "pro",
                    "name": "Pro",
                    "currency": "USD",
                    "interval": "month",
                    "base_fee": "49.00",
                    "trial_days": 14,
                    "consumption_model": "metered",
                    "charges": [
                        {
                            "meter": "output_tokens",
                            "price_model": "graduated",
                            "included_quantity": "1000000",
                            "tiers": [
                                {"up_to": "10000000", "unit_price": "0.000002"},
                                {"up_to": None, "unit_price": "0.0000015"},
                            ],
                        }
                    ],
                },
            )
        ],
    )
    @idempotent
    def post(self, request):
        data = s.PlanSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        spec = selectors.plan_spec_from_validated(data.validated_data)
        user_id = getattr(request.user, "pk", None)
        plan, created = services.publish_plan(spec=spec, published_by_id=user_id)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(s.PlanSerializer(selectors.plan_with_charges(plan.pk)).data, status=code)


class PlanDetailView(APIView):
    query_params = {"GET": ("version",)}

    @extend_schema(
        operation_id="plans_retrieve",
        tags=["plans"],
        summary="A plan's latest version (or ?version=N)",
        parameters=[
            OpenApiParameter(
                "version",
                {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                description="A specific version.",
            )
        ],
        responses={200: s.PlanSerializer, **errors(400, 404)},
    )
    def get(self, request, code: str):
        version = request.query_params.get("version")
        plan = selectors.get_plan(code=code, version=version)
        return Response(s.PlanSerializer(plan).data)


# --- subscriptions ----------------------------------------------------------------------------


def _subscription_payload(subscription: Subscription) -> dict:
    return s.SubscriptionSerializer(selectors.subscription_with_relations(subscription.pk)).data


class SubscriptionCreateView(APIView):
    @extend_schema(
        operation_id="subscriptions_create",
        tags=["subscriptions"],
        summary="Subscribe a customer to a plan",
        request=s.SubscriptionCreateSerializer,
        responses={201: s.SubscriptionSerializer, **errors(400, 404, 409)},
        parameters=[idempotency_parameter()],
        examples=[
            OpenApiExample(
                "Back-dated (every period since the start is invoiced)",
                request_only=True,
                value={
                    "customer": "acme-42",
                    "plan": "pro",
                    "start": "2026-09-15T00:00:00Z",
                    "trial_days": 0,
                },
            )
        ],
    )
    @idempotent
    def post(self, request):
        data = s.SubscriptionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        customer = selectors.get_customer(external_id=values["customer"], param="customer")
        plan = selectors.get_plan(
            code=values["plan"], version=values.get("plan_version"), param="plan"
        )
        subscription = services.create_subscription(
            customer=customer,
            plan=plan,
            start=values.get("start"),
            trial_days=values.get("trial_days"),
            billing_time=values.get("billing_time"),
            billing_anchor_day=values.get("billing_anchor_day"),
        )
        return Response(_subscription_payload(subscription), status=status.HTTP_201_CREATED)


class SubscriptionDetailView(APIView):
    @extend_schema(
        operation_id="subscriptions_retrieve",
        tags=["subscriptions"],
        summary="A subscription with its plan phases",
        responses={200: s.SubscriptionSerializer, **errors(404)},
    )
    def get(self, request, subscription_id: int):
        return Response(
            s.SubscriptionSerializer(selectors.subscription_with_relations(subscription_id)).data
        )


class SubscriptionChangeView(APIView):
    @extend_schema(
        operation_id="subscriptions_change",
        tags=["subscriptions"],
        summary="Change plan now (base fee prorated by time) or at period end",
        request=s.SubscriptionChangeSerializer,
        responses={200: s.SubscriptionChangeResultSerializer, **errors(400, 404, 409)},
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request, subscription_id: int):
        data = s.SubscriptionChangeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        selectors.subscription_with_relations(subscription_id)  # 404 before plan errors
        plan = selectors.get_plan(
            code=values["plan"], version=values.get("plan_version"), param="plan"
        )
        subscription = services.change_subscription(
            subscription_id=subscription_id, plan=plan, at_period_end=values["at"] == "period_end"
        )
        return Response(
            s.SubscriptionChangeResultSerializer(
                {
                    "subscription": selectors.subscription_with_relations(subscription.pk),
                    "proration": services.base_fee_proration(subscription=subscription),
                }
            ).data
        )


class SubscriptionCancelView(APIView):
    @extend_schema(
        operation_id="subscriptions_cancel",
        tags=["subscriptions"],
        summary="Cancel now or at the end of the current period",
        request=s.SubscriptionCancelSerializer,
        responses={200: s.SubscriptionSerializer, **errors(400, 404, 409)},
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request, subscription_id: int):
        data = s.SubscriptionCancelSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        selectors.subscription_with_relations(subscription_id)
        subscription = services.cancel_subscription(
            subscription_id=subscription_id, at_period_end=data.validated_data["at"] == "period_end"
        )
        return Response(_subscription_payload(subscription))
