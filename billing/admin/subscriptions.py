"""Subscriptions in the admin: created through ``billing.services.create_subscription`` and
canceled (at the period's end or now) through ``cancel_subscription``, after a confirmation
page; otherwise read-only, with their phases."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse

from billing import selectors, services
from billing.admin.common import ServiceFormMixin, admin_link, timestamp
from billing.errors import BillingError
from billing.models import BillingTime, Customer, Subscription, SubscriptionPhase
from ledger.admin import EstimatedCountPaginator, ReadOnlyAdmin, ReadOnlyInline


class SubscriptionPhaseInline(ReadOnlyInline):
    model = SubscriptionPhase
    fields = ("plan", "starts_at", "ends_at")
    readonly_fields = fields
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("plan").order_by("starts_at", "id")


class PlanCodeFilter(admin.AllValuesFieldListFilter):
    title = "plan"


class SubscriptionCreateForm(forms.Form):
    customer = forms.ModelChoiceField(
        queryset=Customer.objects.order_by("external_id"), help_text="Who subscribes."
    )
    plan = forms.ModelChoiceField(
        queryset=selectors.latest_plans().order_by("code"),
        help_text="The latest published version of each plan.",
    )
    start = forms.DateTimeField(
        required=False,
        help_text="Empty = now. A start in the past back-dates: every period since it is "
        "invoiced by the period close (UTC).",
    )
    trial_days = forms.IntegerField(
        required=False, min_value=0, max_value=3650, help_text="Empty = the plan's trial."
    )
    # Ranges are the plan validator's (billing.services.validate_billing_cadence).
    billing_time = forms.ChoiceField(
        choices=[("", "The plan's"), *BillingTime.choices],
        required=False,
        help_text="Periods from the start, or on the calendar (a first period prorated by day).",
    )
    billing_anchor_day = forms.IntegerField(
        required=False,
        help_text="Calendar: day of the month 1–31, or ISO weekday 1–7 for weekly plans. "
        "Empty = the plan's, else the 1st or Monday.",
    )


@admin.register(Subscription)
class SubscriptionAdmin(ServiceFormMixin, ReadOnlyAdmin):
    list_display = (
        "id",
        "customer_link",
        "plan_version",
        "status",
        "current_period",
        "cancel_at_period_end",
    )
    list_filter = ("status", ("plan__code", PlanCodeFilter), "cancel_at_period_end")
    search_fields = ("customer__external_id",)
    list_select_related = ("customer", "plan")
    # newest first by the primary key, a page at a time; a bounded count (one subscription
    # per customer: 100,000 rows counted on every page otherwise)
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    # 50 rows a page: rendering the rows is most of the page's time (a 100-row page of
    # this list took 300-450 ms at 100,000 customers, its queries a few of them)
    list_per_page = 50
    readonly_fields = [f.name for f in Subscription._meta.fields]
    inlines = [SubscriptionPhaseInline]
    actions = ["cancel_at_period_end_action", "cancel_now_action"]

    def has_cancel_permission(self, request):
        return request.user.has_perm("billing.change_subscription")

    def has_add_permission(self, request, obj=None):
        return request.user.has_perm("billing.add_subscription")

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = SubscriptionCreateForm(request.POST or None, initial=request.GET.dict())

        def create() -> HttpResponse:
            data = form.cleaned_data
            subscription = services.create_subscription(
                customer=data["customer"],
                plan=data["plan"],
                start=data["start"],
                trial_days=data["trial_days"],
                billing_time=data["billing_time"] or None,
                billing_anchor_day=data["billing_anchor_day"],
            )
            self.log_addition(request, subscription, "Subscribed in the admin.")
            messages.success(request, f"{subscription} created ({subscription.status}).")
            return HttpResponseRedirect(self.change_url(subscription))

        return self.run_service(request, form, create) or self.service_form_response(
            request,
            form=form,
            title="Add subscription",
            submit_label="Subscribe",
            intro="The customer keeps this plan version until it is changed; the first "
            "period starts at the start (or when the trial ends).",
        )

    @admin.display(description="customer", ordering="customer__external_id")
    def customer_link(self, subscription):
        return admin_link(subscription.customer)

    @admin.display(description="plan", ordering="plan__code")
    def plan_version(self, subscription):
        return f"{subscription.plan.code}@v{subscription.plan.version}"

    @admin.display(description="current period", ordering="current_period_start")
    def current_period(self, subscription):
        return (
            f"{timestamp(subscription.current_period_start)} → "
            f"{timestamp(subscription.current_period_end)}"
        )

    def _cancel(self, request, queryset: QuerySet[Subscription], *, at_period_end: bool, action):
        queryset = queryset.select_related("customer", "plan")
        if request.POST.get("post") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": "Cancel at period end" if at_period_end else "Cancel now",
                "opts": self.opts,
                "subscriptions": queryset,
                "action": action,
                "at_period_end": at_period_end,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            }
            request.current_app = self.admin_site.name
            return TemplateResponse(
                request, "admin/billing/subscription/cancel_confirmation.html", context
            )
        done = 0
        for subscription in queryset:
            try:
                services.cancel_subscription(
                    subscription_id=subscription.pk, at_period_end=at_period_end
                )
            except BillingError as error:
                messages.error(request, f"{subscription}: {error.message} ({error.code})")
                continue
            done += 1
            what = "at period end" if at_period_end else "now"
            self.log_change(request, subscription, f"Canceled {what} in the admin.")
        if done:
            when = "at the end of their period" if at_period_end else "now"
            messages.success(request, f"{done} subscription(s) canceled {when}.")
        return None

    @admin.action(description="Cancel at period end…", permissions=["cancel"])
    def cancel_at_period_end_action(self, request, queryset):
        return self._cancel(
            request, queryset, at_period_end=True, action="cancel_at_period_end_action"
        )

    @admin.action(description="Cancel now…", permissions=["cancel"])
    def cancel_now_action(self, request, queryset):
        return self._cancel(request, queryset, at_period_end=False, action="cancel_now_action")
