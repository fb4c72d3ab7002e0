"""A fault-injecting TCP proxy on loopback: the network between Coffer nodes and NATS servers,
and between NATS servers, that the nemesis can cut, slow down or reset.

Job. On one machine every process talks over loopback, where nothing is ever lost or late; the
nemesis needs a network that fails. Each link (a node to a NATS server, a NATS server to a peer's
route port) is a listening port here that forwards every accepted connection to its target, so
the faults need no root, no network namespaces and no firewall rules, and touch nothing but the
processes a cluster started.

Faults, per link:
- ``partition``: bytes are read and thrown away in both directions, and new connections are
  accepted but go nowhere, as when packets are dropped: the peers notice only through their own
  timeouts (NATS pings, Raft heartbeats), exactly as across a real partition. ``heal`` closes
  the connections that lost bytes (their streams are broken) and lets new ones through.
- ``delay``: every chunk is held ``delay_s`` before it is forwarded, in order, in each direction.
- ``reset``: every open connection is closed at once (a NIC flap, a middlebox that forgot the
  flow); the peers reconnect.

Method. One asyncio event loop in a daemon thread serves every link; the public methods are
synchronous and thread-safe (they run on the loop and wait for it). A connection is two pumps,
each a reader task feeding a queue of ``(due time, bytes)`` and a writer task that sends when
due; the queue is bounded (``queued_bytes_max``), so a slow receiver slows the sender as TCP does.
A separate ``sink`` port accepts connections and closes them: NATS servers advertise it as their
route address, so the gossip between servers never leads one of them around the proxy.
"""

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

host = "127.0.0.1"
read_bytes_max = 256 * 1024  # one read; large enough that a 1 MiB snapshot chunk is a few reads
queued_bytes_max = 4 * 1024 * 1024  # per direction of a connection, before the reader waits
connect_timeout_s = 2.0  # to the link's target; a refused or silent target closes the client side
call_timeout_s = 10.0  # a control call waits this long for the loop

T = TypeVar("T")


class ProxyError(RuntimeError):
    pass


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    damaged: bool = False  # lost bytes during a partition: closed when the link heals

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in (self.client, self.target):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.transport.abort()


@dataclass
class Link:
    """One proxied path: ``listen_port`` on loopback forwards to ``target_port``."""

    name: str
    listen_port: int
    target_port: int
    partitioned: bool = False
    delay_s: float = 0.0
    connections: set[_Connection] = field(default_factory=set)
    server: asyncio.Server | None = None
    bytes_forwarded: int = 0


