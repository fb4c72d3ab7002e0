"""JetStreamLog on a real 3-server JetStream cluster: the command log contract, then its faults.

One cluster (R=3, ``sync_interval: always``) serves the whole module; every contract test gets a
stream of its own, deleted afterwards. The fault tests kill, stop and restart servers, and leave
all three running again when they end, whatever happened.
"""

import asyncio
import contextlib
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from coffer.cluster import NatsCluster, stop_recorded_servers
from coffer.log import CommandLog, LogError, LogRecord
from coffer.log.base import ClockMs, wall_clock_ms
from coffer.log.jetstream import JetStreamLog, LogUnavailableError, atomic_batch_messages_max
from tests.contract.test_command_log import Backend, CommandLogContract, payload_of

replicas = 3
# A new stream leader is elected 4 to 9 s after a crash of the old one; a loaded machine adds.
failover_s_max = 15.0
unavailable_error_s_max = 3.0  # the brief: a node without a quorum answers 503 quickly
step_down_gap_s_max = 1.0
recovery_s_max = 30.0  # a restarted majority: routes, meta leader, then the stream's leader
retry_pause_s = 0.05
_stream_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path_factory.mktemp("nats"), replicas, die_with_parent=True)
    cluster.start_all()
    yield cluster
    cluster.stop_all()


def delete_stream(urls: list[str], stream: str) -> None:
    """Drop a test's stream so the cluster does not carry a Raft group per finished test."""

    async def delete() -> None:
        connection = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=1)
        try:
            await connection.request(f"$JS.API.STREAM.DELETE.{stream}", b"", timeout=5)
        finally:
            await connection.close()

    try:
        asyncio.run(delete())
    except Exception as error:  # a test that broke the cluster must not also fail teardown
        print(f"could not delete stream {stream}: {error!r}")


def restore(cluster: NatsCluster) -> None:
    """All servers running and JetStream answering through each."""
    for number in range(1, cluster.size + 1):
        if not cluster.is_running(number):
            cluster.start(number, wait=False)
    cluster.wait_ready(timeout_s=recovery_s_max)


def append_retrying(log: CommandLog, payload: bytes, timeout_s: float) -> tuple[LogRecord, int]:
    """Append as a caller would across a failover: retry on LogUnavailableError. Returns the
    record and how many attempts failed."""
    deadline = time.monotonic() + timeout_s
    failures = 0
    while True:
        try:
            return log.append(payload), failures
        except LogUnavailableError:
            failures += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(retry_pause_s)


def follow_until(log: JetStreamLog, from_index: int, last_index: int, timeout_s: float) -> list[LogRecord]:
    """Follow as the replica's apply loop does: call again, and again after LogUnavailableError."""
    deadline = time.monotonic() + timeout_s
    records: list[LogRecord] = []
    while from_index + len(records) <= last_index:
        if time.monotonic() > deadline:
            raise TimeoutError(f"followed only {len(records)} records from {from_index} in {timeout_s} s")
        try:
            records += log.follow(from_index + len(records), 0.5)
        except LogUnavailableError:
            time.sleep(retry_pause_s)
    return records


class JetStreamBackend(Backend):
    """A fresh stream per test; reopen is a new JetStreamLog on the same stream (as a restart)."""

    durable = True

    def __init__(self, urls: list[str], stream: str) -> None:
        self.urls = urls
        self.stream = stream

    def open(self, clock_ms: ClockMs = wall_clock_ms) -> CommandLog:
        # clock_ms is ignored: the stream leader stamps the time (the tests that need a clock skip).
        return JetStreamLog(self.urls, self.stream, replicas)

    def reopen(self, log: CommandLog, clock_ms: ClockMs = wall_clock_ms) -> CommandLog:
        log.close()
        return self.open(clock_ms)


@pytest.fixture
def stream(nats_cluster: NatsCluster) -> Iterator[str]:
    name = f"test-{next(_stream_numbers)}"
    yield name
    delete_stream(nats_cluster.urls, name)


