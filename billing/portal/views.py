"""Portal pages. Thin: find the signed-in member's customer, read through selectors, call
one service. Every object is looked up *within the customer*, so another customer's ids
answer 404 and nothing leaks.

Live updates: the balance, usage and recent-events fragments are polled by htmx every
second. Polling was chosen over server-sent events because the product runs on WSGI
workers (gunicorn sync): an SSE stream holds a worker for as long as a portal is open, so
a few dozen open portals would exhaust the pool, while a poll is a short request any worker
answers, cheap (a handful of indexed queries on the usage counters, never raw events) and
cached by the browser when nothing changed (ETag → 304).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import uuid
from datetime import timedelta
from decimal import ROUND_FLOOR, Decimal
from functools import wraps
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth.forms import SetPasswordForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import PermissionDenied
from django.db.models import Max, Q, Sum
from django.http import FileResponse, Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from billing import alerts, selectors
from billing.errors import BillingError
from billing.models import (
    AllocationKind,
    ConsumptionModel,
    CreditAllocation,
    PortalMember,
    Subscription,
    SubscriptionStatus,
)
from billing.portal import ratelimit, services
from billing.portal.spreadsheet import safe_cell
from billing.web.middleware import client_ip
from invoicing import payments, pdf
from invoicing.models import Invoice, InvoiceStatus
from invoicing.money import minor_unit_exponent, to_minor_unit
from invoicing.selectors import compute_invoice
from ledger.models import Balance
from metering import selectors as metering_selectors
from metering.models import DailyUsage, Event, ModelUsage, PeriodUsage

RECENT_EVENTS = 25
log = logging.getLogger(__name__)


def portal_view(view):
    """Signed in as a portal member: ``request.customer`` is theirs, and only theirs."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect(f"{reverse('portal:login')}?next={request.get_full_path()}")
        member = PortalMember.objects.select_related("customer").filter(user=request.user).first()
        if member is None:
            raise PermissionDenied("this account has no portal access")
        request.member, request.customer = member, member.customer
        return view(request, *args, **kwargs)

    return wrapped


# --- signing in -----------------------------------------------------------------------------


class PortalLoginView(LoginView):
    template_name = "portal/login.html"
    redirect_authenticated_user = True

    def get_default_redirect_url(self):
        return reverse("portal:overview")


class LinkRequestForm(forms.Form):
    email = forms.EmailField()


def link_request(request):
    """E-mail a sign-in link. The answer is the same page and status whether the address
    belongs to an account or not, and whether the e-mail could be sent or not (a failure
    is logged). Requests are limited per address and per client (429 past the limit,
    counted the same for known and unknown addresses)."""
    form = LinkRequestForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        email = form.cleaned_data["email"].strip().lower()
        within_limits = [
            ratelimit.hit(
                scope="portal-link-email",
                value=email,
                limit=settings.PORTAL_LINKS_PER_EMAIL_PER_HOUR,
            ),
            ratelimit.hit(
                scope="portal-link-client",
                value=client_ip(request) or "",
                limit=settings.PORTAL_LINKS_PER_CLIENT_PER_HOUR,
            ),
        ]
        if not all(within_limits):
            context = {"form": form, "limited": True}
            return render(request, "portal/link_request.html", context, status=429)
        try:
            services.send_sign_in_link(email=email)
        except Exception:  # noqa: BLE001 - the answer must not tell; the failure is logged
            log.exception("the sign-in link e-mail could not be sent")
        return render(request, "portal/link_sent.html", {"email": email})
    return render(request, "portal/link_request.html", {"form": form})


def link_sign_in(request, token: str):
    """GET shows a button (mail scanners that open links must not spend the link); POST
    signs in."""
    try:
        user = services.user_from_token(token)
    except services.LinkInvalid as error:
        return render(request, "portal/link_invalid.html", {"message": error.message}, status=400)
    if request.method == "POST":
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("portal:overview")
    return render(request, "portal/link_confirm.html", {"user": user})


