"""Snapshot and restore of a whole state machine, as deterministic bytes, and its state hash.

The snapshot is the msgpack encoding (map keys sorted) of :class:`SnapshotState`: every part of
the replicated state — the protocol version, accounts, asset scales, the dedup store, TCC
transactions, compensations, the log position, the ledger clock, the event seq and the chain
head. Two replicas that applied the same entries produce the same bytes, whatever order their
dicts were filled in, so the SHA-256 of the snapshot (the *state hash*) is how replicas prove they
agree.

Formats (the first element of the array says which):
- 1: ``[1, log_index, time_ms, seq, head, accounts, asset_scales, dedup, txns, compensations]``,
  written before protocol versions existed; it restores as protocol 1.
- 2: ``[2, protocol_version, log_index, time_ms, seq, head, accounts, asset_scales, dedup, txns,
  compensations, decisions, [velocity, velocity_holds], [flows, flow_runs]]``, integers beyond
  64 bits as in :mod:`coffer.core.encoding`. (The last two were added before protocol 2 was
  released; a snapshot without them restores them empty.)
- 3: the layout of 2 and one more element, ``[older, newer]``: the two generations of effects of
  the newest accepted commands (dedup_id -> :class:`coffer.core.accounts.Effect`, its log index
  and the accounts right after), so that a retry of one is answered from the state alone, also on
  a replica whose history starts at this snapshot. A format-1 or 2 snapshot restores with none:
  retries of its commands are answered from their events.
A snapshot of a newer format is refused with a message that says so.
"""

import heapq
from hashlib import sha256

import msgspec

from coffer.core.accounts import Account, Decision, DedupRecord, Effect, FlowRun, FlowVersion, Result, Txn
from coffer.core.commands import CommandFormat1, from_format_1
from coffer.core.encoding import Decoder, encode
from coffer.core.state_machine import StateMachine, protocol_version_max
from coffer.core.velocity import Velocity, VelocityHold

snapshot_format_version = 3


class VelocityState(msgspec.Struct, array_like=True, gc=False):
    accounts: dict[str, Velocity] = {}
    holds: dict[str, tuple[VelocityHold, ...]] = {}


class FlowState(msgspec.Struct, array_like=True, gc=False):
    flows: dict[str, list[FlowVersion]] = {}
    runs: dict[str, FlowRun] = {}


class EffectsState(msgspec.Struct, array_like=True, gc=False):
    older: dict[str, Effect] = {}
    newer: dict[str, Effect] = {}


class SnapshotState(msgspec.Struct, array_like=True, gc=False):
    format_version: int
    protocol_version: int
    log_index: int
    time_ms: int
    seq: int
    head: bytes
    accounts: dict[str, Account]
    asset_scales: dict[str, int]
    dedup: dict[str, DedupRecord]
    txns: dict[str, Txn]
    compensations: dict[str, str]
    decisions: dict[str, Decision] = {}
    velocity: VelocityState = msgspec.field(default_factory=VelocityState)
    flows: FlowState = msgspec.field(default_factory=FlowState)
    effects: EffectsState = msgspec.field(default_factory=EffectsState)


class _DedupRecordFormat1(msgspec.Struct, frozen=True, array_like=True, gc=False):
    command: CommandFormat1 | None
    result: Result


class _SnapshotStateFormat1(msgspec.Struct, array_like=True, gc=False):
    format_version: int
    log_index: int
    time_ms: int
    seq: int
    head: bytes
    accounts: dict[str, Account]
    asset_scales: dict[str, int]
    dedup: dict[str, _DedupRecordFormat1]
    txns: dict[str, Txn]
    compensations: dict[str, str]


_decoder = Decoder(SnapshotState)
_decoder_format_1 = Decoder(_SnapshotStateFormat1)


class SnapshotError(ValueError):
    """The bytes are not a snapshot this version of Coffer can restore."""


def take_snapshot(machine: StateMachine) -> bytes:
    """Deterministic bytes of the whole state (O(state); run it off the apply loop's hot path)."""
    return encode(snapshot_state(machine))


