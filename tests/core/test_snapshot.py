"""Snapshot and restore: the same bytes back, and the same behaviour afterwards (timeouts, dedup, chain)."""

import msgspec
import pytest

from coffer.core.errors import ErrorCode
from coffer.core.events import EventType, verify_chain
from coffer.core.snapshot import SnapshotError, SnapshotState, restore_snapshot, state_hash, take_snapshot
from coffer.core.state_machine import StateMachine

from .conftest import (
    apply_entry,
    batch,
    cancel,
    compensate,
    confirm,
    create,
    delete,
    funded_machine,
    leg,
    lock,
    release,
    reserve,
    start_time_ms,
    tcc_try,
    transfer,
    update_limits,
)

t0 = start_time_ms


def _mixed_history() -> tuple[StateMachine, list]:
    machine = funded_machine()
    events = []
    entries = [
        (t0 + 1_000, [transfer("alice", "bob", 1_000, dedup_id="pay"), transfer("alice", "nobody", 1, dedup_id="bad")]),
        (t0 + 2_000, [reserve("bob", "r1", 500, dedup_id="hold"), reserve("bob", "r2", 100), release("bob", "r2", 40)]),
        (t0 + 3_000, [tcc_try("slow", leg("alice", -300), leg("carol", 300), timeout_s=60, dedup_id="try-slow")]),
        (t0 + 3_500, [tcc_try("fast", leg("bob", -200), leg("carol", 200), timeout_s=5, dedup_id="try-fast")]),
        (t0 + 3_600, [tcc_try("open", leg("alice", -50), dedup_id="try-open")]),  # no timeout
        (t0 + 4_000, [tcc_try("done", leg("alice", -10)), confirm("done"), tcc_try("gone", leg("bob", -10)), cancel("gone")]),
        (t0 + 5_000, [compensate("late", dedup_id="undo-late"), batch(leg("carol", 700), leg("bob", -700), dedup_id="b1")]),
        (t0 + 6_000, [update_limits("carol", -100, 100_000), create("dave", "EUR"), delete("dave"), lock("erin")]),
        (t0 + 6_500, [transfer("bob", "alice", 10**9, dedup_id="rejected")]),
    ]
    for time_ms, commands in entries:
        _, new = apply_entry(machine, *commands, time_ms=time_ms)
        events.extend(new)
    return machine, events


def _continuation() -> list:
    """Further entries that exercise every piece of remembered state."""
    return [
        # retries: a success, a rejection, a late original of a null compensation, a reused id
        (
            t0 + 7_000,
            [
                transfer("alice", "bob", 1_000, dedup_id="pay"),
                transfer("alice", "nobody", 1, dedup_id="bad"),
                transfer("alice", "bob", 1, dedup_id="late"),
                reserve("alice", "r", 1, dedup_id="pay"),
                transfer("bob", "alice", 10**9, dedup_id="rejected"),
            ],
        ),
        # "fast" (deadline t0 + 8_500) expires before this entry's commands; confirming it is too late
        (t0 + 8_500, [confirm("fast", dedup_id="confirm-fast"), confirm("slow", dedup_id="confirm-slow")]),
        (
            t0 + 9_000,
            [
                compensate("pay", dedup_id="undo-pay"),
                compensate("hold", dedup_id="undo-hold"),
                compensate("late"),
                compensate("undo-late"),
            ],
        ),
        (t0 + 9_500, [tcc_try("slow", leg("alice", -1)), tcc_try("new", leg("alice", -1), timeout_s=1, dedup_id="try-new")]),
        (t0 + 10_500, [cancel("open"), batch(leg("erin", 1, "EUR")), reserve("bob", "r1", 1)]),
        (t0 + 70_000, []),
    ]


def test_restore_gives_back_the_same_snapshot_bytes_and_state_hash() -> None:
    machine, _ = _mixed_history()
    data = take_snapshot(machine)
    restored = restore_snapshot(data)
    assert take_snapshot(restored) == data
    assert state_hash(restored) == state_hash(machine)
    assert (restored.seq, restored.head, restored.log_index, restored.time_ms) == (
        machine.seq,
        machine.head,
        machine.log_index,
        machine.time_ms,
    )
    assert restored.accounts == machine.accounts


