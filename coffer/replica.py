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
- On a shared log (a cluster), recovery replays to the end the log's leader reports, and on until
  it has applied everything its own event store holds: a store that is ahead proves the log once
  reached that far, so recovery waits for the log (a lagging or leaderless server, an election)
  and follows it instead of refusing the directory. Only an event that differs from the stored
  one means mixed histories: the store raises when the replay reaches its newest event, and
  recovery raises when the replay stops at the log's end on an event the store holds otherwise
  (that history made fewer events: no log can bring the rest). :attr:`Replica.status` says what
  recovery waits for, for ``/readyz``; it retries while the log is unavailable and stops on
  :meth:`stop_recovery`.
- Snapshots are shared (cluster) by one uploader thread per replica: at most one upload in flight,
  always the newest local snapshot (intermediate ones are skipped), at most one per
  ``snapshot_share_interval_s``, with back-off after a failure.
- A write that meets a full disk (the event store, a snapshot) is reported to
  :class:`~coffer.disk_space.DiskSpace`, which refuses new commands until space is back; the event
  store writer retries its batch.

Seams for the deterministic simulator, which runs this very class: the clock (``clock_s``), the
disk the snapshot files live on (:mod:`coffer.disk`), how a snapshot is written (a
:class:`SnapshotWriter`; the service forks), the event store, whether the store writer runs
on its own thread or is stepped by its owner, and how recovery waits for a shared log (``pause_s``,
``log_wait_s_max``: the service sleeps, as long as it takes; the simulator, whose log cannot grow
while a replica recovers, lets logical time pass and gives up after a bound). The defaults are
what the service runs.
"""

import abc
import contextlib
import ctypes
import logging
import os
import queue
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import crc32c

from coffer.core.accounts import Effect, Result
from coffer.core.commands import Command
from coffer.core.entries import decode_entry
from coffer.core.events import Actor, EventRecord
from coffer.core.snapshot import restore_snapshot, take_snapshot
from coffer.core.state_machine import StateMachine, protocol_version_max
from coffer.disk import Disk, local_disk
from coffer.disk_space import DiskSpace, is_disk_full
from coffer.history.event_store import EventStore
from coffer.log.base import CommandLog, LogError, LogRecord, LogTruncatedError
from coffer.progress import progress, shows_progress

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
store_retry_pause_s_max = 5.0  # the event store writer retries a batch the full disk refused
recovery_batch_events = 50_000  # replayed events go to the store in batches of this many
recovery_retry_pause_s_max = 2.0  # recovery asks an unavailable log again after at most this
recovery_status_entries = 1000  # /readyz progress is updated every this many replayed entries
# Shared snapshots (cluster): one upload at a time, at most one per interval, back-off on failure.
snapshot_share_interval_s = 60.0
snapshot_share_backoff_s_min = 5.0
snapshot_share_backoff_s_max = 300.0
# Replicas snapshot at the same index; a random pause before uploading lets one go first and the
# others find it there instead of uploading the same bytes.
snapshot_share_stagger_s_max = 5.0
snapshot_exit_disk_full = 28  # the snapshot child's exit status when the disk was full (ENOSPC)


class SnapshotCorrupt(RuntimeError):
    pass


class RecoveryStopped(Exception):
    """:meth:`Replica.stop_recovery` was called (the node is shutting down)."""


class RecoveryStalled(RuntimeError):
    """Recovery waited ``log_wait_s_max`` for the shared log and it did not come (simulator only)."""


def write_snapshot_file(path: Path, data: bytes, disk: Disk = local_disk) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        disk.write_durably(temporary, snapshot_magic, crc32c.crc32c(data).to_bytes(4, "big"), data)
    except OSError:
        with contextlib.suppress(OSError):
            disk.remove(temporary)  # a failed write (a full disk) leaves nothing behind
        raise
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


_pr_set_pdeathsig = 1  # prctl option, linux/prctl.h
# Resolved at import, in the parent: a forked child of a threaded process must not load libraries.
_prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In a forked child: SIGKILL when the parent dies, so a killed node leaves no snapshot writer."""
    if _prctl is not None:
        _prctl(_pr_set_pdeathsig, signal.SIGKILL)


