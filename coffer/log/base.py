"""The command log interface: a durable, totally ordered sequence of opaque entries.

Job. The log orders and keeps what the state machine will apply. It knows nothing about commands:
an entry is a ``payload`` of bytes (the encoded batch), and the log gives it the next index and a
time. Every backend (:mod:`coffer.log.memory`, :mod:`coffer.log.wal`, later JetStream) keeps the
same promises, checked by one contract test (``tests/contract/test_command_log.py``):

- ``append`` returns only once the record is durable (for the backend's meaning of durable);
- indexes start at 1 and are consecutive, with no gaps and no reuse;
- ``time_ms`` is the wall clock the log read at append, clamped so it never decreases within a
  log (the state machine uses it as the ledger clock, so it must be monotonic, even across
  restarts and clock steps);
- ``read`` yields records in index order, from any index still stored;
- ``append_many`` is a group commit: one durable write for many records, indexes in list order.

Method. The interface is synchronous on purpose: the service calls it from one dedicated writer
thread, so no coroutine ever waits on an fsync. Backends guard their own state with a lock, so a
reader thread may call ``read`` while the writer appends.
"""

import abc
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Self

import msgspec

# The largest payload a backend must accept. The service's batch limits keep real entries far
# below it; it exists so a bug cannot write a record no reader can hold in memory.
payload_bytes_max = 64 * 1024 * 1024

ClockMs = Callable[[], int]

follow_poll_s = 0.002  # how often the default ``follow`` looks for new records


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch: the default clock of every backend."""
    return time.time_ns() // 1_000_000


class LogRecord(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One stored entry: its position, the time the log gave it, and the caller's bytes."""

    index: int
    time_ms: int
    payload: bytes


class LogError(Exception):
    """The root of every operating error a command log raises."""


class LogCorruptError(LogError):
    """Stored data failed verification where it cannot be a torn tail: the log refuses to go on.

    ``path`` and ``offset`` say where (for a backend without files, ``path`` names the log).
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"command log corrupt: {path} at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason

    def __reduce__(self) -> tuple[type["LogCorruptError"], tuple[str, int, str]]:
        # The default would call __init__ with the message alone (needed to cross processes).
        return (type(self), (self.path, self.offset, self.reason))


class LogClosedError(LogError):
    """The log was used after ``close()``."""


class LogTruncatedError(LogError):
    """The index asked for is no longer stored: ``truncate_before`` dropped it."""


class LogWriteError(LogError):
    """A write or fsync failed. The log refuses further appends: after a failed fsync the state
    of the file is unknown, and retrying it could acknowledge data the disk never kept. Reopen
    the log (restart) to recover from what is on disk."""


class LogDiskFullError(LogError):
    """The disk was full: nothing of this append was stored (a partial write was cut off again),
    and the log takes appends again once there is space. The entry was never acknowledged."""


class CommandLog(abc.ABC):
    """The interface every command log backend implements (see the module docstring)."""

    @abc.abstractmethod
    def append(self, payload: bytes) -> LogRecord:
        """Store one entry; return its record once it is durable."""

    @abc.abstractmethod
    def append_many(self, payloads: list[bytes]) -> list[LogRecord]:
        """Store entries with one durable write; return their records, in order, once durable.

        After a crash, a prefix of the batch may survive (each record is verified on its own),
        but none of it was acknowledged, so none of it was promised.
        """

    @abc.abstractmethod
    def read(self, from_index: int) -> Iterator[LogRecord]:
        """Yield the records from ``from_index`` up to ``last_index`` as it was at the call.

        Records appended after the call are not yielded: call ``read`` again to follow the log.
        ``from_index`` above ``last_index`` yields nothing; below ``first_index`` raises
        :class:`LogTruncatedError`; below 1 raises ``ValueError``.
        """

    @property
    @abc.abstractmethod
    def last_index(self) -> int:
        """The index of the last durable record (0 for an empty log)."""

    @property
    @abc.abstractmethod
    def first_index(self) -> int:
        """The lowest index still stored (``last_index + 1`` when nothing is stored)."""

    @abc.abstractmethod
    def truncate_before(self, index: int) -> None:
        """Drop stored records below ``index``, in whole units of storage (segments).

        Only called once a snapshot covers them. A backend may keep more than asked (a segment
        that also holds ``index`` or later stays whole) and always keeps the last record, so the
        time clamp survives a restart. Afterwards ``first_index <= index``.
        ``index`` above ``last_index + 1`` raises ``ValueError``.
        """

    def follow(self, from_index: int, timeout_s: float) -> list[LogRecord]:
        """The records from ``from_index`` that are stored now; if none, wait up to ``timeout_s``.

        A replica tails the log by calling this in a loop, so it sees entries appended by any
        writer. This default polls ``read``; a backend that can be told about new records
        (JetStream) overrides it.
        """
        deadline = time.monotonic() + timeout_s
        while self.last_index < from_index:
            if time.monotonic() >= deadline:
                return []
            time.sleep(follow_poll_s)
        return list(self.read(from_index))

    @abc.abstractmethod
    def close(self) -> None:
        """Release files and handles; further use raises :class:`LogClosedError`. Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def check_payload(payload: bytes) -> None:
    """Reject what no backend may store, before anything is written."""
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    if len(payload) > payload_bytes_max:
        raise ValueError(f"payload of {len(payload)} bytes exceeds payload_bytes_max ({payload_bytes_max})")


def check_read_index(from_index: int) -> None:
    if from_index < 1:
        raise ValueError(f"from_index must be >= 1, got {from_index}")


def check_truncate_index(index: int, last_index: int) -> None:
    if not 1 <= index <= last_index + 1:
        raise ValueError(f"truncate_before({index}) outside 1..{last_index + 1}")
