from django.urls import path

from billing.api import views

urlpatterns = [
    path("customers", views.CustomerCreateView.as_view()),
    path("customers/<str:external_id>", views.CustomerDetailView.as_view()),
    path("customers/<str:external_id>/balance", views.CustomerBalanceView.as_view()),
    path("customers/<str:external_id>/top-ups", views.TopUpView.as_view()),
    path("customers/<str:external_id>/transactions", views.CustomerTransactionsView.as_view()),
    path("meters", views.MeterListCreateView.as_view()),
    path("plans", views.PlanListCreateView.as_view()),
    path("plans/<slug:code>", views.PlanDetailView.as_view()),
    path("subscriptions", views.SubscriptionCreateView.as_view()),
    path("subscriptions/<int:subscription_id>", views.SubscriptionDetailView.as_view()),
    path("subscriptions/<int:subscription_id>/change", views.SubscriptionChangeView.as_view()),
    path("subscriptions/<int:subscription_id>/cancel", views.SubscriptionCancelView.as_view()),
]
