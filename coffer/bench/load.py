"""``coffer bench load``: transfers per second and latency of a running node over HTTP.

Method. Setup (not timed) creates ``accounts`` accounts ``bench-<n>`` and one hot account
``bench-hot`` of asset ``BENCH`` (scale 2) and funds them generously, through POST /v1/commands
batches whose dedup ids derive from the seed: re-running against the same server answers the
original outcomes (an account that exists under another seed's dedup id answers
``ACCOUNT_EXISTS``, which is fine; it is funded again under this seed's ids).

The load runs in ``processes`` worker processes, each on its own uvloop event loop with
keep-alive HTTP/1.1 connections (no pipelining: one request in flight per connection). The
client is a minimal asyncio Protocol: request bytes are built directly from a template and the
response is parsed only as far as the status line and Content-Length. Measured on the 2-core
machine against a node, 32 requests in flight: ~80 us of CPU per request for this client, ~7 ms
for httpx.AsyncClient — and the generator shares the machine with the server, so every
microsecond it spends is taken from the server. All workers open their connections first, then
start together on a signal from the parent; each stops sending at the shared deadline and waits
(bounded) for the answers still in flight.

- ``single``: one transfer per POST /v1/transfers, ``concurrency`` connections in total.
- ``batch``: POST /v1/commands with ``batch`` transfers each, ``min(concurrency, 2)`` requests
  in flight in total. The server group-commits everything pending into one log entry while the
  previous one is written, so two keep it busy (one written, one applied and answered); more only
  make entries, responses and latency bigger (measured: 4 in flight gave ~25% fewer tps than 2).

With ``rate`` (``--rate R``) the load is an open loop instead: each process starts its share of
``R`` requests per second on a fixed schedule, whatever the answers, as independent clients
would; a request waits for a free connection of its process (opening more, up to
``open_loop_connections_max`` per process), and its latency is measured from its scheduled start,
so time spent queued anywhere, in the generator included, counts (no coordinated omission). Above
the node's capacity, a node without admission control answers ever later; with it, some requests
get 503 at once and the admitted ones keep a bounded latency. The last line then also has
``rate=`` (the schedule), ``refused=`` (answers 503) and ``accepted_p50_ms=`` / ``accepted_p99_ms=``
(latency of the requests answered 200), and ``late=``: requests started more than 10 ms after
their scheduled time (the generator itself could not keep up; figures then understate the load).

Transfers go between two different random accounts; a share ``hot`` of them goes through the hot
account instead (half from it, half to it; it holds far more than the test can move). Every
request has a unique dedup id (a random run nonce, so re-runs never replay old transfers). A
transfer counts as OK only when answered 200; any other status, a failed connection or an answer
missing at the drain bound counts as an error.

Against a sharded node (``coffer serve --shards N``), accounts are spread by the node's shard map
and a share ``cross_shard`` of the transfers goes between two shards (the rest stays within one);
the last line then is ``shards=… cross_shard=… tps=… p50_ms=… p99_ms=… errors=…``.

Otherwise the last line is
``mode=… tps=… p50_ms=… p99_ms=… p999_ms=… errors=… floor_tps=… ratio=…`` where tps is transfers
answered 200 per second, over the window from the common start to the last answer (the load
window plus the drain), and the percentiles (nearest rank) are over every request of every
process — for ``batch``, per batch request.

The floor. After the node, the same generator with the same plan (mode, connections, batch,
rate, duration) loads a minimal ASGI app (:mod:`coffer.bench.floor`: it reads the body and
answers a fixed JSON of the size of the node's reply) served by uvicorn + httptools in one
process, which the bench starts on a free loopback port and stops afterwards. ``floor_tps`` is
its transfers per second (in batch mode its request rate times the batch: its fixed reply holds
``batch`` results of 200), ``ratio`` is ``tps / floor_tps``: the share of what the machine, this
generator and Python's HTTP stack allow that the node reaches. ``floor=False`` (``--no-floor``)
leaves both fields out.

``msgpack`` (``--msgpack``, batch mode): the batches go, and come back, in MessagePack instead of
JSON (the floor answers in kind).
Measured against one node, JSON and MessagePack alternating, three pairs (``--mode batch --batch
1000 --duration 5 --no-floor``, the machine shared): JSON 9,061 transfers/s (p99 457 ms),
MessagePack 11,454 (p99 350 ms) as medians; MessagePack / JSON per pair 1.47, 1.19, 1.57.
"""

