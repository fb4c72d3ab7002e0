"""``coffer serve --shards N``: N shard processes and the router in front of them, on one machine.

Each shard is a full node (``coffer serve --shard-id K``) on ``<data-dir>/shard-K`` with its own
local WAL, state machine, seq, chain and snapshots, in its own process (so shards use separate
cores), listening on a loopback port of its own. This process writes (or checks) the shard map,
starts the shards, restarts any that dies, and serves the router on the public address. The
shards die with it (Linux ``PR_SET_PDEATHSIG``), so a ``kill -9`` of this process is a crash of the
whole node, and a restart recovers every shard from its own disk.

Over a JetStream cluster (``--log nats://…``) each shard process opens its shard's stream
``coffer-shard-<k>`` (replicated R times, with its own snapshots, checkpoints and compaction, as a
single-shard node does), and the shard map comes from the cluster's key-value bucket (see
:mod:`coffer.txn.shard_map_store`), so every node runs the same shards with the same map. By
default every node hosts every shard; with ``--host-shards`` a node runs the processes of only some
of them, and its router forwards a request for any other shard to a node that hosts it, found in
the cluster's directory of live routers (:mod:`coffer.txn.node_directory`). The streams do not
depend on which nodes host the shard processes: losing a node loses no shard while a majority of
each stream's servers live, and the shard stays reachable while another node hosts it.
"""

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from coffer.http import kept_client
from coffer.http.auth import ApiKeys
from coffer.log.jetstream import connect_options
from coffer.ports import free_port
from coffer.processes import stop_process
from coffer.server.serve import ServeError, is_loopback, read_cluster_secret
from coffer.txn.node_directory import NodeDirectory, RouterEntry, check_url, router_key
from coffer.txn.router import Router, create_router_app, router_config_variable
from coffer.txn.shard_map import ShardMap, ShardMapError, load_or_create, write
from coffer.txn.shards import ShardClients, forward_token

logger = logging.getLogger("coffer")

shard_start_s_max = 120.0  # recovery of a large shard; the router waits this long for each
shard_stop_s_max = 15.0  # a shard's graceful shutdown; then it gets SIGKILL
supervise_interval_s = 0.5
_pr_set_pdeathsig = 1


def shard_stream(shard: int) -> str:
    """The JetStream stream of shard ``shard`` (shard 0's is the single-shard cluster's stream)."""
    return f"coffer-shard-{shard}"


@dataclass(frozen=True)
class ClusterLog:
    """Where the shards' logs live when they are JetStream streams rather than local WALs."""

    log_url: str
    node_name: str
    replicas: int
    compaction_interval_s: float
    cluster_secret_file: Path | None = None
    nats_credentials: Path | None = None
    nats_ca_file: Path | None = None

    def connect_options(self) -> dict[str, Any]:
        """How to sign in to the servers (and verify them): keyword arguments of ``nats.connect``."""
        return connect_options(self.nats_credentials, self.nats_ca_file)

    @property
    def servers(self) -> list[str]:
        return [part.strip() for part in self.log_url.split(",") if part.strip()]

    def arguments(self, shard: int) -> list[str]:
        return [
            "--log", self.log_url, "--node-name", self.node_name, "--stream", shard_stream(shard),
            "--replicas", str(self.replicas), "--compaction-interval-s", str(self.compaction_interval_s),
            *(["--cluster-secret-file", str(self.cluster_secret_file)] if self.cluster_secret_file else []),
            *(["--nats-credentials", str(self.nats_credentials)] if self.nats_credentials else []),
            *(["--nats-ca-file", str(self.nats_ca_file)] if self.nats_ca_file else []),
        ]  # fmt: skip


def parse_host_shards(text: str, shard_count: int) -> list[int]:
    """``--host-shards 0,2``: the shards this node runs, each below the number of shards, once
    (``none``: a node that only routes)."""
    if text.strip() == "none":
        return []
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or not all(part.isdigit() for part in parts):
        raise ServeError(f"--host-shards takes shard numbers separated by commas (such as 0,1), not {text!r}")
    shards = [int(part) for part in parts]
    beyond = [shard for shard in shards if shard >= shard_count]
    if beyond:
        raise ServeError(f"--host-shards names shard {beyond[0]}, but the ledger has {shard_count} shards (0 to {shard_count - 1})")
    repeated = sorted({shard for shard in shards if shards.count(shard) > 1})
    if repeated:
        raise ServeError(f"--host-shards names shard {repeated[0]} more than once")
    return sorted(shards)


