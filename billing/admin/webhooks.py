"""Outbound webhooks in the admin: endpoints (created with their secret shown once, edited,
their secret rotated, disabled and enabled), deliveries with the log of their attempts and a
resend, and the outbound events (read-only) with their deliveries. Every write goes through
``billing.webhooks``."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html

from billing import webhooks
from billing.admin.common import ServiceFormMixin, date_cell, time_cell, token_cell
from billing.errors import BillingError
from billing.models import (
    ALL_EVENTS,
    EndpointStatus,
    EventType,
    OutboundEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from ledger.admin import ReadOnlyAdmin, ReadOnlyInline

EVENT_CHOICES = [(ALL_EVENTS, "Every event type"), *EventType.choices]


def _events_field() -> forms.MultipleChoiceField:
    return forms.MultipleChoiceField(
        choices=EVENT_CHOICES,
        widget=forms.CheckboxSelectMultiple,
        initial=[ALL_EVENTS],
        help_text="The event types this endpoint receives; “Every event type” alone for all.",
    )


class EndpointCreateForm(forms.Form):
    url = forms.CharField(max_length=2000, help_text="https:// and a public address.")
    description = forms.CharField(max_length=200, required=False)
    enabled_events = _events_field()


class EndpointChangeForm(forms.ModelForm):
    url = forms.CharField(max_length=2000, help_text="https:// and a public address.")
    enabled_events = _events_field()

    class Meta:
        model = WebhookEndpoint
        fields = ("url", "description", "enabled_events")

    def clean_url(self):
        try:
            return webhooks.check_url(self.cleaned_data["url"])
        except BillingError as error:
            raise ValidationError(error.message) from None

    def clean_enabled_events(self):
        try:
            return webhooks.check_event_types(self.cleaned_data["enabled_events"])
        except BillingError as error:
            raise ValidationError(error.message) from None


def _show_secrets(
    admin_view: WebhookEndpointAdmin, request, endpoints: list[WebhookEndpoint], intro: str
) -> TemplateResponse:
    """The page showing the new secrets, once: in this answer only (a message would put
    them in the messages cookie, signed but not encrypted), never cached."""
    request.current_app = admin_view.admin_site.name
    response = TemplateResponse(
        request,
        "admin/billing/webhook_secret.html",
        {
            **admin_view.admin_site.each_context(request),
            "title": "Signing secret",
            "opts": admin_view.opts,
            "endpoints": endpoints,
            "intro": intro,
        },
    )
    add_never_cache_headers(response)
    response["Cache-Control"] += ", no-store"
    return response


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ServiceFormMixin, admin.ModelAdmin):
    form = EndpointChangeForm
    list_display = (
        "endpoint_url",
        "status",
        "events_display",
        "failures",
        "failing",
        "disabled_reason",
    )
    # the URL cut short (whole on hover) and the creation time on the endpoint's page: the
    # list was 948 px wide in the 900 px a 1280 px screen leaves beside the sidebar
    list_filter = ("status",)
    search_fields = ("url", "description")
    readonly_fields = (
        "status",
        "disabled_reason",
        "disabled_at",
        "consecutive_failures",
        "failing_since",
        "secret_rotated_at",
        "created_at",
        "updated_at",
        "deliveries_link",
    )
    actions = ["rotate_secret_action", "disable_action", "enable_action"]

    @admin.display(description="URL", ordering="url")
    def endpoint_url(self, endpoint: WebhookEndpoint) -> str:
        return token_cell(endpoint.url)

    @admin.display(description="failures", ordering="consecutive_failures")
    def failures(self, endpoint: WebhookEndpoint) -> int:
        return endpoint.consecutive_failures

    @admin.display(description="failing since", ordering="failing_since")
    def failing(self, endpoint: WebhookEndpoint) -> str:
        return date_cell(endpoint.failing_since)

    @admin.display(description="events")
    def events_display(self, endpoint: WebhookEndpoint) -> str:
        return ", ".join(endpoint.enabled_events)

    @admin.display(description="deliveries")
    def deliveries_link(self, endpoint: WebhookEndpoint) -> str:
        url = reverse("admin:billing_webhookdelivery_changelist")
        return format_html(
            '<a href="{}?endpoint__id__exact={}">{} deliveries</a>',
            url,
            endpoint.pk,
            endpoint.deliveries.count(),
        )

    def save_model(self, request, obj, form, change):
        if not change:  # created through add_view, never here
            raise PermissionDenied
        webhooks.update_endpoint(
            endpoint_id=obj.pk,
            url=form.cleaned_data["url"],
            description=form.cleaned_data["description"],
            enabled_events=form.cleaned_data["enabled_events"],
        )

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = EndpointCreateForm(request.POST or None)

        def create() -> HttpResponse:
            endpoint = webhooks.create_endpoint(**form.cleaned_data)
            self.log_addition(request, endpoint, "Created in the admin.")
            return _show_secrets(self, request, [endpoint], "Webhook endpoint created.")

        return self.run_service(request, form, create) or self.service_form_response(
            request,
            form=form,
            title="Add webhook endpoint",
            submit_label="Create endpoint",
            intro="Its signing secret is shown once, after creating it.",
        )

    @admin.action(description="Rotate the signing secret (shown once)", permissions=["change"])
    def rotate_secret_action(self, request, queryset):
        rotated = []
        for endpoint in queryset:
            rotated.append(webhooks.rotate_secret(endpoint_id=endpoint.pk))
            self.log_change(request, endpoint, "Secret rotated in the admin.")
        return _show_secrets(self, request, rotated, "Secret rotated; the old one signs nothing.")

    @admin.action(description="Disable the selected endpoints", permissions=["change"])
    def disable_action(self, request, queryset):
        for endpoint in queryset.filter(status=EndpointStatus.ENABLED):
            webhooks.disable_endpoint(
                endpoint_id=endpoint.pk, reason=f"disabled by {request.user} in the admin"
            )
            self.log_change(request, endpoint, "Disabled in the admin.")
        messages.success(request, "Disabled.")

    @admin.action(description="Enable the selected endpoints", permissions=["change"])
    def enable_action(self, request, queryset):
        for endpoint in queryset:
            webhooks.enable_endpoint(endpoint_id=endpoint.pk)
            self.log_change(request, endpoint, "Enabled in the admin.")
        messages.success(request, "Enabled; failed deliveries can be resent.")


class AttemptInline(ReadOnlyInline):
    model = WebhookAttempt
    show_change_link = False
    fields = (
        "number",
        "manual",
        "started_at",
        "duration_ms",
        "succeeded",
        "status_code",
        "response_body",
        "error",
    )
    readonly_fields = fields


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "event_type",
        "endpoint_url",
        "status",
        "tries",
        "http_status",
        "last_attempt",
        "next_attempt",
    )
    # the event's type with its id on hover, the endpoint's URL cut short (whole on hover),
    # short headers and times to the minute: the list was 1,559 px wide in the 900 px a
    # 1280 px screen leaves beside the sidebar
    list_filter = ("status", "event__type", "endpoint")
    search_fields = ("event__public_id", "endpoint__url")
    list_select_related = ("event", "endpoint")
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    inlines = [AttemptInline]
    actions = ["resend_action"]
    show_full_result_count = False

    @admin.display(description="event")
    def event_type(self, delivery: WebhookDelivery) -> str:
        return format_html(
            '<span title="{}">{}</span>', delivery.event.public_id, delivery.event.type
        )

    @admin.display(description="tries", ordering="attempts")
    def tries(self, delivery: WebhookDelivery) -> int:
        return delivery.attempts

    @admin.display(description="HTTP", ordering="last_status_code")
    def http_status(self, delivery: WebhookDelivery):
        return delivery.last_status_code or "—"

    @admin.display(description="endpoint")
    def endpoint_url(self, delivery: WebhookDelivery) -> str:
        return token_cell(delivery.endpoint.url)

    @admin.display(description="last try", ordering="last_attempt_at")
    def last_attempt(self, delivery: WebhookDelivery) -> str:
        return time_cell(delivery.last_attempt_at)

    @admin.display(description="next try", ordering="next_attempt_at")
    def next_attempt(self, delivery: WebhookDelivery) -> str:
        return time_cell(delivery.next_attempt_at)

    def has_resend_permission(self, request):
        return request.user.has_perm("billing.change_webhookendpoint")

    @admin.action(description="Resend now (one more attempt)", permissions=["resend"])
    def resend_action(self, request, queryset):
        for delivery in queryset:
            webhooks.resend_delivery(delivery_id=delivery.pk)
        messages.success(request, f"{queryset.count()} delivery(ies) queued.")


class DeliveryInline(ReadOnlyInline):
    model = WebhookDelivery
    fields = ("endpoint", "status", "attempts", "last_status_code", "next_attempt_at")
    readonly_fields = fields


@admin.register(OutboundEvent)
class OutboundEventAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "type", "customer", "created", "fanned_out")
    list_filter = ("type",)
    search_fields = ("public_id", "customer__external_id", "dedupe_key")
    list_select_related = ("customer",)
    readonly_fields = [f.name for f in OutboundEvent._meta.fields]
    inlines = [DeliveryInline]
    show_full_result_count = False

    # times to the minute: with the site's full format the list was 937 px wide in 900 px
    @admin.display(description="created", ordering="created_at")
    def created(self, event: OutboundEvent) -> str:
        return time_cell(event.created_at)

    @admin.display(description="fanned out", ordering="fanned_out_at")
    def fanned_out(self, event: OutboundEvent) -> str:
        return time_cell(event.fanned_out_at)
