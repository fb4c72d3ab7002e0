"""``coffer bench servers``: which HTTP server serves Coffer fastest, measured, side by side.

Job: the node's HTTP server is chosen by measurement on our own workload, not by reputation.
Each candidate serves, in turn, the floor app (:mod:`coffer.bench.floor`: read the body, answer a
fixed JSON) and a real node (a fresh data directory, local write-ahead log), in one process on a
free loopback port; the same generator (:mod:`coffer.bench.load`, closed loop of single
transfers) loads each for the same time. One line per server and app:
``server=<name> app=<floor|node> tps= p50_ms= p99_ms= errors=``; the last line names the server
faster on the node and by how much.

Candidates: uvicorn with httptools and uvloop (what ``coffer serve`` runs), and granian (Rust,
hyper; one worker, its ASGI interface on uvloop).

Measured on the 2-core machine, shared with other engineers' work at the time (``coffer bench
servers --duration 8 --accounts 2000``, three runs; the machine's load moved the figures by up to
2x between runs, so only one run's figures compare with each other):

    run  uvicorn floor  uvicorn node (p99)  granian floor  granian node (p99)
    1    12,740         4,018 (30 ms)       9,828          3,325 (56 ms)
    2    12,217         2,322 (78 ms)       9,322          2,974 (47 ms)
    3    11,363         3,147 (63 ms)       13,432         2,099 (158 ms)
    median 12,217       3,147 (63 ms)       9,828          2,974 (56 ms)

granian was not faster by a clear margin, on the floor or on the node (faster on the node in one
run of three, slower in two): the cost per request is in Python (the ASGI call, our handler, the
state machine), not in HTTP parsing, which httptools already does in C. ``coffer serve`` keeps
uvicorn.
"""

import asyncio
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coffer.bench import floor, load

data_dir_variable = "COFFER_BENCH_DATA_DIR"  # the node app factory's data directory (targets take no arguments)
snapshot_entries = 20_000  # as coffer serve's default


def node_app() -> Any:
    """A node on the local write-ahead log in ``$COFFER_BENCH_DATA_DIR``, as ``coffer serve`` builds it."""
    from coffer.http.auth import ApiKeys
    from coffer.log.wal import LocalWal
    from coffer.replica import Replica
    from coffer.server.app import create_app

    data_dir = Path(os.environ[data_dir_variable])
    data_dir.mkdir(parents=True, exist_ok=True)
    replica = Replica(data_dir, LocalWal(data_dir / "log"), snapshot_entries=snapshot_entries)
    return create_app(replica, ApiKeys.load(None, environ={}))


def _measure(url: str, setup: bool, duration_s: float, concurrency: int, accounts: int, processes: int, seed: int) -> load._Measured:
    if setup:
        asyncio.run(load._setup(load._Target.parse(url), accounts, seed))
    plan = load._Plan(
        url=url,
        mode="single",
        connections=concurrency,
        batch=1,
        hot=0.0,
        accounts=accounts,
        rng_seed=str(seed),
        id_prefix=f"bs{seed}-{os.urandom(4).hex()}-",
        drain_s=load.drain_s_single,
        duration_s=duration_s,
    )
    return load._drive(plan, processes, lambda line: None)


def run(
    duration_s: float,
    concurrency: int,
    accounts: int,
    processes: int,
    seed: int,
    echo: Callable[[str], None],
    servers: tuple[str, ...] = floor.servers,
) -> dict[str, int]:
    """Load the floor app and a node under each server; echo a line each; return the node's tps per server."""
    node_tps: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="coffer-bench-servers-") as scratch:
        for server in servers:
            with floor.floor(1, server) as url:
                measured = _measure(url, False, duration_s, concurrency, accounts, processes, seed)
            echo(_line(server, "floor", measured))
            port = floor.free_port()
            data_dir = Path(scratch) / server
            command = [sys.executable, "-m", "coffer.bench.servers", "--server", server, "--port", str(port)]
            with floor.running(command, port, "/readyz", {data_dir_variable: str(data_dir)}) as url:
                measured = _measure(url, True, duration_s, concurrency, accounts, processes, seed)
            echo(_line(server, "node", measured))
            node_tps[server] = measured.tps
    fastest = max(node_tps, key=lambda name: node_tps[name])
    others = [name for name in node_tps if name != fastest]
    if others:
        slowest = min(node_tps[name] for name in others)
        echo(f"fastest_on_node={fastest} by={node_tps[fastest] / max(1, slowest):.2f}x")
    return node_tps


def _line(server: str, app: str, measured: load._Measured) -> str:
    return (
        f"server={server} app={app} tps={measured.tps} p50_ms={measured.percentile(0.5):.2f} "
        f"p99_ms={measured.percentile(0.99):.2f} errors={measured.errors}"
    )


def main() -> None:
    import argparse
    import gc

    parser = argparse.ArgumentParser(description="serve a Coffer node for coffer bench servers")
    parser.add_argument("--server", choices=floor.servers, required=True)
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    gc.set_threshold(50_000, 20, 100)  # as coffer serve
    floor.serve_asgi("coffer.bench.servers:node_app", arguments.server, arguments.port)


if __name__ == "__main__":
    main()