class SnapshotJob(abc.ABC):
    """A snapshot being written."""

    disk_full = False  # set when it failed because the disk was full

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
                _die_with_parent()
                write(take_snapshot(machine))
            except BaseException as error:
                code = snapshot_exit_disk_full if is_disk_full(error) else 1
            os._exit(code)
        return _ForkedSnapshotJob(pid)


class _ForkedSnapshotJob(SnapshotJob):
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> bool | None:
        finished, status = os.waitpid(self.pid, os.WNOHANG)
        if finished == 0:
            return None
        exit_code = os.waitstatus_to_exitcode(status)
        if exit_code == snapshot_exit_disk_full:
            self.disk_full = True
            return False
        if exit_code != 0:
            logger.error("the snapshot child %d failed (exit status %d)", self.pid, exit_code)
            return False
        return True


class StoreWriter:
    """Appends event batches to the event store, in order, and reports progress.

    A thread does it by default. With ``thread=False`` nothing runs by itself: the owner calls
    :meth:`step` to commit what is queued (the simulator does, so that it decides when the store
    catches up). A batch the full disk refused is retried (with ``disk_space`` told, so that new
    commands are refused meanwhile) until it is stored; any other failure stops the writer.
    """

    def __init__(self, store: EventStore, disk_space: DiskSpace | None = None, *, thread: bool = True) -> None:
        self.store = store
        self.disk_space = disk_space
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
        """Append the batches in one transaction, retrying while the disk is full (a threaded
        writer told of the disk only); any other failure ends the writer and is raised."""
        records = [record for events in batches for record in events]
        pause_s = 0.1
        while True:
            try:
                self.store.append(records)
                break
            except BaseException as error:
                if not is_disk_full(error) or self.disk_space is None or self._closing or self._thread is None:
                    logger.critical("event store write failed: %s", error)
                    self.error = error
                    raise
                self.disk_space.report("the event store", error)
            time.sleep(pause_s)
            pause_s = min(2 * pause_s, store_retry_pause_s_max)
        self.stored_seq = self.store.last_seq
        for listener in self.listeners:
            listener(self.stored_seq)

    _closing = False

    def close(self) -> None:
        self._closing = True
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
        disk_budget_bytes: int | None = None,
        pause_s: Callable[[float], object] | None = None,
        log_wait_s_max: float | None = None,
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
        self.disk_space = DiskSpace(data_dir, disk_budget_bytes)
        self.status = "starting"  # what recovery does or waits for; read by /readyz
        self._stopping = threading.Event()
        # How recovery pauses before asking the log again (it ends early on stop_recovery), and
        # how long, on the clock above, it may wait for the log in all; None: as long as it takes.
        self._pause_s = pause_s if pause_s is not None else self._stopping.wait
        self._log_wait_s_max = log_wait_s_max
        self._sharer: SnapshotSharer | None = None

    # ------------------------------------------------------------------ recovery

    def recover(self) -> dict[str, float]:
        """Load the newest snapshot and replay the log after it; return what it took.

        On a shared log, waits for the log as long as it takes (see the module docstring);
        :meth:`stop_recovery` ends the wait with :class:`RecoveryStopped`.
        """
        started = self._clock_s()
        self.status = "opening the command log"
        self._remove_leftovers()
        if self.shares_snapshots:
            self._wait_for_log(self._adopt_shared_snapshot)
        self._load_newest_snapshot()
        loaded = self._clock_s()
        replayed = self._replay_own_log() if self.truncate_log else self._replay_shared_log()
        self.writer = StoreWriter(self.store, self.disk_space, thread=self._store_writer_thread)
        if self.shares_snapshots:
            self._sharer = SnapshotSharer(self)
        finished = self._clock_s()
        self.status = "recovered"
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

    def stop_recovery(self) -> None:
        """End a recovery that waits for the log (shutdown); it raises :class:`RecoveryStopped`."""
        self._stopping.set()

    def _remove_leftovers(self) -> None:
        """Temporary and unfinished snapshot files of a process that died (they are never used)."""
        for pattern in ("*.tmp", "*.pending"):
            for stale in self.disk.list(self.snapshot_dir, pattern):
                logger.info("removing %s, left by a process that stopped while writing it", stale.name)
                with contextlib.suppress(FileNotFoundError):
                    self.disk.remove(stale)

    def _wait_for_log(self, step: Callable[[], object]) -> None:
        """Run ``step`` until the log answers it, saying in :attr:`status` what is awaited."""
        pause_s = 0.05
        waiting_since_s = self._clock_s()
        while True:
            if self._stopping.is_set():
                raise RecoveryStopped("stopped while waiting for the log")
            try:
                step()
                return
            except LogError as error:
                self.status = f"waiting for the command log: {error}"
                logger.warning("recovery: %s; asking again", self.status)
            self._pause_for_log(pause_s, waiting_since_s)
            pause_s = min(2 * pause_s, recovery_retry_pause_s_max)

    def _pause_for_log(self, pause_s: float, waiting_since_s: float) -> None:
        """Pause before asking the log again; past ``log_wait_s_max`` of waiting, give up."""
        if self._log_wait_s_max is not None and self._clock_s() - waiting_since_s >= self._log_wait_s_max:
            raise RecoveryStalled(f"waited {self._log_wait_s_max} s: {self.status}")
        self._pause_s(pause_s)

    def _load_newest_snapshot(self) -> None:
        snapshot_path = self._newest_snapshot()
        if snapshot_path is not None:
            self.status = f"loading the snapshot at log index {_snapshot_index(snapshot_path)}"
            self.machine = restore_snapshot(read_snapshot_file(snapshot_path, self.disk))
            self._last_snapshot_index = self.machine.log_index
            self._last_snapshot_seq = self.machine.seq

    def _replay_own_log(self) -> int:
        """This node's own log (the local WAL): what it holds is all there is.

        An event store that lacks history below the snapshot (deleted, or an older copy put back)
        is rebuilt from the log when the log still holds every entry: the state is then replayed
        from the start. A damaged tail the log found at open (see ``LocalWal(cut_damaged_tail=
        False)``) is cut only once the event store shows its record was never applied; if the store
        holds events beyond the valid records, that record was acknowledged, and recovery stops
        saying so with nothing cut.
        """
        if self.store.last_seq < self.machine.seq:
            if self.log.first_index <= 1:
                logger.warning(
                    "the event store ends at seq %d, below the snapshot's seq %d: rebuilding it from the whole log",
                    self.store.last_seq,
                    self.machine.seq,
                )
                self.machine = StateMachine()
            else:
                logger.critical(
                    "the event store ends at seq %d, below the snapshot's seq %d, and the log starts at index %d: "
                    "this node's history lacks seqs %d to %d (restore events.sqlite3 from a backup to have them)",
                    self.store.last_seq,
                    self.machine.seq,
                    self.log.first_index,
                    self.store.last_seq + 1,
                    self.machine.seq,
                )
        end = self.log.last_index
        replayed = self._replay_to(end) if end > self.machine.log_index else 0
        damaged = getattr(self.log, "damaged_tail", None)
        if self.store.last_seq > self.machine.seq:
            if damaged is not None:
                raise RuntimeError(
                    f"the command log's last record is damaged ({damaged}), and the event store holds events up to seq "
                    f"{self.store.last_seq} while the log's valid records reach seq {self.machine.seq}: the damaged record "
                    "was applied and acknowledged. Nothing was cut; restore the log from a backup or a replica"
                )
            raise RuntimeError(
                f"the event store holds seq {self.store.last_seq} but the log only reaches {self.machine.seq}: "
                "the data directory mixes histories"
            )
        if damaged is not None:
            self.log.cut_damaged_tail()  # type: ignore[attr-defined]  # never applied: a torn append
        return replayed

    def _replay_shared_log(self) -> int:
        """A shared log: replay to its end, then on until the event store's last seq (waiting)."""
        store_seq = self.store.last_seq
        replayed = 0
        pause_s = 0.05
        waiting_since_s = self._clock_s()
        while True:
            if self._stopping.is_set():
                raise RecoveryStopped("stopped while recovering")
            try:
                end = self.log.last_index
                if end > self.machine.log_index:
                    replayed += self._replay_to(end)
                    pause_s = 0.05
                    waiting_since_s = self._clock_s()
                    continue
                if self.machine.seq >= store_seq:
                    return replayed
                self._check_replay_is_the_stored_history()
                self.status = (
                    f"waiting for the log to reach seq {store_seq}, which this node's event store holds"
                    f" (replayed to seq {self.machine.seq}, log index {self.machine.log_index}, the log's end)"
                )
            except LogTruncatedError as error:
                # Compacted below this replica while it recovered: only the shared snapshot helps.
                logger.warning("the log was compacted past this replica (%s); taking the shared snapshot", error)
                try:
                    adopted = self.shares_snapshots and self._adopt_shared_snapshot(force=True)
                except LogError as fetch_error:
                    adopted, error = False, LogTruncatedError(f"{error}; the shared snapshot: {fetch_error}")
                if adopted:
                    self._load_newest_snapshot()
                    continue
                self.status = f"waiting for a shared snapshot: {error}"
            except LogError as error:
                self.status = f"waiting for the command log: {error}"
                logger.warning("recovery: %s; asking again", self.status)
            self._pause_for_log(pause_s, waiting_since_s)
            pause_s = min(2 * pause_s, recovery_retry_pause_s_max)

    def _check_replay_is_the_stored_history(self) -> None:
        """At the log's end, short of the event store: the stored event at the replay's seq must be
        the one the replay made. The store checks a replay only when it reaches the newest stored
        event; a history that made fewer events (it diverged) never does, and no log can bring
        the rest, so waiting would never end."""
        seq = self.machine.seq
        stored = self.store.event(seq) if seq > 0 else None
        if stored is not None and stored.hash != self.machine.head:
            raise RuntimeError(
                f"the log's history differs from this node's event store: replayed to seq {seq} (log index "
                f"{self.machine.log_index}, the log's end), whose event is not the stored one; the store holds seq "
                f"{self.store.last_seq}. The data directory mixes histories"
            )

    def _replay_to(self, end: int) -> int:
        """Apply the log's records after the state's index, up to ``end``; store their events."""
        replayed = 0
        batch: list[EventRecord] = []
        self.status = f"replaying log {self.machine.log_index}/{end}"
        to_replay = end - self.machine.log_index if shows_progress() else None
        with contextlib.ExitStack() as cleanup:
            shown = cleanup.enter_context(progress("replaying the log", to_replay, unit="entries"))
            # Also when reading failed half-way: what was applied must be in the store.
            cleanup.callback(lambda: self._store_replayed(batch))
            for record in self.log.read(self.machine.log_index + 1):
                if record.index > end:
                    break
                entry = decode_entry(record.payload)
                _, events = self.machine.apply(record.index, record.time_ms, entry.commands, entry.actors, entry.protocol_version)
                batch.extend(events)
                replayed += 1
                shown.advance()
                if replayed % recovery_status_entries == 0:
                    self.status = f"replaying log {record.index}/{end}"
                    if self._stopping.is_set():
                        raise RecoveryStopped("stopped while replaying")
                if len(batch) >= recovery_batch_events:
                    self._store_replayed(batch)
                    batch.clear()
        return replayed

    def _store_replayed(self, batch: list[EventRecord]) -> None:
        pause_s = 0.1
        while True:
            try:
                self.store.append(batch)
                return
            except Exception as error:
                if not is_disk_full(error):
                    raise
                self.disk_space.report("the event store", error)
                self.status = f"{self.disk_space.full} (replaying at log index {self.machine.log_index})"
            if self._stopping.wait(pause_s):
                raise RecoveryStopped("stopped while the disk was full")
            pause_s = min(2 * pause_s, store_retry_pause_s_max)

    @property
    def shares_snapshots(self) -> bool:
        """On a shared log (a cluster), snapshots are also kept where a new replica finds them."""
        return not self.truncate_log and hasattr(self.log, "fetch_snapshot")

    def _adopt_shared_snapshot(self, force: bool = False) -> bool:
        """Take the cluster's shared snapshot when the stream no longer holds what comes after
        this replica's own (or it has none): after the stream was compacted while it was away or
        before it joined (``force``: it was compacted during recovery). Otherwise it replays the
        stream, which also gives its event store the whole history. Returns whether it adopted one.
        """
        newest = self._newest_snapshot()
        local_index = _snapshot_index(newest) if newest is not None else 0
        # A LogError here (the log cannot say, the snapshot cannot be fetched) goes to the caller,
        # which asks again: without it this replica could not catch up anyway.
        # While the stream can replay everything, replaying it is preferred, also for a replica
        # that joins with an empty disk: its event store then holds the whole history. (Retries
        # of the newest commands are answered from the effects the state keeps, snapshot or
        # not; an older one is answered from its event.)
        if not force and local_index + 1 >= self.log.first_index:
            return False
        self.status = "fetching the shared snapshot"
        shared_index = self.log.shared_snapshot_index()  # type: ignore[attr-defined]
        if shared_index <= local_index:
            return False
        fetched = self.log.fetch_snapshot()  # type: ignore[attr-defined]
        if fetched is None:
            return False
        index, data = fetched
        try:
            restore_snapshot(data)
        except Exception as error:
            logger.error("the shared snapshot at index %d does not restore (%s); ignoring it", index, error)
            return False
        write_snapshot_file(self.snapshot_dir / f"snapshot-{index:020d}.bin", data, self.disk)
        logger.info("adopted the shared snapshot at log index %d (own newest was %d)", index, local_index)
        return True

    @property
    def snapshot_index(self) -> int:
        """The log index of this replica's newest active snapshot (0 if none)."""
        return self._last_snapshot_index

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

    # ------------------------------------------------------------------ apply

    def apply(
        self,
        record: LogRecord,
        commands: list[Command],
        actors: list[Actor | None] | None = None,
        protocol_version: int = protocol_version_max,
    ) -> tuple[list[Result], list[EventRecord], list[Effect | None]]:
        """Apply one record; its results, its events (queued for the store) and what each command
        did (:meth:`~coffer.core.state_machine.StateMachine.apply_with_effects`: the answers)."""
        results, events, effects = self.machine.apply_with_effects(record.index, record.time_ms, commands, actors, protocol_version)
        if events:
            assert self.writer is not None
            self.writer.put(events)
        return results, events, effects

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
            with contextlib.suppress(FileNotFoundError):
                self.disk.remove(pending)
            if job.disk_full:
                self.disk_space.report(f"the snapshot at log index {index}", "No space left on device")
            else:
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
        if self._sharer is not None:
            self._sharer.offer()

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
        self.stop_recovery()
        self.wait_for_snapshot()
        if self._sharer is not None:
            self._sharer.close()
        if self.writer is not None:
            self.writer.close()
        self.disk_space.close()
        self.store.close()
        self.log.close()


