"""A customer's portal users in the admin: listed on the customer page, invited from it
(``billing.portal.services``), the sign-in link sent at once so a mail failure shows."""

from __future__ import annotations

import logging

from django import forms
from django.contrib import messages
from django.http import HttpResponse, HttpResponseRedirect

from billing.admin.common import ServiceFormMixin
from billing.models import PortalMember
from billing.portal import services as portal_services
from ledger.admin import ReadOnlyInline

log = logging.getLogger(__name__)


class PortalMemberInline(ReadOnlyInline):
    model = PortalMember
    fk_name = "customer"
    fields = ("user", "invited_by", "created_at")
    readonly_fields = fields
    show_change_link = False
    verbose_name = "portal user"


class InviteForm(forms.Form):
    email = forms.EmailField()
    name = forms.CharField(max_length=200, required=False)


class CustomerInviteView(ServiceFormMixin):
    """The customer admin's page that invites a portal user (its URL is in
    ``CustomerAdmin.get_urls``)."""

    def invite_view(self, request, object_id):
        customer = self.changeable_object_or_404(request, object_id)
        form = InviteForm(request.POST or None)

        def post() -> HttpResponse:
            # The invitation is kept even when the e-mail cannot go (Stripe's dashboard keeps
            # a pending invite too): inviting the same address again sends a new link.
            email = form.cleaned_data["email"].strip().lower()
            again = customer.members.filter(user__email__iexact=email).exists()
            member = portal_services.invite_member(
                customer=customer,
                email=email,
                name=form.cleaned_data["name"],
                invited_by_id=request.user.pk,
                send_link=False,
            )
            email = member.user.email
            if not again:
                self.log_change(request, customer, f"Invited {email} to the portal")
            try:
                portal_services.send_sign_in_link(email=email, invited=not again)
            except Exception as error:  # noqa: BLE001 - any mail failure: reported, not a 500
                log.exception("the portal invitation e-mail to %s could not be sent", email)
                messages.warning(
                    request,
                    f"{email} {'is a portal user' if again else 'was invited'}, but the "
                    f"sign-in link e-mail could not be sent ({type(error).__name__}: {error}). "
                    "Check the mail settings (EMAIL_HOST), then invite the same address again "
                    "to resend the link.",
                )
            else:
                messages.success(
                    request,
                    f"{email} is already a portal user: a new sign-in link is on its way."
                    if again
                    else f"{email} was invited: a sign-in link is on its way.",
                )
            return HttpResponseRedirect(self.change_url(customer))

        return self.run_service(request, form, post) or self.service_form_response(
            request,
            form=form,
            title=f"Invite a portal user for {customer}",
            submit_label="Send invitation",
            original=customer,
            intro="They will sign in to the customer portal with an e-mailed link (and may set "
            "a password there) and see this customer's balance, usage and invoices only. "
            "Inviting a portal user again sends them a new link.",
            facts=[
                (
                    "Portal users",
                    ", ".join(m.user.email for m in customer.members.select_related("user"))
                    or "none yet",
                )
            ],
        )
