"""``coffer chaos``: a cluster under mixed load while a nemesis keeps breaking it, then a verdict.

Method: a local cluster (3 or 5 NATS servers with R = N, as many Coffer nodes, frequent
snapshots), with a fault proxy (:mod:`coffer.cluster.proxy`) on every path between a node and a
NATS server and between two NATS servers. Client threads send every kind of command
(transfers, batch operations with preconditions, reservations and releases, TCC try with confirm
or cancel, compensations) with retries on every node. The nemesis, driven by a seeded RNG, injects
one fault at a time and heals it:

- processes: kill -9 of a NATS server or of the stream leader, SIGSTOP and SIGCONT of a server, a
  planned restart of a server (leader step-down first), kill -9 of a Coffer node, and a Coffer
  node restarted with its data directory wiped;
- network: a NATS server (or the stream leader) cut off from its peers and its clients, a Coffer
  node cut off from every server, two servers cut off from each other (a partial partition),
  every link of a server slowed down, every connection of a server reset.

With ``shards`` > 1 the cluster runs that many shards (a stream each, every node hosts all of
them), about half of the clients' transfers, batch operations and TCC tries cross shards, and the
nemesis adds two faults: kill -9 of a Coffer node picked while it coordinates cross-shard
commands (``kill-node``: the node with the most of them in flight), and kill -9 of the stream
leaders of every shard at once (``kill-leaders``: the servers that lead them, one or more).

At the end the checker of :mod:`coffer.cluster.workload` — fed only by acknowledged answers and
the event history of every shard — counts what was lost, duplicated or wrong.

A run always ends with a verdict, and its last line is always ``chaos: requests=… faults=…
lost=… duplicated=… invariant_violations=…``: a node ready only after the readiness bound
(:func:`~coffer.cluster.local.node_ready_bound_s`) is counted as a slow restart; one not ready
after three times the bound did not come back, a fault the verdict records (the run goes on, the
node keeps starting);
a disk budget that is reached stops the faults and ends the run early; SIGINT or SIGTERM stop
the faults and go to the checker (a second one skips it); every process the run started is
stopped, by PID, whatever happened. The disk each NATS server and each node holds is printed, and
the peak memory of each (:mod:`coffer.cluster.memory`; a node with its shard processes).
"""

import contextlib
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from coffer.cluster.local import ClusterError, LocalCluster, node_ready_bound_s
from coffer.cluster.memory import MemoryPeaks
from coffer.cluster.workload import Verdict, Workload, check, history_from_log
from coffer.log.jetstream import JetStreamLog
from coffer.ports import PortRange
from coffer.progress import progress_until

fault_pause_s = (1.0, 4.0)  # calm between faults, and how long a fault lasts
# A partition lasts longer: Raft notices a silent peer only after its election timeout (4-9 s).
partition_s = (3.0, 12.0)
delay_s = (0.05, 0.4)  # one way, per chunk, on every link of a slowed-down server
process_faults = ("kill-server", "kill-leader", "pause-server", "planned-restart", "kill-node", "wipe-node")
network_faults = ("partition-server", "partition-leader", "partition-node", "split-servers", "delay-server", "reset-server")
fault_kinds = process_faults + network_faults  # a run of one shard draws from these
shard_faults = ("kill-leaders",)  # a run of several shards draws from these too
coordinator_wait_s = 3.0  # how long kill-node waits for a node to coordinate a cross-shard command
settle_s = 120.0  # the checker's wait for every unknown command to settle and replicas to agree
settle_after_interrupt_s = 30.0
# The run stops its faults when the disk it uses reaches this share of the budget, so that the
# checker still finds room (each process is capped at its share: see LocalCluster, and a node
# measures itself only every few seconds).
disk_budget_stop_share = 0.75
# A restarted node still not ready after this many times the readiness bound did not come back.
not_back_factor = 3
snapshot_entries = 200  # snapshots often: sharing, adoption and wiped nodes get exercised


class ChaosInterrupted(Exception):
    """SIGINT or SIGTERM during the run."""


@dataclass
class _Run:
    """What the run saw, for the verdict and the last line."""

    faults: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # beyond the checker's: nodes that did not come back
    unready_nodes: set[int] = field(default_factory=set)
    stop_reason: str | None = None
    interrupts: int = 0
    phase: str = "starting"
    ready_s_max: float = 0.0  # the slowest node restart, until /readyz said ready
    slow_restarts: int = 0  # ready, but after the readiness bound


