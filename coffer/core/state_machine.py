"""The ledger's state machine: log entries in, one result per command and hash-chained events out.

Pure and deterministic: no I/O, no clock, no randomness, no threads. The log entry brings its
index and its time; every replica that applies the same entries reaches the same state, byte for
byte (see :mod:`coffer.core.snapshot`).

Method. Each command first checks everything it needs, in a fixed order, and mutates state only
when every check has passed; a rejection therefore changes nothing but the dedup store. Check
order (the first failing check decides the code):

1. the ``dedup_id``: a retry with the same payload returns the stored outcome, another payload
   gets ``DEDUP_ID_REUSED`` (not stored: the id belongs to the first command); an original that
   arrives after its (null) compensation gets ``ALREADY_COMPENSATED``;
2. the command's own shape (positive or non-zero amounts: ``INVALID_AMOUNT``; ids, scale,
   sizes: ``INVALID_REQUEST``);
3. per account, in the order the command names them: exists, state (``ACCOUNT_DELETED``,
   ``ACCOUNT_LOCKED``), asset;
4. conditions (``PRECONDITION_FAILED``), reservation and transaction lookups;
5. limits, per account in the order the command names them: lower first, then upper;
6. velocity caps (``velocity.py``) of the accounts a transfer, batch operation or TCC try debits,
   in the order the command names them (``VELOCITY_LIMIT_EXCEEDED``); only then are they counted.

Flows of the access layer (``PutFlow``, ``StartFlowRun``, ``FinishFlowRun``) are kept here as
opaque bytes, so that every replica, snapshot and the event history agree on them; the core checks
their names, sizes and versions, and never reads a definition.

Before the commands of an entry run, every TCC try whose deadline is at or before the entry's
time is cancelled (event ``tcc_expired``), in (deadline, txn_id) order. An entry may hold no
command at all: it then only moves the ledger's clock, which is how a deadline takes effect on a
quiet ledger.

Protocol versions. The rules are versioned as a whole: every log entry says which protocol its
writer ran, the ledger's protocol is the highest it has applied so far (part of the replicated
state), and each entry is judged by the ledger's protocol. History written under an older protocol
therefore replays to the very same events, and a replica that meets a protocol newer than
``protocol_version_max`` refuses it instead of guessing.

- Protocol 1: amounts and balances within a signed 64-bit integer; a balance that would pass that
  bound on an account without an upper limit was rejected as ``UPPER_LIMIT_EXCEEDED``; events in
  format 1 (no actor).
- Protocol 2: amounts and balances below 2^127 minor units; a balance beyond it is rejected as
  ``BALANCE_OUT_OF_RANGE``; events in format 2 (with the actor who sent the command).

Amounts as text. A command may carry an amount as decimal text when the node that took it did not
know the scale (see ``commands.py``). Before its handler runs, such a command is resolved with the
scale known at this log position: the asset's scale for transfers and legs, the account's for the
rest. Text with more decimals than that scale is ``INVALID_AMOUNT``. When no scale is known (the
asset or account does not exist), the handler runs with a stand-in amount of 1 and rejects the
command at step 3, as it would any command naming a missing account. The dedup store keeps the
command as sent; a retry is the same payload when both resolve to the same amounts.
"""

import heapq
import re
from collections.abc import Callable, Sequence
from hashlib import sha256
from typing import Any

import msgspec

from coffer.core.accounts import (
    OK,
    Account,
    AccountState,
    Compensation,
    Decision,
    DedupRecord,
    Effect,
    FlowRun,
    FlowVersion,
    Result,
    Txn,
    TxnLeg,
    TxnState,
)
from coffer.core.amounts import AmountError, amount_max, amount_max_protocol_1, parse_amount, scale_max
from coffer.core.commands import (
    Amount,
    BatchBalanceOperation,
    Command,
    Compensate,
    CreateAccount,
    Decide,
    DeleteAccount,
    FinishFlowRun,
    Leg,
    LockAccount,
    Precondition,
    PutFlow,
    Release,
    Reserve,
    SetVelocityLimits,
    StartFlowRun,
    TccCancel,
    TccConfirm,
    TccTry,
    Transfer,
    UnlockAccount,
    UpdateLimits,
    asset_length_max,
    flow_definition_bytes_max,
    flow_name_length_max,
    flow_outcome_bytes_max,
    flow_params_bytes_max,
    id_length_max,
    legs_max,
    metadata_key_length_max,
    metadata_keys_max,
    metadata_value_length_max,
    timeout_s_max,
    to_format_1,
)
from coffer.core.encoding import encode as _encode
from coffer.core.encoding import encode_plain as _encode_plain
from coffer.core.errors import ErrorCode
from coffer.core.events import Actor, EventRecord, EventType, genesis_hash
from coffer.core.velocity import Velocity, VelocityHold, VelocityLimits, debits_max, exceeded, give_back, record

_id_pattern = re.compile(r"[A-Za-z0-9._:-]+")

_NORMAL = AccountState.NORMAL.value
_LOCKED = AccountState.LOCKED.value
_DELETED = AccountState.DELETED.value
_TRIED = TxnState.TRIED.value
_CONFIRMED = TxnState.CONFIRMED.value
_CANCELLED = TxnState.CANCELLED.value
_TRANSFERRED = EventType.TRANSFERRED.value

protocol_version_max = 2  # the newest protocol this release applies (see the module docstring)
# The effects of the newest accepted commands are kept in two generations of this many each (an
# effect holds copies of a transfer's two accounts: about 350 bytes), so that a retry of any of the
# newest 100,000 to 200,000 is answered from the state; an older one, from its event, which the
# event store holds by then (it lags the state by at most ``store_backlog_events_max`` events).
# At least the commands of one entry, so that an entry's own effects are all still there after it.
effects_generation_max = 100_000
_amount_max_by_protocol = {1: amount_max_protocol_1, 2: amount_max}


class ProtocolVersionError(RuntimeError):
    """The log holds an entry of a protocol newer than this release understands."""


def _is_text(value: object) -> bool:
    return value.__class__ is str


# Per command type that may carry amounts as text: whether this one does (kept cheap: the hot path).
_text_checks: dict[type, Callable[[Any], bool]] = {
    Transfer: lambda c: c.amount.__class__ is str or _is_text(c.expected_from_balance) or _is_text(c.expected_to_balance),
    BatchBalanceOperation: lambda c: any(leg.amount.__class__ is str for leg in c.legs)
    or any(_is_text(p.expected_balance) or _is_text(p.min_balance) or _is_text(p.max_balance) for p in c.preconditions),
    TccTry: lambda c: any(leg.amount.__class__ is str for leg in c.legs)
    or any(_is_text(p.expected_balance) or _is_text(p.min_balance) or _is_text(p.max_balance) for p in c.preconditions),
    Reserve: lambda c: c.amount.__class__ is str,
    Release: lambda c: _is_text(c.amount),
    UpdateLimits: lambda c: _is_text(c.lower_limit) or _is_text(c.upper_limit),
    SetVelocityLimits: lambda c: _is_text(c.amount_per_hour) or _is_text(c.amount_per_day),
}

