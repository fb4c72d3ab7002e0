"""A lean keep-alive HTTP/1.1 client for the router's hop to its shards, on loopback.

Why not httpx: measured on this machine, httpx's AsyncClient spent most of the router's CPU
(connection-pool bookkeeping, async-library detection on every request), holding a sharded node
to a few hundred requests per second. The hop is always the same: small JSON requests to our own
uvicorn servers on loopback, one request at a time per connection. So: an asyncio Protocol per
connection, responses parsed by httptools (the parser the servers themselves use), a pool of idle
connections per shard.

Every request the router sends is safe to send again (commands carry their ``dedup_id``; reads
change nothing), so a request that fails on a reused keep-alive connection (the server closed it
while idle) is sent once more on a new one.
"""

import asyncio
from dataclasses import dataclass, field

import httptools

connections_idle_max = 256  # kept open per shard; more may be open while busy


class PoolError(Exception):
    """No answer: the connection failed or the time ran out."""


@dataclass(slots=True)
class HttpResponse:
    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


@dataclass(slots=True)
class _Pending:
    future: "asyncio.Future[HttpResponse]"
    headers: dict[str, str] = field(default_factory=dict)
    body: list[bytes] = field(default_factory=list)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.pending: _Pending | None = None
        self.closed = False
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(PoolError(f"bad HTTP answer: {error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(PoolError(f"connection lost: {exc or 'closed by the server'}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.pending is not None:
            self.pending.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if self.pending is not None:
            self.pending.body.append(body)

    def on_message_complete(self) -> None:
        pending, self.pending = self.pending, None
        self.keep_alive = self.parser.should_keep_alive()
        if pending is not None and not pending.future.done():
            pending.future.set_result(HttpResponse(self.parser.get_status_code(), pending.headers, b"".join(pending.body)))

    def _fail(self, error: Exception) -> None:
        pending, self.pending = self.pending, None
        if pending is not None and not pending.future.done():
            pending.future.set_exception(error)
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def send(self, data: bytes) -> "asyncio.Future[HttpResponse]":
        assert self.pending is None and self.transport is not None
        future: asyncio.Future[HttpResponse] = asyncio.get_running_loop().create_future()
        self.pending = _Pending(future)
        self.transport.write(data)
        return future

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpPool:
    """Keep-alive connections to one server (``host``, ``port``)."""

    def __init__(self, host: str, port: int, timeout_s: float, headers: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._idle: list[_Connection] = []
        self._host_header = f"{host}:{port}".encode()
        # Sent with every request of this pool (another node's router: the cluster's forwarding token).
        self._headers = [f"{name}: {value}".encode("latin-1") for name, value in (headers or {}).items()]

    async def _connect(self) -> _Connection:
        _, protocol = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
        return protocol

    def _encode(self, method: str, target: str, body: bytes | None, content_type: str | None) -> bytes:
        head = [f"{method} {target} HTTP/1.1".encode(), b"host: " + self._host_header, *self._headers]
        if body is not None:
            head.append(b"content-length: " + str(len(body)).encode())
            if content_type is not None:
                head.append(b"content-type: " + content_type.encode("latin-1"))
        return b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")

    async def request(self, method: str, target: str, body: bytes | None = None, content_type: str | None = None) -> HttpResponse:
        """One request; ``target`` is the path with its query string."""
        data = self._encode(method, target, body, content_type)
        for attempt in range(2):
            reused = bool(self._idle)
            connection = self._idle.pop() if reused else None
            try:
                if connection is None or connection.closed:
                    connection = await asyncio.wait_for(self._connect(), self.timeout_s)
                    reused = False
                response = await asyncio.wait_for(connection.send(data), self.timeout_s)
            except (PoolError, OSError) as error:
                if connection is not None:
                    connection.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle connection: once more, on a new one
                raise PoolError(str(error)) from None
            except TimeoutError:
                if connection is not None:
                    connection.close()
                raise PoolError(f"no answer within {self.timeout_s} s") from None
            if connection.keep_alive and not connection.closed and len(self._idle) < connections_idle_max:
                self._idle.append(connection)
            else:
                connection.close()
            return response
        raise AssertionError("unreachable")

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