def _streams(cluster: LocalCluster) -> list[str]:
    return [cluster.stream] if cluster.shards == 1 else [f"coffer-shard-{shard}" for shard in range(cluster.shards)]


def _leader(cluster: LocalCluster, stream: str | None = None) -> int | None:
    try:
        with JetStreamLog(cluster.nats.urls, stream=stream or cluster.stream, replicas=cluster.nats.size) as log:
            name = log.leader()
    except Exception:
        return None
    return cluster.nats.number_of(name) if name else None


def _busiest_coordinator(workload: Workload | None, cluster: LocalCluster, rng: random.Random) -> tuple[int, int]:
    """The node with the most cross-shard commands in flight (waiting a moment for one), and how many."""
    if workload is None or workload.shard_map is None:
        return rng.randint(1, len(cluster.nodes)), 0
    deadline = time.monotonic() + coordinator_wait_s
    while True:
        with workload._lock:
            in_flight = {url: count for url, count in workload.cross_shard_in_flight.items() if count > 0}
        if in_flight or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if not in_flight:
        return rng.randint(1, len(cluster.nodes)), 0
    url = max(in_flight, key=lambda item: (in_flight[item], rng.random()))
    return cluster.urls.index(url) + 1, in_flight[url]


def _inject(
    cluster: LocalCluster, kind: str, rng: random.Random, workload: Workload | None = None, echo: Callable[[str], None] = print
) -> Callable[[], None]:
    """Break something; return how to heal it."""
    size = cluster.nats.size
    proxy = cluster.proxy
    if kind in ("kill-server", "kill-leader"):
        number = (_leader(cluster) if kind == "kill-leader" else None) or rng.randint(1, size)
        cluster.nats.kill(number)
        return lambda: cluster.nats.start(number)
    if kind == "kill-leaders":
        leaders = {stream: _leader(cluster, stream) for stream in _streams(cluster)}
        numbers = sorted({number for number in leaders.values() if number is not None})
        if not numbers:
            raise ClusterError(f"no stream has a leader now: {leaders}")
        for number in numbers:
            cluster.nats.kill(number)
        echo(f"  {time.strftime('%H:%M:%S')} kill-leaders: killed {', '.join(f'n{number}' for number in numbers)} leading {leaders}")

        def restart() -> None:
            # All at once: a server that lost its majority with the others only gets ready with them.
            for number in numbers:
                cluster.nats.start(number, wait=False)
            cluster.nats.wait_ready(numbers)

        return restart
    if kind == "pause-server":
        number = rng.randint(1, size)
        cluster.nats.pause(number)
        return lambda: cluster.nats.resume(number)
    if kind == "planned-restart":
        number = rng.randint(1, size)
        cluster.restart_server(number)
        return lambda: None
    if kind in ("kill-node", "wipe-node"):
        node, coordinating = _busiest_coordinator(workload, cluster, rng) if kind == "kill-node" else (rng.randint(1, len(cluster.nodes)), 0)
        cluster.kill_node(node)
        if coordinating:
            echo(f"  {time.strftime('%H:%M:%S')} kill-node: c{node} killed with {coordinating} cross-shard commands in flight")
        if kind == "wipe-node":
            shutil.rmtree(cluster.node(node).data_dir, ignore_errors=True)
        return lambda: cluster.start_node(node, wait=False)
    assert proxy is not None, "network faults need the fault proxy"
    if kind in ("partition-server", "partition-leader"):
        number = (_leader(cluster) if kind == "partition-leader" else None) or rng.randint(1, size)
        links = cluster.server_links(number)
        proxy.partition(links)
    elif kind == "partition-node":
        links = cluster.node_links(rng.randint(1, len(cluster.nodes)))
        proxy.partition(links)
    elif kind == "split-servers":
        first, second = rng.sample(range(1, size + 1), 2)
        links = cluster.route_links(first, second)
        proxy.partition(links)
    elif kind == "delay-server":
        links = cluster.server_links(rng.randint(1, size))
        proxy.delay(links, rng.uniform(*delay_s))
    elif kind == "reset-server":
        links = cluster.server_links(rng.randint(1, size))
        proxy.reset(links)
        return lambda: None
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    return lambda: proxy.heal(links)


