"""``coffer bench flows``: the payment_with_fee flow against a node, next to the batch it produces.

Method. Setup (not timed): ``accounts`` funded payers, one merchant and one fee account (asset
``FLOWBENCH``, scale 2) and the library's ``payment_with_fee`` registered. Then two sides, each for
``duration`` seconds with ``concurrency`` keep-alive connections from this process (a minimal
HTTP/1.1 client on asyncio streams, so the generator takes as little of the shared CPU as it can):

- *plain*: ``POST /v1/batch-operations`` with exactly the legs the flow produces for a payment of
  10.00 (payer -10.00, merchant +9.70, fees +0.30);
- *flow*: ``POST /v1/flows/payment_with_fee/runs`` with the params of the same payment.

Every request has a fresh dedup_id; only 200 answers count. The sides alternate for ``rounds``
rounds (the machine is shared and noisy); the cost ratio is the median over rounds of the plain
side's rate over the flow's (a flow run costing 1.5 times the batch shows as 1.5), the rates and
p99s are medians. When the benchmark started the node itself it also reads the node's CPU time
(user + system, from ``/proc``) around each side, including what the side left to finish in the
background: ``cpu_cost_ratio`` is the median over rounds of CPU per flow run over CPU per batch,
which other work on a shared machine disturbs far less than the rates. The last line is
``flow=payment_with_fee runs_per_s=<int> p99_ms=<float>``.

Without ``--url`` a node is started on a temporary data directory and stopped (by its PID) at the end.
"""

import asyncio
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import msgspec

from coffer.flows.files import library
from coffer.http import kept_client
from coffer.processes import stop_process

asset = "FLOWBENCH"
payment = "10.00"
legs = ("-10.00", "9.70", "0.30")  # what payment_with_fee makes of 10.00 (2.9%, at least 0.30)
opening_balance = "100000000.00"
node_start_s_max = 30.0
node_stop_s_max = 15.0  # the node's graceful shutdown; then it gets SIGKILL
drain_s_max = 10.0
settle_s = 0.5  # after a side: what it left to the background (a run's finish record) lands in its CPU time


