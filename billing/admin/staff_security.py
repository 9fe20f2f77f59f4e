"""Two-factor sign-in for staff (django-otp, TOTP).

- The admin's sign-in form asks for an authentication code; it is checked for a user who has
  a confirmed device. When ``STAFF_REQUIRE_TWO_FACTOR`` is on, a user without a device yet
  signs in with the password into a session that reaches only the enrolment page
  (``billing.web.staff.AdminTwoFactorMiddleware``) until a device is confirmed, which
  verifies the session — the first sign-in is the enrolment, as services that require
  two-factor do.
- "Two-factor" (``/admin/two-factor/``, linked from the admin's user tools): a signed-in
  staff user enrols an authenticator app for themself. The secret and its QR code are shown
  once, on the page that creates the device; the device counts only once a code from it
  has been typed back (confirmed). A user who has a confirmed device enrols another only
  from a session verified by a code. Administrators see and remove devices in the admin's
  "TOTP devices" list (django-otp's; the secret is never shown there:
  ``OTP_ADMIN_HIDE_SENSITIVE_DATA``).
- Passwords stay rate-limited by django-axes (settings ``AXES_*``); wrong codes are
  throttled per device by django-otp (a growing delay after each failure)."""

from __future__ import annotations

import base64
import io

import qrcode
import qrcode.image.svg
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.safestring import mark_safe
from django_otp import devices_for_user, user_has_device
from django_otp import login as otp_login
from django_otp.admin import OTPAdminAuthenticationForm
from django_otp.plugins.otp_totp.models import TOTPDevice

UNCONFIRMED_NAME = "authenticator (being enrolled)"


class StaffSignInForm(OTPAdminAuthenticationForm):
    """Password, then the device's code when the user has a device. (Required and without
    one: the password opens a session confined to enrolling one.)"""

    def clean(self):
        self.cleaned_data = AdminAuthenticationForm.clean(self)
        user = self.get_user()
        if user is not None and user_has_device(user, confirmed=True):
            self.clean_otp(user)
        return self.cleaned_data

    def _chosen_device(self, user):
        """The device picked on the form, else the user's only confirmed device (the usual
        case: one authenticator app), so that the code is asked for on the first page."""
        device = super()._chosen_device(user)
        if device is None:
            devices = list(devices_for_user(user, confirmed=True, for_verify=True))
            device = devices[0] if len(devices) == 1 else None
        return device


class ConfirmDeviceForm(forms.Form):
    token = forms.CharField(
        label="Code from the app", max_length=8, widget=forms.TextInput({"autocomplete": "off"})
    )


def qr_svg(text: str) -> str:
    """An inline SVG of ``text`` (no image request: the page's CSP allows no other host)."""
    buffer = io.BytesIO()
    qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage).save(buffer)
    return buffer.getvalue().decode()


def two_factor_view(request: HttpRequest) -> HttpResponse:
    """Enrol (POST ``start``), confirm (POST ``token``) or see the state of one's device.

    A user who already has a confirmed device needs a session verified by it (its code typed
    at the sign-in): a password alone must not enrol a second device. (The admin's
    middleware already signs such a session out; this holds without it too.)"""
    user = request.user
    devices = TOTPDevice.objects.filter(user=user)
    if (
        devices.filter(confirmed=True).exists()
        and not getattr(user, "is_verified", lambda: False)()
    ):
        logout(request)
        login = reverse("admin:login")
        return HttpResponseRedirect(f"{login}?next={reverse('admin_two_factor')}")
    context = {**admin.site.each_context(request), "title": "Two-factor sign-in"}
    form = ConfirmDeviceForm()
    if request.method == "POST" and "start" in request.POST:
        devices.filter(confirmed=False).delete()
        device = TOTPDevice.objects.create(user=user, name=UNCONFIRMED_NAME, confirmed=False)
        secret = base64.b32encode(device.bin_key).decode()
        context.update(
            enrolling=True,
            secret=secret,
            qr=mark_safe(qr_svg(device.config_url)),  # noqa: S308 - our own SVG
            form=form,
        )
        return TemplateResponse(request, "admin/billing/two_factor.html", context)
    if request.method == "POST":
        form = ConfirmDeviceForm(request.POST)
        device = devices.filter(confirmed=False).order_by("-pk").first()
        if (
            form.is_valid()
            and device is not None
            and device.verify_token(form.cleaned_data["token"])
        ):
            device.confirmed, device.name = True, "authenticator"
            device.save(update_fields=["confirmed", "name"])
            otp_login(request, device)
            messages.success(request, "Two-factor sign-in is on: you will be asked for a code.")
            return HttpResponseRedirect(reverse("admin_two_factor"))
        messages.error(request, "That code is not right (or the enrolment expired): start again.")
        return HttpResponseRedirect(reverse("admin_two_factor"))
    context.update(
        confirmed=devices.filter(confirmed=True).exists(),
        required=settings.STAFF_REQUIRE_TWO_FACTOR,
    )
    return TemplateResponse(request, "admin/billing/two_factor.html", context)


admin.site.login_form = StaffSignInForm
admin.site.login_template = "otp/admin111/login.html"