def snapshot_state(machine: StateMachine) -> SnapshotState:
    """What a snapshot holds: the machine's parts, shared, not copied."""
    return SnapshotState(
        snapshot_format_version,
        machine.protocol_version,
        machine.log_index,
        machine.time_ms,
        machine.seq,
        machine.head,
        machine.accounts,
        machine.asset_scales,
        machine.dedup,
        machine.txns,
        machine.compensations,
        machine.decisions,
        VelocityState(machine.velocity, machine.velocity_holds),
        FlowState(machine.flows, machine.flow_runs),
        EffectsState(machine.effects_older, machine.effects),
    )


def state_hash(machine: StateMachine) -> bytes:
    return sha256(take_snapshot(machine)).digest()


def restore_snapshot(data: bytes) -> StateMachine:
    """A state machine equal to the one the snapshot was taken of."""
    format_version = snapshot_format(data)
    try:
        if format_version == 1:
            old = _decoder_format_1.decode(data)
            dedup = {
                dedup_id: DedupRecord(None if record.command is None else from_format_1(record.command), record.result)
                for dedup_id, record in old.dedup.items()
            }
            state = SnapshotState(
                2, 1, old.log_index, old.time_ms, old.seq, old.head, old.accounts, old.asset_scales, dedup, old.txns, old.compensations
            )
        else:
            state = _decoder.decode(data)
    except (msgspec.MsgspecError, ValueError) as error:  # bad UTF-8 surfaces as a ValueError
        raise SnapshotError(f"not a Coffer snapshot: {error}") from error
    if state.protocol_version > protocol_version_max:
        raise SnapshotError(
            f"the snapshot's ledger runs protocol {state.protocol_version}, newer than this release understands "
            f"(up to {protocol_version_max}): upgrade Coffer"
        )
    machine = StateMachine()
    if state.protocol_version:
        machine.upgrade(state.protocol_version)
    machine.log_index = state.log_index
    machine.time_ms = state.time_ms
    machine.seq = state.seq
    machine.head = state.head
    machine.accounts = state.accounts
    machine.asset_scales = state.asset_scales
    machine.dedup = state.dedup
    machine.txns = state.txns
    machine.compensations = state.compensations
    machine.decisions = state.decisions
    machine.velocity = state.velocity.accounts
    machine.velocity_holds = state.velocity.holds
    machine.flows = state.flows.flows
    machine.flow_runs = state.flows.runs
    unfinished = sorted((run.seq, run.run_id) for run in state.flows.runs.values() if run.outcome is None)
    machine.open_flow_runs = dict.fromkeys(run_id for _, run_id in unfinished)
    # The expiry heap is derived: the live tries with a deadline, in (deadline, txn_id) order.
    machine.expiries = sorted(
        (txn.deadline_ms, txn.txn_id) for txn in state.txns.values() if txn.state == "TRIED" and txn.deadline_ms is not None
    )
    heapq.heapify(machine.expiries)
    machine.open_txns = dict.fromkeys(txn.txn_id for txn in state.txns.values() if txn.state == "TRIED")
    # Only which generation an effect is in matters, not its place in it (snapshots sort keys).
    machine.effects_older = state.effects.older
    machine.effects = state.effects.newer
    return machine


def snapshot_format(data: bytes) -> int:
    """The format number a snapshot's bytes declare; refuses one newer than this release knows."""
    # Every format is a MessagePack array (0x90-0x9f: up to 15 elements) whose first element is
    # the format number, a positive fixint.
    if len(data) < 2 or not 0x90 <= data[0] <= 0x9F or data[1] > 0x7F:
        raise SnapshotError("not a Coffer snapshot")
    if data[1] > snapshot_format_version:
        raise SnapshotError(
            f"snapshot format {data[1]} is newer than this release understands (up to {snapshot_format_version}): upgrade Coffer"
        )
    if data[1] < 1:
        raise SnapshotError(f"unknown snapshot format {data[1]}")
    return data[1]
