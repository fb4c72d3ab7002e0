"""The command log contract: one abstract test class, run against every backend.

A backend's test class subclasses :class:`CommandLogContract` and provides the ``backend``
fixture (how to open a log, and how to reopen the same storage). Tests that need durability
across a reopen skip for backends that have none (MemoryLog).
"""

import abc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from coffer.log import (
    CommandLog,
    LocalWal,
    LogClosedError,
    LogRecord,
    LogTruncatedError,
    MemoryLog,
    payload_bytes_max,
)
from coffer.log.base import ClockMs, wall_clock_ms
from coffer.sim.log import NodeLog, NodeLogState, SimulatedLog


def payload_of(number: int) -> bytes:
    # Lengths vary with the number so records straddle segment limits at different points.
    return f"entry {number} ".encode() * (1 + number % 4)


class SteppingClock:
    """A clock that returns the given times in turn, then repeats the last one."""

    def __init__(self, times_ms: list[int]) -> None:
        self._times_ms = list(times_ms)

    def __call__(self) -> int:
        if len(self._times_ms) > 1:
            return self._times_ms.pop(0)
        return self._times_ms[0]


class Backend(abc.ABC):
    durable: bool

    @abc.abstractmethod
    def open(self, clock_ms: ClockMs = wall_clock_ms) -> CommandLog: ...

    def reopen(self, log: CommandLog, clock_ms: ClockMs = wall_clock_ms) -> CommandLog:
        """Close ``log`` and open its storage again (only for durable backends)."""
        raise NotImplementedError


class MemoryBackend(Backend):
    durable = False

    def open(self, clock_ms: ClockMs = wall_clock_ms) -> CommandLog:
        return MemoryLog(clock_ms=clock_ms)


class LocalWalBackend(Backend):
    durable = True

    def __init__(self, directory: Path, segment_bytes_max: int) -> None:
        self.directory = directory
        self.segment_bytes_max = segment_bytes_max

    def open(self, clock_ms: ClockMs = wall_clock_ms) -> CommandLog:
        return LocalWal(self.directory, segment_bytes_max=self.segment_bytes_max, clock_ms=clock_ms)

    def reopen(self, log: CommandLog, clock_ms: ClockMs = wall_clock_ms) -> CommandLog:
        log.close()
        return self.open(clock_ms)


class SimulatedNodeLogBackend(Backend):
    """A node's view of the simulator's shared log: the replica the simulator runs reads it."""

    durable = True  # what the node keeps of the log outlives the view: reopening is a restart

    def __init__(self) -> None:
        self.log = SimulatedLog()
        self.state = NodeLogState()

    def open(self, clock_ms: ClockMs = wall_clock_ms) -> CommandLog:
        return NodeLog(self.log, self.state, clock_ms)

    def reopen(self, log: CommandLog, clock_ms: ClockMs = wall_clock_ms) -> CommandLog:
        log.close()
        return self.open(clock_ms)


