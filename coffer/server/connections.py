"""The connections of both servers: every one timed out, their number capped, errors in the API's shape.

Job: no client can hold the node (or the query server) by connecting and then not finishing. uvicorn
times out a keep-alive connection only after it has answered a request on it: a connection that
never sends a byte, sends half a request head, or trickles its body a byte at a time is held
forever, each with a file descriptor, until the process runs out and cannot accept ``/healthz``.

Method: :func:`protocol_class` makes a subclass of uvicorn's httptools protocol with one timer per
connection, re-armed at each phase of a request:

- idle (connected, or a response sent on a keep-alive connection): the next request must begin
  within ``idle_timeout_s``, else the connection is closed;
- head (from the first byte of a request): the request line and headers must be complete within
  ``header_timeout_s`` and ``header_bytes_max``, else ``408`` / ``431`` and close;
- body (after the head): the body must be complete within ``body_timeout_s``, else the connection
  is closed and the handler sees a disconnect (half a body is never decoded);
- then the application runs with its own bounds (a write waits at most ``submit_wait_s_max``).

The number of open connections is capped at ``connections_max``, itself kept below the process's
file descriptor limit less ``descriptors_reserved``. A connection over the cap makes room by
closing the longest-idle connection; if every connection is busy with a request, it is refused at
once with ``503 NOT_AVAILABLE`` and ``Retry-After``. So idle sockets, however many, never stop a
real request from being served.

Admission control (:mod:`coffer.server.admission`) is done here too: a POST takes a place in the
node's bounded queue of write requests as soon as its head is parsed, and gives it back when its
handler ends; when the queue is full it is answered ``503`` at once by a tiny application instead
of the node's, so that refusing costs a small fraction of serving (a refusal that cost as much as
an answer would shed no load).

Answers the protocol writes itself (a malformed request, a timeout, the cap, overload) have the
API's error shape ``{"error": {"code", "message"}}`` like every other answer.
"""

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from coffer.core.errors import ErrorCode
from coffer.server.admission import Admission

logger = logging.getLogger(__name__)

idle_timeout_s = 5.0  # a fresh or keep-alive connection with no request; clients reconnect in a millisecond
header_timeout_s = 10.0  # a request head is a few hundred bytes: ten seconds is a slow link, not a slow client
header_bytes_max = 64 * 1024  # request line and headers; ours need a few hundred bytes
body_timeout_s = 30.0  # the largest body (16 MiB) at 0.5 MiB/s; an API client on a sane network sends it in ms
connections_max_default = 4096  # beyond this a node is better served by a second node than by more sockets
descriptors_reserved = 64  # files, WAL, event store, snapshot, threads, listener: kept for the process itself
retry_after_s = 1


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    idle_timeout_s: float = idle_timeout_s
    header_timeout_s: float = header_timeout_s
    header_bytes_max: int = header_bytes_max
    body_timeout_s: float = body_timeout_s
    connections_max: int = connections_max_default


def descriptor_limit() -> int:
    """The soft limit on open file descriptors of this process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connections_cap(connections_max: int = connections_max_default) -> int:
    """``connections_max``, lowered to fit the file descriptor limit (at least 1)."""
    return max(1, min(connections_max, descriptor_limit() - descriptors_reserved))


def error_response_bytes(status: int, message: str, close: bool = True) -> bytes:
    """A complete HTTP/1.1 answer in the API's error shape, written by the protocol itself."""
    code = ErrorCode.NOT_AVAILABLE if status == 503 else ErrorCode.INVALID_REQUEST
    body = msgspec.json.encode({"error": {"code": code, "message": message}})
    head = [STATUS_LINE[status], b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body)]
    if status == 503:
        head.append(b"retry-after: %d\r\n" % retry_after_s)
    if close:
        head.append(b"connection: close\r\n")
    return b"".join(head) + b"\r\n" + body


_overloaded_message = "overloaded: the write queue is full; retry later"
_overloaded_body = msgspec.json.encode({"error": {"code": ErrorCode.NOT_AVAILABLE, "message": _overloaded_message}})
_overloaded_start = {
    "type": "http.response.start",
    "status": 503,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(_overloaded_body)),
        (b"retry-after", b"%d" % retry_after_s),
    ],
}


