"""Shared snapshots and compaction: the stream shrinks, and a replica with an empty disk still
catches up, from the snapshot in the JetStream object store plus what the stream still holds."""

import shutil
import time
from pathlib import Path

import httpx

from coffer.cluster.local import LocalCluster
from coffer.cluster.workload import Workload, check
from coffer.log.jetstream import JetStreamLog


def _wait(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_compaction_and_a_replica_rebuilt_from_an_empty_disk(tmp_path: Path) -> None:
    cluster = LocalCluster(
        tmp_path / "cluster", 3, die_with_parent=True, node_arguments=["--snapshot-entries", "10", "--compaction-interval-s", "1"]
    )
    cluster.up()
    try:
        workload = Workload(cluster.urls, prefix="snap", threads=3)
        workload.setup()
        workload.start()
        with JetStreamLog(cluster.nats.urls, stream=cluster.stream, replicas=3) as log:
            _wait(lambda: log.shared_snapshot_index() > 0, 60, "a shared snapshot")
            _wait(lambda: log.first_index > 1, 60, "the stream to be compacted")
            compacted_below = log.first_index
        workload.stop()

        # Node 3 loses its disk: it can only come back through the shared snapshot.
        cluster.kill_node(3)
        shutil.rmtree(cluster.node(3).data_dir)
        cluster.start_node(3)
        log_text = (cluster.directory / "c3.log").read_text()
        heads = [httpx.get(f"{url}/v1/audit/head", timeout=10).json() for url in cluster.urls]
        _wait(
            lambda: len({(head["seq"], head["hash"]) for head in [httpx.get(f"{u}/v1/audit/head").json() for u in cluster.urls]}) == 1,
            30,
            "the rebuilt replica to reach the others",
        )
        verdict = check(workload, cluster.urls)
        assert verdict.ok, verdict.problems
        print(f"stream compacted below {compacted_below}; heads {heads}; rebuilt replica log: {log_text[-300:]}")
    finally:
        cluster.down()
