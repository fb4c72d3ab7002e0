"""``coffer bench failover``: write downtime after kill -9 of the stream leader, under load.

Method: a local cluster (3 NATS servers with R=3, 3 Coffer nodes); client threads send transfers
to all nodes with retries. Each run kills the current stream leader's server with SIGKILL and
measures the RTO: from the kill to the first answer to a write attempt sent after it. The
server is started again and the next run begins once writes flow. At the end the checker of
:mod:`coffer.cluster.workload` counts acknowledged writes that are lost or applied twice.
"""

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from coffer.cluster.local import LocalCluster
from coffer.cluster.workload import Workload, check
from coffer.log.jetstream import JetStreamLog

load_before_kill_s = 2.0
rto_wait_s_max = 60.0


def _leader(cluster: LocalCluster) -> int:
    with JetStreamLog(cluster.nats.urls, stream=cluster.stream, replicas=cluster.nats.size) as log:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            name = log.leader()
            if name is not None:
                return cluster.nats.number_of(name)
            time.sleep(0.2)
    raise RuntimeError("the stream has no leader")


def run(runs: int, nodes: int, threads: int, directory: Path | None, echo: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="coffer-failover-") as scratch:
        cluster = LocalCluster(directory or Path(scratch), nodes, die_with_parent=True)
        echo(f"starting {nodes} NATS servers and {nodes} Coffer nodes")
        cluster.up()
        try:
            workload = Workload(cluster.urls, threads=threads, prefix="failover")
            workload.setup()
            workload.start()
            rtos_ms: list[int] = []
            for number in range(1, runs + 1):
                time.sleep(load_before_kill_s)
                leader = _leader(cluster)
                killed = time.monotonic()
                cluster.nats.kill(leader)
                deadline = killed + rto_wait_s_max
                first = None
                while first is None and time.monotonic() < deadline:
                    first = workload.first_acknowledged_after(killed)
                    time.sleep(0.01)
                if first is None:
                    raise RuntimeError(f"run {number}: no write succeeded within {rto_wait_s_max} s of the kill")
                rtos_ms.append(round((first - killed) * 1000))
                echo(f"run {number}: killed leader n{leader}, writes resumed after {rtos_ms[-1]} ms")
                cluster.nats.start(leader)
            time.sleep(load_before_kill_s)
            workload.stop()
            verdict = check(workload, cluster.urls)
            echo(
                f"rto_ms: min {min(rtos_ms)} median {statistics.median(rtos_ms):.0f} max {max(rtos_ms)} over {runs} runs; "
                f"acknowledged {verdict.acknowledged}, unknown settled {verdict.settled_unknown}, "
                f"conserved {verdict.conservation_ok}, replicas agree {verdict.replicas_agree}, chain {verdict.chain_ok}"
            )
            for problem in verdict.problems[:10]:
                echo(f"problem: {problem}")
            echo(f"rto_ms={max(rtos_ms)} lost={verdict.lost} duplicated={verdict.duplicated}")
        finally:
            cluster.down()
