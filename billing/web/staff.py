"""The admin's staff safeguards, as middleware (admin pages only, never the API or the
portal, so the ingest path is untouched):

- ``AdminAuditContextMiddleware``: every write made by an admin request runs inside a
  django-pghistory context carrying the staff user, the page and the reason typed on the
  form (a ``reason``, ``void_reason`` or ``decision_note`` field; a view names another with
  ``record_reason``). The history triggers (``billing.models.audit``) attach it to each
  event they record.
- ``AdminTwoFactorMiddleware``: a staff session not verified by a two-factor device
  (django-otp) of a user who has a confirmed device is signed out and sent to the admin's
  sign-in page, which asks for the device's code (``billing.admin.staff_security``): a
  session opened by a password alone elsewhere (the portal's sign-in shares the users and
  the session) does not reach the admin. When ``STAFF_REQUIRE_TWO_FACTOR`` is on, the
  session of a user without a device yet reaches only the enrolment page (every other
  admin page redirects there) until a device is confirmed."""

from __future__ import annotations

import pghistory
from django.conf import settings
from django.contrib.auth import logout
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django_otp import user_has_device

ADMIN_PREFIX = "/admin/"
REASON_FIELDS = ("reason", "void_reason", "decision_note")
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def staff_reason(request: HttpRequest) -> str:
    """The reason typed on the form being posted, if it has one (at most 500 characters)."""
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return ""
    for name in REASON_FIELDS:
        value = request.POST.get(name, "").strip()
        if value:
            return value[:500]
    return ""


def record_reason(text: str) -> None:
    """Add ``text`` as the reason of the admin request's audit context, for a form whose
    justification has another name than ``reason`` (a top-up's description, a credit
    grant's name). Outside a context (not an admin write) it does nothing."""
    text = text.strip()
    if text:
        pghistory.context(reason=text[:500])


class AdminAuditContextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method not in WRITE_METHODS or not request.path.startswith(ADMIN_PREFIX):
            return self.get_response(request)
        user = getattr(request, "user", None)
        context = {
            "user": user.pk if user is not None and user.is_authenticated else None,
            "url": request.path,
        }
        reason = staff_reason(request)
        if reason:
            context["reason"] = reason
        try:
            with pghistory.context(**context):
                return self.get_response(request)
        finally:
            # pghistory keeps its context in transaction-local settings: a transaction still
            # open (a test's; a caller's) must not lend it to the writes that follow.
            if connection.in_atomic_block and not connection.needs_rollback:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT set_config('pghistory.context_id', '', true), "
                        "set_config('pghistory.context_metadata', '', true)"
                    )


class AdminTwoFactorMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(ADMIN_PREFIX):
            user = request.user
            login = reverse("admin:login")
            if (
                user.is_authenticated
                and user.is_staff
                and not getattr(user, "is_verified", lambda: False)()  # (OTPMiddleware's)
                and request.path not in (login, reverse("admin:logout"))
            ):
                if user_has_device(user, confirmed=True):
                    logout(request)
                    return HttpResponseRedirect(f"{login}?next={request.path}")
                enrol = reverse("admin_two_factor")
                if settings.STAFF_REQUIRE_TWO_FACTOR and request.path != enrol:
                    return HttpResponseRedirect(enrol)
        return self.get_response(request)
