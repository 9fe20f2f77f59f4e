from django.urls import path

from billing.api import alerts, auto_top_up, lists, projects, views
from billing.api import webhooks as webhook_api
from invoicing import api as invoicing_api
from invoicing import finance_views
from metering.api import authorize, events, holds, ingest, model_prices, usage_report

urlpatterns = [
    path("customers", lists.CustomerListCreateView.as_view()),
    path("customers/<str:external_id>", lists.CustomerDetailUpdateView.as_view()),
    path("customers/<str:external_id>/balance", views.CustomerBalanceView.as_view()),
    path("customers/<str:external_id>/top-ups", views.TopUpView.as_view()),
    path(
        "customers/<str:external_id>/wallets/<str:currency>/auto-top-up",
        auto_top_up.AutoTopUpView.as_view(),
    ),
    path("customers/<str:external_id>/credit-grants", views.CreditGrantListCreateView.as_view()),
    path(
        "customers/<str:external_id>/credit-grants/<int:grant_id>/refund",
        invoicing_api.CreditGrantRefundView.as_view(),
    ),
    path("customers/<str:external_id>/transactions", views.CustomerTransactionsView.as_view()),
    path("customers/<str:external_id>/usage", usage_report.UsageView.as_view()),
    path("customers/<str:external_id>/alerts", alerts.CustomerAlertsView.as_view()),
    path("customers/<str:external_id>/projects", projects.CustomerProjectsView.as_view()),
    path(
        "customers/<str:external_id>/projects/<str:key>",
        projects.CustomerProjectDetailView.as_view(),
    ),
    path(
        "customers/<str:external_id>/upcoming-invoice",
        invoicing_api.UpcomingInvoiceView.as_view(),
    ),
    path("invoices", invoicing_api.InvoiceListView.as_view()),
    path("invoices/<int:invoice_id>", invoicing_api.InvoiceDetailView.as_view()),
    path("invoices/<int:invoice_id>/pdf", invoicing_api.InvoicePDFView.as_view()),
    path("webhooks/stripe", invoicing_api.StripeWebhookView.as_view()),
    path("events", events.EventListCreateView.as_view()),
    path("events/batch", ingest.EventBatchView.as_view()),
    path("authorize", authorize.AuthorizeView.as_view()),
    path("holds", holds.HoldCreateView.as_view()),
    path("holds/<int:hold_id>", holds.HoldDetailView.as_view()),
    path("holds/<int:hold_id>/settle", holds.HoldSettleView.as_view()),
    path("holds/<int:hold_id>/release", holds.HoldReleaseView.as_view()),
    path("models", model_prices.ModelListView.as_view()),
    path("meters", views.MeterListCreateView.as_view()),
    path("plans", views.PlanListCreateView.as_view()),
    path("plans/<slug:code>", views.PlanDetailView.as_view()),
    path("plans/<slug:code>/preview", finance_views.PlanPreviewView.as_view()),
    path("exports/<str:kind>", finance_views.ExportView.as_view()),
    path("alerts", alerts.AlertListCreateView.as_view()),
    path("alerts/<int:alert_id>", alerts.AlertDetailView.as_view()),
    path("subscriptions", lists.SubscriptionListCreateView.as_view()),
    path("subscriptions/<int:subscription_id>", views.SubscriptionDetailView.as_view()),
    path("subscriptions/<int:subscription_id>/change", views.SubscriptionChangeView.as_view()),
    path("subscriptions/<int:subscription_id>/cancel", views.SubscriptionCancelView.as_view()),
    path("webhook-endpoints", webhook_api.WebhookEndpointListCreateView.as_view()),
    path("webhook-endpoints/<int:endpoint_id>", webhook_api.WebhookEndpointDetailView.as_view()),
    path(
        "webhook-endpoints/<int:endpoint_id>/rotate-secret",
        webhook_api.WebhookEndpointRotateSecretView.as_view(),
    ),
    path(
        "webhook-endpoints/<int:endpoint_id>/resend-event",
        webhook_api.WebhookEndpointResendEventView.as_view(),
    ),
    path(
        "webhook-endpoints/<int:endpoint_id>/deliveries",
        webhook_api.WebhookEndpointDeliveriesView.as_view(),
    ),
    path("webhook-deliveries/<int:delivery_id>", webhook_api.WebhookDeliveryDetailView.as_view()),
    path(
        "webhook-deliveries/<int:delivery_id>/resend",
        webhook_api.WebhookDeliveryResendView.as_view(),
    ),
    path("webhook-events", webhook_api.OutboundEventListView.as_view()),
]