@contextlib.contextmanager
def _signals_raise(run: _Run) -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`ChaosInterrupted` where the run is (main thread only);
    while the run stops its processes they are only counted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(number: int, frame: FrameType | None) -> None:
        run.interrupts += 1
        if run.phase != "stopping":
            raise ChaosInterrupted(signal.Signals(number).name)

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _heal_everything(cluster: LocalCluster, run: _Run, echo: Callable[[str], None]) -> None:
    """Every fault off, every process running; nodes that do not get ready are recorded."""
    if cluster.proxy is not None:
        cluster.proxy.heal()
    for number in range(1, cluster.nats.size + 1):
        try:
            if cluster.nats.is_paused(number):
                cluster.nats.resume(number)
            if not cluster.nats.is_running(number):
                cluster.nats.start(number, wait=False)
        except Exception as error:
            run.problems.append(f"n{number} could not be started again: {error}")
    for node in cluster.nodes:
        if not cluster.node_running(node.number):
            try:
                cluster.start_node(node.number, wait=False)
            except Exception as error:
                run.problems.append(f"{node.name} could not be started again: {error}")
    _wait_nodes(cluster, [node.number for node in cluster.nodes], run, echo)


def _process_roots(cluster: LocalCluster) -> list[tuple[str, int | None]]:
    """Every NATS server and node by name, with its pid while it runs (a node's shard processes
    are its descendants)."""
    servers = [(f"n{number}", cluster.nats.pid(number)) for number in range(1, cluster.nats.size + 1)]
    return servers + [(node.name, cluster.node_pid(node.number)) for node in cluster.nodes]


def _stream_length(cluster: LocalCluster) -> int:
    """The longest stream's length (a wiped node replays each of its shards' streams)."""
    length = 0
    for stream in _streams(cluster):
        try:
            with JetStreamLog(cluster.nats.urls, stream=stream, replicas=cluster.nats.size) as log:
                length = max(length, log.last_index)
        except Exception:
            continue
    return length


def _ready_bound_s(cluster: LocalCluster) -> float:
    """How long a node may take to come back: longer for a longer stream, since a wiped node
    replays all of it (a chaos run never compacts)."""
    return node_ready_bound_s(_stream_length(cluster))


def _wait_nodes(cluster: LocalCluster, numbers: list[int], run: _Run, echo: Callable[[str], None]) -> None:
    """Wait for restarted nodes: one ready after the stated bound is a slow restart (reported, the
    bound is a speed figure that an oversubscribed machine can miss); one not ready after
    ``not_back_factor`` times the bound did not come back (a problem for the verdict)."""
    bound_s = _ready_bound_s(cluster)
    deadline = time.monotonic() + bound_s * not_back_factor
    for number in numbers:
        try:
            # A node up but refusing writes for a full disk is back: the disk budget deals with it.
            took_s = cluster.wait_node(number, max(deadline - time.monotonic(), 0.05), accept=_refuses_for_disk)
        except ClusterError as error:
            run.faults["node-not-ready"] += 1
            run.unready_nodes.add(number)
            run.problems.append(f"a node did not come back within {bound_s * not_back_factor:.0f} s: {error}")
            echo(f"  {time.strftime('%H:%M:%S')} node c{number} did not come back: {error}")
            continue
        run.unready_nodes.discard(number)
        run.ready_s_max = max(run.ready_s_max, took_s)
        if took_s > bound_s:
            run.slow_restarts += 1
            echo(f"  {time.strftime('%H:%M:%S')} node c{number} took {took_s:.1f} s to get ready, beyond the {bound_s:.0f} s bound")
        elif took_s > bound_s / 2:
            echo(f"  {time.strftime('%H:%M:%S')} node c{number} took {took_s:.1f} s to get ready")


def _refuses_for_disk(waiting_for: str) -> bool:
    return waiting_for.startswith("free disk space")


def _disk_over_budget(cluster: LocalCluster, budget_bytes: int) -> str | None:
    usage = cluster.disk_usage()
    total = sum(usage.values())
    share = budget_bytes // (2 * cluster.nats.size)
    for name, used in usage.items():
        if used >= disk_budget_stop_share * share:
            return f"{name} holds {used // 2**20} MiB of its {share // 2**20} MiB share of the disk budget"
    if total >= disk_budget_stop_share * budget_bytes:
        return f"the cluster holds {total // 2**20} MiB of the {budget_bytes // 2**20} MiB disk budget"
    return None


