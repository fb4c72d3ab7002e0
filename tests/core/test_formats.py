"""Versioned formats: wide integers in every record, and every format says which it is.

Format 1 records are built here byte for byte as the release before protocol versions wrote
them (plain msgspec MessagePack), so these tests pin what old data directories hold.
"""

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coffer.core.accounts import Account
from coffer.core.commands import BatchBalanceOperation, CreateAccount, Leg, Transfer
from coffer.core.encoding import Decoder, encode, wide_int_ext_code
from coffer.core.entries import EntryFormatError, LogEntry, decode_entry, encode_entry
from coffer.core.events import Actor, EventFormatError, event_decoder, event_format, verify_chain
from coffer.core.snapshot import SnapshotError, restore_snapshot, snapshot_format, take_snapshot
from coffer.core.state_machine import ProtocolVersionError, StateMachine, protocol_version_max

plain = msgspec.msgpack.Encoder(order="deterministic")

wide = st.one_of(st.integers(-(2**130), 2**130), st.integers(-(2**64) - 5, 2**64 + 5))


@settings(max_examples=300, deadline=None)
@given(values=st.lists(wide, max_size=6), keyed=st.dictionaries(st.text(max_size=4), wide, max_size=4))
def test_wide_integers_round_trip_and_narrow_ones_keep_the_plain_bytes(values: list[int], keyed: dict[str, int]) -> None:
    value = [values, keyed, b"raw", None, "text"]
    data = encode(value)
    assert Decoder(list).decode(data) == [values, keyed, b"raw", None, "text"]
    if all(-(2**63) <= item <= 2**64 - 1 for item in [*values, *keyed.values()]):
        assert data == plain.encode(value)


def test_a_wide_integer_is_extension_1_with_minimal_twos_complement_bytes() -> None:
    assert encode(2**64) == b"\xc7\x09\x01" + (2**64).to_bytes(9, "big", signed=True)
    assert encode(-(2**63) - 1) == b"\xc7\x09\x01" + (-(2**63) - 1).to_bytes(9, "big", signed=True)
    assert encode(2**127 - 1) == b"\xd8\x01" + (2**127 - 1).to_bytes(16, "big", signed=True)


def test_a_wide_integer_spelled_in_fewer_than_9_bytes_is_refused() -> None:
    # One value, one spelling: an integer that fits 64 bits must be a plain MessagePack integer.
    data = plain.encode(msgspec.msgpack.Ext(wide_int_ext_code, (5).to_bytes(8, "big")))
    with pytest.raises(ValueError, match="fits 64 bits"):
        Decoder(int).decode(data)


def test_an_unknown_extension_is_refused() -> None:
    data = plain.encode(msgspec.msgpack.Ext(7, b"123456789"))
    with pytest.raises(ValueError, match="extension type 7"):
        Decoder(int).decode(data)


def test_structs_with_wide_integers_round_trip_through_their_typed_decoder() -> None:
    account = Account("w", "ETH", 18, "NORMAL", -(2**100), None, 2**126, {"r": 2**65}, {}, {"t": 2**64}, 3, {})
    assert Decoder(Account).decode(encode(account)) == account


# ---------------------------------------------------------------- log entries


def _commands() -> list:
    return [
        CreateAccount(dedup_id="open", account_id="w0", asset="ETH", scale=18),
        BatchBalanceOperation(dedup_id="deposit", legs=(Leg(account_id="w0", amount=10**38, asset="ETH"),)),
    ]


def test_an_entry_of_format_1_decodes_as_protocol_1_without_actors() -> None:
    commands = [Transfer(dedup_id="t", from_account_id="a", to_account_id="b", amount=5, asset="USD")]
    old = msgspec.msgpack.encode([ "node-1", commands])  # exactly what the release before wrote
    assert decode_entry(old) == LogEntry(1, 1, "node-1", commands, None)


