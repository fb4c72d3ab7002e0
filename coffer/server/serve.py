"""``coffer serve``: one node on the local write-ahead log, with the HTTP API on uvicorn."""

import gc
import ipaddress
import logging
import socket
import sys
from pathlib import Path

import uvicorn

from coffer.log.base import CommandLog
from coffer.log.wal import LocalWal
from coffer.replica import Replica
from coffer.server.app import create_app
from coffer.server.auth import ApiKeys
from coffer.server.feed import close_streams

logger = logging.getLogger("coffer")


class ServeError(SystemExit):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_log(log_url: str | None, data_dir: Path, stream: str, replicas: int) -> CommandLog:
    """The local WAL in the data directory, or a JetStream stream for ``nats://`` URLs."""
    if log_url is None:
        return LocalWal(data_dir / "log")
    servers = [part.strip() for part in log_url.split(",") if part.strip()]
    if not servers or not all(server.startswith(("nats://", "tls://")) for server in servers):
        raise ServeError(f"--log takes nats:// URLs, comma-separated; got {log_url!r}")
    from coffer.log.jetstream import JetStreamLog

    # Opened by recovery, which waits (and says so in /readyz) while NATS cannot be reached.
    return JetStreamLog(servers, stream=stream, replicas=replicas, connect_lazily=True)


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
    disk_budget_mb: int | None = None,
) -> None:
    if not __debug__:
        # Assertions guard states that must be impossible; a ledger does not run without them.
        raise ServeError("coffer refuses to run with assertions stripped (python -O)")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    keys = ApiKeys.load(keys_file)
    if not is_loopback(host) and not keys:
        raise ServeError(f"refusing to bind {host} without API keys: set --keys-file or COFFER_API_KEYS")
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open_log(log_url, data_dir, stream, replicas)
    shared = log_url is not None
    budget_bytes = disk_budget_mb * 1024 * 1024 if disk_budget_mb is not None else None
    replica = Replica(data_dir, log, snapshot_entries=snapshot_entries, truncate_log=not shared, disk_budget_bytes=budget_bytes)
    if shared and node_name is None:
        node_name = f"{socket.gethostname()}:{port}"
    app = create_app(replica, keys, node_name if shared else None, compaction_interval_s)
    # Millions of long-lived ledger objects: collect young garbage less often, and never rescan
    # what survived start-up.
    gc.set_threshold(50_000, 20, 100)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=10,
        backlog=4096,
    )
    server = _Server(config)
    app.api.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run()
    if app.api.fatal is not None:
        raise ServeError(f"coffer: recovery failed: {app.api.fatal}")


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: object) -> None:
        # Open event feeds never end by themselves: end them first, so a stop is not held up.
        close_streams()
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
