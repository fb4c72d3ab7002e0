"""A deliberately simple reference model of one shard's ledger, written from the ledger's specification.

It is the oracle of the property tests: :class:`coffer.core.state_machine.StateMachine` must give
the same outcome for every command and hold the same accounts after every log entry. To be worth
anything as an oracle it shares no code with the state machine — only the command structs (the
input format) — and it is written for obviousness, not speed: plain ints and dicts, one method
per command, every check spelled out in the documented order.

Check order (state_machine.py's module docstring; the first failing check decides the code):

1. the dedup_id (retry -> the stored outcome; other payload -> DEDUP_ID_REUSED, not stored;
   an original arriving after its null compensation -> ALREADY_COMPENSATED);
2. the command's own shape: amounts (INVALID_AMOUNT) first, then ids/sizes (INVALID_REQUEST);
   SAME_ACCOUNT is a shape rule of Transfer (it needs no state);
3. per account, in the order the command names them: exists, state, asset;
4. conditions, reservation and transaction lookups;
5. limits, per account in the order the command names them: lower first, then upper.

Readings of the spec this model takes where the text leaves room (each is listed in the report
that came with these tests, so a reviewer can overrule it):

- a precondition-only account must exist (step 3, after the legs' accounts) but may be locked or
  deleted: reading a balance is not a balance operation;
- "txn_id exists" is a transaction lookup (step 4), so it comes after the legs' account checks;
- the undo of a Transfer names its accounts in the original's order (from, then to);
- UpdateLimits is not a balance operation: allowed on a locked account, not on a deleted one;
- Lock of a locked account / Unlock of a normal one is INVALID_STATE_TRANSITION, while any
  command on a deleted account (other than Confirm/Cancel) is ACCOUNT_DELETED;
- every accepted command emits exactly one event, even when it changes no account (a repeated
  confirm or cancel, a null compensation);
- compensating a rejected original of any kind is a null compensation (it moved nothing);
- money is an exact integer bounded by 2^127 - 1 minor units in magnitude: an amount beyond is
  INVALID_AMOUNT, and a total beyond it on an account without an upper limit BALANCE_OUT_OF_RANGE.

Velocity limits (step 6, after the limits): the model keeps every debit it counted as a list of
(time, amount) per account and sums the ones in the calendar hour and day (UTC, by the ledger's
clock) of the command; a debit is what a transfer takes from its source, the net decrease of a
batch operation per account, and a TCC hold out. A cancelled or expired hold's debit is struck
off the list. Debits count only while the account has caps; removing every cap forgets them.

Limits are checked the same way for every operation: the state after it must have
``available >= lower`` and ``available + reserved + pending_in + pending_out <= upper``.
"""

import re
from dataclasses import dataclass, field

from coffer.core.commands import (
    BatchBalanceOperation,
    Command,
    Compensate,
    CreateAccount,
    DeleteAccount,
    LockAccount,
    Release,
    Reserve,
    SetVelocityLimits,
    TccCancel,
    TccConfirm,
    TccTry,
    Transfer,
    UnlockAccount,
    UpdateLimits,
)

# The bounds of coffer/core/commands.py and amounts.py, restated rather than imported so that a
# change in the core's constants shows up as a disagreement instead of silently moving the oracle.
ID_LENGTH_MAX = 128
ASSET_LENGTH_MAX = 32
SCALE_MAX = 18
LEGS_MAX = 1024
AMOUNT_MAX = 2**127 - 1  # every amount and balance is below 2^127 minor units in magnitude
TIMEOUT_S_MAX = 30 * 24 * 3600
HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS
DEBITS_MAX = 2**63 - 1
METADATA_KEYS_MAX = 32
METADATA_KEY_LENGTH_MAX = 64
METADATA_VALUE_LENGTH_MAX = 1024
ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]+")

OK = "OK"


