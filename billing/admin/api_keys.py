"""API keys in the admin: created (the secret shown once, only its hash kept) and revoked,
never edited (``billing.services.create_api_key``, ``revoke_api_key``); the idempotency
records of the API listed read-only."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpResponse, HttpResponseRedirect
from django.utils.html import format_html

from billing import services
from billing.admin.common import ServiceFormMixin
from billing.models import APIKey, IdempotencyRecord
from ledger.admin import ReadOnlyAdmin


class KeyState(models.TextChoices):
    """The values of the ``status`` filter in the list's URL."""

    ACTIVE = "active", "Active"
    REVOKED = "revoked", "Revoked"


class APIKeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return KeyState.choices

    def queryset(self, request, queryset):
        if self.value() in KeyState.values:
            return queryset.filter(revoked_at__isnull=self.value() == KeyState.ACTIVE)
        return queryset


class APIKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Which backend uses it, e.g. prod-api.")
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in APIKey.SCOPES],
        widget=forms.CheckboxSelectMultiple,
        initial=["read", "write", "ingest"],
    )
    ingest_async = forms.BooleanField(
        required=False,
        label="Asynchronous ingestion",
        help_text="Answer its usage events with 202 once stored and rate them a moment later "
        "(as Prefer: respond-async does per request): more throughput, no per-event answer.",
    )


@admin.register(APIKey)
class APIKeyAdmin(ServiceFormMixin, admin.ModelAdmin):
    """Keys are created and revoked, never edited; the secret is shown once."""

    list_display = (
        "name",
        "prefix",
        "scopes_display",
        "created_at",
        "created_by",
        "last_used_at",
        "revoked_at",
    )
    list_filter = (APIKeyStatusFilter,)
    search_fields = ("name", "prefix")
    list_select_related = ("created_by",)
    # secret_hash stays out of sight: it is of no use to a person.
    fields = (
        "name",
        "prefix",
        "scopes_display",
        "rate_limit_per_minute",
        "ingest_async",
        "created_at",
        "created_by",
        "last_used_at",
        "revoked_at",
    )
    readonly_fields = fields
    actions = ["revoke_action"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_revoke_permission(self, request):
        return request.user.has_perm("billing.change_apikey")

    @admin.display(description="scopes")
    def scopes_display(self, key):
        return ", ".join(key.scopes)

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = APIKeyCreateForm(request.POST or None)

        def create() -> HttpResponse:
            key, secret = services.create_api_key(
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
                created_by_id=request.user.pk,
                ingest_async=form.cleaned_data["ingest_async"],
            )
            self.log_addition(request, key, "Created in the admin.")
            # The one time the secret exists outside its owner's hands: only its hash is kept.
            messages.warning(
                request,
                format_html(
                    "API key “{}” created. Copy its secret now, it will not be shown again: "
                    "<code>{}</code>",
                    key.name,
                    secret,
                ),
            )
            return HttpResponseRedirect(self.change_url(key))

        return self.run_service(request, form, create) or self.service_form_response(
            request,
            form=form,
            title="Add API key",
            submit_label="Create key",
            intro="The secret is shown once, after creating the key; only its hash is stored.",
        )

    @admin.action(description="Revoke the selected API keys", permissions=["revoke"])
    def revoke_action(self, request, queryset):
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            services.revoke_api_key(api_key=key)
            self.log_change(request, key, "Revoked in the admin.")
            revoked += 1
        messages.success(request, f"{revoked} API key(s) revoked.")


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ("key", "api_key", "method", "path", "status_code", "created_at")
    list_filter = ("method", "status_code")
    search_fields = ("key", "path")
    list_select_related = ("api_key",)
    readonly_fields = [f.name for f in IdempotencyRecord._meta.fields]
    show_full_result_count = False
