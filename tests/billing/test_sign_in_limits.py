"""Sign-in abuse: wrong passwords (portal and admin) lock the username and the client
address out for a while (django-axes); the e-mailed sign-in link is limited per address
and per client, answers the same way for known and unknown addresses, and never 500s when
the mail server is down."""

from __future__ import annotations

import logging
import random
import re
import socket
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client

from billing.portal import services as portal
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse 42"


@pytest.fixture(autouse=True)
def _mail(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.PORTAL_BASE_URL = "http://portal.test"


def an_address() -> str:
    """A client address of its own per test: the counters live in the shared Redis."""
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def client_from(address: str | None = None) -> Client:
    return Client(REMOTE_ADDR=address or an_address())


def an_email() -> str:
    return f"ann-{uuid.uuid4().hex[:10]}@acme.example"


def portal_member(email: str, *, password: str | None = PASSWORD):
    customer = CustomerFactory(name="Acme")
    member = portal.invite_member(customer=customer, email=email)
    if password:
        member.user.set_password(password)
        member.user.save()
    mail.outbox.clear()
    return member


def portal_sign_in(client: Client, username: str, password: str):
    return client.post("/portal/login/", {"username": username, "password": password})


# --- passwords ---------------------------------------------------------------------------


def test_portal_wrong_passwords_lock_the_account_out(settings):
    email = an_email()
    portal_member(email)
    for attempt in range(settings.AXES_FAILURE_LIMIT - 1):
        assert portal_sign_in(client_from(), email, f"wrong {attempt}").status_code == 200
    # the last allowed failure, each from another address: counted by username
    assert portal_sign_in(client_from(), email.upper(), "wrong again").status_code == 429
    locked = portal_sign_in(client_from(), email, PASSWORD)  # the right password, too late
    assert locked.status_code == 429
    assert "Too many sign-in attempts" in locked.content.decode()
    assert "_auth_user_id" not in locked.client.session


def test_portal_wrong_passwords_from_one_address_lock_that_address_out(settings):
    address = an_address()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        portal_sign_in(client_from(address), an_email(), "guess")
    email = an_email()
    portal_member(email)
    assert portal_sign_in(client_from(address), email, PASSWORD).status_code == 429
    # another address is not affected
    assert portal_sign_in(client_from(), email, PASSWORD).status_code == 302


def test_a_right_password_before_the_limit_resets_the_count(settings):
    email = an_email()
    portal_member(email)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        portal_sign_in(client_from(), email, "wrong")
    assert portal_sign_in(client_from(), email, PASSWORD).status_code == 302
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert portal_sign_in(client_from(), email, "wrong").status_code == 200
    assert portal_sign_in(client_from(), email, PASSWORD).status_code == 302


def test_admin_wrong_passwords_lock_the_account_out(settings):
    username = f"finance-{uuid.uuid4().hex[:8]}"
    get_user_model().objects.create_superuser(username, f"{username}@x.example", PASSWORD)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client_from().post("/admin/login/", {"username": username, "password": "nope"})
    locked = client_from().post("/admin/login/", {"username": username, "password": PASSWORD})
    assert locked.status_code == 429
    assert "_auth_user_id" not in locked.client.session


# --- the e-mailed sign-in link ----------------------------------------------------------------


def ask_for_link(client: Client, email: str):
    return client.post("/portal/login/link/", {"email": email})


def answer(response, email: str) -> tuple[int, str]:
    """Status and page, without what differs by design: the address and the CSRF token."""
    page = re.sub(r'"X-CSRFToken": "\w+"', "", response.content.decode())
    return response.status_code, page.replace(email, "@")


def test_the_link_form_answers_known_and_unknown_addresses_alike():
    known, unknown = an_email(), an_email()
    portal_member(known, password=None)
    answers = {}
    for email in (known, unknown):
        answers[email] = answer(ask_for_link(client_from(), email), email)
    assert answers[known] == answers[unknown]
    assert answers[known][0] == 200
    assert len(mail.outbox) == 1 and mail.outbox[0].to == [known]


def test_links_are_limited_per_address(settings):
    email = an_email()
    portal_member(email, password=None)
    statuses = [ask_for_link(client_from(), email).status_code for _ in range(12)]
    limit = settings.PORTAL_LINKS_PER_EMAIL_PER_HOUR
    assert statuses == [200] * limit + [429] * (12 - limit)
    assert len(mail.outbox) == limit
    # an unknown address is limited the same way: the limit tells nothing either
    unknown = an_email()
    assert [ask_for_link(client_from(), unknown).status_code for _ in range(12)] == statuses


def test_links_are_limited_per_client(settings):
    address = an_address()
    limit = settings.PORTAL_LINKS_PER_CLIENT_PER_HOUR
    statuses = [ask_for_link(client_from(address), an_email()).status_code for _ in range(limit)]
    assert statuses == [200] * limit
    email = an_email()
    portal_member(email, password=None)
    assert ask_for_link(client_from(address), email).status_code == 429
    assert mail.outbox == []
    assert ask_for_link(client_from(), email).status_code == 200  # another client


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_mail_server_that_is_down_is_logged_not_a_500(settings, caplog):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", closed_port(), 2
    known, unknown = an_email(), an_email()
    portal_member(known, password=None)
    with caplog.at_level(logging.ERROR, logger="billing.portal.views.signin"):
        answers = {}
        for email in (known, unknown):
            response = Client(raise_request_exception=False, REMOTE_ADDR=an_address()).post(
                "/portal/login/link/", {"email": email}
            )
            answers[email] = answer(response, email)
    assert answers[known] == answers[unknown] and answers[known][0] == 200
    assert [r.getMessage() for r in caplog.records] == ["the sign-in link e-mail could not be sent"]


def test_with_redis_down_the_link_form_still_works(settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed_port()}/0",
        }
    }
    email = an_email()
    portal_member(email, password=None)
    assert ask_for_link(client_from(), email).status_code == 200
    assert len(mail.outbox) == 1
