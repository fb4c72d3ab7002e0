"""Events: one per accepted command, gapless seq, canonical bodies, and the hash chain over them."""

from hashlib import sha256

import msgspec
import pytest

from coffer.core.events import ChainError, EventRecord, EventType, verify_chain
from coffer.core.state_machine import StateMachine

from .conftest import (
    apply_entry,
    batch,
    cancel,
    compensate,
    confirm,
    create,
    delete,
    leg,
    lock,
    release,
    reserve,
    start_time_ms,
    tcc_try,
    transfer,
    unlock,
    update_limits,
)


def _history() -> tuple[StateMachine, list[EventRecord]]:
    """A fresh machine fed a mixed history of accepted and rejected commands; all its events."""
    machine = StateMachine()
    entries = [
        [create("alice", dedup_id="c-a"), create("bob", dedup_id="c-b"), create("carol", dedup_id="c-c")],
        [batch(leg("alice", 10_000), leg("bob", 5_000), dedup_id="fund")],
        [transfer("alice", "bob", 100, dedup_id="t1"), transfer("alice", "nobody", 1, dedup_id="bad"), reserve("bob", "r", 50)],
        [tcc_try("x", leg("alice", -200), leg("carol", 200), timeout_s=1, dedup_id="try-x")],
        [],
        [release("bob", "r", 20), update_limits("carol", -5, None), lock("carol"), unlock("carol")],
        [compensate("t1", dedup_id="undo-t1"), compensate("ghost", dedup_id="undo-ghost")],
        [tcc_try("y", leg("bob", -10), dedup_id="try-y"), confirm("y"), cancel("y")],
    ]
    events: list[EventRecord] = []
    for index, commands in enumerate(entries):
        _, new = apply_entry(machine, *commands, time_ms=start_time_ms + index * 1_000)
        events.extend(new)
    return machine, events


# ---------------------------------------------------------------- one event per accepted command


def test_one_event_per_accepted_command_and_none_for_rejections(machine) -> None:
    commands = [
        transfer("alice", "bob", 100),
        transfer("alice", "bob", 10**9),  # rejected
        reserve("alice", "r", 100),
        release("alice", "none"),  # rejected
        batch(leg("carol", 1)),
        transfer("alice", "alice", 1),  # rejected
    ]
    seq_before = machine.seq
    results, events = apply_entry(machine, *commands)
    accepted = [result for result in results if result.ok]
    assert [result.ok for result in results] == [True, False, True, False, True, False]
    assert len(events) == len(accepted) == 3
    assert (
        [result.seq for result in accepted] == [event.seq for event in events] == [seq_before + 1, seq_before + 2, seq_before + 3]
    )
    assert all(result.seq == 0 for result in results if not result.ok)
    assert [event.decode().dedup_id for event in events] == [commands[0].dedup_id, commands[2].dedup_id, commands[4].dedup_id]


def test_seq_starts_at_1_and_is_consecutive_across_entries() -> None:
    machine, events = _history()
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert machine.seq == len(events)
    assert [event.decode().seq for event in events] == [event.seq for event in events]


@pytest.mark.parametrize(
    ("make_command", "event_type"),
    [
        (lambda: create("dave"), EventType.ACCOUNT_CREATED),
        (lambda: update_limits("alice", -1, None), EventType.LIMITS_UPDATED),
        (lambda: lock("alice"), EventType.ACCOUNT_LOCKED),
        (lambda: delete("carol"), EventType.ACCOUNT_DELETED),
        (lambda: transfer("alice", "bob", 1), EventType.TRANSFERRED),
        (lambda: batch(leg("alice", 1)), EventType.BALANCES_CHANGED),
        (lambda: reserve("alice", "r", 1), EventType.RESERVED),
        (lambda: tcc_try("t", leg("alice", -1)), EventType.TCC_TRIED),
        (lambda: compensate("never"), EventType.NULL_COMPENSATED),
    ],
)
def test_event_carries_the_command_its_entry_and_the_accounts_right_after(machine, make_command, event_type: str) -> None:
    command = make_command()
    time_ms = start_time_ms + 12_345
    results, events = apply_entry(machine, command, time_ms=time_ms)
    assert results[0].ok
    (record,) = events
    event = record.decode()
    assert event.seq == record.seq == results[0].seq
    assert event.log_index == machine.log_index
    assert event.time_ms == time_ms
    assert event.dedup_id == command.dedup_id
    assert event.type == event_type
    assert event.command == command
    for account in event.accounts:
        assert account == machine.accounts[account.account_id]