class CommandLogContract:
    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError

    @pytest.fixture
    def log(self, backend: Backend) -> Iterator[CommandLog]:
        log = backend.open()
        yield log
        log.close()

    def fill(self, log: CommandLog, count: int) -> list[LogRecord]:
        return [log.append(payload_of(number)) for number in range(1, count + 1)]

    # -- appending ----------------------------------------------------------------------------

    def test_an_empty_log_has_nothing(self, log: CommandLog) -> None:
        assert log.last_index == 0
        assert log.first_index == 1
        assert list(log.read(1)) == []

    def test_indexes_start_at_one_and_are_consecutive(self, log: CommandLog) -> None:
        records = self.fill(log, 12)
        assert [record.index for record in records] == list(range(1, 13))
        assert [record.payload for record in records] == [payload_of(number) for number in range(1, 13)]
        assert log.last_index == 12

    def test_time_is_the_wall_clock_by_default(self, log: CommandLog) -> None:
        before_ms = wall_clock_ms()
        record = log.append(b"x")
        after_ms = wall_clock_ms()
        assert before_ms <= record.time_ms <= after_ms

    def test_time_follows_the_clock_but_never_decreases(self, backend: Backend) -> None:
        with backend.open(SteppingClock([1_000, 1_005, 900, 1_010, 1_010, 50])) as log:
            times_ms = [log.append(b"x").time_ms for _ in range(6)]
            assert times_ms == [1_000, 1_005, 1_005, 1_010, 1_010, 1_010]
            assert [record.time_ms for record in log.read(1)] == times_ms

    def test_append_many_gives_consecutive_indexes_in_list_order(self, log: CommandLog) -> None:
        log.append(b"before")
        payloads = [payload_of(number) for number in range(50)]
        records = log.append_many(payloads)
        assert [record.index for record in records] == list(range(2, 52))
        assert [record.payload for record in records] == payloads
        assert len({record.time_ms for record in records}) == 1
        assert list(log.read(2)) == records
        assert log.append(b"after").index == 52

    def test_append_many_of_nothing_appends_nothing(self, log: CommandLog) -> None:
        log.append(b"one")
        assert log.append_many([]) == []
        assert log.last_index == 1

    def test_append_and_append_many_interleave(self, log: CommandLog) -> None:
        expected: list[bytes] = []
        for round_number in range(5):
            expected.append(payload_of(round_number))
            log.append(expected[-1])
            batch = [payload_of(round_number * 10 + number) for number in range(round_number)]
            expected.extend(batch)
            log.append_many(batch)
        assert [record.payload for record in log.read(1)] == expected
        assert [record.index for record in log.read(1)] == list(range(1, len(expected) + 1))

    def test_payloads_of_any_bytes_and_size_round_trip(self, log: CommandLog) -> None:
        payloads = [b"", bytes(range(256)), b"\xcf\x01" * 100, bytes(1024 * 1024)]
        log.append_many(payloads)
        assert [record.payload for record in log.read(1)] == payloads

    def test_oversized_or_wrong_payloads_are_refused_and_nothing_is_appended(self, log: CommandLog) -> None:
        log.append(b"kept")
        with pytest.raises(ValueError, match="payload_bytes_max"):
            log.append(bytes(payload_bytes_max + 1))
        with pytest.raises(TypeError):
            log.append_many([b"fine", "not bytes"])  # type: ignore[list-item]
        assert log.last_index == 1
        assert log.append(b"next").index == 2

    # -- reading ------------------------------------------------------------------------------

    def test_read_from_every_index(self, log: CommandLog) -> None:
        records = self.fill(log, 15)
        for from_index in range(1, 17):
            assert list(log.read(from_index)) == records[from_index - 1 :]

    def test_read_beyond_the_end_yields_nothing_and_below_one_is_refused(self, log: CommandLog) -> None:
        self.fill(log, 3)
        assert list(log.read(4)) == []
        assert list(log.read(1_000)) == []
        with pytest.raises(ValueError):
            log.read(0)

    def test_read_stops_at_the_last_index_of_the_call(self, log: CommandLog) -> None:
        self.fill(log, 3)
        records = log.read(2)
        log.append(b"later")
        assert [record.index for record in records] == [2, 3]
        assert [record.index for record in log.read(2)] == [2, 3, 4]

    def test_a_reader_thread_sees_consistent_records_while_the_writer_appends(self, log: CommandLog) -> None:
        count = 200
        problems: list[str] = []
        done = threading.Event()

        def reader() -> None:
            while not done.is_set():
                expected_index = 1
                for record in log.read(1):
                    if record.index != expected_index or record.payload != payload_of(record.index):
                        problems.append(f"bad record {record}")
                    expected_index += 1

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for number in range(1, count + 1, 4):
                log.append_many([payload_of(number + offset) for offset in range(4)])
        finally:
            done.set()
            thread.join()
        assert problems == []
        assert log.last_index == count

    # -- truncation ---------------------------------------------------------------------------

    def test_truncate_before_keeps_reads_from_the_cut_working(self, log: CommandLog) -> None:
        records = self.fill(log, 30)
        first_index_previous = 1
        for cut in range(1, 32):
            log.truncate_before(cut)
            first_index = log.first_index
            assert first_index_previous <= first_index <= min(cut, log.last_index)
            first_index_previous = first_index
            for from_index in (cut, first_index, log.last_index, log.last_index + 1):
                assert list(log.read(from_index)) == records[from_index - 1 :]
            if first_index > 1:
                with pytest.raises(LogTruncatedError):
                    log.read(first_index - 1)
        assert log.last_index == 30
        assert log.append(b"after").index == 31

    def test_truncate_before_keeps_the_last_record(self, log: CommandLog) -> None:
        records = self.fill(log, 10)
        log.truncate_before(11)
        assert log.first_index <= 10
        assert list(log.read(10)) == records[9:]

    def test_truncate_before_refuses_a_cut_beyond_the_end(self, log: CommandLog) -> None:
        self.fill(log, 3)
        with pytest.raises(ValueError):
            log.truncate_before(5)
        with pytest.raises(ValueError):
            log.truncate_before(0)

    # -- closing ------------------------------------------------------------------------------

    def test_a_closed_log_refuses_use(self, backend: Backend) -> None:
        with backend.open() as log:
            log.append(b"x")
        log.close()  # idempotent
        with pytest.raises(LogClosedError):
            log.append(b"y")
        with pytest.raises(LogClosedError):
            log.append_many([b"y"])
        with pytest.raises(LogClosedError):
            log.read(1)
        with pytest.raises(LogClosedError):
            log.truncate_before(1)

    # -- durability ---------------------------------------------------------------------------

    def test_reopen_keeps_everything(self, backend: Backend) -> None:
        if not backend.durable:
            pytest.skip("not a durable backend")
        log = backend.open()
        records = self.fill(log, 20) + log.append_many([payload_of(number) for number in range(21, 41)])
        log = backend.reopen(log)
        try:
            assert log.last_index == 40
            assert list(log.read(1)) == records
            assert log.append(b"next").index == 41
        finally:
            log.close()

    def test_reopen_keeps_the_truncation_point(self, backend: Backend) -> None:
        if not backend.durable:
            pytest.skip("not a durable backend")
        log = backend.open()
        records = self.fill(log, 30)
        log.truncate_before(17)
        first_index = log.first_index
        log = backend.reopen(log)
        try:
            assert log.first_index == first_index
            assert list(log.read(first_index)) == records[first_index - 1 :]
        finally:
            log.close()

    def test_time_clamp_survives_reopen(self, backend: Backend) -> None:
        if not backend.durable:
            pytest.skip("not a durable backend")
        log = backend.open(SteppingClock([5_000]))
        log.append(b"x")
        # The wall clock stepped back while the service was down.
        log = backend.reopen(log, SteppingClock([4_000, 6_000]))
        try:
            assert [log.append(b"y").time_ms, log.append(b"z").time_ms] == [5_000, 6_000]
        finally:
            log.close()


class TestMemoryLog(CommandLogContract):
    @pytest.fixture
    def backend(self) -> Backend:
        return MemoryBackend()


class TestLocalWal(CommandLogContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return LocalWalBackend(tmp_path / "wal", segment_bytes_max=64 * 1024 * 1024)


class TestLocalWalSmallSegments(CommandLogContract):
    """Segments of a few records, so every contract test also crosses segment boundaries."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return LocalWalBackend(tmp_path / "wal", segment_bytes_max=200)


class TestSimulatedNodeLog(CommandLogContract):
    @pytest.fixture
    def backend(self) -> Backend:
        return SimulatedNodeLogBackend()
