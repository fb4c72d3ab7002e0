"""The query side's event store: events, account versions and the hierarchy, in SQLite or PostgreSQL.

Job: keep a verified copy of a node's history in SQL, for history, snapshots at a seq, hierarchy
sums and audits, and hold the query side's own metadata (hierarchy nodes, projector progress).

Method: one code path over plain DB-API for both databases. SQL is written once with ``?``
placeholders in the subset both speak (``WITH … VALUES``, correlated sub-queries, ``LIMIT``);
only three things differ and are chosen by :class:`Dialect`: the placeholder (``%s`` for
psycopg), the name of the bytes type in DDL, and bulk loading (PostgreSQL's binary ``COPY``,
SQLite's ``executemany``: each is the fastest path of its database). The history reads (events,
an account's versions and events) are :class:`coffer.history.history_store.HistoryStore`'s, the
same SQL as the node's store. Each thread gets its own connection. Transactions are explicit:
one per appended batch, so a crash leaves whole batches, and the store's last seq is always a
consistent resume point.

Schema migrations are the numbered steps of :data:`migrations`; ``schema_version`` records the
highest one applied. Steps only ever get appended.

Amounts (``available``) reach 2^127 minor units: PostgreSQL stores them as ``NUMERIC(39, 0)``
(migration 4), SQLite as decimal integer text (its numeric affinity would turn an integer beyond 64
bits into a float). Both read back as exact Python integers, and sums are done in Python.

DSNs: ``postgresql://…`` (or ``postgres://…``) for PostgreSQL; ``sqlite:///path``,
``sqlite:path`` or a bare file path for SQLite.
"""

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from coffer.core.accounts import Account
from coffer.core.events import EventIndex, EventRecord, genesis_hash, index_event
from coffer.history.history_store import EventRow, HistoryStore, event_row

ids_per_statement_max = 1_000  # well under SQLite's 32,766 and PostgreSQL's 65,535 parameters
sqlite_busy_timeout_ms = 10_000  # a reader and the projector share the file; wait, don't fail
sqlite_cache_kib = 128 * 1024  # the hot pages of the version index stay in memory

VersionRow = tuple[str, int, int, int, str, int, str]
"""(account_id, seq, version, time_ms, asset, scale, available as decimal text)"""

ChildRow = tuple[str, int, str, str]
"""(node_id, position, child_id, child_kind) with child_kind ``account`` or ``node``"""

event_columns = "seq, log_index, time_ms, dedup_id, type, body, prev_hash, hash"
version_columns = "account_id, seq, version, time_ms, asset, scale, available"


class StoreError(RuntimeError):
    """The store cannot be opened or used (bad DSN, unreachable database, missing driver)."""


class StoreCorrupt(RuntimeError):
    """A derived row does not match the event bytes it was derived from."""


@dataclass(frozen=True)
class Migration:
    version: int
    summary: str
    statements: tuple[str, ...]  # ``{bytes}`` and ``{without_rowid}`` are filled in per dialect
    dialects: tuple[str, ...] = ("sqlite", "postgresql")  # where the statements run (elsewhere: a no-op step)


