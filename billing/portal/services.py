"""Writes of the portal: inviting a customer's people, sign-in links, alert settings,
low-balance alerts."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.urls import reverse

from billing import errors
from billing.models import Customer, PortalMember

SIGN_IN_SALT = "billing.portal.sign-in"


class LinkInvalid(errors.BillingError):
    code = "sign_in_link_invalid"


@transaction.atomic
def invite_member(
    *,
    customer: Customer,
    email: str,
    name: str = "",
    invited_by_id: int | None = None,
    send_link: bool = True,
) -> PortalMember:
    """Give a person of the customer's access to the portal and e-mail them a sign-in link.
    The user has no password until they choose one; an e-mail already in use elsewhere is
    refused; the same address invited again to the same customer is the same member.

    ``send_link``: the link is e-mailed once the invitation commits; a mail server that
    fails is logged and the invitation stays (it is a fact; the link can be sent again).
    False: the caller sends it (``send_sign_in_link``) and reports a failure itself, as the
    admin does."""
    email = email.strip().lower()
    if not email:
        raise errors.ValidationFailed("an e-mail address is required", param="email")
    users = get_user_model()
    user = users.objects.filter(email__iexact=email).first()
    if user is not None:
        member = PortalMember.objects.filter(user=user).first()
        if member is not None and member.customer_id == customer.pk:
            return member
        raise errors.ValidationFailed(f"{email} already has an account elsewhere", param="email")
    first, _, last = name.strip().partition(" ")
    try:
        with transaction.atomic():
            user = users.objects.create_user(
                username=email, email=email, first_name=first[:150], last_name=last[:150]
            )
    except IntegrityError:
        raise errors.ValidationFailed(f"{email} already has an account", param="email") from None
    user.set_unusable_password()
    user.save(update_fields=["password"])
    member = PortalMember.objects.create(user=user, customer=customer, invited_by_id=invited_by_id)
    if send_link:
        transaction.on_commit(lambda: send_sign_in_link(email=email, invited=True), robust=True)
    return member


def sign_in_token(user) -> str:
    """A signed token for one sign-in: it names the user and their last sign-in, so it
    stops working once used (signing in moves ``last_login``) and after
    ``PORTAL_LINK_MAX_AGE`` seconds."""
    last = user.last_login.isoformat() if user.last_login else ""
    return signing.dumps({"u": user.pk, "l": last}, salt=SIGN_IN_SALT, compress=True)


def user_from_token(token: str):
    try:
        data = signing.loads(token, salt=SIGN_IN_SALT, max_age=settings.PORTAL_LINK_MAX_AGE)
    except signing.SignatureExpired:
        raise LinkInvalid("this sign-in link has expired; ask for a new one") from None
    except signing.BadSignature:
        raise LinkInvalid("this sign-in link is not valid") from None
    user = get_user_model().objects.filter(pk=data.get("u"), is_active=True).first()
    last = user.last_login.isoformat() if user is not None and user.last_login else ""
    if user is None or last != data.get("l") or not PortalMember.objects.filter(user=user).exists():
        raise LinkInvalid("this sign-in link was already used; ask for a new one")
    return user


def send_sign_in_link(*, email: str, invited: bool = False) -> bool:
    """E-mail a sign-in link to a portal user with this address (nothing, and no hint, for
    an unknown one)."""
    user = (
        get_user_model()
        .objects.filter(email__iexact=email.strip(), is_active=True, portal_member__isnull=False)
        .first()
    )
    if user is None:
        return False
    link = settings.PORTAL_BASE_URL + reverse("portal:link_sign_in", args=[sign_in_token(user)])
    minutes = settings.PORTAL_LINK_MAX_AGE // 60
    company = settings.BILLING_COMPANY["name"]
    intro = (
        f"You have been invited to the billing portal of {company}."
        if invited
        else f"Here is your link to sign in to the billing portal of {company}."
    )
    send_mail(
        subject=f"Sign in to {company} billing",
        message=f"{intro}\n\n{link}\n\nThe link works once, for {minutes} minutes.",
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[user.email],
    )
    return True