def test_an_entry_of_format_2_carries_its_protocol_and_actors() -> None:
    actors = [Actor("k1", "operator"), None]
    entry = decode_entry(encode_entry(_commands(), "o", actors))
    assert (entry.format_version, entry.protocol_version, entry.origin, entry.actors) == (2, protocol_version_max, "o", actors)
    assert entry.commands == _commands()
    assert decode_entry(encode_entry(_commands(), "o", [None, None])).actors is None  # nobody: stored as null


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (plain.encode([3, 2, "", [], None]), "format 3 is newer"),
        (plain.encode([2, protocol_version_max + 1, "", [], None]), f"protocol {protocol_version_max + 1} is newer"),
        (plain.encode([0, 1]), "unknown log entry format 0"),
        (b"\x01", "not a Coffer log entry"),
    ],
)
def test_an_entry_this_release_cannot_apply_is_refused_with_a_reason(payload: bytes, message: str) -> None:
    with pytest.raises(EntryFormatError, match=message):
        decode_entry(payload)


# ---------------------------------------------------------------- protocol and events


def test_a_ledger_takes_the_protocol_of_its_entries_and_never_goes_back() -> None:
    machine = StateMachine()
    machine.apply(1, 1000, [CreateAccount(dedup_id="open", account_id="a", asset="USD")], protocol_version=1)
    assert machine.protocol_version == 1
    machine.apply(2, 1001, [CreateAccount(dedup_id="open-b", account_id="b", asset="USD")], protocol_version=2)
    machine.apply(3, 1002, [CreateAccount(dedup_id="open-c", account_id="c", asset="USD")], protocol_version=1)
    assert machine.protocol_version == 2
    with pytest.raises(ProtocolVersionError, match="upgrade Coffer"):
        machine.apply(4, 1003, [], protocol_version=protocol_version_max + 1)


def test_protocol_1_keeps_its_rules_and_its_event_format() -> None:
    machine = StateMachine()
    open_ = CreateAccount(dedup_id="open", account_id="w", asset="ETH", scale=18)
    nine_eth = BatchBalanceOperation(dedup_id="d1", legs=(Leg(account_id="w", amount=9 * 10**18, asset="ETH"),))
    again = BatchBalanceOperation(dedup_id="d2", legs=(Leg(account_id="w", amount=9 * 10**18, asset="ETH"),))
    results, events = machine.apply(1, 1000, [open_, nine_eth, again], protocol_version=1)
    assert [result.code for result in results] == ["OK", "OK", "UPPER_LIMIT_EXCEEDED"]  # as written then
    assert all(event_format(record.body) == 1 for record in events)
    assert events[0].body == plain.encode((1, 1, 1000, "open", "account_created", open_, (events[0].decode().accounts[0],)))
    results, events = machine.apply(2, 1001, [again], protocol_version=2)
    assert results[0].code == "UPPER_LIMIT_EXCEEDED"  # a retry answers what it answered then
    retry = BatchBalanceOperation(dedup_id="d3", legs=(Leg(account_id="w", amount=9 * 10**18, asset="ETH"),))
    results, events = machine.apply(3, 1002, [retry], protocol_version=2)
    assert results[0].code == "OK" and machine.accounts["w"].available == 18 * 10**18
    assert event_format(events[0].body) == 2


def test_events_record_who_sent_each_command() -> None:
    machine = StateMachine()
    commands = [CreateAccount(dedup_id="a", account_id="a", asset="USD"), CreateAccount(dedup_id="b", account_id="b", asset="USD")]
    _, events = machine.apply(1, 1000, commands, [Actor("key-7", "admin"), None])
    assert [record.decode().actor for record in events] == [Actor("key-7", "admin"), None]


