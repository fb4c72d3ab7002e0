"""The node's own event store: every event and every account version, in SQLite.

Method: one writer thread appends events in batches (one transaction per batch) as the replica
emits them; readers open their own connections (SQLite WAL mode lets them read while it writes).
Rows are keyed by seq; when the log is replayed after a crash, events the store already holds are
skipped, and the newest of them must carry the stored hash, or the node stops: the histories differ. An account's version rows point at the event that produced them, whose
canonical bytes hold the full view of the account, so a past state is always read from the same
bytes that the hash chain covers.
"""

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from coffer.core.accounts import Account
from coffer.core.events import EventRecord, index_event
from coffer.history.history_store import HistoryStore, event_row, record_columns, record_of

schema = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    log_index INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    dedup_id TEXT,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (time_ms, seq);
CREATE TABLE IF NOT EXISTS account_versions (
    account_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, seq)
) WITHOUT ROWID;
"""
# Versions grow with seq, so one key (account_id, seq) serves history in version order and
# "latest version at or below seq N" alike; a second index would double the write cost.
cache_kib = 256 * 1024  # keep the hot B-tree pages of the version index in memory




class EventStoreCorrupt(RuntimeError):
    """The stored history disagrees with the history the log replays."""


class EventStore(HistoryStore):
    corrupt = EventStoreCorrupt

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        connection = self._connection()
        connection.executescript(schema)
        self.last_seq = self._query_last_seq(connection)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            connection.execute("PRAGMA journal_mode=WAL")
            # Durable commits: a snapshot becomes the recovery point only once the store holds its
            # events, because the log below a snapshot is dropped and cannot refill the store.
            # Commits are large batches, so this is one fsync per many thousand events.
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute(f"PRAGMA cache_size=-{cache_kib}")
            self._local.connection = connection
        return connection

    @staticmethod
    def _query_last_seq(connection: sqlite3.Connection) -> int:
        row = connection.execute("SELECT max(seq) FROM events").fetchone()
        return row[0] or 0

    def append(self, records: Iterable[EventRecord]) -> None:
        """Store events (in seq order); ones already stored must be byte-identical."""
        connection = self._connection()
        event_rows = []
        version_rows = []
        replayed = []
        for record in records:
            if record.seq <= self.last_seq:
                replayed.append(record)
                continue
            index = index_event(record.body)
            event_rows.append(event_row(record, index))
            version_rows.extend((account.account_id, record.seq, account.version, index.time_ms) for account in index.accounts)
        for record in replayed:
            # The chain commits to all history before it: checking the newest stored event that
            # the replay reaches checks every one below it.
            if record.seq != self.last_seq:
                continue
            row = connection.execute("SELECT hash FROM events WHERE seq = ?", (record.seq,)).fetchone()
            if row is None or row[0] != record.hash:
                raise EventStoreCorrupt(f"stored event {record.seq} differs from the one the log replays")
        if not event_rows:
            return
        connection.execute("BEGIN")
        try:
            connection.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", event_rows)
            connection.executemany("INSERT INTO account_versions VALUES (?, ?, ?, ?)", version_rows)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        self.last_seq = event_rows[-1][0]

    # ------------------------------------------------------------------ reads
    # events, history and account_events are HistoryStore's: the same SQL as the query side's store.

    def _rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._connection().execute(sql, tuple(parameters)).fetchall()

    def accounts_at(self, account_ids: Sequence[str], seq: int) -> dict[str, Account]:
        found = {}
        connection = self._connection()
        for account_id in account_ids:
            row = connection.execute(
                "SELECT e.body FROM account_versions v JOIN events e ON e.seq = v.seq "
                "WHERE v.account_id = ? AND v.seq <= ? ORDER BY v.seq DESC LIMIT 1",
                (account_id, seq),
            ).fetchone()
            if row is not None:
                found[account_id] = self._account_in(row[0], account_id)
        return found

    def event(self, seq: int) -> EventRecord | None:
        row = self._connection().execute(f"SELECT {record_columns} FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else record_of(row)

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