def _out_of_range(*amounts: int | None) -> bool:
    """Beyond 2^127 - 1 minor units in magnitude: refused as INVALID_AMOUNT."""
    return any(amount is not None and not -AMOUNT_MAX <= amount <= AMOUNT_MAX for amount in amounts)
NORMAL = "NORMAL"
LOCKED = "LOCKED"
DELETED = "DELETED"
TRIED = "TRIED"
CONFIRMED = "CONFIRMED"
CANCELLED = "CANCELLED"
COMPENSATED = "COMPENSATED"
NULL_COMPENSATED = "NULL_COMPENSATED"


@dataclass
class ModelAccount:
    asset: str
    scale: int
    state: str
    lower: int
    upper: int | None
    available: int
    reservations: dict[str, int]
    pending_in: dict[str, int]
    pending_out: dict[str, int]
    version: int
    metadata: dict[str, str]

    def total(self) -> int:
        """What the upper limit bounds: available + reserved + pending_in + pending_out."""
        return self.available + sum(self.reservations.values()) + sum(self.pending_in.values()) + sum(self.pending_out.values())

    def view(self) -> dict[str, object]:
        """A copy to compare with the state machine's account (and to freeze into an event)."""
        return {
            "asset": self.asset,
            "scale": self.scale,
            "state": self.state,
            "lower": self.lower,
            "upper": self.upper,
            "available": self.available,
            "reservations": dict(self.reservations),
            "pending_in": dict(self.pending_in),
            "pending_out": dict(self.pending_out),
            "version": self.version,
            "metadata": dict(self.metadata),
        }


@dataclass
class ModelTxn:
    state: str
    # account_id -> [amount taken out of available, amount booked in], in the legs' order
    holds: dict[str, list[int]]
    deadline_ms: int | None


@dataclass(frozen=True)
class Outcome:
    """What one command gets back: its code, the seq of its event if accepted, and for a
    compensation which kind it was."""

    code: str
    seq: int = 0
    compensation: str | None = None


@dataclass(frozen=True)
class Report:
    """One command's outcome and the accounts it changed now (none for a rejection or a retry)."""

    outcome: Outcome
    changed: tuple[str, ...] = ()


@dataclass
class ModelEvent:
    seq: int
    dedup_id: str | None
    type: str
    accounts: dict[str, dict[str, object]] = field(default_factory=dict)  # account_id -> view after


