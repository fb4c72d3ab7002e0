"""``coffer serve``: one node on the local write-ahead log, with the HTTP API on uvicorn.

A node that cannot start says why in one line and exits with a code of :mod:`coffer.exit_codes`:
``invalid`` for its configuration (a keys file that cannot be read or parsed, a key too short, a
data directory that cannot be made), ``in_use`` when another process holds its data directory or
its port, ``recovery_failed`` when its data directory cannot be recovered. The socket is bound
here, before uvicorn starts, so that a taken port is one of these answers rather than uvicorn's own
exit code. Recovery runs while the server answers: ``/readyz`` says what it waits for and every
other route answers 503, so a client tries another node instead of waiting.
"""

import dataclasses
import errno
import gc
import ipaddress
import logging
import socket
import ssl
import sys
from pathlib import Path

import uvicorn

from coffer import exit_codes
from coffer.cluster.checkpoints import cluster_secret_bytes_min
from coffer.http import views
from coffer.http.auth import ApiKeys, KeyConfigError
from coffer.log.base import CommandLog
from coffer.log.wal import LocalWal, LogInUseError
from coffer.replica import Replica
from coffer.server import admission
from coffer.server.app import create_app
from coffer.server.connections import ConnectionLimits, connections_cap, server_config
from coffer.server.feed import close_streams
from coffer.tls_options import uvicorn_tls

logger = logging.getLogger("coffer")


class ServeError(Exception):
    """The node cannot start: ``message`` for the operator, ``exit_code`` from :mod:`coffer.exit_codes`."""

    def __init__(self, message: str, exit_code: int = exit_codes.invalid) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def load_keys(keys_file: Path | None) -> ApiKeys:
    """The API keys of the keys file and the environment; ServeError for anything unusable."""
    try:
        return ApiKeys.load(keys_file)
    except KeyConfigError as error:
        raise ServeError(str(error)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ServeError(f"cannot read the keys file {keys_file}: {error}") from None


def read_cluster_secret(path: Path | None) -> bytes | None:
    """The cluster secret of ``--cluster-secret-file`` (its text, stripped); ServeError if unusable."""
    if path is None:
        return None
    try:
        secret = path.read_bytes().strip()
    except OSError as error:
        raise ServeError(f"cannot read the cluster secret file {path}: {error.strerror}") from None
    if len(secret) < cluster_secret_bytes_min:
        raise ServeError(f"the cluster secret in {path} is shorter than {cluster_secret_bytes_min} bytes")
    return secret


def check_tls(host: str, tls_cert: Path | None, tls_key: Path | None, allow_plaintext: bool) -> None:
    """ServeError unless the TLS files make a usable server certificate, or plain HTTP is allowed
    (loopback always; any other address only with ``--insecure-allow-plaintext``)."""
    if (tls_cert is None) != (tls_key is None):
        raise ServeError("--tls-cert and --tls-key go together")
    if tls_cert is None or tls_key is None:
        if not is_loopback(host) and not allow_plaintext:
            raise ServeError(
                f"refusing to bind {host} without TLS: give --tls-cert and --tls-key "
                "(or --insecure-allow-plaintext, when a proxy in front of the node terminates TLS)"
            )
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls_cert, tls_key)
    except (OSError, ssl.SSLError) as error:
        raise ServeError(f"cannot use the TLS certificate {tls_cert} with the key {tls_key}: {error}") from None


def bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound, not yet listening (uvicorn does that when it starts serving);
    ServeError (``in_use``) when another process has the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        code = exit_codes.in_use if error.errno == errno.EADDRINUSE else exit_codes.invalid
        raise ServeError(f"cannot listen on {host}:{port}: {error.strerror}", code) from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_log(
    log_url: str | None,
    data_dir: Path,
    stream: str,
    replicas: int,
    nats_credentials: Path | None = None,
    nats_ca_file: Path | None = None,
) -> CommandLog:
    """The local WAL in the data directory, or a JetStream stream for ``nats://`` URLs."""
    if log_url is None:
        if nats_credentials is not None or nats_ca_file is not None:
            raise ServeError("--nats-credentials and --nats-ca-file go with --log (a JetStream cluster)")
        # The replica decides whether a damaged tail may be cut: it knows what was acknowledged.
        return LocalWal(data_dir / "log", cut_damaged_tail=False)
    servers = [part.strip() for part in log_url.split(",") if part.strip()]
    if not servers or not all(server.startswith(("nats://", "tls://")) for server in servers):
        raise ServeError(f"--log takes nats:// URLs, comma-separated; got {log_url!r}")
    from coffer.log.jetstream import JetStreamLog, read_credentials

    credentials = None
    if nats_credentials is not None:
        try:
            credentials = read_credentials(nats_credentials)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ServeError(f"cannot read the NATS credentials {nats_credentials}: {error}") from None
    tls = None
    if nats_ca_file is not None:
        try:
            tls = ssl.create_default_context(cafile=str(nats_ca_file))
        except (OSError, ssl.SSLError) as error:
            raise ServeError(f"cannot use the NATS CA file {nats_ca_file}: {error}") from None
    # Opened by recovery, which waits (and says so in /readyz) while NATS cannot be reached.
    return JetStreamLog(servers, stream=stream, replicas=replicas, connect_lazily=True, credentials=credentials, tls=tls)


def serve(
    host: str,
    port: int,
    data_dir: Path,
    keys_file: Path | None,
    log_level: str,
    snapshot_entries: int,
    log_url: str | None = None,
    node_name: str | None = None,
    stream: str = "coffer-shard-0",
    replicas: int = 3,
    compaction_interval_s: float = 30.0,
    limits: ConnectionLimits | None = None,
    write_requests_waiting_max: int = admission.write_requests_waiting_max,
    shard_id: int | None = None,
    disk_budget_mb: int | None = None,
    cluster_secret_file: Path | None = None,
    nats_credentials: Path | None = None,
    nats_ca_file: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    allow_plaintext: bool = False,
) -> None:
    if not __debug__:
        # Assertions guard states that must be impossible; a ledger does not run without them.
        raise ServeError("coffer refuses to run with assertions stripped (python -O)")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    keys = load_keys(keys_file)
    cluster_secret = read_cluster_secret(cluster_secret_file)
    if not is_loopback(host) and not keys:
        raise ServeError(f"refusing to bind {host} without API keys: set --keys-file or COFFER_API_KEYS")
    check_tls(host, tls_cert, tls_key, allow_plaintext)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ServeError(f"cannot make the data directory {data_dir}: {error.strerror}") from None
    backlog = 4096
    listener = bind(host, port)
    try:
        log = open_log(log_url, data_dir, stream, replicas, nats_credentials, nats_ca_file)
    except LogInUseError:
        listener.close()
        raise ServeError(f"the data directory {data_dir} is in use by another coffer serve", exit_codes.in_use) from None
    except ServeError:
        listener.close()
        raise
    if shard_id is not None:
        views.shard_label = shard_id
    shared = log_url is not None
    budget_bytes = disk_budget_mb * 1024 * 1024 if disk_budget_mb is not None else None
    replica = Replica(data_dir, log, snapshot_entries=snapshot_entries, truncate_log=not shared, disk_budget_bytes=budget_bytes)
    if shared and node_name is None:
        node_name = f"{socket.gethostname()}:{port}"
    app = create_app(replica, keys, node_name if shared else None, compaction_interval_s, cluster_secret)
    # Millions of long-lived ledger objects: collect young garbage less often, and never rescan
    # what survived start-up.
    gc.set_threshold(50_000, 20, 100)
    app.api.admission.requests_max = write_requests_waiting_max
    app.api.reserved_ids_allowed = shard_id is not None  # its only client is the router, which refuses them
    limits = limits or ConnectionLimits()
    limits = dataclasses.replace(limits, connections_max=connections_cap(limits.connections_max))
    tls = uvicorn_tls(tls_cert, tls_key)
    config = server_config(
        app, host, port, log_level, limits, app.api.admission, timeout_graceful_shutdown=10, backlog=backlog, **tls
    )
    server = _Server(config)
    app.api.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run(sockets=[listener])
    if app.api.fatal is not None:
        raise ServeError(f"recovery failed: {app.api.fatal}", exit_codes.recovery_failed)


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: object) -> None:
        # Open event feeds never end by themselves: end them first, so a stop is not held up.
        close_streams()
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
