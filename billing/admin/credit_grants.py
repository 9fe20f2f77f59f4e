"""Credit grants in the admin: granted from the customer page (``billing.credits``), then
listed read-only with the allocations that drew on each; voided or expired by an action."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import models
from django.http import HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from billing import credits, services
from billing.admin.common import (
    ExactDecimalField,
    ServiceFormMixin,
    admin_link,
    date_cell,
    money,
    money_cell,
    timestamp,
)
from billing.errors import BillingError
from billing.models import CreditAllocation, CreditGrant, GrantSource, GrantStatus
from billing.web.staff import record_reason
from ledger.admin import ReadOnlyAdmin, ReadOnlyInline
from ledger.errors import LedgerError


class ReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Why: kept on the grant, the ledger posting and the audit trail.",
    )


class GrantCreditsForm(forms.Form):
    """Promotional credits or a credit adjustment, into the CREDITS wallet."""

    amount = ExactDecimalField(help_text="Credits, exact, up to 12 decimal places.")
    name = forms.CharField(
        max_length=200, required=False, help_text="What the customer sees, e.g. “Welcome credits”."
    )
    source = forms.ChoiceField(
        choices=[
            (GrantSource.PROMOTIONAL, "Promotional (free, funded by @Promotions)"),
            (GrantSource.ADJUSTMENT, "Adjustment (funded by @Adjustments)"),
        ]
    )
    priority = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=credits.MAX_PRIORITY,
        help_text="Lower is drawn first. Empty: 10 for promotional, 20 for adjustments "
        "(credits bought have 50).",
    )
    expires_at = forms.DateTimeField(
        required=False,
        help_text="Empty: never. E.g. 2027-01-31 00:00 (in the site's time zone).",
    )
    token = forms.CharField(widget=forms.HiddenInput)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("initial", {}).setdefault("token", uuid.uuid4().hex)
        super().__init__(*args, **kwargs)

    def clean_amount(self) -> Decimal:
        amount = self.cleaned_data["amount"]
        if amount <= 0:
            raise forms.ValidationError("A grant must be positive.")
        return amount

    def clean_token(self) -> str:
        token = self.cleaned_data["token"]
        if not re.fullmatch(r"[0-9a-f]{32}", token):
            raise forms.ValidationError("This form has expired; open it again.")
        return token


def grants_table(grants: Iterable[CreditGrant]) -> str:
    rows = [
        (
            reverse("admin:billing_creditgrant_change", args=[g.pk]),
            g.name,
            g.get_source_display(),
            g.priority,
            money(g.amount),
            money(g.remaining),
            g.get_status_display(),
            timestamp(g.expires_at) if g.expires_at else "never",
        )
        for g in grants
    ]
    if not rows:
        return "No credit grants."
    return format_html(
        "<table><thead><tr><th>grant</th><th>source</th><th>priority</th><th>granted</th>"
        "<th>left</th><th>status</th><th>expires</th></tr></thead><tbody>{}</tbody></table>",
        format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td>'
            '<td style="text-align:right">{}</td><td style="text-align:right">{}</td>'
            "<td>{}</td><td>{}</td></tr>",
            rows,
        ),
    )


class CustomerGrantViews(ServiceFormMixin):
    """The customer admin's grants: the table on its page, the page that grants credits and
    the action that opens it (its URL is in ``CustomerAdmin.get_urls``)."""

    @admin.display(description="credit grants")
    def credit_grants(self, customer):
        if customer.pk is None:
            return "—"
        live = customer.credit_grants.filter(status=GrantStatus.ACTIVE)
        ended = customer.credit_grants.exclude(status=GrantStatus.ACTIVE).order_by("-ended_at")
        return grants_table([*live, *ended[:10]])

    def grant_view(self, request, object_id):
        customer = self.changeable_object_or_404(request, object_id)
        form = GrantCreditsForm(request.POST or None)

        def post() -> HttpResponse:
            data = form.cleaned_data
            record_reason(data["name"])  # the trail's "why": what the grant is for
            # Credits funded as an adjustment wait for a second staff user when large; small
            # ones are granted at once, recorded as an applied request.
            outcome = services.request_credit_grant(
                customer=customer,
                amount=data["amount"],
                name=data["name"],
                source=data["source"],
                priority=data["priority"],
                expires_at=data["expires_at"],
                reference=f"admin:{data['token']}",
                staff_user_id=request.user.pk,
            )
            if outcome.request is not None:
                summary = f"Credit grant of {money(data['amount'])} credits ({data['name']})"
                self.log_change(request, customer, f"{summary}: awaiting approval")
                messages.warning(
                    request,
                    f"{summary} is at or above the approval threshold: it waits for another "
                    "staff user's approval before it is granted.",
                )
                return HttpResponseRedirect(
                    reverse("admin:billing_adjustmentrequest_change", args=[outcome.request.pk])
                )
            grant = outcome.grant
            assert grant is not None
            summary = f"Granted {money(grant.amount)} credits ({grant.name})"
            self.log_change(request, customer, f"{summary}: grant {grant.pk}")
            messages.success(request, f"{summary}.")
            return HttpResponseRedirect(self.change_url(customer))

        live = customer.credit_grants.filter(status=GrantStatus.ACTIVE)
        return self.run_service(request, form, post) or self.service_form_response(
            request,
            form=form,
            title=f"Grant credits to {customer}",
            submit_label="Grant credits",
            original=customer,
            intro="The credits land in the customer's CREDITS wallet at once. Usage draws on "
            "grants lowest priority first, then the soonest expiry; whatever is left at the "
            "expiry leaves the wallet for @CreditsExpired.",
            facts=[("Live grants", grants_table(live))],
        )

    @admin.action(description="Grant credits to the selected customer…", permissions=["change"])
    def grant_action(self, request, queryset):
        return self.redirect_to_one(request, queryset, "grant", "grant credits to")


class CreditAllocationInline(ReadOnlyInline):
    model = CreditAllocation
    fields = ("created_at", "kind", "amount_display", "transaction_link")
    readonly_fields = fields
    show_change_link = False
    ordering = ("-id",)

    @admin.display(description="amount")
    def amount_display(self, allocation):
        return money(allocation.amount)

    @admin.display(description="ledger transaction")
    def transaction_link(self, allocation):
        return admin_link(allocation.ledger_transaction, allocation.ledger_transaction.reference)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("ledger_transaction")


class Liveness(models.TextChoices):
    """The values of the ``live`` filter in the list's URL."""

    LIVE = "yes", "Live (active)"
    ENDED = "no", "Ended"


