"""The projects page: each of the customer's projects (its teams, its API keys …) with what
it spent this billing period against its limit (``billing.projects``). Read-only: limits
are set by the seller's backend (the API) or finance staff (the admin)."""

from __future__ import annotations

from decimal import Decimal

from django.shortcuts import render

from billing import projects
from billing.portal.views.common import portal_view


def _amount(value: Decimal) -> str:
    """Two places at least (12.50), more when the amount has them (0.004512)."""
    cents = value.quantize(Decimal("0.01"))
    return f"{cents if cents == value else value.normalize():,f}"


@portal_view
def project_list(request):
    customer = request.customer
    found = list(projects.list_projects(customer=customer).order_by("archived_at", "key"))
    rows = []
    for budget in projects.project_budgets(customer=customer, projects=found):
        project, limit = budget.project, budget.project.spend_limit
        used = budget.spent + budget.held
        percent = None
        if limit is not None:
            percent = 100 if limit == 0 else min(int(used / limit * 100), 100)
        rows.append(
            {
                "key": project.key,
                "name": project.name,
                "archived": project.archived_at is not None,
                "spent": _amount(budget.spent),
                "held": _amount(budget.held) if budget.held else None,
                "limit": _amount(limit) if limit is not None else None,
                "remaining": _amount(budget.remaining) if budget.remaining is not None else None,
                "percent": percent,
                "over": limit is not None and budget.remaining == 0,
                "events": budget.event_count,
                "currency": budget.currency,
            }
        )
    period = projects.budget_period(customer)
    return render(
        request,
        "portal/projects.html",
        {"customer": customer, "rows": rows, "period_start": period[0], "period_end": period[1]},
    )