class FaultProxy:
    """Links on loopback ports, each with faults that can be switched on and off (module docstring)."""

    def __init__(self) -> None:
        self._links: dict[str, Link] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="coffer-fault-proxy", daemon=True)
        self._thread.start()
        self._sink: asyncio.Server | None = None
        self.sink_port: int | None = None
        self._closed = False

    # -- set-up -----------------------------------------------------------------------------

    def add_link(self, name: str, listen_port: int, target_port: int) -> Link:
        """Listen on ``listen_port`` and forward to ``target_port`` (both on loopback)."""
        if name in self._links:
            raise ProxyError(f"a link named {name!r} exists")
        link = Link(name, listen_port, target_port)
        self._call(self._listen(link))
        self._links[name] = link
        return link

    def add_sink(self, port: int) -> None:
        """A port that accepts connections and closes them at once (see the module docstring)."""

        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.transport.abort()

        async def listen() -> None:
            self._sink = await asyncio.start_server(refuse, host, port, reuse_address=True)

        self._call(listen())
        self.sink_port = port

    def link(self, name: str) -> Link:
        return self._links[name]

    @property
    def links(self) -> list[Link]:
        return list(self._links.values())

    # -- faults -----------------------------------------------------------------------------

    def partition(self, names: Iterable[str]) -> None:
        """Drop everything on these links until :meth:`heal`."""
        self._call(self._set(names, partitioned=True))

    def delay(self, names: Iterable[str], delay_s: float) -> None:
        """Hold every chunk on these links ``delay_s`` before forwarding it (0 ends the delay)."""
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        self._call(self._set(names, delay_s=delay_s))

    def reset(self, names: Iterable[str]) -> int:
        """Close every open connection on these links; return how many were closed."""
        return self._call(self._reset(list(names)))

    def heal(self, names: Iterable[str] | None = None) -> None:
        """End partitions and delays (on these links, or all), closing connections that lost bytes."""
        self._call(self._heal(list(self._links) if names is None else list(names)))

    @property
    def faulty(self) -> list[str]:
        """Names of the links that are partitioned or delayed now."""
        return [link.name for link in self._links.values() if link.partitioned or link.delay_s > 0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(call_timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    # -- the loop ---------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed and not self._loop.is_running():
            coroutine.close()
            raise ProxyError("the proxy is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(call_timeout_s)

    async def _listen(self, link: Link) -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(link, reader, writer)

        link.server = await asyncio.start_server(accept, host, link.listen_port, reuse_address=True)

    async def _set(self, names: Iterable[str], **changes: Any) -> None:
        for name in names:
            link = self._links[name]
            for key, value in changes.items():
                setattr(link, key, value)
            if changes.get("partitioned"):
                for connection in link.connections:
                    connection.damaged = True

    async def _reset(self, names: list[str]) -> int:
        closed = 0
        for name in names:
            link = self._links[name]
            for connection in list(link.connections):
                connection.close()
                closed += 1
            link.connections.clear()
        return closed

    async def _heal(self, names: list[str]) -> None:
        for name in names:
            link = self._links[name]
            link.partitioned = False
            link.delay_s = 0.0
            for connection in [connection for connection in link.connections if connection.damaged]:
                connection.close()
                link.connections.discard(connection)

    async def _close_all(self) -> None:
        for link in self._links.values():
            if link.server is not None:
                link.server.close()
            for connection in link.connections:
                connection.close()
            link.connections.clear()
        if self._sink is not None:
            self._sink.close()

    async def _serve(self, link: Link, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        connection = _Connection(client_writer, None)
        link.connections.add(connection)
        try:
            if link.partitioned:
                # Accepted, as the kernel would, but nothing reaches the target.
                connection.damaged = True
                await _drain_into_nothing(client_reader)
                return
            try:
                target_reader, target_writer = await asyncio.wait_for(
                    asyncio.open_connection(host, link.target_port), connect_timeout_s
                )
            except (OSError, TimeoutError):
                return
            connection.target = target_writer
            connection.tasks += [
                asyncio.ensure_future(self._pump(link, connection, client_reader, target_writer)),
                asyncio.ensure_future(self._pump(link, connection, target_reader, client_writer)),
            ]
            # NATS never half-closes: when one direction ends, the connection is over.
            await asyncio.wait(connection.tasks, return_when=asyncio.FIRST_COMPLETED)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            connection.close()
            link.connections.discard(connection)

    async def _pump(
        self, link: Link, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Forward one direction: read, hold while delayed, drop while partitioned, write in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        queued = _Counter()
        room = asyncio.Event()
        room.set()

        async def reading() -> None:
            while True:
                await room.wait()
                data = await reader.read(read_bytes_max)
                if not data:
                    queue.put_nowait((time.monotonic() + link.delay_s, b""))
                    return
                if link.partitioned:
                    connection.damaged = True
                    continue
                queue.put_nowait((time.monotonic() + link.delay_s, data))
                queued.value += len(data)
                if queued.value >= queued_bytes_max:
                    room.clear()  # a slow receiver slows the sender, as TCP would

        async def sending() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait_s = due - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                queued.value -= len(data)
                if queued.value < queued_bytes_max:
                    room.set()
                if link.partitioned or connection.damaged:
                    connection.damaged = True
                    continue  # lost on the way: a partition began after it was read
                writer.write(data)
                await writer.drain()
                link.bytes_forwarded += len(data)

        tasks = [asyncio.ensure_future(reading()), asyncio.ensure_future(sending())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if tasks[0] in done and not tasks[0].cancelled() and tasks[0].exception() is None:
                await tasks[1]  # the end of the stream: send what is queued first
        except (ConnectionError, OSError):
            pass
        finally:
            for task in tasks:
                task.cancel()
                if task.done() and not task.cancelled():
                    task.exception()  # a reset by the peer is the end of the stream, not an error


@dataclass
class _Counter:
    value: int = 0


async def _drain_into_nothing(reader: asyncio.StreamReader) -> None:
    while await reader.read(read_bytes_max):
        pass


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; return whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
