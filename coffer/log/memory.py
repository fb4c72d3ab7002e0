"""MemoryLog: the command log in a Python list, for tests.

Method. Records live in a list; ``_base_index`` is the index of the list's first element, so
``truncate_before`` can drop a prefix. "Durable" means "in the list": nothing survives the
process. Pass ``clock_ms`` to make time deterministic. (The deterministic simulator needs more
control over durability and time than this log gives: it has its own, :mod:`coffer.sim.log`.)
"""

import threading
from collections.abc import Iterator

from coffer.log.base import (
    ClockMs,
    CommandLog,
    LogClosedError,
    LogRecord,
    LogTruncatedError,
    check_payload,
    check_read_index,
    check_truncate_index,
    wall_clock_ms,
)


class MemoryLog(CommandLog):
    def __init__(self, clock_ms: ClockMs = wall_clock_ms) -> None:
        self._clock_ms = clock_ms
        self._records: list[LogRecord] = []
        self._base_index = 1
        self._time_ms_last = 0
        self._closed = False
        # A reader thread may read while the writer thread appends or truncates.
        self._lock = threading.Lock()

    def append(self, payload: bytes) -> LogRecord:
        return self.append_many([payload])[0]

    def append_many(self, payloads: list[bytes]) -> list[LogRecord]:
        for payload in payloads:
            check_payload(payload)
        with self._lock:
            self._check_open()
            if not payloads:
                return []
            time_ms = max(self._clock_ms(), self._time_ms_last)
            index_next = self._base_index + len(self._records)
            records = [LogRecord(index_next + offset, time_ms, payload) for offset, payload in enumerate(payloads)]
            self._records.extend(records)
            self._time_ms_last = time_ms
            return records

    def read(self, from_index: int) -> Iterator[LogRecord]:
        check_read_index(from_index)
        with self._lock:
            self._check_open()
            if from_index < self._base_index:
                raise LogTruncatedError(f"index {from_index} is below first_index {self._base_index}")
            # A copy of the references: the snapshot of "up to last_index at the call".
            records = self._records[from_index - self._base_index :]
        return iter(records)

    @property
    def last_index(self) -> int:
        with self._lock:
            return self._base_index + len(self._records) - 1

    @property
    def first_index(self) -> int:
        with self._lock:
            return self._base_index

    def truncate_before(self, index: int) -> None:
        with self._lock:
            self._check_open()
            last_index = self._base_index + len(self._records) - 1
            check_truncate_index(index, last_index)
            # Keep the last record, as the file backends do (see CommandLog.truncate_before).
            keep_from = min(index, max(last_index, 1))
            if keep_from > self._base_index:
                del self._records[: keep_from - self._base_index]
                self._base_index = keep_from

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError("the log is closed")
