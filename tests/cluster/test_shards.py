"""Shards over a real JetStream cluster: 3 NATS servers, 3 nodes that each host both shards.

Each shard is its own stream (``coffer-shard-0``, ``coffer-shard-1``, R=3), the shard map lives in
a JetStream key-value bucket. A cross-shard transfer written through one node is read from
another; a node started with another number of shards is refused; a ``kill -9`` of one node
(its router and its shard processes) during cross-shard load leaves the other two answering, every
transaction it left in doubt is finished by their recovery tasks, nothing is lost or moved twice,
and the killed node comes back at the same heads. Each shard snapshots to its own object store
bucket and compacts its own stream, and a node whose disk is wiped comes back through them.
"""

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from coffer.cluster.local import LocalCluster
from coffer.log.jetstream import JetStreamLog
from coffer.txn.shard_map import ShardMap
from coffer.txn.shard_map_store import read_shared
from tests.txn.transfer_load import TransferClient, final_answer

shard_count = 2
opening = Decimal(1000)
recovery_wait_s_max = 60.0
request_timeout_s = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("sharded-cluster"), 3, die_with_parent=True, shards=shard_count)
    local.up()
    try:
        yield local
    finally:
        local.down()


def _ids_on(shard: int, count: int, prefix: str) -> list[str]:
    shard_map = ShardMap.even(shard_count)
    found = [f"{prefix}-{number}" for number in range(10_000) if shard_map.shard_of(f"{prefix}-{number}") == shard]
    return found[:count]


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def _open(http: httpx.Client, account_id: str, deposit: Decimal | None = None) -> None:
    _ok(http.post("/v1/accounts", json={"dedup_id": f"open-{account_id}", "account_id": account_id, "asset": "USD"}))
    if deposit is not None:
        legs = [{"account_id": account_id, "amount": str(deposit), "asset": "USD"}]
        _ok(http.post("/v1/batch-operations", json={"dedup_id": f"fund-{account_id}", "legs": legs}))


def test_every_shard_is_its_own_stream_and_the_map_is_in_the_bucket(cluster: LocalCluster) -> None:
    shard_map = read_shared(cluster.nats.urls)
    assert shard_map == ShardMap.even(shard_count)
    for shard in range(shard_count):
        with JetStreamLog(cluster.nats.urls, stream=f"coffer-shard-{shard}", replicas=3) as log:
            deadline = time.monotonic() + 20
            while log.leader() is None:
                assert time.monotonic() < deadline, f"coffer-shard-{shard} has no leader"
                time.sleep(0.2)


def test_a_cross_shard_transfer_through_one_node_is_read_on_another(cluster: LocalCluster) -> None:
    (source,) = _ids_on(0, 1, "read")
    (target,) = _ids_on(1, 1, "read")
    with httpx.Client(base_url=cluster.node(1).url, timeout=request_timeout_s) as first:
        _open(first, source, Decimal(100))
        _open(first, target)
        body = {"dedup_id": "read-move", "from_account_id": source, "to_account_id": target, "amount": "30.25", "asset": "USD"}
        moved = _ok(first.post("/v1/transfers", json=body))
    assert moved["txn_id"].startswith("cx:") and set(moved["shard_seqs"]) == {"0", "1"}
    with httpx.Client(base_url=cluster.node(2).url, timeout=request_timeout_s) as second:
        views = _ok(second.get("/v1/accounts", params={"ids": f"{source},{target}", "token": moved["token"]}))["accounts"]
        assert views[source]["available"] == "69.75" and views[source]["shard"] == 0
        assert views[target]["available"] == "30.25" and views[target]["shard"] == 1
        # A retry through another node answers the original outcome and moves nothing again.
        again = _ok(second.post("/v1/transfers", json=body))
        assert again["txn_id"] == moved["txn_id"]
        assert _ok(second.get(f"/v1/accounts/{target}", params={"token": moved["token"]}))["available"] == "30.25"