def _disk_report(cluster: LocalCluster) -> str:
    """Disk per NATS server and per node, and what the shared snapshot store holds (one copy)."""
    usage = cluster.disk_usage()
    parts = [f"{name}={used / 2**20:.1f}MiB" for name, used in usage.items()]
    report = f"disk: {' '.join(parts)} total={sum(usage.values()) / 2**20:.1f}MiB"
    try:
        with JetStreamLog(cluster.nats.urls, stream=cluster.stream, replicas=cluster.nats.size) as log:
            shared = log.shared_snapshots()
            report += (
                f"; shared snapshots: {len(shared)} kept, {log.snapshot_bucket_bytes() / 2**20:.1f}MiB per server"
                f" (newest at log index {shared[-1][0] if shared else 0}, {shared[-1][1] / 2**20 if shared else 0:.1f}MiB)"
            )
    except Exception as error:
        report += f"; shared snapshots: unknown ({error})"
    return report


def run(
    minutes: float,
    nodes: int,
    threads: int,
    seed: int,
    directory: Path | None,
    echo: Callable[[str], None],
    *,
    ports: PortRange | None = None,
    disk_budget_mb: int | None = None,
    kinds: tuple[str, ...] | None = None,
    shards: int = 1,
) -> bool:
    """One chaos run; True when the verdict found nothing wrong (see the module docstring).

    ``kinds`` defaults to every fault kind the run's number of shards allows.
    """
    if kinds is None:
        kinds = fault_kinds + (shard_faults if shards > 1 else ())
    assert shards > 1 or not set(kinds) & set(shard_faults), "kill-leaders needs several shards"
    rng = random.Random(seed)
    state = _Run()
    verdict: Verdict | None = None
    requests = 0
    budget_bytes = disk_budget_mb * 2**20 if disk_budget_mb is not None else None
    with contextlib.ExitStack() as resources:
        resources.enter_context(_signals_raise(state))
        if directory is None:
            directory = Path(resources.enter_context(tempfile.TemporaryDirectory(prefix="coffer-chaos-")))
        cluster: LocalCluster | None = None
        workload: Workload | None = None
        memory: MemoryPeaks | None = None
        try:
            cluster = LocalCluster(
                directory,
                nodes,
                die_with_parent=True,
                # Snapshots often; no compaction, so a wiped node replays the whole stream and the
                # stream holds the whole history for the checker (tests/cluster covers compaction
                # and recovery from the shared snapshot on their own).
                node_arguments=["--snapshot-entries", str(snapshot_entries), "--compaction-interval-s", "1000000"],
                ports=ports,
                network_faults=any(kind in network_faults for kind in kinds),
                disk_budget_bytes=budget_bytes,
                shards=shards,
            )
            echo(
                f"chaos: {nodes} NATS servers, {nodes} Coffer nodes, {shards} shard{'s' if shards > 1 else ''},"
                f" {threads} clients, {minutes} min, seed {seed},"
                f" ports {ports or 'any'}, disk budget {f'{disk_budget_mb} MiB' if disk_budget_mb else 'none'}"
            )
            state.phase = "faults"
            cluster.up()
            running = cluster
            memory = resources.enter_context(MemoryPeaks(lambda: _process_roots(running)))
            workload = Workload(cluster.urls, threads=threads, prefix="chaos", seed=seed, mixed=True, shards=shards)
            workload.setup()
            workload.start()
            deadline = time.monotonic() + minutes * 60
            for _ in progress_until(deadline, "faults under load"):
                time.sleep(rng.uniform(*fault_pause_s))
                if budget_bytes is not None:
                    state.stop_reason = _disk_over_budget(cluster, budget_bytes)
                    if state.stop_reason is not None:
                        echo(f"  {time.strftime('%H:%M:%S')} disk budget reached, faults stop: {state.stop_reason}")
                        break
                kind = rng.choice(kinds)
                try:
                    heal = _inject(cluster, kind, rng, workload, echo)
                except Exception as error:
                    echo(f"  {time.strftime('%H:%M:%S')} {kind}: could not inject ({error})")
                    continue
                state.faults[kind] += 1
                time.sleep(rng.uniform(*(partition_s if kind.startswith(("partition", "split")) else fault_pause_s)))
                try:
                    heal()
                except Exception as error:
                    state.problems.append(f"{kind}: healing failed: {error}")
                if kind in ("kill-node", "wipe-node"):
                    _wait_nodes(cluster, [number for number in range(1, nodes + 1) if not cluster.node_status(number)["ready"]], state, echo)
                echo(f"  {time.strftime('%H:%M:%S')} {kind}: {len(workload.acknowledged)} acknowledged so far")
        except ChaosInterrupted as interrupted:
            state.stop_reason = f"interrupted by {interrupted}"
            echo(f"  {time.strftime('%H:%M:%S')} {state.stop_reason}: faults stop, then the checker (signal again to skip it)")
        except Exception as error:
            state.stop_reason = f"the run failed: {error!r}"
            state.problems.append(state.stop_reason)
            echo(f"  {state.stop_reason}")
        try:
            if cluster is not None and workload is not None:
                state.phase = "checking"
                _heal_everything(cluster, state, echo)
                time.sleep(fault_pause_s[1])  # let writes flow again on the healed cluster
                workload.stop()
                ready = [node.url for node in cluster.nodes if node.number not in state.unready_nodes]
                if ready:
                    servers, streams = cluster.nats.urls, _streams(cluster)
                    verdict = check(
                        workload,
                        ready,
                        settle_s=settle_after_interrupt_s if state.interrupts else settle_s,
                        history=lambda shard: history_from_log(servers, streams[shard]),
                        progress=lambda line: echo(f"  {line}"),
                    )
                else:
                    state.problems.append("no node is ready: nothing could be checked")
        except ChaosInterrupted:
            state.problems.append("the checker was skipped (interrupted again)")
        except Exception as error:
            state.problems.append(f"the checker failed: {error!r}")
        finally:
            state.phase = "stopping"
            if workload is not None:
                workload.stop(drain_s=1.0)
                requests = len(workload.acknowledged) + len(workload.unknown)
            if cluster is not None:
                with contextlib.suppress(Exception):
                    echo(_disk_report(cluster))
                if memory is not None:
                    memory.sample()
                    echo(memory.report())
                echo(
                    f"restarts: the slowest node to get ready took {state.ready_s_max:.1f} s;"
                    f" {state.slow_restarts} beyond the readiness bound"
                )
                try:
                    cluster.down()
                except Exception as error:
                    state.problems.append(f"stopping the cluster: {error}")
        return _verdict_lines(state, verdict, requests, echo, workload, shards)


