"""Group commit: concurrent requests become one log entry, one durable write, one apply.

Method (the request/response matching of a message broker): requests put their commands on a
pending queue and wait on a future. A task on the event loop takes everything pending (up to
:data:`entry_commands_max`), encodes it as one entry, and hands it to a writer thread that appends
it to the log. While that write is in flight, new requests gather for the next entry. Entries are
applied on the event loop thread — the only thread that ever touches the state — so reads always
see the state between two entries, never inside one.

Two ways to learn that an entry is durable and where it landed:

- :class:`Pipeline` (one node, local WAL): this node is the log's only writer, so it applies its
  entry as soon as the append returns, with the index the append gave it.
- :class:`FollowerPipeline` (a cluster on a shared log): any node appends, so every node applies
  every entry as it reads the log back, in the log's order. An entry carries an ``origin`` that
  its appender made up, and the appender finds its waiting requests by it when the entry comes
  back — the index of the publish acknowledgement is not needed to match them.

The batching itself — which waiting requests make up the next entry, and which results of an
applied entry belong to which request — is two pure functions, :func:`gather` and
:func:`outcomes_by_request`, which the deterministic simulator runs too.
"""

import asyncio
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import msgspec

from coffer.core.accounts import OK, Effect, Result
from coffer.core.commands import Command
from coffer.core.entries import EntryFormatError, decode_entry, encode_entry
from coffer.core.events import Actor, EventRecord
from coffer.core.state_machine import protocol_version_max
from coffer.http.limits import commands_per_request_max
from coffer.log.base import LogDiskFullError, LogError, LogRecord, LogTruncatedError
from coffer.replica import Replica, store_backlog_events_max

logger = logging.getLogger(__name__)

entry_commands_max = commands_per_request_max  # one entry holds at most one full POST /v1/commands
min_seq_wait_s_max = 2.0  # how long a read waits for this node to reach min_seq before 503
follow_wait_s = 0.25  # one follow call waits this long for new records before looping
appends_in_flight_max = 4  # cluster: entries published and not yet acknowledged, per node
deadline_poll_s = 0.1  # how often a node looks for a TCC deadline due on a quiet ledger
deadline_tick_wait_s_max = 10.0  # a time-only entry that takes longer is given up (the next poll retries)
apply_wait_s_max = 15.0  # cluster: an acknowledged entry must come back within this, or 503


class LogUnavailable(Exception):
    """The log refused or did not confirm the write: the command's fate is unknown to this node."""


class DiskFull(Exception):
    """This node's disk is full: it refuses commands (none of them was stored) until space is back."""


@dataclass(slots=True)
class Outcome:
    result: Result
    log_index: int
    event: EventRecord | None  # the event this very entry emitted for it; None for a replay
    effect: Effect | None = None  # what the command did (the answer's content); None for a rejection


@dataclass(slots=True)
class _Waiter:
    commands: list[Command]
    future: asyncio.Future[list[Outcome]]
    actor: Actor | None = None  # who sent these commands (every command of a request has one sender)


@dataclass(slots=True)
class _Inflight:
    waiters: list[_Waiter]
    commands: list[Command]
    actors: list[Actor | None] | None = None
    started: float = field(default_factory=time.perf_counter)
    future: "asyncio.Future[LogRecord] | asyncio.Future[int] | None" = None


EntryHook = Callable[[int, float, int], None]  # (commands, seconds from hand-off to applied, events)


class Request(Protocol):
    """What :func:`gather` needs of a waiting request."""

    @property
    def commands(self) -> list[Command]: ...

    @property
    def actor(self) -> Actor | None: ...


RequestT = TypeVar("RequestT", bound=Request)


def gather(pending: deque[RequestT]) -> tuple[list[RequestT], list[Command], list[Actor | None] | None]:
    """Take requests off the front of ``pending`` while they fit in one entry (group commit).

    Returns the requests, their commands in order, and one actor per command — or ``None`` when
    no request has an actor, so that an entry without credentials carries none.
    """
    requests: list[RequestT] = []
    commands: list[Command] = []
    with_actor = False
    while pending and len(commands) + len(pending[0].commands) <= entry_commands_max:
        request = pending.popleft()
        requests.append(request)
        commands.extend(request.commands)
        with_actor = with_actor or request.actor is not None
    actors: list[Actor | None] | None = None
    if with_actor:
        actors = []
        for request in requests:
            actors.extend([request.actor] * len(request.commands))
    return requests, commands, actors


