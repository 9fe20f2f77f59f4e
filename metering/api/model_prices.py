"""GET /models: the model price catalog in force (``metering.selectors.current_model_prices``).
Scope ``read``.
"""

from __future__ import annotations

import re

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from billing.api.errors import APIError
from billing.api.fields import list_response
from billing.api.pagination import PARAMETERS as PAGE_PARAMETERS
from billing.api.pagination import paginate
from billing.api.query import PAGE_PARAMS, APIView
from billing.api.views import errors
from metering.models import ModelPrice
from metering.selectors import current_model_prices


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
