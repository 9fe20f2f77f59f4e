"""Meters in the admin. Created through ``billing.services.create_meter``; afterwards only
the name and unit may change (``rename_meter``): what a meter counts never changes, or past
usage would change meaning."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseRedirect

from billing import services
from billing.admin import ServiceFormMixin
from metering.models import Aggregation, Meter

MEANING_FIELDS = ("code", *services.METER_FIELDS)  # fixed once the meter exists


class MeterCreateForm(forms.Form):
    """Input only: the service validates what a meter may be (a sum needs its property, the
    code is unique) and its errors land on these fields."""

    code = forms.SlugField(max_length=100, help_text="Stable; plans refer to it.")
    name = forms.CharField(max_length=200, required=False)
    event_name = forms.CharField(max_length=200, help_text="Which usage events it reads.")
    aggregation = forms.ChoiceField(choices=Aggregation.choices)
    property = forms.CharField(
        max_length=200, required=False, help_text=Meter._meta.get_field("property").help_text
    )
    filters = forms.JSONField(
        required=False, initial=dict, help_text=Meter._meta.get_field("filters").help_text
    )
    group_by = forms.JSONField(
        required=False, initial=list, help_text=Meter._meta.get_field("group_by").help_text
    )
    unit = forms.CharField(max_length=30, required=False, help_text="e.g. tokens")

    def clean_filters(self):
        filters = self.cleaned_data["filters"]
        if filters is None:
            return {}
        if not isinstance(filters, dict):
            raise forms.ValidationError('A JSON object, e.g. {"tier": ["pro"]}.')
        return filters

    def clean_group_by(self):
        group_by = self.cleaned_data["group_by"]
        if group_by is None:
            return []
        if not isinstance(group_by, list) or not all(isinstance(g, str) for g in group_by):
            raise forms.ValidationError('A JSON list of property paths, e.g. ["model"].')
        return group_by


@admin.register(Meter)
class MeterAdmin(ServiceFormMixin, admin.ModelAdmin):
    list_display = ("code", "name", "event_name", "aggregation", "property", "unit", "created_at")
    list_filter = ("aggregation",)
    search_fields = ("code", "name", "event_name", "property")
    fields = (
        "code",
        "name",
        "unit",
        "event_name",
        "aggregation",
        "property",
        "filters",
        "group_by",
        "created_at",
    )
    readonly_fields = (*MEANING_FIELDS, "created_at")

    def has_delete_permission(self, request, obj=None):
        return False  # plans and usage refer to it

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = MeterCreateForm(request.POST or None)

        def create() -> HttpResponse:
            meter = services.create_meter(**form.cleaned_data)
            self.log_addition(request, meter, "Created in the admin.")
            messages.success(request, f"Meter {meter.code} created.")
            return HttpResponseRedirect(self.change_url(meter))

        return self.run_service(request, form, create) or self.service_form_response(
            request,
            form=form,
            title="Add meter",
            submit_label="Create meter",
            intro="What a meter counts (event, aggregation, property, filters, grouping) "
            "cannot change once it exists; its name and unit can.",
        )

    def save_model(self, request, obj, form, change):
        services.rename_meter(meter=obj, name=obj.name, unit=obj.unit)
