"""The history reads both event stores answer with the same SQL.

Job: the node's SQLite store (:mod:`coffer.history.event_store`) and the query side's SQL store
(:mod:`coffer.query.sql_store`) hold the same ``events`` and ``account_versions`` tables and answer
the same questions for :mod:`coffer.query.reads`: events in a seq or time range, an account's
versions, the events that changed an account. Those queries and the decoding of their rows are
written here once, so both stores answer the same rows for the same question, as is the row an
event becomes in ``events``.

Method: SQL is written with ``?`` placeholders; each store runs it through its own :meth:`HistoryStore._rows`,
which is where the query side puts PostgreSQL's ``%s`` in their place. Rows are decoded to exact
``int`` and ``bytes`` whatever the driver hands back. Ranges are half-open: ``from_*`` inclusive,
``to_*`` exclusive. Each store reads an account at a seq its own way (one probe per account on the
node, one statement per thousand accounts on the query side), so :meth:`HistoryStore.accounts_at`
is left to it.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from coffer.core.accounts import Account
from coffer.core.events import EventIndex, EventRecord, event_decoder

EventRow = tuple[int, int, int, str | None, str, bytes, bytes, bytes]
"""(seq, log_index, time_ms, dedup_id, type, body, prev_hash, hash): a row of ``events``."""

record_columns = "seq, body, prev_hash, hash"
"""The columns :func:`record_of` decodes, in its order (prefix them with a table alias in a join)."""


class HistoryStore(ABC):
    """An event store as the history reads see it."""

    corrupt: ClassVar[type[RuntimeError]] = RuntimeError
    """What a store raises when an indexed event does not hold the account it is indexed under."""

    @abstractmethod
    def _rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of ``sql`` (written with ``?`` placeholders), on this thread's connection."""

    @abstractmethod
    def accounts_at(self, account_ids: Sequence[str], seq: int) -> dict[str, Account]:
        """Each account as it was right after event ``seq`` (absent if it did not exist yet)."""

    def events(
        self,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time_ms: int | None = None,
        to_time_ms: int | None = None,
        limit: int = 1000,
    ) -> list[EventRecord]:
        """Events in the half-open ranges, in seq order."""
        conditions, parameters = _range_conditions("seq", "time_ms", from_seq, to_seq, from_time_ms, to_time_ms)
        rows = self._rows(f"SELECT {record_columns} FROM events {_where(conditions)} ORDER BY seq LIMIT ?", (*parameters, limit))
        return [record_of(row) for row in rows]

    def history(
        self,
        account_id: str,
        from_seq: int | None = None,
        to_seq: int | None = None,
        from_time_ms: int | None = None,
        to_time_ms: int | None = None,
        limit: int = 1000,
    ) -> list[tuple[int, int, Account]]:
        """(seq, time_ms, account) for every version of the account in range, oldest first."""
        conditions, parameters = _range_conditions("v.seq", "v.time_ms", from_seq, to_seq, from_time_ms, to_time_ms)
        rows = self._rows(
            "SELECT v.seq, v.time_ms, e.body FROM account_versions v JOIN events e ON e.seq = v.seq "
            f"{_where(['v.account_id = ?', *conditions])} ORDER BY v.seq LIMIT ?",
            (account_id, *parameters, limit),
        )
        return [(int(seq), int(time_ms), self._account_in(bytes(body), account_id)) for seq, time_ms, body in rows]

    def account_events(self, account_id: str, from_seq: int, to_seq: int | None, limit: int) -> list[EventRecord]:
        """The events that changed the account, ``from_seq <= seq < to_seq``, in seq order."""
        conditions, parameters = _range_conditions("v.seq", "v.time_ms", from_seq, to_seq, None, None)
        rows = self._rows(
            "SELECT e.seq, e.body, e.prev_hash, e.hash FROM account_versions v JOIN events e ON e.seq = v.seq "
            f"{_where(['v.account_id = ?', *conditions])} ORDER BY v.seq LIMIT ?",
            (account_id, *parameters, limit),
        )
        return [record_of(row) for row in rows]

    def _account_in(self, body: bytes, account_id: str) -> Account:
        """The account as the event ``body`` left it: its version rows point at this event."""
        for account in event_decoder.decode(body).accounts:
            if account.account_id == account_id:
                return account
        raise self.corrupt(f"an indexed event does not hold account {account_id}")


def event_row(record: EventRecord, index: EventIndex) -> EventRow:
    """The ``events`` row of ``record``: its link in the chain, and what ``index`` read from its bytes."""
    return (
        record.seq,
        index.log_index,
        index.time_ms,
        index.dedup_id,
        index.type,
        record.body,
        record.prev_hash,
        record.hash,
    )


def record_of(row: Sequence[Any]) -> EventRecord:
    """An event from a row of :data:`record_columns`."""
    seq, body, prev_hash, hash_ = row
    return EventRecord(int(seq), bytes(body), bytes(prev_hash), bytes(hash_))


def _range_conditions(
    seq_column: str,
    time_column: str,
    from_seq: int | None,
    to_seq: int | None,
    from_time_ms: int | None,
    to_time_ms: int | None,
) -> tuple[list[str], list[Any]]:
    """The conditions (and their parameters) of half-open ranges: ``from_*`` inclusive, ``to_*`` exclusive."""
    conditions = []
    parameters: list[Any] = []
    for column, operator, value in (
        (seq_column, ">=", from_seq),
        (seq_column, "<", to_seq),
        (time_column, ">=", from_time_ms),
        (time_column, "<", to_time_ms),
    ):
        if value is not None:
            conditions.append(f"{column} {operator} ?")
            parameters.append(value)
    return conditions, parameters


def _where(conditions: Sequence[str]) -> str:
    """A ``WHERE`` clause that needs all ``conditions`` (none: no clause)."""
    return ("WHERE " + " AND ".join(conditions)) if conditions else ""