# Transfers check inside their handler, the hot path, without the extra call.
_text_checks_before_handler = {kind: check for kind, check in _text_checks.items() if kind is not Transfer}


def _reject(code: ErrorCode, message: str, account_id: str | None = None) -> Result:
    return Result(code.value, 0, message, account_id)


def _valid_id(value: object, length_max: int = id_length_max) -> bool:
    return isinstance(value, str) and 0 < len(value) <= length_max and _id_pattern.fullmatch(value) is not None


def _valid_metadata(metadata: object) -> bool:
    if metadata is None:
        return True
    if not isinstance(metadata, dict) or len(metadata) > metadata_keys_max:
        return False
    return all(
        isinstance(key, str)
        and isinstance(value, str)
        and 0 < len(key) <= metadata_key_length_max
        and len(value) <= metadata_value_length_max
        for key, value in metadata.items()
    )


def _out_of_range(bound: int, *amounts: int | None) -> bool:
    """An amount beyond the protocol's bound (``bound`` in magnitude)."""
    return any(amount is not None and not -bound <= amount <= bound for amount in amounts)


def _too_large(bound: int, account_id: str | None) -> Result:
    return _reject(ErrorCode.INVALID_AMOUNT, f"an amount is beyond {bound} minor units", account_id)


def _without(values: dict[str, int], key: str) -> dict[str, int]:
    """A copy of ``values`` without ``key``: an account's maps are replaced, never changed in
    place, so the copies of it that effects keep stay as they were."""
    copy = dict(values)
    del copy[key]
    return copy


def _state_error(account: Account) -> Result:
    if account.state == _DELETED:
        return _reject(ErrorCode.ACCOUNT_DELETED, f"account {account.account_id} is deleted", account.account_id)
    return _reject(ErrorCode.ACCOUNT_LOCKED, f"account {account.account_id} is locked", account.account_id)


def _check_leg_amounts(legs: tuple[Leg, ...], bound: int) -> Result | None:
    """Step 2 for legs, amounts first: each non-zero and in range."""
    for leg in legs:
        if leg.amount == 0:
            return _reject(ErrorCode.INVALID_AMOUNT, "a leg's amount must not be zero", leg.account_id)
        if _out_of_range(bound, leg.amount):
            return _too_large(bound, leg.account_id)
    return None


def _check_leg_count(legs: tuple[Leg, ...]) -> Result | None:
    if not legs or len(legs) > legs_max:
        return _reject(ErrorCode.INVALID_REQUEST, f"a command needs 1 to {legs_max} legs")
    return None


