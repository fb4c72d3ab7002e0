"""HTTP/1.1 over a plain socket, for tests that need bytes no client library would send.

A :class:`RawConnection` sends any request bytes (invalid UTF-8, half a header, a trickled body)
and reads one response at a time, so a test can also tell whether the server kept the connection.
"""

import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

read_timeout_s = 10.0  # any answer of an idle test server comes in milliseconds


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    def __init__(self, url: str, timeout_s: float = read_timeout_s) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self.host = f"{parts.hostname}:{parts.port}"
        self.socket = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
        self._buffer = b""

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(self, method: str, target: str | bytes, body: bytes | None = None, headers: dict[str, str] | None = None) -> RawResponse:
        self.send(request_bytes(self.host, method, target, body, headers))
        return self.response()

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def _read_more(self) -> None:
        chunk = self.socket.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buffer += chunk

    def response(self) -> RawResponse:
        while b"\r\n\r\n" not in self._buffer:
            self._read_more()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            self._read_more()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return RawResponse(int(status_line.split()[1]), headers, body)

    def closed_by_server(self, wait_s: float = 0.0) -> bool:
        """True when the server has closed its side (reading gives end of file or a reset)."""
        self.socket.settimeout(wait_s if wait_s > 0 else 0.001)
        try:
            return self.socket.recv(1, socket.MSG_PEEK) == b""
        except TimeoutError:
            return False
        except BlockingIOError:
            return False
        except ConnectionError:
            return True
        finally:
            self.socket.settimeout(read_timeout_s)


def request_bytes(
    host: str, method: str, target: str | bytes, body: bytes | None = None, headers: dict[str, str] | None = None
) -> bytes:
    target_bytes = target if isinstance(target, bytes) else target.encode()
    lines = [method.encode() + b" " + target_bytes + b" HTTP/1.1", b"Host: " + host.encode()]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}".encode())
    if body is not None:
        if not any(name.lower() == "content-type" for name in headers or {}):
            lines.append(b"Content-Type: application/json")
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
