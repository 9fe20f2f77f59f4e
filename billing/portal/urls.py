from django.urls import path

from billing.portal.views import account, credits, invoices, plan, projects, signin, usage

app_name = "portal"

urlpatterns = [
    path("", usage.overview, name="overview"),
    path("live/overview", usage.overview_live, name="overview_live"),
    path("login/", signin.PortalLoginView.as_view(), name="login"),
    path("login/link/", signin.link_request, name="link_request"),
    path("login/link/<str:token>/", signin.link_sign_in, name="link_sign_in"),
    path("logout/", signin.sign_out, name="logout"),
    path("usage/", usage.usage, name="usage"),
    path("usage/data", usage.usage_data, name="usage_data"),
    path("usage/events.csv", usage.usage_csv, name="usage_csv"),
    path("live/events", usage.events_live, name="events_live"),
    path("credits/", credits.credits, name="credits"),
    path("projects/", projects.project_list, name="projects"),
    path("invoices/", invoices.invoices, name="invoices"),
    path("invoices/<int:invoice_id>/", invoices.invoice_detail, name="invoice"),
    path("invoices/<int:invoice_id>/pdf", invoices.invoice_pdf, name="invoice_pdf"),
    path("invoices/<int:invoice_id>/pay", invoices.invoice_pay, name="invoice_pay"),
    path("plan/", plan.plan, name="plan"),
    path("plan/change/", plan.plan_change, name="plan_change"),
    path("plan/cancel/", plan.plan_cancel, name="plan_cancel"),
    path("top-up/", account.top_up, name="top_up"),
    path("settings/", account.portal_settings, name="settings"),
]
