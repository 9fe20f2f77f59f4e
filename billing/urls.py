from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

admin.site.site_header = "AI Billing — finance"
admin.site.site_title = "AI Billing"
admin.site.index_title = "Ledger, customers and invoices"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("portal/", include("billing.portal.urls")),
    path("api/v1/", include("billing.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]


def handler404(request, exception=None):
    """Unknown routes under /api/ answer in the API's error format, not HTML."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path.startswith("/api/"):
        return JsonResponse(
            {
                "error": {
                    "type": "not_found_error",
                    "code": "not_found",
                    "message": f"no route {request.path}",
                    "param": None,
                }
            },
            status=404,
        )
    return page_not_found(request, exception)