migrations: tuple[Migration, ...] = (
    Migration(
        1,
        "events and account versions",
        (
            """CREATE TABLE events (
                seq BIGINT PRIMARY KEY,
                log_index BIGINT NOT NULL,
                time_ms BIGINT NOT NULL,
                dedup_id TEXT,
                type TEXT NOT NULL,
                body {bytes} NOT NULL,
                prev_hash {bytes} NOT NULL,
                hash {bytes} NOT NULL
            )""",
            "CREATE INDEX events_time ON events (time_ms, seq)",
            # One key serves an account's history (in version order, since versions grow with seq)
            # and "its latest version at or below seq N" alike.
            """CREATE TABLE account_versions (
                account_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                version BIGINT NOT NULL,
                time_ms BIGINT NOT NULL,
                asset TEXT NOT NULL,
                scale INTEGER NOT NULL,
                available TEXT NOT NULL,
                PRIMARY KEY (account_id, seq)
            ){without_rowid}""",
        ),
    ),
    Migration(
        2,
        "account hierarchy",
        (
            "CREATE TABLE hierarchy_nodes (node_id TEXT PRIMARY KEY)",
            """CREATE TABLE hierarchy_children (
                node_id TEXT NOT NULL REFERENCES hierarchy_nodes (node_id),
                position INTEGER NOT NULL,
                child_id TEXT NOT NULL,
                child_kind TEXT NOT NULL CHECK (child_kind IN ('account', 'node')),
                PRIMARY KEY (node_id, child_id)
            )""",
            # A tree: an account or a node is the child of at most one node.
            "CREATE UNIQUE INDEX hierarchy_children_child ON hierarchy_children (child_id, child_kind)",
        ),
    ),
    Migration(
        3,
        "projector progress (what was published downstream)",
        ("CREATE TABLE projector_state (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",),
    ),
    Migration(
        4,
        "balances as NUMERIC in PostgreSQL: exact up to 2^127 minor units, and summable in SQL",
        ("ALTER TABLE account_versions ALTER COLUMN available TYPE NUMERIC(39, 0) USING available::NUMERIC(39, 0)",),
        # SQLite keeps decimal text: its NUMERIC affinity turns an integer beyond 64 bits into a
        # float, which would round money.
        dialects=("postgresql",),
    ),
)


class Dialect:
    """What differs between the two databases; everything else is shared SQL."""

    name = ""
    bytes_type = ""
    without_rowid = ""

    def connect(self) -> Any:
        raise NotImplementedError

    def sql(self, text: str) -> str:
        return text

    @contextlib.contextmanager
    def transaction(self, connection: Any) -> Iterator[None]:
        raise NotImplementedError
        yield

    def lock_migrations(self, connection: Any) -> None:
        """Serialize concurrent migrations (a projector and a query server starting together)."""

    def bulk_insert(
        self, connection: Any, table: str, columns: str, types: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        raise NotImplementedError

    def ddl(self, statement: str) -> str:
        return statement.format(bytes=self.bytes_type, without_rowid=self.without_rowid)


class SqliteDialect(Dialect):
    name = "sqlite"
    bytes_type = "BLOB"
    without_rowid = " WITHOUT ROWID"

    def __init__(self, path: Path) -> None:
        self.path = path

    def connect(self) -> sqlite3.Connection:
        if self.path.parent != Path() and not self.path.parent.exists():
            raise StoreError(f"no directory {self.path.parent} for the SQLite store")
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE … COMMIT), one per batch.
        # check_same_thread=False only so that close() may run on another thread; each connection
        # is used by the one thread that opened it.
        connection = sqlite3.connect(
            self.path, isolation_level=None, timeout=sqlite_busy_timeout_ms / 1000, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")  # readers do not block the projector
        # NORMAL in WAL mode survives a killed process; an OS crash may lose the last batches,
        # which the projector then fetches again (the store is a rebuildable copy).
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(f"PRAGMA cache_size=-{sqlite_cache_kib}")
        return connection

    @contextlib.contextmanager
    def transaction(self, connection: sqlite3.Connection) -> Iterator[None]:
        connection.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock
        try:
            yield
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def bulk_insert(
        self, connection: sqlite3.Connection, table: str, columns: str, types: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        marks = ", ".join("?" for _ in types)
        connection.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)


class PostgresDialect(Dialect):
    name = "postgresql"
    bytes_type = "BYTEA"
    migration_lock_key = 0x636F66666572  # "coffer": the advisory lock that serializes migrations

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._sql: dict[str, str] = {}

    def connect(self) -> Any:
        try:
            import psycopg
        except ImportError as error:
            raise StoreError("PostgreSQL needs psycopg: pip install 'psycopg[binary]'") from error
        try:
            return psycopg.connect(self.dsn, autocommit=True)
        except psycopg.OperationalError as error:
            raise StoreError(f"cannot connect to PostgreSQL: {error}") from error

    def sql(self, text: str) -> str:
        converted = self._sql.get(text)
        if converted is None:
            converted = self._sql[text] = text.replace("%", "%%").replace("?", "%s")
        return converted

    @contextlib.contextmanager
    def transaction(self, connection: Any) -> Iterator[None]:
        with connection.transaction():
            yield

    def lock_migrations(self, connection: Any) -> None:
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (self.migration_lock_key,))

    def bulk_insert(
        self, connection: Any, table: str, columns: str, types: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        # Binary COPY: no per-row statement, no text escaping of the event bytes. Amounts travel as
        # decimal text and become exact NUMERIC values (Decimal keeps every digit of 2^127).
        numeric = [position for position, kind in enumerate(types) if kind == "numeric"]
        with connection.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(types))
            for row in rows:
                if numeric:
                    values = list(row)
                    for position in numeric:
                        values[position] = Decimal(values[position])
                    row = tuple(values)
                copy.write_row(row)


