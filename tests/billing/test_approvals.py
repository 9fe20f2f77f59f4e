"""Four eyes on large manual adjustments (billing.services.approvals and its admin pages):
below the threshold an adjustment posts at once; at or above it, it waits for a second,
different staff user, whose approval posts it once — also when two approve at once."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from billing import errors, services
from billing.models import AdjustmentRequest, ApprovalStatus, Wallet
from ledger import selectors as ledger_selectors
from ledger.models import Transaction as LedgerTransaction
from tests.factories import CustomerFactory, staff_user
from tests.threads import run_concurrently


def available(customer, currency="USD") -> Decimal:
    wallet = Wallet.objects.select_related("account").get(customer=customer, currency=currency)
    return ledger_selectors.get_balance(account=wallet.account).available


@pytest.fixture
def thresholds(settings):
    settings.ADJUSTMENT_APPROVAL_THRESHOLD = {"USD": Decimal("500"), "*": Decimal("1000")}


@pytest.fixture
def people(db):
    return tuple(staff_user(name, "Finance operator") for name in ("alice", "bob", "carol"))


def ask(customer, user, amount, reference=None):
    return services.request_adjustment(
        customer=customer,
        amount=Decimal(amount),
        reason="Goodwill for the outage",
        staff_user_id=user.pk,
        reference=reference or uuid.uuid4().hex,
    )


# --- the service ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_thresholds_per_currency_with_a_fallback(thresholds):
    assert services.needs_approval(amount=Decimal("499.999999999999"), currency="USD") is False
    assert services.needs_approval(amount=Decimal("500"), currency="USD") is True
    assert services.needs_approval(amount=Decimal("-500"), currency="USD") is True
    assert services.needs_approval(amount=Decimal("999"), currency="EUR") is False
    assert services.needs_approval(amount=Decimal("1000"), currency="EUR") is True


@pytest.mark.django_db
def test_without_a_threshold_for_the_currency_nothing_waits(settings):
    settings.ADJUSTMENT_APPROVAL_THRESHOLD = {"USD": Decimal("10")}
    assert services.needs_approval(amount=Decimal("10000"), currency="EUR") is False


def test_the_setting_reads_one_amount_or_one_per_currency():
    from django.core.exceptions import ImproperlyConfigured

    from billing.project.settings import adjustment_thresholds

    assert adjustment_thresholds("1000") == {"*": Decimal("1000")}
    assert adjustment_thresholds("usd=250.50, CREDITS=100000,*=900") == {
        "USD": Decimal("250.50"),
        "CREDITS": Decimal("100000"),
        "*": Decimal("900"),
    }
    for bad in ("abc", "USD=-1", "USD=NaN"):
        with pytest.raises(ImproperlyConfigured):
            adjustment_thresholds(bad)


@pytest.mark.parametrize(
    "text",
    # review: "USD=1000=5" was {"USD=1000": 5} (USD then never waited); "1,000" was {"*": 0};
    # "USD=1,000" was USD 1 and every other currency 0
    ["USD=1000=5", "USD=1,000", "1,000", "USD 1000", "U$D=1000", "1e3", "USD=1000,USD=5", "=5"],
)
def test_a_malformed_threshold_setting_is_refused(text):
    from django.core.exceptions import ImproperlyConfigured

    from billing.project.settings import adjustment_thresholds

    with pytest.raises(ImproperlyConfigured):
        adjustment_thresholds(text)


@pytest.mark.django_db
def test_a_small_adjustment_posts_at_once(thresholds, people):
    alice, _, _ = people
    customer = CustomerFactory(funds=100)
    outcome = ask(customer, alice, "499")
    assert outcome.request is None and outcome.transaction is not None
    assert available(customer) == Decimal(599)
    # recorded, not waiting: an applied request linked to its posting, no decider
    record = AdjustmentRequest.objects.get()
    assert record == outcome.record and record.status == ApprovalStatus.APPLIED
    assert (record.ledger_transaction, record.decided_by) == (outcome.transaction, None)


@pytest.mark.django_db
def test_an_applied_adjustment_cannot_be_approved_rejected_or_withdrawn(thresholds, people):
    alice, bob, _ = people
    record = ask(CustomerFactory(funds=100), alice, "10").record
    with pytest.raises(errors.AdjustmentAlreadyDecided):
        services.approve_adjustment(request_id=record.pk, approver_id=bob.pk)
    with pytest.raises(errors.AdjustmentAlreadyDecided):
        services.reject_adjustment(request_id=record.pk, decider_id=bob.pk)
    with pytest.raises(errors.AdjustmentAlreadyDecided):
        services.withdraw_adjustment(request_id=record.pk, staff_user_id=alice.pk)


@pytest.mark.django_db
def test_the_database_refuses_an_applied_request_without_its_posting(thresholds, people):
    alice, _, _ = people
    record = ask(CustomerFactory(funds=100), alice, "10").record
    with pytest.raises(IntegrityError), transaction.atomic():
        AdjustmentRequest.objects.filter(pk=record.pk).update(ledger_transaction=None)


@pytest.mark.django_db
def test_a_form_submitted_again_with_another_amount_returns_the_first(thresholds, people):
    """The token is the form's: a second submission of the same page (the amount changed
    after a back button, say) neither posts again nor asks for approval."""
    alice, _, _ = people
    customer = CustomerFactory(funds=100)
    first = ask(customer, alice, "10", reference="form-1")
    again = ask(customer, alice, "900", reference="form-1")
    assert again.request is None and again.transaction == first.transaction
    assert available(customer) == Decimal(110)
    assert AdjustmentRequest.objects.count() == 1


@pytest.mark.django_db
def test_a_large_adjustment_waits_and_a_second_person_posts_it(thresholds, people):
    alice, bob, _ = people
    customer = CustomerFactory(funds=100)
    before = LedgerTransaction.objects.count()
    outcome = ask(customer, alice, "500")
    assert outcome.transaction is None
    request = outcome.request
    assert request.status == ApprovalStatus.PENDING and request.requested_by == alice
    assert LedgerTransaction.objects.count() == before
    assert available(customer) == Decimal(100)

    approved = services.approve_adjustment(request_id=request.pk, approver_id=bob.pk, note="ok")
    assert approved.status == ApprovalStatus.APPROVED and approved.decided_by == bob
    assert available(customer) == Decimal(600)
    txn = approved.ledger_transaction
    assert txn.metadata["staff_user_id"] == alice.pk
    assert txn.metadata["approved_by_id"] == bob.pk
    assert txn.metadata["reason"] == "Goodwill for the outage"


@pytest.mark.django_db
def test_the_same_form_submitted_twice_asks_once(thresholds, people):
    alice, _, _ = people
    customer = CustomerFactory()
    first = ask(customer, alice, "700", reference="tok-1")
    second = ask(customer, alice, "700", reference="tok-1")
    assert first.request.pk == second.request.pk
    assert AdjustmentRequest.objects.count() == 1


@pytest.mark.django_db
def test_the_requester_cannot_approve_or_reject_their_own(thresholds, people):
    alice, _, _ = people
    customer = CustomerFactory()
    request = ask(customer, alice, "800").request
    with pytest.raises(errors.ApprovalBySameUser):
        services.approve_adjustment(request_id=request.pk, approver_id=alice.pk)
    with pytest.raises(errors.ApprovalBySameUser):
        services.reject_adjustment(request_id=request.pk, decider_id=alice.pk)
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING
    assert available(customer) == Decimal(0)


@pytest.mark.django_db
def test_the_database_refuses_a_decision_by_the_requester(thresholds, people):
    alice, _, _ = people
    request = ask(CustomerFactory(), alice, "800").request
    with pytest.raises(IntegrityError), transaction.atomic():
        AdjustmentRequest.objects.filter(pk=request.pk).update(
            status=ApprovalStatus.REJECTED, decided_by=alice, decided_at=timezone.now()
        )


@pytest.mark.django_db
def test_approval_is_idempotent_and_a_rejected_request_stays_rejected(thresholds, people):
    alice, bob, carol = people
    customer = CustomerFactory()
    request = ask(customer, alice, "900").request
    services.approve_adjustment(request_id=request.pk, approver_id=bob.pk)
    again = services.approve_adjustment(request_id=request.pk, approver_id=carol.pk)
    assert again.decided_by == bob
    assert available(customer) == Decimal(900)
    with pytest.raises(errors.AdjustmentAlreadyDecided):
        services.reject_adjustment(request_id=request.pk, decider_id=carol.pk)

    other = ask(customer, alice, "950").request
    services.reject_adjustment(request_id=other.pk, decider_id=bob.pk, note="no ticket")
    services.reject_adjustment(request_id=other.pk, decider_id=bob.pk)
    with pytest.raises(errors.AdjustmentAlreadyDecided):
        services.approve_adjustment(request_id=other.pk, approver_id=carol.pk)
    assert available(customer) == Decimal(900)


@pytest.mark.django_db
def test_an_approval_the_ledger_refuses_leaves_the_request_pending(thresholds, people):
    alice, bob, _ = people
    customer = CustomerFactory(funds=100)  # prepaid: cannot go below zero
    request = ask(customer, alice, "-600").request
    with pytest.raises(Exception) as caught:
        services.approve_adjustment(request_id=request.pk, approver_id=bob.pk)
    assert getattr(caught.value, "code", "") == "insufficient_funds"
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING and request.ledger_transaction is None


@pytest.mark.django_db(transaction=True)
def test_two_approvers_at_once_post_once(thresholds, people):
    alice, bob, carol = people
    customer = CustomerFactory(funds=10)
    request = ask(customer, alice, "5000").request
    approvers = [bob.pk, carol.pk, bob.pk, carol.pk]

    results = run_concurrently(
        lambda i: services.approve_adjustment(request_id=request.pk, approver_id=approvers[i]),
        threads=4,
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED
    assert (
        LedgerTransaction.objects.filter(reference__contains=f"approval:{request.pk}").count() == 1
    )
    assert available(customer) == Decimal(5010)


@pytest.mark.django_db
def test_the_requester_withdraws_a_pending_request_and_nothing_is_posted(thresholds, people):
    alice, bob, _ = people
    customer = CustomerFactory(funds=100)
    request = ask(customer, alice, "800").request
    with pytest.raises(errors.WithdrawalByOther):
        services.withdraw_adjustment(request_id=request.pk, staff_user_id=bob.pk)
    done = services.withdraw_adjustment(
        request_id=request.pk, staff_user_id=alice.pk, note=" typo in the amount "
    )
    assert (done.status, done.decided_by, done.decision_note) == (
        ApprovalStatus.WITHDRAWN,
        None,
        "typo in the amount",
    )
    assert done.decided_at is not None and done.ledger_transaction is None
    again = services.withdraw_adjustment(request_id=request.pk, staff_user_id=alice.pk)
    assert again.decided_at == done.decided_at
    with pytest.raises(errors.AdjustmentAlreadyDecided):
        services.approve_adjustment(request_id=request.pk, approver_id=bob.pk)
    with pytest.raises(errors.AdjustmentAlreadyDecided):
        services.reject_adjustment(request_id=request.pk, decider_id=bob.pk)
    assert available(customer) == Decimal(100)

    decided = ask(customer, alice, "900").request
    services.approve_adjustment(request_id=decided.pk, approver_id=bob.pk)
    with pytest.raises(errors.AdjustmentAlreadyDecided):
        services.withdraw_adjustment(request_id=decided.pk, staff_user_id=alice.pk)
    assert available(customer) == Decimal(1000)


@pytest.mark.django_db
def test_the_database_refuses_a_withdrawn_request_with_a_posting_or_a_decider(thresholds, people):
    alice, bob, _ = people
    request = ask(CustomerFactory(), alice, "800").request
    with pytest.raises(IntegrityError), transaction.atomic():
        AdjustmentRequest.objects.filter(pk=request.pk).update(
            status=ApprovalStatus.WITHDRAWN, decided_by=bob, decided_at=timezone.now()
        )


@pytest.mark.django_db(transaction=True)
def test_a_withdrawal_racing_approvals_ends_one_way_only(thresholds, people):
    """The requester withdraws while two others approve: the row lock orders them, so the
    request is either withdrawn with nothing posted or approved with one posting."""
    alice, bob, carol = people
    customer = CustomerFactory(funds=10)
    for _ in range(3):
        request = ask(customer, alice, "5000").request

        def act(i: int, request_id: int = request.pk):
            if i == 0:
                return services.withdraw_adjustment(request_id=request_id, staff_user_id=alice.pk)
            return services.approve_adjustment(
                request_id=request_id, approver_id=(bob.pk, carol.pk)[i - 1]
            )

        results = run_concurrently(act, threads=3)
        unexpected = [
            r
            for r in results
            if isinstance(r, BaseException) and not isinstance(r, errors.AdjustmentAlreadyDecided)
        ]
        assert not unexpected, results
        request.refresh_from_db()
        posted = LedgerTransaction.objects.filter(
            reference__contains=f"approval:{request.pk}"
        ).count()
        if request.status == ApprovalStatus.WITHDRAWN:
            assert posted == 0 and request.ledger_transaction is None
        else:
            assert request.status == ApprovalStatus.APPROVED and posted == 1
    approved = AdjustmentRequest.objects.filter(status=ApprovalStatus.APPROVED).count()
    assert available(customer) == Decimal(10) + 5000 * approved


# --- the admin pages ------------------------------------------------------------------------


def adjust(client, customer, amount):
    return client.post(
        reverse("admin:billing_customer_adjust", args=[customer.pk]),
        {
            "amount": amount,
            "currency": "USD",
            "reason": "Refund of SLA credits",
            "token": uuid.uuid4().hex,
        },
    )


@pytest.mark.django_db
def test_admin_large_adjustment_needs_a_second_operator(client, thresholds, people):
    alice, bob, _ = people
    customer = CustomerFactory(funds=100)
    client.force_login(alice)
    response = adjust(client, customer, "2500")
    request = AdjustmentRequest.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse(
        "admin:billing_adjustmentrequest_change", args=[request.pk]
    )
    assert available(customer) == Decimal(100)

    # Alice sees her request without the buttons, and may not approve it by URL either.
    page = client.get(response["Location"])
    assert page.status_code == 200 and b"another staff user must approve it" in page.content
    approve_url = reverse("admin:billing_adjustmentrequest_approve", args=[request.pk])
    assert approve_url.encode() not in page.content
    refused = client.post(approve_url, {"decision_note": ""})
    assert refused.status_code == 200 and b"approval_by_requester" in refused.content
    assert available(customer) == Decimal(100)

    client.force_login(bob)
    page = client.get(reverse("admin:billing_adjustmentrequest_change", args=[request.pk]))
    assert approve_url.encode() in page.content
    done = client.post(approve_url, {"decision_note": "Checked the ticket"})
    assert done.status_code == 302
    assert available(customer) == Decimal(2600)
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED and request.decided_by == bob
    # the same page posted again posts nothing more
    client.post(approve_url, {"decision_note": "again"})
    assert available(customer) == Decimal(2600)


@pytest.mark.django_db
def test_admin_reject_posts_nothing(client, thresholds, people):
    alice, bob, _ = people
    customer = CustomerFactory(funds=100)
    client.force_login(alice)
    adjust(client, customer, "-700")
    request = AdjustmentRequest.objects.get()
    client.force_login(bob)
    response = client.post(
        reverse("admin:billing_adjustmentrequest_reject", args=[request.pk]),
        {"decision_note": "No ticket for this"},
    )
    assert response.status_code == 302
    request.refresh_from_db()
    assert (
        request.status == ApprovalStatus.REJECTED and request.decision_note == "No ticket for this"
    )
    assert available(customer) == Decimal(100)


@pytest.mark.django_db
def test_admin_the_requester_withdraws_from_the_request_page(client, thresholds, people):
    alice, bob, _ = people
    customer = CustomerFactory(funds=100)
    client.force_login(alice)
    adjust(client, customer, "2500")
    request = AdjustmentRequest.objects.get()
    page_url = reverse("admin:billing_adjustmentrequest_change", args=[request.pk])
    withdraw_url = reverse("admin:billing_adjustmentrequest_withdraw", args=[request.pk])
    assert withdraw_url.encode() in client.get(page_url).content

    client.force_login(bob)  # not his: no button, and the URL is refused
    assert withdraw_url.encode() not in client.get(page_url).content
    assert client.post(withdraw_url, {"decision_note": ""}).status_code == 403

    client.force_login(alice)
    response = client.post(withdraw_url, {"decision_note": "Wrong customer"})
    assert response.status_code == 302
    request.refresh_from_db()
    assert (request.status, request.decision_note) == (ApprovalStatus.WITHDRAWN, "Wrong customer")
    assert withdraw_url.encode() not in client.get(page_url).content
    assert available(customer) == Decimal(100)


@pytest.mark.django_db
def test_a_viewer_cannot_approve(client, thresholds, people):
    alice, _, _ = people
    request = ask(CustomerFactory(), alice, "800").request
    viewer = staff_user("vera", "Finance viewer")
    client.force_login(viewer)
    response = client.post(
        reverse("admin:billing_adjustmentrequest_approve", args=[request.pk]), {}
    )
    assert response.status_code == 403
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING


# --- admin top-ups and credit grants go through the same approvals (review) ------------------


def form_initial(client, url) -> dict:
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["form"]
    return {name: form[name].value() for name in form.fields if form[name].value() is not None}


def approve(client, request, note="ok"):
    return client.post(
        reverse("admin:billing_adjustmentrequest_approve", args=[request.pk]),
        {"decision_note": note},
    )


@pytest.mark.django_db
def test_admin_large_top_up_needs_a_second_operator(client, thresholds, people):
    """Review: one operator posted a 1,000,000 top-up from the admin, no approval asked.
    A payment reference in the description changes nothing (one person typed it)."""
    alice, bob, _ = people
    customer = CustomerFactory(funds=100)
    client.force_login(alice)
    url = reverse("admin:billing_customer_top_up", args=[customer.pk])
    data = {**form_initial(client, url), "amount": "1000000", "description": "wire REF-42"}
    response = client.post(url, data)
    request = AdjustmentRequest.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse(
        "admin:billing_adjustmentrequest_change", args=[request.pk]
    )
    assert (request.kind, request.amount) == ("top_up", Decimal("1000000"))
    assert available(customer) == Decimal(100)
    client.post(url, data)  # the same form again asks once
    assert AdjustmentRequest.objects.count() == 1
    assert approve(client, request).status_code == 200  # alice: refused
    assert available(customer) == Decimal(100)

    client.force_login(bob)
    assert approve(client, request).status_code == 302
    assert available(customer) == Decimal(1000100)
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED
    txn = request.ledger_transaction
    assert txn.description == "wire REF-42"
    assert txn.metadata["staff_user_id"] == alice.pk
    assert txn.metadata["approved_by_id"] == bob.pk
    approve(client, request)
    assert available(customer) == Decimal(1000100)


@pytest.mark.django_db
def test_admin_small_top_up_posts_at_once(client, thresholds, people):
    alice, _, _ = people
    customer = CustomerFactory(funds=100)
    client.force_login(alice)
    url = reverse("admin:billing_customer_top_up", args=[customer.pk])
    response = client.post(url, {**form_initial(client, url), "amount": "499"})
    assert response.status_code == 302
    assert available(customer) == Decimal(599)
    record = AdjustmentRequest.objects.get()
    assert (record.kind, record.status, record.requested_by) == ("top_up", "applied", alice)


@pytest.mark.django_db
def test_admin_large_credit_grant_funded_as_an_adjustment_needs_a_second_operator(
    client, thresholds, people
):
    from billing.models import CreditGrant, GrantSource

    alice, bob, _ = people
    customer = CustomerFactory(funds=100)
    client.force_login(alice)
    url = reverse("admin:billing_customer_grant", args=[customer.pk])
    expires = (timezone.now() + timezone.timedelta(days=30)).replace(microsecond=0)
    data = {
        **form_initial(client, url),
        "amount": "1000000",
        "name": "gift",
        "source": GrantSource.ADJUSTMENT,
        "priority": "3",
        "expires_at": timezone.localtime(expires).strftime("%Y-%m-%d %H:%M:%S"),
    }
    response = client.post(url, data)
    assert response.status_code == 302
    assert not CreditGrant.objects.filter(customer=customer).exists()
    request = AdjustmentRequest.objects.get()
    assert (request.kind, request.currency) == ("credit_grant", "CREDITS")
    assert approve(client, request).status_code == 200  # alice: refused
    assert not CreditGrant.objects.filter(customer=customer).exists()

    client.force_login(bob)
    assert approve(client, request).status_code == 302
    grant = CreditGrant.objects.get(customer=customer)
    assert (grant.amount, grant.name, grant.source, grant.priority, grant.expires_at) == (
        Decimal("1000000"),
        "gift",
        GrantSource.ADJUSTMENT,
        3,
        expires,
    )
    request.refresh_from_db()
    assert request.ledger_transaction == grant.ledger_transaction
    approve(client, request)
    assert CreditGrant.objects.filter(customer=customer).count() == 1


@pytest.mark.django_db
def test_admin_small_credit_grants_are_granted_at_once_large_promotional_ones_wait(
    client, thresholds, people
):
    """Promotional credits are as free as an adjustment's: a large grant of either waits
    for a second person; below the threshold both are granted at once."""
    from billing.models import CreditGrant, GrantSource

    alice, _, _ = people
    customer = CustomerFactory(funds=100)
    client.force_login(alice)
    url = reverse("admin:billing_customer_grant", args=[customer.pk])
    base = {**form_initial(client, url), "name": "gift"}
    base.pop("expires_at", None)
    client.post(url, {**base, "amount": "999", "source": GrantSource.ADJUSTMENT})
    assert CreditGrant.objects.filter(customer=customer).count() == 1
    base = {**form_initial(client, url), "name": "pack"}
    base.pop("expires_at", None)
    client.post(url, {**base, "amount": "999", "source": GrantSource.PROMOTIONAL})
    assert CreditGrant.objects.filter(customer=customer).count() == 2
    assert set(AdjustmentRequest.objects.values_list("status", flat=True)) == {"applied"}
    base = {**form_initial(client, url), "name": "big pack"}
    base.pop("expires_at", None)
    client.post(url, {**base, "amount": "5000", "source": GrantSource.PROMOTIONAL})
    assert CreditGrant.objects.filter(customer=customer).count() == 2
    request = AdjustmentRequest.objects.get(status=ApprovalStatus.PENDING)
    assert (request.kind, request.amount, request.details["source"]) == (
        "credit_grant",
        Decimal("5000"),
        GrantSource.PROMOTIONAL,
    )


@pytest.mark.django_db
def test_approving_twice_logs_the_approval_once(client, thresholds, people):
    from django.contrib.admin.models import LogEntry

    alice, bob, carol = people
    request = ask(CustomerFactory(funds=100), alice, "800").request
    client.force_login(bob)
    assert approve(client, request).status_code == 302
    client.force_login(carol)
    approve(client, request)  # already approved: nothing happens, nothing logged
    client.force_login(bob)
    approve(client, request)
    messages = list(LogEntry.objects.values_list("change_message", flat=True))
    assert sum("Approved" in m for m in messages) == 2, messages  # the request, the customer


@pytest.mark.django_db
def test_the_requests_list_opens_on_what_waits_and_all_shows_the_rest(client, thresholds, people):
    alice, bob, _ = people
    customer = CustomerFactory(funds=100)
    waiting = ask(customer, alice, "2500").request
    applied = ask(customer, alice, "12.5").record
    assert waiting.status == ApprovalStatus.PENDING and applied.status == ApprovalStatus.APPLIED
    client.force_login(bob)
    url = reverse("admin:billing_adjustmentrequest_changelist")

    def shown(query: str = "") -> set[int]:
        page = client.get(url + query)
        assert page.status_code == 200
        return {row.pk for row in page.context["cl"].result_list}

    assert shown() == {waiting.pk}
    assert shown("?status=applied") == {applied.pk}
    assert shown("?status=all") == {waiting.pk, applied.pk}
    assert shown("?status=nonsense") == set()
    page = client.get(url)
    assert b'href="?status=all"' in page.content


@pytest.mark.django_db
def test_a_request_reads_its_amount_as_money(thresholds, people):
    alice, _, _ = people
    customer = CustomerFactory(funds=100)
    assert str(ask(customer, alice, "1500").request).endswith(": 1,500.00 USD (pending)")
    assert str(ask(customer, alice, "0.000002").record).endswith(": 0.000002 USD (applied)")
