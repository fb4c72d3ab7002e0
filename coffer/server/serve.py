"""``coffer serve``: one node on the local write-ahead log, with the HTTP API on uvicorn."""

import gc
import ipaddress
import logging
import sys
from pathlib import Path

import uvicorn

from coffer.log.wal import LocalWal
from coffer.replica import Replica
from coffer.server.app import create_app
from coffer.server.auth import ApiKeys

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


def serve(host: str, port: int, data_dir: Path, keys_file: Path | None, log_level: str, snapshot_entries: int) -> None:
    if not __debug__:
        # Assertions guard states that must be impossible; a ledger does not run without them.
        raise ServeError("coffer refuses to run with assertions stripped (python -O)")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    keys = ApiKeys.load(keys_file)
    if not is_loopback(host) and not keys:
        raise ServeError(f"refusing to bind {host} without API keys: set --keys-file or COFFER_API_KEYS")
    data_dir.mkdir(parents=True, exist_ok=True)
    log = LocalWal(data_dir / "log")
    replica = Replica(data_dir, log, snapshot_entries=snapshot_entries)
    app = create_app(replica, keys)
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
    uvicorn.Server(config).run()
