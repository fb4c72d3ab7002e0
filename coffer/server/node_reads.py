"""The node's side of the shared history reads and of the account hierarchy.

Job: let a node answer the history questions of :mod:`coffer.query.reads` and the hierarchy
routes of :mod:`coffer.query.hierarchy_service` from its own event store, with the same code as
the query server: only "how far is the store complete" and "where do hierarchy rows live" differ.

Method: a node's store is complete up to what the node has applied once its writer thread has
stored it, so :meth:`NodeReads.settle` waits for ``min_seq`` to be applied (503 after the usual
wait) and for the store to catch up with the applied seq. The hierarchy is the query side's
tables in a SQLite file of the node's data directory (``hierarchy.sqlite3``, through
:class:`coffer.query.sql_store.SqlStore`, which also creates its event tables there, left empty);
its balances are summed from the node's event store. The hierarchy is not part of the replicated
log: each node keeps its own, as each query server does.
"""

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from coffer.core.errors import ErrorCode
from coffer.history.event_store import EventStore
from coffer.history.history_store import HistoryStore
from coffer.query.reads import ReadError
from coffer.query.sql_store import ChildRow, SqlStore

hierarchy_file_name = "hierarchy.sqlite3"


class NodeReads:
    """A :class:`coffer.query.reads.ReadSource` over the node's event store."""

    def __init__(
        self,
        store: EventStore,
        applied_seq: Callable[[], int],
        wait_applied: Callable[[int], Awaitable[bool]],
        wait_stored: Callable[[int], Awaitable[None]],
    ) -> None:
        self._store = store
        self._applied_seq = applied_seq
        self._wait_applied = wait_applied
        self._wait_stored = wait_stored

    @property
    def store(self) -> HistoryStore:
        return self._store

    async def settle(self, min_seq: int | None, range_end_seq: int | None) -> int:
        # range_end_seq is not waited for: a node answers what it has applied (at_seq beyond it is 503).
        if min_seq is not None and not await self._wait_applied(min_seq):
            raise ReadError(503, ErrorCode.NOT_AVAILABLE, f"this node has not applied seq {min_seq} yet")
        seq = self._applied_seq()
        await self._wait_stored(seq)
        return seq

    async def run(self, function: Callable[..., Any], *arguments: Any) -> Any:
        return await asyncio.to_thread(function, *arguments)


class NodeHierarchy:
    """A :class:`coffer.query.hierarchy_service.HierarchyBackend`: rows in the node's data
    directory, accounts and balances from its event store."""

    def __init__(self, data_dir: Path, store: EventStore, known: Callable[[Sequence[str]], set[str]]) -> None:
        self._path = data_dir / hierarchy_file_name
        self._rows: SqlStore | None = None
        self._opening = threading.Lock()  # two first requests in two worker threads open it once
        self._store = store
        self._known = known

    def _hierarchy(self) -> SqlStore:
        with self._opening:
            if self._rows is None:  # opened on first use: most nodes never hold a hierarchy
                self._rows = SqlStore(f"sqlite:{self._path}")
            return self._rows

    def hierarchy_rows(self) -> tuple[list[str], list[ChildRow]]:
        return self._hierarchy().hierarchy_rows()

    def change_hierarchy(self, change: Callable[[list[str], list[ChildRow]], tuple[list[str], list[ChildRow]]]) -> None:
        self._hierarchy().change_hierarchy(change)

    def known_accounts(self, account_ids: Sequence[str]) -> set[str]:
        return self._known(account_ids)

    def available_at(self, account_ids: Sequence[str], seq: int) -> dict[str, tuple[str, int, int]]:
        found = self._store.accounts_at(list(dict.fromkeys(account_ids)), seq)
        return {account_id: (account.asset, account.scale, account.available) for account_id, account in found.items()}

    def close(self) -> None:
        with self._opening:
            if self._rows is not None:
                self._rows.close()
                self._rows = None