class TestJetStreamLog(CommandLogContract):
    @pytest.fixture
    def backend(self, nats_cluster: NatsCluster, stream: str) -> Backend:
        return JetStreamBackend(nats_cluster.urls, stream)

    def test_time_follows_the_clock_but_never_decreases(self) -> None:
        pytest.skip("the stream leader stamps the time: there is no clock to inject")

    def test_time_clamp_survives_reopen(self) -> None:
        pytest.skip("the stream leader stamps the time: there is no clock to inject")


# -- beyond the contract ----------------------------------------------------------------------


def test_every_server_fsyncs_each_write(nats_cluster: NatsCluster) -> None:
    for number in range(1, nats_cluster.size + 1):
        assert "sync_interval: always" in nats_cluster.config_path(number).read_text()
        # What the running server made of it, not only what the file says.
        jetstream_config = httpx.get(f"{nats_cluster.monitor_url(number)}/varz", timeout=5).json()["jetstream"]["config"]
        assert jetstream_config["sync_always"] is True


def test_a_new_log_on_an_existing_stream_sees_everything_and_continues(nats_cluster: NatsCluster, stream: str) -> None:
    with JetStreamLog(nats_cluster.urls, stream, replicas) as first:
        records = first.append_many([payload_of(number) for number in range(1, 6)])
    with JetStreamLog([nats_cluster.url(3)], stream, replicas) as second:
        assert list(second.read(1)) == records
        assert second.append(b"next").index == 6


def test_a_stream_that_cannot_hold_the_log_is_refused(nats_cluster: NatsCluster, stream: str) -> None:
    with JetStreamLog(nats_cluster.urls, stream, replicas):
        pass
    with pytest.raises(LogError, match="num_replicas"):
        JetStreamLog(nats_cluster.urls, stream, 1)


def test_a_payload_above_the_servers_limit_is_refused_before_sending(nats_cluster: NatsCluster, stream: str) -> None:
    with JetStreamLog(nats_cluster.urls, stream, replicas) as log:
        with pytest.raises(ValueError, match="max_payload"):
            log.append(bytes(9 * 1024 * 1024))
        assert log.last_index == 0


def test_append_many_beyond_the_batch_limit_is_split_into_atomic_batches(nats_cluster: NatsCluster, stream: str) -> None:
    payloads = [payload_of(number) for number in range(2 * atomic_batch_messages_max + 10)]
    with JetStreamLog(nats_cluster.urls, stream, replicas) as log:
        records = log.append_many(payloads)
        assert [record.index for record in records] == list(range(1, len(payloads) + 1))
        assert list(log.read(1)) == records
        # One time per batch: each batch is one Raft entry with one stamp.
        for start in range(0, len(payloads), atomic_batch_messages_max):
            assert len({record.time_ms for record in records[start : start + atomic_batch_messages_max]}) == 1


def test_an_append_retried_with_the_same_payload_is_stored_once(nats_cluster: NatsCluster, stream: str) -> None:
    """What a caller's retry after LogUnavailableError does when the first attempt was stored.

    The lost acknowledgement is simulated: the ids a failed attempt would leave behind are set
    by hand before each of two appends of the same payloads.
    """
    with JetStreamLog(nats_cluster.urls, stream, replicas) as log:
        log.append(b"before")
        for payloads, message_ids in (([b"one"], ["retry-single"]), ([b"a", b"b", b"c"], ["retry-batch"])):
            log._unacknowledged = (payloads, message_ids)
            first = log.append_many(payloads)
            log._unacknowledged = (payloads, message_ids)
            assert log.append_many(payloads) == first  # the batch: refused as duplicate, then located
        assert [record.payload for record in log.read(1)] == [b"before", b"one", b"a", b"b", b"c"]