def outcomes_by_request(
    request_sizes: Sequence[int],
    log_index: int,
    results: list[Result],
    events: list[EventRecord],
    effects: Sequence[Effect | None] | None = None,
) -> list[list[Outcome]]:
    """Split an applied entry's results among its requests, in the order :func:`gather` took them.

    Each accepted command's outcome carries the event this very entry emitted for it (found by
    its seq); a command answered from the dedup store gets none. ``effects`` (one per command)
    are what the commands did, which their answers show.
    """
    first_seq = events[0].seq if events else 0
    last_seq = events[-1].seq if events else -1
    by_request = []
    position = 0
    for size in request_sizes:
        outcomes = []
        for offset, result in enumerate(results[position : position + size], position):
            event = events[result.seq - first_seq] if result.code == OK and first_seq <= result.seq <= last_seq else None
            outcomes.append(Outcome(result, log_index, event, None if effects is None else effects[offset]))
        position += size
        by_request.append(outcomes)
    return by_request


class Pipeline:
    def __init__(self, replica: Replica, on_entry: EntryHook | None = None) -> None:
        self.replica = replica
        self._pending: deque[_Waiter] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coffer-log-writer")
        self._seq_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.broken: BaseException | None = None
        self._on_entry = on_entry
        # Called after every applied entry with (log_index, seq, chain head): checkpoints.
        self.applied_hooks: list[Callable[[int, int, bytes], None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._run(), name="coffer-pipeline"))
        self._tasks.append(asyncio.get_running_loop().create_task(self._keep_deadlines(), name="coffer-deadlines"))

    async def _keep_deadlines(self) -> None:
        """Append a time-only entry when a TCC deadline has passed and nothing else was written.

        Deadlines take effect by log time, when an entry is applied; on a quiet ledger no entry
        would come. Every replica still expires the same tries at the same log index: the entry
        is in the log like any other. In a cluster several nodes may each append one; the later
        ones find nothing due and change nothing but the clock.
        """
        while True:
            await asyncio.sleep(deadline_poll_s)
            if self.broken is not None:
                return
            deadline_ms = self.replica.machine.next_deadline_ms()
            if deadline_ms is None or time.time() * 1000 < deadline_ms or self._pending:
                continue
            try:
                await asyncio.wait_for(self.tick(), deadline_tick_wait_s_max)
            except (LogUnavailable, TimeoutError) as error:
                logger.warning("could not append a time-only entry for a due TCC deadline: %s", error)

    async def tick(self) -> None:
        """Append an entry with no command: it moves the ledger's clock (and expires due tries)."""
        if self.broken is not None:
            raise LogUnavailable(str(self.broken))
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Waiter([], future))
        self._wakeup.set()
        await future

    async def submit(self, commands: list[Command], actor: Actor | None = None) -> list[Outcome]:
        """Append the commands (in order, possibly over several entries) and return their outcomes.

        ``actor`` is the credential that sent them; their events record it.
        """
        if self.broken is not None:
            raise LogUnavailable(str(self.broken))
        if self.replica.disk_space.full is not None:
            raise DiskFull(self.replica.disk_space.full)
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(commands), entry_commands_max):
            future: asyncio.Future[list[Outcome]] = loop.create_future()
            self._pending.append(_Waiter(commands[start : start + entry_commands_max], future, actor))
            futures.append(future)
        self._wakeup.set()
        outcomes: list[Outcome] = []
        for future in futures:
            outcomes.extend(await future)
        return outcomes

    def _gather(self) -> _Inflight:
        waiters, commands, actors = gather(self._pending)
        return _Inflight(waiters, commands, actors)

    async def _wait_for_pending(self) -> None:
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        writer = self.replica.writer
        while writer is not None and writer.backlog_events > store_backlog_events_max:
            await asyncio.sleep(0.005)  # backpressure from the event store; reads go on meanwhile

    def _append(self, inflight: _Inflight, origin: str = "") -> None:
        payload = encode_entry(inflight.commands, origin, inflight.actors)
        inflight.future = asyncio.get_running_loop().run_in_executor(self._executor, self.replica.log.append, payload)

    async def _run(self) -> None:
        try:
            await self._write_and_apply()
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            # A bug, not an operating error: refuse writes loudly rather than hang them.
            logger.critical("the write path stopped: %r", error, exc_info=error)
            self.broken = error
            self._fail(list(self._pending), error)
            self._pending.clear()
            raise

    async def _write_and_apply(self) -> None:
        inflight: _Inflight | None = None
        while True:
            if inflight is None:
                await self._wait_for_pending()
                inflight = self._gather()
                self._append(inflight)
            assert inflight.future is not None
            try:
                record = await inflight.future
            except LogDiskFullError as error:
                # Nothing was stored; the log takes appends again once there is space.
                self.replica.disk_space.report("the command log", error)
                refused = DiskFull(self.replica.disk_space.full or f"disk full: {error}")
                self._fail(inflight.waiters, refused)
                self._fail(list(self._pending), refused)
                self._pending.clear()
                inflight = None
                continue
            except LogError as error:
                # After a failed write the local log refuses appends: nothing more can be promised.
                logger.critical("command log failed, refusing writes: %s", error)
                self.broken = error
                self._fail(inflight.waiters, error)
                self._fail(list(self._pending), error)
                self._pending.clear()
                return
            upcoming = None
            if self._pending:
                upcoming = self._gather()
                self._append(upcoming)
            self._apply(record, inflight.commands, inflight.actors, protocol_version_max, inflight)
            inflight = upcoming

    @staticmethod
    def _fail(waiters: list[_Waiter], error: BaseException) -> None:
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error if isinstance(error, DiskFull) else LogUnavailable(str(error)))

    def _apply(
        self,
        record: LogRecord,
        commands: list[Command],
        actors: list[Actor | None] | None,
        protocol_version: int,
        inflight: _Inflight | None,
    ) -> None:
        results, events, effects = self.replica.apply(record, commands, actors, protocol_version)
        if inflight is not None:
            _resolve(inflight, record.index, results, events, effects)
        machine = self.replica.machine
        for hook in self.applied_hooks:
            hook(machine.log_index, machine.seq, machine.head)
        self._wake_seq_waiters()
        self.replica.maybe_snapshot()
        if self._on_entry is not None and inflight is not None:
            self._on_entry(len(commands), time.perf_counter() - inflight.started, len(events))

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

    async def catch_up(self) -> None:
        """Apply everything the log held when called (a single writer has nothing to catch up)."""

    async def close(self) -> None:
        # Let what is pending finish for a moment: those requests may already be durable.
        deadline = time.monotonic() + 10
        while self._pending and time.monotonic() < deadline and self.broken is None:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        self._executor.shutdown(wait=True)


