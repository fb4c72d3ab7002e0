"""The simulated disk keeps what a POSIX disk promises after a power loss, and no more.

The simulator's findings are only as good as this model: a synced file and a synced name
survive; a rename, a removal or a new name that its directory never synced does not; a countdown
crashes the node at exactly the operation it names; event store commits are durable when they
return.
"""

import random
from pathlib import Path

import pytest

from coffer.core.commands import CreateAccount
from coffer.core.state_machine import StateMachine
from coffer.replica import read_snapshot_file, write_snapshot_file
from coffer.sim.disk import SimulatedCrash, SimulatedDisk, SimulatedEventStore

directory = Path("/simulated/node/snapshots")
old = directory / "old.bin"
new = directory / "new.bin"


@pytest.fixture
def disk() -> SimulatedDisk:
    disk = SimulatedDisk(random.Random(1))
    disk.write_durably(old, b"old bytes")
    disk.sync_directory(directory)
    return disk


def test_synced_files_and_names_survive_a_power_loss(disk: SimulatedDisk) -> None:
    disk.crash()
    assert disk.list(directory, "*.bin") == [old]
    assert disk.read(old) == b"old bytes"


def test_a_name_its_directory_never_synced_is_lost(disk: SimulatedDisk) -> None:
    disk.write_durably(new, b"new bytes")
    assert disk.read(new) == b"new bytes"
    disk.crash()
    assert not disk.exists(new)


def test_an_unsynced_rename_and_removal_are_undone(disk: SimulatedDisk) -> None:
    disk.write_durably(new, b"new bytes")
    disk.sync_directory(directory)
    disk.replace(new, old)  # old now holds the new bytes, for the process
    assert disk.list(directory, "*.bin") == [old]
    assert disk.read(old) == b"new bytes"
    disk.crash()
    assert disk.list(directory, "*.bin") == [new, old]
    assert (disk.read(new), disk.read(old)) == (b"new bytes", b"old bytes")
    disk.remove(new)
    disk.crash()
    assert disk.exists(new)


def test_a_synced_rename_is_kept(disk: SimulatedDisk) -> None:
    disk.replace(old, new)
    disk.sync_directory(directory)
    disk.crash()
    assert disk.list(directory, "*") == [new]


def test_the_countdown_crashes_at_the_operation_it_names(disk: SimulatedDisk) -> None:
    disk.crash_countdown = 2
    disk.write_durably(new, b"new bytes")  # the first operation happens
    with pytest.raises(SimulatedCrash):
        disk.replace(new, directory / "renamed.bin")  # the second does not
    assert disk.exists(new) and disk.crash_countdown is None


def test_a_write_interrupted_by_a_crash_leaves_at_most_a_prefix(disk: SimulatedDisk) -> None:
    disk.crash_countdown = 1
    with pytest.raises(SimulatedCrash):
        disk.write_durably(old, b"replacement bytes")
    disk.crash()
    assert b"replacement bytes".startswith(disk.read(old))


def test_a_snapshot_file_written_by_the_replica_survives_a_power_loss() -> None:
    disk = SimulatedDisk(random.Random(2))
    path = directory / "snapshot-00000000000000000001.bin"
    write_snapshot_file(path, b"state", disk)
    disk.crash()
    assert read_snapshot_file(path, disk) == b"state"
    assert disk.list(directory, "*.tmp") == []


def test_event_store_commits_are_durable_and_a_crash_may_come_just_before_one() -> None:
    disk = SimulatedDisk(random.Random(3))
    machine = StateMachine()
    _, events = machine.apply(1, 1_000, [CreateAccount(dedup_id="c1", account_id="a", asset="USD")])
    store = SimulatedEventStore(disk, Path("/simulated/node/events.sqlite3"))
    disk.crash_countdown = 1
    with pytest.raises(SimulatedCrash):
        store.append(events)
    assert store.last_seq == 0
    store.append(events)
    disk.crash()
    reopened = SimulatedEventStore(disk, Path("/simulated/node/events.sqlite3"))
    assert reopened.last_seq == 1
    assert reopened.events() == events