def test_follow_sees_what_another_node_appends(nats_cluster: NatsCluster, stream: str) -> None:
    with (
        JetStreamLog([nats_cluster.url(1)], stream, replicas) as writer,
        JetStreamLog([nats_cluster.url(3)], stream, replicas) as reader,
    ):
        started = time.monotonic()
        assert reader.follow(1, 0.2) == []
        assert time.monotonic() - started < 0.2 + 1.0

        appended: list[LogRecord] = []
        appending = threading.Thread(target=lambda: (time.sleep(0.3), appended.append(writer.append(b"first"))))
        appending.start()
        started = time.monotonic()
        followed = reader.follow(1, 5.0)
        woken_s = time.monotonic() - started
        appending.join()
        assert followed == appended
        assert woken_s < 0.3 + 1.0  # woken by the delivery, not by the timeout

        appended += writer.append_many([payload_of(number) for number in range(2, 40)])
        while followed[-1].index < appended[-1].index:
            followed += reader.follow(followed[-1].index + 1, 5.0)
        assert followed == appended == list(reader.read(1))
        assert all(earlier.time_ms <= later.time_ms for earlier, later in itertools.pairwise(followed))

        # A jump back starts a new consumer at the index asked for.
        assert reader.follow(10, 1.0)[0] == appended[9]