def test_a_restored_machine_behaves_the_same_on_further_entries() -> None:
    machine, _ = _mixed_history()
    restored = restore_snapshot(take_snapshot(machine))
    head = (machine.seq, machine.head)
    events = []
    for time_ms, commands in _continuation():
        expected = apply_entry(machine, *commands, time_ms=time_ms)
        actual = apply_entry(restored, *commands, time_ms=time_ms)
        assert actual == expected, commands
        assert take_snapshot(restored) == take_snapshot(machine)
        events.extend(expected[1])
    # the restored machine continued the same chain
    assert verify_chain(events, *head) == (restored.seq, restored.head)


def test_the_continuation_really_exercises_timeouts_and_dedup() -> None:
    """Guard for the test above: the continuation must hit the remembered state, not sail past it."""
    machine, _ = _mixed_history()
    restored = restore_snapshot(take_snapshot(machine))
    outcomes = [apply_entry(restored, *commands, time_ms=time_ms) for time_ms, commands in _continuation()]
    retries, _ = outcomes[0]
    assert retries[0].ok and retries[0].seq > 0  # the original success, answered again
    assert retries[1].code == ErrorCode.ACCOUNT_NOT_FOUND
    assert retries[2].code == ErrorCode.ALREADY_COMPENSATED
    assert retries[3].code == ErrorCode.DEDUP_ID_REUSED
    assert retries[4].code == ErrorCode.LOWER_LIMIT_EXCEEDED
    assert outcomes[0][1] == []  # no retry emitted anything
    results, events = outcomes[1]
    assert [event.decode().type for event in events][:1] == [EventType.TCC_EXPIRED]
    assert results[0].code == ErrorCode.TXN_ALREADY_CANCELLED
    assert results[1].ok
    results, _ = outcomes[2]
    assert [result.compensation for result in results[:2]] == ["COMPENSATED", "COMPENSATED"]
    assert results[2].code == ErrorCode.ALREADY_COMPENSATED
    assert results[3].code == ErrorCode.ORIGINAL_NOT_COMPENSABLE
    results, _ = outcomes[3]
    assert results[0].code == ErrorCode.TXN_EXISTS
    assert results[1].ok
    results, events = outcomes[4]
    assert [event.decode().type for event in events][:1] == [EventType.TCC_EXPIRED]  # "new" timed out
    assert results[0].ok
    assert results[1].code == ErrorCode.ACCOUNT_LOCKED
    assert results[2].ok
    assert restored.accounts["alice"].pending_out == {}
    assert restored.accounts["carol"].pending_in == {}


def test_snapshot_of_a_fresh_machine_restores() -> None:
    machine = StateMachine()
    restored = restore_snapshot(take_snapshot(machine))
    assert take_snapshot(restored) == take_snapshot(machine)
    results, events = apply_entry(restored, create("a"), time_ms=t0)
    assert results[0].ok
    assert events[0].seq == 1


def test_snapshot_bytes_do_not_depend_on_dict_insertion_order() -> None:
    machine, _ = _mixed_history()
    data = take_snapshot(machine)
    machine.accounts = dict(reversed(list(machine.accounts.items())))
    machine.dedup = dict(reversed(list(machine.dedup.items())))
    machine.txns = dict(reversed(list(machine.txns.items())))
    for account in machine.accounts.values():
        account.reservations = dict(reversed(list(account.reservations.items())))
    assert take_snapshot(machine) == data


def test_snapshots_differ_when_the_state_differs() -> None:
    machine, _ = _mixed_history()
    before = state_hash(machine)
    apply_entry(machine, transfer("alice", "bob", 1), time_ms=t0 + 7_000)
    assert state_hash(machine) != before
    # a rejection is stored in the dedup store: the state hash moves too
    after_transfer = state_hash(machine)
    apply_entry(machine, transfer("alice", "bob", 10**9), time_ms=t0 + 7_000)
    assert state_hash(machine) != after_transfer


@pytest.mark.parametrize("data", [b"", b"\xc1", b"not a snapshot", msgspec.msgpack.encode([1, 2, 3])])
def test_restoring_garbage_is_a_snapshot_error(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        restore_snapshot(data)


def test_restoring_another_format_version_is_a_snapshot_error() -> None:
    machine, _ = _mixed_history()
    state = msgspec.msgpack.decode(take_snapshot(machine), type=SnapshotState)
    state.format_version += 1
    with pytest.raises(SnapshotError):
        restore_snapshot(msgspec.msgpack.encode(state))
