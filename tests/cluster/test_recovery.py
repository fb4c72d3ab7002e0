"""Recovery on a shared log that answers from a lagging server: wait and follow, never refuse.

The failure this guards against: a node restarted while the stream had no leader read the log's
end from a member that had been cut off. Such a member answers STREAM.INFO (and direct gets)
from its own, older state; the replica replayed to that end, found its event store further
ahead, and refused its healthy data directory ("the data directory mixes histories"), although
nothing acknowledged was lost. Here a NATS server is partitioned away (its routes dropped by
the fault proxy) while entries are committed by the other two; recovery through that server
must wait, then catch up to the real end once the partition heals.
"""

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import nats
import pytest

from coffer.cluster.local import LocalCluster
from coffer.core.entries import encode_entry
from coffer.core.snapshot import take_snapshot
from coffer.log.jetstream import JetStreamLog
from coffer.replica import Replica
from tests.service.test_replica import _entries

# JetStream lets a member of a leaderless group answer for itself only once it has run this long.
leaderless_answer_s = 10.0
catch_up_s_max = 60.0


def _stream_info(url: str, stream: str) -> dict[str, object] | None:
    async def ask() -> dict[str, object] | None:
        connection = await nats.connect(servers=[url], connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
        try:
            reply = await connection.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=1.0)
            return json.loads(reply.data)
        except (TimeoutError, nats.errors.Error):
            return None
        finally:
            await connection.close()

    return asyncio.run(ask())


@pytest.fixture
def cluster(tmp_path: Path) -> LocalCluster:
    local = LocalCluster(tmp_path / "cluster", 3, die_with_parent=True, network_faults=True)
    local.nats.start_all()
    yield local
    local.down()


def test_recovery_through_a_cut_off_server_waits_and_catches_up(cluster: LocalCluster, tmp_path: Path) -> None:
    started = time.monotonic()
    stream = "recovery"
    entries = _entries(60)
    with JetStreamLog(cluster.nats.urls, stream, 3) as log:
        leader = cluster.nats.number_of(log.leader() or "")
    lagging = next(number for number in (1, 2, 3) if number != leader)
    others = [number for number in (1, 2, 3) if number != lagging]
    data_dir = tmp_path / "node"

    writer = Replica(data_dir, JetStreamLog([cluster.nats.url(n) for n in others], stream, 3), truncate_log=False)
    writer.recover()

    def feed(commands_list: list[list[object]]) -> None:
        for commands in commands_list:
            record = writer.log.append(encode_entry(commands))  # type: ignore[arg-type]
            writer.apply(record, commands)  # type: ignore[arg-type]

    feed(entries[:30])
    cluster.proxy.partition([link for other in others for link in cluster.route_links(lagging, other)])  # type: ignore[union-attr]
    feed(entries[30:])
    expected = take_snapshot(writer.machine)
    end_index, end_seq = writer.machine.log_index, writer.machine.seq
    writer.close()

    # The cut-off member answers for itself once its group is leaderless: an older end, no leader.
    time.sleep(max(leaderless_answer_s + 2 - (time.monotonic() - started), 0))
    deadline = time.monotonic() + 30
    info = _stream_info(cluster.nats.url(lagging), stream)
    while (info is None or "state" not in info) and time.monotonic() < deadline:
        time.sleep(0.5)
        info = _stream_info(cluster.nats.url(lagging), stream)
    assert info is not None and "state" in info, info
    print(f"\nthe cut-off member n{lagging} answers: last_seq {info['state']['last_seq']} (the log ends at {end_index}),"  # type: ignore[index]
          f" leader {info['cluster'].get('leader')!r}")  # type: ignore[index,union-attr]
    assert info["state"]["last_seq"] < end_index  # type: ignore[index]
    assert not info["cluster"].get("leader")  # type: ignore[index,union-attr]

    # A restart that can reach only that member: it must wait, not refuse the directory.
    reader = Replica(data_dir, JetStreamLog([cluster.nats.url(lagging)], stream, 3, connect_lazily=True), truncate_log=False)
    failures: list[BaseException] = []

    def recover() -> None:
        try:
            reader.recover()
        except BaseException as error:
            failures.append(error)

    recovering = threading.Thread(target=recover, daemon=True)
    recovering.start()
    time.sleep(5)
    reader_status = reader.status
    if recovering.is_alive() and "waiting for" not in reader_status:
        reader.stop_recovery()
    assert not failures, failures
    assert recovering.is_alive(), "recovery finished against a cut-off member"
    print(f"while cut off, recovery says: {reader_status}")
    assert "waiting for" in reader_status

    cluster.proxy.heal()  # type: ignore[union-attr]
    recovering.join(catch_up_s_max)
    assert not recovering.is_alive(), f"still recovering after the heal: {reader.status}"
    assert not failures, failures
    assert (reader.machine.log_index, reader.machine.seq) == (end_index, end_seq)
    assert take_snapshot(reader.machine) == expected
    reader.close()
    shutil.rmtree(data_dir)
