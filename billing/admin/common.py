"""What every admin page of the apps shares: exact money and time display, links, the JSON
and decimal form fields that read input as the API does, and ``ServiceFormMixin`` (a page
whose form ends in one service call). Used by ``metering.admin`` and ``invoicing.admin``
too."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from decimal import Decimal, localcontext
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.timezone import localtime

from billing import limits
from billing.errors import BillingError
from billing.models import PRICE_DIGITS, PRICE_PLACES
from billing.models.common import exact_money
from billing.web import jsonstrict
from billing.web.money import money_cell  # noqa: F401 - the admin modules' name for it
from invoicing.money import exact_amount, format_amount
from ledger.errors import LedgerError
from ledger.models import AMOUNT_DIGITS, AMOUNT_PLACES

CURRENCY_RE = r"^[A-Z]{3}$"


# --- display -----------------------------------------------------------------------------------


money = exact_money  # the admin modules' name for it


def is_token_unit(unit: str) -> bool:
    """A meter counting tokens ("tokens", "output tokens"): its prices read per million."""
    return "token" in unit.lower()


def unit_price_cell(price: Decimal | None, currency: str, unit: str) -> str:
    """A price per unit; per token read per million tokens ("3.00 USD / M tokens"), as the
    providers publish them, the exact price per token on hover."""
    if price is None:
        return "—"
    if not is_token_unit(unit):
        return format_html(
            '<span class="money" title="{} per {} (exact)">{}</span>',
            exact_amount(price, currency),
            unit or "unit",
            exact_amount(price, currency),
        )
    per_million = price * 1_000_000
    return format_html(
        '<span class="money" title="{} per token (exact)">{} / M tokens</span>',
        exact_amount(price, currency),
        exact_amount(per_million, currency)
        if per_million != to_display(per_million, currency)
        else format_amount(per_million, currency),
    )


def to_display(value: Decimal, currency: str) -> Decimal:
    """``value`` as ``format_amount`` rounds it."""
    return Decimal(format_amount(value, currency).split(" ")[0].replace(",", ""))


def decimal_text(value: Decimal | None) -> str | None:
    """A Decimal as plain JSON-friendly text without trailing zeros ("1000", "0.000002")."""
    if value is None:
        return None
    with localcontext(prec=AMOUNT_DIGITS + 2):
        return format(value.normalize(), "f")


def quantity(value: Decimal | None) -> str:
    """A quantity of units grouped, without trailing zeros: 10000000.00 → "10,000,000",
    1234.5 → "1,234.5"; "—" for None."""
    if value is None:
        return "—"
    text = decimal_text(value) or "0"
    whole, _, fraction = text.partition(".")
    sign = "-" if whole.startswith("-") else ""
    return f"{sign}{int(whole.lstrip('-')):,}" + (f".{fraction}" if fraction else "")


def timestamp(value) -> str:
    return "—" if value is None else date_format(localtime(value), "DATETIME_FORMAT")


def date_cell(value) -> str:
    """A list's time as its date ("Dec. 21, 2026"), the full time on hover: a list column of
    "Dec. 21, 2026, 10:04 a.m." is about 170 px, the widest cell of most rows."""
    if value is None:
        return "—"
    moment = localtime(value)
    return format_html(
        '<span title="{}">{}</span>',
        date_format(moment, "DATETIME_FORMAT"),
        date_format(moment, "DATE_FORMAT"),
    )


def time_cell(value) -> str:
    """A list's time to the minute, as one unbreakable "2026-12-21 10:04" (about 115 px),
    the site's full format on hover: where the hour matters (deliveries, alerts)."""
    if value is None:
        return "—"
    moment = localtime(value)
    return format_html(
        '<span class="nowrap" title="{}">{}</span>',
        date_format(moment, "DATETIME_FORMAT"),
        f"{moment:%Y-%m-%d %H:%M}",
    )


def token_cell(text: object, url: str | None = None) -> str:
    """A long unbroken token (a reference, a URL, an id) cut short with an ellipsis where it
    would widen its list (the ``.token`` class, admin.css), the full text on hover."""
    if text is None or text == "":
        return "—"
    if url is None:
        return format_html('<span class="token" title="{}">{}</span>', text, text)
    return format_html('<a class="token" href="{}" title="{}">{}</a>', url, text, text)


def admin_link(obj, text: str | None = None) -> str:
    if obj is None:
        return "—"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else str(obj))


# --- pages whose form ends in one service call -------------------------------------------------


def report_service_error(
    request: HttpRequest, form: forms.BaseForm, error: BillingError | LedgerError
) -> None:
    """Show a service's expected failure: on the form field it names (``param``, e.g.
    ``charges[0].tiers`` → the charges field), else as an error message."""
    param = getattr(error, "param", None) or ""
    field = re.split(r"[.\[]", param, maxsplit=1)[0]
    if field and field in form.fields:
        form.add_error(field, error.message if field == param else f"{param}: {error.message}")
    else:
        messages.error(request, f"{error.message} ({error.code})")


