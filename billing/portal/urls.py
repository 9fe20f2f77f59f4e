from django.urls import path

from billing.portal import views

app_name = "portal"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("live/overview", views.overview_live, name="overview_live"),
    path("login/", views.PortalLoginView.as_view(), name="login"),
    path("login/link/", views.link_request, name="link_request"),
    path("login/link/<str:token>/", views.link_sign_in, name="link_sign_in"),
    path("logout/", views.sign_out, name="logout"),
    path("usage/", views.usage, name="usage"),
    path("usage/data", views.usage_data, name="usage_data"),
    path("usage/events.csv", views.usage_csv, name="usage_csv"),
    path("live/events", views.events_live, name="events_live"),
    path("credits/", views.credits, name="credits"),
    path("invoices/", views.invoices, name="invoices"),
    path("invoices/<int:invoice_id>/", views.invoice_detail, name="invoice"),
    path("invoices/<int:invoice_id>/pdf", views.invoice_pdf, name="invoice_pdf"),
    path("invoices/<int:invoice_id>/pay", views.invoice_pay, name="invoice_pay"),
    path("top-up/", views.top_up, name="top_up"),
    path("settings/", views.portal_settings, name="settings"),
]
