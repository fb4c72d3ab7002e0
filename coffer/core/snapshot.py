"""Snapshot and restore of a whole state machine, as deterministic bytes, and its state hash.

The snapshot is the msgpack encoding (map keys sorted) of :class:`SnapshotState`: every part of
the replicated state — accounts, asset scales, the dedup store, TCC transactions, compensations,
the log position, the ledger clock, the event seq and the chain head. Two replicas that applied
the same entries produce the same bytes, whatever order their dicts were filled in, so the
SHA-256 of the snapshot (the *state hash*) is how replicas prove they agree.
"""

import heapq
from hashlib import sha256

import msgspec

from coffer.core.accounts import Account, DedupRecord, Txn
from coffer.core.events import encoder
from coffer.core.state_machine import StateMachine

snapshot_format_version = 1


class SnapshotState(msgspec.Struct, array_like=True, gc=False):
    format_version: int
    log_index: int
    time_ms: int
    seq: int
    head: bytes
    accounts: dict[str, Account]
    asset_scales: dict[str, int]
    dedup: dict[str, DedupRecord]
    txns: dict[str, Txn]
    compensations: dict[str, str]


_decoder = msgspec.msgpack.Decoder(SnapshotState)


class SnapshotError(ValueError):
    """The bytes are not a snapshot this version of Coffer can restore."""


def take_snapshot(machine: StateMachine) -> bytes:
    """Deterministic bytes of the whole state (O(state); run it off the apply loop's hot path)."""
    state = SnapshotState(
        snapshot_format_version,
        machine.log_index,
        machine.time_ms,
        machine.seq,
        machine.head,
        machine.accounts,
        machine.asset_scales,
        machine.dedup,
        machine.txns,
        machine.compensations,
    )
    return encoder.encode(state)


def state_hash(machine: StateMachine) -> bytes:
    return sha256(take_snapshot(machine)).digest()


def restore_snapshot(data: bytes) -> StateMachine:
    """A state machine equal to the one the snapshot was taken of."""
    try:
        state = _decoder.decode(data)
    except (msgspec.MsgspecError, ValueError) as error:  # bad UTF-8 surfaces as a ValueError
        raise SnapshotError(f"not a Coffer snapshot: {error}") from error
    if state.format_version != snapshot_format_version:
        raise SnapshotError(f"snapshot format {state.format_version} is not {snapshot_format_version}")
    machine = StateMachine()
    machine.log_index = state.log_index
    machine.time_ms = state.time_ms
    machine.seq = state.seq
    machine.head = state.head
    machine.accounts = state.accounts
    machine.asset_scales = state.asset_scales
    machine.dedup = state.dedup
    machine.txns = state.txns
    machine.compensations = state.compensations
    # The expiry heap is derived: the live tries with a deadline, in (deadline, txn_id) order.
    machine.expiries = sorted(
        (txn.deadline_ms, txn.txn_id) for txn in state.txns.values() if txn.state == "TRIED" and txn.deadline_ms is not None
    )
    heapq.heapify(machine.expiries)
    return machine
