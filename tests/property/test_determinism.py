"""Determinism of the core: equal entries give equal bytes, and a snapshot is a full restart point.

Every replica applies the same log and must reach the same state byte for byte (SPEC invariant 4);
a replica restarts from snapshot + log. So, for random entries (the same generator as the model
comparison, which reaches retries, expiries, compensations and every rejection):
- two fresh machines give equal results, events, snapshot bytes and state hash after every entry,
  also when the second one runs in another process with another string-hash seed, so that an
  iteration over a set or a hash-ordered structure cannot hide behind the same process;
- snapshot -> restore -> apply the rest gives the same results, events and final snapshot as
  applying everything in one go, whether it restarts once or after many entries;
- a snapshot that is not one (random bytes, cut short, trailing bytes, another format version,
  damaged bytes) is refused with SnapshotError and nothing else.
"""

import contextlib
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from hashlib import sha256

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coffer.core.accounts import Result
from coffer.core.commands import Command, CreateAccount
from coffer.core.events import EventRecord
from coffer.core.snapshot import SnapshotError, SnapshotState, restore_snapshot, state_hash, take_snapshot
from coffer.core.state_machine import StateMachine

from .test_state_machine_vs_model import DERANDOMIZE, EXAMPLES, START_TIME_MS, Entry, ledger_entries

