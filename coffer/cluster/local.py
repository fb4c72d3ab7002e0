"""A whole Coffer cluster on one machine: N NATS JetStream servers and N Coffer nodes on loopback.

Job: ``coffer cluster up`` / ``down``, and the fault tests and benchmarks that need real
processes to kill. Each Coffer node is ``coffer serve --log nats://…`` with its own data
directory and port; the stream is replicated over all NATS servers (R = N). With ``shards`` > 1
every node is ``coffer serve --shards S --log nats://…`` (a stream per shard, ``coffer-shard-<k>``,
R = N). With ``placement="all"`` (the default) every node hosts all S shards behind its router and
reaches each on loopback; with ``placement="spread"`` each shard runs on two nodes
(:func:`spread_placement`, ``--host-shards``) and a node forwards the others' requests to them.
Every process is recorded with its PID in ``<dir>/coffer-nodes.json`` and stopped by that PID only.

Options. ``ports`` takes every port from one range, so clusters of several people on one machine
never collide. ``network_faults`` puts a :class:`~coffer.cluster.proxy.FaultProxy` on every path
between a node and a NATS server and between two NATS servers (it lives in this process), so a
nemesis can partition, slow down or reset them. ``disk_budget_bytes`` is split between the
processes: half for the NATS servers (JetStream's ``max_file_store``: beyond it the stream
refuses writes), half for the nodes (``--disk-budget-mb``: beyond it a node refuses writes and
says "disk full"), so a long run cannot fill the machine's disk.

Trust. The cluster's secret (``<dir>/cluster-secret``, made once, readable by its owner only)
is given to every node with ``--cluster-secret-file``: their checkpoints are signed with it, and
nothing else is heard (:mod:`coffer.cluster.checkpoints`). The NATS servers require credentials:
node ``cN`` signs in as user ``cN`` (``--nats-credentials``), allowed only what a node of the
cluster's stream needs; tools here use :attr:`NatsCluster.urls`, which sign in as ``admin``
(:mod:`coffer.cluster.nats_servers`).
"""

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from coffer.cluster.nats_servers import NatsCluster, die_with_parent_setup, stop_recorded_servers
from coffer.cluster.proxy import FaultProxy
from coffer.disk_space import directory_bytes
from coffer.http import kept_client
from coffer.ports import PortRange, free_port
from coffer.processes import stop_process
from coffer.txn.launcher import shard_stream
from coffer.txn.node_directory import node_bucket
from coffer.txn.shard_map_store import shard_map_bucket

nodes_file_name = "coffer-nodes.json"
cluster_secret_file_name = "cluster-secret"
# A node restarted with its data, or wiped, with up to node_ready_entries entries to replay is
# ready within node_ready_s_max; beyond, replay takes node_ready_s_per_entry more per entry
# (about 3,300 entries/s on a loaded 2-core machine, a third of what an idle one does). The README
# states the bound; the chaos run counts a node that misses it as a fault.
node_ready_s_max = 60.0
node_ready_entries = 200_000
node_ready_s_per_entry = node_ready_s_max / node_ready_entries


def node_ready_bound_s(entries_to_replay: int) -> float:
    """How long a node with ``entries_to_replay`` entries to replay may take to get ready."""
    return max(node_ready_s_max, entries_to_replay * node_ready_s_per_entry)
node_stop_s_max = 15.0
readiness_request_s = 1.0


class ClusterError(RuntimeError):
    pass