if TYPE_CHECKING:  # what the mixin is mixed into: a ModelAdmin's site, options and views
    _ModelAdmin = admin.ModelAdmin[Any]
else:
    _ModelAdmin = object


class ServiceFormMixin(_ModelAdmin):
    """Admin pages whose form ends in one service call (``admin/billing/service_form.html``).

    The form only validates input; the service writes. A failure the service reports is
    shown on the form, which keeps what was typed."""

    service_form_template = "admin/billing/service_form.html"

    def service_form_response(
        self,
        request: HttpRequest,
        *,
        form: forms.BaseForm,
        title: str,
        submit_label: str,
        original: Any = None,
        intro: str = "",
        facts: Iterable[tuple[str, Any]] = (),
        fieldsets: list | None = None,
    ) -> TemplateResponse:
        admin_form = helpers.AdminForm(
            form,  # type: ignore[arg-type]  # any form works; django-stubs asks for a ModelForm
            fieldsets or [(None, {"fields": list(form.fields)})],
            {},
        )
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "original": original,
            "adminform": admin_form,
            "form": form,
            "intro": intro,
            "facts": list(facts),
            "submit_label": submit_label,
            "media": self.media + admin_form.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.service_form_template, context)

    def run_service(
        self, request: HttpRequest, form: forms.BaseForm, call: Callable[[], HttpResponse]
    ) -> HttpResponse | None:
        """``call()`` once the form is valid; None (re-render the form) if it failed."""
        if request.method != "POST" or not form.is_valid():
            return None
        try:
            return call()
        except (BillingError, LedgerError) as error:
            report_service_error(request, form, error)
            return None

    def object_or_404(self, request: HttpRequest, object_id: str):
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"{self.opts.verbose_name} {object_id!r} does not exist")
        return obj

    def changeable_object_or_404(self, request: HttpRequest, object_id: str):
        """The object of a page that changes it: 404 if missing, 403 without the change
        permission on it."""
        obj = self.object_or_404(request, object_id)
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        return obj

    def change_url(self, obj) -> str:
        return reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_change",
            args=[obj.pk],
        )

    def redirect_to_one(
        self, request: HttpRequest, queryset: QuerySet, url_name: str, what: str
    ) -> HttpResponse | None:
        """An action that opens a page of one object (``<app>_<model>_<url_name>``): a
        warning unless exactly one is selected."""
        if queryset.count() != 1:
            messages.warning(request, f"Select exactly one {self.opts.verbose_name} to {what}.")
            return None
        return HttpResponseRedirect(
            reverse(
                f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{url_name}",
                args=[queryset.get().pk],
            )
        )


# --- form fields: input read as the API reads it -----------------------------------------------


def strict_json(text: str, *, path: str = "") -> Any:
    """JSON typed into the admin, read as the API reads a body (``billing.web.jsonstrict``): a
    key written twice, NaN or a NUL character is a form error naming what is wrong."""
    try:
        return jsonstrict.loads(text, path=path)
    except jsonstrict.DuplicateKey as error:
        raise forms.ValidationError(
            f"The key {error.path!r} is written more than once; write it once."
        ) from None
    except ValueError as error:
        raise forms.ValidationError(f"Not valid JSON: {error}") from None


class StrictJSONField(forms.JSONField):
    """Every JSON textarea of the admin (customer metadata, …): read by ``strict_json``."""

    def to_python(self, value):
        if not self.disabled and isinstance(value, str) and value.strip():
            strict_json(value)
        return super().to_python(value)


def check_currency(code: str) -> str:
    """An ISO 4217 code, as the API takes a customer's currency (``billing.limits``)."""
    problem = limits.currency_problem(code)
    if problem:
        raise forms.ValidationError(problem[0].upper() + problem[1:] + ".")
    return code


class ExactDecimalField(forms.DecimalField):
    """A Decimal read from text, never through float; ``places`` beyond the scale refused;
    at most ``limit`` in absolute value (the documented maximum amount unless told, None:
    only the column's digits bound it)."""

    def __init__(
        self,
        *,
        digits: int = AMOUNT_DIGITS,
        places: int = AMOUNT_PLACES,
        limit: Decimal | None = limits.MAX_AMOUNT,
        **kwargs,
    ):
        self.limit = limit
        super().__init__(max_digits=digits, decimal_places=places, **kwargs)

    def validate(self, value):
        super().validate(value)
        if value is not None and self.limit is not None:
            problem = limits.amount_problem(value, limit=self.limit)
            if problem:
                raise forms.ValidationError(problem[0].upper() + problem[1:] + ".")


class PriceField(ExactDecimalField):
    """A plan's price (its column bounds it); ``limit`` given for an amount (a credit limit)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("limit", None)
        super().__init__(digits=PRICE_DIGITS, places=PRICE_PLACES, **kwargs)
