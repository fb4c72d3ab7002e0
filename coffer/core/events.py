"""Events, their canonical bytes, and the hash chain over them.

Canonical bytes of an event (defined here once; anyone can recompute them). Every event says which
format it is in; an event keeps, forever, the bytes it was written with (the chain covers them),
so a reader understands every format below, and refuses one newer than it knows.

Format 1 (protocol 1, written before the 128-bit release) — a MessagePack array of 7:

    [seq, log_index, time_ms, dedup_id, type, command, accounts]

Format 2 (protocol 2, the current one) — a MessagePack array of 9, the format number first:

    [2, seq, log_index, time_ms, dedup_id, type, command, accounts, actor]

Both are encoded by msgspec's MessagePack encoder with ``order="deterministic"`` (map keys
sorted), where ``command`` is the command's own tagged array (``None`` for an event no command
caused, such as a TCC timeout), ``accounts`` is an array of the changed accounts, each the array of
the fields of :class:`coffer.core.accounts.Account` in declaration order, as they were right after
the change, and ``actor`` (format 2) is ``[key_id, role]`` of the credential that sent the command
(``None`` when no credential was needed, or for an event no command caused). In format 2 an
integer beyond 64 bits is the MessagePack extension 1 of :mod:`coffer.core.encoding`; format 1
holds only integers of 64 bits. A reader tells the formats apart by the first bytes: ``0x97`` (an
array of 7) is format 1; ``0x99 0x02`` is format 2; an array whose first element is a larger
format number is from a newer release.

The chain: ``hash = SHA-256(prev_hash || canonical bytes)``, with ``prev_hash`` of seq 1 equal to
32 zero bytes, across formats. Whoever holds the head ``(seq, hash)`` can detect any edit, gap or
reorder of the history below it.
"""

from collections.abc import Iterable
from enum import StrEnum
from hashlib import sha256

import msgspec

from coffer.core.accounts import Account
from coffer.core.commands import Command, CommandFormat1, from_format_1
from coffer.core.encoding import Decoder

genesis_hash = bytes(32)

encoder = msgspec.msgpack.Encoder(order="deterministic")

event_format_version = 2  # the format this release writes
_format_1_prefix = 0x97  # a MessagePack array of 7
_format_2_prefix = b"\x99\x02"  # an array of 9 whose first element is 2


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
    TXN_DECIDED = "txn_decided"
    VELOCITY_LIMITS_SET = "velocity_limits_set"
    FLOW_REGISTERED = "flow_registered"
    FLOW_RUN_STARTED = "flow_run_started"
    FLOW_RUN_FINISHED = "flow_run_finished"


class Actor(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Who sent a command: the id of the credential (never the key) and its role."""

    key_id: str
    role: str


class Event(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The decoded canonical content of an event, in the layout of format 2.

    An event of format 1 decodes to the same fields with ``format_version`` 1 and no ``actor``.
    """

    format_version: int
    seq: int
    log_index: int
    time_ms: int
    dedup_id: str | None
    type: str
    command: Command | None
    accounts: tuple[Account, ...]
    actor: Actor | None = None


class _EventFormat1(msgspec.Struct, frozen=True, array_like=True, gc=False):
    seq: int
    log_index: int
    time_ms: int
    dedup_id: str | None
    type: str
    command: CommandFormat1 | None
    accounts: tuple[Account, ...]


class EventFormatError(ValueError):
    """The bytes are not an event of a format this release understands."""


def event_format(body: bytes) -> int:
    """The format number of an event's canonical bytes (see the module docstring)."""
    if body[:1] == bytes((_format_1_prefix,)):
        return 1
    if body[:2] == _format_2_prefix:
        return 2
    # A future format keeps its number as the first element of an array.
    if len(body) >= 2 and 0x90 <= body[0] <= 0x9F and 2 < body[1] <= 0x7F:
        raise EventFormatError(
            f"event format {body[1]} is newer than this release understands (up to {event_format_version}): upgrade Coffer"
        )
    raise EventFormatError("not the canonical bytes of an event")


class _EventDecoder:
    """Decodes the canonical bytes of every event format into :class:`Event`."""

    def __init__(self) -> None:
        self._format_1 = Decoder(_EventFormat1)
        self._format_2 = Decoder(Event)

    def decode(self, body: bytes) -> Event:
        if event_format(body) == 2:
            return self._format_2.decode(body)
        old = self._format_1.decode(body)
        command = None if old.command is None else from_format_1(old.command)
        return Event(1, old.seq, old.log_index, old.time_ms, old.dedup_id, old.type, command, old.accounts)


class EventRecord(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An event as the state machine emits it: canonical bytes plus its link in the chain."""

    seq: int
    body: bytes
    prev_hash: bytes
    hash: bytes

    def decode(self) -> Event:
        return event_decoder.decode(self.body)


event_decoder = _EventDecoder()


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


class AccountIndex(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The fields of an account in an event that stores index, without decoding the rest."""

    account_id: str
    asset: str
    scale: int
    state: str
    lower_limit: msgspec.Raw
    upper_limit: msgspec.Raw
    available: int
    reservations: msgspec.Raw
    pending_in: msgspec.Raw
    pending_out: msgspec.Raw
    version: int


class EventIndex(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The fields of an event that stores index (format 2's layout; a trailing actor is skipped)."""

    format_version: int
    seq: int
    log_index: int
    time_ms: int
    dedup_id: str | None
    type: str
    command: msgspec.Raw
    accounts: list[AccountIndex]


class _EventIndexFormat1(msgspec.Struct, frozen=True, array_like=True, gc=False):
    seq: int
    log_index: int
    time_ms: int
    dedup_id: str | None
    type: str
    command: msgspec.Raw
    accounts: list[AccountIndex]


_index_decoder = msgspec.msgpack.Decoder(EventIndex)
_index_decoder_format_1 = msgspec.msgpack.Decoder(_EventIndexFormat1)


def index_event(body: bytes) -> EventIndex:
    """The indexed fields of an event's canonical bytes, in any format (cheaper than a decode)."""
    format_version = event_format(body)
    try:
        if format_version == 2:
            return _index_decoder.decode(body)
        old = _index_decoder_format_1.decode(body)
        return EventIndex(1, old.seq, old.log_index, old.time_ms, old.dedup_id, old.type, old.command, old.accounts)
    except msgspec.ValidationError as error:
        if "got `ext`" not in str(error):
            raise
    # Rare: a balance beyond 64 bits. Decode the whole event and index that.
    event = event_decoder.decode(body)
    raw = msgspec.Raw(b"\xc0")  # the skipped fields are never read from an index
    accounts = [
        AccountIndex(
            account.account_id, account.asset, account.scale, account.state, raw, raw, account.available, raw, raw, raw, account.version
        )
        for account in event.accounts
    ]
    return EventIndex(event.format_version, event.seq, event.log_index, event.time_ms, event.dedup_id, event.type, raw, accounts)
