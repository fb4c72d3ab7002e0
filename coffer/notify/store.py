"""The webhooks' own durable state on a node: subscriptions, cursors and the delivery log (SQLite).

A subscription has a cursor per shard: the last seq whose delivery is settled (delivered, or not wanted) with
the threshold filter's state after it; it is committed only after the receiver acknowledged, so a
crash at any point delivers again (at least once) and never skips. Every attempt is a row of the
delivery log. One connection, used from one thread at a time (the notifier's calls are serialized
by a lock).
"""

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

schema = """
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    subscription_id TEXT NOT NULL,
    shard INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT,
    PRIMARY KEY (subscription_id, shard)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL,
    shard INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER,
    error TEXT,
    time_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_by_subscription ON deliveries (subscription_id, id);
"""


@dataclass(frozen=True)
class Cursor:
    seq: int
    state: int | None  # the threshold filter's last seen available balance


class NotifyStore:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")  # a cursor must survive a power cut
        self._connection.executescript(schema)

    def _run(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connection.execute(sql, parameters).fetchall()

    def add(self, subscription_id: str, definition: dict[str, Any], created_ms: int, cursors: dict[int, Cursor]) -> None:
        with self._lock:
            self._connection.execute("BEGIN")
            self._connection.execute(
                "INSERT INTO subscriptions (id, definition, created_ms) VALUES (?, ?, ?)", (subscription_id, json.dumps(definition), created_ms)
            )
            for shard, cursor in cursors.items():
                self._connection.execute(
                    "INSERT INTO cursors VALUES (?, ?, ?, ?)", (subscription_id, shard, cursor.seq, _state_text(cursor.state))
                )
            self._connection.execute("COMMIT")

    def remove(self, subscription_id: str) -> bool:
        with self._lock:
            self._connection.execute("BEGIN")
            removed = self._connection.execute("DELETE FROM subscriptions WHERE id = ?", (subscription_id,)).rowcount
            self._connection.execute("DELETE FROM cursors WHERE subscription_id = ?", (subscription_id,))
            self._connection.execute("COMMIT")
        return removed > 0

    def subscriptions(self) -> list[tuple[str, dict[str, Any], int]]:
        rows = self._run("SELECT id, definition, created_ms FROM subscriptions ORDER BY created_ms, id")
        return [(row[0], json.loads(row[1]), row[2]) for row in rows]

    def cursors(self, subscription_id: str) -> dict[int, Cursor]:
        rows = self._run("SELECT shard, seq, state FROM cursors WHERE subscription_id = ? ORDER BY shard", (subscription_id,))
        return {shard: Cursor(seq, None if state is None else int(state)) for shard, seq, state in rows}

    def save_cursor(self, subscription_id: str, shard: int, cursor: Cursor) -> None:
        self._run(
            "INSERT INTO cursors VALUES (?, ?, ?, ?) ON CONFLICT (subscription_id, shard) DO UPDATE SET seq = excluded.seq, state = excluded.state",
            (subscription_id, shard, cursor.seq, _state_text(cursor.state)),
        )

    def log(
        self, subscription_id: str, shard: int, seq: int, attempt: int, outcome: str, http_status: int | None, error: str | None, time_ms: int
    ) -> None:
        self._run(
            "INSERT INTO deliveries (subscription_id, shard, seq, attempt, outcome, http_status, error, time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (subscription_id, shard, seq, attempt, outcome, http_status, error, time_ms),
        )

    def deliveries(self, subscription_id: str, limit: int, before_id: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT id, shard, seq, attempt, outcome, http_status, error, time_ms FROM deliveries WHERE subscription_id = ?"
        parameters: tuple[Any, ...] = (subscription_id,)
        if before_id is not None:
            sql += " AND id < ?"
            parameters += (before_id,)
        rows = self._run(sql + " ORDER BY id DESC LIMIT ?", (*parameters, limit))
        keys = ("id", "shard", "seq", "attempt", "outcome", "http_status", "error", "time_ms")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def _state_text(state: int | None) -> str | None:
    return None if state is None else str(state)  # text: a balance may pass 64 bits
