"""Two-factor sign-in for staff (django-otp TOTP; billing.admin.staff_security and
billing.web.staff): a staff user enrols an authenticator app (the secret shown once), the
admin's sign-in then asks for its code; STAFF_REQUIRE_TWO_FACTOR makes it compulsory.
(Wrong passwords at the admin's sign-in lock out: tests/billing/test_sign_in_limits.py.)"""

from __future__ import annotations

import base64
import re
import time

import pytest
from django.urls import reverse
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse 42"
LOGIN = reverse("admin:login")
INDEX = reverse("admin:index")
ENROL = reverse("admin_two_factor")


@pytest.fixture
def staff(settings, django_user_model):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return django_user_model.objects.create_superuser("ops", "ops@example.com", PASSWORD)


def code_for(device: TOTPDevice) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time()
    return f"{totp.token():0{device.digits}d}"


def sign_in(client, token: str = ""):
    return client.post(
        f"{LOGIN}?next={INDEX}",
        {"username": "ops", "password": PASSWORD, "otp_token": token, "next": INDEX},
    )


def test_without_a_device_the_password_is_enough(client, staff):
    assert sign_in(client).status_code == 302
    assert client.get(INDEX).status_code == 200


def test_with_a_device_the_sign_in_asks_for_its_code(client, staff):
    device = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    page = client.get(LOGIN).content.decode()
    assert 'name="otp_token"' in page
    assert sign_in(client).status_code == 200  # no code: refused
    assert (
        sign_in(client, "000000" if code_for(device) != "000000" else "111111").status_code == 200
    )
    assert client.get(INDEX).status_code == 302  # still signed out
    device.refresh_from_db()
    device.throttling_failure_count, device.throttling_failure_timestamp = 0, None
    device.save()
    response = sign_in(client, code_for(device))
    assert response.status_code == 302, response.context["form"].errors
    assert client.get(INDEX).status_code == 200


def test_when_required_a_user_without_a_device_reaches_only_the_enrolment(client, settings, staff):
    """Required two-factor: the first sign-in is the enrolment (no shell needed): the
    password opens a session that every admin page sends to the enrolment page; a confirmed
    device verifies it; from then on the code is asked for."""
    settings.STAFF_REQUIRE_TWO_FACTOR = True
    assert sign_in(client).status_code == 302  # the password, no device yet
    for path in (INDEX, reverse("admin:billing_customer_changelist")):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"] == ENROL
    assert client.get(ENROL).status_code == 200
    client.post(ENROL, {"start": "1"})
    device = TOTPDevice.objects.get(user=staff, confirmed=False)
    client.post(ENROL, {"token": code_for(device)})
    device.refresh_from_db()
    assert device.confirmed
    assert client.get(INDEX).status_code == 200  # the session is verified by the device

    client.logout()
    assert sign_in(client).status_code == 200  # now the password alone is refused
    assert client.get(INDEX).status_code == 302


def test_when_required_an_unverified_session_of_a_user_with_a_device_is_signed_out(
    client, settings, staff
):
    settings.STAFF_REQUIRE_TWO_FACTOR = True
    TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    client.force_login(staff)  # a session without a device's code
    response = client.get(ENROL)
    assert response.status_code == 302 and response["Location"].startswith(LOGIN)
    assert client.get(INDEX).status_code == 302  # signed out, not only redirected


def test_when_not_required_a_session_without_a_code_stays(client, staff):
    client.force_login(staff)
    assert client.get(INDEX).status_code == 200


def test_enrolment_shows_the_secret_once_and_needs_a_code_to_count(client, staff):
    client.force_login(staff)
    assert "off" in client.get(ENROL).content.decode()
    page = client.post(ENROL, {"start": "1"}).content.decode()
    secret = re.search(r'id="two-factor-secret">([A-Z2-7=]+)<', page).group(1)
    assert "<svg" in page  # the QR code, inline
    device = TOTPDevice.objects.get(user=staff)
    assert device.confirmed is False
    assert base64.b32decode(secret) == device.bin_key
    # the secret is on no other page: not the enrolment page again, not the devices admin
    assert secret not in client.get(ENROL).content.decode()
    change = client.get(reverse("admin:otp_totp_totpdevice_change", args=[device.pk]))
    assert device.key not in change.content.decode()

    client.post(ENROL, {"token": "12345678"})
    device.refresh_from_db()
    assert device.confirmed is False
    device.throttling_failure_count, device.throttling_failure_timestamp = 0, None
    device.save()  # (django-otp's delay after a wrong code, not waited for here)
    client.post(ENROL, {"token": code_for(device)})
    device.refresh_from_db()
    assert device.confirmed is True
    assert "on" in client.get(ENROL).content.decode()


def test_a_password_only_session_from_the_portal_does_not_reach_the_admin(client, staff):
    """Review: the portal's sign-in shares users and session; with a confirmed device and
    STAFF_REQUIRE_TWO_FACTOR off, a password alone there must not open the admin."""
    TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    response = client.post(reverse("portal:login"), {"username": "ops", "password": PASSWORD})
    assert response.status_code in (200, 302)
    response = client.get(INDEX)
    assert response.status_code == 302 and response["Location"].startswith(LOGIN)
    assert client.get(INDEX).status_code == 302  # signed out, not only redirected


def test_a_session_without_the_code_cannot_enrol_a_second_device(client, staff):
    first = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    client.force_login(staff)  # the password alone (no device's code)
    response = client.post(ENROL, {"start": "1"})
    assert response.status_code == 302 and response["Location"].startswith(LOGIN)
    assert list(TOTPDevice.objects.filter(user=staff)) == [first]


def test_the_enrolment_page_refuses_an_unverified_session_even_without_the_middleware(
    client, settings, staff
):
    settings.MIDDLEWARE = [
        m for m in settings.MIDDLEWARE if not m.endswith("AdminTwoFactorMiddleware")
    ]
    first = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    client.force_login(staff)
    client.post(ENROL, {"start": "1"})
    new = TOTPDevice.objects.filter(user=staff, confirmed=False).first()
    if new is not None:
        client.post(ENROL, {"token": code_for(new)})
    assert list(TOTPDevice.objects.filter(user=staff)) == [first]


def test_a_verified_session_may_replace_its_device(client, staff):
    device = TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
    assert sign_in(client, code_for(device)).status_code == 302
    assert client.post(ENROL, {"start": "1"}).status_code == 200
    assert TOTPDevice.objects.filter(user=staff, confirmed=False).count() == 1
