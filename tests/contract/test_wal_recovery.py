"""LocalWal on a damaged disk: what a restart cuts, what it refuses, and what a crash keeps.

The rule under test (see :mod:`coffer.log.wal`): damage at the end of the last segment with no
valid record after it is a torn tail, cut with a warning; any other damage raises
LogCorruptError naming the file and offset; a returned record has always passed its checksum.
"""

import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from crc32c import crc32c
from hypothesis import event, given, settings
from hypothesis import strategies as st

import coffer.log.wal as wal_module
from coffer.log import LocalWal, LogCorruptError, LogError, LogRecord, LogWriteError, payload_bytes_max
from coffer.log.wal import decode_at, encode_record, record_header_bytes, segment_file_name

clock_ms_fixed = 1_000
shared_memory = "/dev/shm"


def fixed_clock() -> int:
    return clock_ms_fixed


def scratch_directory() -> tempfile.TemporaryDirectory[str]:
    """A temporary directory on tmpfs when there is one. The tests that loop over many damaged
    copies check logic, not the disk, and a real disk's fsyncs would make them take many seconds
    (about 100 ms per open on a busy ext4). The durability tests keep the real ``tmp_path``."""
    return tempfile.TemporaryDirectory(dir=shared_memory if os.path.isdir(shared_memory) else None)


@pytest.fixture
def scratch_path() -> Iterator[Path]:
    with scratch_directory() as directory:
        yield Path(directory)


def write_log(directory: Path, payloads: list[bytes], segment_bytes_max: int = 64 * 1024 * 1024) -> list[LogRecord]:
    with LocalWal(directory, segment_bytes_max=segment_bytes_max, fsync=False, clock_ms=fixed_clock) as wal:
        return [wal.append(payload) for payload in payloads]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def record_spans(path: Path) -> list[tuple[int, int]]:
    """(start, end) offsets of the records of an undamaged segment."""
    data = path.read_bytes()
    spans: list[tuple[int, int]] = []
    offset = 0
    while offset < len(data):
        decoded = decode_at(data, offset)
        assert not isinstance(decoded, str), decoded
        spans.append((offset, decoded[2]))
        offset = decoded[2]
    return spans


def read_all(directory: Path) -> list[LogRecord]:
    with LocalWal(directory, fsync=False) as wal:
        return list(wal.read(wal.first_index))