def build_router(config: dict[str, Any]) -> Router:
    """The router of one process, from the launcher's config (the same for one or several processes).

    ``urls``: shard k's loopback URL, or None when other nodes host it; ``directory``: where the
    cluster's live routers are registered (None on one machine).
    """
    keys_file = config.get("keys_file")
    keys = ApiKeys.load(Path(keys_file) if keys_file else None)
    urls: list[str | None] = config["urls"]
    directory = None
    found = config.get("directory")
    if found is not None:
        entry = RouterEntry(router_key(found["node"], os.getpid()), found["node"], found["url"], frozenset(found["shards"]))
        options = connect_options(
            Path(found["credentials"]) if found.get("credentials") else None, Path(found["ca_file"]) if found.get("ca_file") else None
        )
        directory = NodeDirectory(found["servers"], found["replicas"], entry, options)
    token = config.get("forward_token")
    shards = ShardClients(urls, directory.hosts_of if directory is not None else None, token)
    return Router(ShardMap.from_json(config["map"]), shards, keys, directory, token)


def _die_with_parent() -> None:
    # In the child, before exec: the kernel sends SIGKILL when the parent process dies.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_pr_set_pdeathsig, signal.SIGKILL)


class ShardProcess:
    def __init__(
        self, shard: int, data_dir: Path, log_level: str, snapshot_entries: int, cluster_log: ClusterLog | None = None, port: int | None = None
    ) -> None:
        self.shard = shard
        self.cluster_log = cluster_log
        self.data_dir = data_dir
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_level = log_level
        self.snapshot_entries = snapshot_entries
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        command = [sys.executable, "-m", "coffer", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        command += ["--shard-id", str(self.shard), "--log-level", self.log_level, "--snapshot-entries", str(self.snapshot_entries)]
        if self.cluster_log is not None:
            command += self.cluster_log.arguments(self.shard)
        environment = {key: value for key, value in os.environ.items() if key != "COFFER_API_KEYS"}  # loopback: no keys
        self.process = subprocess.Popen(command, env=environment, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout_s: float = shard_start_s_max) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServeError(f"shard {self.shard} exited with status {self.process.returncode} while starting")
            try:
                if kept_client.client().get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise ServeError(f"shard {self.shard} was not ready within {timeout_s} s")

    def stop(self) -> None:
        stop_process(self.process, shard_stop_s_max)


def _supervise(shards: list[ShardProcess], stopping: threading.Event) -> None:
    """Restart a shard process that died (a crash, a kill -9): it recovers from its own disk."""
    while not stopping.wait(supervise_interval_s):
        for shard in shards:
            if shard.process is not None and shard.process.poll() is not None and not stopping.is_set():
                logger.error("shard %d exited with status %s: restarting it", shard.shard, shard.process.returncode)
                shard.restarts += 1
                shard.start()


def serve_sharded(
    host: str,
    port: int,
    data_dir: Path,
    keys_file: Path | None,
    log_level: str,
    snapshot_entries: int,
    shard_count: int,
    router_processes: int = 1,
    cluster_log: ClusterLog | None = None,
    shard_ports: list[int] | None = None,
    host_shards: str | None = None,
    advertise_url: str | None = None,
) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    keys = ApiKeys.load(keys_file)
    if not is_loopback(host) and not keys:
        raise ServeError(f"refusing to bind {host} without API keys: set --keys-file or COFFER_API_KEYS")
    hosted = parse_host_shards(host_shards, shard_count) if host_shards is not None else list(range(shard_count))
    placed = len(hosted) < shard_count
    if placed and cluster_log is None:
        raise ServeError("--host-shards needs a cluster (--log nats://…): the other shards are reached on the nodes that host them")
    secret = read_cluster_secret(cluster_log.cluster_secret_file) if cluster_log is not None else None
    if placed and keys and secret is None:
        raise ServeError("--host-shards with API keys needs --cluster-secret-file: nodes prove to each other that they are the cluster's")
    bound = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    url = advertise_url or f"http://{bound}:{port}"
    try:
        check_url(url)
    except ValueError as error:
        raise ServeError(f"--advertise-url: {error}: the address other nodes forward to") from None
    if placed and host in ("0.0.0.0", "::") and advertise_url is None:
        raise ServeError(f"--host-shards on {host} needs --advertise-url: the address other nodes reach this one at")
    shard_map = _shard_map(data_dir, shard_count, cluster_log)
    if shard_ports is not None and len(shard_ports) != shard_count:
        raise ServeError(f"--shard-ports names {len(shard_ports)} ports for {shard_count} shards")
    shards = [
        ShardProcess(shard, data_dir / f"shard-{shard}", log_level, snapshot_entries, cluster_log, shard_ports[shard] if shard_ports else None)
        for shard in hosted
    ]
    stopping = threading.Event()
    try:
        for shard in shards:
            shard.start()
        for shard in shards:
            shard.wait_ready()
        supervisor = threading.Thread(target=_supervise, args=(shards, stopping), name="coffer-shard-supervisor", daemon=True)
        supervisor.start()
        logger.info("serving %d of %d shards: %s", len(shards), shard_count, ", ".join(shard.url for shard in shards))
        urls: list[str | None] = [None] * shard_count
        for shard in shards:
            urls[shard.shard] = shard.url
        config: dict[str, Any] = {
            "urls": urls,
            "map": shard_map.to_json(),
            "keys_file": str(keys_file) if keys_file else None,
            "forward_token": forward_token(secret) if secret is not None else None,
            "directory": None,
        }
        if cluster_log is not None:
            config["directory"] = {
                "servers": cluster_log.servers,
                "replicas": cluster_log.replicas,
                "node": cluster_log.node_name,
                "url": url,
                "shards": hosted,
                "credentials": str(cluster_log.nats_credentials) if cluster_log.nats_credentials else None,
                "ca_file": str(cluster_log.nats_ca_file) if cluster_log.nats_ca_file else None,
            }
        settings: dict[str, object] = {
            "host": host,
            "port": port,
            "loop": "uvloop",
            "http": "httptools",
            "access_log": False,
            "log_level": log_level.lower(),
            "timeout_graceful_shutdown": 10,
            "backlog": 4096,
        }
        if router_processes > 1:
            # Several router processes on one listening socket: HTTP handling on every core. Each
            # runs its own recovery task; decisions are first-written-wins, so they never conflict.
            os.environ[router_config_variable] = json.dumps(config)
            uvicorn.run("coffer.txn.launcher:app_from_environment", factory=True, workers=router_processes, **settings)  # type: ignore[arg-type]
        else:
            router = build_router(config)
            router.data_dir = data_dir  # the router's own files (webhook subscriptions and cursors)
            uvicorn.Server(uvicorn.Config(create_router_app(router), **settings)).run()  # type: ignore[arg-type]
    finally:
        stopping.set()
        for shard in shards:
            shard.stop()


def _shard_map(data_dir: Path, shard_count: int, cluster_log: ClusterLog | None) -> ShardMap:
    """The data directory's map on one machine; the cluster's bucket's map over JetStream (the
    data directory keeps a copy, so that it is known as sharded)."""
    try:
        if cluster_log is None:
            return load_or_create(data_dir, shard_count)
        from coffer.txn.shard_map_store import ShardMapUnavailable, load_or_create_shared

        try:
            shard_map = load_or_create_shared(cluster_log.servers, shard_count, cluster_log.replicas, connect_options=cluster_log.connect_options())
        except ShardMapUnavailable as error:
            raise ServeError(str(error)) from None
        write(data_dir, shard_map)
        return shard_map
    except ShardMapError as error:
        raise ServeError(str(error)) from None


def app_from_environment() -> Any:
    """The router app of one worker process, configured by the launcher through the environment."""
    return create_router_app(build_router(json.loads(os.environ[router_config_variable])))


def default_node_name(port: int) -> str:
    return f"{socket.gethostname()}:{port}"