def _verdict_lines(
    state: _Run, verdict: Verdict | None, requests: int, echo: Callable[[str], None], workload: Workload | None, shards: int
) -> bool:
    """Print the verdict; the last line is always the ``chaos:`` line. True when all is well."""
    if state.stop_reason is not None:
        echo(f"the run ended early: {state.stop_reason}")
    echo(f"faults by kind: {dict(state.faults)}; client-side failures: {dict(workload.failures) if workload else {}}")
    if workload is not None and workload.shard_map is not None:
        echo(f"cross-shard: {workload.cross_shard_sent} sends of commands across shards")
    problems = list(state.problems)
    if verdict is not None:
        echo(f"checked: {verdict}")
        problems += verdict.problems
        violations = (
            verdict.limit_violations
            + verdict.changed_outcomes
            + (not verdict.conservation_ok)
            + (not verdict.chain_ok)
            + (not verdict.replicas_agree)
        )
        lost, duplicated = str(verdict.lost), str(verdict.duplicated)
    else:
        violations, lost, duplicated = 0, "unchecked", "unchecked"
    for problem in problems[:10]:
        echo(f"problem: {problem}")
    outcome = "problems" if verdict is None or problems else "ended-early" if state.stop_reason is not None else "ok"
    echo(
        f"chaos: requests={requests} faults={sum(state.faults.values())} lost={lost} duplicated={duplicated} "
        f"invariant_violations={violations} nodes_not_back={state.faults['node-not-ready']} verdict={outcome} shards={shards} "
        f"slow_restarts={state.slow_restarts}"
    )
    return outcome == "ok"
