"""The simulator's auditor: SPEC invariants, checked after every log entry any replica applies.

Job. Replicas apply the same log at their own pace, restart from snapshots and replay. The
auditor holds the *history of truth*: for every log index, the state hash, the results and the
events of the first replica that applied it. Every later replica that applies that index must
reach the same state hash and answer the same results (SPEC invariant 4). The first replica's
entry is audited in depth, from the events alone, by rules written here from the ledger's specification
(not from the state machine's code):

- the events continue a gapless, hash-chained sequence (invariant 4);
- each accepted command emits exactly one event, carrying its ``dedup_id`` and the credential
  that sent it, and no ``dedup_id`` appears in two events; a retry with the same payload answers
  the first outcome, another payload gets ``DEDUP_ID_REUSED``, an original after its null
  compensation ``ALREADY_COMPENSATED`` (invariant 3);
- every event moves money exactly as its command says, on exactly the accounts it names, and
  bumps each changed account's version by one; TCC tries whose deadline the ledger clock reached
  are cancelled first, in (deadline, txn_id) order;
- the state equals the accounts of their last events, every account is within its limits
  (invariant 2), and per asset ``available + reserved + pending_out`` equals the money that came
  in and went out through batch legs, confirmed TCC legs and compensations of batches
  (invariant 1).

Since every other replica must match the audited state hash at the same index, every state any
replica reaches is covered. What the replicas keep on their disks is held against the same
history: a replica's recovered state, every snapshot file that recovery may use, and every event
its event store holds (gapless, byte for byte the history's). A failed check raises
:class:`InvariantViolation`, naming the invariant; the simulator reports the first one and stops
the seed.
"""

from dataclasses import dataclass, field