def test_unlock_release_confirm_cancel_and_compensate_event_types(machine) -> None:
    steps = [
        (lock("alice"), None),
        (unlock("alice"), EventType.ACCOUNT_UNLOCKED),
        (reserve("alice", "r", 5, dedup_id="hold"), None),
        (compensate("hold"), EventType.COMPENSATED),
        (reserve("alice", "r", 5), None),
        (release("alice", "r", 1), EventType.RELEASED),
        (tcc_try("t1", leg("alice", -1)), None),
        (confirm("t1"), EventType.TCC_CONFIRMED),
        (tcc_try("t2", leg("alice", -1)), None),
        (cancel("t2"), EventType.TCC_CANCELLED),
        (transfer("alice", "bob", 1, dedup_id="pay"), None),
        (compensate("pay"), EventType.COMPENSATED),
    ]
    for command, event_type in steps:
        results, events = apply_entry(machine, command)
        assert results[0].ok, (command, results[0])
        if event_type is not None:
            assert [event.decode().type for event in events] == [event_type]


def test_each_event_shows_the_accounts_as_they_were_right_after_its_command(machine) -> None:
    results, events = apply_entry(
        machine, transfer("alice", "bob", 100), transfer("alice", "bob", 200), reserve("alice", "r", 300)
    )
    assert all(result.ok for result in results)
    first, second, third = (event.decode() for event in events)
    assert [account.available for account in first.accounts] == [9_900, 5_100]
    assert [account.version for account in first.accounts] == [3, 3]
    assert [account.available for account in second.accounts] == [9_700, 5_300]
    assert [account.version for account in second.accounts] == [4, 4]
    assert (third.accounts[0].available, third.accounts[0].reservations, third.accounts[0].version) == (9_400, {"r": 300}, 5)


def test_a_timeout_event_belongs_to_the_entry_that_found_it() -> None:
    _, events = _history()
    expired = [event.decode() for event in events if event.decode().type == EventType.TCC_EXPIRED]
    (event,) = expired
    assert event.dedup_id is None
    assert event.command is None
    assert event.time_ms == start_time_ms + 4_000  # the empty entry, 1 s after the try
    assert sorted(account.account_id for account in event.accounts) == ["alice", "carol"]


def test_canonical_bytes_can_be_recomputed_from_the_decoded_event() -> None:
    """events.py, format 2: body = msgpack [2, seq, log_index, time_ms, dedup_id, type, command,
    accounts, actor], keys sorted."""
    _, events = _history()
    encoder = msgspec.msgpack.Encoder(order="deterministic")
    for record in events:
        event = record.decode()
        assert event.format_version == 2
        fields = (2, event.seq, event.log_index, event.time_ms, event.dedup_id, event.type, event.command, event.accounts, event.actor)
        assert encoder.encode(fields) == record.body


# ---------------------------------------------------------------- hash chain


def test_the_chain_links_each_event_to_the_one_before() -> None:
    machine, events = _history()
    prev_hash = bytes(32)
    for record in events:
        assert record.prev_hash == prev_hash
        assert record.hash == sha256(prev_hash + record.body).digest()
        prev_hash = record.hash
    assert machine.head == prev_hash


def test_verify_chain_accepts_the_history_and_returns_the_head() -> None:
    machine, events = _history()
    assert verify_chain(events) == (machine.seq, machine.head)


def test_verify_chain_continues_from_a_known_head() -> None:
    machine, events = _history()
    middle = len(events) // 2
    head_seq, head_hash = verify_chain(events[:middle])
    assert verify_chain(events[middle:], head_seq, head_hash) == (machine.seq, machine.head)
    with pytest.raises(ChainError) as error:
        verify_chain(events[middle:])  # not from genesis
    assert error.value.seq == 1


def _edit(record: EventRecord, **fields) -> EventRecord:
    return msgspec.structs.replace(record, **fields)


