"""The replica on real files: snapshots in a forked child, log segments dropped under them, and
recovery from snapshot + log giving back exactly the state that was there; and the replica with
the parts the simulator swaps in (a stepped store writer, a snapshot written in the caller)."""

import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from coffer.core.commands import BatchBalanceOperation, Command, CreateAccount, Leg, Transfer
from coffer.core.entries import encode_entry
from coffer.core.events import verify_chain
from coffer.core.snapshot import take_snapshot
from coffer.core.state_machine import StateMachine
from coffer.history.event_store import EventStore
from coffer.log.memory import MemoryLog
from coffer.log.wal import LocalWal
from coffer.replica import RecoveryStalled, Replica, SnapshotCorrupt, SnapshotJob, SnapshotWriter, read_snapshot_file

account_count = 20


def _entries(count: int, seed: int = 5) -> list[list[Command]]:
    rng = random.Random(seed)
    ids = [f"acct-{number}" for number in range(account_count)]
    entries: list[list[Command]] = [
        [CreateAccount(dedup_id=f"create-{account_id}", account_id=account_id, asset="USD") for account_id in ids],
        [BatchBalanceOperation(dedup_id="fund", legs=tuple(Leg(account_id=account_id, amount=10_000, asset="USD") for account_id in ids))],
    ]
    for number in range(count):
        commands: list[Command] = []
        for position in range(rng.randrange(1, 30)):
            source, target = rng.sample(ids, 2)
            commands.append(
                Transfer(dedup_id=f"t-{number}-{position}", from_account_id=source, to_account_id=target, amount=rng.randrange(1, 500), asset="USD")
            )
        entries.append(commands)
    return entries


def _open(data_dir: Path, segment_bytes: int = 4096, snapshot_entries: int = 10**9) -> Replica:
    replica = Replica(data_dir, LocalWal(data_dir / "log", segment_bytes_max=segment_bytes), snapshot_entries=snapshot_entries)
    replica.recover()
    return replica


def _feed(replica: Replica, entries: list[list[Command]]) -> None:
    for commands in entries:
        record = replica.log.append(encode_entry(commands))
        replica.apply(record, commands)
        replica.maybe_snapshot()