def _cpu_s(pid: int) -> float | None:
    """The process's user + system CPU seconds so far, or None where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The benchmark cannot run."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_node() -> tuple[subprocess.Popen[bytes], str, str]:
    data_dir = tempfile.mkdtemp(prefix="coffer-bench-flows-")
    port = _free_port()
    command = [sys.executable, "-c", "from coffer.cli import main; main()", "serve", "--data-dir", f"{data_dir}/data", "--port", str(port)]
    process = subprocess.Popen([*command, "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + node_start_s_max
    while time.monotonic() < deadline:
        try:
            if kept_client.client().get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url, data_dir
        except httpx.TransportError:
            time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    raise BenchError("the node did not start")


def _setup(url: str, account_count: int, run: str) -> tuple[list[str], str, str]:
    payers = [f"fb-{run}-payer-{number}" for number in range(account_count)]
    merchant, fees = f"fb-{run}-merchant", f"fb-{run}-fees"
    commands = [
        {"type": "create_account", "dedup_id": f"fb-create-{account_id}", "account_id": account_id, "asset": asset}
        for account_id in [*payers, merchant, fees]
    ]
    commands.append(
        {
            "type": "batch_operation",
            "dedup_id": f"fb-fund-{run}",
            "legs": [{"account_id": account_id, "amount": opening_balance, "asset": asset} for account_id in payers],
        }
    )
    with httpx.Client(base_url=url, timeout=60) as client:
        answer = client.post("/v1/commands", json={"commands": commands})
        if answer.status_code != 200 or any(result["status"] != 200 for result in answer.json()["results"]):
            raise BenchError(f"setup failed: {answer.text[:300]}")
        definition = library()["payment_with_fee"]
        registered = client.put("/v1/flows/payment_with_fee", json=definition)
        if registered.status_code != 200:
            raise BenchError(f"registering payment_with_fee failed: {registered.text[:300]}")
    return payers, merchant, fees


class _Connection:
    """One keep-alive HTTP/1.1 connection: a request, then its answer (status and body length only)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _side(url: str, duration: float, concurrency: int, request: Callable[[int], tuple[str, bytes]]) -> tuple[float, float, int]:
    """(requests answered 200 per second, p99 latency in ms, errors)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**12))
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        connection = _Connection(host, port)
        try:
            while time.perf_counter() < deadline:
                path, body = request(next(counter))
                started = time.perf_counter()
                status = await asyncio.wait_for(connection.post(path, body), drain_s_max)
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] * 1000 if latencies else float("nan")
    return len(latencies) / elapsed, p99, errors


def run(
    url: str | None, duration: float, concurrency: int, account_count: int, rounds: int = 3, echo: Callable[[str], None] = print
) -> None:
    process = None
    data_dir = None
    if url is None:
        process, url, data_dir = _start_node()
        echo(f"started a node at {url}")
    try:
        run_id = uuid.uuid4().hex[:8]
        payers, merchant, fees = _setup(url, account_count, run_id)
        encode = msgspec.json.encode

        def plain(number: int) -> tuple[str, bytes]:
            payer = payers[number % len(payers)]
            body = {
                "dedup_id": f"fb-{run_id}-plain-{number}",
                "legs": [
                    {"account_id": payer, "amount": legs[0], "asset": asset},
                    {"account_id": merchant, "amount": legs[1], "asset": asset},
                    {"account_id": fees, "amount": legs[2], "asset": asset},
                ],
            }
            return "/v1/batch-operations", encode(body)

        def flow(number: int) -> tuple[str, bytes]:
            payer = payers[number % len(payers)]
            params = {"payer": payer, "merchant": merchant, "fee_account": fees, "asset": asset, "amount": payment}
            return "/v1/flows/payment_with_fee/runs", encode({"dedup_id": f"fb-{run_id}-flow-{number}", "params": params})

        asyncio.run(_side(url, min(1.0, duration), concurrency, plain))  # warm-up, not counted
        asyncio.run(_side(url, min(1.0, duration), concurrency, flow))
        pid = process.pid if process is not None else None

        def measured(request: Callable[[int], tuple[str, bytes]]) -> tuple[float, float, int, float | None]:
            """(rate, p99, errors, node CPU ms per answered request or None)."""
            before = _cpu_s(pid) if pid is not None else None
            rate, p99, errors = asyncio.run(_side(url, duration, concurrency, request))
            if before is None or rate <= 0:
                return rate, p99, errors, None
            time.sleep(settle_s)
            after = _cpu_s(pid)
            return rate, p99, errors, None if after is None else (after - before) * 1000 / (rate * duration)

        plain_rates, flow_rates, plain_p99s, flow_p99s, ratios = [], [], [], [], []
        plain_cpus: list[float] = []
        flow_cpus: list[float] = []
        for number in range(1, rounds + 1):
            plain_rate, plain_p99, plain_errors, plain_cpu = measured(plain)
            flow_rate, flow_p99, flow_errors, flow_cpu = measured(flow)
            cpu = ""
            if plain_cpu is not None and flow_cpu is not None:
                plain_cpus.append(plain_cpu)
                flow_cpus.append(flow_cpu)
                cpu = f" (node cpu_ms_per_op: batch {plain_cpu:.3f}, flow {flow_cpu:.3f})"
            echo(
                f"round {number}: batch_operation ops_per_s={plain_rate:.0f} p99_ms={plain_p99:.2f} errors={plain_errors}; "
                f"payment_with_fee runs_per_s={flow_rate:.0f} p99_ms={flow_p99:.2f} errors={flow_errors}{cpu}"
            )
            plain_rates.append(plain_rate)
            flow_rates.append(flow_rate)
            plain_p99s.append(plain_p99)
            flow_p99s.append(flow_p99)
            ratios.append(plain_rate / flow_rate if flow_rate else float("inf"))
        median = statistics.median
        echo(f"plain=batch_operation ops_per_s={median(plain_rates):.0f} p99_ms={median(plain_p99s):.2f}")
        echo(f"cost_ratio={median(ratios):.2f} (median over rounds of plain ops/s over flow runs/s; target <= 1.5)")
        if flow_cpus:
            cpu_ratios = [flow_cpu / plain_cpu for plain_cpu, flow_cpu in zip(plain_cpus, flow_cpus, strict=True) if plain_cpu > 0]
            echo(
                f"cpu_cost_ratio={median(cpu_ratios):.2f} cpu_ms_per_op_batch={median(plain_cpus):.3f} "
                f"cpu_ms_per_run_flow={median(flow_cpus):.3f} (median over rounds of the node's CPU per flow run over per batch)"
            )
        echo(f"flow=payment_with_fee runs_per_s={median(flow_rates):.0f} p99_ms={median(flow_p99s):.2f}")
    finally:
        stop_process(process, node_stop_s_max)
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