@pytest.mark.parametrize("position", [0, 3, -1])
def test_a_tampered_body_byte_is_found_at_its_seq(position: int) -> None:
    _, events = _history()
    target = events[position]
    body = bytearray(target.body)
    body[len(body) // 2] ^= 0x01
    events[position] = _edit(target, body=bytes(body))
    with pytest.raises(ChainError) as error:
        verify_chain(events)
    assert error.value.seq == target.seq


def test_a_rewritten_event_with_a_recomputed_hash_is_found_at_the_next_seq() -> None:
    _, events = _history()
    target = events[4]
    event = target.decode()
    forged_account = msgspec.structs.replace(event.accounts[0], available=event.accounts[0].available + 1_000_000)
    body = msgspec.msgpack.Encoder(order="deterministic").encode(
        (
            event.seq,
            event.log_index,
            event.time_ms,
            event.dedup_id,
            event.type,
            event.command,
            (forged_account, *event.accounts[1:]),
        )
    )
    events[4] = _edit(target, body=body, hash=sha256(target.prev_hash + body).digest())
    with pytest.raises(ChainError) as error:
        verify_chain(events)
    assert error.value.seq == target.seq + 1


def _rewrite(record: EventRecord, body: bytes) -> EventRecord:
    """What a forger with write access does: new body, hash recomputed over the same prev_hash."""
    return _edit(record, body=body, hash=sha256(record.prev_hash + body).digest())


def test_a_rewritten_last_event_changes_the_head() -> None:
    machine, events = _history()
    event = events[-1].decode()
    body = msgspec.msgpack.Encoder(order="deterministic").encode(
        (event.seq, event.log_index, event.time_ms + 1, event.dedup_id, event.type, event.command, event.accounts)
    )
    head = verify_chain([*events[:-1], _rewrite(events[-1], body)])
    assert head[0] == machine.seq
    assert head[1] != machine.head  # whoever holds the real head sees the edit


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xc1", id="not-msgpack"),
        pytest.param(msgspec.msgpack.encode([1, 2, 3]), id="not-an-event-array"),
    ],
)
def test_a_body_that_is_not_an_event_is_a_chain_error(body: bytes) -> None:
    """verify_chain's contract: a bad history raises ChainError naming the first bad seq, nothing else."""
    _, events = _history()
    events[4] = _rewrite(events[4], body)
    with pytest.raises(ChainError) as error:
        verify_chain(events)
    assert error.value.seq == events[4].seq


@pytest.mark.parametrize("position", [0, 5, -1])
def test_a_dropped_event_is_found_at_the_gap(position: int) -> None:
    _, events = _history()
    dropped = events.pop(position)
    if position == -1:
        head = verify_chain(events)  # dropping the tail shortens the chain: the head says so
        assert head[0] == dropped.seq - 1
        return
    with pytest.raises(ChainError) as error:
        verify_chain(events)
    assert error.value.seq == dropped.seq


def test_swapped_events_are_found_at_the_first_swapped_seq() -> None:
    _, events = _history()
    events[3], events[4] = events[4], events[3]
    with pytest.raises(ChainError) as error:
        verify_chain(events)
    assert error.value.seq == 4


def test_swapped_events_with_renumbered_seqs_are_found() -> None:
    _, events = _history()
    third, fourth = events[3], events[4]
    events[3] = _edit(fourth, seq=third.seq)
    events[4] = _edit(third, seq=fourth.seq)
    with pytest.raises(ChainError) as error:
        verify_chain(events)
    assert error.value.seq == third.seq


def test_a_forged_prev_hash_is_found_at_its_seq() -> None:
    _, events = _history()
    target = events[6]
    forged_prev = bytes(32)
    events[6] = _edit(target, prev_hash=forged_prev, hash=sha256(forged_prev + target.body).digest())
    with pytest.raises(ChainError) as error:
        verify_chain(events)
    assert error.value.seq == target.seq


def test_a_record_whose_body_carries_another_seq_is_found() -> None:
    _, events = _history()
    # an event moved to another place and relinked: the envelope says 5, the body says 6
    target, source = events[4], events[5]
    events[4] = _edit(source, seq=target.seq, prev_hash=target.prev_hash, hash=sha256(target.prev_hash + source.body).digest())
    with pytest.raises(ChainError) as error:
        verify_chain(events[:5])
    assert error.value.seq == target.seq