class SnapshotSharer:
    """Uploads a replica's newest snapshot to the shared store, one upload at a time.

    :meth:`offer` says a new snapshot exists. The thread uploads whatever is newest when it gets
    to it, so snapshots taken during an upload or a pause are skipped; it waits at least
    ``snapshot_share_interval_s`` after a success and backs off after a failure (JetStream slow
    or unavailable), and does not upload what another replica already shared.
    """

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self._wanted = threading.Event()
        self._closed = threading.Event()
        self._not_before = 0.0  # monotonic
        self._backoff_s = snapshot_share_backoff_s_min
        self._thread = threading.Thread(target=self._run, name="coffer-snapshot-share", daemon=True)
        self._thread.start()

    def offer(self) -> None:
        self._wanted.set()

    def close(self) -> None:
        self._closed.set()
        self._wanted.set()
        self._thread.join(1.0)  # an upload in flight ends by its own deadline; the thread is a daemon

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wanted.wait()
            if self._closed.wait(max(self._not_before - time.monotonic(), 0.0) + random.uniform(0, snapshot_share_stagger_s_max)):
                return
            self._wanted.clear()
            self._share_newest()

    def _share_newest(self) -> None:
        replica = self.replica
        try:
            path = replica._newest_snapshot()
        except FileNotFoundError:  # replaced while being checked: look again
            self._wanted.set()
            return
        if path is None:
            return
        index = _snapshot_index(path)
        started = time.monotonic()
        try:
            if replica.log.shared_snapshot_index() >= index:  # type: ignore[attr-defined]
                self._not_before = time.monotonic() + snapshot_share_interval_s
                return
            data = read_snapshot_file(path, replica.disk)
            replica.log.put_snapshot(index, data)  # type: ignore[attr-defined]
        except FileNotFoundError:
            self._wanted.set()  # replaced by a newer one meanwhile: take that
            return
        except Exception as error:
            logger.warning(
                "could not share the snapshot at index %d after %.1f s: %s; next attempt in %.0f s",
                index,
                time.monotonic() - started,
                error,
                self._backoff_s,
            )
            self._not_before = time.monotonic() + self._backoff_s
            self._backoff_s = min(2 * self._backoff_s, snapshot_share_backoff_s_max)
            self._wanted.set()
            return
        self._backoff_s = snapshot_share_backoff_s_min
        self._not_before = time.monotonic() + snapshot_share_interval_s
