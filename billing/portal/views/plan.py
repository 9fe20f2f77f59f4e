"""The customer's plan: what it is on, what is scheduled (a change or a cancellation at the
period end), the plans it may switch to (``Plan.self_serve``), and changing or canceling —
now (the base fee prorated by time, as the API does) or at the period end — each through a
confirmation page whose POST calls ``billing.services``. A second submit of the same
confirmation (a double click, a reload) finds it done and says so."""

from __future__ import annotations

from decimal import Decimal

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone

from billing import services
from billing.errors import BillingError
from billing.models import Subscription, SubscriptionStatus
from billing.periods import plan_period_of, prorate_fee
from billing.portal import selectors
from billing.portal.views.common import money, portal_view

WHEN = {"now": "now", "period_end": "at the end of the period"}


def _when(request) -> str:
    at = request.POST.get("at") if request.method == "POST" else request.GET.get("at")
    if at not in WHEN:
        raise Http404("no such choice")
    return str(at)


def _rest_of_period(plan, subscription: Subscription) -> str:
    """The plan's base fee for what is left of the current plan period."""
    now = timezone.now()
    start, end = plan_period_of(subscription, subscription.current_period_start)
    if subscription.status == SubscriptionStatus.TRIALING or end <= now:
        return money(Decimal(0), plan.currency)
    amount = prorate_fee(
        subscription,
        plan.base_fee,
        used_from=max(now, start),
        used_until=end,
        period_start=start,
        period_end=end,
        per_plan=True,
    )
    return money(amount, plan.currency)


@portal_view
def plan(request):
    customer = request.customer
    subscription = selectors.live_subscription(customer)
    context: dict = {"customer": customer, "subscription": subscription}
    if subscription is None:
        context["ended"] = selectors.last_subscription(customer)
        return render(request, "portal/plan.html", context)
    proration = services.base_fee_proration(subscription=subscription)
    context.update(
        base_fee=money(subscription.plan.base_fee, subscription.plan.currency),
        proration=[
            {"line": line, "amount": money(line.amount, line.plan.currency)} for line in proration
        ]
        if len(proration) > 1
        else [],
        plans=[
            {"plan": p, "base_fee": money(p.base_fee, p.currency)}
            for p in selectors.self_serve_plans(subscription)
        ],
    )
    return render(request, "portal/plan.html", context)


def _confirm(request, subscription: Subscription, **context):
    return render(
        request,
        "portal/plan_confirm.html",
        {"customer": request.customer, "subscription": subscription, **context},
    )


@portal_view
def plan_change(request):
    customer = request.customer
    at = _when(request)
    subscription = selectors.live_subscription(customer)
    if subscription is None:
        messages.error(request, "You have no subscription to change.")
        return redirect("portal:plan")
    source = request.POST if request.method == "POST" else request.GET
    try:
        plan_id = int(source.get("plan", ""))
    except ValueError:
        raise Http404("no such plan") from None
    target = selectors.self_serve_plan(subscription, plan_id)
    if target is None:  # not offered here (or already the plan: see below)
        if request.method == "POST" and subscription.plan_id == plan_id:
            messages.success(request, f"You are on {subscription.plan.name}.")  # done already
            return redirect("portal:plan")
        raise Http404("no such plan")
    context = {
        "action": "change",
        "at": at,
        "when": WHEN[at],
        "target": target,
        "target_fee": money(target.base_fee, target.currency),
        "current_rest": _rest_of_period(subscription.plan, subscription),
        "target_rest": _rest_of_period(target, subscription),
    }
    if request.method != "POST":
        return _confirm(request, subscription, **context)
    try:
        services.change_subscription(
            subscription_id=subscription.pk, plan=target, at_period_end=at == "period_end"
        )
    except BillingError as error:
        return _confirm(request, subscription, error=error.message, **context)
    if at == "now":
        messages.success(request, f"You are now on {target.name}.")
    else:
        end = subscription.current_period_end
        messages.success(request, f"You move to {target.name} on {end:%Y-%m-%d %H:%M} UTC.")
    return redirect("portal:plan")


@portal_view
def plan_cancel(request):
    customer = request.customer
    at = _when(request)
    subscription = selectors.live_subscription(customer)
    if subscription is None:
        last = selectors.last_subscription(customer)
        if request.method == "POST" and last is not None:  # canceled already: a resubmit
            messages.success(request, "Your subscription is canceled.")
        else:
            messages.error(request, "You have no subscription to cancel.")
        return redirect("portal:plan")
    context = {"action": "cancel", "at": at, "when": WHEN[at]}
    if request.method != "POST":
        return _confirm(request, subscription, **context)
    try:
        services.cancel_subscription(subscription_id=subscription.pk, at_period_end=at != "now")
    except BillingError as error:
        return _confirm(request, subscription, error=error.message, **context)
    if at == "now":
        messages.success(request, "Your subscription is canceled.")
    else:
        end = subscription.current_period_end
        messages.success(request, f"Your subscription ends on {end:%Y-%m-%d %H:%M} UTC.")
    return redirect("portal:plan")