async def _overloaded(scope: Any, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
    # The body is never read: uvicorn discards it once the answer is complete.
    await send(_overloaded_start)
    await send({"type": "http.response.body", "body": _overloaded_body})


class _Admitted:
    """The application of one admitted write request: it gives its place back when it ends."""

    __slots__ = ("admission", "app", "released")

    def __init__(self, app: Any, admission: Admission) -> None:
        self.app = app
        self.admission = admission
        self.released = False

    async def __call__(self, scope: Any, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            self.release()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.leave()


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the timers and the cap of the module docstring."""

    limits: ClassVar[ConnectionLimits]
    idle: ClassVar[dict["GuardedProtocol", None]]  # idle connections, longest idle first
    admission: ClassVar[Admission | None] = None  # the node's write queue; None: no admission control

    def __init__(self, *arguments: Any, **options: Any) -> None:
        super().__init__(*arguments, **options)
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._head_bytes = 0
        self._requests_open = 0  # begun and not yet answered (pipelining may put several here)
        self._refusing = False  # the current request is refused: its body is dropped, then 503

    # -------------------------------------------------------------------------------- timers

    def _arm(self, delay_s: float, callback: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _become_idle(self) -> None:
        self.idle.pop(self, None)
        self.idle[self] = None
        self._arm(self.limits.idle_timeout_s, self._close)

    def _close(self) -> None:
        self.idle.pop(self, None)
        if not self.transport.is_closing():
            self.transport.close()

    def _answer_and_close(self, status: int, message: str) -> None:
        self.idle.pop(self, None)
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(error_response_bytes(status, message))
            self.transport.close()

    def _head_too_slow(self) -> None:
        self._answer_and_close(408, f"the request head did not arrive within {self.limits.header_timeout_s:g} s")

    def _body_too_slow(self) -> None:
        # The handler is running and waits for the body: closing ends its wait as a disconnect.
        logger.info("closing a connection whose request body did not arrive within %g s", self.limits.body_timeout_s)
        self._close()

    # ---------------------------------------------------------------------- protocol events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._become_idle()
        if len(self.connections) > self.limits.connections_max:
            self._make_room()

    def _make_room(self) -> None:
        for other in self.idle:
            if other is not self:
                other._close()  # the longest idle; it may reconnect when it has something to say
                return
        self._answer_and_close(503, f"this server holds its maximum of {self.limits.connections_max} connections")

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle.pop(self, None)
        self._disarm()
        for _, app in self.pipeline:  # pipelined requests that will never run
            if isinstance(app, _Admitted):
                app.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._requests_open == 0 and not self._in_head:
            self.idle.pop(self, None)
            self._arm(self.limits.header_timeout_s, self._head_too_slow)  # even before the parser sees a request
        super().data_received(data)
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.header_bytes_max:
                self._answer_and_close(431, f"the request head is larger than {self.limits.header_bytes_max} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.idle.pop(self, None)
        self._requests_open += 1
        self._in_head = True
        self._head_bytes = 0
        self._arm(self.limits.header_timeout_s, self._head_too_slow)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.limits.body_timeout_s, self._body_too_slow)
        admission = type(self).admission
        if admission is None or self.parser.get_method() != b"POST":
            super().on_headers_complete()
            return
        if not admission.try_enter():
            if self.cycle is None or (self.cycle.response_complete and not self.pipeline):
                # Nothing else in flight here: answer from the protocol itself, without the
                # request/response machinery (a third of what an answer costs); see on_message_complete.
                self._refusing = True
                return
            refused_app: Any = _overloaded  # pipelined behind another: answers must keep their order
        else:
            refused_app = None
        # uvicorn runs self.app for the request whose head is complete: swap in this request's own.
        app = self.app
        self.app = refused_app or _Admitted(app, admission)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_body(self, body: bytes) -> None:
        if not self._refusing:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if self._refusing:
            self._refusing = False
            self._requests_open = max(0, self._requests_open - 1)
            keep_alive = self.parser.should_keep_alive()
            self.transport.write(error_response_bytes(503, _overloaded_message, close=not keep_alive))
            if keep_alive:
                self._become_idle()
            else:
                self._close()
            return
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._requests_open = max(0, self._requests_open - 1)
        super().on_response_complete()  # also arms uvicorn's keep-alive timer: the same idle_timeout_s
        if self._requests_open == 0 and not self.transport.is_closing():
            self._become_idle()

    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(400, msg)


def protocol_class(limits: ConnectionLimits, admission: Admission | None = None) -> type[GuardedProtocol]:
    """A protocol class for one server: its limits, its own registry of idle connections, and the
    admission control of its writes (None: every write goes to the application)."""
    return type("CofferHttpProtocol", (GuardedProtocol,), {"limits": limits, "idle": {}, "admission": admission})


def server_config(
    app: Any,
    host: str,
    port: int,
    log_level: str,
    limits: ConnectionLimits,
    admission: Admission | None = None,
    **options: Any,
) -> uvicorn.Config:
    """The uvicorn configuration both servers run with: uvloop, httptools, the guarded protocol."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol_class(limits, admission),
        timeout_keep_alive=int(limits.idle_timeout_s),
        access_log=False,
        log_level=log_level.lower(),
        **options,
    )
