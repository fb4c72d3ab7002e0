"""The fault proxy on its own, against an echo server: it forwards, delays, partitions, heals, resets."""

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from coffer.cluster.proxy import FaultProxy
from coffer.ports import free_port

delay_s = 0.3


@pytest.fixture
def echo_port() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve_one(connection: socket.socket) -> None:
        with connection:
            while data := connection.recv(65536):
                connection.sendall(data)

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_one, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    listener.close()


def _round_trip(port: int, payload: bytes, timeout_s: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as connection:
        connection.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_forwards_delays_partitions_heals_and_resets(echo_port: int) -> None:
    with FaultProxy() as proxy:
        link = proxy.add_link("a", free_port(), echo_port)
        payload = bytes(range(256)) * 4096  # 1 MiB: several reads, in order
        assert _round_trip(link.listen_port, payload) == payload

        proxy.delay(["a"], delay_s)
        started = time.monotonic()
        assert _round_trip(link.listen_port, b"late") == b"late"
        assert time.monotonic() - started >= 2 * delay_s  # there and back
        proxy.heal(["a"])

        kept = socket.create_connection(("127.0.0.1", link.listen_port), timeout=1.0)
        kept.sendall(b"before")
        assert kept.recv(100) == b"before"
        proxy.partition(["a"])
        kept.sendall(b"during")
        with pytest.raises(TimeoutError):
            kept.recv(100)  # dropped, and nothing says so: only a timeout tells
        with pytest.raises(TimeoutError):
            _round_trip(link.listen_port, b"new during", timeout_s=0.5)
        assert proxy.faulty == ["a"]
        proxy.heal(["a"])
        assert kept.recv(100) == b""  # it lost bytes: closed at the heal
        kept.close()
        assert _round_trip(link.listen_port, b"after") == b"after"

        open_connection = socket.create_connection(("127.0.0.1", link.listen_port), timeout=1.0)
        open_connection.sendall(b"x")
        assert open_connection.recv(1) == b"x"
        assert proxy.reset(["a"]) == 1
        assert open_connection.recv(1) == b""
        open_connection.close()


def test_the_sink_closes_every_connection() -> None:
    with FaultProxy() as proxy:
        port = free_port()
        proxy.add_sink(port)
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as connection:
            assert connection.recv(1) == b""
