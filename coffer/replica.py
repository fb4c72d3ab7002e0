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
  the newest active snapshot are then dropped.
- On a shared log (a cluster), recovery replays to the end the log's leader reports, and on until
  it has applied everything its own event store holds: a store that is ahead proves the log once
  reached that far, so recovery waits for the log (a lagging or leaderless server, an election)
  and follows it instead of refusing the directory. Only an event that differs from the stored
  one means mixed histories (the store raises). :attr:`Replica.status` says what recovery waits
  for, for ``/readyz``; it retries while the log is unavailable and stops on :meth:`stop_recovery`.
- Snapshots are shared (cluster) by one uploader thread per replica: at most one upload in flight,
  always the newest local snapshot (intermediate ones are skipped), at most one per
  ``snapshot_share_interval_s``, with back-off after a failure.
- A write that meets a full disk (the event store, a snapshot) is reported to :class:`DiskSpace`,
  which refuses new commands until space is back; the event store writer retries its batch.
"""

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
import msgspec

from coffer.core.accounts import Result
from coffer.core.commands import Command
from coffer.core.events import EventRecord
from coffer.core.snapshot import restore_snapshot, take_snapshot
from coffer.core.state_machine import StateMachine
from coffer.disk import DiskSpace, is_disk_full
from coffer.log.base import CommandLog, LogError, LogRecord, LogTruncatedError
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


class LogEntry(msgspec.Struct, array_like=True, gc=False):
    """The payload of one log record: a batch of commands and who appended it.

    ``origin`` names the appending node's request batch (empty for a single node), so that in a
    cluster the node that appended an entry can match it to its waiting requests when it reads
    the entry back from the shared log, whoever else appended around it.
    """

    origin: str
    commands: list[Command]


_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(LogEntry)


def encode_entry(commands: list[Command], origin: str = "") -> bytes:
    return _entry_encoder.encode(LogEntry(origin, commands))


def decode_entry(payload: bytes) -> LogEntry:
    return _entry_decoder.decode(payload)


class SnapshotCorrupt(RuntimeError):
    pass


class RecoveryStopped(Exception):
    """:meth:`Replica.stop_recovery` was called (the node is shutting down)."""


def write_snapshot_file(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(snapshot_magic)
            file.write(crc32c.crc32c(data).to_bytes(4, "big"))
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()  # a failed write (a full disk) leaves nothing behind
        raise
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def read_snapshot_file(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[: len(snapshot_magic)] != snapshot_magic:
        raise SnapshotCorrupt(f"{path}: not a Coffer snapshot")
    checksum = int.from_bytes(raw[len(snapshot_magic) : len(snapshot_magic) + 4], "big")
    data = raw[len(snapshot_magic) + 4 :]
    if crc32c.crc32c(data) != checksum:
        raise SnapshotCorrupt(f"{path}: checksum mismatch")
    return data


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _snapshot_index(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


_pr_set_pdeathsig = 1  # prctl option, linux/prctl.h
# Resolved at import, in the parent: a forked child of a threaded process must not load libraries.
_prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In a forked child: SIGKILL when the parent dies, so a killed node leaves no snapshot writer."""
    if _prctl is not None:
        _prctl(_pr_set_pdeathsig, signal.SIGKILL)


