"""The replica's files and shared snapshots: leftovers of a crash are removed at start, uploads go
one at a time and skip snapshots that a newer one replaced, back off after a failure, and a full
disk under the local log is refused cleanly and recovered from (a small tmpfs, root only)."""

import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import coffer.replica as replica_module
from coffer import exit_codes
from coffer.core.entries import encode_entry
from coffer.log.base import LogDiskFullError
from coffer.log.memory import MemoryLog
from coffer.log.wal import LocalWal
from coffer.replica import Replica
from tests.service.server_process import free_port
from tests.service.test_replica import _entries


class SharedMemoryLog(MemoryLog):
    """A shared log in memory with a snapshot store whose uploads are slow or fail on demand."""

    def __init__(self, upload_s: float = 0.0) -> None:
        super().__init__()
        self.upload_s = upload_s
        self.fail_uploads = False
        self.uploads: list[int] = []
        self.attempts: list[float] = []
        self.in_flight = 0
        self.in_flight_max = 0
        self.shared: tuple[int, bytes] | None = None
        self._lock = threading.Lock()

    def shared_snapshot_index(self) -> int:
        return self.shared[0] if self.shared else 0

    def fetch_snapshot(self) -> tuple[int, bytes] | None:
        return self.shared

    def put_snapshot(self, index: int, data: bytes) -> bool:
        with self._lock:
            self.in_flight += 1
            self.in_flight_max = max(self.in_flight_max, self.in_flight)
            self.attempts.append(time.monotonic())
        try:
            time.sleep(self.upload_s)
            if self.fail_uploads:
                raise ConnectionError("JetStream is slow")
            self.uploads.append(index)
            self.shared = (index, data)
            return True
        finally:
            with self._lock:
                self.in_flight -= 1


def _feed(replica: Replica, entries: list[list[object]]) -> None:
    for commands in entries:
        record = replica.log.append(encode_entry(commands))  # type: ignore[arg-type]
        replica.apply(record, commands)  # type: ignore[arg-type]
        replica.maybe_snapshot()


def test_leftover_snapshot_files_are_removed_at_start(tmp_path: Path) -> None:
    snapshots = tmp_path / "node" / "snapshots"
    snapshots.mkdir(parents=True)
    for name in ("snapshot-00000000000000000100.bin.pending", "snapshot-00000000000000000100.bin.pending.tmp", "snapshot-1.bin.tmp"):
        (snapshots / name).write_bytes(b"left by a crash")
    replica = Replica(tmp_path / "node", LocalWal(tmp_path / "node" / "log"))
    replica.recover()
    assert list(snapshots.iterdir()) == []
    replica.close()


def test_uploads_go_one_at_a_time_skip_replaced_snapshots_and_back_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_module, "snapshot_share_interval_s", 0.0)
    monkeypatch.setattr(replica_module, "snapshot_share_stagger_s_max", 0.0)
    log = SharedMemoryLog(upload_s=0.5)
    replica = Replica(tmp_path / "node", log, snapshot_entries=5, truncate_log=False)
    replica.recover()
    entries = _entries(120)
    for start in range(0, len(entries), 6):
        _feed(replica, entries[start : start + 6])
        replica.wait_for_snapshot()
    taken = replica.snapshot_index
    deadline = time.monotonic() + 10
    while log.shared_snapshot_index() < taken and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.shared_snapshot_index() == taken
    assert log.in_flight_max == 1
    assert len(log.uploads) < 120 // 6  # snapshots replaced during an upload were never sent
    assert log.uploads == sorted(log.uploads)

    monkeypatch.setattr(replica_module, "snapshot_share_backoff_s_min", 0.4)
    log.fail_uploads = True
    log.upload_s = 0.0
    attempts_before = len(log.attempts)
    _feed(replica, _entries(10, seed=9)[2:])
    replica.wait_for_snapshot()
    time.sleep(2.0)
    failed = log.attempts[attempts_before:]
    assert 1 <= len(failed) <= 4, failed  # 0.4 s, then 0.8 s, then 1.6 s apart: not a tight loop
    assert all(later - earlier >= 0.35 for earlier, later in itertools.pairwise(failed))
    replica.close()


@pytest.fixture
def small_disk() -> Iterator[Path]:
    mount_point = Path(tempfile.mkdtemp(prefix="cluster-wt-wal-", dir="/tmp"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


def test_the_wal_refuses_an_append_on_a_full_disk_and_takes_the_next_one_once_there_is_room(small_disk: Path) -> None:
    log = LocalWal(small_disk / "log")
    records = [log.append(bytes(1000) + bytes([number])) for number in range(10)]
    filler = small_disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    for size in (65536, 4096, 1):
        with contextlib.suppress(OSError):
            while os.write(descriptor, bytes(size)):
                pass
    os.close(descriptor)
    segment = next((small_disk / "log").glob("*.wal"))
    size_before = segment.stat().st_size
    with pytest.raises(LogDiskFullError):
        log.append(bytes(64 * 1024))
    assert segment.stat().st_size == size_before  # what did not fit was cut off again
    assert log.last_index == 10
    filler.unlink()
    after = log.append(b"after")
    assert after.index == 11
    log.close()
    reopened = LocalWal(small_disk / "log")
    assert [record.payload for record in reopened.read(1)] == [record.payload for record in records] + [b"after"]
    reopened.close()


def test_a_node_whose_directory_mixes_histories_exits_non_zero_and_says_why(tmp_path: Path) -> None:
    """On its own log (the local WAL) a store ahead of the log is mixed histories: refused."""
    from tests.service.test_replica import _feed as feed_own
    from tests.service.test_replica import _open

    first = _open(tmp_path / "a")
    feed_own(first, _entries(10, seed=1))
    first.close()
    other = _open(tmp_path / "b")
    feed_own(other, _entries(20, seed=2))
    other.close()
    for name in ("events.sqlite3", "events.sqlite3-wal", "events.sqlite3-shm"):
        (tmp_path / "a" / name).unlink(missing_ok=True)
        if (tmp_path / "b" / name).exists():
            (tmp_path / "a" / name).write_bytes((tmp_path / "b" / name).read_bytes())
    environment = {key: value for key, value in os.environ.items() if not key.startswith("COFFER_")}
    done = subprocess.run(
        [sys.executable, "-m", "coffer", "serve", "--data-dir", str(tmp_path / "a"), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert done.returncode == exit_codes.recovery_failed, done
    assert "mixes histories" in done.stderr
