"""GET /customers/{id}/usage: usage and its worth per meter, and LLM usage per model, read
from the counters (``metering.selectors.usage_report``). Scope ``read``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from billing import selectors
from billing.api import query
from billing.api.query import APIView
from billing.api.views import errors
from metering import rating
from metering.selectors import MeterUsage, ModelUsageTotal, usage_by_project, usage_report

# group_by=project: usage per project of the customer (docs/budgets.md), not a meter dimension
PROJECT = "project"


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


class ProjectUsageSerializer(serializers.Serializer):
    project = serializers.CharField(allow_null=True, help_text="null: usage naming no project.")
    currency = serializers.CharField()
    events = serializers.IntegerField()
    amount = serializers.CharField(help_text="Charged, decimal string.")


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
        "projects": ProjectUsageSerializer(
            many=True,
            required=False,
            help_text="With group_by=project: the range's events charged per project "
            "(docs/budgets.md), by their timestamps.",
        ),
        "__module__": __name__,
    },
)


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


def _num(value: Decimal) -> str:
    """A decimal string without trailing zeros beyond the ledger's 12 places."""
    value = rating.ledger_round(value)
    text = format(value.normalize(), "f")
    return text


def _meter_payload(usage: MeterUsage, group_by: str | None) -> dict:
    item: dict[str, Any] = {
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
        "gives LLM usage per model with the provider's cost beside the amount charged. "
        "`group_by=project` adds `projects`: what each of the customer's projects was "
        "charged in the range (the meters are then not split).",
        parameters=[
            OpenApiParameter("from", str, description="Date or RFC 3339 timestamp."),
            OpenApiParameter("to", str, description="Date or RFC 3339 timestamp."),
            OpenApiParameter(
                "group_by", str, description="A meter dimension, e.g. model; or project."
            ),
        ],
        responses={200: UsageSerializer, **errors(400, 404)},
    )
    def get(self, request, external_id: str):
        customer = selectors.get_customer(external_id=external_id)
        # An empty (or blank) from / to is the same as none: the default range.
        raw_from = request.query_params.get("from", "").strip() or None
        raw_to = request.query_params.get("to", "").strip() or None
        group_by = request.query_params.get("group_by")
        by_project = group_by == PROJECT
        if by_project:
            group_by = None
        report = usage_report(
            customer=customer,
            start=_parse_moment(raw_from, "from") if raw_from else None,
            end=_parse_moment(raw_to, "to") if raw_to else None,
            group_by=group_by,
        )
        extra = {}
        if by_project:
            extra["projects"] = [
                {
                    "project": row.project,
                    "currency": row.currency,
                    "events": row.events,
                    "amount": _num(row.amount),
                }
                for row in usage_by_project(
                    customer=customer, start=report.range_from, end=report.range_to
                )
            ]
        return Response(
            {
                **extra,
                "customer": report.customer.external_id,
                "from": report.range_from,
                "to": report.range_to,
                "meters": [_meter_payload(usage, group_by) for usage in report.meters],
                "totals": [{"currency": c, "amount": _num(a)} for c, a in report.totals.items()],
                "models": [_model_payload(row) for row in report.models],
            }
        )
