"""LocalWal: the embedded command log, an append-only write-ahead log in segment files.

Job. Keep every acknowledged entry across crashes and power loss, on one machine, with no
service to run; detect any damage on restart and either cut it (a torn tail: the entry was never
acknowledged) or refuse to start (damage to data that may have been acknowledged).

Layout. A directory of segments, each named by the index of its first record
(``00000000000000000001.wal``), plus a ``LOCK`` file that keeps a second process out. A segment
is a sequence of records; a record is a 26-byte header and the payload, little-endian:

    magic u8 (0xCF) | version u8 (1) | payload length u32 | crc32c u32 | index u64 | time_ms u64

The crc32c covers every byte of the record except the crc field itself (the magic, version and
length before it; the index, time and payload after it), so a flipped length bit is caught by
the checksum too, not only by the payload no longer matching.

Method.
- Append: encode the records, one ``write`` of all of them, one fsync (fdatasync on Linux: the
  file size it must also persist is the only metadata an append changes), and only then update
  the in-memory position and return. ``append_many`` is that with many records: group commit.
- Rollover: when a batch would push a non-empty segment past ``segment_bytes_max``, the next
  segment is created first (its name is the batch's first index) and the directory fsynced, so a
  record is never acknowledged in a file whose directory entry could vanish. A batch is never
  split: one batch larger than the limit makes one segment larger than the limit.
- Time: ``time_ms = max(wall clock, previous record's time)``, one value per batch. The previous
  time is read back on open, so the clamp holds across restarts and clock steps.
- Open: verify every record of every segment (checksum, consecutive index, non-decreasing time,
  segment names contiguous). A bad record at the end of the LAST segment with no valid record
  after it is a torn or damaged tail: it is logged (warning: file, offset, bytes cut), the file
  is truncated there and fsynced, and the log opens. With ``cut_damaged_tail=False`` (a node)
  the tail is kept and described in ``damaged_tail`` until the owner decides: a record whose
  events the node's event store holds was acknowledged, and must not be cut. Anything else — a bad record followed by a
  valid one, a bad record in an earlier segment, a wrong index — raises :class:`LogCorruptError`
  naming the file and offset, because it may be acknowledged data and only an operator can
  decide what to do with it.
- Read: a separate file handle per segment, every yielded record's checksum verified again.
- ``truncate_before``: unlink whole segments, oldest first (a crash half-way still leaves a
  contiguous log), then fsync the directory. The segment holding the last record always stays.
- Threads: appends are serialized and hold their own lock across write and fsync; ``read``,
  ``last_index`` and ``truncate_before`` may run in other threads and never wait for an fsync.
- A failed write or fsync poisons the log (:class:`LogWriteError`): after a failed fsync the page
  cache may say the data is there while the disk does not, so the only safe recovery is a reopen,
  which verifies what is really on disk. One exception: a full disk (ENOSPC, EDQUOT) on the
  active segment. The file is cut back to the end of the last acknowledged record and fsynced
  (everything before that offset was fsynced by earlier appends, the cut removes the rest), and
  :class:`LogDiskFullError` says that nothing was stored; appends work again once there is space.
  If the cut fails too, the log is poisoned as for any other error.
"""

import errno
import fcntl
import logging
import os
import re
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crc32c import crc32c

from coffer.log.base import (
    ClockMs,
    CommandLog,
    LogClosedError,
    LogCorruptError,
    LogDiskFullError,
    LogError,
    LogRecord,
    LogTruncatedError,
    LogWriteError,
    check_payload,
    check_read_index,
    check_truncate_index,
    payload_bytes_max,
    wall_clock_ms,
)

logger = logging.getLogger(__name__)

record_magic = 0xCF
record_version = 1
_header = struct.Struct("<BBIIQQ")  # magic, version, payload length, crc32c, index, time_ms
_prefix = struct.Struct("<BBI")  # the header bytes before the crc field
_suffix = struct.Struct("<QQ")  # the header bytes after it
_crc_offset = _prefix.size
_suffix_offset = _crc_offset + 4
record_header_bytes = _header.size
# A length field above this is damage, not a record: no append can write one (check_payload).
record_bytes_max = record_header_bytes + payload_bytes_max
# A record starts with these two bytes; used to look for valid records after a damaged one.
_record_start = bytes((record_magic, record_version))