@pytest.mark.parametrize("shards", [3, 1])
def test_a_node_with_another_number_of_shards_is_refused(cluster: LocalCluster, shards: int, tmp_path: Any) -> None:
    command = [sys.executable, "-m", "coffer", "serve", "--log", ",".join(cluster.nats.urls), "--shards", str(shards)]
    command += ["--data-dir", str(tmp_path / "data"), "--port", "0"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2, finished.stderr
    assert f"has {shard_count} shards" in finished.stderr and f"--shards {shard_count}" in finished.stderr, finished.stderr


def _heads(url: str) -> list[tuple[int, str]]:
    shards = httpx.get(f"{url}/v1/shards", timeout=request_timeout_s).json()["shards"]
    return [(shard["head"]["seq"], shard["head"]["hash"]) for shard in shards]


def test_kill_9_of_a_node_under_cross_shard_load_leaves_the_others_answering(cluster: LocalCluster) -> None:
    accounts = _ids_on(0, 3, "kill0") + _ids_on(1, 3, "kill1")
    with httpx.Client(base_url=cluster.node(1).url, timeout=request_timeout_s) as http:
        for account_id in accounts:
            _open(http, account_id, opening)
    stop = threading.Event()
    clients = [TransferClient(cluster.node(1 + number % 3).url, accounts, number, stop, "kill") for number in range(6)]
    for client in clients:
        client.start()
    time.sleep(2.0)
    cluster.kill_node(3)  # its router (coordinating its clients' transactions) and both its shard processes
    killed_at = time.monotonic()
    time.sleep(4.0)
    stop.set()
    for client in clients:
        client.join(30)
    survivors = [client for client in clients if client.url != cluster.node(3).url]
    answered_after_kill = sum(1 for client in survivors for _, answer, at in client.sent if answer is not None and at > killed_at + 0.5)
    assert answered_after_kill > 10, answered_after_kill

    with httpx.Client(base_url=cluster.node(1).url, timeout=request_timeout_s) as http:
        # The surviving nodes' recovery tasks finish what the killed node left in doubt.
        deadline = time.monotonic() + recovery_wait_s_max
        while True:
            open_tries = [
                txn
                for shard in range(shard_count)
                for txn in _ok(http.get("/v1/transactions", params={"shard": shard, "open": "true", "prefix": "cx:"}))["transactions"]
            ]
            if not open_tries:
                break
            assert time.monotonic() < deadline, f"still in doubt after {recovery_wait_s_max} s: {open_tries}"
            time.sleep(0.5)
        balances = dict.fromkeys(accounts, opening)
        acknowledged = 0
        for client in clients:
            for body, answer, _ in client.sent:
                final = final_answer(http, body)
                if answer is not None:
                    acknowledged += 1
                    assert final[0] == answer[0], (body, answer, final)
                    if final[0] == 200:
                        assert final[1].get("txn_id") == answer[1].get("txn_id")
                if final[0] == 200:
                    balances[body["from_account_id"]] -= Decimal(body["amount"])
                    balances[body["to_account_id"]] += Decimal(body["amount"])
        views = _ok(http.get("/v1/accounts", params={"ids": ",".join(accounts)}))["accounts"]
    assert acknowledged > 20
    for account_id in accounts:
        view = views[account_id]
        assert view["pending_in"] == {} and view["pending_out"] == {}, view
        assert Decimal(view["available"]) == balances[account_id], (account_id, view["available"], balances[account_id])
    assert sum(Decimal(view["available"]) for view in views.values()) == opening * len(accounts)

    # The killed node comes back and reaches the same head on every shard.
    cluster.start_node(3)
    deadline = time.monotonic() + recovery_wait_s_max
    while (heads := [_heads(url) for url in cluster.urls]) and len({tuple(item) for item in heads}) != 1:
        assert time.monotonic() < deadline, heads
        time.sleep(0.5)


def test_every_shard_snapshots_compacts_and_rebuilds_a_wiped_replica_on_its_own(tmp_path: Path) -> None:
    arguments = ["--snapshot-entries", "10", "--compaction-interval-s", "1"]
    local = LocalCluster(tmp_path / "cluster", 3, die_with_parent=True, shards=shard_count, node_arguments=arguments)
    local.up()
    try:
        accounts = _ids_on(0, 2, "snap0") + _ids_on(1, 2, "snap1")
        with httpx.Client(base_url=local.node(1).url, timeout=request_timeout_s) as http:
            for account_id in accounts:
                _open(http, account_id, opening)
            logs = [JetStreamLog(local.nats.urls, stream=f"coffer-shard-{shard}", replicas=3) for shard in range(shard_count)]
            try:
                deadline = time.monotonic() + 120
                number = 0
                while not all(log.shared_snapshot_index() > 0 and log.first_index > 1 for log in logs):
                    assert time.monotonic() < deadline, [(log.shared_snapshot_index(), log.first_index) for log in logs]
                    for _ in range(10):
                        number += 1
                        source, target = accounts[number % 4], accounts[(number + 1) % 4]
                        body = {"dedup_id": f"snap-{number}", "from_account_id": source, "to_account_id": target, "amount": "1", "asset": "USD"}
                        _ok(http.post("/v1/transfers", json=body))
            finally:
                for log in logs:
                    log.close()
        # Node 3 loses its disk: each of its shards comes back through that shard's shared snapshot.
        local.kill_node(3)
        shutil.rmtree(local.node(3).data_dir)
        local.start_node(3)
        deadline = time.monotonic() + recovery_wait_s_max
        while (heads := [_heads(url) for url in local.urls]) and len({tuple(item) for item in heads}) != 1:
            assert time.monotonic() < deadline, heads
            time.sleep(0.5)
        views = _ok(httpx.get(f"{local.node(3).url}/v1/accounts", params={"ids": ",".join(accounts)}, timeout=request_timeout_s))
        assert sum(Decimal(view["available"]) for view in views["accounts"].values()) == opening * len(accounts)
    finally:
        local.down()
