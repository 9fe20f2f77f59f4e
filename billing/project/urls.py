from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)

from billing.admin import staff_security
from billing.admin.finance import finance_home_view, finance_refresh_view
from billing.devtools import webhook_receiver
from invoicing import finance_views

admin.site.site_header = "AI Billing — finance"
admin.site.site_title = "AI Billing"
admin.site.index_title = "Ledger, customers and invoices"

urlpatterns = [
    # meters moved from metering to the commercial core (billing 0007): old admin links
    # still arrive
    re_path(
        r"^admin/metering/meter/(?P<rest>.*)$",
        RedirectView.as_view(url="/admin/billing/meter/%(rest)s", query_string=True),
    ),
    # exports and usage previews (invoicing/finance_views.py), before the admin's catch-all
    path(
        "admin/finance/home/refresh/",
        admin.site.admin_view(finance_refresh_view),
        name="finance-home-refresh",
    ),
    path("admin/finance/", include(finance_views.admin_urls())),
    # The finance home replaces the stock index at /admin/ (so `admin:index`, the admin's
    # "Home", leads to it); the list of models is on it, below the figures.
    path("admin/", admin.site.admin_view(finance_home_view), name="finance-home"),
    # Staff enrol their own two-factor device (django-otp; billing.admin.staff_security).
    path(
        "admin/two-factor/",
        admin.site.admin_view(staff_security.two_factor_view),
        name="admin_two_factor",
    ),
    path("admin/", admin.site.urls),
    path("portal/", include("billing.portal.urls")),
    path("api/v1/", include("billing.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start script as a file of its own (no inline
    # script: the Content-Security-Policy allows none); its assets come from
    # drf-spectacular-sidecar's static files, never from a CDN.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    # The demo's webhook receiver: 404 unless DEBUG (development only).
    path(webhook_receiver.PATH, webhook_receiver.receive, name="dev-webhook-receiver"),
]


def handler404(request, exception=None):
    """Unknown routes under /api/ answer in the API's error format, not HTML."""
    from django.views.defaults import page_not_found

    from billing.web.middleware import json_error_for_api

    return json_error_for_api(request, 404) or page_not_found(request, exception)


def handler500(request):
    """A crash under /api/ answers in the API's error format (logged by Django), not HTML."""
    from django.views.defaults import server_error

    from billing.web.middleware import json_error_for_api

    return json_error_for_api(request, 500) or server_error(request)