# 64 MiB: few files for a long log, and a cheap unit for truncate_before to delete.
segment_bytes_max_default = 64 * 1024 * 1024
segment_name_digits = 20
_segment_name = re.compile(r"^(\d{20})\.wal$")
lock_file_name = "LOCK"
# Reads go through a buffered file; 1 MiB keeps the syscalls per record low for small records.
read_buffer_bytes = 1024 * 1024


def segment_file_name(first_index: int) -> str:
    return f"{first_index:0{segment_name_digits}d}.wal"


def encode_record(record: LogRecord) -> bytes:
    prefix = _prefix.pack(record_magic, record_version, len(record.payload))
    suffix = _suffix.pack(record.index, record.time_ms)
    crc = crc32c(record.payload, crc32c(suffix, crc32c(prefix)))
    return b"".join((prefix, crc.to_bytes(4, "little"), suffix, record.payload))


def _header_problem(magic: int, version: int, payload_bytes: int) -> str | None:
    if magic != record_magic:
        return f"bad magic byte 0x{magic:02x}"
    if version != record_version:
        return f"unknown record version {version}"
    if record_header_bytes + payload_bytes > record_bytes_max:
        return f"absurd payload length {payload_bytes} (record_bytes_max is {record_bytes_max})"
    return None


def _checksum(header: bytes | memoryview, payload: bytes | memoryview) -> int:
    crc = crc32c(header[:_crc_offset])
    crc = crc32c(header[_suffix_offset:record_header_bytes], crc)
    return crc32c(payload, crc)


def decode_at(data: bytes, offset: int, view: memoryview | None = None) -> tuple[int, int, int] | str:
    """``(index, time_ms, end offset)`` of the valid record at ``offset``, or why there is none.

    ``view`` is ``memoryview(data)``, passed by callers that decode many records of one buffer.
    """
    available = len(data) - offset
    if available < record_header_bytes:
        return f"partial header ({available} of {record_header_bytes} bytes)"
    magic, version, payload_bytes, crc, index, time_ms = _header.unpack_from(data, offset)
    problem = _header_problem(magic, version, payload_bytes)
    if problem is not None:
        return problem
    end = offset + record_header_bytes + payload_bytes
    if end > len(data):
        return f"partial payload ({available - record_header_bytes} of {payload_bytes} bytes)"
    if view is None:
        view = memoryview(data)
    # In a buffer the covered bytes are two runs: before the crc field, and from after it to the end.
    if crc32c(view[offset + _suffix_offset : end], crc32c(view[offset : offset + _crc_offset])) != crc:
        return "checksum mismatch"
    return index, time_ms, end


def _find_valid_record(data: bytes, start: int, index_min: int) -> int | None:
    """The offset of the first valid record at or after ``start`` with an index >= index_min.

    Deciding torn tail vs. damaged middle hinges on this: a valid record after the damage proves
    the damage is not the last thing written. Requiring a plausible index keeps a payload that
    happens to contain the bytes of an older record from counting.
    """
    view = memoryview(data)
    position = data.find(_record_start, start)
    while position != -1:
        decoded = decode_at(data, position, view)
        if not isinstance(decoded, str) and decoded[0] >= index_min:
            return position
        position = data.find(_record_start, position + 1)
    return None


def _sync_data(fd: int) -> None:
    if sys.platform == "darwin":
        # On macOS fsync stops at the drive's cache; F_FULLFSYNC is what reaches the medium.
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    elif hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def _sync_directory(directory: Path) -> None:
    # A created or deleted file is durable only once its directory entry is.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class LogInUseError(LogError):
    """Another process (or another LocalWal here) holds the directory: two writers would fork history."""


@dataclass(frozen=True)
class DamagedTail:
    """Bytes at the end of the last segment that are no valid record (kept until a decision)."""

    path: Path
    offset: int
    bytes: int
    problem: str
    last_valid_index: int  # the index of the last valid record before it

    def __str__(self) -> str:
        return f"{self.path} from offset {self.offset} ({self.bytes} bytes, after index {self.last_valid_index}): {self.problem}"


