"""A node verifies its own stored chain: a whole history, one that starts at a snapshot, and tampering."""

import asyncio
import sqlite3
from pathlib import Path

from coffer.core.commands import BatchBalanceOperation, CreateAccount, Leg, Transfer
from coffer.core.state_machine import StateMachine
from coffer.history.event_store import EventStore
from coffer.server.chain_audit import ChainAudit

start_time_ms = 1_700_000_000_000


def _ledger(tmp_path: Path, first_stored_seq: int = 1) -> tuple[StateMachine, EventStore]:
    """A machine with a few events, and an event store holding them from ``first_stored_seq`` on."""
    machine = StateMachine()
    store = EventStore(tmp_path / "events.sqlite3")
    commands = [
        CreateAccount(dedup_id="c1", account_id="alice", asset="USD"),
        CreateAccount(dedup_id="c2", account_id="bob", asset="USD"),
        BatchBalanceOperation(dedup_id="c3", legs=(Leg(account_id="alice", amount=10_000, asset="USD"),)),
        Transfer(dedup_id="c4", from_account_id="alice", to_account_id="bob", amount=2_500, asset="USD"),
        Transfer(dedup_id="c5", from_account_id="bob", to_account_id="alice", amount=500, asset="USD"),
    ]
    records = []
    for number, command in enumerate(commands, start=1):
        _, events = machine.apply(number, start_time_ms + number, [command])
        records.extend(events)
    store.append(record for record in records if record.seq >= first_stored_seq)
    return machine, store


async def _nothing_to_wait_for(seq: int) -> None:
    return None


def _verify(machine: StateMachine, store: EventStore) -> dict:
    return asyncio.run(ChainAudit(store, lambda: machine, _nothing_to_wait_for).run())


def test_a_whole_history_verifies_and_its_accounts_match_the_live_ones(tmp_path: Path) -> None:
    machine, store = _ledger(tmp_path)
    verdict = _verify(machine, store)
    assert verdict["ok"], verdict
    assert (verdict["from_seq"], verdict["seq"], verdict["events"]) == (1, 5, 5)
    assert verdict["hash"] == machine.head.hex()
    assert verdict["accounts"] == verdict["accounts_compared"] == 2


def test_a_history_that_starts_at_a_snapshot_verifies_its_chain(tmp_path: Path) -> None:
    machine, store = _ledger(tmp_path, first_stored_seq=3)
    verdict = _verify(machine, store)
    assert verdict["ok"], verdict
    assert (verdict["from_seq"], verdict["events"], verdict["accounts_compared"]) == (3, 3, 0)
    assert any("snapshot" in note for note in verdict["notes"])


def test_an_edited_hash_is_found_at_its_seq(tmp_path: Path) -> None:
    machine, store = _ledger(tmp_path)
    with sqlite3.connect(tmp_path / "events.sqlite3") as connection:
        connection.execute("UPDATE events SET hash = ? WHERE seq = 4", (b"\x00" * 32,))
    verdict = _verify(machine, store)
    assert not verdict["ok"]
    assert verdict["first_bad_seq"] == 4 and "hash" in verdict["problem"]


def test_an_edited_event_body_is_found(tmp_path: Path) -> None:
    machine, store = _ledger(tmp_path)
    with sqlite3.connect(tmp_path / "events.sqlite3") as connection:
        (body,) = connection.execute("SELECT body FROM events WHERE seq = 3").fetchone()
        connection.execute("UPDATE events SET body = ? WHERE seq = 3", (body.replace(b"alice", b"alicf"),))
    verdict = _verify(machine, store)
    assert not verdict["ok"] and verdict["first_bad_seq"] == 3


def test_a_missing_event_is_a_gap(tmp_path: Path) -> None:
    machine, store = _ledger(tmp_path)
    with sqlite3.connect(tmp_path / "events.sqlite3") as connection:
        connection.execute("DELETE FROM events WHERE seq = 2")
    verdict = _verify(machine, store)
    assert not verdict["ok"] and verdict["first_bad_seq"] == 2 and "missing" in verdict["problem"]


def test_a_live_account_that_differs_from_its_history_is_found(tmp_path: Path) -> None:
    machine, store = _ledger(tmp_path)
    machine.accounts["bob"].available += 1  # the state no longer what the events say
    verdict = _verify(machine, store)
    assert not verdict["ok"] and "bob" in verdict["problem"]


def test_a_store_behind_the_head_is_reported(tmp_path: Path) -> None:
    machine, store = _ledger(tmp_path)
    with sqlite3.connect(tmp_path / "events.sqlite3") as connection:
        connection.execute("DELETE FROM events WHERE seq = 5")
    verdict = _verify(machine, store)
    assert not verdict["ok"] and verdict["first_bad_seq"] == 5