@dataclass
class NodeSpec:
    number: int
    port: int
    data_dir: Path
    shard_ports: list[int] = field(default_factory=list)  # a sharded node's shard processes, on loopback

    @property
    def name(self) -> str:
        return f"c{self.number}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LocalCluster:
    def __init__(
        self,
        directory: Path,
        size: int = 3,
        *,
        stream: str = "coffer-shard-0",
        die_with_parent: bool = False,
        environment: dict[str, str] | None = None,
        node_arguments: list[str] | None = None,
        ports: PortRange | None = None,
        network_faults: bool = False,
        disk_budget_bytes: int | None = None,
        shards: int = 1,
        nats_tls: bool = False,
        placement: str = "all",
    ) -> None:
        assert placement in placements, placement
        self.shards = shards
        self.placement = placement
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stream = stream
        self.disk_budget_bytes = disk_budget_bytes
        self.secret_file = make_cluster_secret(self.directory / cluster_secret_file_name)
        share = disk_budget_bytes // (2 * size) if disk_budget_bytes is not None else None
        # A sharded node may use the streams of the shards it hosts, the shard map's bucket and the
        # directory of live routers.
        node_users: dict[str, str | Sequence[str]] = {
            f"c{number}": [shard_stream(shard) for shard in self.hosted_shards(number, size)] if shards > 1 else [stream]
            for number in range(1, size + 1)
        }
        self.nats = NatsCluster(
            self.directory / "nats",
            size,
            die_with_parent=die_with_parent,
            ports=ports,
            store_bytes_max=share,
            node_users=node_users,
            tls=nats_tls,
            key_value_buckets=(shard_map_bucket, node_bucket),
        )
        take = ports.take if ports is not None else free_port
        # A sharded node's shards get their ports here too: picked by the node itself, one could
        # take the port of a node not yet started.
        self.nodes = [
            NodeSpec(number, take(), self.directory / f"c{number}", [take() for _ in range(shards)] if shards > 1 else [])
            for number in range(1, size + 1)
        ]
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._environment = {**os.environ, **(environment or {})}
        self._die_with_parent = die_with_parent
        self._node_arguments = node_arguments or []
        if share is not None:
            self._node_arguments += ["--disk-budget-mb", str(max(share // (1024 * 1024), 1))]
        self.proxy: FaultProxy | None = None
        if network_faults:
            self._start_proxy(take)

    # -- the network between the processes ---------------------------------------------------

    def _start_proxy(self, take: Callable[[], int]) -> None:
        proxy = self.proxy = FaultProxy()
        proxy.add_sink(take())
        size = self.nats.size
        route_ports: dict[tuple[int, int], int] = {}
        for number in range(1, size + 1):
            for peer in range(1, size + 1):
                if peer != number:
                    link = proxy.add_link(_route_link(number, peer), take(), self.nats.cluster_port(peer))
                    route_ports[number, peer] = link.listen_port
            for node in self.nodes:
                proxy.add_link(_client_link(node.number, number), take(), self.nats.client_port(number))
        assert proxy.sink_port is not None
        self.nats.route_through(lambda number, peer: route_ports[number, peer], proxy.sink_port)

    def node_log_urls(self, number: int) -> list[str]:
        """The NATS URLs node ``number`` is given: through its proxies when there are any."""
        if self.proxy is None:
            return self.nats.plain_urls
        return [
            f"nats://127.0.0.1:{self.proxy.link(_client_link(number, server)).listen_port}"
            for server in range(1, self.nats.size + 1)
        ]

    def server_links(self, number: int) -> list[str]:
        """Every proxied path of NATS server ``number``: its routes both ways and its nodes' links."""
        size = self.nats.size
        routes = [_route_link(number, peer) for peer in range(1, size + 1) if peer != number]
        routes += [_route_link(peer, number) for peer in range(1, size + 1) if peer != number]
        return routes + [_client_link(node.number, number) for node in self.nodes]

    def node_links(self, number: int) -> list[str]:
        """Every proxied path of Coffer node ``number`` (to each NATS server)."""
        return [_client_link(number, server) for server in range(1, self.nats.size + 1)]

    def route_links(self, first: int, second: int) -> list[str]:
        """The route between two NATS servers, both directions."""
        return [_route_link(first, second), _route_link(second, first)]

    def _proxy(self) -> FaultProxy:
        if self.proxy is None:
            raise ClusterError("this cluster runs without network faults (network_faults=False)")
        return self.proxy

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, number: int) -> NodeSpec:
        return self.nodes[number - 1]

    def up(self) -> None:
        self.nats.start_all()
        for node in self.nodes:
            self.start_node(node.number, wait=False)
        for node in self.nodes:
            self.wait_node(node.number)

    def start_node(self, number: int, wait: bool = True) -> None:
        node = self.node(number)
        if number in self._processes and self._processes[number].poll() is None:
            raise ClusterError(f"{node.name} is already running")
        node.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "coffer",
            "serve",
            "--log",
            ",".join(self.node_log_urls(number)),
            "--node-name",
            node.name,
            *(
                ["--shards", str(self.shards), "--shard-ports", ",".join(map(str, node.shard_ports))]
                if self.shards > 1
                else ["--stream", self.stream]
            ),
            *(
                ["--host-shards", ",".join(map(str, self.hosted_shards(number, len(self.nodes))))]
                if self.shards > 1 and self.placement != "all"
                else []
            ),
            "--replicas",
            str(self.nats.size),
            "--data-dir",
            str(node.data_dir),
            "--port",
            str(node.port),
            "--log-level",
            "warning",
            "--cluster-secret-file",
            str(self.secret_file),
            *self._credentials_arguments(node.name),
            *self._node_arguments,
        ]
        log = open(self.directory / f"{node.name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self._processes[number] = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._environment,
            # Its own session: a Ctrl-C or a SIGTERM to the starter's process group is for the
            # starter, which stops the nodes in order (and, with die_with_parent, they are killed
            # with the thread that started them, so a starter that dies leaves no node behind).
            start_new_session=True,
            preexec_fn=die_with_parent_setup() if self._die_with_parent else None,
        )
        log.close()
        self._write_state()
        if wait:
            self.wait_node(number)

    def _credentials_arguments(self, node_name: str) -> list[str]:
        credentials = self.nats.credentials_file(node_name)
        arguments = [] if credentials is None else ["--nats-credentials", str(credentials)]
        if self.nats.certificates is not None:
            arguments += ["--nats-ca-file", str(self.nats.certificates.ca)]
        return arguments

    def wait_node(
        self, number: int, timeout_s: float = node_ready_s_max, accept: Callable[[str], bool] | None = None
    ) -> float:
        """Wait until the node answers ``/readyz`` with 200 (or says it waits for something
        ``accept`` takes as good enough); return how long it took.

        Raises :class:`ClusterError` when it exits, or when it is not ready in ``timeout_s``
        (naming what it still waits for, from ``/readyz``).
        """
        node = self.node(number)
        process = self._processes.get(number)
        if process is None:
            raise ClusterError(f"{node.name} is not running")
        started = time.monotonic()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ClusterError(f"{node.name} exited with {process.returncode}: see {self.directory / (node.name + '.log')}")
            status = self.node_status(number)
            if status.get("ready") or (accept is not None and accept(str(status.get("waiting_for") or ""))):
                return time.monotonic() - started
            time.sleep(0.05)
        status = self.node_status(number)
        raise ClusterError(f"{node.name} not ready after {timeout_s} s: {status.get('waiting_for', status)}")

    def node_status(self, number: int) -> dict[str, object]:
        """What ``/readyz`` says: ``{"ready": true, ...}`` or ``{"ready": false, "waiting_for": ...}``."""
        node = self.node(number)
        try:
            response = kept_client.client().get(f"{node.url}/readyz", timeout=readiness_request_s)
        except httpx.TransportError as error:
            return {"ready": False, "waiting_for": f"no answer ({type(error).__name__})"}
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        ready = response.status_code == 200
        waiting_for = body.get("waiting_for") or body.get("error", {}).get("message") if not ready else None
        return {"ready": ready, "waiting_for": waiting_for or ("" if ready else f"HTTP {response.status_code}")}

    def node_running(self, number: int) -> bool:
        return self.node_pid(number) is not None

    def kill_node(self, number: int) -> None:
        self._end_node(number, signal.SIGKILL)

    def stop_node(self, number: int) -> None:
        self._end_node(number, signal.SIGTERM)

    def node_pid(self, number: int) -> int | None:
        process = self._processes.get(number)
        return process.pid if process is not None and process.poll() is None else None

    def _end_node(self, number: int, signal_number: signal.Signals) -> None:
        process = self._processes.pop(number, None)
        if process is None or process.poll() is not None:
            return
        stop_process(process, node_stop_s_max, signal_number)
        self._write_state()

    def restart_server(self, number: int) -> None:
        """A planned restart of one NATS server: if it leads the stream, it hands over first.

        A step-down moves the leadership at once, so writes pause for a moment instead of the
        4-9 s election that a crash of the leader costs.
        """
        from coffer.log.base import LogError
        from coffer.log.jetstream import JetStreamLog

        try:
            with JetStreamLog(self.nats.urls, stream=self.stream, replicas=self.nats.size) as log:
                leader = log.leader()
                if leader is not None and self.nats.number_of(leader) == number:
                    log.step_down()
        except LogError:
            pass  # no leader to hand over from (an election is on): restart all the same
        self.nats.stop(number)
        self.nats.start(number)

    def down(self) -> None:
        """Stop every node and server this object started; close the proxy. Each step runs
        even when an earlier one failed."""
        errors: list[BaseException] = []
        for node in self.nodes:
            try:
                self.stop_node(node.number)
            except Exception as error:
                errors.append(error)
        try:
            self.nats.stop_all()
        except Exception as error:
            errors.append(error)
        if self.proxy is not None:
            self.proxy.close()
        if errors:
            raise ClusterError(f"stopping the cluster: {errors}")

    def hosted_shards(self, number: int, size: int) -> list[int]:
        """The shards node ``c<number>`` runs, of a cluster of ``size`` nodes."""
        if self.placement == "all":
            return list(range(self.shards))
        return spread_placement(self.shards, size)[number - 1]

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk now, per NATS server (``n1``…: its JetStream store) and per node (``c1``…)."""
        usage = {f"n{number}": directory_bytes(self.nats.directory_of(number)) for number in range(1, self.nats.size + 1)}
        usage.update({node.name: directory_bytes(node.data_dir) for node in self.nodes})
        return usage

    def _write_state(self) -> None:
        state = {
            "stream": self.stream,
            "shards": self.shards,
            "placement": self.placement,
            "nodes": [
                {
                    "name": node.name,
                    "url": node.url,
                    "pid": self.node_pid(node.number),
                    "data_dir": str(node.data_dir),
                    "shards": self.hosted_shards(node.number, len(self.nodes)),
                }
                for node in self.nodes
            ],
            "nats": self.nats.plain_urls,
        }
        temporary = self.directory / (nodes_file_name + ".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(temporary, self.directory / nodes_file_name)


placements = ("all", "spread")
spread_hosts_per_shard = 2  # a shard stays reachable when one of its hosts dies


def spread_placement(shards: int, nodes: int) -> list[list[int]]:
    """Each shard on ``spread_hosts_per_shard`` consecutive nodes (fewer when there are fewer
    nodes), round the ring: shard k on nodes k, k+1, … modulo the number of nodes."""
    hosted: list[list[int]] = [[] for _ in range(nodes)]
    for shard in range(shards):
        for step in range(min(spread_hosts_per_shard, nodes)):
            hosted[(shard + step) % nodes].append(shard)
    return [sorted(shards_of_node) for shards_of_node in hosted]


def make_cluster_secret(path: Path) -> Path:
    """The cluster secret file at ``path``: made (256 random bits, hex, mode 0600) if missing."""
    if not path.exists():
        aside = path.with_name(f".{path.name}.tmp")
        descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
        os.replace(aside, path)
    return path


def _route_link(number: int, peer: int) -> str:
    return f"n{number}>n{peer}"


def _client_link(node: int, server: int) -> str:
    return f"c{node}>n{server}"


def stop_recorded_cluster(directory: Path) -> list[int]:
    """``coffer cluster down``: stop the nodes and servers recorded in ``directory``, by PID."""
    directory = Path(directory).resolve()
    stopped: list[int] = []
    state_path = directory / nodes_file_name
    if state_path.exists():
        state = json.loads(state_path.read_text())
        for node in state.get("nodes", []):
            pid = node.get("pid")
            if pid is None or not _is_coffer_node(pid, node["data_dir"]):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
        deadline = time.monotonic() + node_stop_s_max
        for pid in stopped:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for node in state.get("nodes", []):
            node["pid"] = None
        state_path.write_text(json.dumps(state, indent=2) + "\n")
    stopped += stop_recorded_servers(directory / "nats")
    return stopped


def _is_coffer_node(pid: int, data_dir: str) -> bool:
    """The PID is still our ``coffer serve`` on that data directory (not a reused PID)."""
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in command_line and data_dir.encode() in command_line


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return status.read_text().split()[2] != "Z"
    return False