def test_a_chain_spanning_formats_verifies() -> None:
    machine = StateMachine()
    _, old = machine.apply(1, 1000, [CreateAccount(dedup_id="a", account_id="a", asset="USD")], protocol_version=1)
    _, new = machine.apply(2, 1001, [CreateAccount(dedup_id="b", account_id="b", asset="USD")], protocol_version=2)
    assert verify_chain(old + new) == (machine.seq, machine.head)
    assert [record.decode().format_version for record in old + new] == [1, 2]


def test_an_event_of_a_newer_format_is_refused_with_a_reason() -> None:
    with pytest.raises(EventFormatError, match="event format 3 is newer"):
        event_decoder.decode(plain.encode([3, 1, 1, 1, None, "x", None, [], None, "more"]))


# ---------------------------------------------------------------- snapshots


def test_a_format_1_snapshot_restores_as_protocol_1() -> None:
    machine = StateMachine()
    machine.apply(1, 1000, [CreateAccount(dedup_id="a", account_id="a", asset="USD")], protocol_version=1)
    old = plain.encode(
        (1, machine.log_index, machine.time_ms, machine.seq, machine.head, machine.accounts, machine.asset_scales, machine.dedup, machine.txns, machine.compensations)
    )
    restored = restore_snapshot(old)
    assert restored.protocol_version == 1 and restored.accounts == machine.accounts and restored.head == machine.head
    # A format-1 snapshot holds no effects (retries of its commands are answered from their events).
    assert restored.effects == {} and restored.effects_older == {}
    machine.effects = {}
    assert take_snapshot(restored) == take_snapshot(machine)


def test_a_format_2_snapshot_restores_without_effects_and_a_new_one_keeps_them() -> None:
    machine = StateMachine()
    machine.apply(1, 1000, [CreateAccount(dedup_id="a", account_id="a", asset="USD")])
    effect = machine.effect_of("a")
    assert effect is not None and effect.log_index == 1 and [account.account_id for account in effect.accounts] == ["a"]
    assert restore_snapshot(take_snapshot(machine)).effect_of("a") == effect
    dedup = {dedup_id: (record.command, record.result) for dedup_id, record in machine.dedup.items()}
    old = plain.encode(
        (2, 2, machine.log_index, machine.time_ms, machine.seq, machine.head, machine.accounts, machine.asset_scales, dedup, {}, {})
    )
    restored = restore_snapshot(old)
    assert restored.accounts == machine.accounts and restored.dedup == machine.dedup
    assert restored.effect_of("a") is None


def test_a_snapshot_of_a_newer_format_or_protocol_is_refused() -> None:
    data = take_snapshot(StateMachine())
    assert snapshot_format(data) == 3
    with pytest.raises(SnapshotError, match="format 4 is newer"):
        restore_snapshot(data[:1] + b"\x04" + data[2:])
    newer = plain.encode([2, protocol_version_max + 1, 0, 0, 0, bytes(32), {}, {}, {}, {}, {}])
    with pytest.raises(SnapshotError, match="upgrade Coffer"):
        restore_snapshot(newer)


def test_a_tcc_try_of_format_1_keeps_its_layout_in_entries_and_events() -> None:
    # Commands grew fields since format 1 (a try's preconditions): the old layout is read as it
    # was written, and a ledger still on protocol 1 writes events with it, byte for byte.
    legs = [["a", -5, "USD", None]]
    old_try = ["tcc_try", "t1", legs, None, "try-1"]  # tag, txn_id, legs, timeout_s, dedup_id
    entry = decode_entry(msgspec.msgpack.encode(["", [["create_account", "a", "USD", 2, 0, None, None, "open"], old_try]]))
    machine = StateMachine()
    deposit = BatchBalanceOperation(dedup_id="in", legs=(Leg(account_id="a", amount=10, asset="USD"),))
    machine.apply(1, 1000, [*entry.commands[:1], deposit], protocol_version=1)
    _, events = machine.apply(2, 1001, entry.commands[1:], protocol_version=1)
    assert msgspec.msgpack.decode(events[0].body)[5] == old_try
    assert events[0].decode().command == entry.commands[1]