import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import os
import queue
import random
import socket
import ssl
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec

from coffer.bench import figures
from coffer.http.limits import commands_per_request_max
from coffer.progress import progress_over
from coffer.txn.shard_map import ShardMap

asset = "BENCH"
scale = 2
account_prefix = "bench-"
hot_account = "bench-hot"
opening_balance = "1000000000.00"  # per account: random transfers of at most 10.00 never drain it
hot_opening_balance = "10000000000000.00"  # the hot account's random walk is far wider
setup_chunk = 1000  # accounts per setup request (a batch_operation takes at most 1024 legs)
batch_inflight_max = 2  # batch mode: requests in flight in total, at most (see above)
connect_timeout_s = 10.0
setup_timeout_s = 120.0
ready_wait_s = 120.0  # how long a worker waits for the start signal (the parent may have died)
drain_s_single = 10.0  # how long a worker waits after the deadline for answers in flight
drain_s_batch = 30.0
open_loop_connections_max = 2048  # per process; past it a scheduled request waits for a free connection
late_s = 0.01  # a request started this much after its schedule is counted as late
progress_every_s = 1.0
api_key_variable = "COFFER_API_KEY"  # sent as x-api-key when set


class BenchError(RuntimeError):
    """The benchmark cannot run (setup refused, server unreachable, bad arguments)."""