def test_snapshot_covers_the_log_and_recovery_gives_the_same_state(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    replica = _open(data_dir, snapshot_entries=25)
    entries = _entries(120)
    _feed(replica, entries[:100])
    replica.wait_for_snapshot()
    _feed(replica, entries[100:])
    replica.wait_for_snapshot()
    expected = take_snapshot(replica.machine)
    first_index_after_truncation = replica.log.first_index
    replica.close()

    snapshots = sorted((data_dir / "snapshots").glob("snapshot-*.bin"))
    assert 1 <= len(snapshots) <= 2, snapshots
    # Whole segments under the oldest kept snapshot are gone; the log still starts at or below it.
    oldest_kept = int(snapshots[0].name.split("-")[1].split(".")[0])
    assert 1 < first_index_after_truncation <= oldest_kept + 1
    recovered = _open(data_dir)
    assert take_snapshot(recovered.machine) == expected
    assert recovered.store.last_seq == recovered.machine.seq
    recovered.close()


def test_recovery_refills_an_event_store_that_lost_its_tail(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    replica = _open(data_dir)
    _feed(replica, _entries(40))
    expected = take_snapshot(replica.machine)
    replica.close()
    # The store is behind the log (as after a crash between the log's fsync and the store's
    # commit): delete its newest events; recovery must put them back, byte for byte.
    store = EventStore(data_dir / "events.sqlite3")
    cut = store.last_seq - 50
    connection = store._connection()
    connection.execute("DELETE FROM events WHERE seq > ?", (cut,))
    connection.execute("DELETE FROM account_versions WHERE seq > ?", (cut,))
    store.close()
    recovered = _open(data_dir)
    assert take_snapshot(recovered.machine) == expected
    recovered.writer.close()  # type: ignore[union-attr]
    records = recovered.store.events(limit=100_000)
    assert verify_chain(records) == (recovered.machine.seq, recovered.machine.head)
    recovered.close()


def test_a_damaged_newest_snapshot_falls_back_to_the_older_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    replica = _open(data_dir, snapshot_entries=20)
    entries = _entries(80)
    for chunk in (entries[:30], entries[30:60], entries[60:]):
        _feed(replica, chunk)
        replica.wait_for_snapshot()
    expected = take_snapshot(replica.machine)
    replica.close()
    newest = sorted((data_dir / "snapshots").glob("snapshot-*.bin"))[-1]
    damaged = bytearray(newest.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    newest.write_bytes(bytes(damaged))
    with pytest.raises(SnapshotCorrupt):
        read_snapshot_file(newest)
    recovered = _open(data_dir)
    assert take_snapshot(recovered.machine) == expected
    recovered.close()


def test_a_damaged_only_snapshot_falls_back_to_the_whole_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    replica = _open(data_dir, snapshot_entries=30)
    _feed(replica, _entries(40))
    replica.wait_for_snapshot()
    expected = take_snapshot(replica.machine)
    replica.close()
    (only,) = sorted((data_dir / "snapshots").glob("snapshot-*.bin"))
    damaged = bytearray(only.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    only.write_bytes(bytes(damaged))
    recovered = _open(data_dir)
    assert take_snapshot(recovered.machine) == expected
    recovered.close()


def test_event_store_from_another_history_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    replica = _open(data_dir)
    _feed(replica, _entries(10, seed=1))
    replica.close()
    os.rename(data_dir / "events.sqlite3", tmp_path / "events.sqlite3")
    for suffix in ("-wal", "-shm"):
        if (data_dir / f"events.sqlite3{suffix}").exists():
            os.rename(data_dir / f"events.sqlite3{suffix}", tmp_path / f"events.sqlite3{suffix}")
    other = tmp_path / "other"
    replica = _open(other)
    _feed(replica, _entries(10, seed=2))
    replica.close()
    for name in ("events.sqlite3", "events.sqlite3-wal", "events.sqlite3-shm"):
        if (other / name).exists():
            os.remove(other / name)
        if (tmp_path / name).exists():
            os.rename(tmp_path / name, other / name)
    with pytest.raises(Exception, match=r"differs|mixes"):
        _open(other)


def test_recovery_removes_snapshots_a_dead_process_did_not_finish(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    replica = _open(data_dir)
    _feed(replica, _entries(5))
    replica.close()
    snapshot_dir = data_dir / "snapshots"
    # Killed while the child wrote one, and after another was written but before it was active.
    (snapshot_dir / f"snapshot-{3:020d}.bin.tmp").write_bytes(b"torn")
    (snapshot_dir / f"snapshot-{5:020d}.bin.pending").write_bytes(b"never activated")
    recovered = _open(data_dir)
    assert list(snapshot_dir.iterdir()) == []
    recovered.close()


class _WrittenAtOnce(SnapshotJob):
    def poll(self) -> bool | None:
        return True


class _InlineSnapshots(SnapshotWriter):
    """Writes the snapshot in the caller, before ``start`` returns."""

    def start(self, machine: StateMachine, write: Callable[[bytes], None]) -> SnapshotJob:
        write(take_snapshot(machine))
        return _WrittenAtOnce()


def test_a_stepped_store_writer_holds_back_the_snapshot_until_it_commits(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    threads_before = threading.active_count()
    replica = Replica(
        data_dir,
        LocalWal(data_dir / "log"),
        snapshot_entries=5,
        clock_s=lambda: 0.0,
        snapshot_writer=_InlineSnapshots(),
        store_writer_thread=False,
    )
    replica.recover()
    assert threading.active_count() == threads_before
    _feed(replica, _entries(4))  # 6 entries: a snapshot starts after the fifth
    snapshot_dir = data_dir / "snapshots"
    assert [path.name for path in snapshot_dir.iterdir()] == [f"snapshot-{5:020d}.bin.pending"]
    assert replica.store.last_seq == 0  # nothing is committed until the owner steps the writer
    assert replica.writer is not None
    replica.writer.step()
    assert replica.store.last_seq == replica.machine.seq
    replica.maybe_snapshot()
    assert [path.name for path in snapshot_dir.iterdir()] == [f"snapshot-{5:020d}.bin"]
    assert replica.snapshot_index == 5
    expected = take_snapshot(replica.machine)
    replica.close()
    recovered = _open(data_dir)
    assert take_snapshot(recovered.machine) == expected
    recovered.close()


def test_a_deleted_event_store_is_rebuilt_from_the_whole_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    replica = _open(data_dir, snapshot_entries=40)
    _feed(replica, _entries(60))  # one snapshot: the log is kept whole
    replica.wait_for_snapshot()
    assert replica.snapshot_index > 0 and replica.log.first_index == 1
    replica.writer.close()  # type: ignore[union-attr]
    expected = replica.store.events(1, replica.machine.seq, limit=10**6)
    seq = replica.machine.seq
    replica.close()
    for name in ("events.sqlite3", "events.sqlite3-wal", "events.sqlite3-shm"):
        (data_dir / name).unlink(missing_ok=True)
    again = _open(data_dir)
    try:
        assert again.machine.seq == seq
        again.writer.close()  # type: ignore[union-attr]
        assert again.store.events(1, seq, limit=10**6) == expected  # the whole history, not from the snapshot on
    finally:
        again.close()


def _damage_the_last_record(data_dir: Path) -> None:
    segment = sorted((data_dir / "log").glob("*.wal"))[-1]
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0x40  # inside the last record's payload: its checksum fails
    segment.write_bytes(bytes(data))


def test_a_damaged_last_record_that_was_applied_is_not_cut_and_recovery_says_so(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    replica = _open(data_dir)
    _feed(replica, _entries(10))
    replica.close()
    _damage_the_last_record(data_dir)
    size = sorted((data_dir / "log").glob("*.wal"))[-1].stat().st_size
    log = LocalWal(data_dir / "log", segment_bytes_max=4096, cut_damaged_tail=False)
    damaged = Replica(data_dir, log)
    with pytest.raises(RuntimeError, match="was applied and acknowledged"):
        damaged.recover()
    damaged.close()
    assert sorted((data_dir / "log").glob("*.wal"))[-1].stat().st_size == size  # nothing cut


def test_a_damaged_last_record_that_was_never_applied_is_cut(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    replica = _open(data_dir)
    entries = _entries(10)
    _feed(replica, entries[:-1])
    replica.log.append(encode_entry(entries[-1]))  # written, then the process died before applying it
    replica.close()
    _damage_the_last_record(data_dir)
    log = LocalWal(data_dir / "log", segment_bytes_max=4096, cut_damaged_tail=False)
    assert log.damaged_tail is not None
    again = Replica(data_dir, log)
    again.recover()
    try:
        assert log.damaged_tail is None and again.log.last_index == len(entries) - 1
        record = again.log.append(encode_entry(entries[-1]))  # appends resume after the cut
        assert record.index == len(entries)
    finally:
        again.close()


def _shared_log_node(data_dir: Path, entries: list[list[Command]]) -> None:
    """A node of a shared log (nothing truncated) that applied ``entries`` and stored their events."""
    replica = Replica(data_dir, _log_of([]), truncate_log=False)
    replica.recover()
    _feed(replica, entries)
    replica.close()


def _log_of(entries: list[list[Command]]) -> MemoryLog:
    """The shared log holding ``entries``; its time stands still, so that every copy of it is the same history."""
    log = MemoryLog(clock_ms=lambda: log_time_ms)
    for commands in entries:
        log.append(encode_entry(commands))
    return log


log_time_ms = 1_700_000_000_000


class _PassingTime:
    """The clock and the pause of a recovery that never sleeps: each pause moves the clock."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.pauses_s: list[float] = []

    def clock_s(self) -> float:
        return self.now_s

    def pause_s(self, seconds: float) -> None:
        self.pauses_s.append(seconds)
        self.now_s += seconds


def test_a_shared_log_behind_the_event_store_is_waited_for_and_followed(tmp_path: Path) -> None:
    entries = _entries(6)
    _shared_log_node(tmp_path / "node", entries)
    log = _log_of(entries[:-2])  # a lagging server: its end is below what this node stored
    time = _PassingTime()

    def pause_while_the_log_catches_up(seconds: float) -> None:
        time.pause_s(seconds)
        if len(time.pauses_s) == 3:
            for commands in entries[-2:]:
                log.append(encode_entry(commands))

    replica = Replica(tmp_path / "node", log, truncate_log=False, clock_s=time.clock_s, pause_s=pause_while_the_log_catches_up)
    replica.recover()
    assert time.pauses_s == [0.05, 0.1, 0.2]
    assert replica.machine.log_index == len(entries) and replica.machine.seq == replica.store.last_seq
    replica.close()


def test_a_shared_log_that_never_reaches_the_event_store_stalls_within_the_bound(tmp_path: Path) -> None:
    entries = _entries(6)
    _shared_log_node(tmp_path / "node", entries)
    time = _PassingTime()
    replica = Replica(
        tmp_path / "node", _log_of(entries[:-1]), truncate_log=False, clock_s=time.clock_s, pause_s=time.pause_s, log_wait_s_max=10.0
    )
    with pytest.raises(RecoveryStalled, match=r"waited 10\.0 s: waiting for the log to reach seq"):
        replica.recover()
    assert 10.0 <= time.now_s < 10.0 + 2.0 and max(time.pauses_s) == 2.0  # doubling pauses, capped
    replica.store.close()


def test_a_shared_log_whose_history_made_fewer_events_is_refused_without_waiting(tmp_path: Path) -> None:
    entries = _entries(6)
    _shared_log_node(tmp_path / "node", entries)
    # Another history: one account fewer, so it ends at the log's end with fewer events than the
    # store holds, none of them the newest stored one (the store's own check never runs).
    other = [entries[0][1:], *entries[1:2]]
    time = _PassingTime()
    replica = Replica(
        tmp_path / "node", _log_of(other), truncate_log=False, clock_s=time.clock_s, pause_s=time.pause_s, log_wait_s_max=10.0
    )
    with pytest.raises(RuntimeError, match="the log's history differs from this node's event store"):
        replica.recover()
    assert time.pauses_s == []
    replica.store.close()
