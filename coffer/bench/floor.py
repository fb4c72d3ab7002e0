"""The floor of ``coffer bench load``: the least an HTTP server in Python can do per request.

Job: a node's transfers per second mean little alone on a shared machine; next to what the same
generator gets from a server that does nothing, they say how much of the hardware the node
leaves on the table. The floor app reads the request body and answers a fixed JSON of the size
of a node's reply (a transfer: two account views; a batch: one such result per transfer, every
one 200, so the generator counts ``batch`` transfers per request exactly as against a node).

Method: the app runs in its own process, served by uvicorn with httptools and uvloop (the node's
own server stack) or by granian (for ``coffer bench servers``), on a free loopback port. The
parent starts it with :func:`running`, waits until it answers, and stops it by its handle
(SIGTERM, then SIGKILL) when the load is over. ``python -m coffer.bench.floor`` is that process.
"""

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import httpx
import msgspec

from coffer.http import kept_client
from coffer.processes import stop_process

batch_variable = "COFFER_FLOOR_BATCH"  # transfers per /v1/commands reply (the app's target string takes no arguments)
start_wait_s_max = 60.0  # a node recovering its log may take a while to answer
stop_wait_s_max = 10.0
servers = ("uvicorn", "granian")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _account(number: int) -> dict[str, Any]:
    return {
        "account_id": f"bench-{number}",
        "asset": "BENCH",
        "scale": 2,
        "state": "NORMAL",
        "lower_limit": "0.00",
        "upper_limit": None,
        "available": "999999990.42",
        "reservations": {},
        "pending_in": {},
        "pending_out": {},
        "version": 1234,
        "seq": 123456,
        "metadata": {},
    }


def transfer_reply() -> dict[str, Any]:
    """A node's answer to a transfer, in size and shape."""
    return {"seq": 123456, "log_index": 23456, "accounts": [_account(1234), _account(5678)]}


def replies(batch: int) -> dict[str, bytes]:
    """The fixed answer per path: a transfer, and a batch of ``batch`` transfers (also in MessagePack)."""
    one = transfer_reply()
    results = {"results": [{"status": 200, **one}] * batch}
    return {
        "/v1/transfers": msgspec.json.encode(one),
        "/v1/commands": msgspec.json.encode(results),
        "msgpack /v1/commands": msgspec.msgpack.encode(results),
    }


class FloorApp:
    """The minimal ASGI app: read the whole body, answer the fixed reply of the path."""

    def __init__(self, batch: int) -> None:
        self.replies = replies(batch)
        self.other = b'{"status":"ok"}'

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
        media_type = b"application/json"
        if (b"content-type", b"application/msgpack") in scope["headers"]:
            media_type = b"application/msgpack"
            body = self.replies.get("msgpack " + scope["path"], self.other)
        else:
            body = self.replies.get(scope["path"], self.other)
        headers = [(b"content-type", media_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def app() -> FloorApp:
    """The factory that both servers import: the batch size comes from the environment."""
    return FloorApp(int(os.environ.get(batch_variable, "1000")))


def serve_asgi(target: str, server: str, port: int, host: str = "127.0.0.1") -> None:
    """Serve the app factory ``target`` (``module:function``) on one process until SIGTERM."""
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            target,
            host=host,
            port=port,
            factory=True,
            http="httptools",
            loop="uvloop",
            lifespan="on",
            log_level="warning",
            access_log=False,
        )
        return
    if server == "granian":
        from granian.constants import Interfaces, Loops
        from granian.log import LogLevels
        from granian.server import Server

        Server(
            target,
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            workers=1,
            loop=Loops.uvloop,
            factory=True,
            log_level=LogLevels.warning,
            log_access=False,
            backlog=4096,
        ).serve()
        return
    raise ValueError(f"server is one of {', '.join(servers)}, not {server!r}")


def free_port() -> int:
    """A loopback port nobody listens on now (the child binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running(
    command: list[str], port: int, ready_path: str = "/healthz", environment: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Run ``command`` (a server listening on ``port``) until the block ends; yield its URL."""
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(command, env={**os.environ, **(environment or {})}, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + start_wait_s_max
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(command)} exited with {process.returncode} before serving")
            try:
                if kept_client.client().get(url + ready_path, timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command)} did not answer within {start_wait_s_max:g}s")
            time.sleep(0.1)
        yield url
    finally:
        stop_process(process, stop_wait_s_max)


@contextlib.contextmanager
def floor(batch: int, server: str = "uvicorn") -> Iterator[str]:
    """The floor app served by ``server`` on a free loopback port, for the block; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "coffer.bench.floor", "--server", server, "--port", str(port)]
    with running(command, port, environment={batch_variable: str(batch)}) as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description="serve the floor app of coffer bench load")
    parser.add_argument("--server", choices=servers, default="uvicorn")
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    serve_asgi("coffer.bench.floor:app", arguments.server, arguments.port)


if __name__ == "__main__":
    main()
