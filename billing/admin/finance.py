"""The finance home: the admin's first page (``/admin/``, before the stock index in the
URLconf), answering what finance asks every morning — what did we rate and invoice, what
is the MRR, what is owed and how overdue, who are the largest customers, where is the
margin negative, what credits are outstanding and about to expire — per currency, with
the list of models below it. The figures come from ``invoicing.finance`` (counters and
invoices), read from the snapshot ``invoicing.finance_snapshot`` stores (refreshed by a
beat task and by the *Refresh now* button, ``finance_refresh_view``); the charts are
inline SVG (``billing.admin.charts``).

Staff without the permission to view invoices see the list of models only."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.admin import charts
from billing.admin.common import money_cell
from invoicing import finance, finance_snapshot
from invoicing.money import UNIT_PLACES, format_amount

FIGURES_PERMISSION = "invoicing.view_invoice"


def _percent(value: Decimal | None) -> str:
    return "—" if value is None else f"{value:.1f} %"


def _margin_rows(margins: list[finance.Margin], currency: str) -> list[dict[str, Any]]:
    scale = max((abs(m.margin) for m in margins), default=Decimal(0))
    return [
        {
            "label": m.label,
            "url": reverse("admin:billing_customer_change", args=[m.customer_id])
            if m.customer_id
            else "",
            "revenue": money_cell(m.revenue, currency),
            "cost": money_cell(m.cost, currency),
            "margin": money_cell(m.margin, currency),
            "percent": _percent(m.percent),
            "negative": m.negative,
            "bar": charts.diverging_bar(m.margin, scale),
        }
        for m in margins
    ]


def currency_section(figures: finance.CurrencyFinance) -> dict[str, Any]:
    """What the template shows for one currency: formatted figures and charts."""
    code = figures.currency
    labels = [f"{m.start:%b %Y}" for m in figures.months]
    revenue_chart = charts.grouped_bars(
        labels,
        [
            ("Rated", charts.BLUE, [m.rated for m in figures.months]),
            ("Invoiced", charts.ORANGE, [m.invoiced for m in figures.months]),
        ],
        currency=code,
        title=f"Rated and invoiced per month, {code}",
    )
    aging = [
        (bucket, colour) for bucket, colour in zip(figures.aging, charts.AGING_COLOURS, strict=True)
    ]
    change = figures.mrr_change
    # A unit that is not money (credits) shows only what it has; a currency shows it all,
    # zeros included (a zero is an answer too).
    every = code not in UNIT_PLACES
    return {
        "currency": code,
        "show_revenue": every or any(m.rated or m.invoiced for m in figures.months),
        "show_mrr": every or bool(figures.mrr or figures.mrr_before),
        "show_receivables": every or any(b.count for b in figures.aging),
        "show_margin": every or bool(figures.margin_by_model),
        "show_credits": every or bool(figures.credits_outstanding),
        "revenue_chart": revenue_chart,
        "months": [
            {
                "label": label,
                "rated": money_cell(m.rated, code),
                "invoiced": money_cell(m.invoiced, code),
            }
            for label, m in zip(labels, figures.months, strict=True)
        ],
        "mrr": money_cell(figures.mrr, code),
        "mrr_before": money_cell(figures.mrr_before, code),
        "mrr_change": money_cell(change, code, signed=True),
        "mrr_trend": "up" if change > 0 else "down" if change < 0 else "flat",
        "mrr_change_percent": _percent(change * 100 / figures.mrr_before)
        if figures.mrr_before
        else "",
        "receivable": money_cell(figures.receivable, code),
        "overdue": money_cell(figures.overdue, code),
        "has_overdue": figures.overdue > 0,
        "aging_chart": charts.stacked_bar(
            [(b.label, colour, b.amount) for b, colour in aging],
            currency=code,
            title=f"Receivables by age, {code}",
        ),
        "aging": [
            {
                "label": b.label,
                "amount": money_cell(b.amount, code),
                "count": b.count,
                "colour": colour,
                "key": b.key,
            }
            for b, colour in aging
        ],
        "top_customers": [
            {
                "name": c.name or c.external_id,
                "external_id": c.external_id,
                "url": reverse("admin:billing_customer_change", args=[c.customer_id]),
                "invoiced": money_cell(c.invoiced, code),
                "outstanding": money_cell(c.outstanding, code),
            }
            for c in figures.top_customers
        ],
        "margin_total": figures.margin_total,
        "margin_total_text": money_cell(figures.margin_total.margin, code)
        if figures.margin_total
        else "",
        "margin_total_percent": _percent(figures.margin_total.percent)
        if figures.margin_total
        else "",
        "margin_by_customer": _margin_rows(figures.margin_by_customer, code),
        "margin_by_model": _margin_rows(figures.margin_by_model, code),
        "credits_outstanding": money_cell(figures.credits_outstanding, code),
        "credits_expiring": money_cell(figures.credits_expiring, code),
        "grants_expiring": figures.grants_expiring,
        "has_credits": bool(figures.credits_outstanding),
        "headline": format_amount(figures.mrr, code),
    }


def finance_home_view(request: HttpRequest) -> HttpResponse:
    site = admin.site
    request.current_app = site.name
    show_figures = request.user.has_perm(FIGURES_PERMISSION)
    # The stored snapshot (one query; computed here only before the first refresh)
    home, snapshot = finance_snapshot.home() if show_figures else (None, None)
    each = site.each_context(request)
    context = {
        **each,
        "title": site.index_title,
        "subtitle": None,
        # the list each_context built for the sidebar (building it again doubled its cost)
        "app_list": each["available_apps"],
        "show_figures": show_figures,
        "home": home,
        "sections": [currency_section(c) for c in home.currencies] if home else [],
        "open_invoices_url": reverse("admin:invoicing_invoice_changelist")
        + "?status__in=open,past_due",
        "snapshot": snapshot,
        "stale": finance_snapshot.is_stale(snapshot),
        "refresh_minutes": finance_snapshot.REFRESH_MINUTES,
        "stale_minutes": int(finance_snapshot.STALE_AFTER.total_seconds() // 60),
    }
    return TemplateResponse(request, "admin/finance_home.html", context)


@require_POST
def finance_refresh_view(request: HttpRequest) -> HttpResponse:
    """*Refresh now*: compute the figures into the snapshot at once (behind ``admin_view``:
    staff, CSRF-checked; the figures' permission required). A refresh already running is
    not doubled: its figures are the ones the page will show."""
    if not request.user.has_perm(FIGURES_PERMISSION):
        raise PermissionDenied
    snapshot = finance_snapshot.refresh()
    if snapshot is None:
        messages.info(request, "A refresh is already running: reload the page in a moment.")
    else:
        messages.success(
            request,
            f"Figures refreshed as of {snapshot.computed_at:%Y-%m-%d %H:%M:%S} UTC "
            f"(computed in {snapshot.duration_ms} ms).",
        )
    return HttpResponseRedirect(reverse("finance-home"))
