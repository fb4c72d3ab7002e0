"""The replica: the one place where the pure state machine meets I/O.

Job: recover the state from the newest snapshot plus the log after it, apply log records in
order, keep the event store fed, and take snapshots without stalling the apply loop.

Method.
- Recovery loads ``snapshots/snapshot-<index>.bin`` (magic, CRC32C, bytes of
  :func:`coffer.core.snapshot.take_snapshot`), then replays every log record after that index
  through the same ``apply`` as live traffic; replayed events go to the event store, which ignores
  the ones it has and checks their hashes.
- Snapshots are written by a forked child, which sees a frozen copy-on-write image of the state,
  so the parent's apply loop only pays for ``fork()``. A finished snapshot becomes the one
  recovery uses (its name loses ``.pending``) only once the event store holds every event it
  covers: the events of entries under a snapshot can never be replayed again. Log segments below
  the older of the two snapshots kept are then dropped (none while there is only one), so a
  damaged newest snapshot always has a fallback. Recovery removes what a dead process left of
  unfinished snapshots.

Seams for the deterministic simulator, which runs this very class: the clock (``clock_s``), the
disk the snapshot files live on (:mod:`coffer.disk`), how a snapshot is written (a
:class:`SnapshotWriter`; the service forks), the event store, and whether the store writer runs
on its own thread or is stepped by its owner. The defaults are what the service runs.
"""

import abc
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import crc32c

from coffer.core.accounts import Result
from coffer.core.commands import Command
from coffer.core.entries import decode_entry
from coffer.core.events import Actor, EventRecord
from coffer.core.snapshot import restore_snapshot, take_snapshot
from coffer.core.state_machine import StateMachine, protocol_version_max
from coffer.disk import Disk, local_disk
from coffer.log.base import CommandLog, LogRecord
from coffer.progress import progress, shows_progress
from coffer.query.event_store import EventStore

logger = logging.getLogger(__name__)

snapshot_magic = b"COFSNAP1"
# A restart replays what came after the newest snapshot; these bound that work to a few seconds.
snapshot_every_entries = 20_000
snapshot_every_events = 200_000
snapshot_every_seconds = 300.0
snapshots_kept = 2
store_commit_interval_s = 0.05
store_commit_events_max = 50_000
# Backpressure: writers wait (without blocking reads) while the store is this many events behind,
# so history queries stay fresh and a snapshot, which waits for the store, is never far behind.
store_backlog_events_max = 100_000
store_queue_batches_max = 8192  # a hard bound on queued entries, far above what the backlog allows


class SnapshotCorrupt(RuntimeError):
    pass


def write_snapshot_file(path: Path, data: bytes, disk: Disk = local_disk) -> None:
    temporary = path.with_name(path.name + ".tmp")
    disk.write_durably(temporary, snapshot_magic, crc32c.crc32c(data).to_bytes(4, "big"), data)
    disk.replace(temporary, path)
    disk.sync_directory(path.parent)


def read_snapshot_file(path: Path, disk: Disk = local_disk) -> bytes:
    raw = disk.read(path)
    if raw[: len(snapshot_magic)] != snapshot_magic:
        raise SnapshotCorrupt(f"{path}: not a Coffer snapshot")
    checksum = int.from_bytes(raw[len(snapshot_magic) : len(snapshot_magic) + 4], "big")
    data = raw[len(snapshot_magic) + 4 :]
    if crc32c.crc32c(data) != checksum:
        raise SnapshotCorrupt(f"{path}: checksum mismatch")
    return data