def _resolve(
    inflight: _Inflight, log_index: int, results: list[Result], events: list[EventRecord], effects: list[Effect | None]
) -> None:
    """Hand each waiting request the results at its positions in the entry."""
    sizes = [len(waiter.commands) for waiter in inflight.waiters]
    for waiter, outcomes in zip(inflight.waiters, outcomes_by_request(sizes, log_index, results, events, effects), strict=True):
        if not waiter.future.done():
            waiter.future.set_result(outcomes)


class FollowerPipeline(Pipeline):
    """A node on a shared log: it applies every entry as it reads the log back (module docstring)."""

    def __init__(self, replica: Replica, node_name: str, on_entry: EntryHook | None = None) -> None:
        super().__init__(replica, on_entry)
        self._executor = ThreadPoolExecutor(max_workers=appends_in_flight_max, thread_name_prefix="coffer-log-writer")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coffer-log-reader")
        # The origin must never repeat, also across restarts of this node: name, boot, counter.
        self._origins = (f"{node_name}:{os.getpid()}:{time.time_ns()}:{number}" for number in itertools.count())
        self._by_origin: dict[str, _Inflight] = {}
        self._slots = asyncio.Semaphore(appends_in_flight_max)
        self.follow_error: BaseException | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._run(), name="coffer-pipeline-writer"))
        self._tasks.append(loop.create_task(self._follow(), name="coffer-pipeline-follower"))
        self._tasks.append(loop.create_task(self._keep_deadlines(), name="coffer-deadlines"))

    async def _write_and_apply(self) -> None:
        while True:
            await self._wait_for_pending()
            await self._slots.acquire()
            if not self._pending:
                self._slots.release()
                continue
            inflight = self._gather()
            origin = next(self._origins)
            self._by_origin[origin] = inflight
            self._append(inflight, origin)
            asyncio.get_running_loop().create_task(self._confirm(origin, inflight))

    def _append(self, inflight: _Inflight, origin: str = "") -> None:
        payload = encode_entry(inflight.commands, origin, inflight.actors)
        log = self.replica.log
        publish = getattr(log, "publish", None)
        loop = asyncio.get_running_loop()
        if publish is not None:
            # The entry's origin doubles as its message id: a retried publish is stored once.
            inflight.future = loop.run_in_executor(self._executor, publish, payload, origin)
        else:
            inflight.future = loop.run_in_executor(self._executor, log.append, payload)

    async def _confirm(self, origin: str, inflight: _Inflight) -> None:
        """Wait for the acknowledgement, then for the entry to come back through the follower."""
        assert inflight.future is not None
        try:
            try:
                acknowledged = await inflight.future
            finally:
                self._slots.release()
        except LogError as error:
            # Unknown outcome: the entry may still be in the log and be applied when read; these
            # requests get 503 and their clients retry with the same dedup_ids.
            self._by_origin.pop(origin, None)
            self._fail(inflight.waiters, error)
            return
        index = acknowledged if isinstance(acknowledged, int) else acknowledged.index
        deadline = time.monotonic() + apply_wait_s_max
        while origin in self._by_origin and time.monotonic() < deadline:
            await self.wait_for_index(index, deadline - time.monotonic())
            await asyncio.sleep(0)
        if self._by_origin.pop(origin, None) is not None:
            self._fail(inflight.waiters, LogError(f"entry {index} was not applied here within {apply_wait_s_max} s"))

    async def catch_up(self, timeout_s: float = min_seq_wait_s_max) -> None:
        log = self.replica.log
        index = await asyncio.to_thread(lambda: log.last_index)
        await self.wait_for_index(index, timeout_s)

    async def wait_for_index(self, index: int, timeout_s: float) -> None:
        if self.replica.machine.log_index >= index or timeout_s <= 0:
            return
        deadline = time.monotonic() + timeout_s
        while self.replica.machine.log_index < index and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        log = self.replica.log
        while True:
            writer = self.replica.writer
            if self.replica.disk_space.full is not None or (writer is not None and writer.backlog_events > store_backlog_events_max):
                # The event store cannot keep up or cannot write: stop applying (this node
                # falls behind and catches up later) rather than queue without bound.
                await asyncio.sleep(follow_wait_s)
                continue
            next_index = self.replica.machine.log_index + 1
            try:
                records = await loop.run_in_executor(self._reader, log.follow, next_index, follow_wait_s)
            except LogTruncatedError as error:
                # The stream was compacted past this replica while it was away: it can only
                # catch up from the shared snapshot, which a restart adopts.
                self.follow_error = error
                self.broken = error
                logger.critical("this replica fell behind a compacted stream (%s): restart it to catch up", error)
                return
            except LogError as error:
                logger.warning("reading the log failed, retrying: %s", error)
                await asyncio.sleep(0.2)
                continue
            except asyncio.CancelledError:
                raise
            except BaseException as error:
                self.follow_error = error
                logger.critical("the log follower stopped: %r", error, exc_info=error)
                raise
            for record in records:
                if record.index < next_index:
                    continue  # already applied (a follow that overlapped the last one)
                if record.index > next_index:
                    # Never apply past a hole: every replica must apply every entry, in order.
                    logger.warning("the log skipped from %d to %d; reading again from %d", next_index, record.index, next_index)
                    break
                try:
                    entry = decode_entry(record.payload)
                except EntryFormatError as error:
                    # An entry from a newer release (or no entry at all): applying anything now
                    # could diverge from the replicas that understand it. Stop, loudly.
                    self.follow_error = error
                    self.broken = error
                    logger.critical("log record %d cannot be applied by this release: %s", record.index, error)
                    return
                except msgspec.MsgspecError as error:
                    # Every replica reads the same bytes and skips them the same way.
                    logger.critical("log record %d is not a Coffer entry (%s); applying it as empty", record.index, error)
                    self._apply(record, [], None, protocol_version_max, None)
                    next_index = record.index + 1
                    continue
                inflight = self._by_origin.pop(entry.origin, None) if entry.origin else None
                self._apply(record, entry.commands, entry.actors, entry.protocol_version, inflight)
                next_index = record.index + 1