def flip_bit(path: Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def assert_disk_holds_exactly(directory: Path, records: list[LogRecord]) -> None:
    """The segments are the encodings of ``records`` and nothing else: every stored byte verified."""
    stored = b"".join(path.read_bytes() for path in segment_files(directory))
    assert stored == b"".join(encode_record(record) for record in records)


# -- format, reopen, rollover, truncation -----------------------------------------------------


def test_the_record_layout_is_the_documented_one(tmp_path: Path) -> None:
    write_log(tmp_path, [b"payload"])
    data = (tmp_path / "00000000000000000001.wal").read_bytes()
    assert len(data) == record_header_bytes + 7 == 33
    assert data[0:2] == b"\xcf\x01"
    assert int.from_bytes(data[2:6], "little") == 7
    assert int.from_bytes(data[6:10], "little") == crc32c(data[10:], crc32c(data[:6]))
    assert int.from_bytes(data[10:18], "little") == 1
    assert int.from_bytes(data[18:26], "little") == clock_ms_fixed
    assert data[26:] == b"payload"


def test_reopen_after_close_keeps_everything_and_continues(tmp_path: Path) -> None:
    records = write_log(tmp_path, [b"a", b"bb", b""])
    with LocalWal(tmp_path, clock_ms=fixed_clock) as wal:
        assert list(wal.read(1)) == records
        assert wal.append(b"d").index == 4
    assert [record.payload for record in read_all(tmp_path)] == [b"a", b"bb", b"", b"d"]


def test_a_second_open_of_the_same_directory_is_refused(tmp_path: Path) -> None:
    with LocalWal(tmp_path), pytest.raises(LogError, match="already open"):
        LocalWal(tmp_path)
    LocalWal(tmp_path).close()  # the lock went with the first close


def test_files_that_are_not_segments_are_ignored(tmp_path: Path) -> None:
    records = write_log(tmp_path, [b"a", b"b"])
    (tmp_path / "notes.txt").write_bytes(b"\xcf\x01 garbage")
    (tmp_path / "1.wal").write_bytes(b"garbage")
    assert read_all(tmp_path) == records


def test_segments_roll_over_at_the_size_limit_and_are_named_by_first_index(tmp_path: Path) -> None:
    record_bytes = record_header_bytes + 10
    with LocalWal(tmp_path, segment_bytes_max=3 * record_bytes, fsync=False) as wal:
        for number in range(10):
            wal.append(b"%010d" % number)
        # A batch bigger than the limit is not split: it fills one segment of its own.
        wal.append_many([b"%010d" % number for number in range(10, 15)])
        wal.append(b"%010d" % 15)
    names = [path.name for path in segment_files(tmp_path)]
    assert names == [segment_file_name(index) for index in (1, 4, 7, 10, 11, 16)]
    sizes = [path.stat().st_size for path in segment_files(tmp_path)]
    assert sizes == [3 * record_bytes, 3 * record_bytes, 3 * record_bytes, record_bytes, 5 * record_bytes, record_bytes]
    assert [record.payload for record in read_all(tmp_path)] == [b"%010d" % number for number in range(16)]


def test_truncate_before_deletes_only_whole_segments_below_the_index(scratch_path: Path) -> None:
    record_bytes = record_header_bytes + 4
    for cut in range(1, 14):
        directory = scratch_path / str(cut)
        # Segments of 3 records: [1-3] [4-6] [7-9] [10-12]
        with LocalWal(directory, segment_bytes_max=3 * record_bytes, fsync=False) as wal:
            records = [wal.append(b"%04d" % number) for number in range(1, 13)]
            wal.truncate_before(cut)
            # A segment goes only when all its records are below the cut; the last record's stays.
            first_index_expected = 1 + 3 * ((min(cut, 12) - 1) // 3)
            assert wal.first_index == first_index_expected
            assert segment_files(directory)[0].name == segment_file_name(first_index_expected)
            assert list(wal.read(first_index_expected)) == records[first_index_expected - 1 :]
        with LocalWal(directory, fsync=False) as wal:
            assert wal.first_index == first_index_expected
            assert wal.append(b"next").index == 13


def test_append_many_is_one_write_and_one_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    write_all, sync_data = wal_module._write_all, wal_module._sync_data
    monkeypatch.setattr(wal_module, "_write_all", lambda fd, data: (calls.append("write"), write_all(fd, data))[1])
    monkeypatch.setattr(wal_module, "_sync_data", lambda fd: (calls.append("fsync"), sync_data(fd))[1])
    with LocalWal(tmp_path) as wal:
        wal.append_many([bytes(200)] * 1000)
    assert calls == ["write", "fsync"]


def test_a_failed_fsync_poisons_the_log_until_reopen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalWal(tmp_path) as wal:
        wal.append(b"acknowledged")

        def failing_sync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(wal_module, "_sync_data", failing_sync)
        with pytest.raises(LogWriteError):
            wal.append(b"unknown")
        monkeypatch.undo()
        with pytest.raises(LogWriteError, match="failed earlier"):
            wal.append(b"refused")
        assert wal.last_index == 1
        assert [record.payload for record in wal.read(1)] == [b"acknowledged"]
    # The unacknowledged record may or may not be on disk; the log goes on either way.
    with LocalWal(tmp_path) as wal:
        assert next(wal.read(1)).payload == b"acknowledged"
        assert wal.append(b"after").index == wal.last_index


def test_readers_do_not_wait_for_an_append_in_its_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalWal(tmp_path) as wal:
        first = wal.append(b"durable")
        in_fsync, release = threading.Event(), threading.Event()

        def slow_sync(fd: int) -> None:
            in_fsync.set()
            assert release.wait(10)

        monkeypatch.setattr(wal_module, "_sync_data", slow_sync)
        writer = threading.Thread(target=wal.append, args=(b"in flight",))
        writer.start()
        answers: list[tuple[int, list[LogRecord]]] = []
        reader = threading.Thread(target=lambda: answers.append((wal.last_index, list(wal.read(1)))))
        try:
            assert in_fsync.wait(10)
            reader.start()
            reader.join(timeout=5)
            # Answered while the fsync is still running, without the record not yet durable.
            assert answers == [(1, [first])], "a reader waited for the fsync"
        finally:
            release.set()
            writer.join()
            reader.join()
        assert wal.last_index == 2


def test_truncate_before_from_another_thread_while_appending(scratch_path: Path) -> None:
    payloads = [b"%06d" % number for number in range(1, 601)]
    with LocalWal(scratch_path, segment_bytes_max=10 * (record_header_bytes + 6), fsync=False) as wal:
        done = threading.Event()

        def truncate_behind() -> None:
            while not done.is_set():
                wal.truncate_before(max(1, wal.last_index - 20))

        thread = threading.Thread(target=truncate_behind)
        thread.start()
        try:
            for number in range(0, 600, 3):
                wal.append_many(payloads[number : number + 3])
        finally:
            done.set()
            thread.join()
        first_index = wal.first_index
        assert [record.payload for record in wal.read(first_index)] == payloads[first_index - 1 :]
    with LocalWal(scratch_path, fsync=False) as wal:
        assert (wal.first_index, wal.last_index) == (first_index, 600)


# -- torn tails and damage ----------------------------------------------------------------------


def test_a_torn_tail_at_every_cut_point_is_cut_and_appends_continue(scratch_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = scratch_path / "good"
    records = write_log(good, [b"first", b"second", b"the last record"])
    segment = segment_files(good)[0]
    data = segment.read_bytes()
    last_start, last_end = record_spans(segment)[-1]
    for cut in range(last_start, last_end):
        directory = scratch_path / f"cut{cut}"
        directory.mkdir()
        path = directory / segment.name
        path.write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="coffer.log.wal"), LocalWal(directory, clock_ms=fixed_clock) as wal:
            assert list(wal.read(1)) == records[:2]
            assert path.stat().st_size == last_start
            assert wal.append(b"again").index == 3
        if cut > last_start:
            [message] = [record.getMessage() for record in caplog.records]
            assert str(path) in message
            assert f"offset {last_start}" in message
            assert f"{cut - last_start} bytes dropped" in message
        else:
            assert caplog.records == []
        assert [record.payload for record in read_all(directory)] == [b"first", b"second", b"again"]


def test_a_bit_flip_anywhere_in_the_last_record_is_cut(scratch_path: Path) -> None:
    records = write_log(scratch_path, [b"first", b"second", b"the last record"])
    segment = segment_files(scratch_path)[0]
    data = segment.read_bytes()
    last_start, last_end = record_spans(segment)[-1]
    for offset in range(last_start, last_end):
        # One bit per byte, rotating, so every bit position of the header fields is hit somewhere.
        segment.write_bytes(data)
        flip_bit(segment, offset, offset % 8)
        assert read_all(scratch_path) == records[:2]
        assert segment.stat().st_size == last_start


def test_a_bit_flip_in_a_middle_record_refuses_the_start_naming_file_and_offset(scratch_path: Path) -> None:
    write_log(scratch_path, [b"first", b"second", b"third"])
    segment = segment_files(scratch_path)[0]
    data = segment.read_bytes()
    middle_start, middle_end = record_spans(segment)[1]
    for offset in range(middle_start, middle_end):
        segment.write_bytes(data)
        flip_bit(segment, offset, offset % 8)
        with pytest.raises(LogCorruptError) as raised:
            LocalWal(scratch_path)
        assert str(segment) in str(raised.value)
        assert f"offset {middle_start}" in str(raised.value)
        assert raised.value.path == str(segment)
        assert raised.value.offset == middle_start
        # Nothing was cut: the operator gets the file as it was.
        assert segment.stat().st_size == len(data)


def test_zeros_after_the_last_record_are_cut(tmp_path: Path) -> None:
    # What a file system can leave after a crash: the size grew, the data never arrived.
    records = write_log(tmp_path, [b"a", b"b"])
    segment = segment_files(tmp_path)[0]
    segment.write_bytes(segment.read_bytes() + bytes(4096))
    assert read_all(tmp_path) == records


def test_an_absurd_length_is_damage(tmp_path: Path) -> None:
    records = write_log(tmp_path, [b"a", b"b"])
    segment = segment_files(tmp_path)[0]
    absurd = b"\xcf\x01" + (payload_bytes_max + 1).to_bytes(4, "little") + bytes(20)
    clean = segment.read_bytes()
    segment.write_bytes(clean + absurd)
    assert read_all(tmp_path) == records
    segment.write_bytes(clean + absurd + encode_record(LogRecord(3, clock_ms_fixed, b"c")))
    with pytest.raises(LogCorruptError, match="absurd payload length"):
        LocalWal(tmp_path)


def test_a_wrong_index_sequence_is_refused(tmp_path: Path) -> None:
    segment = tmp_path / segment_file_name(1)
    segment.write_bytes(b"".join(encode_record(LogRecord(index, 5, b"x")) for index in (1, 2, 4)))
    with pytest.raises(LogCorruptError, match="index 4, expected 3"):
        LocalWal(tmp_path)
    # A segment whose name is not its first record's index.
    segment.unlink()
    (tmp_path / segment_file_name(2)).write_bytes(encode_record(LogRecord(1, 5, b"x")))
    with pytest.raises(LogCorruptError, match="index 1, expected 2"):
        LocalWal(tmp_path)


def test_time_going_backwards_on_disk_is_refused(tmp_path: Path) -> None:
    segment = tmp_path / segment_file_name(1)
    segment.write_bytes(encode_record(LogRecord(1, 500, b"x")) + encode_record(LogRecord(2, 499, b"y")))
    with pytest.raises(LogCorruptError, match="below the previous"):
        LocalWal(tmp_path)


def test_damage_in_a_segment_that_is_not_the_last_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [b"%04d" % number for number in range(6)], segment_bytes_max=3 * (record_header_bytes + 4))
    first, second = segment_files(tmp_path)
    data = first.read_bytes()
    # Even the last record of an earlier segment: later segments prove it was not the tail.
    flip_bit(first, len(data) - 1, 0)
    with pytest.raises(LogCorruptError) as raised:
        LocalWal(tmp_path)
    assert raised.value.path == str(first)
    first.write_bytes(data[:-1])
    with pytest.raises(LogCorruptError, match="not the last"):
        LocalWal(tmp_path)
    first.write_bytes(data)
    second.unlink()
    (tmp_path / segment_file_name(5)).write_bytes(b"")
    with pytest.raises(LogCorruptError, match="segment starts at index 5, the previous one ends at 3"):
        LocalWal(tmp_path)


def test_an_empty_last_segment_from_a_crash_during_rollover_is_used(tmp_path: Path) -> None:
    records = write_log(tmp_path, [b"a", b"b"])
    (tmp_path / segment_file_name(3)).write_bytes(b"")
    with LocalWal(tmp_path, clock_ms=fixed_clock) as wal:
        assert list(wal.read(1)) == records
        assert wal.append(b"c").index == 3
    assert (tmp_path / segment_file_name(3)).stat().st_size == record_header_bytes + 1


def test_truncate_before_keeps_the_last_record_even_behind_an_empty_segment(tmp_path: Path) -> None:
    records = write_log(tmp_path, [b"a", b"b"])
    (tmp_path / segment_file_name(3)).write_bytes(b"")
    with LocalWal(tmp_path) as wal:
        wal.truncate_before(3)
        # Its time is what keeps the clock from going back after a restart.
        assert list(wal.read(wal.first_index))[-1] == records[-1]
    with LocalWal(tmp_path, clock_ms=lambda: clock_ms_fixed - 1) as wal:
        assert wal.append(b"c").time_ms == clock_ms_fixed


def test_damage_after_open_is_caught_by_read(tmp_path: Path) -> None:
    with LocalWal(tmp_path, fsync=False) as wal:
        wal.append_many([b"first", b"second"])
        segment = segment_files(tmp_path)[0]
        second_start, second_end = record_spans(segment)[1]
        flip_bit(segment, second_end - 1, 3)
        assert next(wal.read(1)).payload == b"first"
        with pytest.raises(LogCorruptError) as raised:
            list(wal.read(1))
        assert (raised.value.path, raised.value.offset) == (str(segment), second_start)
        # A reader starting after the damage is not stopped by it.
        assert list(wal.read(3)) == []


# -- random damage (hypothesis) -----------------------------------------------------------------

damage_kinds = ["truncate", "flip", "overwrite", "insert", "append"]


@settings(max_examples=150, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=40), min_size=1, max_size=8),
    segment_bytes_max=st.sampled_from([80, 160, 1_000_000]),
    data=st.data(),
)
def test_random_damage_either_cuts_a_tail_or_refuses(payloads: list[bytes], segment_bytes_max: int, data: st.DataObject) -> None:
    with scratch_directory() as temporary:
        directory = Path(temporary)
        originals = write_log(directory, payloads, segment_bytes_max)
        files = segment_files(directory)
        target_position = data.draw(st.integers(0, len(files) - 1), label="segment")
        target = files[target_position]
        is_last = target_position == len(files) - 1
        content = target.read_bytes()
        spans = record_spans(target)
        index_first = int(target.name.removesuffix(".wal"))
        kind = data.draw(st.sampled_from(damage_kinds), label="kind")
        position = data.draw(st.integers(0, len(content) - 1), label="position")
        # Which record of the segment holds the damaged byte, and the log index it has.
        damaged_record = next(number for number, (start, end) in enumerate(spans) if start <= position < end)
        damaged_index = index_first + damaged_record
        if kind == "truncate":
            damaged = content[:position]
        elif kind == "flip":
            damaged = bytearray(content)
            damaged[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif kind == "overwrite":
            garbage = data.draw(st.binary(min_size=1, max_size=64), label="garbage")
            damaged = content[:position] + garbage + content[position + len(garbage) :]
        elif kind == "insert":
            damaged = content[:position] + data.draw(st.binary(min_size=1, max_size=64), label="garbage") + content[position:]
        else:
            damaged = content + data.draw(st.binary(min_size=1, max_size=64), label="garbage")
        target.write_bytes(bytes(damaged))

        try:
            wal = LocalWal(directory, fsync=False)
        except LogCorruptError as error:
            event(f"refused: {kind}, {'last' if is_last else 'earlier'} segment")
            assert error.path in {str(path) for path in files}
            assert kind != "truncate" or not is_last, "a truncated last segment is a torn tail"
            assert kind != "append" or not is_last, "garbage after the last record is a torn tail"
            return
        event(f"opened: {kind}, {'last' if is_last else 'earlier'} segment")
        with wal:
            stored = list(wal.read(wal.first_index))
            assert stored == originals[: len(stored)], "only records that were written, in order"
            assert wal.last_index == len(stored)
            assert_disk_holds_exactly(directory, stored)
            assert wal.append(b"new").index == len(stored) + 1
        if bytes(damaged) != content:
            assert is_last, "damage to an earlier segment must refuse the start"
        if kind == "truncate":
            assert len(stored) == damaged_index - 1
        if kind == "flip":
            assert damaged_index == len(originals), "a flipped bit is only cut in the last record"
            assert len(stored) == damaged_index - 1
        if kind == "append":
            assert stored == originals


@st.composite
def segment_contents(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """Segment files that are mostly well formed, with the odd skipped or repeated index, stray
    time, empty segment or chunk of garbage, so opening reaches every branch."""
    slip = st.sampled_from([0] * 8 + [1, -1])
    segments: list[tuple[int, bytes]] = []
    index_next = draw(st.integers(1, 3))
    for _ in range(draw(st.integers(1, 3))):
        index_first = max(1, index_next + draw(slip))
        chunks: list[bytes] = []
        count = draw(st.integers(0, 4))
        for offset in range(count):
            index = index_first + offset + draw(slip)
            time_ms = 10 + offset + draw(slip)
            chunks.append(encode_record(LogRecord(index, time_ms, draw(st.binary(max_size=20)))))
        if draw(st.booleans()):
            chunks.insert(draw(st.integers(0, len(chunks))), draw(st.binary(min_size=1, max_size=60)))
        segments.append((index_first, b"".join(chunks)))
        index_next = index_first + count
    return segments


@settings(max_examples=200, deadline=None)
@given(segments=segment_contents())
def test_random_files_open_only_as_verified_records_or_refuse(segments: list[tuple[int, bytes]]) -> None:
    with scratch_directory() as temporary:
        directory = Path(temporary)
        for index_first, content in segments:
            (directory / segment_file_name(index_first)).write_bytes(content)
        try:
            wal = LocalWal(directory, fsync=False)
        except LogCorruptError:
            event("refused")
            return
        event(f"opened with {min(wal.last_index - wal.first_index + 1, 3)}+ records")
        with wal:
            stored = list(wal.read(wal.first_index))
            assert [record.index for record in stored] == list(range(wal.first_index, wal.last_index + 1))
            assert_disk_holds_exactly(directory, stored)
            assert wal.append(b"new").index == wal.last_index


# -- a real crash ---------------------------------------------------------------------------------

# The child defines payload_for_index as this module does; importing this module instead would
# import pytest and hypothesis in every child and double the test's time.
child_program = """
import hashlib
import sys
from coffer.log import LocalWal

def payload_for_index(index):
    return hashlib.sha256(b"%d" % index).digest() * (1 + index % 7)

with LocalWal(sys.argv[1], segment_bytes_max=int(sys.argv[2])) as wal:
    while True:
        index_next = wal.last_index + 1
        count = 1 + index_next % 5
        records = wal.append_many([payload_for_index(index_next + offset) for offset in range(count)])
        assert records[0].index == index_next
        # Printed only after append_many returned: each line is an acknowledgement.
        print(" ".join(str(record.index) for record in records), flush=True)
"""


def payload_for_index(index: int) -> bytes:
    return hashlib.sha256(b"%d" % index).digest() * (1 + index % 7)


def run_child_until_killed(directory: Path, acknowledgements_min: int) -> set[int]:
    child = subprocess.Popen(
        [sys.executable, "-c", child_program, str(directory), "4096"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged: set[int] = set()
    deadline = time.monotonic() + 20
    assert child.stdout is not None
    while len(acknowledged) < acknowledgements_min and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        acknowledged.update(int(index) for index in line.split())
    os.kill(child.pid, signal.SIGKILL)
    remaining_output, errors = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL, errors
    # Lines written before the kill are acknowledgements too. A line cut by the kill is dropped.
    complete_lines = remaining_output.split("\n")[:-1]
    for line in complete_lines:
        acknowledged.update(int(index) for index in line.split())
    return acknowledged


def test_every_acknowledged_append_survives_a_sigkill(tmp_path: Path) -> None:
    acknowledged: set[int] = set()
    for _ in range(3):
        acknowledged |= run_child_until_killed(tmp_path, acknowledgements_min=len(acknowledged) + 300)
        stored = read_all(tmp_path)
        assert [record.index for record in stored] == list(range(1, len(stored) + 1))
        by_index = {record.index: record.payload for record in stored}
        missing = sorted(acknowledged - by_index.keys())
        assert missing == [], f"acknowledged but lost: {missing[:10]}"
        # Every record present (acknowledged or not) is the one that was written.
        assert all(payload == payload_for_index(index) for index, payload in by_index.items())
    assert len(segment_files(tmp_path)) > 1, "the crashes should have crossed segment rollovers"
