"""The list routes and the customer update of the v1 API:

``GET /customers``, ``GET /subscriptions`` (cursor-paginated, filtered, unknown query
parameters refused: ``billing.api.query``) and ``PATCH /customers/{id}``; ``GET /events``
is metering's (``metering.api.events``).

Each route shares its path with a POST (or GET) view of ``billing.api.views``; the classes
here extend those views with the new method, so that the existing handlers stay where they
are. Scopes: the GETs need ``read``, PATCH ``write``.
API keys belong to the installation (the product's backend), not to one customer: the
lists cover every customer, as GET /invoices does.
"""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
)
from rest_framework import serializers
from rest_framework.response import Response

from billing import selectors, services
from billing.api import query, views
from billing.api import serializers as s
from billing.api.fields import MetadataField, Money, StrictSerializer, list_response
from billing.api.pagination import PARAMETERS as PAGE_PARAMETERS
from billing.api.pagination import paginate
from billing.api.query import CREATED_HELP
from billing.api.views import errors
from billing.models import BillingMode, CollectionMethod, SubscriptionStatus

# --- customers ----------------------------------------------------------------------------


CUSTOMER_FILTERS = ("email", "billing_mode", "created_from", "created_to")


class CustomerUpdateSerializer(StrictSerializer):
    """Every field optional; what is absent is left as it is."""

    name = serializers.CharField(max_length=200, required=False)
    email = serializers.EmailField(max_length=254, required=False, allow_blank=True)
    address = s.AddressSerializer(required=False, help_text="Only the address fields given change.")
    tax_id = serializers.CharField(max_length=50, required=False, allow_blank=True)
    metadata = MetadataField(
        default=serializers.empty, help_text="Replaces the whole metadata object."
    )
    collection_method = serializers.ChoiceField(
        choices=CollectionMethod.choices, required=False, help_text=s.COLLECTION_METHOD_HELP
    )
    days_until_due = s.days_until_due_field()
    credit_limit = Money(
        required=False,
        allow_null=True,
        min_value=Decimal(0),
        help_text="Postpaid customers only: how far below zero the wallet in the customer's "
        "currency may go; null for no limit. Refused (409 credit_limit_below_balance) if the "
        "wallet is already lower.",
    )


class CustomerListCreateView(views.CustomerCreateView):
    query_params = {"GET": (*CUSTOMER_FILTERS, *query.PAGE_PARAMS)}

    @extend_schema(
        operation_id="customers_list",
        tags=["customers"],
        summary="Customers, newest first, with their wallets and subscription",
        description="The same payload as GET /customers/{external_id}. `email` matches "
        "exactly, ignoring case; `created_from` is inclusive and `created_to` exclusive. "
        "`starting_after` is a customer's `id`.",
        parameters=[
            OpenApiParameter(
                "email", {"type": "string", "maxLength": 254}, description="Exact, any case."
            ),
            OpenApiParameter(
                "billing_mode", {"type": "string", "enum": BillingMode.values}, description=""
            ),
            OpenApiParameter("created_from", str, description=CREATED_HELP + " Inclusive."),
            OpenApiParameter("created_to", str, description=CREATED_HELP + " Exclusive."),
            *PAGE_PARAMETERS,
        ],
        responses={200: list_response(s.CustomerSerializer), **errors(400)},
    )
    def get(self, request):
        email = query.text(request, "email", max_length=254)
        billing_mode = query.choice(request, "billing_mode", BillingMode.values)
        created_from, created_to = query.time_range(request, "created_from", "created_to")
        customers = selectors.list_customers(
            email=email,
            billing_mode=billing_mode,
            created_from=created_from,
            created_to=created_to,
        )
        page = paginate(request, customers, lambda customer: customer)
        page["data"] = s.customer_payloads(page["data"])
        return Response(page)


class CustomerDetailUpdateView(views.CustomerDetailView):
    @extend_schema(
        operation_id="customers_update",
        tags=["customers"],
        summary="Update a customer's name, e-mail, address, tax id, metadata, collection "
        "method or credit limit",
        description="A partial update: only the fields sent change, and sending the same "
        "body again changes nothing. Unknown fields are refused (unknown_parameter). The "
        "credit limit moves the ledger wallet's overdraft floor in the same transaction; "
        "its id, currency and billing mode cannot change.",
        request=CustomerUpdateSerializer,
        responses={200: s.CustomerSerializer, **errors(400, 404, 409)},
        examples=[
            OpenApiExample(
                "New e-mail and credit limit",
                request_only=True,
                value={
                    "email": "finance@acme.test",
                    "address": {"city": "Lyon", "country": "FR"},
                    "credit_limit": "1000.00",
                },
            )
        ],
    )
    def patch(self, request, external_id: str):
        customer = selectors.get_customer(external_id=external_id)
        data = CustomerUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        values.update(values.pop("address", {}))
        if "credit_limit" not in values:
            values["credit_limit"] = services.KEEP
        customer = services.edit_customer(customer=customer, **values)
        return Response(views._customer_payload(customer))


# --- subscriptions ------------------------------------------------------------------------


class SubscriptionListCreateView(views.SubscriptionCreateView):
    query_params = {"GET": ("customer", "status", *query.PAGE_PARAMS)}

    @extend_schema(
        operation_id="subscriptions_list",
        tags=["subscriptions"],
        summary="Subscriptions, newest first (of one customer with ?customer=)",
        description="`starting_after` is a subscription's `id`.",
        parameters=[
            OpenApiParameter(
                "customer",
                {"type": "string", "maxLength": 200},
                description="The customer's external_id.",
            ),
            OpenApiParameter(
                "status", {"type": "string", "enum": SubscriptionStatus.values}, description=""
            ),
            *PAGE_PARAMETERS,
        ],
        responses={200: list_response(s.SubscriptionSerializer), **errors(400, 404)},
    )
    def get(self, request):
        external_id = query.text(request, "customer")
        status = query.choice(request, "status", SubscriptionStatus.values)
        customer = (
            None
            if external_id is None
            else selectors.get_customer(external_id=external_id, param="customer")
        )
        subscriptions = selectors.list_subscriptions(customer=customer, status=status)
        page = paginate(request, subscriptions, lambda sub: sub)
        # one serializer for the page (its fields built once), not one per subscription
        page["data"] = s.SubscriptionSerializer(page["data"], many=True).data
        return Response(page)