class LocalWal(CommandLog):
    """The local write-ahead log (see the module docstring). Opening it verifies it."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        segment_bytes_max: int = segment_bytes_max_default,
        fsync: bool = True,
        clock_ms: ClockMs = wall_clock_ms,
        *,
        cut_damaged_tail: bool = True,
    ) -> None:
        """``cut_damaged_tail=False``: a damaged tail found at open is kept and described in
        :attr:`damaged_tail`; appends are refused until the owner, who can tell whether that
        record was ever acknowledged, calls :meth:`cut_damaged_tail` (or stops)."""
        assert segment_bytes_max > 0, segment_bytes_max
        self._directory = Path(directory)
        self._segment_bytes_max = segment_bytes_max
        # fsync=False is for tests and benchmarks only: appends are then lost on power failure.
        self._fsync = fsync
        self._clock_ms = clock_ms
        # Two locks, so that readers never wait for a disk flush: ``_append_lock`` is held by one
        # append (or close) for its whole write and fsync and guards the active file;
        # ``_lock`` is held only briefly and guards what readers see. Order: _append_lock first.
        self._append_lock = threading.Lock()
        self._lock = threading.Lock()
        # Under _lock:
        self._closed = False
        self._failure: OSError | None = None
        # (first index, path) of every segment, oldest first; the last one is being appended to.
        self._segments: list[tuple[int, Path]] = []
        self._last_index = 0
        self._time_ms_last = 0
        # Under _append_lock:
        self._active_fd: int | None = None
        self._active_bytes = 0
        self._cut_at_open = cut_damaged_tail
        self.damaged_tail: DamagedTail | None = None

        self._directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_directory_lock()
        try:
            self._recover()
        except BaseException:
            self._release_files()
            raise

    # -- the interface ----------------------------------------------------------------------

    def append(self, payload: bytes) -> LogRecord:
        return self.append_many([payload])[0]

    def append_many(self, payloads: list[bytes]) -> list[LogRecord]:
        for payload in payloads:
            check_payload(payload)
        with self._append_lock:
            with self._lock:
                self._check_writable()
                if not payloads:
                    return []
                time_ms = max(self._clock_ms(), self._time_ms_last)
                index_first = self._last_index + 1
            records = [LogRecord(index_first + offset, time_ms, payload) for offset, payload in enumerate(payloads)]
            data = b"".join([encode_record(record) for record in records])
            try:
                if self._active_bytes > 0 and self._active_bytes + len(data) > self._segment_bytes_max:
                    self._roll_over(index_first)
                assert self._active_fd is not None
                _write_all(self._active_fd, data)
                if self._fsync:
                    _sync_data(self._active_fd)
            except OSError as error:
                if error.errno in (errno.ENOSPC, errno.EDQUOT) and self._cut_back_after_disk_full():
                    raise LogDiskFullError(f"append to {self._directory}: {error.strerror}; nothing was stored") from error
                with self._lock:
                    self._failure = error
                raise LogWriteError(f"append to {self._directory} failed ({error}); the log refuses further appends") from error
            self._active_bytes += len(data)
            with self._lock:
                self._last_index = records[-1].index
                self._time_ms_last = time_ms
            return records

    def _cut_back_after_disk_full(self) -> bool:
        """Drop what a failed append left after the last acknowledged record (see the module docstring)."""
        if self._active_fd is None:
            return False  # failed while starting a segment: the state is unknown
        try:
            os.ftruncate(self._active_fd, self._active_bytes)
            os.fsync(self._active_fd)
        except OSError as error:
            logger.critical("command log %s: cutting back after a full disk failed: %s", self._directory, error)
            return False
        return True

    def read(self, from_index: int) -> Iterator[LogRecord]:
        check_read_index(from_index)
        with self._lock:
            self._check_open()
            first_index = self._segments[0][0]
            if from_index < first_index:
                raise LogTruncatedError(f"index {from_index} is below first_index {first_index}")
            # Bounds are taken now, so the reader never reaches a record still being written.
            segments = list(self._segments)
            end_index = self._last_index
        return self._read_segments(segments, from_index, end_index)

    @property
    def last_index(self) -> int:
        with self._lock:
            return self._last_index

    @property
    def first_index(self) -> int:
        with self._lock:
            return self._segments[0][0]

    def truncate_before(self, index: int) -> None:
        with self._lock:
            self._check_open()
            check_truncate_index(index, self._last_index)
            # A segment goes when the next one starts at or below the cut and holds a record, so
            # every record it holds is below the cut and the last record's segment stays.
            cut = min(index, self._last_index)
            deleted = False
            while len(self._segments) > 1 and self._segments[1][0] <= cut:
                os.unlink(self._segments[0][1])
                del self._segments[0]
                deleted = True
            if deleted:
                _sync_directory(self._directory)

    def close(self) -> None:
        # Waits for an append in flight: its file must not be closed under it.
        with self._append_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self._fsync and self._failure is None and self._active_fd is not None:
                    # A clean shutdown is durable even when appends skipped the fsync.
                    _sync_data(self._active_fd)
            finally:
                self._release_files()

    # -- opening and recovery ---------------------------------------------------------------

    def _take_directory_lock(self) -> int:
        fd = os.open(self._directory / lock_file_name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LogInUseError(f"{self._directory} is already open by another LocalWal") from None
        return fd

    def _recover(self) -> None:
        found: list[tuple[int, Path]] = []
        for entry in self._directory.iterdir():
            match = _segment_name.match(entry.name)
            if match is not None:
                found.append((int(match.group(1)), entry))
        found.sort()
        if not found:
            path = self._directory / segment_file_name(1)
            path.touch(exist_ok=False)
            _sync_directory(self._directory)
            found = [(1, path)]
        if found[0][0] < 1:
            raise LogCorruptError(str(found[0][1]), 0, "a segment name must be an index >= 1")

        for position, (first_index, path) in enumerate(found):
            is_last = position == len(found) - 1
            if position > 0 and first_index != self._last_index + 1:
                raise LogCorruptError(
                    str(path), 0, f"segment starts at index {first_index}, the previous one ends at {self._last_index}"
                )
            self._last_index = first_index - 1
            self._active_bytes = self._scan_segment(path, first_index, is_last)
        self._segments = found
        self._active_fd = os.open(found[-1][1], os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def _scan_segment(self, path: Path, first_index: int, is_last: bool) -> int:
        """Verify one segment, advancing ``_last_index``/``_time_ms_last``; return its valid bytes."""
        data = path.read_bytes()
        view = memoryview(data)
        size = len(data)
        offset = 0
        index_last = self._last_index
        time_ms_last = self._time_ms_last
        unpack_from = _header.unpack_from
        while offset < size:
            # The hot loop of open (every record of every segment, so it sets restart time): a
            # valid record is checked inline, with locals; anything else goes to decode_at,
            # which applies the same checks and says which one failed.
            valid = False
            if size - offset >= record_header_bytes:
                magic, version, payload_bytes, crc, index, time_ms = unpack_from(data, offset)
                end = offset + record_header_bytes + payload_bytes
                valid = (
                    magic == record_magic
                    and version == record_version
                    and payload_bytes <= payload_bytes_max
                    and end <= size
                    and crc32c(view[offset + _suffix_offset : end], crc32c(view[offset : offset + _crc_offset])) == crc
                )
            if not valid:
                problem = decode_at(data, offset, view)
                assert isinstance(problem, str), f"decode_at accepts what the scan refused at {path}:{offset}"
                if not is_last:
                    raise LogCorruptError(str(path), offset, f"{problem}, in a segment that is not the last")
                later = _find_valid_record(data, offset + 1, index_last + 1)
                if later is not None:
                    raise LogCorruptError(str(path), offset, f"{problem}, followed by a valid record at offset {later}")
                if self._cut_at_open:
                    self._cut_tail(path, offset, size - offset, problem)
                else:
                    self.damaged_tail = DamagedTail(path, offset, size - offset, problem, index_last)
                break
            if index != index_last + 1:
                raise LogCorruptError(str(path), offset, f"record has index {index}, expected {index_last + 1}")
            if time_ms < time_ms_last:
                raise LogCorruptError(
                    str(path), offset, f"record time {time_ms} ms is below the previous record's {time_ms_last} ms"
                )
            index_last = index
            time_ms_last = time_ms
            offset = end
        self._last_index = index_last
        self._time_ms_last = time_ms_last
        return offset

    def _cut_tail(self, path: Path, offset: int, cut_bytes: int, reason: str) -> None:
        logger.warning("command log %s: cutting a torn tail at offset %d, %d bytes dropped (%s)", path, offset, cut_bytes, reason)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- helpers ----------------------------------------------------------------------------

    def _roll_over(self, index_first: int) -> None:
        """Start the segment ``index_first`` (called with _append_lock held)."""
        assert self._active_fd is not None
        if not self._fsync:
            # Even without per-append fsync, a finished segment must be whole on disk: damage in
            # a segment that is not the last cannot be told from lost acknowledged data.
            _sync_data(self._active_fd)
        os.close(self._active_fd)
        self._active_fd = None
        path = self._directory / segment_file_name(index_first)
        self._active_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._active_bytes = 0
        with self._lock:
            self._segments.append((index_first, path))
        _sync_directory(self._directory)

    def _read_segments(self, segments: list[tuple[int, Path]], from_index: int, end_index: int) -> Iterator[LogRecord]:
        for position, (first_index, path) in enumerate(segments):
            next_first_index = segments[position + 1][0] if position + 1 < len(segments) else end_index + 1
            if next_first_index <= from_index:
                continue
            if first_index > end_index:
                return
            yield from _read_segment(path, first_index, from_index, min(end_index, next_first_index - 1))

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"the log at {self._directory} is closed")

    def cut_damaged_tail(self) -> None:
        """Cut the damaged tail found at open (its record was never acknowledged); appends resume."""
        with self._append_lock, self._lock:
            damaged = self.damaged_tail
            if damaged is None:
                return
            self._cut_tail(damaged.path, damaged.offset, damaged.bytes, damaged.problem)
            self.damaged_tail = None

    def _check_writable(self) -> None:
        self._check_open()
        if self.damaged_tail is not None:
            raise LogWriteError(f"the log at {self._directory} has a damaged tail that is not cut yet: {self.damaged_tail}")
        if self._failure is not None:
            raise LogWriteError(f"the log at {self._directory} failed earlier ({self._failure}); reopen it")

    def _release_files(self) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
            self._active_fd = None
        # Closing the lock file releases the flock.
        os.close(self._lock_fd)


def _read_segment(path: Path, first_index: int, from_index: int, end_index: int) -> Iterator[LogRecord]:
    """Yield the records ``max(first_index, from_index)..end_index`` of one segment, verified."""
    try:
        file = open(path, "rb", buffering=read_buffer_bytes)  # noqa: SIM115 - held across yields
    except FileNotFoundError:
        raise LogTruncatedError(f"{path} was deleted by truncate_before while being read") from None
    with file:
        offset = 0
        for index_expected in range(first_index, end_index + 1):
            header = file.read(record_header_bytes)
            if len(header) < record_header_bytes:
                raise LogCorruptError(str(path), offset, f"record {index_expected} is missing (file ends)")
            magic, version, payload_bytes, crc, index, time_ms = _header.unpack(header)
            problem = _header_problem(magic, version, payload_bytes)
            if problem is None and index != index_expected:
                problem = f"record has index {index}, expected {index_expected}"
            if problem is not None:
                raise LogCorruptError(str(path), offset, problem)
            if index < from_index:
                # Skipped records are not returned, so their checksum need not be paid for here;
                # open already verified them.
                file.seek(payload_bytes, os.SEEK_CUR)
            else:
                payload = file.read(payload_bytes)
                if len(payload) < payload_bytes or _checksum(header, payload) != crc:
                    raise LogCorruptError(str(path), offset, "checksum mismatch on read")
                yield LogRecord(index, time_ms, payload)
            offset += record_header_bytes + payload_bytes
