"""Shards placed on some nodes only: 3 NATS servers, 3 nodes, 2 shards, each shard run by two nodes.

``coffer cluster up --placement spread``: c1 runs shard 0 only, c2 shards 0 and 1, c3 shard 1
only (``--host-shards``). Any node takes any request: what belongs to a shard it does not run goes
to a node that runs it, found in the directory of live routers (the ``coffer-nodes`` bucket). A
cross-shard transfer sent to c1 completes; reads through any node span both shards; a ``kill -9``
of c2 leaves each shard with one host, and every node still reaches both. The recovery scans are
shared out: each shard is scanned by at most two routers, not by all of them.
"""

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from coffer.cluster.local import LocalCluster, spread_placement
from coffer.txn.scanners import recovery_scanners_per_shard
from tests.cluster.test_shards import _ids_on, _ok, _open

shard_count = 2
only_zero, both, only_one = 1, 2, 3  # node numbers: c1 runs shard 0, c2 both shards, c3 shard 1
request_timeout_s = 10.0
settle_s_max = 30.0  # the directory drops a dead router's entry after its TTL (6 s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("placed-cluster"), 3, die_with_parent=True, shards=shard_count, placement="spread")
    local.up()
    try:
        yield local
    finally:
        local.down()


def test_spread_runs_each_shard_on_two_nodes() -> None:
    assert spread_placement(2, 3) == [[0], [0, 1], [1]]
    assert spread_placement(4, 3) == [[0, 2, 3], [0, 1, 3], [1, 2]]
    assert spread_placement(3, 1) == [[0, 1, 2]]


def test_each_node_runs_the_shards_it_is_told_to_and_knows_the_others(cluster: LocalCluster) -> None:
    for number, hosted in ((both, {0, 1}), (only_one, {1}), (only_zero, {0})):
        with httpx.Client(base_url=cluster.node(number).url, timeout=request_timeout_s) as http:
            view = _ok(http.get("/v1/shards"))
        assert {entry["shard"] for entry in view["shards"] if entry["hosted_here"]} == hosted
        assert all(entry["ready"] for entry in view["shards"]), view  # the others through their hosts
        routers = _wait_for_routers(cluster.node(number).url, 3)
        assert sorted(routers.values()) == [[0], [0, 1], [1]]


def test_a_cross_shard_transfer_sent_to_a_node_running_one_shard_completes(cluster: LocalCluster) -> None:
    (source,) = _ids_on(0, 1, "placed")
    (target,) = _ids_on(1, 1, "placed")
    with httpx.Client(base_url=cluster.node(only_zero).url, timeout=request_timeout_s) as zero:
        _open(zero, source, Decimal(100))
        _open(zero, target)  # shard 1: c1 forwards it
        body = {"dedup_id": "placed-move", "from_account_id": source, "to_account_id": target, "amount": "12.50", "asset": "USD"}
        moved = _ok(zero.post("/v1/transfers", json=body))
    assert moved["txn_id"].startswith("cx:") and set(moved["shard_seqs"]) == {"0", "1"}
    for number in (both, only_one, only_zero):
        with httpx.Client(base_url=cluster.node(number).url, timeout=request_timeout_s) as http:
            views = _ok(http.get("/v1/accounts", params={"ids": f"{source},{target}", "token": moved["token"]}))["accounts"]
            assert views[source]["available"] == "87.50" and views[target]["available"] == "12.50", (number, views)
            # Per-shard reads and the transaction's view on both shards, whichever node runs them.
            assert _ok(http.get("/v1/audit/head", params={"shard": 0}))["seq"] >= 1
            assert _ok(http.get("/v1/audit/head", params={"shard": 1}))["seq"] >= 1
            assert _ok(http.get(f"/v1/transactions/{moved['txn_id']}"))["state"] == "COMMITTED"