def dialect_for(dsn: str) -> Dialect:
    """The dialect a DSN names (see the module docstring)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return PostgresDialect(dsn)
    if dsn.startswith("sqlite:"):
        path = dsn.removeprefix("sqlite:")
        if path.startswith("///"):
            path = path[2:]  # sqlite:///abs/path -> /abs/path (the URL form)
        elif path.startswith("//"):
            raise StoreError(f"a SQLite DSN is sqlite:///path or sqlite:path, not {dsn!r}")
        return SqliteDialect(Path(path))
    if "://" in dsn:
        raise StoreError(f"unsupported store {dsn!r}: use postgresql://… or a SQLite path")
    return SqliteDialect(Path(dsn))




def rows_of(record: EventRecord, index: EventIndex | None = None) -> tuple[EventRow, list[VersionRow]]:
    """The event row and the account version rows that ``record`` becomes."""
    if index is None:
        index = index_event(record.body)
    version_rows: list[VersionRow] = [
        (account.account_id, record.seq, account.version, index.time_ms, account.asset, account.scale, str(account.available))
        for account in index.accounts
    ]
    return event_row(record, index), version_rows


_event_types = ("bigint", "bigint", "bigint", "text", "text", "bytea", "bytea", "bytea")
_version_types = ("text", "bigint", "bigint", "bigint", "text", "integer", "numeric")


class SqlStore(HistoryStore):
    """One store; safe to share between threads (each thread uses its own connection)."""

    corrupt = StoreCorrupt

    def __init__(self, dsn: str, *, migrate: bool = True) -> None:
        self.dsn = dsn
        self.dialect = dialect_for(dsn)
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()
        if migrate:
            self.migrate()

    @property
    def kind(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.dialect.name

    # ------------------------------------------------------------------ plumbing

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self.dialect.connect()
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._connection().execute(self.dialect.sql(sql), tuple(parameters))
        return [tuple(row) for row in cursor.fetchall()]

    def _one(self, sql: str, parameters: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self._rows(sql, parameters)
        return rows[0] if rows else None

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> None:
        """Run one statement in its own transaction (maintenance, and the tamper tests)."""
        connection = self._connection()
        with self.dialect.transaction(connection):
            connection.execute(self.dialect.sql(sql), tuple(parameters))

    def close(self) -> None:
        """Close every connection this store opened (call once no thread uses it any more)."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.close()
        self._local = threading.local()

    # ------------------------------------------------------------------ schema

    def schema_version(self) -> int:
        connection = self._connection()
        connection.execute(self.dialect.sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
        row = self._one("SELECT max(version) FROM schema_version")
        return 0 if row is None or row[0] is None else int(row[0])

    def migrate(self) -> int:
        """Apply the migration steps not applied yet, each in its own transaction; return the version."""
        connection = self._connection()
        connection.execute(self.dialect.sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
        for migration in migrations:
            with self.dialect.transaction(connection):
                self.dialect.lock_migrations(connection)
                row = connection.execute(self.dialect.sql("SELECT max(version) FROM schema_version")).fetchone()
                if row is not None and row[0] is not None and row[0] >= migration.version:
                    continue
                if self.dialect.name in migration.dialects:
                    for statement in migration.statements:
                        connection.execute(self.dialect.ddl(statement))
                connection.execute(self.dialect.sql("INSERT INTO schema_version (version) VALUES (?)"), (migration.version,))
        return self.schema_version()

    # ------------------------------------------------------------------ writes

    def append(self, event_rows: Sequence[EventRow], version_rows: Sequence[VersionRow]) -> None:
        """Store a batch in one transaction. Seqs must follow the stored ones (the caller checked)."""
        if not event_rows:
            return
        connection = self._connection()
        with self.dialect.transaction(connection):
            self.dialect.bulk_insert(connection, "events", event_columns, _event_types, event_rows)
            if version_rows:
                self.dialect.bulk_insert(connection, "account_versions", version_columns, _version_types, version_rows)

    def set_progress(self, name: str, value: int) -> None:
        connection = self._connection()
        with self.dialect.transaction(connection):
            connection.execute(self.dialect.sql("DELETE FROM projector_state WHERE name = ?"), (name,))
            connection.execute(self.dialect.sql("INSERT INTO projector_state (name, value) VALUES (?, ?)"), (name, value))

    def progress(self, name: str) -> int | None:
        row = self._one("SELECT value FROM projector_state WHERE name = ?", (name,))
        return None if row is None else int(row[0])

    # ------------------------------------------------------------------ events

    def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the newest stored event; (0, genesis hash) when empty."""
        row = self._one("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        return (0, genesis_hash) if row is None else (int(row[0]), bytes(row[1]))

    def last_seq(self) -> int:
        return self.head()[0]

    # events is HistoryStore's: the same SQL as the node's store.

    def event_rows(self, from_seq: int, limit: int) -> list[EventRow]:
        """Whole event rows from ``from_seq`` on, in seq order (the audit compares every column)."""
        rows = self._rows(f"SELECT {event_columns} FROM events WHERE seq >= ? ORDER BY seq LIMIT ?", (from_seq, limit))
        return [
            (int(seq), int(log_index), int(time_ms), dedup_id, kind, bytes(body), bytes(prev_hash), bytes(hash_))
            for seq, log_index, time_ms, dedup_id, kind, body, prev_hash, hash_ in rows
        ]

    def version_rows(self, from_seq: int, to_seq: int) -> list[VersionRow]:
        """Account version rows with ``from_seq <= seq < to_seq``, by (seq, account_id)."""
        rows = self._rows(
            f"SELECT {version_columns} FROM account_versions WHERE seq >= ? AND seq < ? ORDER BY seq, account_id",
            (from_seq, to_seq),
        )
        return [
            (account_id, int(seq), int(version), int(time_ms), asset, int(scale), str(int(available)))
            for account_id, seq, version, time_ms, asset, scale, available in rows
        ]

    # ------------------------------------------------------------------ accounts

    # history and account_events are HistoryStore's as well.

    def accounts_at(self, account_ids: Sequence[str], seq: int) -> dict[str, Account]:
        found: dict[str, Account] = {}
        for chunk in _chunks(list(dict.fromkeys(account_ids))):
            rows = self._rows(_latest_versions_sql(len(chunk), "e.body", "JOIN events e ON e.seq = v.seq"), (*chunk, seq))
            for account_id, body in rows:
                found[account_id] = self._account_in(bytes(body), account_id)
        return found

    def available_at(self, account_ids: Sequence[str], seq: int) -> dict[str, tuple[str, int, int]]:
        """account_id → (asset, scale, available in minor units) right after event ``seq``."""
        found: dict[str, tuple[str, int, int]] = {}
        for chunk in _chunks(list(dict.fromkeys(account_ids))):
            for account_id, asset, scale, available in self._rows(
                _latest_versions_sql(len(chunk), "v.asset, v.scale, v.available"), (*chunk, seq)
            ):
                found[account_id] = (asset, int(scale), int(available))
        return found

    def known_accounts(self, account_ids: Sequence[str]) -> set[str]:
        """Those of ``account_ids`` that have at least one stored version."""
        known: set[str] = set()
        for chunk in _chunks(list(dict.fromkeys(account_ids))):
            marks = ", ".join("(?)" for _ in chunk)
            rows = self._rows(
                f"WITH wanted (account_id) AS (VALUES {marks}) SELECT w.account_id FROM wanted w "
                "WHERE EXISTS (SELECT 1 FROM account_versions v WHERE v.account_id = w.account_id)",
                chunk,
            )
            known.update(row[0] for row in rows)
        return known

    # ------------------------------------------------------------------ hierarchy

    def hierarchy_rows(self) -> tuple[list[str], list[ChildRow]]:
        """Every node id, and every (node_id, position, child_id, child_kind) row."""
        nodes = [row[0] for row in self._rows("SELECT node_id FROM hierarchy_nodes ORDER BY node_id")]
        children = [
            (node_id, int(position), child_id, child_kind)
            for node_id, position, child_id, child_kind in self._rows(
                "SELECT node_id, position, child_id, child_kind FROM hierarchy_children ORDER BY node_id, position"
            )
        ]
        return nodes, children

    def change_hierarchy(self, change: Callable[[list[str], list[ChildRow]], tuple[list[str], list[ChildRow]]]) -> None:
        """Run ``change`` on the current hierarchy inside one serialized write transaction.

        ``change`` gets every node id and child row and returns the rows to write: the ids of
        the nodes it touched (their child rows are all replaced) and their new child rows. It
        raises to reject the change, and nothing is written. Validation and write see the same
        state, so two concurrent changes cannot together make a cycle.
        """
        connection = self._connection()
        with self.dialect.transaction(connection):
            if self.kind == "postgresql":
                connection.execute("LOCK TABLE hierarchy_nodes IN EXCLUSIVE MODE")
            nodes, children = change(*self.hierarchy_rows())
            # Children first: a moved child must leave its old node before it joins the new one.
            for node_id in nodes:
                connection.execute(self.dialect.sql("DELETE FROM hierarchy_children WHERE node_id = ?"), (node_id,))
            for node_id in nodes:
                connection.execute(self.dialect.sql("DELETE FROM hierarchy_nodes WHERE node_id = ?"), (node_id,))
                connection.execute(self.dialect.sql("INSERT INTO hierarchy_nodes (node_id) VALUES (?)"), (node_id,))
            for row in children:
                connection.execute(
                    self.dialect.sql(
                        "INSERT INTO hierarchy_children (node_id, position, child_id, child_kind) VALUES (?, ?, ?, ?)"
                    ),
                    row,
                )


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), ids_per_statement_max):
        yield items[start : start + ids_per_statement_max]


def _latest_versions_sql(count: int, columns: str, join: str = "") -> str:
    """Each wanted account's latest version at or below a seq (the last parameter).

    A correlated ``ORDER BY seq DESC LIMIT 1`` per account walks the primary key backwards: one
    index probe per account, however long its history.
    """
    marks = ", ".join("(?)" for _ in range(count))
    return (
        f"WITH wanted (account_id) AS (VALUES {marks}), "
        "latest (account_id, seq) AS (SELECT w.account_id, (SELECT x.seq FROM account_versions x "
        "WHERE x.account_id = w.account_id AND x.seq <= ? ORDER BY x.seq DESC LIMIT 1) FROM wanted w) "
        f"SELECT v.account_id, {columns} FROM latest l "
        f"JOIN account_versions v ON v.account_id = l.account_id AND v.seq = l.seq {join}"
    )