class StoreWriter:
    """A thread that appends event batches to the event store, in order, and reports progress.

    A batch the full disk refused is retried (with ``disk`` told, so that new commands are
    refused meanwhile) until it is stored; any other failure stops the writer.
    """

    def __init__(self, store: EventStore, disk: DiskSpace | None = None) -> None:
        self.store = store
        self.disk = disk
        self._queue: queue.Queue[list[EventRecord] | None] = queue.Queue(maxsize=store_queue_batches_max)
        self.stored_seq = store.last_seq
        self.queued_seq = store.last_seq
        self.error: BaseException | None = None
        self.listeners: list[Callable[[int], None]] = []
        self._thread = threading.Thread(target=self._run, name="coffer-event-store", daemon=True)
        self._thread.start()

    @property
    def backlog_events(self) -> int:
        """Events applied but not yet in the store."""
        return self.queued_seq - self.stored_seq

    def put(self, events: list[EventRecord]) -> None:
        if self.error is not None:
            raise RuntimeError("the event store writer failed") from self.error
        self._queue.put(events)
        self.queued_seq = events[-1].seq

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
            if not self._append([record for events in batches for record in events]):
                return
            self.stored_seq = self.store.last_seq
            for listener in self.listeners:
                listener(self.stored_seq)

    def _append(self, records: list[EventRecord]) -> bool:
        """Store ``records``, retrying while the disk is full; False if the writer must stop."""
        pause_s = 0.1
        while True:
            try:
                self.store.append(records)
                return True
            except BaseException as error:
                if not is_disk_full(error) or self.disk is None or self._closing:
                    logger.critical("event store write failed: %s", error)
                    self.error = error
                    return False
                self.disk.report("the event store", error)
            time.sleep(pause_s)
            pause_s = min(2 * pause_s, store_retry_pause_s_max)

    _closing = False

    def close(self) -> None:
        self._closing = True
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class Replica:
    def __init__(
        self,
        data_dir: Path,
        log: CommandLog,
        *,
        snapshot_entries: int = snapshot_every_entries,
        truncate_log: bool = True,
        disk_budget_bytes: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log = log
        self.snapshot_dir = data_dir / "snapshots"
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.machine = StateMachine()
        self.store = EventStore(data_dir / "events.sqlite3")
        self.snapshot_entries = snapshot_entries
        self._snapshot_child: tuple[int, int, int] | None = None  # (pid, index, seq)
        self._last_snapshot_index = 0
        self._last_snapshot_seq = 0
        self._last_snapshot_time = time.monotonic()
        self.writer: StoreWriter | None = None
        # A shared log (a cluster) is compacted only below what every replica has: not here.
        self.truncate_log = truncate_log
        self.disk = DiskSpace(data_dir, disk_budget_bytes)
        self.status = "starting"  # what recovery does or waits for; read by /readyz
        self._stopping = threading.Event()
        self._sharer: SnapshotSharer | None = None

    # ------------------------------------------------------------------ recovery

    def recover(self) -> dict[str, float]:
        """Load the newest snapshot and replay the log after it; return what it took.

        On a shared log, waits for the log as long as it takes (see the module docstring);
        :meth:`stop_recovery` ends the wait with :class:`RecoveryStopped`.
        """
        started = time.monotonic()
        self.status = "opening the command log"
        self._remove_leftovers()
        if self.shares_snapshots:
            self._wait_for_log(self._adopt_shared_snapshot)
        self._load_newest_snapshot()
        loaded = time.monotonic()
        replayed = self._replay_own_log() if self.truncate_log else self._replay_shared_log()
        self.writer = StoreWriter(self.store, self.disk)
        if self.shares_snapshots:
            self._sharer = SnapshotSharer(self)
        finished = time.monotonic()
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
            for stale in self.snapshot_dir.glob(pattern):
                logger.info("removing %s, left by a process that stopped while writing it", stale.name)
                stale.unlink(missing_ok=True)

    def _wait_for_log(self, step: Callable[[], object]) -> None:
        """Run ``step`` until the log answers it, saying in :attr:`status` what is awaited."""
        pause_s = 0.05
        while True:
            if self._stopping.is_set():
                raise RecoveryStopped("stopped while waiting for the log")
            try:
                step()
                return
            except LogError as error:
                self.status = f"waiting for the command log: {error}"
                logger.warning("recovery: %s; asking again", self.status)
            self._stopping.wait(pause_s)
            pause_s = min(2 * pause_s, recovery_retry_pause_s_max)

    def _load_newest_snapshot(self) -> None:
        snapshot_path = self._newest_snapshot()
        if snapshot_path is not None:
            self.status = f"loading the snapshot at log index {_snapshot_index(snapshot_path)}"
            self.machine = restore_snapshot(read_snapshot_file(snapshot_path))
            self._last_snapshot_index = self.machine.log_index
            self._last_snapshot_seq = self.machine.seq

    def _replay_own_log(self) -> int:
        """This node's own log (the local WAL): what it holds is all there is."""
        end = self.log.last_index
        replayed = self._replay_to(end) if end > self.machine.log_index else 0
        if self.store.last_seq > self.machine.seq:
            raise RuntimeError(
                f"the event store holds seq {self.store.last_seq} but the log only reaches {self.machine.seq}: "
                "the data directory mixes histories"
            )
        return replayed

    def _replay_shared_log(self) -> int:
        """A shared log: replay to its end, then on until the event store's last seq (waiting)."""
        store_seq = self.store.last_seq
        replayed = 0
        pause_s = 0.05
        while True:
            if self._stopping.is_set():
                raise RecoveryStopped("stopped while recovering")
            try:
                end = self.log.last_index
                if end > self.machine.log_index:
                    replayed += self._replay_to(end)
                    pause_s = 0.05
                    continue
                if self.machine.seq >= store_seq:
                    return replayed
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
            self._stopping.wait(pause_s)
            pause_s = min(2 * pause_s, recovery_retry_pause_s_max)

    def _replay_to(self, end: int) -> int:
        """Apply the log's records after the state's index, up to ``end``; store their events."""
        replayed = 0
        batch: list[EventRecord] = []
        self.status = f"replaying log {self.machine.log_index}/{end}"
        try:
            for record in self.log.read(self.machine.log_index + 1):
                if record.index > end:
                    break
                _, events = self.machine.apply(record.index, record.time_ms, decode_entry(record.payload).commands)
                batch.extend(events)
                replayed += 1
                if replayed % recovery_status_entries == 0:
                    self.status = f"replaying log {record.index}/{end}"
                    if self._stopping.is_set():
                        raise RecoveryStopped("stopped while replaying")
                if len(batch) >= recovery_batch_events:
                    self._store_replayed(batch)
                    batch = []
        finally:
            # Also when reading failed half-way: what was applied must be in the store.
            self._store_replayed(batch)
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
                self.disk.report("the event store", error)
                self.status = f"{self.disk.full} (replaying at log index {self.machine.log_index})"
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
        # that joins with an empty disk: its event store then holds the whole history, which it
        # needs to answer a retry of any command with that command's original event.
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
        write_snapshot_file(self.snapshot_dir / f"snapshot-{index:020d}.bin", data)
        logger.info("adopted the shared snapshot at log index %d (own newest was %d)", index, local_index)
        return True

    @property
    def snapshot_index(self) -> int:
        """The log index of this replica's newest active snapshot (0 if none)."""
        return self._last_snapshot_index

    def _newest_snapshot(self) -> Path | None:
        candidates = sorted(self.snapshot_dir.glob("snapshot-*.bin"), key=_snapshot_index, reverse=True)
        for path in candidates:
            try:
                read_snapshot_file(path)
            except SnapshotCorrupt as error:
                logger.error("skipping a bad snapshot: %s", error)
                continue
            return path
        return None

    # ------------------------------------------------------------------ apply

    def apply(self, record: LogRecord, commands: list[Command]) -> tuple[list[Result], list[EventRecord]]:
        results, events = self.machine.apply(record.index, record.time_ms, commands)
        if events:
            assert self.writer is not None
            self.writer.put(events)
        return results, events

    # ------------------------------------------------------------------ snapshots

    def maybe_snapshot(self) -> None:
        """Start a snapshot if one is due; activate a finished one. Call between entries."""
        self._reap_snapshot()
        if self._snapshot_child is not None:
            return
        due_by_entries = self.machine.log_index - self._last_snapshot_index >= self.snapshot_entries
        due_by_events = self.machine.seq - self._last_snapshot_seq >= snapshot_every_events
        due_by_time = (
            time.monotonic() - self._last_snapshot_time >= snapshot_every_seconds
            and self.machine.log_index > self._last_snapshot_index
        )
        if due_by_entries or due_by_events or due_by_time:
            self.start_snapshot()

    def start_snapshot(self) -> None:
        index, seq = self.machine.log_index, self.machine.seq
        path = self.snapshot_dir / f"snapshot-{index:020d}.bin.pending"
        pid = os.fork()
        if pid == 0:  # the child: a frozen image of the state; write it and leave at once
            code = 0
            try:
                _die_with_parent()
                write_snapshot_file(path, take_snapshot(self.machine))
            except BaseException as error:
                code = snapshot_exit_disk_full if is_disk_full(error) else 1
            os._exit(code)
        self._snapshot_child = (pid, index, seq)
        self._last_snapshot_time = time.monotonic()

    def _reap_snapshot(self) -> None:
        if self._snapshot_child is None:
            return
        pid, index, seq = self._snapshot_child
        if self.writer is not None and self.writer.stored_seq < seq:
            return  # the store does not yet hold every event the snapshot covers
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished == 0:
            return
        self._snapshot_child = None
        pending = self.snapshot_dir / f"snapshot-{index:020d}.bin.pending"
        exit_code = os.waitstatus_to_exitcode(status)
        if exit_code != 0 or not pending.exists():
            pending.unlink(missing_ok=True)
            if exit_code == snapshot_exit_disk_full:
                self.disk.report(f"the snapshot at log index {index}", "No space left on device")
            else:
                logger.error("snapshot at index %d failed (exit status %d)", index, exit_code)
            return
        os.replace(pending, pending.with_suffix(""))
        _fsync_directory(self.snapshot_dir)
        self._last_snapshot_index = index
        self._last_snapshot_seq = seq
        logger.info("snapshot at log index %d, seq %d", index, seq)
        snapshots = sorted(self.snapshot_dir.glob("snapshot-*.bin"), key=_snapshot_index)
        for old in snapshots[:-snapshots_kept]:
            old.unlink()
        oldest_kept = (
            _snapshot_index(snapshots[-snapshots_kept]) if len(snapshots) >= snapshots_kept else _snapshot_index(snapshots[0])
        )
        # Keep the log from the oldest kept snapshot on, so a damaged newest one has a fallback.
        if self.truncate_log:
            self.log.truncate_before(oldest_kept + 1)
        if self._sharer is not None:
            self._sharer.offer()

    def wait_for_snapshot(self, timeout_s: float = 60.0) -> None:
        """Block until a running snapshot is active (tests and orderly shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._snapshot_child is not None and time.monotonic() < deadline:
            self._reap_snapshot()
            time.sleep(0.01)

    def close(self) -> None:
        self.stop_recovery()
        self.wait_for_snapshot()
        if self._sharer is not None:
            self._sharer.close()
        if self.writer is not None:
            self.writer.close()
        self.disk.close()
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
            data = read_snapshot_file(path)
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
