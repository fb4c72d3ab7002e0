"""``coffer chaos``: a cluster under mixed load while a nemesis keeps breaking it.

Method: a local cluster (3 or 5 NATS servers with R = N, as many Coffer nodes, frequent
snapshots); client threads send every kind of command
(transfers, batch operations with preconditions, reservations and releases, TCC try with confirm
or cancel, compensations) with retries on every node. The nemesis, driven by a seeded RNG, injects
one fault at a time and heals it: kill -9 of a NATS server or of the stream leader, SIGSTOP and
SIGCONT of a server, a planned restart of a server (leader step-down first), kill -9 of a Coffer
node, and a Coffer node restarted with its data directory wiped. At the end the checker of
:mod:`coffer.cluster.workload` — fed only by acknowledged answers and the event history — counts
what was lost, duplicated or wrong.

Network partitions (network namespaces) are not injected: this machine's test hosts are processes
on loopback, and a process that is stopped or killed is the fault its peers see.
"""

import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from coffer.cluster.local import LocalCluster
from coffer.cluster.workload import Workload, check
from coffer.log.jetstream import JetStreamLog
from coffer.progress import progress_until

fault_pause_s = (1.0, 4.0)  # calm between faults, and how long a fault lasts
fault_kinds = ("kill-server", "kill-leader", "pause-server", "planned-restart", "kill-node", "wipe-node")


def _leader(cluster: LocalCluster) -> int | None:
    try:
        with JetStreamLog(cluster.nats.urls, stream=cluster.stream, replicas=cluster.nats.size) as log:
            name = log.leader()
    except Exception:
        return None
    return cluster.nats.number_of(name) if name else None


def _inject(cluster: LocalCluster, kind: str, rng: random.Random) -> Callable[[], None]:
    """Break something; return how to heal it."""
    size = cluster.nats.size
    if kind in ("kill-server", "kill-leader"):
        number = (_leader(cluster) if kind == "kill-leader" else None) or rng.randint(1, size)
        cluster.nats.kill(number)
        return lambda: cluster.nats.start(number)
    if kind == "pause-server":
        number = rng.randint(1, size)
        cluster.nats.pause(number)
        return lambda: cluster.nats.resume(number)
    if kind == "planned-restart":
        number = rng.randint(1, size)
        cluster.restart_server(number)
        return lambda: None
    node = rng.randint(1, len(cluster.nodes))
    cluster.kill_node(node)
    if kind == "wipe-node":
        shutil.rmtree(cluster.node(node).data_dir, ignore_errors=True)
    return lambda: cluster.start_node(node)


def run(minutes: float, nodes: int, threads: int, seed: int, directory: Path | None, echo: Callable[[str], None]) -> bool:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="coffer-chaos-") as scratch:
        cluster = LocalCluster(
            directory or Path(scratch),
            nodes,
            die_with_parent=True,
            # Snapshots often; no compaction, so that a wiped node replays the whole stream and
            # some replica always holds the whole history for the checker (tests/cluster covers
            # compaction and recovery from the shared snapshot on their own).
            node_arguments=["--snapshot-entries", "200", "--compaction-interval-s", "1000000"],
        )
        echo(f"chaos: {nodes} NATS servers, {nodes} Coffer nodes, {threads} clients, {minutes} min, seed {seed}")
        cluster.up()
        try:
            workload = Workload(cluster.urls, threads=threads, prefix="chaos", seed=seed, mixed=True)
            workload.setup()
            workload.start()
            deadline = time.monotonic() + minutes * 60
            faults: Counter[str] = Counter()
            for _ in progress_until(deadline, "faults under load"):
                time.sleep(rng.uniform(*fault_pause_s))
                kind = rng.choice(fault_kinds)
                heal = _inject(cluster, kind, rng)
                faults[kind] += 1
                time.sleep(rng.uniform(*fault_pause_s))
                heal()
                echo(f"  {time.strftime('%H:%M:%S')} {kind}: {len(workload.acknowledged)} acknowledged so far")
            time.sleep(fault_pause_s[1])  # let writes flow again on the healed cluster
            workload.stop()
            verdict = check(workload, cluster.urls, settle_s=120)
            violations = (
                verdict.limit_violations
                + verdict.changed_outcomes
                + (not verdict.conservation_ok)
                + (not verdict.chain_ok)
                + (not verdict.replicas_agree)
            )
            requests = verdict.acknowledged + verdict.settled_unknown
            echo(f"faults by kind: {dict(faults)}; client-side failures: {dict(workload.failures)}")
            echo(f"checked: {verdict}")
            for problem in verdict.problems[:10]:
                echo(f"problem: {problem}")
            echo(
                f"chaos: requests={requests} faults={sum(faults.values())} lost={verdict.lost} "
                f"duplicated={verdict.duplicated} invariant_violations={violations}"
            )
            return verdict.ok
        finally:
            cluster.down()