def test_each_shard_is_scanned_by_a_bounded_number_of_routers(cluster: LocalCluster) -> None:
    for number in (both, only_one, only_zero):
        _wait_for_routers(cluster.node(number).url, 3)
    scans: Counter[int] = Counter()
    for number in (both, only_one, only_zero):
        with httpx.Client(base_url=cluster.node(number).url, timeout=request_timeout_s) as http:
            scans.update(_ok(http.get("/v1/shards"))["recovery_scans"])
    # Both hosts of each shard scan it; the third node does not.
    assert scans == {0: recovery_scanners_per_shard, 1: recovery_scanners_per_shard}


def test_a_shard_stays_reachable_when_one_of_its_hosts_is_killed(cluster: LocalCluster) -> None:
    zeros = _ids_on(0, 2, "survive0")
    ones = _ids_on(1, 2, "survive1")
    with httpx.Client(base_url=cluster.node(both).url, timeout=request_timeout_s) as http:
        for account_id in zeros + ones:
            _open(http, account_id, Decimal(50))
    cluster.kill_node(both)  # kill -9: c1 is now the only node running shard 0, c3 the only one running shard 1
    try:
        # c3 runs only shard 1: it reaches shard 0 on c1 (perhaps first trying c2 while the directory still lists it).
        for number, source, target in ((only_one, zeros[0], ones[0]), (only_zero, ones[1], zeros[1])):
            with httpx.Client(base_url=cluster.node(number).url, timeout=request_timeout_s) as http:
                body = {"dedup_id": f"survive-{number}", "from_account_id": source, "to_account_id": target, "amount": "5", "asset": "USD"}
                moved = _retry_until_ok(http, body)
                views = _ok(http.get("/v1/accounts", params={"ids": f"{source},{target}", "token": moved["token"]}))["accounts"]
                assert views[source]["available"] == "45.00" and views[target]["available"] == "55.00"
        # Once c1's entry has expired, every shard is still scanned (by its one live host).
        scans: Counter[int] = Counter()
        for number in (only_one, only_zero):
            _wait_for_routers(cluster.node(number).url, 2)
            with httpx.Client(base_url=cluster.node(number).url, timeout=request_timeout_s) as http:
                scans.update(_ok(http.get("/v1/shards"))["recovery_scans"])
        assert set(scans) == {0, 1}
    finally:
        cluster.start_node(both)


@pytest.mark.parametrize(
    ("host_shards", "message"),
    [("0,2", "names shard 2, but the ledger has 2 shards"), ("1,1", "names shard 1 more than once"), ("0,x", "shard numbers separated by commas")],
)
def test_a_node_told_to_run_shards_that_do_not_exist_is_refused(tmp_path: Path, host_shards: str, message: str) -> None:
    command = [sys.executable, "-m", "coffer", "serve", "--log", "nats://127.0.0.1:1", "--shards", "2", "--host-shards", host_shards]
    command += ["--data-dir", str(tmp_path / "data"), "--port", "0"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2 and message in finished.stderr, finished.stderr


def test_host_shards_needs_a_cluster(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "coffer", "serve", "--shards", "2", "--host-shards", "0", "--data-dir", str(tmp_path), "--port", "0"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2 and "--host-shards needs a cluster (--log nats://" in finished.stderr, finished.stderr


def _wait_for_routers(url: str, count: int) -> dict[str, list[int]]:
    """The live routers a node sees, once it sees ``count`` of them."""
    deadline = time.monotonic() + settle_s_max
    while True:
        routers = httpx.get(f"{url}/v1/shards", timeout=request_timeout_s).json().get("routers") or {}
        if len(routers) == count:
            return routers
        assert time.monotonic() < deadline, f"{url} sees routers {routers}, not {count}"
        time.sleep(0.5)


def _retry_until_ok(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """The same transfer until it answers 200 (a 503 while a dead host is tried is an unknown
    outcome: the same dedup_id replays it)."""
    deadline = time.monotonic() + settle_s_max
    while True:
        response = http.post("/v1/transfers", json=body)
        if response.status_code == 200:
            return response.json()
        assert response.status_code == 503 and time.monotonic() < deadline, response.text
        time.sleep(0.5)