from coffer.core.accounts import OK, Account, AccountState, Compensation, Result
from coffer.core.commands import (
    BatchBalanceOperation,
    Command,
    Compensate,
    CreateAccount,
    DeleteAccount,
    Leg,
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
from coffer.core.errors import ErrorCode
from coffer.core.events import Actor, ChainError, Event, EventRecord, EventType, genesis_hash, verify_chain
from coffer.core.snapshot import state_hash
from coffer.core.state_machine import StateMachine

error_codes = frozenset(code.value for code in ErrorCode)

# The event each accepted command emits (Compensate: by the kind of compensation).
_event_type_of: dict[type, str] = {
    CreateAccount: EventType.ACCOUNT_CREATED,
    UpdateLimits: EventType.LIMITS_UPDATED,
    LockAccount: EventType.ACCOUNT_LOCKED,
    UnlockAccount: EventType.ACCOUNT_UNLOCKED,
    DeleteAccount: EventType.ACCOUNT_DELETED,
    Transfer: EventType.TRANSFERRED,
    BatchBalanceOperation: EventType.BALANCES_CHANGED,
    Reserve: EventType.RESERVED,
    Release: EventType.RELEASED,
    TccTry: EventType.TCC_TRIED,
    TccConfirm: EventType.TCC_CONFIRMED,
    TccCancel: EventType.TCC_CANCELLED,
    SetVelocityLimits: EventType.VELOCITY_LIMITS_SET,
}


class InvariantViolation(Exception):
    """A checked invariant does not hold: ``invariant`` names it, ``detail`` says where and how."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


def _violation(invariant: str, detail: str) -> InvariantViolation:
    return InvariantViolation(invariant, detail)


@dataclass
class _Outcome:
    """The first command a ``dedup_id`` was used for in log order, and its result.

    ``command`` is ``None`` while the id is held by a null compensation: the original has not
    arrived, and whenever it does it is rejected.
    """

    command: Command | None
    result: Result | None


@dataclass
class _Txn:
    state: str  # TRIED, CONFIRMED or CANCELLED
    legs: tuple[Leg, ...]
    deadline_ms: int | None


@dataclass
class _Money:
    """The sections of one account that commands move money between."""

    available: int
    reservations: dict[str, int]
    pending_in: dict[str, int]
    pending_out: dict[str, int]

    @classmethod
    def of(cls, account: Account) -> "_Money":
        return cls(account.available, dict(account.reservations), dict(account.pending_in), dict(account.pending_out))


@dataclass
class Auditor:
    """The history of truth of one simulated shard, and the checks against it."""

    hash_at_index: list[bytes] = field(default_factory=lambda: [state_hash(StateMachine())])
    results_at_index: list[list[Result]] = field(default_factory=lambda: [[]])
    head_at_index: list[tuple[int, bytes]] = field(default_factory=lambda: [(0, genesis_hash)])
    event_hashes: list[bytes] = field(default_factory=list)  # seq - 1 -> hash
    event_dedup_ids: list[str | None] = field(default_factory=list)  # seq - 1 -> dedup_id
    outcomes: dict[str, _Outcome] = field(default_factory=dict)
    applied_dedup_ids: set[str] = field(default_factory=set)  # membership only, never iterated
    compensated: dict[str, str] = field(default_factory=dict)  # original dedup_id -> compensation's
    views: dict[str, Account] = field(default_factory=dict)  # account_id -> account in its last event
    totals: dict[str, int] = field(default_factory=dict)  # asset -> money that entered minus left
    txns: dict[str, _Txn] = field(default_factory=dict)
    clock_ms: int = 0

    # ------------------------------------------------------------------ every replica, every entry

    @property
    def last_index(self) -> int:
        return len(self.hash_at_index) - 1

    def observe_apply(
        self,
        replica: str,
        index: int,
        time_ms: int,
        commands: list[Command],
        actors: list[Actor | None] | None,
        results: list[Result],
        events: list[EventRecord],
        machine: StateMachine,
        previous: tuple[int, bytes],
    ) -> bool:
        """Check one entry a replica just applied; return True if it was the first to apply it.

        ``actors`` are the entry's, one per command or ``None`` for an entry without credentials.
        """
        where = f"{replica} at log index {index}"
        try:
            head = verify_chain(events, *previous)
        except ChainError as error:
            raise _violation("hash-chain", f"{where}: {error}") from None
        if (machine.seq, machine.head) != head or machine.log_index != index:
            raise _violation("hash-chain", f"{where}: the state's (log_index, seq, head) is not its last event's")
        if len(results) != len(commands):
            raise _violation("one-result-per-command", f"{where}: {len(results)} results for {len(commands)} commands")
        digest = state_hash(machine)
        if index <= self.last_index:
            if digest != self.hash_at_index[index]:
                raise _violation(
                    "replica-divergence",
                    f"{where}: state hash {digest.hex()[:16]} differs from {self.hash_at_index[index].hex()[:16]} "
                    "of the first replica at that index",
                )
            if results != self.results_at_index[index]:
                raise _violation("replica-divergence", f"{where}: results differ from the first replica's")
            return False
        assert index == self.last_index + 1, f"the auditor saw index {self.last_index}, not {index - 1}"
        self._audit_entry(where, time_ms, commands, actors, results, events, machine)
        self.hash_at_index.append(digest)
        self.results_at_index.append(list(results))
        self.head_at_index.append(head)
        return True

    def check_position(self, replica: str, machine: StateMachine) -> None:
        """A replica's (seq, head) must be the history's at its log index (cheap; every step)."""
        index = machine.log_index
        if index > self.last_index:
            raise _violation("replica-divergence", f"{replica} is at log index {index}, beyond any audited entry")
        if (machine.seq, machine.head) != self.head_at_index[index]:
            raise _violation("replica-divergence", f"{replica} at log index {index} holds another (seq, head)")

    def check_restored(self, replica: str, machine: StateMachine) -> None:
        """A machine restored from a snapshot must equal the history's state at its index."""
        index = machine.log_index
        if index > self.last_index or state_hash(machine) != self.hash_at_index[index]:
            raise _violation("snapshot-restore", f"{replica}: the state restored at log index {index} is not the one snapshotted")

    def check_recovered(self, replica: str, machine: StateMachine) -> None:
        """A replica that recovered (snapshot plus replay) must hold the history's state at its index."""
        index = machine.log_index
        if index > self.last_index:
            raise _violation("replica-divergence", f"{replica} recovered to log index {index}, beyond any audited entry")
        if state_hash(machine) != self.hash_at_index[index]:
            raise _violation("replica-divergence", f"{replica} recovered to another state than the history's at log index {index}")
        self.check_position(replica, machine)

    def check_stored_events(self, replica: str, after_seq: int, rows: list[tuple[int, bytes]]) -> None:
        """Rows ``(seq, hash)`` a replica's event store holds beyond ``after_seq``, which was checked."""
        expected_seq = after_seq + 1
        for seq, hash_ in rows:
            if seq != expected_seq:
                raise _violation("event-store", f"{replica}: its event store holds seq {seq} after {expected_seq - 1}")
            if seq > len(self.event_hashes) or self.event_hashes[seq - 1] != hash_:
                raise _violation("event-store", f"{replica}: its stored event seq {seq} is not the history's")
            expected_seq += 1

    def check_answer(
        self, client: str, index: int, position: int, command: Command, result: Result, event: EventRecord | None
    ) -> None:
        """What a node answered a client for the command at ``position`` of entry ``index``.

        ``event`` is the event the answer carries: the one this entry emitted for the command, or
        ``None`` when the entry emitted none for it (a rejection, or an outcome from the dedup store).
        """
        where = f"{client}, {command.dedup_id!r} at log index {index}"
        if index > self.last_index or position >= len(self.results_at_index[index]):
            raise _violation("acknowledged-outcome", f"{where}: answered from an entry no replica applied")
        if result != self.results_at_index[index][position]:
            raise _violation("acknowledged-outcome", f"{where}: answer {result} is not the logged result")
        emitted_here = result.ok and self.head_at_index[index - 1][0] < result.seq <= self.head_at_index[index][0]
        if emitted_here != (event is not None):
            raise _violation("acknowledged-outcome", f"{where}: the answer carries {'no event' if event is None else 'an event'}")
        if event is not None and (event.seq != result.seq or event.hash != self.event_hashes[event.seq - 1]):
            raise _violation("acknowledged-outcome", f"{where}: the answer carries event seq {event.seq}, not its own")
        outcome = self.outcomes.get(command.dedup_id)
        if outcome is None or outcome.result is None:
            raise _violation("acknowledged-outcome", f"{where}: the history has no outcome for it")
        if outcome.command == command and result != outcome.result:
            raise _violation("acknowledged-outcome", f"{where}: answer {result} is not the first outcome {outcome.result}")
        if result.ok and self.event_dedup_ids[result.seq - 1] != command.dedup_id:
            raise _violation("acknowledged-outcome", f"{where}: acknowledged seq {result.seq} is another command's event")

    # ------------------------------------------------------------------ the first replica's entry

    def _audit_entry(
        self,
        where: str,
        time_ms: int,
        commands: list[Command],
        actors: list[Actor | None] | None,
        results: list[Result],
        events: list[EventRecord],
        machine: StateMachine,
    ) -> None:
        first_seq = len(self.event_hashes) + 1
        if events and events[0].seq != first_seq:
            raise _violation("gapless-seq", f"{where}: first event has seq {events[0].seq}, the history expects {first_seq}")
        decoded = [record.decode() for record in events]
        for record, event in zip(events, decoded, strict=True):
            self.event_hashes.append(record.hash)
            self.event_dedup_ids.append(event.dedup_id)
        # The ledger clock never steps back, even when the log's time does.
        self.clock_ms = max(self.clock_ms, time_ms)
        position = self._audit_expiries(where, decoded)
        touched_txns: list[str] = []
        for number, (command, result) in enumerate(zip(commands, results, strict=True)):
            actor = actors[number] if actors is not None else None
            position = self._audit_command(where, command, actor, result, decoded, position, machine, touched_txns)
        if position != len(decoded):
            raise _violation("event-per-command", f"{where}: event seq {decoded[position].seq} belongs to no accepted command")
        for event in decoded:
            if event.time_ms != self.clock_ms:
                raise _violation("ledger-clock", f"{where}: event seq {event.seq} has time {event.time_ms}, not {self.clock_ms}")
        for txn_id in touched_txns:
            txn = machine.txns.get(txn_id)
            if txn is None or txn.state != self.txns[txn_id].state:
                raise _violation("events-match-state", f"{where}: transaction {txn_id} is not {self.txns[txn_id].state}")
        self._audit_state(where, machine)

    def _audit_expiries(self, where: str, decoded: list[Event]) -> int:
        due = sorted(
            (txn.deadline_ms, txn_id)
            for txn_id, txn in self.txns.items()
            if txn.state == "TRIED" and txn.deadline_ms is not None and txn.deadline_ms <= self.clock_ms
        )
        for position, (deadline_ms, txn_id) in enumerate(due):
            event = decoded[position] if position < len(decoded) else None
            if event is None or event.type != EventType.TCC_EXPIRED or event.dedup_id is not None or event.actor is not None:
                raise _violation(
                    "tcc-expiry",
                    f"{where}: try {txn_id} (deadline {deadline_ms} ms, clock {self.clock_ms} ms) was not expired first",
                )
            txn = self.txns[txn_id]
            self._check_changes(where, event, self._release_holds(txn_id, txn, confirm=False))
            txn.state = "CANCELLED"
        return len(due)

    def _audit_command(
        self,
        where: str,
        command: Command,
        actor: Actor | None,
        result: Result,
        decoded: list[Event],
        position: int,
        machine: StateMachine,
        touched_txns: list[str],
    ) -> int:
        dedup_id = command.dedup_id
        where = f"{where}, {type(command).__name__} {dedup_id!r}"
        if result.code != OK and result.code not in error_codes:
            raise _violation("result-codes", f"{where}: unknown result code {result.code!r}")
        event = decoded[position] if position < len(decoded) else None
        outcome = self.outcomes.get(dedup_id)
        if outcome is not None and outcome.command is not None:
            assert outcome.result is not None
            if outcome.command == command:
                if result != outcome.result:
                    raise _violation(
                        "exactly-once", f"{where}: a retry answered {result}, the first outcome was {outcome.result}"
                    )
            elif result.code != ErrorCode.DEDUP_ID_REUSED:
                raise _violation("exactly-once", f"{where}: reused with another payload, answered {result.code}")
            if event is not None and event.dedup_id == dedup_id:
                raise _violation("exactly-once", f"{where}: applied again (event seq {event.seq})")
            return position
        if outcome is not None:  # held by a null compensation: the late original is rejected, for good
            if result.code != ErrorCode.ALREADY_COMPENSATED:
                raise _violation("compensation", f"{where}: an original after its null compensation answered {result.code}")
            outcome.command, outcome.result = command, result
            self._check_dedup_record(where, machine, command, result)
            return position
        self.outcomes[dedup_id] = _Outcome(command, result)
        self._check_dedup_record(where, machine, command, result)
        if isinstance(command, Compensate):
            self._check_compensation_kind(where, command, result)
        if not result.ok:
            return position
        if event is None or event.dedup_id != dedup_id or event.seq != result.seq:
            raise _violation("event-per-command", f"{where}: accepted with seq {result.seq} but its event is not next")
        if event.command != command:
            raise _violation("event-per-command", f"{where}: event seq {event.seq} carries another command")
        if event.actor != actor:
            raise _violation("actor", f"{where}: event seq {event.seq} names {event.actor} as its sender, not {actor}")
        if dedup_id in self.applied_dedup_ids:
            raise _violation("exactly-once", f"{where}: a second event (seq {event.seq}) for the same dedup_id")
        self.applied_dedup_ids.add(dedup_id)
        expected_type = self._expected_event_type(command, result)
        if event.type != expected_type:
            raise _violation("event-per-command", f"{where}: event type {event.type}, expected {expected_type}")
        self._check_changes(where, event, self._expected_changes(where, command, event, touched_txns))
        return position + 1

    def _check_dedup_record(self, where: str, machine: StateMachine, command: Command, result: Result) -> None:
        record = machine.dedup.get(command.dedup_id)
        if record is None or record.result != result or record.command != command:
            raise _violation("exactly-once", f"{where}: the dedup store does not hold this command and its outcome")

    def _check_compensation_kind(self, where: str, command: Compensate, result: Result) -> None:
        original_id = command.original_dedup_id
        if original_id in self.compensated:
            if result.code != ErrorCode.ALREADY_COMPENSATED:
                raise _violation("compensation", f"{where}: {original_id!r} was compensated before, answered {result.code}")
            return
        if not result.ok:
            return
        original = self.outcomes.get(original_id)
        accepted = original is not None and original.result is not None and original.result.ok
        expected = Compensation.COMPENSATED if accepted else Compensation.NULL_COMPENSATED
        if result.compensation != expected:
            raise _violation("compensation", f"{where}: {result.compensation} where {expected} was due")
        if original is None:
            # The original has not been seen: it is rejected whenever it comes.
            self.outcomes[original_id] = _Outcome(None, None)
        self.compensated[original_id] = command.dedup_id

    @staticmethod
    def _expected_event_type(command: Command, result: Result) -> str:
        if isinstance(command, Compensate):
            if result.compensation == Compensation.NULL_COMPENSATED:
                return EventType.NULL_COMPENSATED
            return EventType.COMPENSATED
        return _event_type_of[type(command)]

    # ------------------------------------------------------------------ what each event must change

    def _expected_changes(self, where: str, command: Command, event: Event, touched_txns: list[str]) -> dict[str, _Money | None]:
        """account_id -> its money after the event (None: money unchanged, other fields change)."""
        if isinstance(command, CreateAccount):
            return {command.account_id: _Money(0, {}, {}, {})}
        if isinstance(command, UpdateLimits | LockAccount | UnlockAccount | DeleteAccount | SetVelocityLimits):
            return {command.account_id: None}
        if isinstance(command, Transfer):
            return self._net_changes(where, {command.from_account_id: -command.amount, command.to_account_id: command.amount})
        if isinstance(command, BatchBalanceOperation):
            for leg in command.legs:
                self.totals[leg.asset] = self.totals.get(leg.asset, 0) + leg.amount
            return self._net_changes(where, _net_of(command.legs))
        if isinstance(command, Reserve):
            money = self._money(where, command.account_id)
            money.available -= command.amount
            money.reservations[command.reservation_id] = money.reservations.get(command.reservation_id, 0) + command.amount
            return {command.account_id: money}
        if isinstance(command, Release):
            return {command.account_id: self._released(where, command.account_id, command.reservation_id, command.amount)}
        if isinstance(command, TccTry):
            return self._tried(where, command, event, touched_txns)
        if isinstance(command, TccConfirm | TccCancel):
            return self._finished(where, command, touched_txns)
        assert isinstance(command, Compensate)
        if event.type == EventType.NULL_COMPENSATED:
            return {}
        outcome = self.outcomes[command.original_dedup_id]
        original = outcome.command
        if isinstance(original, Transfer):
            return self._net_changes(where, {original.to_account_id: -original.amount, original.from_account_id: original.amount})
        if isinstance(original, BatchBalanceOperation):
            for leg in original.legs:
                self.totals[leg.asset] = self.totals.get(leg.asset, 0) - leg.amount
            return self._net_changes(where, {account_id: -amount for account_id, amount in _net_of(original.legs).items()})
        if isinstance(original, Reserve):
            return {original.account_id: self._released(where, original.account_id, original.reservation_id, original.amount)}
        raise _violation("compensation", f"{where}: compensated a {type(original).__name__}, which is not compensable")

    def _money(self, where: str, account_id: str) -> _Money:
        view = self.views.get(account_id)
        if view is None:
            raise _violation("events-match-state", f"{where}: changed account {account_id} has no earlier event")
        return _Money.of(view)

    def _net_changes(self, where: str, net: dict[str, int]) -> dict[str, _Money | None]:
        changes: dict[str, _Money | None] = {}
        for account_id, delta in net.items():
            money = self._money(where, account_id)
            money.available += delta
            changes[account_id] = money
        return changes

    def _released(self, where: str, account_id: str, reservation_id: str, amount: int | None) -> _Money:
        money = self._money(where, account_id)
        reserved = money.reservations.get(reservation_id)
        if reserved is None or (amount is not None and amount > reserved):
            raise _violation("events-match-state", f"{where}: released more than reservation {reservation_id} held")
        amount = reserved if amount is None else amount
        if amount == reserved:
            del money.reservations[reservation_id]
        else:
            money.reservations[reservation_id] = reserved - amount
        money.available += amount
        return money

    def _tried(self, where: str, command: TccTry, event: Event, touched_txns: list[str]) -> dict[str, _Money | None]:
        if command.txn_id in self.txns:
            raise _violation("tcc", f"{where}: transaction {command.txn_id} tried twice")
        changes: dict[str, _Money | None] = {}
        for account_id, (amount_out, amount_in) in _holds_of(command.legs).items():
            money = self._money(where, account_id)
            if amount_out:
                money.available -= amount_out
                money.pending_out[command.txn_id] = amount_out
            if amount_in:
                money.pending_in[command.txn_id] = amount_in
            changes[account_id] = money
        deadline_ms = None if command.timeout_s is None else event.time_ms + command.timeout_s * 1000
        self.txns[command.txn_id] = _Txn("TRIED", command.legs, deadline_ms)
        touched_txns.append(command.txn_id)
        return changes

    def _finished(self, where: str, command: TccConfirm | TccCancel, touched_txns: list[str]) -> dict[str, _Money | None]:
        txn = self.txns.get(command.txn_id)
        confirm = isinstance(command, TccConfirm)
        if txn is None:
            raise _violation("tcc", f"{where}: finished transaction {command.txn_id}, which was never tried")
        touched_txns.append(command.txn_id)
        done_state = "CONFIRMED" if confirm else "CANCELLED"
        if txn.state == done_state:
            return {}  # a repeated phase two: accepted, and nothing moves
        if txn.state != "TRIED":
            raise _violation("tcc", f"{where}: transaction {command.txn_id} was {txn.state}, yet {done_state} was accepted")
        changes = self._release_holds(command.txn_id, txn, confirm=confirm)
        txn.state = done_state
        return changes

    def _release_holds(self, txn_id: str, txn: _Txn, *, confirm: bool) -> dict[str, _Money | None]:
        where = f"transaction {txn_id}"
        changes: dict[str, _Money | None] = {}
        for account_id, (amount_out, amount_in) in _holds_of(txn.legs).items():
            money = self._money(where, account_id)
            if money.pending_out.pop(txn_id, 0) != amount_out or money.pending_in.pop(txn_id, 0) != amount_in:
                raise _violation("tcc", f"{where}: account {account_id} does not hold what the try put on it")
            if confirm:
                money.available += amount_in
            else:
                money.available += amount_out
            changes[account_id] = money
        if confirm:
            for leg in txn.legs:
                self.totals[leg.asset] = self.totals.get(leg.asset, 0) + leg.amount
        return changes

    def _check_changes(self, where: str, event: Event, expected: dict[str, _Money | None]) -> None:
        where = f"{where}, event seq {event.seq} ({event.type})"
        changed = [account.account_id for account in event.accounts]
        if sorted(changed) != sorted(expected) or len(set(changed)) != len(changed):
            raise _violation("events-match-state", f"{where}: changed accounts {changed}, expected {sorted(expected)}")
        for account in event.accounts:
            account_id = account.account_id
            before = self.views.get(account_id)
            version_before = 0 if before is None else before.version
            if account.version != version_before + 1:
                raise _violation(
                    "version", f"{where}: account {account_id} went from version {version_before} to {account.version}"
                )
            money = expected[account_id]
            if money is None:
                assert before is not None
                money = _Money.of(before)
            if _Money.of(account) != money:
                raise _violation("money-movement", f"{where}: account {account_id} holds {_Money.of(account)}, expected {money}")
            if before is not None and (account.asset, account.scale) != (before.asset, before.scale):
                raise _violation("events-match-state", f"{where}: account {account_id} changed its asset or scale")
            self._check_account_fields(where, event.command, account, before)
            self.views[account_id] = account

    @staticmethod
    def _check_account_fields(where: str, command: Command | None, account: Account, before: Account | None) -> None:
        """State, limits and metadata: set by the commands that set them, unchanged by all others."""
        expected_state = None if before is None else before.state
        if isinstance(command, CreateAccount):
            expected_state = AccountState.NORMAL
            if account.metadata != (command.metadata or {}):
                raise _violation("events-match-state", f"{where}: account {account.account_id} has other metadata than created")
        elif before is not None and account.metadata != before.metadata:
            raise _violation("events-match-state", f"{where}: account {account.account_id} changed its metadata")
        if isinstance(command, LockAccount):
            expected_state = AccountState.LOCKED
        elif isinstance(command, UnlockAccount):
            expected_state = AccountState.NORMAL
        elif isinstance(command, DeleteAccount):
            expected_state = AccountState.DELETED
        if account.state != expected_state:
            raise _violation(
                "events-match-state", f"{where}: account {account.account_id} is {account.state}, not {expected_state}"
            )
        if isinstance(command, UpdateLimits):
            assert before is not None
            lower = before.lower_limit if command.lower_limit is None else command.lower_limit
            upper = before.upper_limit if command.keep_upper_limit else command.upper_limit
            if (account.lower_limit, account.upper_limit) != (lower, upper):
                raise _violation("events-match-state", f"{where}: account {account.account_id} has other limits than set")
        elif before is not None and (account.lower_limit, account.upper_limit) != (before.lower_limit, before.upper_limit):
            raise _violation("events-match-state", f"{where}: account {account.account_id} changed its limits")

    # ------------------------------------------------------------------ the whole state

    def _audit_state(self, where: str, machine: StateMachine) -> None:
        accounts = machine.accounts
        if len(accounts) != len(self.views):
            raise _violation("events-match-state", f"{where}: {len(accounts)} accounts, {len(self.views)} created by events")
        totals: dict[str, int] = {}
        for account_id, account in accounts.items():
            if account != self.views.get(account_id):
                raise _violation("events-match-state", f"{where}: account {account_id} differs from its last event")
            reserved = sum(account.reservations.values())
            pending_out = sum(account.pending_out.values())
            pending_in = sum(account.pending_in.values())
            if account.available < account.lower_limit:
                raise _violation(
                    "limits", f"{where}: account {account_id} available {account.available} < lower {account.lower_limit}"
                )
            upper = account.upper_limit
            if upper is not None and account.available + reserved + pending_in + pending_out > upper:
                raise _violation("limits", f"{where}: account {account_id} holds more than its upper limit {upper}")
            totals[account.asset] = totals.get(account.asset, 0) + account.available + reserved + pending_out
        for asset in sorted(set(totals) | set(self.totals)):
            held, moved = totals.get(asset, 0), self.totals.get(asset, 0)
            if held != moved:
                raise _violation(
                    "conservation", f"{where}: {asset} accounts hold {held} minor units, but {moved} came in through the edges"
                )


def _net_of(legs: tuple[Leg, ...]) -> dict[str, int]:
    net: dict[str, int] = {}
    for leg in legs:
        net[leg.account_id] = net.get(leg.account_id, 0) + leg.amount
    return net


def _holds_of(legs: tuple[Leg, ...]) -> dict[str, tuple[int, int]]:
    """account_id -> (amount a TCC try takes out of available, amount it books in)."""
    holds: dict[str, tuple[int, int]] = {}
    for leg in legs:
        amount_out, amount_in = holds.get(leg.account_id, (0, 0))
        if leg.amount < 0:
            amount_out -= leg.amount
        else:
            amount_in += leg.amount
        holds[leg.account_id] = (amount_out, amount_in)
    return holds