# ---------------------------------------------------------------------------- HTTP client


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self._status = 0
        self._body_start = 0
        self._end = -1  # end of the current response in the buffer, once its head is parsed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(f"connection lost: {exc}" if exc else "connection closed by the server"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self._end < 0:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(buffer[:head_end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if not head.startswith(b"http/1.") or at < 0:
                self._fail(f"unsupported response head {head[:200]!r}")
                return
            line_end = head.find(b"\r\n", at + 2)
            try:
                self._status = int(head[9:12])
                length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
            except ValueError:
                self._fail(f"unsupported response head {head[:200]!r}")
                return
            self._body_start = head_end + 4
            self._end = self._body_start + length
        if len(buffer) >= self._end:
            body = bytes(buffer[self._body_start : self._end])
            del buffer[: self._end]
            self._end = -1
            waiter = self.waiter
            self.waiter = None
            if waiter is not None and not waiter.done():
                waiter.set_result((self._status, body))

    def _fail(self, message: str) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(message))
        if self.transport is not None:
            self.transport.close()

    def request(self, payload: bytes) -> "asyncio.Future[tuple[int, bytes]]":
        assert self.waiter is None, "one request in flight per connection"
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        self.transport.write(payload)  # type: ignore[union-attr]
        return waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    tls: bool
    path: str  # prefix before /v1/...
    api_key: str | None

    @classmethod
    def parse(cls, url: str) -> "_Target":
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BenchError(f"url must be http://host:port, got {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        return cls(parts.hostname, port, tls, parts.path.rstrip("/"), os.environ.get(api_key_variable) or None)

    def head(self, path: str, media_type: str = "application/json") -> bytes:
        """The request head up to ``Content-Length: ``; the caller appends the length and body."""
        auth = f"x-api-key: {self.api_key}\r\n" if self.api_key else ""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return (
            f"POST {self.path}{path} HTTP/1.1\r\nHost: {host}:{self.port}\r\n"
            f"Content-Type: {media_type}\r\n{auth}Content-Length: "
        ).encode()

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if self.tls else None
        _, connection = await asyncio.wait_for(
            loop.create_connection(_Connection, self.host, self.port, ssl=context), connect_timeout_s
        )
        return connection


def _payload(head: bytes, body: bytes) -> bytes:
    return b"%s%d\r\n\r\n%s" % (head, len(body), body)


class _ErrorBody(msgspec.Struct):
    code: str = "?"


class _Error(msgspec.Struct):
    error: _ErrorBody | None = None


class _Result(msgspec.Struct):
    status: int
    error: _ErrorBody | None = None


class _Results(msgspec.Struct):
    results: list[_Result]


_error_decoder = msgspec.json.Decoder(_Error)
_error_msgpack_decoder = msgspec.msgpack.Decoder(_Error)
_results_decoder = msgspec.json.Decoder(_Results)
_results_msgpack_decoder = msgspec.msgpack.Decoder(_Results)


def _error_code(status: int, body: bytes) -> str:
    try:
        error = (_error_msgpack_decoder if body[:1] >= b"\x80" else _error_decoder).decode(body).error
    except msgspec.DecodeError:
        error = None
    return f"{status} {error.code if error is not None else body[:80]!r}"


# ---------------------------------------------------------------------------- setup


def _account_ids(count: int) -> list[str]:
    return [f"{account_prefix}{number}" for number in range(count)]


async def _setup(target: _Target, accounts: int, seed: int) -> None:
    connection = await target.connect()
    head = target.head("/v1/commands")
    encode = msgspec.json.encode
    ids = _account_ids(accounts)
    chunks: list[list[str]] = [[hot_account]] + [ids[start : start + setup_chunk] for start in range(0, accounts, setup_chunk)]
    try:
        for number, chunk in enumerate(progress_over(chunks, "setting up accounts", unit="requests")):
            balance = hot_opening_balance if number == 0 else opening_balance
            commands: list[dict[str, Any]] = [
                {"type": "create_account", "dedup_id": f"bench-s{seed}-create-{account_id}", "account_id": account_id}
                | {"asset": asset, "scale": scale}
                for account_id in chunk
            ]
            commands.append(
                {
                    "type": "batch_operation",
                    # the chunk's bounds are in the id: another account count funds its own chunks
                    "dedup_id": f"bench-s{seed}-fund-{chunk[0]}-{chunk[-1]}",
                    "legs": [{"account_id": account_id, "amount": balance, "asset": asset} for account_id in chunk],
                }
            )
            if connection.closed:
                connection = await target.connect()
            status, body = await asyncio.wait_for(
                connection.request(_payload(head, encode({"commands": commands}))), setup_timeout_s
            )
            if status != 200:
                raise BenchError(f"setup request refused: {_error_code(status, body)}")
            results = _results_decoder.decode(body).results
            for command, result in zip(commands, results, strict=True):
                if result.status == 200:
                    continue
                code = result.error.code if result.error is not None else "?"
                if command["type"] == "create_account" and result.status == 409 and code == "ACCOUNT_EXISTS":
                    continue  # made by an earlier run under another seed: funded again below
                raise BenchError(f"setup {command['type']} {command['dedup_id']} failed: {result.status} {code}")
    finally:
        connection.close()


# ---------------------------------------------------------------------------- workers


@dataclass(frozen=True, slots=True)
class _Plan:
    url: str
    mode: str
    connections: int  # requests in flight in this process
    batch: int
    hot: float
    accounts: int
    rng_seed: str
    id_prefix: str
    drain_s: float
    duration_s: float
    cross_shard: float = 0.0  # share of transfers between accounts of different shards
    shard_map: dict[str, Any] | None = None  # the node's map (GET /v1/shards); None: one shard
    rate: float | None = None  # this process's requests per second (open loop), or None (closed loop)
    msgpack: bool = False  # batch mode: bodies and answers in MessagePack


class _Load:
    """The state of one worker process during the load."""

    def __init__(self, plan: _Plan, target: _Target, counters: Any, slot: int) -> None:
        self.plan = plan
        self.target = target
        self.rng = random.Random(plan.rng_seed)
        self.ids = _account_ids(plan.accounts)
        self.amounts = [f"{cents // 100}.{cents % 100:02d}" for cents in range(1, 1001)]  # 0.01 .. 10.00
        self.next_id = 0
        self.ok = 0
        self.errors = 0
        self.requests = 0
        self.lost = 0  # transfers whose answer never came (connection lost, drain bound)
        self.codes: Counter[str] = Counter()
        self.latencies = array("d")
        self.accepted_latencies = array("d")  # of the requests answered 200 (open loop)
        self.refused = 0  # requests answered 503 (open loop)
        self.late = 0  # requests started more than late_s after their schedule (open loop)
        self.free: asyncio.Queue[_Connection] | None = None
        self.opened = 0
        self.answered_at = array("d")  # per answered request, beside its latency: when (monotonic) ...
        self.ok_before = array("q")  # ... and this worker's transfers answered 200 before it (per-second figures)
        self.last_answer = 0.0
        self.cpu_s = 0.0  # CPU this process spent during the load (the generator's own cost)
        self.deadline = math.inf
        self.counters = counters
        self.slot = slot
        self.by_shard: list[list[str]] = []
        self.media_type = "application/msgpack" if plan.msgpack else "application/json"
        if plan.shard_map is not None:
            shard_map = ShardMap.from_json(plan.shard_map)
            self.by_shard = [[] for _ in range(shard_map.shards)]
            for account_id in self.ids:
                self.by_shard[shard_map.shard_of(account_id)].append(account_id)

    def pick(self) -> tuple[str, str]:
        rng = self.rng
        ids = self.ids
        if self.by_shard and not (self.plan.hot and rng.random() < self.plan.hot):
            # Sharded: a share ``cross_shard`` between two shards, the rest within one.
            shards = len(self.by_shard)
            source_shard = rng.randrange(shards)
            target_shard = source_shard
            if rng.random() < self.plan.cross_shard:
                target_shard = (source_shard + 1 + rng.randrange(shards - 1)) % shards
            sources, targets = self.by_shard[source_shard], self.by_shard[target_shard]
            source = sources[rng.randrange(len(sources))]
            target = targets[rng.randrange(len(targets))]
            while target == source:
                target = targets[rng.randrange(len(targets))]
            return source, target
        if self.plan.hot and rng.random() < self.plan.hot:
            other = ids[rng.randrange(len(ids))]
            return (hot_account, other) if rng.random() < 0.5 else (other, hot_account)
        source = rng.randrange(len(ids))
        target = rng.randrange(len(ids) - 1)
        if target >= source:
            target += 1  # never the same account
        return ids[source], ids[target]

    def transfer(self, lead: str) -> str:
        """One transfer as a JSON object; ``lead`` goes first (the ``type`` of a batch item)."""
        source, target = self.pick()
        self.next_id += 1
        amount = self.amounts[self.rng.randrange(1000)]
        return (
            f'{{{lead}"dedup_id":"{self.plan.id_prefix}{self.next_id}","from_account_id":"{source}",'
            f'"to_account_id":"{target}","amount":"{amount}","asset":"{asset}"}}'
        )

    def transfer_fields(self) -> dict[str, str]:
        """One transfer of a batch as a map (MessagePack bodies)."""
        source, target = self.pick()
        self.next_id += 1
        return {
            "type": "transfer",
            "dedup_id": f"{self.plan.id_prefix}{self.next_id}",
            "from_account_id": source,
            "to_account_id": target,
            "amount": self.amounts[self.rng.randrange(1000)],
            "asset": asset,
        }

    def batch_body(self) -> bytes:
        if self.plan.msgpack:
            return msgspec.msgpack.encode({"commands": [self.transfer_fields() for _ in range(self.plan.batch)]})
        items = ",".join([self.transfer('"type":"transfer",') for _ in range(self.plan.batch)])
        return b'{"commands":[' + items.encode() + b"]}"

    def decode_results(self, answer: bytes) -> list[_Result]:
        return (_results_msgpack_decoder if self.plan.msgpack else _results_decoder).decode(answer).results

    def publish(self) -> None:
        base = self.slot * 4
        self.counters[base] = self.ok
        self.counters[base + 1] = self.errors + self.lost
        self.counters[base + 2] = self.requests

    async def _reporter(self) -> None:
        while True:
            self.publish()
            await asyncio.sleep(0.2)

    async def _connection_loop(self, connection: _Connection) -> None:
        plan = self.plan
        single = plan.mode == "single"
        head = self.target.head("/v1/transfers") if single else self.target.head("/v1/commands", self.media_type)
        per_request = 1 if single else plan.batch
        clock = time.perf_counter
        monotonic = time.monotonic
        latencies = self.latencies
        while monotonic() < self.deadline:
            body = self.transfer("").encode() if single else self.batch_body()
            payload = _payload(head, body)
            if connection.closed:
                try:
                    connection = await self.target.connect()
                except (OSError, TimeoutError) as error:
                    self.codes[f"(nothing sent) connect failed: {error}"] += 1
                    await asyncio.sleep(0.1)
                    continue
            started = clock()
            try:
                status, answer = await connection.request(payload)
            except ConnectionError as error:
                self.lost += per_request
                self.codes[str(error)] += per_request
                continue
            except asyncio.CancelledError:
                self.lost += per_request  # the drain bound ran out before the answer
                self.codes["no answer within the drain bound"] += per_request
                connection.close()
                raise
            self.last_answer = monotonic()
            latencies.append((clock() - started) * 1000.0)
            self.answered_at.append(self.last_answer)
            self.ok_before.append(self.ok)
            self.requests += 1
            if status != 200:
                self.errors += per_request
                self.codes[_error_code(status, answer)] += per_request
            elif single:
                self.ok += 1
            else:
                try:
                    results = self.decode_results(answer)
                except msgspec.DecodeError as error:
                    self.errors += per_request
                    self.codes[f"200 with an unreadable body: {error}"] += per_request
                    continue
                for result in results:
                    if result.status == 200:
                        self.ok += 1
                    else:
                        self.errors += 1
                        self.codes[f"{result.status} {result.error.code if result.error is not None else '?'}"] += 1
        connection.close()

    def _body(self) -> tuple[bytes, int]:
        """The next request's payload and the transfers it carries."""
        if self.plan.mode == "single":
            return _payload(self.target.head("/v1/transfers"), self.transfer("").encode()), 1
        return _payload(self.target.head("/v1/commands", self.media_type), self.batch_body()), self.plan.batch

    async def _open_loop(self, connections: list[_Connection]) -> None:
        """Start requests on this process's schedule until the deadline; wait for their answers."""
        assert self.plan.rate is not None
        self.free = asyncio.Queue()
        for connection in connections:
            self.free.put_nowait(connection)
        self.opened = len(connections)
        interval_s = 1.0 / self.plan.rate
        begin = self.deadline - self.plan.duration_s
        tasks: set[asyncio.Task[None]] = set()
        number = 0
        while True:
            now = time.monotonic()
            scheduled = begin + number * interval_s
            if scheduled >= self.deadline:
                break
            while scheduled <= now and scheduled < self.deadline:  # every request that is due, even if late
                task = asyncio.create_task(self._scheduled(scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                number += 1
                scheduled = begin + number * interval_s
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        while not self.free.empty():
            self.free.get_nowait().close()

    async def _connection(self) -> _Connection:
        assert self.free is not None
        while True:
            if not self.free.empty():
                connection = self.free.get_nowait()
            elif self.opened < open_loop_connections_max:
                self.opened += 1
                try:
                    return await self.target.connect()
                except BaseException:
                    self.opened -= 1
                    raise
            else:
                connection = await self.free.get()
            if not connection.closed:
                return connection
            self.opened -= 1  # closed by the server meanwhile (idle timeout): open another

    async def _scheduled(self, scheduled: float) -> None:
        assert self.free is not None
        payload, transfers = self._body()
        try:
            connection = await self._connection()
        except (OSError, TimeoutError) as error:
            self.lost += transfers
            self.codes[f"(nothing sent) connect failed: {error}"] += transfers
            return
        if time.monotonic() - scheduled > late_s:
            self.late += 1
        try:
            status, answer = await connection.request(payload)
        except ConnectionError as error:
            self.opened -= 1
            self.lost += transfers
            self.codes[str(error)] += transfers
            return
        except asyncio.CancelledError:
            self.lost += transfers
            self.codes["no answer within the drain bound"] += transfers
            connection.close()
            raise
        self.free.put_nowait(connection)
        latency_ms = (time.monotonic() - scheduled) * 1000.0
        self.last_answer = time.monotonic()
        self.latencies.append(latency_ms)
        self.answered_at.append(self.last_answer)
        self.ok_before.append(self.ok)
        self.requests += 1
        if status == 200:
            self.accepted_latencies.append(latency_ms)
            if self.plan.mode == "single":
                self.ok += 1
            else:
                results = self.decode_results(answer)
                self.ok += sum(result.status == 200 for result in results)
                self.errors += sum(result.status != 200 for result in results)
            return
        if status == 503:
            self.refused += 1
        self.errors += transfers
        self.codes[_error_code(status, answer)] += transfers

    async def run(self, start: Any, go: Any, ready: Any) -> None:
        connections = [await self.target.connect() for _ in range(self.plan.connections)]
        ready.put(("ready", self.slot, None))
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, ready_wait_s):
            raise BenchError("the parent never gave the start signal")
        # the common start: every worker begins at the same monotonic instant (system-wide on Linux)
        await asyncio.sleep(max(0.0, start.value - time.monotonic()))
        self.deadline = start.value + self.plan.duration_s
        cpu_started = time.process_time()
        reporter = asyncio.create_task(self._reporter())
        if self.plan.rate is not None:
            tasks = [asyncio.create_task(self._open_loop(connections))]
        else:
            tasks = [asyncio.create_task(self._connection_loop(connection)) for connection in connections]
        _, pending = await asyncio.wait(tasks, timeout=self.deadline - time.monotonic() + self.plan.drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        reporter.cancel()
        self.cpu_s = time.process_time() - cpu_started
        self.publish()


def _worker(plan: _Plan, slot: int, counters: Any, start: Any, go: Any, results: Any) -> None:
    import gc

    import uvloop

    try:
        target = _Target.parse(plan.url)
        load = _Load(plan, target, counters, slot)
        gc.freeze()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(load.run(start, go, results))
        summary = {
            "ok": load.ok,
            "errors": load.errors + load.lost,
            "requests": load.requests,
            "codes": dict(load.codes),
            "latencies": load.latencies.tobytes(),
            "accepted_latencies": load.accepted_latencies.tobytes(),
            "refused": load.refused,
            "late": load.late,
            "answered_at": load.answered_at.tobytes(),
            "ok_before": load.ok_before.tobytes(),
            "last_answer": load.last_answer,
            "cpu_s": load.cpu_s,
        }
        results.put(("done", slot, summary))
    except BaseException as error:
        results.put(("failed", slot, f"{type(error).__name__}: {error}"))
        raise


# ---------------------------------------------------------------------------- the command


def _percentile(ordered: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least ``share`` of all values at or below it."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _stop(workers: list[Any], grace_s: float) -> None:
    """Let the workers exit for ``grace_s`` seconds, then terminate the ones left (by their handle)."""
    deadline = time.monotonic() + grace_s
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
            worker.join(5)


@dataclass(slots=True)
class _Measured:
    """What one load against one server gave, over every worker."""

    begin: float
    window_s: float
    ok: int
    errors: int
    requests: int
    latencies: list[float]
    accepted: list[float]
    codes: Counter[str]
    refused: int
    late: int
    cpu_s: float
    summaries: dict[int, dict[str, Any]]

    @property
    def tps(self) -> int:
        return int(self.ok / self.window_s)

    def percentile(self, share: float) -> float:
        return _percentile(self.latencies, share)


def run(
    url: str,
    mode: str,
    concurrency: int,
    batch: int,
    duration_s: float,
    hot: float,
    accounts: int,
    processes: int,
    seed: int,
    echo: Callable[[str], None],
    rate: float | None = None,
    cross_shard: float = 0.0,
    floor: bool = True,
    msgpack: bool = False,
) -> list[dict[str, Any]]:
    """Set up, load ``url`` for ``duration_s`` seconds and echo progress, then the result line.

    ``rate``: requests per second in all, started on a fixed schedule (open loop); None for the
    closed loop of ``concurrency`` requests in flight. ``floor``: then load the floor app
    (:mod:`coffer.bench.floor`) the same way and report the ratio. Returns one sample per second
    of the node's load (:func:`coffer.bench.figures.per_second`)."""
    if not 0.0 <= cross_shard <= 1.0:
        raise BenchError("cross-shard is a share between 0 and 1")
    if mode not in ("single", "batch"):
        raise BenchError(f"mode is single or batch, not {mode!r}")
    if concurrency < 1 or processes < 1 or duration_s <= 0:
        raise BenchError("concurrency, processes and duration must be positive")
    if not 1 <= batch <= commands_per_request_max:
        raise BenchError(f"batch is 1 to {commands_per_request_max} transfers (the limit of POST /v1/commands)")
    if not 0.0 <= hot <= 1.0:
        raise BenchError("hot is a share between 0 and 1")
    if accounts < 2:
        raise BenchError("at least 2 accounts are needed")
    if rate is not None and not rate > 0:
        raise BenchError("rate is a positive number of requests per second")
    if msgpack and mode != "batch":
        raise BenchError("--msgpack is for batch mode (POST /v1/commands)")
    target = _Target.parse(url)
    shard_map = _shard_map(url)
    shards = 1 if shard_map is None else int(shard_map["shards"])
    if cross_shard and shards < 2:
        raise BenchError("--cross-shard needs a sharded node (coffer serve --shards N)")
    if shard_map is not None and accounts < 2 * shards:
        raise BenchError("at least 2 accounts per shard are needed")

    started = time.perf_counter()
    asyncio.run(_setup(target, accounts, seed))
    echo(
        f"setup: {accounts} accounts {account_prefix}0..{account_prefix}{accounts - 1} and {hot_account} "
        f"({asset}, scale {scale}) funded in {time.perf_counter() - started:.1f}s"
    )
    plan = _Plan(
        url=url,
        mode=mode,
        connections=concurrency,
        batch=batch,
        hot=hot,
        accounts=accounts,
        rng_seed=str(seed),
        id_prefix=f"bl{seed}-{os.urandom(4).hex()}-",  # dedup ids of transfers are unique per run, not only per seed
        drain_s=drain_s_single if mode == "single" else drain_s_batch,
        duration_s=duration_s,
        cross_shard=cross_shard,
        shard_map=shard_map,
        rate=rate,
        msgpack=msgpack,
    )
    node = _drive(plan, processes, echo)
    result = (
        f"mode={mode} tps={node.tps} p50_ms={node.percentile(0.5):.2f} "
        f"p99_ms={node.percentile(0.99):.2f} p999_ms={node.percentile(0.999):.2f} errors={node.errors}"
    )
    if floor:
        from coffer.bench.floor import floor as floor_server

        with floor_server(batch) as floor_url:
            echo(f"floor: the minimal ASGI app under uvicorn + httptools at {floor_url}, the same load")
            bare = _drive(dataclasses.replace(plan, url=floor_url, shard_map=None, cross_shard=0.0), processes, echo)
        echo(
            f"floor: tps={bare.tps} p50_ms={bare.percentile(0.5):.2f} p99_ms={bare.percentile(0.99):.2f} errors={bare.errors}"
        )
        result += f" floor_tps={bare.tps} ratio={node.tps / max(1, bare.tps):.3f}"
    if rate is not None:
        result += (
            f" rate={rate:g} refused={node.refused} accepted_p50_ms={_percentile(node.accepted, 0.5):.2f}"
            f" accepted_p99_ms={_percentile(node.accepted, 0.99):.2f} late={node.late}"
        )
    echo(result)
    if shard_map is not None:
        echo(
            f"shards={shards} cross_shard={cross_shard:g} tps={node.tps} p50_ms={node.percentile(0.5):.2f} "
            f"p99_ms={node.percentile(0.99):.2f} errors={node.errors}"
        )
    summaries = node.summaries.values()
    return figures.per_second(
        node.begin, [(array("d", s["answered_at"]), array("q", s["ok_before"]), array("d", s["latencies"]), s["ok"]) for s in summaries]
    )


def _drive(plan: _Plan, processes: int, echo: Callable[[str], None]) -> _Measured:
    """Load ``plan.url`` from ``processes`` workers (sharing ``plan``'s connections and rate), echo
    progress each second and the totals at the end."""
    mode, rate, duration_s = plan.mode, plan.rate, plan.duration_s
    in_flight = plan.connections if mode == "single" or rate is not None else min(plan.connections, batch_inflight_max)
    processes = min(processes, in_flight)
    shares = [in_flight // processes + (1 if number < in_flight % processes else 0) for number in range(processes)]
    context = multiprocessing.get_context("spawn")
    counters = context.Array("q", processes * 4, lock=False)
    start = context.Value("d", 0.0, lock=False)
    go = context.Event()
    messages = context.Queue()
    workers = [
        context.Process(
            target=_worker,
            args=(
                dataclasses.replace(
                    plan,
                    connections=shares[slot],
                    rng_seed=f"{plan.rng_seed}-{slot}",
                    id_prefix=f"{plan.id_prefix}{slot}-",
                    rate=None if rate is None else rate / processes,
                ),
                slot,
                counters,
                start,
                go,
                messages,
            ),
            name=f"coffer-bench-load-{slot}",
            daemon=True,
        )
        for slot in range(processes)
    ]
    for worker in workers:
        worker.start()
    summaries: dict[int, dict[str, Any]] = {}
    finished = False
    try:
        ready = 0
        while ready < processes:
            try:
                kind, slot, detail = messages.get(timeout=60)
            except queue.Empty:
                raise BenchError("the load workers did not get ready within 60s") from None
            if kind == "failed":
                raise BenchError(f"load worker {slot} failed: {detail}")
            ready += 1
        mode_text = f"{plan.batch} transfers per request{' in MessagePack' if plan.msgpack else ''}, " if mode == "batch" else ""
        loop_text = f"open loop at {rate:g} requests/s, " if rate is not None else f"{in_flight} requests in flight "
        echo(f"load: mode={mode} {mode_text}{loop_text}over {processes} processes, hot={plan.hot:g}, {duration_s:g}s")
        begin = time.monotonic() + 0.1
        start.value = begin
        go.set()
        give_up = begin + duration_s + plan.drain_s + 30.0
        next_report = begin + progress_every_s
        reported_ok = 0
        while len(summaries) < processes:
            now = time.monotonic()
            if now > give_up:
                raise BenchError("the load workers did not finish in time")
            try:
                kind, slot, detail = messages.get(timeout=max(0.01, min(next_report, give_up) - now))
            except queue.Empty:
                pass
            else:
                if kind == "failed":
                    raise BenchError(f"load worker {slot} failed: {detail}")
                summaries[slot] = detail
            now = time.monotonic()
            if now >= next_report and len(summaries) < processes:
                ok = sum(counters[number * 4] for number in range(processes))
                errors = sum(counters[number * 4 + 1] for number in range(processes))
                requests = sum(counters[number * 4 + 2] for number in range(processes))
                echo(
                    f"[{now - begin:6.1f}s] transfers_ok={ok} errors={errors} requests={requests} "
                    f"tps_now={(ok - reported_ok) / progress_every_s:.0f}"
                )
                reported_ok = ok
                next_report += progress_every_s
        finished = True
    finally:
        _stop(workers, 5.0 if finished else 0.0)

    ok = sum(summary["ok"] for summary in summaries.values())
    errors = sum(summary["errors"] for summary in summaries.values())
    requests = sum(summary["requests"] for summary in summaries.values())
    last_answer = max(summary["last_answer"] for summary in summaries.values())
    window_s = max(duration_s, last_answer - begin)
    codes: Counter[str] = Counter()
    latencies: list[float] = []
    accepted: list[float] = []
    for summary in summaries.values():
        codes.update(summary["codes"])
        latencies.extend(array("d", summary["latencies"]))
        accepted.extend(array("d", summary["accepted_latencies"]))
    latencies.sort()
    accepted.sort()
    cpu_s = sum(summary["cpu_s"] for summary in summaries.values())
    echo(
        f"done: requests={requests} transfers_ok={ok} errors={errors} window_s={window_s:.2f} "
        f"generator_cpu={cpu_s / window_s:.0%} of a core ({cpu_s / max(1, requests) * 1e6:.0f} us per request)"
    )
    for code, count in codes.most_common(5):
        echo(f"errors: {count} x {code}")
    return _Measured(
        begin=begin,
        window_s=window_s,
        ok=ok,
        errors=errors,
        requests=requests,
        latencies=latencies,
        accepted=accepted,
        codes=codes,
        refused=sum(summary["refused"] for summary in summaries.values()),
        late=sum(summary["late"] for summary in summaries.values()),
        cpu_s=cpu_s,
        summaries=summaries,
    )


def _shard_map(url: str) -> dict[str, Any] | None:
    """The node's shard map, or None for a node of one shard (it has no GET /v1/shards)."""
    import httpx

    headers = {"x-api-key": os.environ[api_key_variable]} if api_key_variable in os.environ else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/v1/shards", headers=headers, timeout=connect_timeout_s, verify=False)
    except httpx.HTTPError as error:
        raise BenchError(f"cannot reach {url}: {error}") from None
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise BenchError(f"GET /v1/shards answered {response.status_code}")
    return response.json()["map"]
