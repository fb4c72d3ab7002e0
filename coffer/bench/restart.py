"""``coffer bench restart``: how long a node takes to serve again after a long history.

Method: build a data directory by applying ``transfers`` random transfers through the same
replica code a server runs (local WAL with fsync, event store, background snapshots), stop, then
start ``coffer serve`` on it and time from process start to the first 200 of ``/readyz``. The
server recovers from its newest snapshot plus the log after it.
"""

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from coffer.bench.apply import _setup_entries
from coffer.core.commands import Command, Transfer
from coffer.core.entries import encode_entry
from coffer.log.wal import LocalWal
from coffer.replica import Replica, store_backlog_events_max


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build(data_dir: Path, account_count: int, transfer_count: int, entry_size: int, echo: Callable[[str], None]) -> None:
    log = LocalWal(data_dir / "log")
    replica = Replica(data_dir, log)
    replica.recover()
    rng = random.Random(7)

    def apply(commands: list[Command]) -> None:
        record = log.append(encode_entry(commands))
        replica.apply(record, commands)
        replica.maybe_snapshot()
        # The server's backpressure: do not run ahead of the event store.
        while replica.writer is not None and replica.writer.backlog_events > store_backlog_events_max:
            time.sleep(0.005)
            replica.maybe_snapshot()

    started = time.monotonic()
    for commands in _setup_entries(account_count):
        apply(commands)
    for start in range(0, transfer_count, entry_size):
        commands: list[Command] = []
        for number in range(start, min(start + entry_size, transfer_count)):
            source, target = rng.sample(range(account_count), 2)
            commands.append(
                Transfer(
                    dedup_id=f"restart-{number}",
                    from_account_id=f"acct-{source:07d}",
                    to_account_id=f"acct-{target:07d}",
                    amount=rng.randrange(1, 10_000),
                    asset="USD",
                )
            )
        apply(commands)
        if start and start % 200_000 == 0:
            echo(f"  applied {start:,} transfers ({time.monotonic() - started:.0f} s)")
    replica.close()
    echo(f"built: {transfer_count:,} transfers, log index {replica.machine.log_index}, seq {replica.machine.seq}")


def run(account_count: int, transfer_count: int, entry_size: int, data_dir: Path, echo: Callable[[str], None]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if not any(data_dir.iterdir()):
        echo(f"building {data_dir} with {transfer_count:,} transfers over {account_count:,} accounts")
        build(data_dir, account_count, transfer_count, entry_size, echo)
    port = _free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "coffer", "serve", "--data-dir", str(data_dir), "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(timeout=1.0) as client:
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"the server exited with {process.returncode}")
                try:
                    if client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
            ready_s = time.monotonic() - started
            head = client.get(f"http://127.0.0.1:{port}/v1/audit/head").json()
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    echo(f"restart_s={ready_s:.2f} seq={head['seq']} log_index={head['log_index']}")
