"""The simulated command log: one totally ordered log the nodes share, under the simulator's control.

Job. Stand in for the log service (a JetStream stream in a cluster) and decide what a real one
leaves to timing and failures: when an append becomes durable and in which order, which appends
are lost (a torn tail), what time an entry gets (it may step back, as after a new leader with a
slower clock), and how far the log has reached each node. Each node's replica reads the log
through a :class:`NodeLog`, a :class:`coffer.log.base.CommandLog`, so its real recovery, replay
and truncation run against it.

Method. :meth:`SimulatedLog.submit` puts an append in flight; :meth:`SimulatedLog.make_durable`
gives the oldest one its index and time, :meth:`SimulatedLog.tear_tail` loses the newest. A node's
view shows the durable records up to the index delivered to it, from its own first index (what
its replica's ``truncate_before`` dropped, which — like deleted WAL segments — survives a crash of
the node: it lives in :class:`NodeLogState`, not in the view). Everything is single-threaded but
:meth:`NodeLog.read`, which copies a slice of an append-only list, so a reader thread also sees
a consistent prefix.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from coffer.log.base import (
    ClockMs,
    CommandLog,
    LogClosedError,
    LogRecord,
    LogTruncatedError,
    check_payload,
    check_read_index,
    check_truncate_index,
)


@dataclass
class Append:
    """An entry a node handed to the log that is not durable yet."""

    node: int
    origin: str  # what the node matches the entry by when it comes back
    payload: bytes


class SimulatedLog:
    """The shared log: durable records and the appends in flight (module docstring)."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []
        self.in_flight: list[Append] = []
        self.time_ms_last = 0  # the time of the last durable record

    @property
    def last_index(self) -> int:
        return len(self.records)

    def submit(self, append: Append) -> None:
        self.in_flight.append(append)

    def make_durable(self, time_ms: int) -> tuple[Append, LogRecord]:
        """The oldest append in flight becomes the next record, with this time."""
        append = self.in_flight.pop(0)
        return append, self.store(append.payload, time_ms)

    def tear_tail(self) -> Append:
        """The newest append in flight is lost."""
        return self.in_flight.pop()

    def store(self, payload: bytes, time_ms: int) -> LogRecord:
        """A durable record at once (an append that was never in flight)."""
        record = LogRecord(len(self.records) + 1, time_ms, payload)
        self.records.append(record)
        self.time_ms_last = max(self.time_ms_last, time_ms)
        return record


@dataclass
class NodeLogState:
    """What a node keeps of the log across its crashes."""

    delivered_index: int = 0  # the log reached this node up to here
    first_index: int = 1  # its replica dropped what lies below


class NodeLog(CommandLog):
    """One node's view of the :class:`SimulatedLog` (module docstring)."""

    def __init__(self, log: SimulatedLog, state: NodeLogState, clock_ms: ClockMs) -> None:
        self._log = log
        self.state = state
        self._clock_ms = clock_ms
        self._closed = False

    def append(self, payload: bytes) -> LogRecord:
        return self.append_many([payload])[0]

    def append_many(self, payloads: list[bytes]) -> list[LogRecord]:
        """Durable at once, as the contract says, and delivered to this node at once."""
        for payload in payloads:
            check_payload(payload)
        self._check_open()
        time_ms = max(self._clock_ms(), self._log.time_ms_last)
        records = [self._log.store(payload, time_ms) for payload in payloads]
        if records:
            self.state.delivered_index = records[-1].index
        return records

    def read(self, from_index: int) -> Iterator[LogRecord]:
        check_read_index(from_index)
        self._check_open()
        if from_index < self.state.first_index:
            raise LogTruncatedError(f"index {from_index} is below first_index {self.state.first_index}")
        return iter(self._log.records[from_index - 1 : self.state.delivered_index])

    @property
    def last_index(self) -> int:
        return self.state.delivered_index

    @property
    def first_index(self) -> int:
        return self.state.first_index

    def truncate_before(self, index: int) -> None:
        self._check_open()
        last_index = self.state.delivered_index
        check_truncate_index(index, last_index)
        # Keep the last record, as the file backends do (see CommandLog.truncate_before).
        self.state.first_index = max(self.state.first_index, min(index, max(last_index, 1)))

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError("the log is closed")