class GrantLiveFilter(admin.SimpleListFilter):
    title = "live"
    parameter_name = "live"

    def lookups(self, request, model_admin):
        return Liveness.choices

    def queryset(self, request, queryset):
        if self.value() == Liveness.LIVE:
            return queryset.filter(status=GrantStatus.ACTIVE)
        if self.value() == Liveness.ENDED:
            return queryset.exclude(status=GrantStatus.ACTIVE)
        return queryset


@admin.register(CreditGrant)
class CreditGrantAdmin(ReadOnlyAdmin):
    """Grants are made from the customer page (or the API) and change only through usage,
    expiry and voiding: read-only here, with the allocations that drew on each."""

    list_display = (
        "id",
        "customer",
        "name",
        "source",
        "granted",
        "left",
        "status",
        "expires",
    )
    # priority and the creation time on the grant's page: with them the list was 1,123 px
    # wide at 1280 px with the sidebar open (about 900 px for the table)
    list_filter = (GrantLiveFilter, "status", "source")
    search_fields = ("customer__external_id", "customer__name", "name", "reference")
    list_select_related = ("customer",)
    ordering = ("-id",)
    fields = (
        "customer",
        "name",
        "source",
        "priority",
        "granted",
        "left",
        "status",
        "expires_at",
        "ended_at",
        "reference",
        "funding_transaction",
        "created_by",
        "created_at",
    )
    readonly_fields = fields
    inlines = [CreditAllocationInline]
    actions = ["void_action", "expire_action", "refund_action"]

    @admin.display(description="granted", ordering="amount")
    def granted(self, grant):
        return money_cell(grant.amount, grant.currency)

    @admin.display(description="left", ordering="remaining")
    def left(self, grant):
        return money_cell(grant.remaining, grant.currency)

    @admin.display(description="expires", ordering="expires_at")
    def expires(self, grant):
        return date_cell(grant.expires_at) if grant.expires_at else "never"

    @admin.display(description="ledger transaction")
    def funding_transaction(self, grant):
        return admin_link(grant.ledger_transaction, grant.ledger_transaction.reference)

    def has_change_permission(self, request, obj=None):
        return False

    def has_void_permission(self, request):
        """Void, refund and expire move money: the change permission, not only view."""
        return request.user.has_perm("billing.change_creditgrant")

    def _with_reason(self, request, queryset, *, action: str, title: str, verb: str):
        """The reason asked on a confirmation page (the audit trail's "why"): the action's
        rows and a required reason; ``None`` until it is given."""
        form = ReasonForm(request.POST if request.POST.get("post") == "yes" else None)
        if form.is_valid():
            reason = form.cleaned_data["reason"]
            record_reason(reason)
            return reason
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "grants": queryset.select_related("customer"),
            "form": form,
            "verb": verb,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/billing/creditgrant/reason_confirmation.html", context
        )

    @admin.action(
        description="Void the selected grants (take back what is left)…", permissions=["void"]
    )
    def void_action(self, request, queryset):
        queryset = queryset.filter(status=GrantStatus.ACTIVE)
        reason = self._with_reason(
            request, queryset, action="void_action", title="Void credit grants", verb="Void"
        )
        if not isinstance(reason, str):
            return reason
        done = 0
        for grant in queryset:
            try:
                credits.void_grant(grant_id=grant.pk, staff_user_id=request.user.pk, reason=reason)
            except (BillingError, LedgerError) as error:
                messages.error(request, f"Grant {grant.pk}: {error}")
                continue
            self.log_change(request, grant, f"Voided: {reason}")
            done += 1
        messages.success(request, f"{done} grant(s) voided.")
        return None

    @admin.action(
        description="Refund what is left of the selected purchased grants…", permissions=["void"]
    )
    def refund_action(self, request, queryset):
        """Back to the card when bought by card, else paid back offline (offline payments
        only) or credited to the customer's balance (``invoicing.credit_refunds``)."""
        from invoicing.credit_refunds import refund_unused_credits

        queryset = queryset.filter(source=GrantSource.PURCHASE)
        reason = self._with_reason(
            request, queryset, action="refund_action", title="Refund credit grants", verb="Refund"
        )
        if not isinstance(reason, str):
            return reason
        done = 0
        for grant in queryset:
            try:
                refund = refund_unused_credits(
                    grant_id=grant.pk, reason=reason, staff_user_id=request.user.pk
                )
            except (BillingError, LedgerError) as error:
                messages.error(request, f"Grant {grant.pk}: {error}")
                continue
            self.log_change(
                request, grant, f"Refunded ({refund.method}, {refund.amount}): {reason}"
            )
            messages.info(
                request,
                f"Grant {grant.pk}: {money(refund.credits)} credits refunded as "
                f"{money(refund.amount)} {refund.currency} ({refund.get_method_display()}).",
            )
            done += 1
        messages.success(request, f"{done} grant(s) refunded.")
        return None

    @admin.action(
        description="Expire the selected grants that are past their expiry now",
        permissions=["void"],
    )
    def expire_action(self, request, queryset):
        due = list(
            queryset.filter(status=GrantStatus.ACTIVE, expires_at__lte=timezone.now()).values_list(
                "pk", flat=True
            )
        )
        for grant_id in due:
            credits.expire_grant(grant_id=grant_id)
        messages.success(request, f"{len(due)} grant(s) looked at.")
