"""The query store's contract, run against every backend (SQLite and a real PostgreSQL).

Events come from the real state machine, so the rows are the ones a projector would write.
"""

import pytest

from coffer.core.commands import BatchBalanceOperation, CreateAccount, Leg, Transfer
from coffer.core.events import EventRecord, genesis_hash
from coffer.core.state_machine import StateMachine
from coffer.query.sql_store import SqlStore, dialect_for, migrations, rows_of

time_ms_start = 1_700_000_000_000
time_ms_step = 1_000


def _history() -> list[EventRecord]:
    """Seq 1-3: three accounts created; 4: a deposit on a and b; 5.. : transfers a -> b, one a second."""
    machine = StateMachine()
    records: list[EventRecord] = []
    entries = [
        [CreateAccount(dedup_id="c-a", account_id="a", asset="USD"), CreateAccount(dedup_id="c-b", account_id="b", asset="USD")],
        [CreateAccount(dedup_id="c-x", account_id="x", asset="BTC", scale=8)],
        [
            BatchBalanceOperation(
                dedup_id="fund",
                legs=(Leg(account_id="a", amount=10_000, asset="USD"), Leg(account_id="b", amount=500, asset="USD")),
            )
        ],
    ]
    entries += [
        [Transfer(dedup_id=f"t{number}", from_account_id="a", to_account_id="b", amount=100, asset="USD")] for number in range(6)
    ]
    for index, commands in enumerate(entries, start=1):
        _, events = machine.apply(index, time_ms_start + index * time_ms_step, commands)
        records.extend(events)
    return records


def _fill(store: SqlStore, records: list[EventRecord]) -> None:
    event_rows = []
    version_rows = []
    for record in records:
        event_row, versions = rows_of(record)
        event_rows.append(event_row)
        version_rows.extend(versions)
    store.append(event_rows, version_rows)


def test_dsns_name_their_database() -> None:
    assert dialect_for("postgresql://u@h:1/d").name == "postgresql"
    assert dialect_for("postgres://u@h:1/d").name == "postgresql"
    assert dialect_for("sqlite:///tmp/x.db").name == "sqlite"
    assert dialect_for("relative/x.db").name == "sqlite"


def test_migrations_apply_once_and_record_their_version(store: SqlStore) -> None:
    assert store.schema_version() == migrations[-1].version
    assert store.migrate() == migrations[-1].version  # a second run changes nothing
    again = SqlStore(store.dsn)
    try:
        assert again.schema_version() == migrations[-1].version
    finally:
        again.close()


def test_an_empty_store_starts_at_the_genesis(store: SqlStore) -> None:
    assert store.head() == (0, genesis_hash)
    assert store.events() == []


def test_appended_events_come_back_by_seq_and_by_time(store: SqlStore) -> None:
    records = _history()
    _fill(store, records)
    assert store.head() == (records[-1].seq, records[-1].hash)
    assert store.events(limit=100) == records
    assert [record.seq for record in store.events(from_seq=3, to_seq=6)] == [3, 4, 5]
    assert [record.seq for record in store.events(from_seq=2, limit=2)] == [2, 3]
    # Entry 3 (the deposit, seq 4) was logged at start + 3 steps; ranges are half-open.
    from_time = time_ms_start + 3 * time_ms_step
    assert [record.seq for record in store.events(from_time_ms=from_time, to_time_ms=from_time + 2 * time_ms_step)] == [4, 5]


def test_a_seq_is_stored_once(store: SqlStore) -> None:
    records = _history()
    _fill(store, records[:3])
    with pytest.raises(Exception):  # noqa: B017 - each driver has its own IntegrityError
        _fill(store, records[2:4])
    assert store.head()[0] == 3  # the failed batch left nothing behind


def test_history_lists_every_version_oldest_first(store: SqlStore) -> None:
    records = _history()
    _fill(store, records)
    versions = store.history("a")
    assert [account.version for _, _, account in versions] == list(range(1, 9))
    assert [seq for seq, _, _ in versions] == [1, 4, 5, 6, 7, 8, 9, 10]
    assert [account.available for _, _, account in versions][-1] == 10_000 - 6 * 100
    assert [seq for seq, _, _ in store.history("a", from_seq=5, to_seq=7)] == [5, 6]
    assert [seq for seq, _, _ in store.history("a", limit=2)] == [1, 4]
    assert store.history("nobody") == []


def test_accounts_as_of_one_seq(store: SqlStore) -> None:
    _fill(store, _history())
    at_six = store.accounts_at(["a", "b", "x", "nobody"], 6)
    assert {account_id: account.available for account_id, account in at_six.items()} == {"a": 9_800, "b": 700, "x": 0}
    assert store.accounts_at(["a", "x"], 1).keys() == {"a"}  # x was created at seq 3
    assert store.available_at(["a", "b", "x"], 6) == {"a": ("USD", 2, 9_800), "b": ("USD", 2, 700), "x": ("BTC", 8, 0)}
    assert store.known_accounts(["a", "x", "nobody"]) == {"a", "x"}


def test_many_accounts_in_one_question(store: SqlStore) -> None:
    machine = StateMachine()
    count = 2_500  # more than one statement's worth of ids
    _, records = machine.apply(
        1, time_ms_start, [CreateAccount(dedup_id=f"c{n}", account_id=f"acct-{n}", asset="USD") for n in range(count)]
    )
    _fill(store, records)
    ids = [f"acct-{n}" for n in range(count)]
    assert len(store.accounts_at(ids, records[-1].seq)) == count
    assert len(store.known_accounts(ids)) == count


def test_progress_is_kept_by_name(store: SqlStore) -> None:
    assert store.progress("published") is None
    store.set_progress("published", 7)
    store.set_progress("published", 9)
    assert store.progress("published") == 9


def test_hierarchy_changes_are_written_whole(store: SqlStore) -> None:
    store.change_hierarchy(lambda nodes, rows: (["root", "eu"], [("root", 0, "eu", "node"), ("eu", 0, "a", "account")]))
    assert store.hierarchy_rows() == (["eu", "root"], [("eu", 0, "a", "account"), ("root", 0, "eu", "node")])

    def refuse(nodes: list[str], rows: list[tuple[str, int, str, str]]) -> tuple[list[str], list[tuple[str, int, str, str]]]:
        raise ValueError("no")

    with pytest.raises(ValueError):
        store.change_hierarchy(refuse)
    assert len(store.hierarchy_rows()[1]) == 2
