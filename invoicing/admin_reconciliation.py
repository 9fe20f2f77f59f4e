"""Reconciliation in the admin: the history of runs (one row per period and scope), each
with its checks passed or failed and every difference with its cause; "Run now…" for a
chosen day or range (the same service as the daily task); and the provider usage import
(an OpenAI or Anthropic export matched against metered usage; read-only).

Runs are never edited here: a run is the result of ``invoicing.reconciliation`` and running
the same period again replaces it. Running needs the change permission on runs; the report
needs the view permission."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from billing.admin.common import ServiceFormMixin, timestamp
from billing.web.money import money_cell
from invoicing import provider_usage, reconciliation
from invoicing.models import ReconciliationRun, ReconciliationStatus
from invoicing.money import exact_amount

CURRENCY_HELP = "Empty: every currency."


class RunForm(forms.Form):
    first_day = forms.DateField(
        help_text="UTC day (YYYY-MM-DD). Default: yesterday.", required=False
    )
    last_day = forms.DateField(
        required=False, help_text="Empty: the first day alone; else a range, both days included."
    )
    currency = forms.RegexField(
        regex=r"^[A-Z][A-Z0-9_]{1,15}$", required=False, help_text=CURRENCY_HELP
    )

    def clean(self):
        data = super().clean() or {}
        first = data.get("first_day") or (timezone.now().date() - timedelta(days=1))
        last = data.get("last_day") or first
        if last < first:
            raise forms.ValidationError("The last day is before the first day.")
        data["first_day"], data["last_day"] = first, last
        return data


class ProviderUsageForm(forms.Form):
    provider = forms.ChoiceField(choices=[("openai", "OpenAI"), ("anthropic", "Anthropic")])
    usage_file = forms.FileField(
        label="Usage export",
        required=False,
        help_text="OpenAI /v1/organization/usage/completions (group_by=model) or Anthropic "
        "/v1/organizations/usage_report/messages (group_by[]=model) JSON, or CSV.",
    )
    cost_file = forms.FileField(
        label="Cost export",
        required=False,
        help_text="OpenAI /v1/organization/costs (group_by=line_item) or Anthropic "
        "/v1/organizations/cost_report (group_by[]=description) JSON, or CSV.",
    )

    MAX_BYTES = 20 * 1024 * 1024

    def clean(self):
        data = super().clean() or {}
        files = [f for f in (data.get("usage_file"), data.get("cost_file")) if f]
        if not files:
            raise forms.ValidationError("Upload a usage export, a cost export, or both.")
        export = None
        for upload in files:
            if upload.size > self.MAX_BYTES:
                raise forms.ValidationError(f"{upload.name}: larger than 20 MB.")
            try:
                export = provider_usage.parse_export(
                    upload.read(), provider=data.get("provider", ""), export=export
                )
            except provider_usage.ExportError as error:
                raise forms.ValidationError(f"{upload.name}: {error}") from None
        data["export"] = export
        return data


def _status_badge(status: str) -> str:
    color = "#1a7f37" if status == ReconciliationStatus.PASSED else "#cf222e"
    return format_html(
        '<strong class="recon-{}" style="color:{}">{}</strong>', status, color, status.upper()
    )


def _money(text: str, currency: str) -> str:
    """A check's amount (exact text, ``reconciliation._text``) rounded to the currency's
    minor unit, the exact figure on hover."""
    return money_cell(Decimal(text), currency)


def _check_table(check: dict) -> str:
    totals = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (
                cur,
                t["compared"],
                _money(t["expected"], cur),
                _money(t["actual"], cur),
                t["differences"],
            )
            for cur, t in check["totals"].items()
        ),
    )
    # A difference exactly: a fraction of a cent is one, and rounded it would read 0.00.
    differences = format_html_join(
        "",
        '<tr class="recon-difference"><td>{}</td><td>{}</td><td>{}</td>'
        '<td>{}</td><td>{}</td><td class="money">{}</td></tr>',
        (
            (
                d["currency"],
                d["item"],
                d["cause"],
                _money(d["expected"], d["currency"]),
                _money(d["actual"], d["currency"]),
                exact_amount(Decimal(d["difference"]), d["currency"]),
            )
            for d in check["differences"]
        ),
    )
    more = check["difference_count"] - len(check["differences"])
    return format_html(
        '<section class="recon-check" id="check-{}"><h3>{} {}</h3>'
        "<table><thead><tr><th>Currency</th><th>Compared</th><th>Expected</th>"
        "<th>Actual</th><th>Differences</th></tr></thead><tbody>{}</tbody></table>{}{}</section>",
        check["name"],
        _status_badge("passed" if check["passed"] else "failed"),
        check["label"],
        totals or format_html("<tr><td colspan=5>nothing in this period</td></tr>"),
        format_html(
            "<table><thead><tr><th>Currency</th><th>Where</th><th>Cause</th><th>Expected</th>"
            "<th>Actual</th><th>Actual − expected</th></tr></thead><tbody>{}</tbody></table>",
            differences,
        )
        if differences
        else "",
        format_html("<p>… and {} more (run the command for all).</p>", more) if more > 0 else "",
    )


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(ServiceFormMixin, admin.ModelAdmin):
    list_display = (
        "period",
        "scope_shown",
        "status_shown",
        "checks_shown",
        "difference_count",
        "finished_shown",
    )
    list_filter = ("status", "scope")
    fields = (
        "period",
        "scope_shown",
        "status_shown",
        "difference_count",
        "runs",
        "triggered_by",
        "started_shown",
        "duration_ms",
        "alerted_shown",
        "report",
    )
    readonly_fields = fields
    change_list_template = "admin/invoicing/reconciliationrun/change_list.html"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # a run is a result: never edited (run the period again instead)

    def has_delete_permission(self, request, obj=None):
        return False

    def may_run(self, request: HttpRequest) -> bool:
        return request.user.has_perm("invoicing.change_reconciliationrun")

    @admin.display(description="Period", ordering="period_start")
    def period(self, run: ReconciliationRun) -> str:
        last = (run.period_end - timedelta(days=1)).date()
        first = run.period_start.date()
        return f"{first}" if first == last else f"{first} – {last}"

    @admin.display(description="Scope", ordering="scope")
    def scope_shown(self, run: ReconciliationRun) -> str:
        return run.scope or "all currencies"

    @admin.display(description="Status", ordering="status")
    def status_shown(self, run: ReconciliationRun) -> str:
        return _status_badge(run.status)

    @admin.display(description="Checks")
    def checks_shown(self, run: ReconciliationRun) -> str:
        passed = sum(1 for c in run.checks if c["passed"])
        failed = format_html_join(
            ", ",
            '<span title="{}" style="color:#cf222e">✗ {}</span>',
            ((c["label"], c["name"]) for c in run.checks if not c["passed"]),
        )
        summary = format_html("{}/{} passed", passed, len(run.checks))
        return format_html("{}<br>{}", summary, failed) if failed else summary

    @admin.display(description="Finished", ordering="finished_at")
    def finished_shown(self, run: ReconciliationRun) -> str:
        return timestamp(run.finished_at)

    @admin.display(description="Started")
    def started_shown(self, run: ReconciliationRun) -> str:
        return timestamp(run.started_at)

    @admin.display(description="Alerted")
    def alerted_shown(self, run: ReconciliationRun) -> str:
        return timestamp(run.alerted_at)

    @admin.display(description="Checks and differences")
    def report(self, run: ReconciliationRun) -> str:
        return format_html_join("", "{}", ((_check_table(c),) for c in run.checks))

    # --- pages --------------------------------------------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("run/", wrap(self.run_view), name="invoicing_reconciliationrun_run"),
            path(
                "provider-usage/",
                wrap(self.provider_usage_view),
                name="invoicing_reconciliationrun_provider_usage",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra = {"may_run": self.may_run(request), **(extra_context or {})}
        return super().changelist_view(request, extra)

    def run_view(self, request: HttpRequest) -> HttpResponse:
        if not self.may_run(request):
            raise PermissionDenied
        yesterday: date = timezone.now().date() - timedelta(days=1)
        form = RunForm(request.POST or None, initial={"first_day": yesterday})

        def run() -> HttpResponse:
            data = form.cleaned_data
            start = reconciliation.day_bounds(data["first_day"])[0]
            end = reconciliation.day_bounds(data["last_day"])[1]
            result = reconciliation.run_reconciliation(
                start=start,
                end=end,
                currency=data.get("currency") or "",
                triggered_by=f"admin: {request.user.get_username()}",
            )
            level = messages.SUCCESS if result.status == "passed" else messages.WARNING
            messages.add_message(
                request, level, f"{result} — {result.difference_count} difference(s)."
            )
            return HttpResponseRedirect(self.change_url(result))

        return self.run_service(request, form, run) or self.service_form_response(
            request,
            form=form,
            title="Run the reconciliation",
            submit_label="Run now",
            intro="Checks, for the chosen UTC days: every ledger balance = Σ its entries; "
            "rated events = ledger usage postings; invoice usage = rated events; finalized "
            "invoices = their postings; Stripe payments = the clearing account. The result "
            "replaces an earlier run of the same period and scope; differences alert finance.",
        )

    def provider_usage_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = ProviderUsageForm(request.POST or None, request.FILES or None)
        match = None
        if request.method == "POST" and form.is_valid():
            match = provider_usage.match_export(form.cleaned_data["export"])
        context = {
            **self.admin_site.each_context(request),
            "title": "Provider usage import",
            "opts": self.opts,
            "form": form,
            "match": match,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/invoicing/reconciliationrun/provider_usage.html", context
        )