# Each example here runs a machine several times over (or in two other processes): fewer of them.
common_settings = settings(
    max_examples=max(EXAMPLES // 8, 10),
    derandomize=DERANDOMIZE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Applied = tuple[list[Result], list[EventRecord]]


def apply_entry(machine: StateMachine, log_index: int, time_ms: int, commands: list[Command]) -> Applied:
    return machine.apply(log_index, time_ms, commands)


def timed(entries: list[Entry]) -> list[tuple[int, int, list[Command]]]:
    """(log_index, time_ms, commands) for each entry, the way the log hands them out."""
    timed_entries = []
    time_ms = START_TIME_MS
    for log_index, (time_step_ms, commands) in enumerate(entries, start=1):
        time_ms += time_step_ms
        timed_entries.append((log_index, time_ms, commands))
    return timed_entries


@common_settings
@given(entries=ledger_entries())
def test_two_replicas_agree_after_every_entry(entries: list[Entry]) -> None:
    first, second = StateMachine(), StateMachine()
    for log_index, time_ms, commands in timed(entries):
        assert apply_entry(first, log_index, time_ms, commands) == apply_entry(second, log_index, time_ms, commands)
        snapshot = take_snapshot(first)
        assert snapshot == take_snapshot(second)
        assert state_hash(first) == state_hash(second) == sha256(snapshot).digest()


@common_settings
@given(entries=ledger_entries(), data=st.data())
def test_restoring_a_snapshot_and_replaying_the_rest_changes_nothing(entries: list[Entry], data: st.DataObject) -> None:
    timed_entries = timed(entries)
    # Restart points: after any subset of the entries (none, one, or many restarts in a row).
    restarts = data.draw(st.sets(st.integers(0, len(timed_entries))), label="restart after entries")
    whole = StateMachine()
    restarted = StateMachine()
    for done, (log_index, time_ms, commands) in enumerate(timed_entries):
        if done in restarts:
            snapshot = take_snapshot(restarted)
            restarted = restore_snapshot(snapshot)
            # The restored machine is the snapshot, byte for byte, although its dicts were filled
            # in another order (sorted keys) than the original's.
            assert take_snapshot(restarted) == snapshot
        expected = apply_entry(whole, log_index, time_ms, commands)
        assert apply_entry(restarted, log_index, time_ms, commands) == expected
    if len(timed_entries) in restarts:
        restarted = restore_snapshot(take_snapshot(restarted))
    assert take_snapshot(restarted) == take_snapshot(whole)
    assert state_hash(restarted) == state_hash(whole)


# A replica in a child process, started once per hash seed: each request is one run of entries
# (length-prefixed msgpack on stdin); each answer the state hash after each entry.
_child_replica_script = """
import struct
import sys

import msgspec

from coffer.core.commands import Command, CreateAccount
from coffer.core.snapshot import state_hash
from coffer.core.state_machine import StateMachine

decoder = msgspec.msgpack.Decoder(list[tuple[int, int, list[Command]]])
while header := sys.stdin.buffer.read(4):
    entries = decoder.decode(sys.stdin.buffer.read(struct.unpack(">I", header)[0]))
    machine = StateMachine()
    hashes = []
    for log_index, time_ms, commands in entries:
        machine.apply(log_index, time_ms, commands)
        hashes.append(state_hash(machine))
    answer = msgspec.msgpack.encode(hashes)
    sys.stdout.buffer.write(struct.pack(">I", len(answer)) + answer)
    sys.stdout.buffer.flush()
"""


class ChildReplica:
    """A state machine in another process, with its own PYTHONHASHSEED."""

    def __init__(self, hash_seed: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _child_replica_script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(os.environ, PYTHONHASHSEED=str(hash_seed)),
        )

    def state_hashes(self, timed_entries: list[tuple[int, int, list[Command]]]) -> list[bytes]:
        assert self.process.stdin is not None and self.process.stdout is not None
        request = msgspec.msgpack.encode(timed_entries)
        self.process.stdin.write(struct.pack(">I", len(request)) + request)
        self.process.stdin.flush()
        header = self.process.stdout.read(4)
        assert len(header) == 4, f"the child replica died (exit code {self.process.poll()})"
        return msgspec.msgpack.decode(self.process.stdout.read(struct.unpack(">I", header)[0]), type=list[bytes])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def child_replicas() -> Iterator[list[ChildReplica]]:
    # This process runs under a random hash seed (unless PYTHONHASHSEED is set); the children
    # under two fixed, different ones.
    replicas = [ChildReplica(hash_seed) for hash_seed in (1, 2)]
    yield replicas
    for replica in replicas:
        replica.close()


@common_settings
@given(entries=ledger_entries())
def test_replicas_in_other_processes_agree(child_replicas: list[ChildReplica], entries: list[Entry]) -> None:
    timed_entries = timed(entries)
    machine = StateMachine()
    here = []
    for log_index, time_ms, commands in timed_entries:
        machine.apply(log_index, time_ms, commands)
        here.append(state_hash(machine))
    for replica in child_replicas:
        assert replica.state_hashes(timed_entries) == here


# ---------------------------------------------------------------------------- bad snapshots


@settings(common_settings, max_examples=200)
@given(data=st.binary(max_size=300))
def test_random_bytes_are_not_a_snapshot(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        restore_snapshot(data)


def _snapshot_after(entries: list[Entry]) -> bytes:
    machine = StateMachine()
    for log_index, time_ms, commands in timed(entries):
        machine.apply(log_index, time_ms, commands)
    return take_snapshot(machine)


@common_settings
@given(entries=ledger_entries(entries_max=8), data=st.data())
def test_a_cut_or_extended_snapshot_is_refused(entries: list[Entry], data: st.DataObject) -> None:
    snapshot = _snapshot_after(entries)
    cut = data.draw(st.integers(0, len(snapshot) - 1), label="keep bytes")
    with pytest.raises(SnapshotError):
        restore_snapshot(snapshot[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=8), label="trailing bytes")
    with pytest.raises(SnapshotError):
        restore_snapshot(snapshot + extra)


def test_another_format_version_is_refused() -> None:
    state = msgspec.msgpack.decode(take_snapshot(StateMachine()), type=SnapshotState)
    for version in (0, state.format_version + 1):
        with pytest.raises(SnapshotError):
            restore_snapshot(msgspec.msgpack.encode(msgspec.structs.replace(state, format_version=version)))


@common_settings
@given(entries=ledger_entries(entries_max=8), data=st.data())
def test_damaged_snapshot_bytes_are_refused_or_restored_never_crash(entries: list[Entry], data: st.DataObject) -> None:
    # A flipped byte may still spell a valid state (another balance, say): that is the state
    # hash's job to catch. What restore must never do is fail with anything but SnapshotError.
    damaged = bytearray(_snapshot_after(entries))
    position = data.draw(st.integers(0, len(damaged) - 1), label="position")
    damaged[position] ^= data.draw(st.integers(1, 255), label="flip")
    with contextlib.suppress(SnapshotError):
        restore_snapshot(bytes(damaged))


def test_a_snapshot_with_a_string_that_is_not_utf8_is_refused() -> None:
    # Found by the test above: msgspec reports bad UTF-8 as UnicodeDecodeError, which is not a
    # msgspec.DecodeError, so it escaped restore_snapshot instead of becoming SnapshotError.
    machine = StateMachine()
    machine.apply(1, START_TIME_MS, [CreateAccount(dedup_id="open", account_id="a0", asset="USD")])
    snapshot = take_snapshot(machine)
    assert snapshot.count(b"\xa2a0") >= 1  # "a0" as a msgpack fixstr
    with pytest.raises(SnapshotError):
        restore_snapshot(snapshot.replace(b"\xa2a0", b"\xa2\xff\xfe"))
