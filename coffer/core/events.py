"""Events, their canonical bytes, and the hash chain over them.

Canonical bytes of an event (defined here once; anyone can recompute them):

    msgpack array [seq, log_index, time_ms, dedup_id, type, command, accounts]

encoded by msgspec's MessagePack encoder with ``order="deterministic"`` (map keys sorted), where
``command`` is the command's own tagged array (``None`` for an event no command caused, such as a
TCC timeout) and ``accounts`` is an array of the changed accounts, each the array of the fields
of :class:`coffer.core.accounts.Account` in declaration order, as they were right after the
change.

The chain: ``hash = SHA-256(prev_hash || canonical bytes)``, with ``prev_hash`` of seq 1 equal to
32 zero bytes. Whoever holds the head ``(seq, hash)`` can detect any edit, gap or reorder of the
history below it.
"""

from collections.abc import Iterable
from enum import StrEnum
from hashlib import sha256

import msgspec

from coffer.core.accounts import Account
from coffer.core.commands import Command

genesis_hash = bytes(32)

encoder = msgspec.msgpack.Encoder(order="deterministic")


class EventType(StrEnum):
    ACCOUNT_CREATED = "account_created"
    LIMITS_UPDATED = "limits_updated"
    ACCOUNT_LOCKED = "account_locked"
    ACCOUNT_UNLOCKED = "account_unlocked"
    ACCOUNT_DELETED = "account_deleted"
    TRANSFERRED = "transferred"
    BALANCES_CHANGED = "balances_changed"
    RESERVED = "reserved"
    RELEASED = "released"
    TCC_TRIED = "tcc_tried"
    TCC_CONFIRMED = "tcc_confirmed"
    TCC_CANCELLED = "tcc_cancelled"
    TCC_EXPIRED = "tcc_expired"
    COMPENSATED = "compensated"
    NULL_COMPENSATED = "null_compensated"


class Event(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The decoded canonical content of an event (see the module docstring)."""

    seq: int
    log_index: int
    time_ms: int
    dedup_id: str | None
    type: str
    command: Command | None
    accounts: tuple[Account, ...]


class EventRecord(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An event as the state machine emits it: canonical bytes plus its link in the chain."""

    seq: int
    body: bytes
    prev_hash: bytes
    hash: bytes

    def decode(self) -> Event:
        return event_decoder.decode(self.body)


event_decoder = msgspec.msgpack.Decoder(Event)


def chain_hash(prev_hash: bytes, body: bytes) -> bytes:
    return sha256(prev_hash + body).digest()


class ChainError(ValueError):
    """The history is not a gapless, correctly linked chain; ``seq`` is the first bad event."""

    def __init__(self, seq: int, message: str) -> None:
        super().__init__(f"seq {seq}: {message}")
        self.seq = seq


def verify_chain(records: Iterable[EventRecord], prev_seq: int = 0, prev_hash: bytes = genesis_hash) -> tuple[int, bytes]:
    """Check that ``records`` continue the chain at ``(prev_seq, prev_hash)``; return the new head.

    Recomputes every hash from the canonical bytes, so an edited body, a missing or reordered
    event, or a forged link is found at the first event where it shows.
    """
    for record in records:
        if record.seq != prev_seq + 1:
            raise ChainError(prev_seq + 1, f"expected seq {prev_seq + 1}, found {record.seq}")
        if record.prev_hash != prev_hash:
            raise ChainError(record.seq, "prev_hash does not match the previous event's hash")
        if chain_hash(prev_hash, record.body) != record.hash:
            raise ChainError(record.seq, "hash does not match the event's canonical bytes")
        try:
            body_seq = event_decoder.decode(record.body).seq
        except (msgspec.MsgspecError, ValueError) as error:  # bad UTF-8 surfaces as a ValueError
            raise ChainError(record.seq, f"event body is not an event: {error}") from None
        if body_seq != record.seq:
            raise ChainError(record.seq, "event body carries another seq")
        prev_seq, prev_hash = record.seq, record.hash
    return prev_seq, prev_hash
