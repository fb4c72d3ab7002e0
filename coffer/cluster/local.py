"""A whole Coffer cluster on one machine: N NATS JetStream servers and N Coffer nodes on loopback.

Job: ``coffer cluster up`` / ``down``, and the fault tests and benchmarks that need real
processes to kill. Each Coffer node is ``coffer serve --log nats://…`` with its own data
directory and port; the stream is replicated over all NATS servers (R = N). Every process is
recorded with its PID in ``<dir>/coffer-nodes.json`` and stopped by that PID only.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from coffer.cluster.nats_servers import NatsCluster, free_port, stop_recorded_servers

nodes_file_name = "coffer-nodes.json"
node_ready_s_max = 60.0
node_stop_s_max = 15.0


class ClusterError(RuntimeError):
    pass


@dataclass
class NodeSpec:
    number: int
    port: int
    data_dir: Path

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
    ) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stream = stream
        self.nats = NatsCluster(self.directory / "nats", size, die_with_parent=die_with_parent)
        self.nodes = [NodeSpec(number, free_port(), self.directory / f"c{number}") for number in range(1, size + 1)]
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._environment = {**os.environ, **(environment or {})}
        self._die_with_parent = die_with_parent
        self._node_arguments = node_arguments or []

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
            ",".join(self.nats.urls),
            "--node-name",
            node.name,
            "--stream",
            self.stream,
            "--replicas",
            str(self.nats.size),
            "--data-dir",
            str(node.data_dir),
            "--port",
            str(node.port),
            "--log-level",
            "warning",
            *self._node_arguments,
        ]
        log = open(self.directory / f"{node.name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self._processes[number] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self._environment, start_new_session=not self._die_with_parent
        )
        log.close()
        self._write_state()
        if wait:
            self.wait_node(number)

    def wait_node(self, number: int, timeout_s: float = node_ready_s_max) -> None:
        node = self.node(number)
        process = self._processes[number]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ClusterError(f"{node.name} exited with {process.returncode}: see {self.directory / (node.name + '.log')}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{node.url}/readyz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise ClusterError(f"{node.name} not ready after {timeout_s} s")

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
        os.kill(process.pid, signal_number)
        try:
            process.wait(node_stop_s_max)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
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
        for node in self.nodes:
            self.stop_node(node.number)
        self.nats.stop_all()

    def _write_state(self) -> None:
        state = {
            "stream": self.stream,
            "nodes": [
                {"name": node.name, "url": node.url, "pid": self.node_pid(node.number), "data_dir": str(node.data_dir)}
                for node in self.nodes
            ],
            "nats": self.nats.urls,
        }
        temporary = self.directory / (nodes_file_name + ".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(temporary, self.directory / nodes_file_name)


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
