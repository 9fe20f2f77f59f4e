"""The double-entry ledger: the single source of truth for every amount in the product.

Design overview
===============
The ledger knows nothing of customers, plans or invoices. It has accounts, transactions
made of entries, balances and holds, and a handful of service functions
(``ledger.services``) that are the only way to write any of them.

Amounts
    ``NUMERIC(38, 12)`` everywhere: exact, 12 decimal places (finer than the 1e-9 of a unit
    the product promises) and 26 integer digits. Python handles them as ``Decimal``; a
    value with more than 12 places is refused, never rounded.

Sign convention
    An entry's ``amount`` is signed: positive is a debit, negative a credit. Every
    transaction's entries sum to zero per currency. An account's balance is reported in
    its *normal* direction: for a credit-normal account (customer wallets, revenue)
    balance = credits − debits; for a debit-normal account (``@World``, clearing
    accounts, expenses) balance = debits − credits.

Immutability
    Transactions and entries are insert-only. PostgreSQL itself refuses an UPDATE or
    DELETE of either (a trigger), refuses entries that do not balance per transaction and
    currency (a statement-level trigger over the inserted rows: every INSERT into the
    entries must balance, so every transaction does), and refuses an entry whose
    transaction does not exist or whose account does not exist with the entry's currency
    (the same trigger, each distinct reference locked and looked up once per INSERT; a
    row trigger refuses deleting or re-keying an account entries refer to: migration
    0009, which replaced two per-row foreign keys). Corrections are reversals: new
    transactions that point at the one they undo, at most one reversal per transaction.

Idempotency
    Every transaction carries a unique ``reference``. Posting the same reference again
    returns the original transaction; posting it with a different payload (entries,
    effective time, reversal or hold) is refused. The unique index decides, so two
    concurrent posts of one reference end with exactly one transaction.

Balances and hot accounts
    Balances are kept in ``Balance`` rows, updated in the same database transaction as the
    entries: ``posted``, ``held`` (sum of pending holds), available = posted − held, a
    ``floor`` (the lowest allowed available balance: 0 for a prepaid wallet, −limit for an
    overdraft, NULL for none) and a ``version`` that grows with every change.

    An *owned* account (a wallet) has exactly one balance row, bucket 0, which a posting
    locks in account-id order and updates with the floor checked against the newest
    committed balance (a conditional UPDATE in the posting functions, the row's CHECK
    constraint in the single-statement posting), so concurrent spenders serialise on the
    wallet and none can overdraw it.

    A *hot* account (``@Revenue``, ``@World``, ``@Tokens`` …) is touched by nearly every
    posting. A single balance row would make all postings queue behind one row lock, so a
    hot account has N balance rows ("buckets", ``LEDGER_HOT_ACCOUNT_BUCKETS``). A posting
    updates the first bucket that no other transaction has locked (``FOR UPDATE SKIP
    LOCKED``; the single-statement posting searches from the backend's pid modulo N, so
    that concurrent backends start on different rows) and only waits when every bucket is
    busy; the balance is the sum of its
    buckets. We chose buckets over "derive from entries + periodic snapshots" because
    buckets stay exact at every commit with no background job, a snapshot would need a
    commit-order-safe watermark (entry ids are allocated before commit, not in commit
    order), and a read is a sum of N small rows. Hot accounts carry no floor: they are the
    system's own accounts and may go negative. Holds are only placed on owned accounts.

Holds
    A hold moves an amount from the account's available balance into ``held`` at once. It
    is settled in one or more parts (each part a real transaction from the account to the
    hold's destination), released, or expired by a Celery beat task. ``status`` leaves
    PENDING once: a hold resolves at most once.

Writes go through ``ledger.services`` only; the posting itself runs inside PostgreSQL so
that one posting, or one atomic bulk of postings, is a single round trip: one transaction
of 2 to 8 legs on distinct accounts as one prepared statement
(``ledger.services.posting._POST_ONE``), anything else as one call of the set-based
function ``ledger_post_transactions_bulk`` (migration 0003), whatever the number of
transactions. Both enforce the same rules in the same lock order. The single statement's
CTEs can also ride in a caller's own statement (``ledger.services.posting_ctes``: rating
writes a single event's row pointing at the transaction it posts in the same statement);
the rules, triggers and errors are those of the statement, and the SQL stays the ledger's.

Granularity: a transaction per business fact, not per row of detail
    A caller that records many small facts at once posts their sums, and keeps the detail
    in its own rows pointing at the transaction. Usage is the case in point: metering posts
    a customer's events of one rating pass as ONE transaction whose legs are the events'
    sums (tokens; money per currency), each event keeping its own exact amount and the id
    of that transaction, and a database rule of metering's refusing events whose
    transaction's legs are not their sums. Measured for issue 14 (one connection, batches
    of 1,000 events over 200 customers): the events alone 24,307/s; with one aggregated
    transaction per customer 15,649/s; with one transaction per event 8,869/s: about six
    rows, 24 index insertions and 11 foreign-key checks per event, for nothing a finance
    reader needs (an invoice line still drills down to the events). The ledger itself is
    unaware of this: a transaction is a transaction.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now

AMOUNT_DIGITS = 38
AMOUNT_PLACES = 12
AMOUNT_QUANTUM = Decimal(1).scaleb(-AMOUNT_PLACES)  # 1e-12
ZERO = Decimal(0)


def amount_field(**kwargs) -> models.DecimalField:
    return models.DecimalField(max_digits=AMOUNT_DIGITS, decimal_places=AMOUNT_PLACES, **kwargs)


class NormalBalance(models.TextChoices):
    DEBIT = "debit", "Debit-normal (balance = debits − credits)"
    CREDIT = "credit", "Credit-normal (balance = credits − debits)"


class Account(models.Model):
    code = models.CharField(
        max_length=200, help_text="Stable code, e.g. @Revenue or wallet:acme:USD."
    )
    name = models.CharField(max_length=200, blank=True)
    currency = models.CharField(
        max_length=16, help_text="ISO 4217 code or a ledger unit such as TOKENS or CREDITS."
    )
    normal_balance = models.CharField(
        max_length=6, choices=NormalBalance.choices, default=NormalBalance.CREDIT
    )
    is_hot = models.BooleanField(
        default=False,
        help_text="A system account written by most postings; its balance is spread over "
        "several rows so postings never queue on it.",
    )
    allow_negative = models.BooleanField(
        default=False, help_text="May the available balance go below zero?"
    )
    negative_limit = amount_field(
        null=True,
        blank=True,
        help_text="How far below zero the available balance may go; empty = no limit.",
    )
    # The owner is referenced generically: the ledger knows nothing of customers.
    owner_type = models.CharField(max_length=100, blank=True, default="")
    owner_id = models.CharField(max_length=100, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["code", "currency"], name="ledger_account_code_uniq"),
            # What an entry's (account_id, currency) names (once the target of a composite
            # foreign key; since 0009 looked up by the entries' statement trigger).
            models.UniqueConstraint(fields=["id", "currency"], name="ledger_account_id_currency"),
            models.CheckConstraint(
                condition=Q(currency__regex=r"^[A-Z][A-Z0-9_]{1,15}$"),
                name="ledger_account_currency_format",
            ),
            models.CheckConstraint(
                condition=Q(negative_limit__isnull=True)
                | Q(allow_negative=True, negative_limit__gte=0),
                name="ledger_account_negative_limit",
            ),
            models.CheckConstraint(
                condition=Q(is_hot=False) | Q(allow_negative=True, negative_limit__isnull=True),
                name="ledger_account_hot_has_no_floor",
            ),
        ]
        indexes = [
            models.Index(fields=["owner_type", "owner_id"], name="ledger_account_owner"),
            # the hot (system) accounts' currencies, the admin lists' currency filter
            # (ledger.admin.system_currencies): a few rows, not a scan of every wallet
            models.Index(fields=["currency"], condition=Q(is_hot=True), name="ledger_account_hot"),
        ]

    def __str__(self) -> str:
        return f"{self.code} ({self.currency})"

    @property
    def is_system(self) -> bool:
        return not self.owner_type

    @property
    def floor(self) -> Decimal | None:
        """The lowest available balance the account may reach; None = unbounded."""
        if not self.allow_negative:
            return ZERO
        return None if self.negative_limit is None else -self.negative_limit


class Balance(models.Model):
    """One row per owned account (bucket 0); N rows per hot account. See the module doc."""

    # No index of its own: the (account, bucket) constraint leads with it.
    account = models.ForeignKey(
        Account, on_delete=models.PROTECT, related_name="balance_rows", db_index=False
    )
    bucket = models.SmallIntegerField(default=0)
    posted = amount_field(default=ZERO)
    held = amount_field(default=ZERO)
    floor = amount_field(null=True, blank=True)
    version = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "bucket"], name="ledger_balance_bucket"),
            models.CheckConstraint(condition=Q(held__gte=0), name="ledger_balance_held_positive"),
            models.CheckConstraint(
                condition=Q(floor__isnull=True) | Q(posted__gte=F("held") + F("floor")),
                name="ledger_balance_within_floor",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account} bucket {self.bucket}"


class HoldStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SETTLED = "settled", "Settled"
    RELEASED = "released", "Released"
    EXPIRED = "expired", "Expired"


class Hold(models.Model):
    """Funds reserved on an owned account, to be settled to ``destination`` or released."""

    reference = models.CharField(max_length=255, unique=True)
    payload_hash = models.CharField(max_length=64)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="holds")
    destination = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    currency = models.CharField(max_length=16)
    amount = amount_field()
    settled_amount = amount_field(default=ZERO)
    status = models.CharField(max_length=10, choices=HoldStatus.choices, default=HoldStatus.PENDING)
    description = models.TextField(blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    resolved_at = models.DateTimeField(null=True, blank=True)

    # Not a column: set on the hold ``ledger.services.place_hold`` returns, True when the
    # reference was placed already and this is that first hold (an idempotent retry).
    replayed: bool

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="ledger_hold_amount_positive"),
            models.CheckConstraint(
                condition=Q(settled_amount__gte=0, settled_amount__lte=F("amount")),
                name="ledger_hold_settled_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(status="pending", resolved_at__isnull=True)
                | (~Q(status="pending") & Q(resolved_at__isnull=False)),
                name="ledger_hold_resolved_once",
            ),
        ]
        indexes = [
            models.Index(
                fields=["expires_at"],
                condition=Q(status="pending"),
                name="ledger_hold_pending_expiry",
            )
        ]

    def __str__(self) -> str:
        return f"hold {self.reference} {self.amount} {self.currency} ({self.status})"

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.settled_amount if self.status == HoldStatus.PENDING else ZERO


class Transaction(models.Model):
    reference = models.CharField(max_length=255, unique=True, help_text="Idempotency reference.")
    payload_hash = models.CharField(max_length=64)
    description = models.TextField(blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    effective_at = models.DateTimeField(db_index=True)
    recorded_at = models.DateTimeField(db_default=Now())
    # At most one reversal per transaction: the unique index of a one-to-one field.
    reverses = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="reversed_by"
    )
    # Indexed only where it is set (Meta): a hold's settlements are few, and an index of the
    # NULLs of every other transaction would be written for each and read by nothing.
    hold = models.ForeignKey(
        Hold,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="settlements",
        db_index=False,
    )
    # Not a column: set on the transaction ``ledger.services`` posting functions return,
    # True when the reference was posted already and this is that first posting.
    replayed: bool

    class Meta:
        indexes = [
            models.Index(
                fields=["hold"], condition=Q(hold__isnull=False), name="ledger_transaction_hold"
            ),
        ]

    def __str__(self) -> str:
        return self.reference


class Entry(models.Model):
    """One leg of a transaction. Positive amount = debit, negative = credit."""

    # Both references (the transaction; the account with the entry's currency) are checked
    # once per INSERT statement by the entries' balance trigger, not by per-row foreign
    # keys (migration 0009: eight RI queries a single event); transactions are immutable,
    # and a trigger refuses deleting or re-keying an account that entries refer to.
    transaction = models.ForeignKey(
        Transaction, on_delete=models.PROTECT, related_name="entries", db_constraint=False
    )
    # A plain key on account_id would only add a lookup (and a share lock on hot account
    # rows) to every entry.
    # No single-column index either: (account, transaction) below serves every lookup by
    # account, and walks an account's transactions newest first by index (a customer's
    # history: billing.selectors.customer_transaction_ids) — the (account, id) index it
    # replaced (ledger 0006) ordered entries, not transactions, so a customer's page was a
    # merge of the whole transaction table with the customer's entries.
    account = models.ForeignKey(
        Account,
        on_delete=models.PROTECT,
        related_name="entries",
        db_constraint=False,
        db_index=False,
    )
    currency = models.CharField(max_length=16)
    amount = amount_field()

    class Meta:
        verbose_name_plural = "entries"
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="ledger_entry_amount_nonzero"),
        ]
        indexes = [models.Index(fields=["account", "transaction"], name="ledger_entry_account_txn")]

    def __str__(self) -> str:
        side = "Dr" if self.amount > 0 else "Cr"
        return f"{side} {self.account.code} {abs(self.amount)} {self.currency}"

    @property
    def debit(self) -> Decimal | None:
        return self.amount if self.amount > 0 else None

    @property
    def credit(self) -> Decimal | None:
        return -self.amount if self.amount < 0 else None
