"""The ledger accounts rating posts to, their ids cached per process: the system accounts
(``@Revenue``, ``@CreditsUsed``, ``@TokensServed``, per currency) and each customer's usage
account in ``TOKENS``."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection, transaction

from billing import services as billing_services
from billing.models import Customer
from ledger import services as ledger
from ledger.models import NormalBalance

# Ledger accounts are never deleted, so their ids are cached per process — once the
# transaction that found or created them has committed, so that no other thread is handed
# an account it cannot see yet. (Tests, which do empty the tables, call clear_caches().)
_account_ids: dict[tuple[str, str], int] = {}


def _remember(key: tuple[str, str], account_id: int) -> int:
    # The part commits synchronously, whatever its batch asked (RATING_CHUNK_EVENTS): an
    # asynchronous commit lost in a server crash would take the account it created with
    # it, while this process, still up, hands the lost id to every later posting. Only a
    # cache miss pays: once per process and account.
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('synchronous_commit', 'on', true)")

    def remember() -> None:
        if len(_account_ids) > 100_000:
            _account_ids.clear()
        _account_ids[key] = account_id

    transaction.on_commit(remember)
    return account_id


def _system_account_id(code: str, currency: str) -> int:
    key = (code, currency)
    if key in _account_ids:
        return _account_ids[key]
    account = ledger.ensure_system_account(
        code=code, currency=currency, normal_balance=NormalBalance.CREDIT
    )
    return _remember(key, account.pk)


def _usage_account_id(customer: Customer, found: dict[tuple[str, str], int]) -> int:
    """``found``: the accounts the part's read found (``_found_accounts``)."""
    key = _usage_account_key(customer.id)
    if key in _account_ids:
        return _account_ids[key]
    if key in found:
        return found[key]
    return _remember(key, billing_services.usage_account(customer=customer).pk)


def _usage_account_key(customer_id: int) -> tuple[str, str]:
    return (f"tokens:{customer_id}", "TOKENS")  # billing.services.usage_account's


def _uncached_usage_accounts(customer_ids: Iterable[int]) -> list[tuple[str, str]]:
    """The (code, currency) of these customers' usage accounts whose ids this process has
    not cached: for the part's read to look up (``_read_part``), then ``_found_accounts``."""
    keys = [_usage_account_key(customer_id) for customer_id in customer_ids]
    return [key for key in keys if key not in _account_ids]


def _found_accounts(found: dict[tuple[str, str], int]) -> None:
    """Cache the ids of accounts the part's read found, once its transaction has committed.
    The read's snapshot may hold rows that this same transaction (a caller's atomic block
    around several ratings) created and has not committed: cached now, another thread
    would be handed an account it cannot see, and a rollback would leave an id that never
    existed. Until then the part's own posting takes them from the read (``_write``'s
    ``accounts``). A process whose cache is cold (a new worker) thus looks a customer's
    usage account up inside the read, not with a query of its own and a ``set_config``."""
    if not found:
        return

    def remember() -> None:
        if len(_account_ids) + len(found) > 100_000:
            _account_ids.clear()
        _account_ids.update(found)

    transaction.on_commit(remember)