class StateMachine:
    """One shard's ledger. ``apply`` is the only way to change it."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.asset_scales: dict[str, int] = {}
        self.dedup: dict[str, DedupRecord] = {}
        self.txns: dict[str, Txn] = {}
        # original dedup_id -> dedup_id of the compensation that undid it (or pre-empted it)
        self.compensations: dict[str, str] = {}
        self.decisions: dict[str, Decision] = {}  # txn_id -> the decision of a cross-shard transaction
        self.velocity: dict[str, Velocity] = {}  # account_id -> caps and usage (accounts with caps only)
        self.velocity_holds: dict[str, tuple[VelocityHold, ...]] = {}  # txn_id -> debits its try counted
        self.flows: dict[str, list[FlowVersion]] = {}  # flow name -> its versions, 1, 2, ...
        self.flow_runs: dict[str, FlowRun] = {}  # run id (its StartFlowRun's dedup_id) -> the run
        # Derived (not part of the replicated state, rebuilt on restore): the tries still open, in
        # the order they were tried, so the transaction layer finds transactions in doubt cheaply.
        self.open_txns: dict[str, None] = {}
        self.open_flow_runs: dict[str, None] = {}  # runs started and not finished, oldest first
        self.expiries: list[tuple[int, str]] = []  # heap of (deadline_ms, txn_id) of TCC tries
        self.log_index = 0
        self.time_ms = 0
        self.seq = 0
        self.head = genesis_hash
        # 0 until the first entry: a new ledger takes the protocol of its first entry.
        self.protocol_version = 0
        self.amount_max = amount_max
        self._actor: Actor | None = None
        self._events: list[EventRecord] = []
        # dedup_id -> what the accepted command did (see effect_of), in two generations: new effects
        # go into the newer; when it is full, it becomes the older and the older is dropped whole.
        # Part of the replicated state (snapshots keep both), so every replica answers alike.
        self.effects: dict[str, Effect] = {}
        self.effects_older: dict[str, Effect] = {}
        self._handlers = {
            CreateAccount: self._create_account,
            UpdateLimits: self._update_limits,
            LockAccount: self._lock_account,
            UnlockAccount: self._unlock_account,
            DeleteAccount: self._delete_account,
            Transfer: self._transfer,
            BatchBalanceOperation: self._batch_operation,
            Reserve: self._reserve,
            Release: self._release,
            TccTry: self._tcc_try,
            TccConfirm: self._tcc_confirm,
            TccCancel: self._tcc_cancel,
            Compensate: self._compensate,
            Decide: self._decide,
            SetVelocityLimits: self._set_velocity_limits,
            PutFlow: self._put_flow,
            StartFlowRun: self._start_flow_run,
            FinishFlowRun: self._finish_flow_run,
        }

    # ------------------------------------------------------------------ entry point

    def apply(
        self,
        log_index: int,
        time_ms: int,
        commands: Sequence[Command],
        actors: Sequence[Actor | None] | None = None,
        protocol_version: int = protocol_version_max,
    ) -> tuple[list[Result], list[EventRecord]]:
        """Apply one log entry; return one result per command and the events, in order.

        ``actors`` (one per command, or ``None`` for none at all) say who sent each command; the
        events of protocol 2 record it. ``protocol_version`` is the protocol the entry's writer ran.
        """
        assert log_index > self.log_index, f"log index {log_index} after {self.log_index}"
        assert actors is None or len(actors) == len(commands), "one actor per command"
        if protocol_version > self.protocol_version:
            self.upgrade(protocol_version)
        self.log_index = log_index
        # Log time may step back when the log's leader changes; the ledger's clock never does.
        if time_ms > self.time_ms:
            self.time_ms = time_ms
        events: list[EventRecord] = []
        self._events = events
        if self.expiries and self.expiries[0][0] <= self.time_ms:
            self._expire_tries()
        handlers = self._handlers
        dedup = self.dedup
        results: list[Result] = []
        append = results.append
        for position, command in enumerate(commands):
            self._actor = actors[position] if actors is not None else None
            dedup_id = command.dedup_id
            record = dedup.get(dedup_id)
            if record is not None:
                append(self._replay(record, command))
                continue
            if not isinstance(dedup_id, str) or not 0 < len(dedup_id) <= id_length_max:
                append(_reject(ErrorCode.INVALID_REQUEST, "dedup_id must be 1 to 128 characters"))
                continue
            kind = type(command)
            check = _text_checks_before_handler.get(kind)
            if check is not None and check(command):
                resolved = self._resolve(command)
                result = resolved if isinstance(resolved, Result) else handlers[kind](resolved)
            else:
                result = handlers[kind](command)
            dedup[dedup_id] = DedupRecord(command, result)
            append(result)
        self._actor = None
        return results, events

    def apply_with_effects(
        self,
        log_index: int,
        time_ms: int,
        commands: Sequence[Command],
        actors: Sequence[Actor | None] | None = None,
        protocol_version: int = protocol_version_max,
    ) -> tuple[list[Result], list[EventRecord], list[Effect | None]]:
        """:meth:`apply`, and per command what it did (:meth:`effect_of`): the answer to it, with
        no event to decode. Only a caller that answers pays for the list."""
        results, events = self.apply(log_index, time_ms, commands, actors, protocol_version)
        effect_of = self.effect_of
        effects = [effect_of(command.dedup_id) if result.code == OK else None for command, result in zip(commands, results, strict=True)]
        return results, events, effects

    def effect_of(self, dedup_id: str) -> Effect | None:
        """What the accepted command ``dedup_id`` did — its entry's log index and its event's
        accounts right after the change — while it is among the newest kept; else ``None``
        (older, or an accepted command that emitted no event of its own: its event tells)."""
        effect = self.effects.get(dedup_id)
        return effect if effect is not None else self.effects_older.get(dedup_id)

    def _keep_effect(self, dedup_id: str, accounts: tuple[Account, ...]) -> None:
        effects = self.effects
        if len(effects) >= effects_generation_max:
            self.effects_older = effects
            self.effects = effects = {}
        effects[dedup_id] = Effect(self.log_index, accounts)

    # ------------------------------------------------------------------ amounts as text

    def _scale_of_asset(self, asset: str) -> int | None:
        return self.asset_scales.get(asset)

    def _scale_of_account(self, account_id: str) -> int | None:
        account = self.accounts.get(account_id)
        return None if account is None else account.scale

    def _resolve(self, command: Command) -> Command | Result:
        """``command`` with its text amounts as integers of the scale known now (module docstring)."""
        failure: list[Result] = []

        def amount(value: Amount | None, scale: int | None, account_id: str | None) -> Amount | None:
            if value.__class__ is not str:
                return value
            if scale is None:
                return 1  # a stand-in: the handler rejects the command at step 3 (nothing holds the scale)
            try:
                return parse_amount(value, scale, signed=True)
            except AmountError as error:
                if not failure:
                    failure.append(_reject(ErrorCode.INVALID_AMOUNT, str(error), account_id))
                return 1

        replace = msgspec.structs.replace
        resolved: Command
        if isinstance(command, Transfer):
            scale = self._scale_of_asset(command.asset)
            account_id = command.from_account_id
            resolved = replace(
                command,
                amount=amount(command.amount, scale, account_id),
                expected_from_balance=amount(command.expected_from_balance, scale, account_id),
                expected_to_balance=amount(command.expected_to_balance, scale, command.to_account_id),
            )
        elif isinstance(command, BatchBalanceOperation | TccTry):
            legs = tuple(
                replace(leg, amount=amount(leg.amount, self._scale_of_asset(leg.asset), leg.account_id)) for leg in command.legs
            )
            # A try's preconditions are a batch operation's (a cross-shard batch carries them on its tries).
            conditions = []
            for condition in command.preconditions:
                scale = self._scale_of_account(condition.account_id)
                conditions.append(
                    replace(
                        condition,
                        expected_balance=amount(condition.expected_balance, scale, condition.account_id),
                        min_balance=amount(condition.min_balance, scale, condition.account_id),
                        max_balance=amount(condition.max_balance, scale, condition.account_id),
                    )
                )
            resolved = replace(command, legs=legs, preconditions=tuple(conditions))
        elif isinstance(command, Reserve | Release):
            resolved = replace(command, amount=amount(command.amount, self._scale_of_account(command.account_id), command.account_id))
        elif isinstance(command, SetVelocityLimits):
            scale = self._scale_of_account(command.account_id)
            resolved = replace(
                command,
                amount_per_hour=amount(command.amount_per_hour, scale, command.account_id),
                amount_per_day=amount(command.amount_per_day, scale, command.account_id),
            )
        else:
            assert isinstance(command, UpdateLimits), type(command)
            scale = self._scale_of_account(command.account_id)
            resolved = replace(
                command,
                lower_limit=amount(command.lower_limit, scale, command.account_id),
                upper_limit=amount(command.upper_limit, scale, command.account_id),
            )
        return failure[0] if failure else resolved

    def _same_payload(self, stored: Command, command: Command) -> bool:
        """Whether a retry with other spellings of its amounts is the command stored for its id."""
        if type(stored) is not type(command):
            return False
        checks = _text_checks.get(type(command))
        if checks is None or not (checks(stored) or checks(command)):
            return False
        return self._spelled_alike(stored) == self._spelled_alike(command)

    def _spelled_alike(self, command: Command) -> Command:
        """Text amounts as integers where a scale is known, else at the widest scale (a stable form)."""

        def amount(value: Amount | None, scale: int | None) -> Amount | None:
            if value.__class__ is not str:
                return value
            try:
                return parse_amount(value, scale_max if scale is None else scale, signed=True)
            except AmountError:
                return value

        replace = msgspec.structs.replace
        if isinstance(command, Transfer):
            scale = self._scale_of_asset(command.asset)
            return replace(
                command,
                amount=amount(command.amount, scale),
                expected_from_balance=amount(command.expected_from_balance, scale),
                expected_to_balance=amount(command.expected_to_balance, scale),
            )
        if isinstance(command, BatchBalanceOperation | TccTry):
            legs = tuple(replace(leg, amount=amount(leg.amount, self._scale_of_asset(leg.asset))) for leg in command.legs)
            conditions = tuple(
                replace(
                    condition,
                    expected_balance=amount(condition.expected_balance, self._scale_of_account(condition.account_id)),
                    min_balance=amount(condition.min_balance, self._scale_of_account(condition.account_id)),
                    max_balance=amount(condition.max_balance, self._scale_of_account(condition.account_id)),
                )
                for condition in command.preconditions
            )
            return replace(command, legs=legs, preconditions=conditions)
        if isinstance(command, Reserve | Release):
            return replace(command, amount=amount(command.amount, self._scale_of_account(command.account_id)))
        if isinstance(command, SetVelocityLimits):
            scale = self._scale_of_account(command.account_id)
            return replace(
                command, amount_per_hour=amount(command.amount_per_hour, scale), amount_per_day=amount(command.amount_per_day, scale)
            )
        assert isinstance(command, UpdateLimits), type(command)
        scale = self._scale_of_account(command.account_id)
        return replace(command, lower_limit=amount(command.lower_limit, scale), upper_limit=amount(command.upper_limit, scale))

    def upgrade(self, protocol_version: int) -> None:
        if protocol_version > protocol_version_max:
            raise ProtocolVersionError(
                f"log entry {self.log_index + 1} needs protocol {protocol_version}, newer than this release "
                f"understands (up to {protocol_version_max}): upgrade Coffer on this node"
            )
        self.protocol_version = protocol_version
        self.amount_max = _amount_max_by_protocol[protocol_version]

    def _event_body(self, seq: int, dedup_id: str | None, event_type: str, command: Command | None, accounts: Sequence[Account]) -> bytes:
        if self.protocol_version >= 2:
            return _encode((2, seq, self.log_index, self.time_ms, dedup_id, event_type, command, accounts, self._actor))
        # Protocol 1: format-1 events, with the command in its format-1 layout (the bytes that
        # ledger wrote then, which its hash chain covers).
        old_command = None if command is None else to_format_1(command)
        return _encode((seq, self.log_index, self.time_ms, dedup_id, event_type, old_command, accounts))

    def _beyond_upper(self, account: Account, total: int) -> Result | None:
        """``total`` (available + held, after the change) against the upper limit and the bound."""
        upper = account.upper_limit
        if upper is not None:
            if total > upper:
                return _reject(
                    ErrorCode.UPPER_LIMIT_EXCEEDED, f"account {account.account_id} would go above its upper limit", account.account_id
                )
            return None
        if total > self.amount_max:
            if self.protocol_version < 2:
                return _reject(
                    ErrorCode.UPPER_LIMIT_EXCEEDED, f"account {account.account_id} would go above its upper limit", account.account_id
                )
            return _reject(
                ErrorCode.BALANCE_OUT_OF_RANGE,
                f"account {account.account_id} would hold more than {self.amount_max} minor units (2^127 - 1), "
                "the largest balance a ledger holds",
                account.account_id,
            )
        return None

    def _replay(self, record: DedupRecord, command: Command) -> Result:
        if record.command == command:
            return record.result
        if record.command is not None and self._same_payload(record.command, command):
            return record.result
        if record.command is None:
            # The original arrives after its null compensation: reject it, for good.
            result = record.result
            self.dedup[command.dedup_id] = DedupRecord(command, result)
            return result
        return _reject(ErrorCode.DEDUP_ID_REUSED, f"dedup_id {command.dedup_id!r} was used for another command")

    def _emit(self, dedup_id: str | None, event_type: str, command: Command | None, accounts: Sequence[Account]) -> int:
        seq = self.seq + 1
        self.seq = seq
        body = self._event_body(seq, dedup_id, event_type, command, accounts)
        prev_hash = self.head
        self.head = sha256(prev_hash + body).digest()
        self._events.append(EventRecord(seq, body, prev_hash, self.head))
        if dedup_id is not None:
            # Shallow copies suffice: an account's maps are replaced, never changed in place.
            self._keep_effect(dedup_id, tuple([account.__copy__() for account in accounts]))
        return seq

    # ------------------------------------------------------------------ accounts

    def _create_account(self, command: CreateAccount) -> Result:
        account_id = command.account_id
        if _out_of_range(self.amount_max, command.lower_limit, command.upper_limit):
            return _too_large(self.amount_max, account_id)
        if not _valid_id(account_id):
            return _reject(ErrorCode.INVALID_REQUEST, "account_id must be 1 to 128 characters of A-Za-z0-9._:-")
        if not _valid_id(command.asset, asset_length_max):
            return _reject(ErrorCode.INVALID_REQUEST, "asset must be 1 to 32 characters of A-Za-z0-9._:-")
        if not 0 <= command.scale <= scale_max:
            return _reject(ErrorCode.INVALID_REQUEST, f"scale must be 0..{scale_max}")
        if not _valid_metadata(command.metadata):
            return _reject(ErrorCode.INVALID_REQUEST, "metadata must be a small map of strings")
        if account_id in self.accounts:
            return _reject(ErrorCode.ACCOUNT_EXISTS, f"account {account_id} exists", account_id)
        known_scale = self.asset_scales.get(command.asset)
        if known_scale is not None and known_scale != command.scale:
            return _reject(
                ErrorCode.ASSET_MISMATCH, f"asset {command.asset} has scale {known_scale}, not {command.scale}", account_id
            )
        if command.lower_limit > 0:
            return _reject(ErrorCode.LOWER_LIMIT_EXCEEDED, "a new account's balance 0 is below its lower limit", account_id)
        if command.upper_limit is not None and command.upper_limit < 0:
            return _reject(ErrorCode.UPPER_LIMIT_EXCEEDED, "a new account's balance 0 is above its upper limit", account_id)
        account = Account(
            account_id,
            command.asset,
            command.scale,
            _NORMAL,
            command.lower_limit,
            command.upper_limit,
            0,
            {},
            {},
            {},
            1,
            dict(command.metadata) if command.metadata else {},
        )
        self.accounts[account_id] = account
        self.asset_scales.setdefault(command.asset, command.scale)
        return Result(OK, self._emit(command.dedup_id, EventType.ACCOUNT_CREATED, command, (account,)))

    def _existing(self, account_id: str) -> Account | Result:
        account = self.accounts.get(account_id)
        if account is None:
            return _reject(ErrorCode.ACCOUNT_NOT_FOUND, f"account {account_id} not found", account_id)
        return account

    def _update_limits(self, command: UpdateLimits) -> Result:
        if _out_of_range(self.amount_max, command.lower_limit, command.upper_limit):
            return _too_large(self.amount_max, command.account_id)
        account = self._existing(command.account_id)
        if isinstance(account, Result):
            return account
        if account.state == _DELETED:
            return _state_error(account)
        lower = account.lower_limit if command.lower_limit is None else command.lower_limit
        upper = account.upper_limit if command.keep_upper_limit else command.upper_limit
        if account.available < lower:
            return _reject(ErrorCode.LOWER_LIMIT_EXCEEDED, "available balance is below the new lower limit", account.account_id)
        if upper is not None and account.available + account.held() > upper:
            return _reject(ErrorCode.UPPER_LIMIT_EXCEEDED, "balance is above the new upper limit", account.account_id)
        account.lower_limit = lower
        account.upper_limit = upper
        account.version += 1
        return Result(OK, self._emit(command.dedup_id, EventType.LIMITS_UPDATED, command, (account,)))

    def _change_state(self, command: LockAccount | UnlockAccount, source: str, target: str, event_type: str) -> Result:
        account = self._existing(command.account_id)
        if isinstance(account, Result):
            return account
        if account.state == _DELETED:
            return _state_error(account)
        if account.state != source:
            return _reject(
                ErrorCode.INVALID_STATE_TRANSITION, f"account {account.account_id} is {account.state}", account.account_id
            )
        account.state = target
        account.version += 1
        return Result(OK, self._emit(command.dedup_id, event_type, command, (account,)))

    def _lock_account(self, command: LockAccount) -> Result:
        return self._change_state(command, _NORMAL, _LOCKED, EventType.ACCOUNT_LOCKED)

    def _unlock_account(self, command: UnlockAccount) -> Result:
        return self._change_state(command, _LOCKED, _NORMAL, EventType.ACCOUNT_UNLOCKED)

    def _delete_account(self, command: DeleteAccount) -> Result:
        account = self._existing(command.account_id)
        if isinstance(account, Result):
            return account
        if account.state == _DELETED:
            return _state_error(account)
        if not account.is_empty():
            return _reject(
                ErrorCode.ACCOUNT_NOT_EMPTY,
                f"account {account.account_id} still holds money, reservations or pending entries",
                account.account_id,
            )
        account.state = _DELETED
        account.version += 1
        return Result(OK, self._emit(command.dedup_id, EventType.ACCOUNT_DELETED, command, (account,)))

    # ------------------------------------------------------------------ balances

    def _transfer(self, command: Transfer) -> Result:
        # The hot path: written out rather than built on the generic helpers below.
        amount = command.amount
        if amount.__class__ is str or _is_text(command.expected_from_balance) or _is_text(command.expected_to_balance):
            resolved = self._resolve(command)
            return resolved if isinstance(resolved, Result) else self._transfer(resolved)  # type: ignore[arg-type]
        if amount <= 0:
            return _reject(ErrorCode.INVALID_AMOUNT, "amount must be positive")
        bound = self.amount_max
        if amount > bound or _out_of_range(bound, command.expected_from_balance, command.expected_to_balance):
            return _too_large(bound, command.from_account_id)
        source_id = command.from_account_id
        target_id = command.to_account_id
        if source_id == target_id:
            return _reject(ErrorCode.SAME_ACCOUNT, "from and to are the same account", source_id)
        accounts = self.accounts
        source = accounts.get(source_id)
        if source is None:
            return _reject(ErrorCode.ACCOUNT_NOT_FOUND, f"account {source_id} not found", source_id)
        if source.state != _NORMAL:
            return _state_error(source)
        if source.asset != command.asset:
            return _reject(ErrorCode.ASSET_MISMATCH, f"account {source_id} holds {source.asset}", source_id)
        target = accounts.get(target_id)
        if target is None:
            return _reject(ErrorCode.ACCOUNT_NOT_FOUND, f"account {target_id} not found", target_id)
        if target.state != _NORMAL:
            return _state_error(target)
        if target.asset != command.asset:
            return _reject(ErrorCode.ASSET_MISMATCH, f"account {target_id} holds {target.asset}", target_id)
        expected = command.expected_from_balance
        if expected is not None and source.available != expected:
            return _reject(ErrorCode.PRECONDITION_FAILED, "from balance is not the expected one", source_id)
        expected = command.expected_to_balance
        if expected is not None and target.available != expected:
            return _reject(ErrorCode.PRECONDITION_FAILED, "to balance is not the expected one", target_id)
        source_available = source.available - amount
        if source_available < source.lower_limit:
            return _reject(ErrorCode.LOWER_LIMIT_EXCEEDED, f"account {source_id} would go below its lower limit", source_id)
        target_available = target.available + amount
        upper = target.upper_limit
        if target_available + target.held() > (bound if upper is None else upper):
            failed = self._beyond_upper(target, target_available + target.held())
            assert failed is not None
            return failed
        if self.velocity:
            tracked = self.velocity.get(source_id)
            if tracked is not None:
                cap = exceeded(tracked, amount, self.time_ms)
                if cap is not None:
                    return _reject(ErrorCode.VELOCITY_LIMIT_EXCEEDED, f"account {source_id} would exceed {cap}", source_id)
                record(tracked, amount, self.time_ms)
        source.available = source_available
        source.version += 1
        target.available = target_available
        target.version += 1
        # _emit, inlined: this is the one command where the call costs a measurable share.
        seq = self.seq + 1
        self.seq = seq
        if self.protocol_version >= 2:
            fields = (2, seq, self.log_index, self.time_ms, command.dedup_id, _TRANSFERRED, command, (source, target), self._actor)
            try:
                body = _encode_plain(fields)
            except OverflowError:  # a balance beyond 64 bits: the wide spelling
                body = _encode(fields)
        else:
            body = _encode((seq, self.log_index, self.time_ms, command.dedup_id, _TRANSFERRED, command, (source, target)))
        prev_hash = self.head
        self.head = head = sha256(prev_hash + body).digest()
        self._events.append(EventRecord(seq, body, prev_hash, head))
        # The effect, inline (see _keep_effect): this is the hot path.
        effects = self.effects
        if len(effects) >= effects_generation_max:
            self.effects_older = effects
            self.effects = effects = {}
        effects[command.dedup_id] = Effect(self.log_index, (source.__copy__(), target.__copy__()))
        return Result(OK, seq)

    def _check_legs(self, legs: tuple[Leg, ...]) -> Result | dict[str, int]:
        """Existence, state and asset of every leg; the net amount per account."""
        net: dict[str, int] = {}
        accounts = self.accounts
        for leg in legs:
            account_id = leg.account_id
            account = accounts.get(account_id)
            if account is None:
                return _reject(ErrorCode.ACCOUNT_NOT_FOUND, f"account {account_id} not found", account_id)
            if account.state != _NORMAL:
                return _state_error(account)
            if account.asset != leg.asset:
                return _reject(ErrorCode.ASSET_MISMATCH, f"account {account_id} holds {account.asset}", account_id)
            net[account_id] = net.get(account_id, 0) + leg.amount
        return net

    def _check_limits(self, net: dict[str, int]) -> Result | None:
        accounts = self.accounts
        for account_id, delta in net.items():
            account = accounts[account_id]
            available = account.available + delta
            if available < account.lower_limit:
                return _reject(ErrorCode.LOWER_LIMIT_EXCEEDED, f"account {account_id} would go below its lower limit", account_id)
            failed = self._beyond_upper(account, available + account.held())
            if failed is not None:
                return failed
        return None

    def _commit_net(self, net: dict[str, int]) -> list[Account]:
        changed = []
        for account_id, delta in net.items():
            account = self.accounts[account_id]
            account.available += delta
            account.version += 1
            changed.append(account)
        return changed

    def _batch_operation(self, command: BatchBalanceOperation) -> Result:
        failed = _check_leg_amounts(command.legs, self.amount_max) or _check_leg_count(command.legs)
        if failed is not None:
            return failed
        failed = self._check_condition_shapes(command.preconditions)
        if failed is not None:
            return failed
        net = self._check_legs(command.legs)
        if isinstance(net, Result):
            return net
        failed = self._check_conditions(command.preconditions)
        if failed is not None:
            return failed
        failed = self._check_limits(net)
        if failed is not None:
            return failed
        if self.velocity:
            failed = self._count_debits({account_id: -delta for account_id, delta in net.items() if delta < 0})
            if failed is not None:
                return failed
        changed = self._commit_net(net)
        return Result(OK, self._emit(command.dedup_id, EventType.BALANCES_CHANGED, command, changed))

    def _count_debits(self, debits: dict[str, int]) -> Result | None:
        """Step 6: the velocity caps of every debited account (in the command's order), then count.

        Counts only when every account passes, so it must be the command's last check.
        """
        velocity = self.velocity
        tracked = [(account_id, velocity[account_id], amount) for account_id, amount in debits.items() if account_id in velocity]
        for account_id, state, amount in tracked:
            cap = exceeded(state, amount, self.time_ms)
            if cap is not None:
                return _reject(ErrorCode.VELOCITY_LIMIT_EXCEEDED, f"account {account_id} would exceed {cap}", account_id)
        for _, state, amount in tracked:
            record(state, amount, self.time_ms)
        return None

    def _check_condition_shapes(self, preconditions: tuple[Precondition, ...]) -> Result | None:
        """Step 2 for preconditions: their number and the range of their values."""
        if len(preconditions) > legs_max:
            return _reject(ErrorCode.INVALID_REQUEST, f"a command takes at most {legs_max} preconditions")
        for condition in preconditions:
            if _out_of_range(
                self.amount_max, condition.expected_balance, condition.min_balance, condition.max_balance, condition.expected_version
            ):
                return _too_large(self.amount_max, condition.account_id)
        return None

    def _check_conditions(self, preconditions: tuple[Precondition, ...]) -> Result | None:
        """Steps 3 and 4 for preconditions: every named account exists before any is judged."""
        for condition in preconditions:
            if condition.account_id not in self.accounts:
                return _reject(ErrorCode.ACCOUNT_NOT_FOUND, f"account {condition.account_id} not found", condition.account_id)
        for condition in preconditions:
            failed = self._check_precondition(condition)
            if failed is not None:
                return failed
        return None

    def _check_precondition(self, condition: Precondition) -> Result | None:
        account_id = condition.account_id
        account = self.accounts.get(account_id)
        if account is None:
            return _reject(ErrorCode.ACCOUNT_NOT_FOUND, f"account {account_id} not found", account_id)
        available = account.available
        if condition.expected_balance is not None and available != condition.expected_balance:
            return _reject(ErrorCode.PRECONDITION_FAILED, f"account {account_id}: balance is not the expected one", account_id)
        if condition.min_balance is not None and available < condition.min_balance:
            return _reject(ErrorCode.PRECONDITION_FAILED, f"account {account_id}: balance is below min_balance", account_id)
        if condition.max_balance is not None and available > condition.max_balance:
            return _reject(ErrorCode.PRECONDITION_FAILED, f"account {account_id}: balance is above max_balance", account_id)
        if condition.expected_version is not None and account.version != condition.expected_version:
            return _reject(ErrorCode.PRECONDITION_FAILED, f"account {account_id}: version is not the expected one", account_id)
        return None

    def _reserve(self, command: Reserve) -> Result:
        amount = command.amount
        if amount <= 0:
            return _reject(ErrorCode.INVALID_AMOUNT, "amount must be positive")
        if amount > self.amount_max:
            return _too_large(self.amount_max, command.account_id)
        if not _valid_id(command.reservation_id):
            return _reject(ErrorCode.INVALID_REQUEST, "reservation_id must be 1 to 128 characters of A-Za-z0-9._:-")
        account = self._existing(command.account_id)
        if isinstance(account, Result):
            return account
        if account.state != _NORMAL:
            return _state_error(account)
        available = account.available - amount
        if available < account.lower_limit:
            return _reject(
                ErrorCode.LOWER_LIMIT_EXCEEDED, f"account {account.account_id} would go below its lower limit", account.account_id
            )
        account.available = available
        reservations = account.reservations
        account.reservations = {**reservations, command.reservation_id: reservations.get(command.reservation_id, 0) + amount}
        account.version += 1
        return Result(OK, self._emit(command.dedup_id, EventType.RESERVED, command, (account,)))

    def _release(self, command: Release) -> Result:
        if command.amount is not None and command.amount <= 0:
            return _reject(ErrorCode.INVALID_AMOUNT, "amount must be positive")
        if _out_of_range(self.amount_max, command.amount):
            return _too_large(self.amount_max, command.account_id)
        account = self._existing(command.account_id)
        if isinstance(account, Result):
            return account
        if account.state != _NORMAL:
            return _state_error(account)
        failed = self._take_reservation(account, command.reservation_id, command.amount)
        if failed is not None:
            return failed
        account.version += 1
        return Result(OK, self._emit(command.dedup_id, EventType.RELEASED, command, (account,)))

    def _take_reservation(self, account: Account, reservation_id: str, amount: int | None) -> Result | None:
        """Move ``amount`` (all if None) of a reservation back to available, or say why not."""
        reserved = account.reservations.get(reservation_id)
        if reserved is None:
            return _reject(ErrorCode.RESERVATION_NOT_FOUND, f"no reservation {reservation_id}", account.account_id)
        if amount is None:
            amount = reserved
        if amount > reserved:
            return _reject(
                ErrorCode.INSUFFICIENT_RESERVATION, f"reservation {reservation_id} holds less than the amount", account.account_id
            )
        # Available grows and the total stays: no limit can break here.
        if amount == reserved:
            account.reservations = _without(account.reservations, reservation_id)
        else:
            account.reservations = {**account.reservations, reservation_id: reserved - amount}
        account.available += amount
        return None

    # ------------------------------------------------------------------ two-phase (TCC)

    def _tcc_try(self, command: TccTry) -> Result:
        txn_id = command.txn_id
        failed = _check_leg_amounts(command.legs, self.amount_max)
        if failed is not None:
            return failed
        if not _valid_id(txn_id):
            return _reject(ErrorCode.INVALID_REQUEST, "txn_id must be 1 to 128 characters of A-Za-z0-9._:-")
        timeout_s = command.timeout_s
        if timeout_s is not None and not 0 < timeout_s <= timeout_s_max:
            return _reject(ErrorCode.INVALID_REQUEST, f"timeout_s must be 1..{timeout_s_max}")
        failed = _check_leg_count(command.legs)
        if failed is not None:
            return failed
        failed = self._check_condition_shapes(command.preconditions)
        if failed is not None:
            return failed
        net = self._check_legs(command.legs)
        if isinstance(net, Result):
            return net
        failed = self._check_conditions(command.preconditions)
        if failed is not None:
            return failed
        if txn_id in self.txns:
            return _reject(ErrorCode.TXN_EXISTS, f"transaction {txn_id} exists")
        holds: dict[str, list[int]] = {account_id: [0, 0] for account_id in net}
        for leg in command.legs:
            if leg.amount < 0:
                holds[leg.account_id][0] -= leg.amount
            else:
                holds[leg.account_id][1] += leg.amount
        accounts = self.accounts
        for account_id, (amount_out, amount_in) in holds.items():
            account = accounts[account_id]
            if account.available - amount_out < account.lower_limit:
                return _reject(ErrorCode.LOWER_LIMIT_EXCEEDED, f"account {account_id} would go below its lower limit", account_id)
            # Money moved to pending_out still counts; pending_in adds to the total.
            failed = self._beyond_upper(account, account.available + account.held() + amount_in)
            if failed is not None:
                return failed
        if self.velocity:
            debits = {account_id: amount_out for account_id, (amount_out, _) in holds.items() if amount_out}
            failed = self._count_debits(debits)
            if failed is not None:
                return failed
            counted = tuple(
                VelocityHold(account_id, amount, self.time_ms) for account_id, amount in debits.items() if account_id in self.velocity
            )
            if counted:
                self.velocity_holds[txn_id] = counted
        changed = []
        legs = []
        for account_id, (amount_out, amount_in) in holds.items():
            account = accounts[account_id]
            if amount_out:
                account.available -= amount_out
                account.pending_out = {**account.pending_out, txn_id: amount_out}
            if amount_in:
                account.pending_in = {**account.pending_in, txn_id: amount_in}
            account.version += 1
            changed.append(account)
            legs.append(TxnLeg(account_id, amount_out, amount_in))
        deadline_ms = None if timeout_s is None else self.time_ms + timeout_s * 1000
        self.txns[txn_id] = Txn(txn_id, _TRIED, tuple(legs), deadline_ms)
        self.open_txns[txn_id] = None
        if deadline_ms is not None:
            heapq.heappush(self.expiries, (deadline_ms, txn_id))
        return Result(OK, self._emit(command.dedup_id, EventType.TCC_TRIED, command, changed))

    def _tcc_confirm(self, command: TccConfirm) -> Result:
        txn = self.txns.get(command.txn_id)
        if txn is None:
            return _reject(ErrorCode.TXN_NOT_FOUND, f"transaction {command.txn_id} not found")
        if txn.state == _CANCELLED:
            return _reject(ErrorCode.TXN_ALREADY_CANCELLED, f"transaction {command.txn_id} was cancelled")
        changed: list[Account] = []
        if txn.state == _TRIED:
            # Phase two must always finish: no state or limit check can stop it.
            for leg in txn.legs:
                account = self.accounts[leg.account_id]
                if leg.amount_out:
                    account.pending_out = _without(account.pending_out, txn.txn_id)
                if leg.amount_in:
                    account.pending_in = _without(account.pending_in, txn.txn_id)
                    account.available += leg.amount_in
                account.version += 1
                changed.append(account)
            txn.state = _CONFIRMED
            del self.open_txns[txn.txn_id]
            self.velocity_holds.pop(txn.txn_id, None)
        return Result(OK, self._emit(command.dedup_id, EventType.TCC_CONFIRMED, command, changed))

    def _tcc_cancel(self, command: TccCancel) -> Result:
        txn = self.txns.get(command.txn_id)
        if txn is None:
            return _reject(ErrorCode.TXN_NOT_FOUND, f"transaction {command.txn_id} not found")
        if txn.state == _CONFIRMED:
            return _reject(ErrorCode.TXN_ALREADY_CONFIRMED, f"transaction {command.txn_id} was confirmed")
        changed = self._cancel_txn(txn) if txn.state == _TRIED else []
        return Result(OK, self._emit(command.dedup_id, EventType.TCC_CANCELLED, command, changed))

    def _cancel_txn(self, txn: Txn) -> list[Account]:
        changed = []
        for leg in txn.legs:
            account = self.accounts[leg.account_id]
            if leg.amount_out:
                account.pending_out = _without(account.pending_out, txn.txn_id)
                account.available += leg.amount_out
            if leg.amount_in:
                account.pending_in = _without(account.pending_in, txn.txn_id)
            account.version += 1
            changed.append(account)
        txn.state = _CANCELLED
        del self.open_txns[txn.txn_id]
        held = self.velocity_holds.pop(txn.txn_id, None)
        if held is not None:
            for hold in held:  # the debit did not happen: give it back to its windows
                tracked = self.velocity.get(hold.account_id)
                if tracked is not None:
                    give_back(tracked, hold.amount, hold.time_ms)
        return changed

    def next_deadline_ms(self) -> int | None:
        """The log time at which the next live TCC try expires (None: no try has a deadline).

        The node uses it to append a time-only entry when a deadline passes on a quiet ledger.
        Stale heap entries (tries already confirmed or cancelled) are dropped here: the heap is
        derived state (a restore rebuilds it from the live tries), so this changes nothing that
        replicas must agree on.
        """
        expiries = self.expiries
        while expiries:
            deadline_ms, txn_id = expiries[0]
            if self.txns[txn_id].state == _TRIED:
                return deadline_ms
            heapq.heappop(expiries)
        return None

    def _expire_tries(self) -> None:
        expiries = self.expiries
        while expiries and expiries[0][0] <= self.time_ms:
            _, txn_id = heapq.heappop(expiries)
            txn = self.txns[txn_id]
            if txn.state == _TRIED:
                changed = self._cancel_txn(txn)
                self._emit(None, EventType.TCC_EXPIRED, None, changed)

    # ------------------------------------------------------------------ cross-shard decisions

    def _decide(self, command: Decide) -> Result:
        """Record the decision of a cross-shard transaction; the first one written wins."""
        txn_id = command.txn_id
        if not _valid_id(txn_id):
            return _reject(ErrorCode.INVALID_REQUEST, "txn_id must be 1 to 128 characters of A-Za-z0-9._:-")
        if len(command.participants) > legs_max or any(not 0 <= shard < 2**31 for shard in command.participants):
            return _reject(ErrorCode.INVALID_REQUEST, "participants must be shard numbers")
        if command.reason_code is not None and not _valid_id(command.reason_code, 64):
            return _reject(ErrorCode.INVALID_REQUEST, "reason_code must be an error code")
        if len(command.reason_message) > metadata_value_length_max:
            return _reject(ErrorCode.INVALID_REQUEST, f"reason_message must be at most {metadata_value_length_max} characters")
        if command.reason_account_id is not None and not _valid_id(command.reason_account_id):
            return _reject(ErrorCode.INVALID_REQUEST, "reason_account_id must be an account id")
        decided = self.decisions.get(txn_id)
        if decided is not None:
            if decided.commit == command.commit:
                return Result(OK, decided.seq)
            outcome = "commit" if decided.commit else "abort"
            return _reject(ErrorCode.TXN_ALREADY_DECIDED, f"transaction {txn_id} was decided: {outcome}")
        seq = self._emit(command.dedup_id, EventType.TXN_DECIDED, command, ())
        self.decisions[txn_id] = Decision(
            txn_id,
            command.commit,
            tuple(command.participants),
            command.reason_code,
            command.reason_message,
            command.reason_account_id,
            self.time_ms,
            seq,
        )
        return Result(OK, seq)

    # ------------------------------------------------------------------ saga compensation

    def _compensate(self, command: Compensate) -> Result:
        original_id = command.original_dedup_id
        if not isinstance(original_id, str) or not 0 < len(original_id) <= id_length_max:
            return _reject(ErrorCode.INVALID_REQUEST, "original_dedup_id must be 1 to 128 characters")
        if original_id == command.dedup_id:
            return _reject(ErrorCode.INVALID_REQUEST, "a command cannot compensate itself")
        if original_id in self.compensations:
            return _reject(
                ErrorCode.ALREADY_COMPENSATED, f"{original_id!r} was already compensated by {self.compensations[original_id]!r}"
            )
        record = self.dedup.get(original_id)
        if record is None or not record.result.ok:
            # Never seen: record a null compensation so that a late original is rejected.
            # Seen but rejected: it moved nothing, so there is nothing to undo.
            if record is None:
                message = f"compensated by {command.dedup_id!r} before it arrived"
                self.dedup[original_id] = DedupRecord(None, _reject(ErrorCode.ALREADY_COMPENSATED, message))
            self.compensations[original_id] = command.dedup_id
            seq = self._emit(command.dedup_id, EventType.NULL_COMPENSATED, command, ())
            return Result(OK, seq, compensation=Compensation.NULL_COMPENSATED.value)
        original = record.command
        check = _text_checks.get(type(original))
        if check is not None and check(original):
            # The record keeps the command as sent (a retry is compared with it); amounts sent as
            # text were resolved when it applied, by scales that never change, so they resolve the
            # same now.
            resolved = self._resolve(original)
            assert not isinstance(resolved, Result), f"{original_id!r} applied, so its amounts resolve: {resolved}"
            original = resolved
        if isinstance(original, Transfer):
            # The transfer's own order: its from account first, then its to account.
            net = {original.from_account_id: original.amount, original.to_account_id: -original.amount}
            changed = self._undo_net(net)
        elif isinstance(original, BatchBalanceOperation):
            net = {}
            for leg in original.legs:
                net[leg.account_id] = net.get(leg.account_id, 0) - leg.amount
            changed = self._undo_net(net)
        elif isinstance(original, Reserve):
            changed = self._undo_reserve(original)
        else:
            return _reject(
                ErrorCode.ORIGINAL_NOT_COMPENSABLE,
                f"{original_id!r} is a {type(original).__name__}; only transfers, batch operations and reservations are",
            )
        if isinstance(changed, Result):
            return changed
        self.compensations[original_id] = command.dedup_id
        seq = self._emit(command.dedup_id, EventType.COMPENSATED, command, changed)
        return Result(OK, seq, compensation=Compensation.COMPENSATED.value)

    def _undo_net(self, net: dict[str, int]) -> Result | list[Account]:
        for account_id in net:
            account = self.accounts[account_id]  # accounts are never removed, only marked deleted
            if account.state != _NORMAL:
                return _state_error(account)
        failed = self._check_limits(net)
        if failed is not None:
            return failed
        return self._commit_net(net)

    def _undo_reserve(self, original: Reserve) -> Result | list[Account]:
        account = self.accounts[original.account_id]
        if account.state != _NORMAL:
            return _state_error(account)
        failed = self._take_reservation(account, original.reservation_id, original.amount)
        if failed is not None:
            return failed
        account.version += 1
        return [account]

    # ------------------------------------------------------------------ velocity limits

    def _set_velocity_limits(self, command: SetVelocityLimits) -> Result:
        account_id = command.account_id
        for cap in (command.amount_per_hour, command.amount_per_day):
            if cap is not None and cap <= 0:
                return _reject(ErrorCode.INVALID_AMOUNT, "a velocity amount cap must be positive", account_id)
        if _out_of_range(self.amount_max, command.amount_per_hour, command.amount_per_day):
            return _too_large(self.amount_max, account_id)
        for count in (command.debits_per_hour, command.debits_per_day):
            if count is not None and not 0 < count <= debits_max:
                return _reject(ErrorCode.INVALID_REQUEST, f"a debit count cap must be 1..{debits_max}", account_id)
        account = self._existing(account_id)
        if isinstance(account, Result):
            return account
        if account.state == _DELETED:
            return _state_error(account)
        limits = VelocityLimits(command.amount_per_hour, command.amount_per_day, command.debits_per_hour, command.debits_per_day)
        if not limits.any():
            if self.velocity.pop(account_id, None) is not None:
                # Its usage is gone: a later cancel of a hold counted then has nothing to give back.
                for txn_id, held in list(self.velocity_holds.items()):
                    kept = tuple(hold for hold in held if hold.account_id != account_id)
                    if len(kept) != len(held):
                        if kept:
                            self.velocity_holds[txn_id] = kept
                        else:
                            del self.velocity_holds[txn_id]
        elif account_id in self.velocity:
            self.velocity[account_id].limits = limits  # usage in the current windows stays
        else:
            self.velocity[account_id] = Velocity(limits)
        account.version += 1
        return Result(OK, self._emit(command.dedup_id, EventType.VELOCITY_LIMITS_SET, command, (account,)))

    # ------------------------------------------------------------------ flows (opaque to the core)

    def _put_flow(self, command: PutFlow) -> Result:
        if not _valid_id(command.name, flow_name_length_max):
            return _reject(ErrorCode.INVALID_REQUEST, f"a flow name is 1 to {flow_name_length_max} characters of A-Za-z0-9._:-")
        if not 0 < len(command.definition) <= flow_definition_bytes_max:
            return _reject(ErrorCode.INVALID_REQUEST, f"a flow definition is 1 to {flow_definition_bytes_max} bytes")
        versions = self.flows.setdefault(command.name, [])
        seq = self._emit(command.dedup_id, EventType.FLOW_REGISTERED, command, ())
        versions.append(FlowVersion(len(versions) + 1, command.definition, seq, self.time_ms))
        return Result(OK, seq)

    def _start_flow_run(self, command: StartFlowRun) -> Result:
        run_id = command.dedup_id
        if not _valid_id(run_id):
            return _reject(ErrorCode.INVALID_REQUEST, "a flow run's dedup_id is 1 to 128 characters of A-Za-z0-9._:-")
        if len(command.params) > flow_params_bytes_max:
            return _reject(ErrorCode.INVALID_REQUEST, f"a flow run's params are at most {flow_params_bytes_max} bytes")
        versions = self.flows.get(command.flow)
        if not versions:
            return _reject(ErrorCode.FLOW_NOT_FOUND, f"no flow {command.flow!r}")
        version = len(versions) if command.version is None else command.version
        if not 1 <= version <= len(versions):
            return _reject(ErrorCode.FLOW_NOT_FOUND, f"flow {command.flow!r} has no version {version}")
        seq = self._emit(run_id, EventType.FLOW_RUN_STARTED, command, ())
        self.flow_runs[run_id] = FlowRun(run_id, command.flow, version, command.params, seq, self.time_ms)
        self.open_flow_runs[run_id] = None
        return Result(OK, seq)

    def _finish_flow_run(self, command: FinishFlowRun) -> Result:
        if len(command.outcome) > flow_outcome_bytes_max:
            return _reject(ErrorCode.INVALID_REQUEST, f"a flow run's outcome is at most {flow_outcome_bytes_max} bytes")
        run = self.flow_runs.get(command.run_id)
        if run is None:
            return _reject(ErrorCode.FLOW_RUN_NOT_FOUND, f"no flow run {command.run_id!r}")
        if run.outcome is not None:
            return Result(OK, run.finished_seq)  # the first outcome recorded stays
        seq = self._emit(command.dedup_id, EventType.FLOW_RUN_FINISHED, command, ())
        run.outcome = command.outcome
        run.finished_seq = seq
        del self.open_flow_runs[run.run_id]
        return Result(OK, seq)