@require_POST
def sign_out(request):
    logout(request)
    return redirect("portal:login")


# --- reads -----------------------------------------------------------------------------------


def _live_subscription(customer) -> Subscription | None:
    return (
        Subscription.objects.select_related("plan", "customer")
        .filter(customer=customer)
        .exclude(status=SubscriptionStatus.CANCELED)
        .first()
    )


def _money(value: Decimal | None, currency: str) -> str:
    if value is None:
        return "—"
    if currency in ("CREDITS", "TOKENS"):
        return f"{value.normalize():,f} {currency.lower()}"
    return f"{to_minor_unit(value, currency):,} {currency}"


def _exact(value: Decimal, currency: str) -> str:
    """An event's price exactly (they are often fractions of a cent), at least to the cent."""
    shown = value.normalize()
    exponent = shown.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:  # (not NaN or an infinity)
        shown = shown.quantize(Decimal("0.01"))
    return f"{shown:,f} {currency}".strip()


STATUS_LABELS: dict[str, str] = {
    InvoiceStatus.OPEN: "Open",
    InvoiceStatus.PAST_DUE: "Past due",
    InvoiceStatus.PAID: "Paid",
    InvoiceStatus.VOID: "Void",
    InvoiceStatus.DRAFT: "Draft",
}


def _overview_context(customer) -> dict:
    balance = metering_selectors.customer_balance(customer)
    subscription = _live_subscription(customer)
    context = {"customer": customer, "subscription": subscription, "balances": [], "meters": []}
    for row in balance["balances"]:
        context["balances"].append(
            {
                "currency": row["currency"],
                "posted": _money(row["posted"], row["currency"]),
                "held": _money(row["held"], row["currency"]),
                "available": _money(row["available"], row["currency"]),
                "negative": row["available"] < 0,
            }
        )
    if subscription is None:
        return context
    charges = {c.meter_id: c for c in subscription.plan.charges.select_related("meter")}
    counters = PeriodUsage.objects.filter(
        subscription=subscription, period_start=subscription.current_period_start
    )
    used = {c.meter_id: c for c in counters}
    for meter_id, charge in charges.items():
        quantity = used[meter_id].quantity if meter_id in used else Decimal(0)
        included = charge.included_quantity
        share = min(quantity / included * 100, Decimal(100)) if included else None
        context["meters"].append(
            {
                "name": charge.meter.name or charge.meter.code,
                "unit": charge.meter.unit,
                "used": f"{quantity.normalize():,f}",
                "included": f"{included.normalize():,f}" if included else None,
                "percent": int(share) if share is not None else None,
                "over": included and quantity > included,
            }
        )
    money = subscription.plan.currency
    spent = sum((c.charged for c in counters if c.currency == money), Decimal(0))
    upcoming = compute_invoice(
        subscription=subscription,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
    )
    start, end = subscription.current_period_start, subscription.current_period_end
    elapsed = max(timezone.now() - start, timedelta(seconds=1))
    # (a period that has ended but is not closed yet projects no further)
    factor = max(
        Decimal(1),
        Decimal((end - start) // timedelta(seconds=1)) / Decimal(elapsed // timedelta(seconds=1)),
    )
    # the usage so far, continued at the same pace to the period end, with its tax
    more = spent * (factor - 1) * (1 + upcoming.tax_percentage / 100)
    projected = upcoming.total + to_minor_unit(more, money)
    context.update(
        period_start=start,
        period_end=end,
        spent=_money(spent, money),
        upcoming=_money(upcoming.total, money),
        projected=_money(projected, money),
    )
    return context


def _version(customer) -> str:
    """Changes whenever anything the live fragments show changes: an ETag."""
    wallet_ids = customer.wallets.values("account_id")
    balance = Balance.objects.filter(account_id__in=wallet_ids).aggregate(v=Sum("version"))["v"]
    last_event = Event.objects.filter(customer=customer).aggregate(m=Max("id"))["m"]
    return hashlib.sha256(f"{balance}:{last_event}".encode()).hexdigest()[:16]


def _live(request, template: str, build) -> HttpResponse:
    etag = f'"{_version(request.customer)}"'
    if request.headers.get("If-None-Match") == etag:
        return HttpResponse(status=304, headers={"ETag": etag})
    response = render(request, template, build(request.customer))
    response["ETag"] = etag
    response["Cache-Control"] = "private, no-cache"
    return response


@portal_view
def overview(request):
    return render(request, "portal/overview.html", _overview_context(request.customer))


@portal_view
def overview_live(request):
    return _live(request, "portal/_overview_live.html", _overview_context)


def _recent_events(customer) -> dict:
    events = (
        Event.objects.filter(customer=customer)
        .select_related("ledger_transaction")
        .order_by("-timestamp", "-id")[:RECENT_EVENTS]
    )
    rows = []
    for event in events:
        prompt = event.input_tokens + event.cache_read_tokens + event.cache_write_tokens
        rows.append(
            {
                "at": event.timestamp,
                "name": event.event_name,
                "model": event.model or "—",
                "input": f"{prompt:,}",
                "cached": f"{event.cache_read_tokens:,}",
                "output": f"{event.output_tokens:,}",
                "amount": _exact(event.amount, event.currency),
                "transaction": event.ledger_transaction.reference
                if event.ledger_transaction
                else "—",
            }
        )
    return {"events": rows}


@portal_view
def usage(request):
    return render(
        request,
        "portal/usage.html",
        {"customer": request.customer, **_recent_events(request.customer)},
    )


@portal_view
def events_live(request):
    return _live(request, "portal/_events_live.html", _recent_events)


ZERO = Decimal(0)
CREDITS = "CREDITS"
OTHER_USAGE = "Other usage"  # the by-model table's row for usage no LLM model carries


def _usage_unit(plan) -> str:
    """What the customer's usage is charged in: its credits on a credits plan (never shown
    as the plan's money), else the plan's currency."""
    return CREDITS if plan.consumption_model == ConsumptionModel.CREDITS else plan.currency


def _split_to_minor_units(amounts: list[Decimal], total: Decimal, currency: str) -> list[Decimal]:
    """``amounts`` (exact, adding up to ``total``) rounded to the currency's minor unit so
    that they add up to ``total`` rounded (half-even, as everywhere): each floored, and the
    units left over given one each to the largest remainders (the first on a tie)."""
    quantum = Decimal(1).scaleb(-minor_unit_exponent(currency))
    floors = [amount.quantize(quantum, rounding=ROUND_FLOOR) for amount in amounts]
    left = int((to_minor_unit(total, currency) - sum(floors, Decimal(0))) / quantum)
    by_remainder = sorted(range(len(amounts)), key=lambda i: (floors[i] - amounts[i], i))
    for i in by_remainder[:left]:
        floors[i] += quantum
    return floors


@portal_view
def usage_data(request):
    """Chart data: this period's charges by day, and tokens and charges by model, in the
    unit the customer is charged in; the by-model rows (with an "other usage" row for usage
    of meters no model carries) add up to ``total``, the period's usage charged."""
    from django.http import JsonResponse

    subscription = _live_subscription(request.customer)
    if subscription is None:
        currency = request.customer.currency
        return JsonResponse(
            {
                "currency": currency,
                "total": _money(ZERO, currency),
                "totals": [],
                "days": [],
                "models": [],
            }
        )
    start, unit = subscription.current_period_start, _usage_unit(subscription.plan)
    days = (
        DailyUsage.objects.filter(subscription=subscription, period_start=start, currency=unit)
        .values("day")
        .annotate(amount=Sum("amount"), events=Sum("event_count"))
        .order_by("day")
    )
    by_model = ModelUsage.objects.filter(
        subscription=subscription, period_start=start, currency=unit
    )
    tokens = (
        Sum("input_tokens")
        + Sum("cache_read_tokens")
        + Sum("cache_write_tokens")
        + Sum("output_tokens")
    )
    models = (
        by_model.values("model", "day")
        .annotate(amount=Sum("amount"), tokens=tokens)
        .order_by("day", "model")
    )
    totals = list(
        by_model.values("model")
        .annotate(amount=Sum("amount"), tokens=tokens)
        .order_by("-amount", "model")
    )
    # The period's usage as the ledger charged it: each event's charge is what its period
    # counters' rounded totals moved, so the models' charges plus the rest add up to this.
    total = (
        PeriodUsage.objects.filter(
            Q(currency=unit) | Q(currency=""), subscription=subscription, period_start=start
        ).aggregate(total=Sum("charged"))["total"]
        or ZERO
    )
    rows = [
        {"model": t["model"], "tokens": f"{t['tokens']:,}", "amount": t["amount"]} for t in totals
    ]
    other = total - sum((t["amount"] for t in totals), ZERO)
    if other:
        rows.append({"model": OTHER_USAGE, "tokens": "—", "amount": other})
    if unit in (CREDITS, "TOKENS"):  # shown exactly: the parts add up as they are
        shown = [_money(row["amount"], unit) for row in rows]
    else:
        parts = _split_to_minor_units([row["amount"] for row in rows], total, unit)
        shown = [f"{part:,} {unit}" for part in parts]
    return JsonResponse(
        {
            "currency": unit,
            "total": _money(total, unit),
            "totals": [{**row, "amount": text} for row, text in zip(rows, shown, strict=True)],
            # decimal strings: the chart library turns them into screen positions only
            "days": [
                {"day": d["day"].isoformat(), "amount": str(d["amount"]), "events": d["events"]}
                for d in days
            ],
            "models": [
                {
                    "day": m["day"].isoformat(),
                    "model": m["model"],
                    "amount": str(m["amount"]),
                    "tokens": m["tokens"],
                }
                for m in models
            ],
        }
    )


class _Echo:
    def write(self, value):
        return value


@portal_view
def usage_csv(request):
    """Every event of the customer's current period (or since ?days= days ago), as CSV."""
    since = timezone.now() - timedelta(days=90)
    subscription = _live_subscription(request.customer)
    if subscription is not None:
        since = subscription.current_period_start
    events = (
        Event.objects.filter(customer=request.customer, timestamp__gte=since)
        .select_related("ledger_transaction")
        .order_by("timestamp", "id")
    )
    writer = csv.writer(_Echo())
    header = [
        "timestamp",
        "idempotency_key",
        "event_name",
        "provider",
        "model",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "amount",
        "currency",
        "ledger_transaction",
    ]

    def rows():
        yield writer.writerow(header)
        for e in events.iterator(chunk_size=2000):
            yield writer.writerow(
                [
                    e.timestamp.isoformat(),
                    # text a client sent: never run as a formula by a spreadsheet
                    safe_cell(e.idempotency_key),
                    safe_cell(e.event_name),
                    safe_cell(e.provider),
                    safe_cell(e.model),
                    e.input_tokens,
                    e.cache_read_tokens,
                    e.cache_write_tokens,
                    e.output_tokens,
                    e.reasoning_tokens,
                    f"{e.amount:f}",  # a number: a leading minus stays a minus
                    safe_cell(e.currency),
                    safe_cell(e.ledger_transaction.reference if e.ledger_transaction else ""),
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv")
    name = f"usage-{request.customer.external_id}-{since:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@portal_view
def credits(request):
    now = timezone.now()
    summary = selectors.customer_credits(request.customer, now=now)
    # what ended grants lost (expired or withdrawn) rather than spent
    lost = dict(
        CreditAllocation.objects.filter(
            grant__customer=request.customer, kind__in=[AllocationKind.EXPIRY, AllocationKind.VOID]
        )
        .values("grant_id")
        .annotate(total=Sum("amount"))
        .values_list("grant_id", "total")
    )

    def row(grant) -> dict:
        # whole days left, rounded up: "in 14 days" for a grant expiring 14 days from now
        days = -((now - grant.expires_at) // timedelta(days=1)) if grant.expires_at else None
        gone = lost.get(grant.pk, Decimal(0))
        return {
            "used": f"{(grant.used - gone).normalize():,f}",
            "remaining_lost": f"{gone.normalize():,f}",
            "name": grant.name,
            "source": grant.get_source_display(),
            "source_short": {
                "purchase": "Bought",
                "promotional": "Free",
                "adjustment": "Adjustment",
            }.get(grant.source, grant.source),
            "status": grant.get_status_display(),
            "granted": f"{grant.amount.normalize():,f}",
            "remaining": f"{grant.remaining.normalize():,f}",
            "percent_left": int(grant.remaining / grant.amount * 100),
            "expires_at": grant.expires_at,
            "expires_soon": days is not None and days < 7,
            "days_left": days,
            "created_at": grant.created_at,
            "ended_at": grant.ended_at,
        }

    wallets: list[dict[str, Any]] = [
        {
            "available": f"{w['available'].normalize():,f}",
            "held": f"{w['held'].normalize():,f}" if w["held"] else None,
            "live": [row(g) for g in w["live"]],
            "expiring": [row(g) for g in w["expiring"]],
            "ended": [row(g) for g in w["ended"][:50]],
            "ungranted": f"{w['ungranted'].normalize():,f}" if w["ungranted"] else None,
            "next_expiry": next(
                (
                    g
                    for g in sorted(
                        (g for g in w["live"] if g.expires_at and g.remaining),
                        key=lambda g: g.expires_at,
                    )
                ),
                None,
            ),
        }
        for w in summary
    ]
    for w in wallets:
        nxt = w["next_expiry"]
        w["next_expiry"] = (
            {"remaining": f"{nxt.remaining.normalize():,f}", "at": nxt.expires_at} if nxt else None
        )
    return render(
        request, "portal/credits.html", {"customer": request.customer, "wallets": wallets}
    )


def _customer_invoice(request, invoice_id: int) -> Invoice:
    invoice = (
        Invoice.objects.filter(pk=invoice_id, customer=request.customer)
        .exclude(status=InvoiceStatus.DRAFT)
        .first()
    )
    if invoice is None:
        raise Http404("no such invoice")
    return invoice


@portal_view
def invoices(request):
    rows = Invoice.objects.filter(customer=request.customer).exclude(status=InvoiceStatus.DRAFT)
    return render(
        request,
        "portal/invoices.html",
        {
            "customer": request.customer,
            "invoices": [
                {
                    "invoice": i,
                    "status": STATUS_LABELS[i.status],
                    "total": _money(i.total, i.currency),
                    "remaining": _money(i.amount_remaining, i.currency),
                }
                for i in rows.order_by("-period_start", "-id")
            ],
        },
    )


@portal_view
def invoice_detail(request, invoice_id: int):
    invoice = _customer_invoice(request, invoice_id)
    context = pdf.invoice_context(invoice)
    return render(
        request,
        "portal/invoice_detail.html",
        {
            "customer": request.customer,
            "invoice": invoice,
            "status": STATUS_LABELS[invoice.status],
            "doc": context,
            "can_pay": invoice.status in (InvoiceStatus.OPEN, InvoiceStatus.PAST_DUE)
            and invoice.amount_remaining > 0,
            "offline": payments.offline_mode(),
            "payments_available": payments.provider_available(),
        },
    )


@portal_view
def invoice_pdf(request, invoice_id: int):
    invoice = pdf.store_invoice_pdf(invoice_id=_customer_invoice(request, invoice_id).pk)
    return FileResponse(
        invoice.pdf.open("rb"),
        content_type="application/pdf",
        as_attachment=True,
        filename=f"{invoice.display_number}.pdf",
    )


@portal_view
@require_POST
def invoice_pay(request, invoice_id: int):
    invoice = _customer_invoice(request, invoice_id)
    back = request.build_absolute_uri(reverse("portal:invoice", args=[invoice.pk]))
    try:
        start = payments.checkout_invoice(
            invoice_id=invoice.pk, success_url=back + "?paid=1", cancel_url=back
        )
    except BillingError as error:
        messages.error(request, error.message)
        return redirect("portal:invoice", invoice.pk)
    if start.offline:
        messages.success(request, "Paid (offline mode: no card was charged).")
    return redirect(start.url)


class TopUpForm(forms.Form):
    amount = forms.DecimalField(min_value=Decimal("1"), max_digits=14, decimal_places=2)
    currency = forms.ChoiceField()
    request_id = forms.CharField(widget=forms.HiddenInput)

    def __init__(self, *args, currencies: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        currency = self.fields["currency"]
        assert isinstance(currency, forms.ChoiceField)
        currency.choices = [(c, c) for c in currencies]


@portal_view
def top_up(request):
    customer = request.customer
    currencies = list(customer.wallets.order_by("currency").values_list("currency", flat=True))
    form = TopUpForm(
        request.POST or None,
        currencies=currencies,
        initial={"request_id": uuid.uuid4().hex, "currency": customer.currency},
    )
    if request.method == "POST" and form.is_valid():
        back = request.build_absolute_uri(reverse("portal:overview"))
        try:
            start = payments.checkout_top_up(
                customer=customer,
                amount=form.cleaned_data["amount"],
                currency=form.cleaned_data["currency"],
                success_url=back + "?topped_up=1",
                cancel_url=request.build_absolute_uri(reverse("portal:top_up")),
                request_id=form.cleaned_data["request_id"],
            )
        except BillingError as error:
            form.add_error(None, error.message)
        else:
            if start.offline:
                messages.success(
                    request,
                    f"Added {form.cleaned_data['amount']} {form.cleaned_data['currency']} "
                    "(offline mode: no card was charged).",
                )
            return redirect(start.url)
    return render(
        request,
        "portal/top_up.html",
        {
            "customer": customer,
            "form": form,
            "offline": payments.offline_mode(),
            "payments_available": payments.provider_available(),
        },
    )


class AlertForm(forms.Form):
    threshold = forms.DecimalField(
        required=False, min_value=Decimal(0), max_digits=20, decimal_places=2
    )
    email = forms.EmailField(required=False)


@portal_view
def portal_settings(request):
    customer = request.customer
    alert = AlertForm(
        request.POST if request.POST.get("form") == "alert" else None,
        initial={
            "threshold": None
            if customer.low_balance_threshold is None
            else to_minor_unit(customer.low_balance_threshold, customer.currency),
            "email": customer.low_balance_email or request.user.email,
        },
    )
    password = SetPasswordForm(
        request.user, request.POST if request.POST.get("form") == "password" else None
    )
    if request.method == "POST":
        if request.POST.get("form") == "alert" and alert.is_valid():
            alerts.update_alert_settings(
                customer=customer,
                threshold=alert.cleaned_data["threshold"],
                email=alert.cleaned_data["email"] or "",
            )
            messages.success(request, "Alert saved.")
            return redirect("portal:settings")
        if request.POST.get("form") == "password" and password.is_valid():
            password.save()
            login(request, request.user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, "Password set: you can sign in with it from now on.")
            return redirect("portal:settings")
    return render(
        request,
        "portal/settings.html",
        {"customer": customer, "alert": alert, "password": password},
    )
