"""Signing in and out: the password page, sign-in links by e-mail (limited per address
and per client, answering the same whether the address is known or not), signing out."""

from __future__ import annotations

import logging

from django import forms
from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth.views import LoginView
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.portal import ratelimit, services
from billing.web.middleware import client_ip

log = logging.getLogger(__name__)


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
