"""Projects, budgets inside a customer, in the v1 API (``billing.projects``):

    GET   /customers/{external_id}/projects         the customer's projects, newest first,
                                                    each with its spend this period
                                                    (?status=active|archived)
    POST  /customers/{external_id}/projects         create one (Idempotency-Key; a key
                                                    taken: 409 project_exists)
    GET   /customers/{external_id}/projects/{key}   one project
    PATCH /customers/{external_id}/projects/{key}   name, spend_limit, status (archive)

Events, /authorize and holds name a project by its ``key`` (``project``). Scopes: the GETs
need ``read``, the writes ``write``.
"""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from billing import projects, selectors
from billing.api import query
from billing.api.fields import Money, StrictSerializer, list_response
from billing.api.idempotency import idempotent
from billing.api.pagination import PARAMETERS as PAGE_PARAMETERS
from billing.api.pagination import paginate
from billing.api.views import errors as error_responses
from billing.api.views import idempotency_parameter
from billing.models import Customer, Project, ProjectStatus

STATUSES = ProjectStatus.values
LIMIT_HELP = (
    "The most the project may spend per billing period (the customer's subscription "
    "period; a calendar month without one), in the currency its usage is charged in (the "
    "customer's; CREDITS on a credits plan). Usage past it is refused (402 "
    "budget_exceeded). null: no limit, spend is only counted (an empty string is refused)."
)


class ProjectSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    customer = serializers.CharField(help_text="The customer's external_id.")
    key = serializers.CharField(help_text="What events, /authorize and holds name.")
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=ProjectStatus.choices)
    spend_limit = Money(allow_null=True, help_text=LIMIT_HELP)
    currency = serializers.CharField(help_text="The currency of the limit and the spend.")
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    spent = Money(help_text="Charged to the project's usage this period (exact).")
    held = Money(help_text="What is left of its pending holds: counted against the budget.")
    remaining = Money(
        allow_null=True, help_text="spend_limit − spent − held, not below 0; null: no limit."
    )
    event_count = serializers.IntegerField(help_text="Events charged to it this period.")
    created_at = serializers.DateTimeField()
    archived_at = serializers.DateTimeField(allow_null=True)


KEY_HELP = "Unique per customer: the id your product already uses (a team, an API key …)."


class ProjectKey(serializers.RegexField):
    """A string, as events name it (a number is refused, not turned into one: ``7`` and
    ``"7"`` would be one key here and two ways of naming it there); no slash (it is part
    of the project's URL), no control characters."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class ProjectCreateSerializer(StrictSerializer):
    key = ProjectKey(
        r"^[^/\s\x00-\x1f\x7f][^/\x00-\x1f\x7f]*$",
        max_length=200,
        help_text=KEY_HELP + " A string; no slash (it is part of the project's URL), no "
        "control characters.",
    )
    name = serializers.CharField(max_length=200, required=False, help_text="Default: the key.")
    spend_limit = Money(
        required=False,
        allow_null=True,
        min_value=Decimal(0),
        help_text=LIMIT_HELP,
    )


class ProjectUpdateSerializer(StrictSerializer):
    """Every field optional; what is absent is left as it is."""

    name = serializers.CharField(max_length=200, required=False)
    spend_limit = Money(
        required=False,
        allow_null=True,
        min_value=Decimal(0),
        help_text=LIMIT_HELP,
    )
    status = serializers.ChoiceField(
        choices=ProjectStatus.choices,
        required=False,
        help_text="archived: new usage naming it is refused (409 project_archived); active "
        "again takes it back.",
    )


def _payloads(customer: Customer, found: list[Project]) -> list[dict]:
    return [
        ProjectSerializer(
            {
                "id": b.project.pk,
                "customer": customer.external_id,
                "key": b.project.key,
                "name": b.project.name,
                "status": b.project.status,
                "spend_limit": b.project.spend_limit,
                "currency": b.currency,
                "period_start": b.period_start,
                "period_end": b.period_end,
                "spent": b.spent,
                "held": b.held,
                "remaining": b.remaining,
                "event_count": b.event_count,
                "created_at": b.project.created_at,
                "archived_at": b.project.archived_at,
            }
        ).data
        for b in projects.project_budgets(customer=customer, projects=found)
    ]


def _payload(customer: Customer, project: Project) -> dict:
    return _payloads(customer, [project])[0]


class CustomerProjectsView(query.APIView):
    query_params = {"GET": ("status", *query.PAGE_PARAMS)}

    @extend_schema(
        operation_id="customers_projects_list",
        tags=["projects"],
        summary="The customer's projects, newest first, with their spend this period",
        description="`starting_after` is a project's `id`.",
        parameters=[
            OpenApiParameter("status", {"type": "string", "enum": STATUSES}, description=""),
            *PAGE_PARAMETERS,
        ],
        responses={200: list_response(ProjectSerializer), **error_responses(400, 404)},
    )
    def get(self, request, external_id: str):
        customer = selectors.get_customer(external_id=external_id)
        state = query.choice(request, "status", STATUSES)
        page = paginate(request, projects.list_projects(customer=customer, status=state), _same)
        page["data"] = _payloads(customer, page["data"])
        return Response(page)

    @extend_schema(
        operation_id="customers_projects_create",
        tags=["projects"],
        summary="Create a project: a budget inside the customer",
        description="Events, /authorize and holds then name it by `key` (`project`); an "
        "unknown key is refused there (404 project_not_found), never created.",
        request=ProjectCreateSerializer,
        responses={201: ProjectSerializer, **error_responses(400, 404, 409)},
        parameters=[idempotency_parameter()],
        examples=[
            OpenApiExample(
                "A team with a monthly budget",
                request_only=True,
                value={"key": "team-search", "name": "Search team", "spend_limit": "500.00"},
            )
        ],
    )
    @idempotent
    def post(self, request, external_id: str):
        customer = selectors.get_customer(external_id=external_id)
        data = ProjectCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        project = projects.create_project(customer=customer, **data.validated_data)
        return Response(_payload(customer, project), status=status.HTTP_201_CREATED)


def _same(project: Project) -> Project:
    return project


class CustomerProjectDetailView(query.APIView):
    @extend_schema(
        operation_id="customers_projects_retrieve",
        tags=["projects"],
        summary="A project, with its spend this period",
        responses={200: ProjectSerializer, **error_responses(404)},
    )
    def get(self, request, external_id: str, key: str):
        customer = selectors.get_customer(external_id=external_id)
        return Response(_payload(customer, projects.get_project(customer=customer, key=key)))

    @extend_schema(
        operation_id="customers_projects_update",
        tags=["projects"],
        summary="Change a project's name or spend limit, archive it or take it back",
        description="A partial update. A new limit applies to the next event (usage already "
        "charged stays) and re-arms `budget.exceeded` for the period.",
        request=ProjectUpdateSerializer,
        responses={200: ProjectSerializer, **error_responses(400, 404)},
    )
    def patch(self, request, external_id: str, key: str):
        customer = selectors.get_customer(external_id=external_id)
        project = projects.get_project(customer=customer, key=key)
        data = ProjectUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        if "status" in changes:
            changes["archived"] = changes.pop("status") == "archived"
        project = projects.update_project(project=project, **changes)
        return Response(_payload(customer, project))