def _snapshot_index(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


class SnapshotJob(abc.ABC):
    """A snapshot being written."""

    @abc.abstractmethod
    def poll(self) -> bool | None:
        """``None`` while it is being written; then ``True`` if it was written, ``False`` if not."""


class SnapshotWriter(abc.ABC):
    """How a snapshot is written without stalling the apply loop."""

    @abc.abstractmethod
    def start(self, machine: StateMachine, write: Callable[[bytes], None]) -> SnapshotJob:
        """Begin writing ``machine`` as it is now: its snapshot bytes go to ``write``.

        The state goes on changing after this returns; the job must capture it first.
        """


class ForkedSnapshotWriter(SnapshotWriter):
    """A forked child writes the snapshot: it sees a frozen copy-on-write image of the state."""

    def start(self, machine: StateMachine, write: Callable[[bytes], None]) -> SnapshotJob:
        pid = os.fork()
        if pid == 0:  # the child: a frozen image of the state; write it and leave at once
            code = 0
            try:
                write(take_snapshot(machine))
            except BaseException:
                code = 1
            os._exit(code)
        return _ForkedSnapshotJob(pid)


class _ForkedSnapshotJob(SnapshotJob):
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> bool | None:
        finished, status = os.waitpid(self.pid, os.WNOHANG)
        if finished == 0:
            return None
        if os.waitstatus_to_exitcode(status) != 0:
            logger.error("the snapshot child %d failed (exit status %d)", self.pid, status)
            return False
        return True


class StoreWriter:
    """Appends event batches to the event store, in order, and reports progress.

    A thread does it by default. With ``thread=False`` nothing runs by itself: the owner calls
    :meth:`step` to commit what is queued (the simulator does, so that it decides when the store
    catches up).
    """

    def __init__(self, store: EventStore, *, thread: bool = True) -> None:
        self.store = store
        self._queue: queue.Queue[list[EventRecord] | None] = queue.Queue(maxsize=store_queue_batches_max)
        self.stored_seq = store.last_seq
        self.queued_seq = store.last_seq
        self.error: BaseException | None = None
        self.listeners: list[Callable[[int], None]] = []
        self._thread: threading.Thread | None = None
        if thread:
            self._thread = threading.Thread(target=self._run, name="coffer-event-store", daemon=True)
            self._thread.start()

    @property
    def backlog_events(self) -> int:
        """Events applied but not yet in the store."""
        return self.queued_seq - self.stored_seq

    def put(self, events: list[EventRecord]) -> None:
        if self.error is not None:
            raise RuntimeError("the event store writer failed") from self.error
        if self._thread is None and self._queue.full():
            self.step()  # nobody else empties the queue: a blocking put would wait forever
        self._queue.put(events)
        self.queued_seq = events[-1].seq

    def step(self) -> None:
        """Commit what is queued now as one transaction (a writer without a thread only)."""
        assert self._thread is None, "a writer with a thread commits by itself"
        if self.error is not None:
            raise RuntimeError("the event store writer failed") from self.error
        batches = []
        events = 0
        while events < store_commit_events_max:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                break
            assert batch is not None
            batches.append(batch)
            events += len(batch)
        if batches:
            self._commit(batches)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            # Coalesce into one transaction what arrives within a short window: each commit costs
            # an fsync, and nobody waits on this thread but history queries.
            batches = [batch]
            events = len(batch)
            deadline = time.monotonic() + store_commit_interval_s
            while events < store_commit_events_max:
                remaining = deadline - time.monotonic()
                try:
                    more = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batches.append(more)
                events += len(more)
            try:
                self._commit(batches)
            except BaseException:
                return

    def _commit(self, batches: list[list[EventRecord]]) -> None:
        """Append the batches in one transaction; a failure ends the writer and is raised."""
        try:
            self.store.append(record for events in batches for record in events)
        except BaseException as error:
            logger.critical("event store write failed: %s", error)
            self.error = error
            raise
        self.stored_seq = self.store.last_seq
        for listener in self.listeners:
            listener(self.stored_seq)

    def close(self) -> None:
        if self._thread is None:
            while self.error is None and not self._queue.empty():
                self.step()
        elif self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


forked_snapshots = ForkedSnapshotWriter()


class Replica:
    def __init__(
        self,
        data_dir: Path,
        log: CommandLog,
        *,
        snapshot_entries: int = snapshot_every_entries,
        truncate_log: bool = True,
        clock_s: Callable[[], float] = time.monotonic,
        disk: Disk = local_disk,
        snapshot_writer: SnapshotWriter = forked_snapshots,
        store: EventStore | None = None,
        store_writer_thread: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.log = log
        self.disk = disk
        self.snapshot_dir = data_dir / "snapshots"
        self.disk.make_directory(self.snapshot_dir)
        self.machine = StateMachine()
        self.store = store if store is not None else EventStore(data_dir / "events.sqlite3")
        self.snapshot_entries = snapshot_entries
        self._clock_s = clock_s  # monotonic seconds
        self._snapshot_writer = snapshot_writer
        self._store_writer_thread = store_writer_thread
        self._snapshot_job: tuple[SnapshotJob, int, int] | None = None  # (job, index, seq)
        self._last_snapshot_index = 0
        self._last_snapshot_seq = 0
        self._last_snapshot_time = self._clock_s()
        self.writer: StoreWriter | None = None
        # A shared log (a cluster) is compacted only below what every replica has: not here.
        self.truncate_log = truncate_log

    # ------------------------------------------------------------------ recovery

    def recover(self) -> dict[str, float]:
        """Load the newest snapshot and replay the log after it; return what it took."""
        started = self._clock_s()
        # A dead process's unfinished snapshots: recovery never uses them, nothing else removes them.
        for stale in self.disk.list(self.snapshot_dir, "*.tmp") + self.disk.list(self.snapshot_dir, "*.pending"):
            self.disk.remove(stale)
        if self.shares_snapshots:
            self._adopt_shared_snapshot()
        snapshot_path = self._newest_snapshot()
        if snapshot_path is not None:
            self.machine = restore_snapshot(read_snapshot_file(snapshot_path, self.disk))
            self._last_snapshot_index = self.machine.log_index
            self._last_snapshot_seq = self.machine.seq
        loaded = self._clock_s()
        replayed = 0
        batch: list[EventRecord] = []
        to_replay = max(0, self.log.last_index - self.machine.log_index) if shows_progress() else None
        with progress("replaying the log", to_replay, unit="entries") as shown:
            for record in self._records_after(self.machine.log_index):
                entry = decode_entry(record.payload)
                _, events = self.machine.apply(record.index, record.time_ms, entry.commands, entry.actors, entry.protocol_version)
                batch.extend(events)
                replayed += 1
                shown.advance()
                if len(batch) >= 50_000:
                    self.store.append(batch)
                    batch = []
        self.store.append(batch)
        if self.store.last_seq > self.machine.seq:
            raise RuntimeError(
                f"the event store holds seq {self.store.last_seq} but the log only reaches {self.machine.seq}: "
                "the data directory mixes histories"
            )
        self.writer = StoreWriter(self.store, thread=self._store_writer_thread)
        finished = self._clock_s()
        report = {
            "snapshot_index": float(self._last_snapshot_index),
            "snapshot_load_s": loaded - started,
            "replayed_entries": float(replayed),
            "replay_s": finished - loaded,
            "log_index": float(self.machine.log_index),
            "seq": float(self.machine.seq),
        }
        logger.info("recovered: %s", report)
        return report

    @property
    def shares_snapshots(self) -> bool:
        """On a shared log (a cluster), snapshots are also kept where a new replica finds them."""
        return not self.truncate_log and hasattr(self.log, "fetch_snapshot")

    def _adopt_shared_snapshot(self) -> None:
        """Take the cluster's shared snapshot when the stream no longer holds what comes after
        this replica's own (or it has none) — after the stream was compacted while it was away,
        or when it joins with an empty disk. Otherwise it replays the stream, which also gives
        its event store the whole history.
        """
        newest = self._newest_snapshot()
        local_index = _snapshot_index(newest) if newest is not None else 0
        try:
            if local_index + 1 >= self.log.first_index:
                return
            shared_index = self.log.shared_snapshot_index()  # type: ignore[attr-defined]
            if shared_index <= local_index:
                return
            fetched = self.log.fetch_snapshot()  # type: ignore[attr-defined]
        except Exception as error:
            logger.warning("could not read the shared snapshot: %s", error)
            return
        if fetched is None:
            return
        index, data = fetched
        try:
            restore_snapshot(data)
        except Exception as error:
            logger.error("the shared snapshot at index %d does not restore (%s); ignoring it", index, error)
            return
        write_snapshot_file(self.snapshot_dir / f"snapshot-{index:020d}.bin", data, self.disk)
        logger.info("adopted the shared snapshot at log index %d (own newest was %d)", index, local_index)

    @property
    def snapshot_index(self) -> int:
        """The log index of this replica's newest active snapshot (0 if none)."""
        return self._last_snapshot_index

    def _share_snapshot(self, path: Path, index: int) -> None:
        def upload() -> None:
            try:
                self.log.put_snapshot(index, read_snapshot_file(path, self.disk))  # type: ignore[attr-defined]
            except Exception as error:  # the next snapshot tries again
                logger.warning("could not share the snapshot at index %d: %s", index, error)

        # A snapshot is tens of MB: upload it off the event loop.
        threading.Thread(target=upload, name="coffer-snapshot-upload", daemon=True).start()

    def _newest_snapshot(self) -> Path | None:
        candidates = sorted(self.disk.list(self.snapshot_dir, "snapshot-*.bin"), key=_snapshot_index, reverse=True)
        for path in candidates:
            try:
                read_snapshot_file(path, self.disk)
            except SnapshotCorrupt as error:
                logger.error("skipping a bad snapshot: %s", error)
                continue
            return path
        return None

    def _records_after(self, index: int) -> Iterator[LogRecord]:
        if self.log.last_index <= index:
            return iter(())
        return self.log.read(index + 1)

    # ------------------------------------------------------------------ apply

    def apply(
        self,
        record: LogRecord,
        commands: list[Command],
        actors: list[Actor | None] | None = None,
        protocol_version: int = protocol_version_max,
    ) -> tuple[list[Result], list[EventRecord]]:
        results, events = self.machine.apply(record.index, record.time_ms, commands, actors, protocol_version)
        if events:
            assert self.writer is not None
            self.writer.put(events)
        return results, events

    # ------------------------------------------------------------------ snapshots

    def maybe_snapshot(self) -> None:
        """Start a snapshot if one is due; activate a finished one. Call between entries."""
        self._reap_snapshot()
        if self._snapshot_job is not None:
            return
        due_by_entries = self.machine.log_index - self._last_snapshot_index >= self.snapshot_entries
        due_by_events = self.machine.seq - self._last_snapshot_seq >= snapshot_every_events
        due_by_time = (
            self._clock_s() - self._last_snapshot_time >= snapshot_every_seconds
            and self.machine.log_index > self._last_snapshot_index
        )
        if due_by_entries or due_by_events or due_by_time:
            self.start_snapshot()

    def start_snapshot(self) -> None:
        index, seq = self.machine.log_index, self.machine.seq
        path = self.snapshot_dir / f"snapshot-{index:020d}.bin.pending"
        disk = self.disk
        job = self._snapshot_writer.start(self.machine, lambda data: write_snapshot_file(path, data, disk))
        self._snapshot_job = (job, index, seq)
        self._last_snapshot_time = self._clock_s()

    def _reap_snapshot(self) -> None:
        if self._snapshot_job is None:
            return
        job, index, seq = self._snapshot_job
        if self.writer is not None and self.writer.stored_seq < seq:
            return  # the store does not yet hold every event the snapshot covers
        written = job.poll()
        if written is None:
            return
        self._snapshot_job = None
        pending = self.snapshot_dir / f"snapshot-{index:020d}.bin.pending"
        if not written or not self.disk.exists(pending):
            logger.error("snapshot at index %d failed", index)
            return
        self.disk.replace(pending, pending.with_suffix(""))
        self.disk.sync_directory(self.snapshot_dir)
        self._last_snapshot_index = index
        self._last_snapshot_seq = seq
        logger.info("snapshot at log index %d, seq %d", index, seq)
        snapshots = sorted(self.disk.list(self.snapshot_dir, "snapshot-*.bin"), key=_snapshot_index)
        for old in snapshots[:-snapshots_kept]:
            self.disk.remove(old)
        # Keep the log from the oldest kept snapshot on, so a damaged newest one has a fallback;
        # while there is only one, the fallback is the whole log.
        if self.truncate_log and len(snapshots) >= snapshots_kept:
            self.log.truncate_before(_snapshot_index(snapshots[-snapshots_kept]) + 1)
        if self.shares_snapshots:
            self._share_snapshot(pending.with_suffix(""), index)

    def wait_for_snapshot(self, timeout_s: float = 60.0) -> None:
        """Block until a running snapshot is active (tests and orderly shutdown).

        It waits in real time, for a forked child and the store thread to make progress; the
        owner of a stepped snapshot job or store writer finishes them before calling this.
        """
        if self._snapshot_job is None:
            return
        deadline = time.monotonic() + timeout_s
        while self._snapshot_job is not None and time.monotonic() < deadline:
            self._reap_snapshot()
            time.sleep(0.01)

    def close(self) -> None:
        self.wait_for_snapshot()
        if self.writer is not None:
            self.writer.close()
        self.store.close()
        self.log.close()
