"""Group commit: concurrent requests become one log entry, one fsync, one apply.

Method (the request/response matching of a message broker, by log index and position):
requests put their commands on a pending list and wait on a future. One task on the event loop
takes everything pending (up to :data:`entry_commands_max`), encodes it as one entry, and hands
it to a single writer thread that appends it to the log and fsyncs. While that write is in
flight, new requests gather for the next entry. When the write is durable, the same task applies
the entry to the replica on the event loop thread — the only thread that ever touches the state —
and resolves each waiting future with the results at its positions. Reads on the event loop
therefore always see the state between two entries, never in the middle of one.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from coffer.core.accounts import Result
from coffer.core.commands import Command
from coffer.core.events import EventRecord
from coffer.log.base import LogError, LogRecord
from coffer.replica import Replica, encode_entry

logger = logging.getLogger(__name__)

entry_commands_max = 8190  # one entry holds at most one full POST /v1/commands
min_seq_wait_s_max = 2.0  # how long a read waits for this node to reach min_seq before 503


class LogUnavailable(Exception):
    """The log refused the write: the command's fate is unknown to this node."""


@dataclass(slots=True)
class Outcome:
    result: Result
    log_index: int
    event: EventRecord | None  # the event this very entry emitted for it; None for a replay


@dataclass(slots=True)
class _Waiter:
    commands: list[Command]
    future: asyncio.Future[list[Outcome]]


@dataclass(slots=True)
class _Inflight:
    waiters: list[_Waiter]
    commands: list[Command]
    future: asyncio.Future[LogRecord]
    started: float = field(default_factory=time.perf_counter)


class Pipeline:
    def __init__(self, replica: Replica, on_entry: Callable[[int, float, int], None] | None = None) -> None:
        self.replica = replica
        self._pending: list[_Waiter] = []
        self._pending_commands = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coffer-log-writer")
        self._seq_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.broken: BaseException | None = None
        self._on_entry = on_entry  # metrics hook: (commands, append seconds, events)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="coffer-pipeline")

    async def submit(self, commands: list[Command]) -> list[Outcome]:
        """Append the commands (in order, possibly over several entries) and return their outcomes."""
        if self.broken is not None:
            raise LogUnavailable(str(self.broken))
        loop = asyncio.get_running_loop()
        outcomes: list[Outcome] = []
        futures = []
        for start in range(0, len(commands), entry_commands_max):
            chunk = commands[start : start + entry_commands_max]
            future: asyncio.Future[list[Outcome]] = loop.create_future()
            self._pending.append(_Waiter(chunk, future))
            self._pending_commands += len(chunk)
            futures.append(future)
        self._wakeup.set()
        for future in futures:
            outcomes.extend(await future)
        return outcomes

    def _take(self) -> _Inflight:
        waiters: list[_Waiter] = []
        commands: list[Command] = []
        while self._pending and len(commands) + len(self._pending[0].commands) <= entry_commands_max:
            waiter = self._pending.pop(0)
            waiters.append(waiter)
            commands.extend(waiter.commands)
        self._pending_commands -= len(commands)
        payload = encode_entry(commands)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.replica.log.append, payload)
        return _Inflight(waiters, commands, future)

    async def _run(self) -> None:
        inflight: _Inflight | None = None
        while True:
            if inflight is None:
                while not self._pending:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                inflight = self._take()
            try:
                record = await inflight.future
            except LogError as error:
                # After a failed write the log refuses appends: nothing more can be promised.
                logger.critical("command log failed, refusing writes: %s", error)
                self.broken = error
                self._fail(inflight.waiters, error)
                self._fail(self._pending, error)
                self._pending.clear()
                return
            appended = time.perf_counter() - inflight.started
            upcoming = self._take() if self._pending else None
            self._apply(record, inflight, appended)
            inflight = upcoming

    @staticmethod
    def _fail(waiters: list[_Waiter], error: BaseException) -> None:
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(LogUnavailable(str(error)))

    def _apply(self, record: LogRecord, inflight: _Inflight, appended_s: float) -> None:
        results, events = self.replica.apply(record, inflight.commands)
        first_seq = events[0].seq if events else 0
        position = 0
        for waiter in inflight.waiters:
            outcomes = []
            for result in results[position : position + len(waiter.commands)]:
                event = None
                if result.seq >= first_seq and events and result.seq <= events[-1].seq and result.code == "OK":
                    event = events[result.seq - first_seq]
                outcomes.append(Outcome(result, record.index, event))
            position += len(waiter.commands)
            if not waiter.future.done():
                waiter.future.set_result(outcomes)
        self._wake_seq_waiters()
        self.replica.maybe_snapshot()
        if self._on_entry is not None:
            self._on_entry(len(inflight.commands), appended_s, len(events))

    # ------------------------------------------------------------------ read-your-writes

    def _wake_seq_waiters(self) -> None:
        if not self._seq_waiters:
            return
        seq = self.replica.machine.seq
        still = []
        for wanted, future in self._seq_waiters:
            if wanted <= seq:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((wanted, future))
        self._seq_waiters = still

    async def wait_for_seq(self, seq: int, timeout_s: float = min_seq_wait_s_max) -> bool:
        """True once this node has applied ``seq``; False if it has not within the timeout."""
        if self.replica.machine.seq >= seq:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq_waiters.append((seq, future))
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            # Let what is pending or in flight finish: those requests may already be durable.
            deadline = time.monotonic() + 10
            while (self._pending or self._task.done() is False) and time.monotonic() < deadline:
                if not self._pending:
                    break
                await asyncio.sleep(0.01)
            self._task.cancel()
        self._executor.shutdown(wait=True)
