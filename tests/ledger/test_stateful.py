"""A stateful property test of the ledger against an in-memory model, on real PostgreSQL.

Hypothesis drives a ``RuleBasedStateMachine`` through random sequences of ledger operations
(postings, multi-leg and bulk postings, retries, refused postings, holds, settlements,
releases, expiry, reversals, overdraft changes). The machine predicts the outcome of every
operation from its own model (Python ``Decimal``\\s in an exact, trapping context) and, after
every step, checks the database against the model and against the ledger's own invariants:

* every transaction balances per currency (a GROUP BY over ``ledger_entry``) and has at
  least two entries; deferred constraint checks (which would run at a COMMIT that never
  comes in a rolled-back test) are forced to run;
* the entries, transactions and holds in the database are exactly the modelled ones;
* each account's balance rows (``selectors.get_balance``) equal the sum of its entries
  (``selectors.balance_from_entries``) and the model; the past balance (``as_of``) too;
* no account with a floor has ``available`` below it, ``held >= 0``,
  ``available == posted - held`` exactly, and ``held`` is the sum of what its pending holds
  have left;
* every currency sums to zero over the example's accounts (double entry);
* a refused operation or an idempotent replay changes nothing (balances, versions, rows),
  and balance versions never go down.

Each example runs in its own savepoint inside the test's transaction (pytest-django ``db``)
and is rolled back at its end, so examples do not see each other's accounts or holds.

The examples are derandomized (the same on every run) and sized for CI: 20 examples of 30
steps, 600 checks of the invariant; 60-85 s on two shared cores (2026-12-07), three quarters
of it in the invariant's queries after every step (cProfile), so the time goes with examples ×
steps: fewer of either would drop the rarest paths these 20 reach once or twice (an expired
hold, a reversal of a reversal, a hold refused on a hot account). For a longer search, set
LEDGER_STATEFUL_EXAMPLES and LEDGER_STATEFUL_STEPS (and LEDGER_STATEFUL_RANDOM=1 for new
examples on every run).
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import (
    ROUND_DOWN,
    Context,
    Decimal,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    localcontext,
)

from django.conf import settings as django_settings
from django.db import connection, transaction
from django.db.models import Count, Max, Min, Sum
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ledger import errors, selectors, services
from ledger.models import Account, Balance, Hold, HoldStatus, NormalBalance
from ledger.models import Transaction as LedgerTransaction

ZERO = Decimal(0)
QUANTUM = Decimal("1e-12")

# The model never rounds: any inexact operation raises instead of silently losing digits.
_EXACT = Context(prec=100, traps=[Inexact, Rounded, InvalidOperation, Overflow])


def exact():
    return localcontext(_EXACT)


def neg(value: Decimal) -> Decimal:
    """-value, exactly (unary minus rounds to the context's precision)."""
    return value.copy_negate()


def scaled(n: int) -> Decimal:
    """n × 1e-12: an amount with (up to) 12 decimal places."""
    return Decimal(f"{n}E-12")  # exact, whatever the context's precision


EDGE_AMOUNTS = [
    Decimal("1e-12"),
    Decimal("0.000000000002"),
    Decimal("0.5"),
    Decimal("1"),
    Decimal("100"),
    Decimal("999999999.999999999999"),
    Decimal("1e15"),
    Decimal("9999999999999999.999999999999"),  # 28 significant digits
    Decimal("10000000000000000.000000000001"),  # 29: beyond Python's default precision
    Decimal("12345678901234567890.123456789012"),
    Decimal("9999999999999999999999.999999999999"),  # ~1e22, 34 significant digits
]

# Positive amounts with up to 12 decimal places, from 1e-12 to about 1e22. The largest stay
# far enough below the NUMERIC(38, 12) limit (1e26) that no balance can overflow within
# the steps of one example.
amounts = st.one_of(
    st.sampled_from(EDGE_AMOUNTS),
    st.integers(1, 10_000).map(Decimal),
    st.integers(1, 10**15).map(scaled),  # (0, 1000]
    st.integers(1, 10**34).map(scaled),  # (0, 1e22]
)
percents = st.integers(1, 100)
# Hours from now: none, already past, or in the future.
expiries = st.one_of(
    st.none(), st.none(), st.integers(1, 200).map(float), st.sampled_from([-24.0, -0.01])
)

USD_KEYS = ["world", "revenue", "strict", "limited", "unlimited"]
TOKEN_KEYS = ["tokens_world", "tokens_used", "tokens_wallet"]
ALL_KEYS = USD_KEYS + TOKEN_KEYS
OWNED_KEYS = ["strict", "limited", "unlimited", "tokens_wallet"]
FLOORED_KEYS = ["strict", "limited", "tokens_wallet"]
SAME_CURRENCY_PAIRS = [
    (a, b) for keys in (USD_KEYS, TOKEN_KEYS) for a in keys for b in keys if a != b
]
LIMITS = [ZERO, QUANTUM, Decimal("100"), Decimal("12345.678901234567"), Decimal("1e18")]


def portion(value: Decimal, percent: int) -> Decimal:
    """``percent``% of a positive ``value``, rounded down to 1e-12 but at least 1e-12."""
    with localcontext(Context(prec=100)):  # not exact(): rounding down is the point
        part = (value * percent / 100).quantize(QUANTUM, rounding=ROUND_DOWN)
    return max(part, QUANTUM)


_deferred_constraints: list[str] | None = None


def run_deferred_checks(cursor) -> None:
    """Run every pending deferred constraint check now, then defer again the constraints
    that are deferred by default (Django's foreign keys, any deferred constraint trigger)."""
    global _deferred_constraints
    if _deferred_constraints is None:
        cursor.execute(
            "SELECT DISTINCT quote_ident(conname) FROM pg_constraint "
            "WHERE condeferrable AND condeferred AND connamespace = current_schema()::regnamespace"
        )
        _deferred_constraints = sorted(row[0] for row in cursor.fetchall())
    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    if _deferred_constraints:
        cursor.execute(f"SET CONSTRAINTS {', '.join(_deferred_constraints)} DEFERRED")


# --- the model ---------------------------------------------------------------------------


@dataclass
class AccountModel:
    key: str
    account: Account
    floor: Decimal | None  # lowest allowed available; None = unbounded (hot or unlimited)
    posted: Decimal = ZERO
    held: Decimal = ZERO

    @property
    def id(self) -> int:
        return self.account.pk

    @property
    def currency(self) -> str:
        return self.account.currency

    @property
    def sign(self) -> int:
        """Natural balance change per unit of signed (debit-positive) entry amount."""
        return 1 if self.account.normal_balance == NormalBalance.DEBIT else -1

    @property
    def owned(self) -> bool:
        return not self.account.is_hot

    @property
    def available(self) -> Decimal:
        with exact():
            return self.posted - self.held


@dataclass
class TxModel:
    id: int
    reference: str
    kind: str  # "post", "reversal" or "settlement"
    legs: list[tuple[str, Decimal]]  # (account key, signed amount), as posted
    effective_at: datetime | None = None
    payload: tuple | None = None  # what a replay must repeat (plain posts only)
    reverses: int | None = None
    hold_ref: str | None = None
    reversed_by: int | None = None  # id of its reversal


@dataclass
class HoldModel:
    id: int
    reference: str
    account: str
    destination: str
    amount: Decimal
    expires_at: datetime | None
    settled: Decimal = ZERO
    status: str = HoldStatus.PENDING
    settlements: dict[str, Decimal] = field(default_factory=dict)  # reference → amount

    @property
    def remaining(self) -> Decimal:
        if self.status != HoldStatus.PENDING:
            return ZERO
        with exact():
            return self.amount - self.settled


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # One savepoint per example, rolled back in teardown(): examples do not see each
        # other's rows (release_expired_holds scans every hold in the database).
        self._savepoint = transaction.atomic()
        self._savepoint.__enter__()
        self.suffix = uuid.uuid4().hex[:12]
        self.counter = 0
        self.accounts: dict[str, AccountModel] = {}
        self.txs: dict[int, TxModel] = {}
        self.tx_by_ref: dict[str, TxModel] = {}
        self.holds: list[HoldModel] = []
        self.start = timezone.now()
        # Effective times for back-dated postings, and the cut-off of the as_of check.
        self.past_times = [self.start - timedelta(days=d) for d in (30, 10, 1)]
        self.cutoff = self.start - timedelta(days=5)
        self.last_versions: dict[int, int] = {}
        self.checks = 0

    def teardown(self):
        transaction.set_rollback(True)
        self._savepoint.__exit__(None, None, None)
        STATS["examples"] += 1
        STATS["invariant checks"] += self.checks

    # --- helpers -----------------------------------------------------------------------

    def ref(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-{self.suffix}-{self.counter}"

    def acc(self, key: str) -> AccountModel:
        return self.accounts[key]

    def legs_for(self, legs: list[tuple[str, Decimal]]) -> list[services.Leg]:
        out = []
        for key, amount in legs:
            account = self.acc(key).account
            out.append(
                services.debit(account, amount)
                if amount > 0
                else services.credit(account, neg(amount))
            )
        return out

    def natural_deltas(self, legs: list[tuple[str, Decimal]]) -> dict[str, Decimal]:
        deltas: dict[str, Decimal] = {}
        with exact():
            for key, amount in legs:
                deltas[key] = deltas.get(key, ZERO) + self.acc(key).sign * amount
        return deltas

    def floor_violation(self, deltas: dict[str, Decimal]) -> bool:
        """Would these balance changes take an account below its floor? The ledger checks
        only accounts whose posted balance goes down, and nets all legs of one posting."""
        with exact():
            for key, delta in deltas.items():
                model = self.acc(key)
                if model.owned and model.floor is not None and delta < 0:
                    if model.posted + delta - model.held < model.floor:
                        return True
        return False

    def apply(self, deltas: dict[str, Decimal]) -> None:
        with exact():
            for key, delta in deltas.items():
                self.acc(key).posted += delta

    @staticmethod
    def is_unbalanced(legs: list[tuple[str, Decimal]], currency_of) -> bool:
        if len(legs) < 2:
            return True
        totals: dict[str, Decimal] = {}
        with exact():
            for key, amount in legs:
                totals[currency_of(key)] = totals.get(currency_of(key), ZERO) + amount
        return any(total != 0 for total in totals.values())

    def currency_of(self, key: str) -> str:
        return self.acc(key).currency

    def snapshot(self):
        """Everything a refused operation or a replay must leave untouched."""
        ids = [m.id for m in self.accounts.values()]
        balances = {
            row["account_id"]: (row["posted"], row["held"], row["version"])
            for row in Balance.objects.filter(account_id__in=ids)
            .values("account_id")
            .annotate(posted=Sum("posted"), held=Sum("held"), version=Sum("version"))
        }
        holds = sorted(
            Hold.objects.filter(account_id__in=ids).values_list(
                "id", "status", "settled_amount", "resolved_at"
            )
        )
        tx_count = LedgerTransaction.objects.filter(entries__account_id__in=ids).distinct().count()
        return balances, holds, tx_count

    def expect_refusal(self, error: type[errors.LedgerError], call) -> None:
        before = self.snapshot()
        try:
            result = call()
        except errors.LedgerError as exc:
            assert type(exc) is error or error is errors.LedgerError, (
                f"expected {error.__name__}, got {type(exc).__name__}: {exc}"
            )
        else:
            raise AssertionError(f"expected {error.__name__}, but it succeeded: {result!r}")
        assert self.snapshot() == before, "a refused operation changed the ledger"
        STATS["refused:" + error.__name__] += 1

    def expect_noop(self, call):
        before = self.snapshot()
        result = call()
        assert self.snapshot() == before, "an idempotent replay changed the ledger"
        return result

    # --- postings: prediction and execution ---------------------------------------------

    def predict_post(self, specs: list[dict]) -> tuple[type[errors.LedgerError] | None, dict]:
        """The error the ledger must raise for these postings, or None and, per reference,
        whether it is a replay. Checks run in the ledger's order: balance, reference,
        funds."""
        for spec in specs:
            if self.is_unbalanced(spec["legs"], self.currency_of):
                return errors.UnbalancedTransaction, {}
        replayed = {}
        for spec in sorted(specs, key=lambda s: s["reference"]):
            existing = self.tx_by_ref.get(spec["reference"])
            if existing is not None:
                if existing.kind != "post" or existing.payload != self.payload(spec):
                    return errors.ReferenceReused, {}
                replayed[spec["reference"]] = True
            else:
                replayed[spec["reference"]] = False
        legs = [leg for s in specs if not replayed[s["reference"]] for leg in s["legs"]]
        if self.floor_violation(self.natural_deltas(legs)):
            return errors.InsufficientFunds, {}
        return None, replayed

    @staticmethod
    def payload(spec: dict) -> tuple:
        return (tuple(spec["legs"]), spec.get("effective_at"))

    def make_spec(self, spec: dict) -> services.TransactionSpec:
        return services.TransactionSpec(
            reference=spec["reference"],
            legs=self.legs_for(spec["legs"]),
            description=spec.get("description", ""),
            effective_at=spec.get("effective_at"),
        )

    def post(self, specs: list[dict], *, bulk: bool) -> None:
        """Post ``specs`` (one with post_transaction, several with post_transactions) and
        check the outcome against the model's prediction."""
        error, replayed = self.predict_post(specs)

        def call():
            if bulk:
                return services.post_transactions(
                    transactions=[self.make_spec(spec) for spec in specs]
                )
            (spec,) = specs
            return [
                services.post_transaction(
                    reference=spec["reference"],
                    legs=self.legs_for(spec["legs"]),
                    description=spec.get("description", ""),
                    effective_at=spec.get("effective_at"),
                )
            ]

        if error is not None:
            self.expect_refusal(error, call)
            return
        if all(replayed.values()):
            results = self.expect_noop(call)
        else:
            results = call()
        assert len(results) == len(specs)
        for spec, posted in zip(specs, results, strict=True):
            assert posted.reference == spec["reference"]
            assert posted.replayed is replayed[spec["reference"]]
            if posted.replayed:
                original = self.tx_by_ref[spec["reference"]]
                assert posted.pk == original.id
                STATS["replayed"] += 1
                continue
            self.record(
                TxModel(
                    id=posted.pk,
                    reference=spec["reference"],
                    kind="post",
                    legs=list(spec["legs"]),
                    effective_at=spec.get("effective_at"),
                    payload=self.payload(spec),
                )
            )
            STATS["posted"] += 1
        new_legs = [leg for s in specs if not replayed[s["reference"]] for leg in s["legs"]]
        self.apply(self.natural_deltas(new_legs))

    def record(self, tx: TxModel) -> None:
        assert tx.id not in self.txs
        self.txs[tx.id] = tx
        self.tx_by_ref[tx.reference] = tx

    # --- rules: setup ------------------------------------------------------------------

    @initialize(
        limit=st.sampled_from(LIMITS),
        funds=st.lists(amounts, min_size=4, max_size=4),
        holds=st.lists(
            st.tuples(st.sampled_from(OWNED_KEYS), percents, amounts, expiries), max_size=3
        ),
    )
    def create_accounts(self, limit, funds, holds):
        """Two hot accounts per currency and four wallets: no overdraft, a limited overdraft,
        an unlimited one (USD), and a TOKENS wallet; fund each wallet, place a few holds."""
        s = self.suffix

        def system(key, code, currency, normal):
            account = services.ensure_system_account(
                code=f"{code}-{s}", currency=currency, normal_balance=normal
            )
            self.accounts[key] = AccountModel(key, account, floor=None)

        def wallet(key, currency, allow_negative=False, negative_limit=None):
            account = services.create_account(
                code=f"wallet:{key}:{s}",
                currency=currency,
                allow_negative=allow_negative,
                negative_limit=negative_limit,
                owner_type="tests.customer",
                owner_id=f"cus-{key}-{s}",
            )
            floor = (
                ZERO
                if not allow_negative
                else (None if negative_limit is None else neg(negative_limit))
            )
            self.accounts[key] = AccountModel(key, account, floor=floor)

        system("world", "@World", "USD", NormalBalance.DEBIT)
        system("revenue", "@Revenue", "USD", NormalBalance.CREDIT)
        system("tokens_world", "@World", "TOKENS", NormalBalance.DEBIT)
        system("tokens_used", "@Tokens", "TOKENS", NormalBalance.CREDIT)
        wallet("strict", "USD")
        wallet("limited", "USD", allow_negative=True, negative_limit=limit)
        wallet("unlimited", "USD", allow_negative=True)
        wallet("tokens_wallet", "TOKENS")
        for model in self.accounts.values():
            assert model.account.floor == model.floor
        for key, amount in zip(OWNED_KEYS, funds, strict=True):
            self.fund(key, amount)
        for key, percent, amount, expiry in holds:
            self.place_hold(key, False, "portion", percent, amount, expiry, None)

    # --- rules: postings ---------------------------------------------------------------

    @rule(key=st.sampled_from(OWNED_KEYS), amount=amounts)
    def fund(self, key, amount):
        """Money (or tokens) in from the outside world."""
        source = "world" if self.acc(key).currency == "USD" else "tokens_world"
        spec = {"reference": self.ref("fund"), "legs": [(source, amount), (key, neg(amount))]}
        self.post([spec], bulk=False)

    @rule(
        pair=st.sampled_from(SAME_CURRENCY_PAIRS),
        amount=amounts,
        back_dated=st.none() | st.integers(0, 2),
        description=st.sampled_from(["", "transfer"]),
    )
    def transfer(self, pair, amount, back_dated, description):
        """Debit one account, credit another (funding a wallet, spending, paying out…)."""
        debited, credited = pair
        spec = {
            "reference": self.ref("tx"),
            "legs": [(debited, amount), (credited, neg(amount))],
            "description": description,
        }
        if back_dated is not None:
            spec["effective_at"] = self.past_times[back_dated]
        self.post([spec], bulk=False)

    @rule(
        key=st.sampled_from(FLOORED_KEYS),
        mode=st.sampled_from(["portion", "exactly", "over"]),
        percent=percents,
        extra=st.sampled_from([QUANTUM]) | amounts,
    )
    def spend_near_floor(self, key, mode, percent, extra):
        """Spend part of, exactly, or a little more than what a floored wallet can spend."""
        model = self.acc(key)
        if model.floor is None:
            key, model = "strict", self.acc("strict")  # the limited wallet has no floor now
        destination = "revenue" if model.currency == "USD" else "tokens_used"
        with exact():
            headroom = model.available - model.floor
            if headroom <= 0:
                mode = "over"  # nothing left to spend: try to spend a little anyway
            if mode == "over":
                amount = headroom + extra
            elif mode == "exactly":
                amount = headroom
            else:
                amount = portion(headroom, percent)
        spec = {"reference": self.ref("spend"), "legs": [(key, amount), (destination, neg(amount))]}
        error, _ = self.predict_post([spec])
        assert (error is errors.InsufficientFunds) == (mode == "over")
        self.post([spec], bulk=False)
        if mode == "exactly":
            assert model.available == model.floor

    @rule(data=st.data(), n=st.integers(2, 5))
    def multi_leg(self, data, n):
        """A balanced posting with 2–5 random legs (a balancing leg per currency)."""
        legs = []
        for _ in range(n):
            key = data.draw(st.sampled_from(ALL_KEYS), label="key")
            amount = data.draw(amounts, label="amount")
            legs.append((key, amount if data.draw(st.booleans(), label="debit") else neg(amount)))
        for keys in (USD_KEYS, TOKEN_KEYS):
            with exact():
                total = sum((a for k, a in legs if k in keys), ZERO)
            if total:
                legs.append((data.draw(st.sampled_from(keys), label="balancing key"), neg(total)))
        self.post([{"reference": self.ref("multi"), "legs": legs}], bulk=False)

    @rule(data=st.data(), shape=st.sampled_from(["single", "off_by", "wrong_currency"]))
    def unbalanced(self, data, shape):
        """Postings that do not balance per currency are refused."""
        key = data.draw(st.sampled_from(USD_KEYS), label="key")
        other = data.draw(st.sampled_from([k for k in USD_KEYS if k != key]), label="other")
        amount = data.draw(amounts, label="amount")
        if shape == "single":
            legs = [(key, amount)]
        elif shape == "off_by":
            off = data.draw(st.sampled_from([QUANTUM]) | amounts, label="off")
            with exact():
                legs = [(key, amount + off), (other, neg(amount))]
        else:  # balanced in total, but across two currencies
            token_key = data.draw(st.sampled_from(TOKEN_KEYS), label="token key")
            legs = [(key, amount), (token_key, neg(amount))]
        spec = {"reference": self.ref("unbalanced"), "legs": legs}
        assert self.predict_post([spec])[0] is errors.UnbalancedTransaction
        self.post([spec], bulk=False)

    @rule(
        token_amount=amounts,
        usd_amount=amounts,
        tokens_in=st.booleans(),
        usd_payer=st.sampled_from(["strict", "limited", "unlimited", "world"]),
        with_replay=st.booleans(),
        data=st.data(),
    )
    def bulk(self, token_amount, usd_amount, tokens_in, usd_payer, with_replay, data):
        """A TOKENS posting and a USD posting together, all or nothing (plus, sometimes, a
        replay of an earlier posting, which must come back as the original)."""
        token_legs = (
            [("tokens_world", token_amount), ("tokens_wallet", neg(token_amount))]
            if tokens_in
            else [("tokens_wallet", token_amount), ("tokens_used", neg(token_amount))]
        )
        specs = [
            {"reference": self.ref("bulk-tokens"), "legs": token_legs},
            {
                "reference": self.ref("bulk-usd"),
                "legs": [(usd_payer, usd_amount), ("revenue", neg(usd_amount))],
            },
        ]
        posts = [tx for tx in self.txs.values() if tx.kind == "post"]
        if with_replay and posts:
            old = data.draw(st.sampled_from(posts), label="replayed posting")
            spec = {"reference": old.reference, "legs": old.legs, "description": "again"}
            if old.effective_at is not None:
                spec["effective_at"] = old.effective_at
            specs.insert(data.draw(st.integers(0, 2), label="position"), spec)
        self.post(specs, bulk=True)

    @precondition(lambda self: bool(self.txs))
    @rule(
        data=st.data(),
        change=st.sampled_from([None, None, "amount", "legs", "effective_at"]),
        how=st.sampled_from(["single", "bulk"]),
        amount=amounts,
    )
    def repeat_reference(self, data, change, how, amount):
        """An earlier posting's reference again. With the same legs (and effective time) the
        original comes back and nothing changes; with any other payload, or the reference of
        a reversal or a settlement, it is refused."""
        old = data.draw(st.sampled_from(sorted(self.txs.values(), key=lambda t: t.id)), label="tx")
        legs = old.legs
        if change == "amount":
            with exact():
                legs = [(key, a + (QUANTUM if a > 0 else -QUANTUM)) for key, a in old.legs]
        elif change == "legs":
            legs = [("world", amount), ("revenue", neg(amount))]
            if legs == old.legs:
                legs = [("world", amount), ("unlimited", neg(amount))]
        spec = {"reference": old.reference, "legs": legs, "description": "a retry"}
        if change == "effective_at":
            spec["effective_at"] = (
                self.past_times[0] if old.effective_at != self.past_times[0] else self.past_times[1]
            )
        elif old.effective_at is not None:
            spec["effective_at"] = old.effective_at
        error, replayed = self.predict_post([spec])
        assert (error is None) == (change is None and old.kind == "post")
        self.post([spec], bulk=how == "bulk")
        stored = LedgerTransaction.objects.get(pk=old.id)
        assert stored.description != "a retry"  # the original is kept as it was

    # --- rules: overdraft --------------------------------------------------------------

    @rule(
        limit=st.none() | st.sampled_from(LIMITS) | amounts,
        allow=st.booleans(),
        invalid=st.sampled_from([None] * 6 + ["limit_without_overdraft", "negative_limit"]),
    )
    def set_overdraft(self, limit, allow, invalid):
        """Move the limited wallet's floor; refused if it is already below the new one.
        Now and then an invalid request (a limit without an overdraft, a negative limit),
        which must be refused with a ledger error like any other."""
        model = self.acc("limited")
        account = model.account
        if invalid == "limit_without_overdraft":
            allow, limit = False, limit or Decimal(5)
        elif invalid == "negative_limit":
            allow, limit = True, neg(limit or Decimal(5))
        new_floor = ZERO if not allow else (None if limit is None else neg(limit))
        call = lambda: services.set_overdraft(  # noqa: E731
            account=account,
            allow_negative=allow,
            negative_limit=limit if allow or invalid else None,
        )
        if invalid or (new_floor is not None and model.available < new_floor):
            before = (account.allow_negative, account.negative_limit)
            if invalid:
                self.expect_refusal(errors.LedgerError, call)  # which one is not specified
            else:
                self.expect_refusal(errors.OverdraftLimitBelowBalance, call)
            # "Change nothing" includes the caller's instance: a later account.save() (an
            # admin edit, say) would otherwise store the refused overdraft on the account
            # while its balance row keeps the old floor.
            assert (account.allow_negative, account.negative_limit) == before, (
                "a refused set_overdraft left the account instance with the refused overdraft"
            )
            return
        call()
        model.floor = new_floor
        assert account.floor == new_floor
        stored = Account.objects.get(pk=model.id)
        assert (stored.allow_negative, stored.negative_limit) == (
            account.allow_negative,
            account.negative_limit,
        )

    # --- rules: holds ------------------------------------------------------------------

    @rule(
        key=st.sampled_from(OWNED_KEYS),
        to_wallet=st.booleans(),
        size=st.sampled_from(["portion", "exactly", "over", "any"]),
        percent=percents,
        amount=amounts,
        expiry=expiries,
        invalid=st.sampled_from([None] * 9 + ["hot_account", "currency_mismatch", "not_positive"]),
    )
    def place_hold(self, key, to_wallet, size, percent, amount, expiry, invalid):
        """Reserve part of, exactly, more than, or any amount of a wallet's funds (now and
        then a hold the ledger does not support)."""
        if invalid is not None:
            self.invalid_hold(invalid)
            return
        model = self.acc(key)
        if model.currency == "USD":
            destination = "unlimited" if to_wallet and key != "unlimited" else "revenue"
        else:
            destination = "tokens_used"
        with exact():
            headroom = None if model.floor is None else model.available - model.floor
            if size == "any" or headroom is None:
                pass
            elif size == "over" or headroom <= 0:
                amount = headroom + QUANTUM
            elif size == "exactly":
                amount = headroom
            else:
                amount = portion(headroom, percent)
        expires_at = None if expiry is None else timezone.now() + timedelta(hours=expiry)
        reference = self.ref("hold")

        def call():
            return services.place_hold(
                reference=reference,
                account=model.account,
                destination=self.acc(destination).account,
                amount=amount,
                expires_at=expires_at,
            )

        with exact():
            refused = model.floor is not None and model.posted - model.held - amount < model.floor
        if refused:
            self.expect_refusal(errors.InsufficientFunds, call)
            return
        hold = call()
        assert hold.replayed is False
        assert hold.status == HoldStatus.PENDING and hold.amount == amount
        self.holds.append(HoldModel(hold.pk, reference, key, destination, amount, expires_at))
        with exact():
            model.held += amount
        STATS["holds"] += 1

    def pick_hold(self, data) -> HoldModel:
        """A hold, pending ones three times out of four (when there are any)."""
        pending = [h for h in self.holds if h.status == HoldStatus.PENDING]
        if pending and data.draw(st.integers(0, 3), label="prefer pending"):
            return data.draw(st.sampled_from(pending), label="hold")
        return data.draw(st.sampled_from(self.holds), label="hold")

    def invalid_hold(self, kind):
        account, destination, amount, error = {
            "hot_account": ("revenue", "strict", Decimal(1), errors.HoldNotSupported),
            "currency_mismatch": ("unlimited", "tokens_used", Decimal(1), errors.CurrencyMismatch),
            "not_positive": ("unlimited", "revenue", ZERO, errors.InvalidAmount),
        }[kind]
        self.expect_refusal(
            error,
            lambda: services.place_hold(
                reference=self.ref("bad-hold"),
                account=self.acc(account).account,
                destination=self.acc(destination).account,
                amount=amount,
            ),
        )

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data(), same=st.booleans(), what=st.sampled_from(["hold", "settlement"]))
    def retry_hold(self, data, same, what):
        """Placing a hold again with its reference: the original if the same, else refused.
        Likewise for a settlement."""
        if what == "settlement" and any(h.settlements for h in self.holds):
            self.retry_settlement(data, same)
            return
        hold = self.pick_hold(data)

        def call(amount):
            return services.place_hold(
                reference=hold.reference,
                account=self.acc(hold.account).account,
                destination=self.acc(hold.destination).account,
                amount=amount,
                expires_at=hold.expires_at,
            )

        if same:
            again = self.expect_noop(lambda: call(hold.amount))
            assert again.replayed is True and again.pk == hold.id
            assert again.status == hold.status
            STATS["replayed"] += 1
        else:
            with exact():
                other = hold.amount + QUANTUM
            self.expect_refusal(errors.ReferenceReused, lambda: call(other))

    @precondition(lambda self: bool(self.holds))
    @rule(
        data=st.data(),
        size=st.sampled_from(["portion", "remaining", "over", "any"]),
        percent=percents,
        amount=amounts,
        final=st.booleans(),
    )
    def settle_hold(self, data, size, percent, amount, final):
        """Settle part of a hold, what is left of it, more than that, or any amount; with
        final=True the rest is released. Resolved and expired holds cannot be settled."""
        hold = self.pick_hold(data)
        with exact():
            left = hold.amount - hold.settled
            if size == "portion":
                amount = portion(left, percent) if left > 0 else amount
            elif size == "remaining":
                amount = left if left > 0 else amount
            elif size == "over":
                amount = left + QUANTUM
        reference = self.ref("settle")

        def call():
            return services.settle_hold(
                hold_id=hold.id, amount=amount, reference=reference, final=final
            )

        if hold.status != HoldStatus.PENDING:
            self.expect_refusal(errors.HoldAlreadyResolved, call)
            return
        if hold.expires_at is not None and hold.expires_at <= timezone.now():
            self.expect_refusal(errors.HoldExpired, call)
            return
        if amount > left:
            self.expect_refusal(errors.HoldAmountExceeded, call)
            return
        legs = [(hold.account, amount), (hold.destination, neg(amount))]
        posted = call()
        assert posted.replayed is False and posted.hold_id == hold.id
        self.record(TxModel(posted.pk, reference, "settlement", legs, hold_ref=hold.reference))
        with exact():
            self.acc(hold.account).held -= amount
            self.apply(self.natural_deltas(legs))
            hold.settled += amount
            hold.settlements[reference] = amount
            if hold.settled == hold.amount or final:
                self.acc(hold.account).held -= hold.amount - hold.settled
                hold.status = HoldStatus.SETTLED
        STATS["settlements"] += 1

    def retry_settlement(self, data, same):
        """A settlement retried with its reference returns the original, whatever the hold's
        state now; with another amount it is refused."""
        hold = data.draw(st.sampled_from([h for h in self.holds if h.settlements]), label="hold")
        reference = data.draw(st.sampled_from(sorted(hold.settlements)), label="reference")
        amount = hold.settlements[reference]
        if same:
            again = self.expect_noop(
                lambda: services.settle_hold(hold_id=hold.id, amount=amount, reference=reference)
            )
            assert again.replayed is True and again.pk == self.tx_by_ref[reference].id
            STATS["replayed"] += 1
        else:
            with exact():
                other = amount + QUANTUM
            self.expect_refusal(
                errors.ReferenceReused,
                lambda: services.settle_hold(hold_id=hold.id, amount=other, reference=reference),
            )

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data(), twice=st.booleans())
    def release_hold(self, data, twice):
        """Release what is left of a hold (then, sometimes, again: a no-op). Settled and
        expired holds cannot be released."""
        hold = self.pick_hold(data)
        call = lambda: services.release_hold(hold_id=hold.id)  # noqa: E731
        if hold.status in (HoldStatus.SETTLED, HoldStatus.EXPIRED):
            self.expect_refusal(errors.HoldAlreadyResolved, call)
            return
        if hold.status == HoldStatus.RELEASED:
            released = self.expect_noop(call)  # releasing twice is a no-op
        else:
            released = call()
            with exact():
                self.acc(hold.account).held -= hold.remaining
            hold.status = HoldStatus.RELEASED
            STATS["releases"] += 1
            if twice:
                released = self.expect_noop(call)
        assert released.pk == hold.id and released.status == HoldStatus.RELEASED

    @rule(
        data=st.data(),
        when=st.sampled_from(["now", "at_a_hold", "later"]),
        hours=st.integers(0, 300),
    )
    def expire_holds(self, data, when, hours):
        """The beat task, run as if at ``now`` (now, exactly at a hold's expiry, later)."""
        with_expiry = [h for h in self.holds if h.expires_at is not None]
        if when == "at_a_hold" and with_expiry:
            now = data.draw(st.sampled_from(with_expiry), label="hold").expires_at
        elif when == "later":
            now = timezone.now() + timedelta(hours=hours)
        else:
            now = timezone.now()
        due = [
            h
            for h in self.holds
            if h.status == HoldStatus.PENDING and h.expires_at is not None and h.expires_at <= now
        ]
        # Holds are global: count every due hold the database holds (all ours, normally).
        due_in_db = Hold.objects.filter(status=HoldStatus.PENDING, expires_at__lte=now).count()
        assert due_in_db >= len(due)
        assert services.release_expired_holds(now=now) == due_in_db
        for hold in due:
            with exact():
                self.acc(hold.account).held -= hold.remaining
            hold.status = HoldStatus.EXPIRED
        STATS["expired"] += len(due)

    # --- rules: reversals ---------------------------------------------------------------

    @precondition(lambda self: bool(self.txs))
    @rule(data=st.data(), reference=st.sampled_from(["new", "of_its_reversal", "of_another"]))
    def reverse(self, data, reference):
        """Reverse any transaction (posting, settlement or reversal) with a new reference,
        its reversal's reference (a replay) or another transaction's (refused)."""
        tx = data.draw(st.sampled_from(sorted(self.txs.values(), key=lambda t: t.id)), label="tx")
        if reference == "of_its_reversal" and tx.reversed_by is not None:
            ref = self.txs[tx.reversed_by].reference
        elif reference == "of_another":
            ref = data.draw(st.sampled_from(sorted(self.tx_by_ref)), label="reference")
        else:
            ref = self.ref("reversal")

        def call():
            return services.reverse_transaction(transaction_id=tx.id, reference=ref)

        existing = self.tx_by_ref.get(ref)
        mirror = [(key, neg(amount)) for key, amount in tx.legs]
        if tx.reverses is not None:
            self.expect_refusal(errors.CannotReverseReversal, call)
        elif existing is not None and existing.kind == "reversal" and existing.reverses == tx.id:
            again = self.expect_noop(call)  # the same reversal again: a replay
            assert again.replayed is True and again.pk == existing.id
            STATS["replayed"] += 1
        elif existing is not None:
            self.expect_refusal(errors.ReferenceReused, call)
        elif tx.reversed_by is not None:
            self.expect_refusal(errors.AlreadyReversed, call)
        elif self.floor_violation(self.natural_deltas(mirror)):
            # A reversal needs the funds it takes back, like any posting.
            self.expect_refusal(errors.InsufficientFunds, call)
        else:
            reversal = call()
            assert reversal.replayed is False and reversal.reverses_id == tx.id
            self.record(TxModel(reversal.pk, ref, "reversal", mirror, reverses=tx.id))
            tx.reversed_by = reversal.pk
            self.apply(self.natural_deltas(mirror))
            STATS["reversals"] += 1

    # --- invariants --------------------------------------------------------------------

    @invariant()
    def ledger_matches_model(self):
        self.checks += 1
        ids = [m.id for m in self.accounts.values()]
        by_id = {m.id: m for m in self.accounts.values()}

        with connection.cursor() as cursor:
            run_deferred_checks(cursor)
            cursor.execute(
                "SELECT DISTINCT transaction_id FROM ledger_entry WHERE account_id = ANY(%s)",
                [ids],
            )
            tx_ids = sorted(row[0] for row in cursor.fetchall())
            # Every transaction balances per currency...
            cursor.execute(
                "SELECT transaction_id, currency, sum(amount) FROM ledger_entry "
                "WHERE transaction_id = ANY(%s) GROUP BY transaction_id, currency "
                "HAVING sum(amount) <> 0",
                [tx_ids],
            )
            assert cursor.fetchall() == [], "a transaction does not balance"
            # ...and its entries are exactly the modelled legs.
            cursor.execute(
                "SELECT transaction_id, account_id, currency, amount FROM ledger_entry "
                "WHERE transaction_id = ANY(%s)",
                [tx_ids],
            )
            entries: dict[int, list] = {}
            for tx_id, account_id, currency, amount in cursor.fetchall():
                assert by_id[account_id].currency == currency
                entries.setdefault(tx_id, []).append((account_id, amount))
        assert sorted(entries) == sorted(self.txs), "transactions differ from the model"
        for tx_id, tx in self.txs.items():
            assert len(entries[tx_id]) >= 2
            expected = sorted((self.acc(key).id, amount) for key, amount in tx.legs)
            assert sorted(entries[tx_id]) == expected, f"entries of {tx.reference}"
        rows = LedgerTransaction.objects.filter(pk__in=tx_ids).values_list(
            "id", "reference", "reverses_id", "hold__reference"
        )
        assert sorted(rows) == sorted(
            (t.id, t.reference, t.reverses, t.hold_ref) for t in self.txs.values()
        )

        # Holds: as modelled; held = what pending holds have left.
        held_by_holds: dict[int, Decimal] = {}
        db_holds = {h.pk: h for h in Hold.objects.filter(account_id__in=ids)}
        assert sorted(db_holds) == sorted(h.id for h in self.holds)
        for hold in self.holds:
            row = db_holds[hold.id]
            assert (row.status, row.amount, row.settled_amount) == (
                hold.status,
                hold.amount,
                hold.settled,
            ), f"hold {hold.reference}"
            assert (row.resolved_at is None) == (hold.status == HoldStatus.PENDING)
            assert row.remaining == hold.remaining
            with exact():
                held_by_holds[row.account_id] = held_by_holds.get(row.account_id, ZERO) + (
                    row.remaining
                )

        buckets = {
            row["account_id"]: row
            for row in Balance.objects.filter(account_id__in=ids)
            .values("account_id")
            .annotate(
                n=Count("id"),
                min_floor=Min("floor"),
                max_floor=Max("floor"),
                min_held=Min("held"),
                version=Sum("version"),
            )
        }
        totals: dict[str, Decimal] = {}
        for model in self.accounts.values():
            account = model.account
            view = selectors.get_balance(account=account)
            available = view.available  # computed by the ledger, in the ambient context
            from_entries = selectors.balance_from_entries(account=account)
            name = model.key
            assert view.currency == model.currency
            assert view.posted == from_entries, f"{name}: balance rows ≠ entries"
            assert view.posted == model.posted, f"{name}: posted ≠ model"
            assert view.held == model.held, f"{name}: held ≠ model"
            assert view.held == held_by_holds.get(model.id, ZERO), f"{name}: held ≠ its holds"
            assert view.held >= 0
            with exact():
                assert available == view.posted - view.held, f"{name}: available inexact"
                if model.floor is not None:
                    assert available >= model.floor, f"{name}: below its floor"
                expected_as_of = sum(
                    (
                        model.sign * amount
                        for tx in self.txs.values()
                        if tx.effective_at is not None and tx.effective_at <= self.cutoff
                        for key, amount in tx.legs
                        if key == name
                    ),
                    ZERO,
                )
                totals[model.currency] = totals.get(model.currency, ZERO) + model.sign * view.posted
            if model.owned:  # (the same query for every account: spare the hot ones)
                as_of = selectors.get_balance(account=account, as_of=self.cutoff).posted
                assert as_of == expected_as_of, f"{name}: balance as of the cut-off"
            row = buckets[model.id]
            assert row["n"] == (1 if model.owned else django_settings.LEDGER_HOT_ACCOUNT_BUCKETS)
            assert row["min_floor"] == row["max_floor"] == model.floor
            assert row["min_held"] >= 0
            version = int(row["version"])
            assert version == view.version
            assert version >= self.last_versions.get(model.id, 0), "a balance version went down"
            self.last_versions[model.id] = version
        # Double entry: each currency sums to zero over the example's accounts.
        assert all(total == 0 for total in totals.values()), totals


STATS: Counter[str] = Counter()  # what the last run did, printed at its end


def test_ledger_state_machine(db):
    """Random operation sequences keep the ledger consistent with the model."""
    STATS.clear()
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=int(os.environ.get("LEDGER_STATEFUL_EXAMPLES", "20")),
            stateful_step_count=int(os.environ.get("LEDGER_STATEFUL_STEPS", "30")),
            deadline=None,
            # The same examples on every run (CI), unless asked for new ones.
            derandomize=not os.environ.get("LEDGER_STATEFUL_RANDOM"),
            database=None,
            print_blob=True,
            # Each example costs real database round trips: skip the (slow) explain phase.
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
            ],
        ),
    )
    print("stateful ledger test:", dict(sorted(STATS.items())))
