"""A restarted node is ready within the README's bound, also after 200,000 entries and with a
wiped disk, and says in /readyz what it waits for meanwhile.

200,000 entries are appended straight to the stream (as many nodes' group commits would), the
three nodes apply them and share a snapshot; then one node comes back with a wiped disk (it
starts from the shared snapshot) and one with its data after entries went by while it was down.
"""

import random
import shutil
import threading
import time
from pathlib import Path

import httpx

from coffer.cluster.local import LocalCluster, node_ready_s_max
from coffer.core.commands import BatchBalanceOperation, Command, CreateAccount, Leg, Transfer
from coffer.core.entries import encode_entry
from coffer.log.jetstream import JetStreamLog

entries_total = 200_000
entries_while_down = 20_000
accounts = 64
applied_s_max = 600.0  # three nodes applying 200,000 entries each on a shared 2-core machine


def _entries(count: int, start: int, rng: random.Random) -> list[list[Command]]:
    ids = [f"r-{number}" for number in range(accounts)]
    entries: list[list[Command]] = []
    if start == 0:
        entries.append([CreateAccount(dedup_id=f"create-{account_id}", account_id=account_id, asset="USD") for account_id in ids])
        legs = tuple(Leg(account_id=account_id, amount=10**12, asset="USD") for account_id in ids)
        entries.append([BatchBalanceOperation(dedup_id="fund", legs=legs)])
    while len(entries) < count:
        commands: list[Command] = []
        for position in range(rng.randrange(1, 4)):
            source, target = rng.sample(ids, 2)
            dedup_id = f"t-{start + len(entries)}-{position}"
            commands.append(Transfer(dedup_id=dedup_id, from_account_id=source, to_account_id=target, amount=rng.randrange(1, 500), asset="USD"))
        entries.append(commands)
    return entries


def _append(log: JetStreamLog, entries: list[list[Command]]) -> None:
    for start in range(0, len(entries), 1000):
        log.append_many([encode_entry(commands) for commands in entries[start : start + 1000]])


def _head(url: str) -> dict[str, object]:
    try:
        return httpx.get(f"{url}/v1/audit/head", timeout=5).json()
    except (httpx.TransportError, ValueError):
        return {}


def _wait_applied(cluster: LocalCluster, log_index: int) -> None:
    deadline = time.monotonic() + applied_s_max
    while not all(_head(url).get("log_index", 0) >= log_index for url in cluster.urls):  # type: ignore[operator]
        assert time.monotonic() < deadline, [_head(url) for url in cluster.urls]
        time.sleep(1)


def _restart_and_time(cluster: LocalCluster, number: int) -> tuple[float, list[str]]:
    """Start node ``number``; return how long until it was ready and what /readyz said meanwhile."""
    said: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            waiting_for = str(cluster.node_status(number).get("waiting_for") or "")
            if waiting_for and (not said or said[-1] != waiting_for):
                said.append(waiting_for)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    started = time.monotonic()
    cluster.start_node(number, wait=False)
    watcher.start()
    try:
        cluster.wait_node(number, node_ready_s_max)
    finally:
        stop.set()
        watcher.join()
    return time.monotonic() - started, said


def test_a_node_is_ready_within_the_bound_after_200000_entries(tmp_path: Path) -> None:
    rng = random.Random(1)
    cluster = LocalCluster(tmp_path / "cluster", 3, die_with_parent=True, node_arguments=["--compaction-interval-s", "1000000"])
    cluster.up()
    try:
        with JetStreamLog(cluster.nats.urls, cluster.stream, 3) as log:
            _append(log, _entries(entries_total, 0, rng))
            _wait_applied(cluster, entries_total)
            deadline = time.monotonic() + 120
            while log.shared_snapshot_index() == 0:
                assert time.monotonic() < deadline, "no shared snapshot"
                time.sleep(1)
            shared = log.shared_snapshot_index()

            cluster.kill_node(3)
            shutil.rmtree(cluster.node(3).data_dir)
            wiped_s, wiped_said = _restart_and_time(cluster, 3)

            cluster.kill_node(2)
            _append(log, _entries(entries_while_down, entries_total, rng))
            last_index = log.last_index
            restarted_s, restarted_said = _restart_and_time(cluster, 2)
        print(
            f"\n{entries_total} entries, shared snapshot at {shared}: wiped node ready in {wiped_s:.1f} s"
            f" (/readyz: {_summary(wiped_said)}); node back after {entries_while_down} entries went by: ready in"
            f" {restarted_s:.1f} s (/readyz: {_summary(restarted_said)})"
        )
        assert wiped_s < node_ready_s_max and restarted_s < node_ready_s_max
        assert restarted_said, "/readyz said nothing while the node recovered"
        _wait_applied(cluster, last_index)
        heads = {(head["seq"], head["hash"]) for head in (_head(url) for url in cluster.urls)}
        assert len(heads) == 1, heads
    finally:
        cluster.down()


def _summary(said: list[str]) -> str:
    return " | ".join(said[:4] + (["…", said[-1]] if len(said) > 5 else said[4:]))