class Rejected(Exception):
    """A check failed; carries the code. Only used inside the model to keep each handler a
    straight list of checks."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _valid_id(value: object, length_max: int = ID_LENGTH_MAX) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= length_max and ID_PATTERN.fullmatch(value) is not None


def _valid_metadata(metadata: dict[str, str] | None) -> bool:
    if metadata is None:
        return True
    if len(metadata) > METADATA_KEYS_MAX:
        return False
    for key, value in metadata.items():
        if not (1 <= len(key) <= METADATA_KEY_LENGTH_MAX and len(value) <= METADATA_VALUE_LENGTH_MAX):
            return False
    return True


def _first_seen_order(pairs: list[tuple[str, int]]) -> dict[str, int]:
    """Sum amounts per account, keeping accounts in the order the command first names them."""
    net: dict[str, int] = {}
    for account_id, amount in pairs:
        net[account_id] = net.get(account_id, 0) + amount
    return net


class ReferenceModel:
    """One shard. ``apply_entry`` mirrors ``StateMachine.apply``."""

    def __init__(self) -> None:
        self.accounts: dict[str, ModelAccount] = {}
        self.asset_scales: dict[str, int] = {}
        # dedup_id -> (the command that owns it, its outcome); command None = a null compensation
        # reserved this id before the original arrived.
        self.dedup: dict[str, tuple[Command | None, Outcome]] = {}
        self.txns: dict[str, ModelTxn] = {}
        self.compensated: set[str] = set()  # original dedup_ids that were (null-)compensated
        # account_id -> its caps (amount_per_hour, amount_per_day, debits_per_hour, debits_per_day)
        self.caps: dict[str, tuple[int | None, int | None, int | None, int | None]] = {}
        # account_id -> the debits counted against its caps: [time_ms, amount, txn_id or None]
        self.debits: dict[str, list[tuple[int, int, str | None]]] = {}
        self.clock_ms = 0
        self.seq = 0
        self.events: list[ModelEvent] = []  # the events of the entry being applied

    # ------------------------------------------------------------------ entry

    def apply_entry(self, time_ms: int, commands: list[Command]) -> tuple[list[Report], list[ModelEvent]]:
        # The ledger's clock never goes back, even if the log's time does.
        self.clock_ms = max(self.clock_ms, time_ms)
        self.events = []
        self._expire_tries()
        reports = []
        for command in commands:
            events_before = len(self.events)
            outcome = self._apply_command(command)
            new_events = self.events[events_before:]
            assert len(new_events) <= 1
            reports.append(Report(outcome, tuple(new_events[0].accounts) if new_events else ()))
        return reports, self.events

    def _expire_tries(self) -> None:
        due = [
            (txn.deadline_ms, txn_id)
            for txn_id, txn in self.txns.items()
            if txn.state == TRIED and txn.deadline_ms is not None and txn.deadline_ms <= self.clock_ms
        ]
        for _, txn_id in sorted(due):
            changed = self._cancel_holds(txn_id)
            self._emit(None, "tcc_expired", changed)

    def _apply_command(self, command: Command) -> Outcome:
        dedup_id = command.dedup_id
        if dedup_id in self.dedup:
            owner, outcome = self.dedup[dedup_id]
            if owner is None:
                # The original arrives after its null compensation: it takes the id, rejected.
                self.dedup[dedup_id] = (command, outcome)
                return outcome
            if owner == command:
                return outcome
            return Outcome("DEDUP_ID_REUSED")  # not stored: the id stays the first command's
        if not (isinstance(dedup_id, str) and 1 <= len(dedup_id) <= ID_LENGTH_MAX):
            return Outcome("INVALID_REQUEST")  # not stored: a malformed id cannot be "used up"
        try:
            outcome = self._handle(command)
        except Rejected as rejection:
            outcome = Outcome(rejection.code)
        self.dedup[dedup_id] = (command, outcome)
        return outcome

    def _handle(self, command: Command) -> Outcome:
        if isinstance(command, CreateAccount):
            return self._create_account(command)
        if isinstance(command, UpdateLimits):
            return self._update_limits(command)
        if isinstance(command, LockAccount):
            return self._change_state(command.dedup_id, command.account_id, NORMAL, LOCKED, "account_locked")
        if isinstance(command, UnlockAccount):
            return self._change_state(command.dedup_id, command.account_id, LOCKED, NORMAL, "account_unlocked")
        if isinstance(command, DeleteAccount):
            return self._delete_account(command)
        if isinstance(command, Transfer):
            return self._transfer(command)
        if isinstance(command, BatchBalanceOperation):
            return self._batch_operation(command)
        if isinstance(command, Reserve):
            return self._reserve(command)
        if isinstance(command, Release):
            return self._release(command)
        if isinstance(command, TccTry):
            return self._tcc_try(command)
        if isinstance(command, TccConfirm):
            return self._tcc_confirm(command)
        if isinstance(command, TccCancel):
            return self._tcc_cancel(command)
        if isinstance(command, Compensate):
            return self._compensate(command)
        if isinstance(command, SetVelocityLimits):
            return self._set_velocity_limits(command)
        raise AssertionError(f"the model does not know {type(command).__name__}")

    # ------------------------------------------------------------------ helpers

    def _emit(self, dedup_id: str | None, event_type: str, changed: list[str]) -> int:
        self.seq += 1
        views = {account_id: self.accounts[account_id].view() for account_id in changed}
        self.events.append(ModelEvent(self.seq, dedup_id, event_type, views))
        return self.seq

    def _ok(self, dedup_id: str, event_type: str, changed: list[str], compensation: str | None = None) -> Outcome:
        return Outcome(OK, self._emit(dedup_id, event_type, changed), compensation)

    def _must_exist(self, account_id: str) -> ModelAccount:
        if account_id not in self.accounts:
            raise Rejected("ACCOUNT_NOT_FOUND")
        return self.accounts[account_id]

    def _must_not_be_deleted(self, account: ModelAccount) -> None:
        if account.state == DELETED:
            raise Rejected("ACCOUNT_DELETED")

    def _must_be_normal(self, account: ModelAccount) -> None:
        """Balance operations need a NORMAL account."""
        self._must_not_be_deleted(account)
        if account.state == LOCKED:
            raise Rejected("ACCOUNT_LOCKED")

    def _must_be_open_for_balances(self, account_id: str, asset: str | None) -> ModelAccount:
        """Step 3 for one account a balance operation touches: exists, state, asset."""
        account = self._must_exist(account_id)
        self._must_be_normal(account)
        if asset is not None and account.asset != asset:
            raise Rejected("ASSET_MISMATCH")
        return account

    @staticmethod
    def _check_limits(account: ModelAccount, available_after: int, total_after: int) -> None:
        """Step 5 for one account: the state after the operation must be within its limits."""
        if available_after < account.lower:
            raise Rejected("LOWER_LIMIT_EXCEEDED")
        if account.upper is not None and total_after > account.upper:
            raise Rejected("UPPER_LIMIT_EXCEEDED")
        if total_after > AMOUNT_MAX:  # no limit of the account's own: the ledger's bound
            raise Rejected("BALANCE_OUT_OF_RANGE")

    def _check_net_limits(self, net: dict[str, int]) -> None:
        """Limits for a change of ``available`` by ``net`` per account (nothing else moves)."""
        for account_id, delta in net.items():
            account = self.accounts[account_id]
            self._check_limits(account, account.available + delta, account.total() + delta)

    def _velocity_used(self, account_id: str) -> tuple[int, int, int, int]:
        """(money, debits) counted in the current UTC hour, then in the current UTC day."""
        hour = [amount for time_ms, amount, _ in self.debits.get(account_id, []) if time_ms // HOUR_MS == self.clock_ms // HOUR_MS]
        day = [amount for time_ms, amount, _ in self.debits.get(account_id, []) if time_ms // DAY_MS == self.clock_ms // DAY_MS]
        return sum(hour), len(hour), sum(day), len(day)

    def _check_and_count_debits(self, debits: dict[str, int], txn_id: str | None = None) -> None:
        """Step 6: every debited account with caps must stay within them; then count them all."""
        for account_id, amount in debits.items():
            if account_id not in self.caps:
                continue
            per_hour, per_day, count_hour, count_day = self.caps[account_id]
            hour_amount, hour_count, day_amount, day_count = self._velocity_used(account_id)
            if per_hour is not None and hour_amount + amount > per_hour:
                raise Rejected("VELOCITY_LIMIT_EXCEEDED")
            if per_day is not None and day_amount + amount > per_day:
                raise Rejected("VELOCITY_LIMIT_EXCEEDED")
            if count_hour is not None and hour_count + 1 > count_hour:
                raise Rejected("VELOCITY_LIMIT_EXCEEDED")
            if count_day is not None and day_count + 1 > count_day:
                raise Rejected("VELOCITY_LIMIT_EXCEEDED")
        for account_id, amount in debits.items():
            if account_id in self.caps:
                self.debits.setdefault(account_id, []).append((self.clock_ms, amount, txn_id))

    def _set_velocity_limits(self, command: SetVelocityLimits) -> Outcome:
        for cap in (command.amount_per_hour, command.amount_per_day):
            if cap is not None and (cap <= 0 or cap > AMOUNT_MAX):
                raise Rejected("INVALID_AMOUNT")
        for count in (command.debits_per_hour, command.debits_per_day):
            if count is not None and not 1 <= count <= DEBITS_MAX:
                raise Rejected("INVALID_REQUEST")
        account = self._must_exist(command.account_id)
        self._must_not_be_deleted(account)
        caps = (command.amount_per_hour, command.amount_per_day, command.debits_per_hour, command.debits_per_day)
        if caps == (None, None, None, None):
            self.caps.pop(command.account_id, None)
            self.debits.pop(command.account_id, None)
        else:
            self.caps[command.account_id] = caps
        account.version += 1
        return self._ok(command.dedup_id, "velocity_limits_set", [command.account_id])

    def _commit_net(self, net: dict[str, int]) -> list[str]:
        for account_id, delta in net.items():
            self.accounts[account_id].available += delta
            self.accounts[account_id].version += 1
        return list(net)

    # ------------------------------------------------------------------ accounts

    def _create_account(self, command: CreateAccount) -> Outcome:
        if _out_of_range(command.lower_limit, command.upper_limit):
            raise Rejected("INVALID_AMOUNT")
        if not _valid_id(command.account_id):
            raise Rejected("INVALID_REQUEST")
        if not _valid_id(command.asset, ASSET_LENGTH_MAX):
            raise Rejected("INVALID_REQUEST")
        if not 0 <= command.scale <= SCALE_MAX:
            raise Rejected("INVALID_REQUEST")
        if not _valid_metadata(command.metadata):
            raise Rejected("INVALID_REQUEST")
        if command.account_id in self.accounts:  # a deleted account keeps its id forever
            raise Rejected("ACCOUNT_EXISTS")
        if command.asset in self.asset_scales and self.asset_scales[command.asset] != command.scale:
            raise Rejected("ASSET_MISMATCH")  # an asset has one fixed scale
        # A new account holds 0: the limits must admit 0.
        if command.lower_limit > 0:
            raise Rejected("LOWER_LIMIT_EXCEEDED")
        if command.upper_limit is not None and command.upper_limit < 0:
            raise Rejected("UPPER_LIMIT_EXCEEDED")
        self.accounts[command.account_id] = ModelAccount(
            asset=command.asset,
            scale=command.scale,
            state=NORMAL,
            lower=command.lower_limit,
            upper=command.upper_limit,
            available=0,
            reservations={},
            pending_in={},
            pending_out={},
            version=1,
            metadata=dict(command.metadata or {}),
        )
        self.asset_scales.setdefault(command.asset, command.scale)
        return self._ok(command.dedup_id, "account_created", [command.account_id])

    def _update_limits(self, command: UpdateLimits) -> Outcome:
        if _out_of_range(command.lower_limit, command.upper_limit):
            raise Rejected("INVALID_AMOUNT")
        account = self._must_exist(command.account_id)
        self._must_not_be_deleted(account)
        # An absent lower limit keeps the current one; an absent upper limit removes it, unless
        # the command says to keep it (the API's "field absent" as opposed to "null").
        lower = account.lower if command.lower_limit is None else command.lower_limit
        upper = account.upper if command.keep_upper_limit else command.upper_limit
        self._check_limits_of_new_bounds(account, lower, upper)
        account.lower = lower
        account.upper = upper
        account.version += 1
        return self._ok(command.dedup_id, "limits_updated", [command.account_id])

    @staticmethod
    def _check_limits_of_new_bounds(account: ModelAccount, lower: int, upper: int | None) -> None:
        if account.available < lower:
            raise Rejected("LOWER_LIMIT_EXCEEDED")
        if upper is not None and account.total() > upper:
            raise Rejected("UPPER_LIMIT_EXCEEDED")

    def _change_state(self, dedup_id: str, account_id: str, source: str, target: str, event_type: str) -> Outcome:
        account = self._must_exist(account_id)
        self._must_not_be_deleted(account)
        if account.state != source:
            raise Rejected("INVALID_STATE_TRANSITION")
        account.state = target
        account.version += 1
        return self._ok(dedup_id, event_type, [account_id])

    def _delete_account(self, command: DeleteAccount) -> Outcome:
        account = self._must_exist(command.account_id)
        self._must_not_be_deleted(account)
        if account.available != 0 or account.reservations or account.pending_in or account.pending_out:
            raise Rejected("ACCOUNT_NOT_EMPTY")
        account.state = DELETED
        account.version += 1
        return self._ok(command.dedup_id, "account_deleted", [command.account_id])

    # ------------------------------------------------------------------ balances

    def _transfer(self, command: Transfer) -> Outcome:
        if command.amount <= 0:
            raise Rejected("INVALID_AMOUNT")
        if _out_of_range(command.amount, command.expected_from_balance, command.expected_to_balance):
            raise Rejected("INVALID_AMOUNT")
        if command.from_account_id == command.to_account_id:
            raise Rejected("SAME_ACCOUNT")
        source = self._must_be_open_for_balances(command.from_account_id, command.asset)
        target = self._must_be_open_for_balances(command.to_account_id, command.asset)
        if command.expected_from_balance is not None and source.available != command.expected_from_balance:
            raise Rejected("PRECONDITION_FAILED")
        if command.expected_to_balance is not None and target.available != command.expected_to_balance:
            raise Rejected("PRECONDITION_FAILED")
        net = {command.from_account_id: -command.amount, command.to_account_id: command.amount}
        self._check_net_limits(net)
        self._check_and_count_debits({command.from_account_id: command.amount})
        changed = self._commit_net(net)
        return self._ok(command.dedup_id, "transferred", changed)

    def _batch_operation(self, command: BatchBalanceOperation) -> Outcome:
        for leg in command.legs:
            if leg.amount == 0 or _out_of_range(leg.amount):
                raise Rejected("INVALID_AMOUNT")
        if not 1 <= len(command.legs) <= LEGS_MAX:
            raise Rejected("INVALID_REQUEST")
        if len(command.preconditions) > LEGS_MAX:
            raise Rejected("INVALID_REQUEST")
        for condition in command.preconditions:
            if _out_of_range(condition.expected_balance, condition.min_balance, condition.max_balance, condition.expected_version):
                raise Rejected("INVALID_AMOUNT")
        for leg in command.legs:
            self._must_be_open_for_balances(leg.account_id, leg.asset)
        for condition in command.preconditions:
            self._must_exist(condition.account_id)
        for condition in command.preconditions:
            account = self.accounts[condition.account_id]
            if condition.expected_balance is not None and account.available != condition.expected_balance:
                raise Rejected("PRECONDITION_FAILED")
            if condition.min_balance is not None and account.available < condition.min_balance:
                raise Rejected("PRECONDITION_FAILED")
            if condition.max_balance is not None and account.available > condition.max_balance:
                raise Rejected("PRECONDITION_FAILED")
            if condition.expected_version is not None and account.version != condition.expected_version:
                raise Rejected("PRECONDITION_FAILED")
        # All or nothing, judged on the net change per account, not leg by leg.
        net = _first_seen_order([(leg.account_id, leg.amount) for leg in command.legs])
        self._check_net_limits(net)
        self._check_and_count_debits({account_id: -delta for account_id, delta in net.items() if delta < 0})
        changed = self._commit_net(net)
        return self._ok(command.dedup_id, "balances_changed", changed)

    def _reserve(self, command: Reserve) -> Outcome:
        if command.amount <= 0 or command.amount > AMOUNT_MAX:
            raise Rejected("INVALID_AMOUNT")
        if not _valid_id(command.reservation_id):
            raise Rejected("INVALID_REQUEST")
        account = self._must_be_open_for_balances(command.account_id, None)
        # available -> reservations: the total the upper limit bounds does not change.
        self._check_limits(account, account.available - command.amount, account.total())
        account.available -= command.amount
        account.reservations[command.reservation_id] = account.reservations.get(command.reservation_id, 0) + command.amount
        account.version += 1
        return self._ok(command.dedup_id, "reserved", [command.account_id])

    def _release(self, command: Release) -> Outcome:
        if command.amount is not None and (command.amount <= 0 or command.amount > AMOUNT_MAX):
            raise Rejected("INVALID_AMOUNT")
        account = self._must_be_open_for_balances(command.account_id, None)
        self._take_from_reservation(account, command.reservation_id, command.amount)
        account.version += 1
        return self._ok(command.dedup_id, "released", [command.account_id])

    def _take_from_reservation(self, account: ModelAccount, reservation_id: str, amount: int | None) -> None:
        if reservation_id not in account.reservations:
            raise Rejected("RESERVATION_NOT_FOUND")
        reserved = account.reservations[reservation_id]
        if amount is None:
            amount = reserved
        if amount > reserved:
            raise Rejected("INSUFFICIENT_RESERVATION")
        # reservations -> available: available only grows and the total stays, so limits hold.
        self._check_limits(account, account.available + amount, account.total())
        account.reservations[reservation_id] = reserved - amount
        if account.reservations[reservation_id] == 0:
            del account.reservations[reservation_id]
        account.available += amount

    # ------------------------------------------------------------------ two-phase (TCC)

    def _tcc_try(self, command: TccTry) -> Outcome:
        for leg in command.legs:
            if leg.amount == 0 or _out_of_range(leg.amount):
                raise Rejected("INVALID_AMOUNT")
        if not _valid_id(command.txn_id):
            raise Rejected("INVALID_REQUEST")
        if command.timeout_s is not None and not 1 <= command.timeout_s <= TIMEOUT_S_MAX:
            raise Rejected("INVALID_REQUEST")
        if not 1 <= len(command.legs) <= LEGS_MAX:
            raise Rejected("INVALID_REQUEST")
        for leg in command.legs:
            self._must_be_open_for_balances(leg.account_id, leg.asset)
        if command.txn_id in self.txns:  # confirmed and cancelled ones too: a txn_id is used once
            raise Rejected("TXN_EXISTS")
        holds: dict[str, list[int]] = {}
        for leg in command.legs:
            out_and_in = holds.setdefault(leg.account_id, [0, 0])
            if leg.amount < 0:
                out_and_in[0] += -leg.amount
            else:
                out_and_in[1] += leg.amount
        for account_id, (amount_out, amount_in) in holds.items():
            account = self.accounts[account_id]
            # available -> pending_out keeps the total; pending_in adds to it.
            self._check_limits(account, account.available - amount_out, account.total() + amount_in)
        self._check_and_count_debits({account_id: out for account_id, (out, _) in holds.items() if out}, command.txn_id)
        for account_id, (amount_out, amount_in) in holds.items():
            account = self.accounts[account_id]
            if amount_out:
                account.available -= amount_out
                account.pending_out[command.txn_id] = amount_out
            if amount_in:
                account.pending_in[command.txn_id] = amount_in
            account.version += 1
        deadline_ms = None if command.timeout_s is None else self.clock_ms + 1000 * command.timeout_s
        self.txns[command.txn_id] = ModelTxn(TRIED, holds, deadline_ms)
        return self._ok(command.dedup_id, "tcc_tried", list(holds))

    def _tcc_confirm(self, command: TccConfirm) -> Outcome:
        if command.txn_id not in self.txns:
            raise Rejected("TXN_NOT_FOUND")
        txn = self.txns[command.txn_id]
        if txn.state == CANCELLED:
            raise Rejected("TXN_ALREADY_CANCELLED")
        if txn.state == CONFIRMED:
            return self._ok(command.dedup_id, "tcc_confirmed", [])  # a second confirm changes nothing
        # Phase two always finishes: no state or limit check (locked accounts included).
        for account_id, (amount_out, amount_in) in txn.holds.items():
            account = self.accounts[account_id]
            if amount_out:
                del account.pending_out[command.txn_id]  # leaves the ledger
            if amount_in:
                del account.pending_in[command.txn_id]
                account.available += amount_in  # enters the ledger
            account.version += 1
        txn.state = CONFIRMED
        return self._ok(command.dedup_id, "tcc_confirmed", list(txn.holds))

    def _tcc_cancel(self, command: TccCancel) -> Outcome:
        if command.txn_id not in self.txns:
            raise Rejected("TXN_NOT_FOUND")
        txn = self.txns[command.txn_id]
        if txn.state == CONFIRMED:
            raise Rejected("TXN_ALREADY_CONFIRMED")
        if txn.state == CANCELLED:
            return self._ok(command.dedup_id, "tcc_cancelled", [])  # a second cancel changes nothing
        changed = self._cancel_holds(command.txn_id)
        return self._ok(command.dedup_id, "tcc_cancelled", changed)

    def _cancel_holds(self, txn_id: str) -> list[str]:
        txn = self.txns[txn_id]
        for account_id in self.debits:  # the hold never left: strike its debit off
            self.debits[account_id] = [debit for debit in self.debits[account_id] if debit[2] != txn_id]
        for account_id, (amount_out, amount_in) in txn.holds.items():
            account = self.accounts[account_id]
            if amount_out:
                del account.pending_out[txn_id]
                account.available += amount_out
            if amount_in:
                del account.pending_in[txn_id]
            account.version += 1
        txn.state = CANCELLED
        return list(txn.holds)

    # ------------------------------------------------------------------ saga compensation

    def _compensate(self, command: Compensate) -> Outcome:
        original_id = command.original_dedup_id
        if not (isinstance(original_id, str) and 1 <= len(original_id) <= ID_LENGTH_MAX):
            raise Rejected("INVALID_REQUEST")
        if original_id == command.dedup_id:
            raise Rejected("INVALID_REQUEST")
        if original_id in self.compensated:
            raise Rejected("ALREADY_COMPENSATED")
        if original_id not in self.dedup:
            # Never seen: a null compensation; the original, if it ever comes, is rejected.
            self.dedup[original_id] = (None, Outcome("ALREADY_COMPENSATED"))
            self.compensated.add(original_id)
            return self._ok(command.dedup_id, "null_compensated", [], NULL_COMPENSATED)
        original, original_outcome = self.dedup[original_id]
        if original_outcome.code != OK:
            # Seen but rejected: it moved nothing, there is nothing to undo.
            self.compensated.add(original_id)
            return self._ok(command.dedup_id, "null_compensated", [], NULL_COMPENSATED)
        if isinstance(original, Transfer):
            changed = self._undo_net({original.from_account_id: original.amount, original.to_account_id: -original.amount})
        elif isinstance(original, BatchBalanceOperation):
            changed = self._undo_net(_first_seen_order([(leg.account_id, -leg.amount) for leg in original.legs]))
        elif isinstance(original, Reserve):
            account = self.accounts[original.account_id]
            self._must_be_normal(account)
            self._take_from_reservation(account, original.reservation_id, original.amount)
            account.version += 1
            changed = [original.account_id]
        else:
            raise Rejected("ORIGINAL_NOT_COMPENSABLE")
        self.compensated.add(original_id)
        return self._ok(command.dedup_id, "compensated", changed, COMPENSATED)

    def _undo_net(self, net: dict[str, int]) -> list[str]:
        for account_id in net:
            self._must_be_normal(self.accounts[account_id])  # an account is never removed
        self._check_net_limits(net)
        return self._commit_net(net)