def test_step_down_moves_the_leader_and_appends_go_on_within_a_second(
    nats_cluster: NatsCluster, stream: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with JetStreamLog(nats_cluster.urls, stream, replicas) as log:
        log.append(b"before")
        previous = log.leader()
        started = time.monotonic()
        leader = log.step_down()
        record, failures = append_retrying(log, b"after", step_down_gap_s_max)
        gap_s = time.monotonic() - started
        with capsys.disabled():
            print(f"\nstep-down {previous} -> {leader}: append gap {gap_s * 1000:.0f} ms, {failures} failed attempts")
        assert leader != previous
        assert record.index == 2
        assert gap_s < step_down_gap_s_max


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_records_survive_a_restart_of_the_whole_cluster(nats_cluster: NatsCluster, stream: str, end: str) -> None:
    """``stop`` is a graceful shutdown; ``kill`` a crash of every server at once, which only
    fsync before each acknowledgement survives."""
    try:
        with JetStreamLog(nats_cluster.urls, stream, replicas) as log:
            records = [log.append(payload_of(number)) for number in range(1, 11)]
            records += log.append_many([payload_of(number) for number in range(11, 31)])
            for number in range(1, nats_cluster.size + 1):
                nats_cluster.kill(number) if end == "kill" else nats_cluster.stop(number)
        nats_cluster.start_all(wait=False)
        nats_cluster.wait_ready(timeout_s=recovery_s_max)
        deadline = time.monotonic() + recovery_s_max
        while True:
            try:
                log = JetStreamLog(nats_cluster.urls, stream, replicas)
                break
            except LogUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(retry_pause_s)
        with log:
            record, _ = append_retrying(log, b"after the restart", recovery_s_max)
            assert record.index == 31
            assert list(log.read(1)) == [*records, record]
    finally:
        restore(nats_cluster)


def test_an_append_goes_on_after_the_leader_is_killed(
    nats_cluster: NatsCluster, stream: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        with JetStreamLog(nats_cluster.urls, stream, replicas) as log, JetStreamLog(nats_cluster.urls, stream, replicas) as node:
            records = [log.append(payload_of(number)) for number in range(1, 6)]
            # Another node tails the stream; its consumer sits on the leader, which dies.
            assert follow_until(node, 1, 5, failover_s_max) == records
            leader = log.leader()
            assert leader is not None
            nats_cluster.kill(nats_cluster.number_of(leader))
            started = time.monotonic()
            record, failures = append_retrying(log, b"after the crash", failover_s_max)
            gap_s = time.monotonic() - started
            new_leader = log.leader()
            assert follow_until(node, 6, 6, failover_s_max) == [record]
            follow_gap_s = time.monotonic() - started
            with capsys.disabled():
                print(
                    f"\nleader {leader} killed: append gap {gap_s:.2f} s ({failures} failed attempts),"
                    f" follow on another node {follow_gap_s:.2f} s, new leader {new_leader}"
                )
            assert gap_s < failover_s_max
            assert new_leader not in (None, leader)
            assert list(log.read(1)) == [*records, record]
            assert record.index == 6
    finally:
        restore(nats_cluster)


def test_an_append_without_a_quorum_fails_fast(
    nats_cluster: NatsCluster, stream: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        with JetStreamLog(nats_cluster.urls, stream, replicas) as log:
            log.append(b"before")
            nats_cluster.kill(1)
            nats_cluster.kill(2)
            for attempt in range(2):
                started = time.monotonic()
                with pytest.raises(LogUnavailableError):
                    log.append(f"attempt {attempt}".encode())
                failed_s = time.monotonic() - started
                with capsys.disabled():
                    print(f"\nmajority down: append attempt {attempt} failed after {failed_s:.2f} s")
                assert failed_s < unavailable_error_s_max
            # A surviving server may still answer from what it has: only the bound is promised.
            started = time.monotonic()
            with contextlib.suppress(LogUnavailableError):
                _ = log.last_index
            assert time.monotonic() - started < unavailable_error_s_max

            restore(nats_cluster)
            record, _ = append_retrying(log, b"after the quorum is back", recovery_s_max)
            payloads = [stored.payload for stored in log.read(1)]
            # An attempt that failed may still have been stored; "before" and the last are certain.
            assert payloads[0] == b"before" and payloads[-1] == b"after the quorum is back"
            assert record.index == len(payloads)
    finally:
        restore(nats_cluster)


def test_appends_go_on_while_a_follower_is_paused(nats_cluster: NatsCluster, stream: str) -> None:
    try:
        with JetStreamLog(nats_cluster.urls, stream, replicas) as log:
            log.append(b"before")
            leader = log.leader()
            assert leader is not None
        # Connected to the leader alone, so the client never waits on the paused server.
        with JetStreamLog([nats_cluster.url(nats_cluster.number_of(leader))], stream, replicas) as log:
            follower = next(number for number in range(1, nats_cluster.size + 1) if f"n{number}" != leader)
            nats_cluster.pause(follower)
            started = time.monotonic()
            records = [log.append(payload_of(number)) for number in range(20)]
            assert time.monotonic() - started < 20 * 0.5
            nats_cluster.resume(follower)
            assert [record.index for record in records] == list(range(2, 22))
    finally:
        for number in range(1, nats_cluster.size + 1):
            with contextlib.suppress(Exception):
                nats_cluster.resume(number)
        restore(nats_cluster)


def test_recorded_servers_are_stopped_by_pid_from_their_state_file(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "single", 1, die_with_parent=True)
    cluster.start_all()
    try:
        pid = cluster.pid(1)
        state = json.loads((tmp_path / "single" / "cluster.json").read_text())
        assert state["servers"][0]["pid"] == pid
        # A PID that is not this cluster's server is never signalled (here: this test process).
        state["servers"].append({**state["servers"][0], "number": 2, "pid": os.getpid()})
        (tmp_path / "single" / "cluster.json").write_text(json.dumps(state))
        assert stop_recorded_servers(tmp_path / "single") == [pid]
        assert cluster._processes[1].wait(5) is not None
        assert all(entry["pid"] is None for entry in json.loads((tmp_path / "single" / "cluster.json").read_text())["servers"])
    finally:
        cluster.stop_all()


# -- shared snapshots -------------------------------------------------------------------------


def _snapshot_stream_state(urls: list[str], bucket: str) -> tuple[dict[str, int], int, int]:
    """Subjects (with message counts), bytes and byte limit of a snapshot bucket's stream."""

    async def info() -> dict[str, object]:
        connection = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=1)
        try:
            body = json.dumps({"subjects_filter": f"$O.{bucket}.>"}).encode()
            reply = await connection.request(f"$JS.API.STREAM.INFO.OBJ_{bucket}", body, timeout=5)
            return json.loads(reply.data)
        finally:
            await connection.close()

    answer = asyncio.run(info())
    state, config = answer["state"], answer["config"]
    return state.get("subjects") or {}, state["bytes"], config["max_bytes"]  # type: ignore[index]


def _snapshot_bytes(index: int, size: int = 3 * 1024 * 1024 + 17) -> bytes:
    return (f"snapshot {index} ".encode() * (size // 10 + 1))[:size]


def test_concurrent_snapshot_uploads_keep_the_store_bounded(nats_cluster: NatsCluster, stream: str) -> None:
    """Three replicas upload the same snapshots at once, as they do after each snapshot: the
    store keeps the newest few, no chunk is left without its object, and the limit fits."""
    from coffer.log.jetstream import shared_snapshots_kept

    logs = [JetStreamLog([url], stream, replicas) for url in nats_cluster.urls]
    try:
        stored: list[bool] = []
        failures: list[BaseException] = []

        def upload(log: JetStreamLog) -> None:
            try:
                for index in range(1, 9):
                    stored.append(log.put_snapshot(index * 100, _snapshot_bytes(index)))
            except BaseException as error:
                failures.append(error)

        threads = [threading.Thread(target=upload, args=(log,)) for log in logs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures
        # Mostly one upload per index; rarely a slow one lands after a newer one (pruned again).
        assert sum(stored) >= 1 and len(stored) == 3 * 8
        kept = logs[0].shared_snapshots()
        assert [index for index, _ in kept][-1] == 800 and len(kept) <= shared_snapshots_kept
        assert logs[1].fetch_snapshot() == (800, _snapshot_bytes(8))
        subjects, size, limit = _snapshot_stream_state(nats_cluster.urls, logs[0].snapshot_bucket)
        chunk_subjects = [subject for subject in subjects if ".C." in subject]
        assert len(chunk_subjects) == len(kept), subjects
        assert size < (shared_snapshots_kept + 1) * len(_snapshot_bytes(8))
        assert limit >= logs[0].shared_snapshot_room * len(_snapshot_bytes(8))
    finally:
        for log in logs:
            log.close()
        delete_stream(nats_cluster.urls, f"OBJ_{stream}-snapshots")


def test_chunks_of_an_upload_that_died_are_swept(
    nats_cluster: NatsCluster, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coffer.log.jetstream as jetstream

    with JetStreamLog(nats_cluster.urls, stream, replicas) as log:
        try:
            assert log.put_snapshot(10, _snapshot_bytes(1))

            async def leave_chunks() -> None:  # what a node killed in the middle of an upload leaves
                connection = await nats.connect(servers=nats_cluster.urls, connect_timeout=2, max_reconnect_attempts=1)
                try:
                    js = connection.jetstream()
                    for number in range(3):
                        await js.publish(f"$O.{log.snapshot_bucket}.C.deadupload", bytes(100_000 + number))
                finally:
                    await connection.close()

            asyncio.run(leave_chunks())
            # Younger than the orphan age: maybe an upload in progress, so it stays.
            assert log.put_snapshot(20, _snapshot_bytes(2))
            assert f"$O.{log.snapshot_bucket}.C.deadupload" in _snapshot_stream_state(nats_cluster.urls, log.snapshot_bucket)[0]
            monkeypatch.setattr(jetstream, "snapshot_orphan_age_s", 0.5)
            time.sleep(1.0)
            assert log.put_snapshot(30, _snapshot_bytes(3))
            subjects = _snapshot_stream_state(nats_cluster.urls, log.snapshot_bucket)[0]
            assert f"$O.{log.snapshot_bucket}.C.deadupload" not in subjects
            assert [index for index, _ in log.shared_snapshots()] == [20, 30]
            assert log.shared_snapshot_index() == 30
            # An index that is not newer than what is shared is not uploaded again.
            assert not log.put_snapshot(30, _snapshot_bytes(3))
        finally:
            delete_stream(nats_cluster.urls, f"OBJ_{log.snapshot_bucket}")


def test_a_timeout_inside_a_call_reports_the_real_wait(nats_cluster: NatsCluster, stream: str) -> None:
    """nats-py raises TimeoutError for one request: not to be reported as the whole call's limit."""

    async def one_request_timed_out() -> None:
        raise nats.errors.TimeoutError

    with JetStreamLog(nats_cluster.urls, stream, replicas) as log:
        started = time.monotonic()
        with pytest.raises(LogUnavailableError) as raised:
            log._run(one_request_timed_out(), 120.0)
        assert time.monotonic() - started < 1.0
        assert "120" not in str(raised.value), raised.value
