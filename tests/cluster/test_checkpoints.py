"""Divergence between replicas is caught: by the monitor's rules, and by a real node."""

import asyncio
import logging
import time
from pathlib import Path

import httpx
import msgspec
import nats
import pytest

from coffer.cluster.checkpoints import Checkpoint, CheckpointMonitor
from coffer.cluster.local import LocalCluster

head_a = b"a" * 32
head_b = b"b" * 32


def _note(monitor: CheckpointMonitor, node: str, log_index: int, seq: int, head: bytes) -> None:
    monitor.receive(monitor.encode(Checkpoint(node, log_index, seq, head)))


def test_agreeing_peers_keep_the_node_serving() -> None:
    monitor = CheckpointMonitor("c1", "subject")
    monitor.record(1, 1, head_a)
    _note(monitor, "c2", 1, 1, head_a)
    _note(monitor, "c3", 1, 1, head_a)
    assert monitor.diverged is None and monitor.compared == 2


def test_one_odd_peer_does_not_stop_the_majority() -> None:
    monitor = CheckpointMonitor("c1", "subject")
    monitor.record(1, 1, head_a)
    _note(monitor, "c2", 1, 1, head_a)
    _note(monitor, "c3", 1, 1, head_b)
    assert monitor.diverged is None


def test_disagreeing_with_the_majority_stops_the_node() -> None:
    monitor = CheckpointMonitor("c1", "subject")
    monitor.record(5, 9, head_a)
    _note(monitor, "c2", 5, 9, head_b)
    _note(monitor, "c3", 5, 9, head_b)
    assert monitor.diverged is not None and "log index 5" in monitor.diverged


def test_a_peer_ahead_is_compared_when_this_node_gets_there() -> None:
    monitor = CheckpointMonitor("c1", "subject")
    monitor.record(1, 1, head_a)
    _note(monitor, "c2", 3, 4, head_b)
    assert monitor.compared == 0
    monitor.record(2, 2, head_a)
    monitor.record(3, 4, head_a)
    assert monitor.compared == 1 and monitor.diverged is not None


def test_the_same_head_at_another_seq_is_a_disagreement() -> None:
    monitor = CheckpointMonitor("c1", "subject")
    monitor.record(1, 1, head_a)
    _note(monitor, "c2", 1, 2, head_a)
    assert monitor.diverged is not None


def test_own_and_malformed_notes_are_ignored() -> None:
    monitor = CheckpointMonitor("c1", "subject")
    monitor.record(1, 1, head_a)
    _note(monitor, "c1", 1, 1, head_b)
    monitor.receive(b"\xc1 not a checkpoint")
    assert monitor.diverged is None and monitor.compared == 0


def test_checkpoints_say_which_protocol_each_node_runs() -> None:
    monitor = CheckpointMonitor("c1", "subject")
    monitor.protocol_version_max = 2
    monitor.record(1, 1, head_a)
    monitor.receive(monitor.encode(Checkpoint("c2", 1, 1, head_a, protocol_version=2, protocol_version_max=2)))
    assert monitor.mixed_protocols() == {}
    # A node of the release before protocol versions says nothing (0); a newer one says 3.
    monitor.receive(monitor.encode(Checkpoint("c3", 1, 1, head_a)))
    monitor.receive(monitor.encode(Checkpoint("c4", 1, 1, head_a, protocol_version=2, protocol_version_max=3)))
    assert monitor.mixed_protocols() == {"c3": 0, "c4": 3}
    # A checkpoint of the old layout (no protocol fields) still decodes.
    old = msgspec.msgpack.encode(["c5", 1, 1, head_a, 0])
    monitor.receive(old)
    assert monitor.mixed_protocols()["c5"] == 0 and monitor.diverged is None


secret = b"s" * 32


def test_with_a_secret_only_signed_checkpoints_are_heard(caplog: pytest.LogCaptureFixture) -> None:
    monitor = CheckpointMonitor("c1", "coffer.checkpoints.s0", secret)
    monitor.record(5, 9, head_a)
    unsigned = CheckpointMonitor("x", "coffer.checkpoints.s0")
    other_secret = CheckpointMonitor("x", "coffer.checkpoints.s0", b"t" * 32)
    other_stream = CheckpointMonitor("x", "coffer.checkpoints.s1", secret)
    with caplog.at_level(logging.WARNING, logger="coffer.cluster.checkpoints"):
        for forger in (unsigned, other_secret, other_stream):
            for peer in ("c2", "c3", "c4"):
                monitor.receive(forger.encode(Checkpoint(peer, 5, 9, head_b, snapshot_index=0)))
        monitor.receive(b"")
    assert monitor.diverged is None and monitor.compared == 0 and monitor.peer_snapshots == {}
    assert monitor.ignored == 10
    assert len([record for record in caplog.records if "without a valid signature" in record.message]) == 1
    _note(monitor, "c2", 5, 9, head_a)
    assert monitor.compared == 1 and monitor.diverged is None


def test_real_nodes_ignore_forged_checkpoints_and_stop_on_their_peers_disagreement(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", 3, die_with_parent=True)
    cluster.up()
    try:
        url = cluster.urls[0]
        assert httpx.post(f"{url}/v1/accounts", json={"dedup_id": "d1", "account_id": "a", "asset": "USD"}).status_code == 200
        head = httpx.get(f"{url}/v1/audit/head").json()
        subject = f"coffer.checkpoints.{cluster.stream}"

        async def publish(monitor: CheckpointMonitor) -> None:
            # "Peers" that applied the same index but hold another head.
            connection = await nats.connect(cluster.nats.urls)
            for peer in ("x1", "x2", "x3"):
                note = monitor.encode(Checkpoint(peer, head["log_index"], head["seq"], b"\x00" * 32))
                await connection.publish(subject, note)
            await connection.flush()
            await connection.close()

        asyncio.run(publish(CheckpointMonitor("forger", subject)))
        asyncio.run(publish(CheckpointMonitor("forger", subject, b"not the cluster's secret")))
        time.sleep(3)  # several checkpoint rounds
        for node in cluster.nodes:
            assert httpx.get(f"{node.url}/readyz").status_code == 200, node.name
            assert "without a valid signature" in (cluster.directory / f"{node.name}.log").read_text()
        # The same from holders of the cluster's secret: three peers outvote the two real ones.
        asyncio.run(publish(CheckpointMonitor("peer", subject, cluster.secret_file.read_bytes().strip())))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and httpx.get(f"{url}/readyz").status_code == 200:
            time.sleep(0.1)
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and "diverged" in ready.json()["error"]["message"]
        refused = httpx.post(f"{url}/v1/accounts", json={"dedup_id": "d2", "account_id": "b", "asset": "USD"})
        assert refused.status_code == 503
        assert httpx.get(f"{url}/v1/accounts/a").status_code == 503
    finally:
        cluster.down()
