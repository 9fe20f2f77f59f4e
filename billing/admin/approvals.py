"""Adjustment requests in the admin: every manual adjustment, admin top-up and credit grant
funded as an adjustment — the large ones waiting for a second staff user, the small ones
``applied`` at once (``billing.services.approvals``). Read-only rows; a pending one has
Approve and Reject buttons on its page, for users with the "approve adjustment requests"
permission other than the requester (the service refuses the requester as well, and the
database); its requester sees Withdraw instead."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path

from billing import services
from billing.admin.common import ServiceFormMixin, admin_link, money, timestamp
from billing.models import AdjustmentRequest, ApprovalStatus


class StatusFilter(admin.SimpleListFilter):
    """Status, pending by default: the list opens on what waits for a decision (the
    approver's queue); "All" shows every request, the applied ones included."""

    title = "status"
    parameter_name = "status"
    ALL = "all"

    def lookups(self, request, model_admin):
        return [*ApprovalStatus.choices, (self.ALL, "All")]

    def value(self):
        return super().value() or ApprovalStatus.PENDING

    def queryset(self, request, queryset):
        value = self.value()
        if value == self.ALL:
            return queryset
        if value not in ApprovalStatus.values:
            return queryset.none()
        return queryset.filter(status=value)

    def choices(self, changelist):
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == str(lookup),
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }


class DecisionForm(forms.Form):
    decision_note = forms.CharField(
        required=False,
        max_length=500,
        label="Note",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Optional for an approval; say why when rejecting.",
    )


@admin.register(AdjustmentRequest)
class AdjustmentRequestAdmin(ServiceFormMixin, admin.ModelAdmin):
    list_display = (
        "__str__",
        "kind",
        "customer_link",
        "amount_shown",
        "status",
        "requested_by",
        "requested_at_shown",
        "decided_by",
    )
    list_filter = (StatusFilter, "kind", "currency")
    search_fields = ("customer__external_id", "customer__name", "reason", "reference")
    list_select_related = ("customer", "requested_by", "decided_by")
    readonly_fields = (
        "kind",
        "customer_link",
        "amount_shown",
        "reason",
        "status",
        "requested_by",
        "requested_at_shown",
        "decided_by",
        "decided_at",
        "decision_note",
        "ledger_link",
        "reference",
    )
    fields = readonly_fields
    change_form_template = "admin/billing/adjustmentrequest/change_form.html"

    def has_add_permission(self, request):
        return False  # requests are made on a customer's "Adjust balance" page

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def may_decide(self, request: HttpRequest, obj: AdjustmentRequest | None) -> bool:
        return (
            request.user.has_perm("billing.approve_adjustmentrequest")
            and obj is not None
            and obj.status == ApprovalStatus.PENDING
            and obj.requested_by_id != request.user.pk
        )

    @admin.display(description="customer", ordering="customer__external_id")
    def customer_link(self, obj):
        return admin_link(obj.customer)

    @admin.display(description="amount", ordering="amount")
    def amount_shown(self, obj):
        return money(obj.amount, obj.currency)

    @admin.display(description="requested", ordering="requested_at")
    def requested_at_shown(self, obj):
        return timestamp(obj.requested_at)

    @admin.display(description="ledger transaction")
    def ledger_link(self, obj):
        txn = obj.ledger_transaction
        return admin_link(txn, txn.reference) if txn else "— (not posted)"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        extra = {
            "may_decide": self.may_decide(request, obj),
            "may_withdraw": obj is not None
            and obj.status == ApprovalStatus.PENDING
            and obj.requested_by_id == request.user.pk,
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/approve/",
                view(self.approve_view),
                name="billing_adjustmentrequest_approve",
            ),
            path(
                "<path:object_id>/reject/",
                view(self.reject_view),
                name="billing_adjustmentrequest_reject",
            ),
            path(
                "<path:object_id>/withdraw/",
                view(self.withdraw_view),
                name="billing_adjustmentrequest_withdraw",
            ),
            *super().get_urls(),
        ]

    def _decide(self, request: HttpRequest, object_id: str, *, approve: bool) -> HttpResponse:
        if not request.user.has_perm("billing.approve_adjustmentrequest"):
            raise PermissionDenied
        obj = self.object_or_404(request, object_id)
        form = DecisionForm(request.POST or None)
        verb = "Approve" if approve else "Reject"

        staff_id = request.user.pk
        assert staff_id is not None  # (admin_view: signed in)

        def decide() -> HttpResponse:
            note = form.cleaned_data["decision_note"]
            was_pending = obj.status == ApprovalStatus.PENDING
            if approve:
                decided = services.approve_adjustment(
                    request_id=obj.pk, approver_id=staff_id, note=note
                )
                assert decided.ledger_transaction is not None
                summary = (
                    f"Approved {decided}: posted as ledger transaction "
                    f"{decided.ledger_transaction.reference}"
                )
            else:
                decided = services.reject_adjustment(
                    request_id=obj.pk, decider_id=staff_id, note=note
                )
                summary = f"Rejected {decided}"
            # A repeated decision (a second click, another approver racing) changes nothing:
            # the log says so once, by whoever actually decided.
            if was_pending and decided.decided_by_id == staff_id:
                self.log_change(request, decided, summary)
                self.log_change(request, decided.customer, summary)
            messages.success(request, summary + ".")
            return HttpResponseRedirect(self.change_url(decided))

        return self.run_service(request, form, decide) or self.service_form_response(
            request,
            form=form,
            original=obj,
            title=f"{verb} adjustment #{obj.pk}",
            submit_label=f"{verb} adjustment",
            intro="Approving posts the adjustment to the customer's wallet now."
            if approve
            else "Rejecting closes the request; nothing is posted.",
            facts=[
                ("Kind", obj.get_kind_display()),
                ("Customer", str(obj.customer)),
                ("Amount", money(obj.amount, obj.currency)),
                ("Reason", obj.reason),
                ("Requested by", f"{obj.requested_by} at {timestamp(obj.requested_at)}"),
                ("Status", obj.get_status_display()),
            ],
        )

    def approve_view(self, request, object_id):
        return self._decide(request, object_id, approve=True)

    def withdraw_view(self, request, object_id):
        """The requester takes a pending request back (the service refuses anyone else)."""
        obj = self.object_or_404(request, object_id)
        if obj.requested_by_id != request.user.pk:
            raise PermissionDenied
        form = DecisionForm(request.POST or None)
        staff_id = request.user.pk

        def withdraw() -> HttpResponse:
            was_pending = obj.status == ApprovalStatus.PENDING
            done = services.withdraw_adjustment(
                request_id=obj.pk, staff_user_id=staff_id, note=form.cleaned_data["decision_note"]
            )
            summary = f"Withdrew {done}"
            if was_pending:
                self.log_change(request, done, summary)
                self.log_change(request, done.customer, summary)
            messages.success(request, summary + ".")
            return HttpResponseRedirect(self.change_url(done))

        return self.run_service(request, form, withdraw) or self.service_form_response(
            request,
            form=form,
            original=obj,
            title=f"Withdraw adjustment #{obj.pk}",
            submit_label="Withdraw my request",
            intro="Withdrawing closes your request; nothing is posted.",
            facts=[
                ("Kind", obj.get_kind_display()),
                ("Customer", str(obj.customer)),
                ("Amount", money(obj.amount, obj.currency)),
                ("Reason", obj.reason),
                ("Status", obj.get_status_display()),
            ],
        )

    def reject_view(self, request, object_id):
        return self._decide(request, object_id, approve=False)
