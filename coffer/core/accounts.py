"""Accounts, results and the other records the state machine keeps.

An :class:`Account` is mutable and owned by the state machine alone: a command checks everything
first and mutates only when every check has passed, so a rejected command never leaves a trace.
Events capture an account by encoding it at the moment of the change, never by reference.

All structs here are ``gc=False``: they hold only strings, integers and string-to-integer maps,
so they cannot form reference cycles, and keeping millions of them out of the cyclic garbage
collector is what keeps a long-running replica from pausing.
"""

from enum import StrEnum

import msgspec

from coffer.core.commands import Command, Metadata


class AccountState(StrEnum):
    NORMAL = "NORMAL"
    LOCKED = "LOCKED"
    DELETED = "DELETED"


class Account(msgspec.Struct, array_like=True, gc=False):
    account_id: str
    asset: str
    scale: int
    state: str
    lower_limit: int
    upper_limit: int | None
    available: int
    reservations: dict[str, int]
    pending_in: dict[str, int]
    pending_out: dict[str, int]
    version: int
    metadata: Metadata

    def held(self) -> int:
        """Money that counts toward the upper limit besides ``available``."""
        total = 0
        if self.reservations:
            total += sum(self.reservations.values())
        if self.pending_in:
            total += sum(self.pending_in.values())
        if self.pending_out:
            total += sum(self.pending_out.values())
        return total

    def is_empty(self) -> bool:
        return not (self.available or self.reservations or self.pending_in or self.pending_out)


OK = "OK"


class Compensation(StrEnum):
    COMPENSATED = "COMPENSATED"
    NULL_COMPENSATED = "NULL_COMPENSATED"


class Result(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The outcome of one command: ``OK`` and the seq of its event, or an error code.

    A result is part of the replicated state (the dedup store answers it again on retry), so it
    holds only what is deterministic: no timings, no node names.
    """

    code: str
    seq: int = 0
    message: str = ""
    account_id: str | None = None
    compensation: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == OK


class Effect(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What an accepted command did, as its answer shows it: the log index of its entry and the
    accounts its event carries, as they were right after the change (copies: never changed)."""

    log_index: int
    accounts: tuple[Account, ...]


class DedupRecord(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What a ``dedup_id`` was used for and how it ended.

    ``command`` is ``None`` for a null compensation: the compensation came first, and the
    original, whenever it arrives, is rejected. (What an accepted command did is kept apart, for
    the newest commands only: :meth:`coffer.core.state_machine.StateMachine.effect_of`.)
    """

    command: Command | None
    result: Result


class TxnState(StrEnum):
    TRIED = "TRIED"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


class TxnLeg(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The holds one TCC transaction put on one account: out of ``available``, and in."""

    account_id: str
    amount_out: int
    amount_in: int


class Txn(msgspec.Struct, array_like=True, gc=False):
    txn_id: str
    state: str
    legs: tuple[TxnLeg, ...]
    deadline_ms: int | None


class Decision(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What a commit point recorded for a cross-shard transaction (see ``commands.Decide``)."""

    txn_id: str
    commit: bool
    participants: tuple[int, ...]
    reason_code: str | None
    reason_message: str
    reason_account_id: str | None
    time_ms: int
    seq: int


class FlowVersion(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One registered version of a flow: its opaque definition and where the log put it."""

    version: int
    definition: bytes
    seq: int
    time_ms: int


class FlowRun(msgspec.Struct, array_like=True, gc=False):
    """A run of a flow as the ledger records it: what runs, and (once finished) how it ended."""

    run_id: str
    flow: str
    version: int
    params: bytes
    seq: int
    time_ms: int
    outcome: bytes | None = None
    finished_seq: int = 0
