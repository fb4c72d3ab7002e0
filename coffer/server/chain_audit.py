"""A node re-verifies its own stored history: ``GET /v1/audit/verify``.

Job: let an operator (at the console, or ``coffer audit run``) ask a node whether the history it
stores still holds together, without a query store or a second tool: every stored event's hash is
recomputed from its canonical bytes, seqs are gapless, each ``prev_hash`` links to the previous
event, the chain ends at the head the state machine holds, and the accounts folded from the events
alone equal the live ones.

Method: the chain head (seq, hash) is taken on the event loop, where entries are applied, so the
two belong together; the event store is read up to that seq in a worker thread, through the
audit's own :class:`coffer.query.audit.Replay` (the rules of ``coffer audit verify``). The folded
accounts are compared with the live state machine back on the event loop, in slices so writes
go on meanwhile; an account changed since the head was taken has a higher version and is left
for the next run. A node that started from a shared snapshot stores its history from that
snapshot on: its chain is verified from there, and account balances are not folded (the query
side holds the full history: ``coffer audit verify --store``).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from coffer.core.events import Event, EventRecord, genesis_hash
from coffer.core.state_machine import StateMachine
from coffer.history.event_store import EventStore
from coffer.query.audit import AuditFailed, Replay

events_per_read = 10_000  # one store read per this many events: memory stays flat on long histories
accounts_per_slice = 5_000  # accounts compared between two yields to the event loop


class _ChainReplay(Replay):
    """The chain rules only: for a history that starts after seq 1, whose accounts began earlier."""

    def _fold(self, event: Event) -> None:
        pass


class ChainAudit:
    """Runs one verification at a time (a second request waits for the first, then runs its own)."""

    def __init__(
        self, store: EventStore, machine: Callable[[], StateMachine], wait_stored: Callable[[int], Awaitable[None]]
    ) -> None:
        self._store = store
        self._machine = machine
        self._wait_stored = wait_stored
        self._running = asyncio.Lock()

    async def run(self) -> dict[str, Any]:
        async with self._running:
            return await self._run()

    async def _run(self) -> dict[str, Any]:
        started = time.perf_counter()
        machine = self._machine()
        head_seq, head_hash = machine.seq, machine.head
        await self._wait_stored(head_seq)
        notes: list[str] = []
        replay, first_seq, failure = await asyncio.to_thread(self._replay, head_seq, notes)
        compared = 0
        if failure is None and replay.seq != head_seq:
            failure = AuditFailed(replay.seq + 1, f"the store ends at seq {replay.seq}, before the head at seq {head_seq}")
        if failure is None and head_seq > 0 and replay.hash != head_hash:
            failure = AuditFailed(head_seq, "the stored chain ends at another hash than the state machine's head")
        if failure is None and not isinstance(replay, _ChainReplay):
            try:
                compared = await self._compare_accounts(replay, machine)
            except AuditFailed as found:
                failure = found
        if failure is None:
            notes.append(f"chain head seq {head_seq} hash {head_hash.hex()} matches the state machine")
            if compared or replay.accounts:
                notes.append(f"{compared} of {len(replay.accounts)} accounts compared with the live state (the rest changed since)")
        return {
            "ok": failure is None,
            "from_seq": first_seq,
            "seq": replay.seq,
            "hash": replay.hash.hex(),
            "head_seq": head_seq,
            "events": replay.seq - first_seq + 1,
            "accounts": len(replay.accounts),
            "accounts_compared": compared,
            "first_bad_seq": None if failure is None else (failure.seq or None),
            "problem": None if failure is None else failure.reason,
            "notes": notes,
            "elapsed_ms": round((time.perf_counter() - started) * 1000),
        }

    def _replay(self, head_seq: int, notes: list[str]) -> tuple[Replay, int, AuditFailed | None]:
        """Fold the stored events 1..head_seq (or from the first stored one); stop at the first bad one."""
        first = self._store.events(limit=1)
        replay: Replay = Replay()
        first_seq = first[0].seq if first else 1
        if first_seq > 1:
            replay = _ChainReplay()
            replay.seq, replay.hash = first_seq - 1, first[0].prev_hash
            notes.append(
                f"the store begins at seq {first_seq} (this node started from a snapshot): the chain is verified from there, "
                "balances are not folded"
            )
        else:
            replay.hash = genesis_hash
        next_seq = first_seq
        try:
            while next_seq <= head_seq:
                records: list[EventRecord] = self._store.events(from_seq=next_seq, to_seq=head_seq + 1, limit=events_per_read)
                if not records:
                    break
                for record in records:
                    replay.add(record)
                next_seq = records[-1].seq + 1
        except AuditFailed as failure:
            return replay, first_seq, failure
        return replay, first_seq, None

    @staticmethod
    async def _compare_accounts(replay: Replay, machine: StateMachine) -> int:
        """Each folded account against the live one, where the live one has not moved on since."""
        compared = 0
        for position, (account_id, folded) in enumerate(replay.accounts.items()):
            if position and position % accounts_per_slice == 0:
                await asyncio.sleep(0)  # let entries apply; versions tell which accounts moved on
            live = machine.accounts.get(account_id)
            if live is None:
                raise AuditFailed(replay.seq, f"account {account_id} is in the history but not in the state machine")
            if live.version < folded.version:
                raise AuditFailed(replay.seq, f"account {account_id} is at version {live.version}, the history at {folded.version}")
            if live.version == folded.version:
                if live != folded:
                    raise AuditFailed(replay.seq, f"account {account_id} differs from the state the events fold to")
                compared += 1
        return compared
