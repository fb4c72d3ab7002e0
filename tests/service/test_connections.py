"""Slowloris against a real ``coffer serve``: idle, half-sent and trickled requests are timed out.

Real sockets to real nodes started with short timeouts (``--idle-timeout-s`` and friends) so that
each case takes seconds; the defaults only differ in their numbers. One node runs with 256 file
descriptors, as ``ulimit -n 256`` would give it: 300 idle sockets must not stop ``/healthz``.
"""

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.raw_http import RawConnection, request_bytes
from tests.service.server_process import CofferServer

idle_timeout_s = 1.0
header_timeout_s = 2.0
body_timeout_s = 2.0
descriptors_max = 256
idle_sockets = 300
closed_wait_s_max = 30.0  # how long the test waits for the server to close what it must close


def _node(tmp_path_factory: pytest.TempPathFactory, *arguments: str, descriptors: int | None = None) -> CofferServer:
    timeouts = ["--idle-timeout-s", str(idle_timeout_s), "--header-timeout-s", str(header_timeout_s)]
    timeouts += ["--body-timeout-s", str(body_timeout_s)]
    node = CofferServer(Path(tmp_path_factory.mktemp("slow")) / "data", arguments=[*timeouts, *arguments], descriptors_max=descriptors)
    node.start()
    return node


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CofferServer]:
    server = _node(tmp_path_factory, descriptors=descriptors_max)
    try:
        yield server
    finally:
        server.stop()


def _closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def _wait_closed(sockets: list[socket.socket]) -> float:
    """Seconds until the server has closed every socket (fails past closed_wait_s_max)."""
    started = time.monotonic()
    while time.monotonic() - started < closed_wait_s_max:
        if all(_closed_by_server(sock) for sock in sockets):
            return time.monotonic() - started
        time.sleep(0.1)
    open_count = sum(not _closed_by_server(sock) for sock in sockets)
    pytest.fail(f"{open_count} of {len(sockets)} sockets still open after {closed_wait_s_max} s")


def _log(node: CofferServer) -> str:
    return node.log_path.read_text(errors="replace")


def _no_errors_logged(node: CofferServer) -> None:
    log = _log(node)
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_idle_sockets_past_the_descriptor_limit_never_starve_healthz(node: CofferServer) -> None:
    sockets = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(idle_sockets)]
    try:
        assert httpx.get(f"{node.url}/healthz", timeout=5.0).status_code == 200
        account_id = f"slow-{uuid.uuid4().hex[:8]}"
        created = httpx.post(f"{node.url}/v1/accounts", json={"account_id": account_id, "asset": "USD", "dedup_id": account_id})
        assert created.status_code == 200, created.text
        _wait_closed(sockets)  # idle past idle_timeout_s, or closed to make room
    finally:
        for sock in sockets:
            sock.close()
    assert httpx.get(f"{node.url}/healthz", timeout=5.0).status_code == 200
    _no_errors_logged(node)


def test_a_request_head_sent_byte_by_byte_gets_408_and_is_closed(node: CofferServer) -> None:
    head = request_bytes(f"127.0.0.1:{node.port}", "GET", "/healthz", headers={"X-Slow": "a" * 100})
    with RawConnection(node.url) as connection:
        started = time.monotonic()
        stop = threading.Event()

        def trickle() -> None:
            for byte in head[:-2]:  # never the final CRLF
                if stop.is_set():
                    return
                try:
                    connection.send(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.05)

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            answer = connection.response()
        finally:
            stop.set()
            sender.join()
        assert answer.status == 408 and answer.json()["error"]["code"] == "INVALID_REQUEST"
        assert time.monotonic() - started < closed_wait_s_max
        assert connection.closed_by_server(wait_s=1.0)


def test_a_connection_that_says_nothing_is_closed(node: CofferServer) -> None:
    with RawConnection(node.url) as connection:
        assert connection.closed_by_server(wait_s=closed_wait_s_max)


def test_a_trickled_body_is_cut_and_never_applied(node: CofferServer) -> None:
    dedup_id = f"trickle-{uuid.uuid4().hex[:8]}"
    body = f'{{"account_id":"{dedup_id}","asset":"USD","dedup_id":"{dedup_id}"}}'.encode()
    with RawConnection(node.url) as connection:
        connection.send(request_bytes(f"127.0.0.1:{node.port}", "POST", "/v1/accounts", body)[: -len(body) + 5])
        deadline = time.monotonic() + closed_wait_s_max
        while not connection.closed_by_server() and time.monotonic() < deadline:
            try:
                connection.send(b" ")  # JSON whitespace, one byte at a time: never the end of the body
            except OSError:
                break
            time.sleep(0.1)
        assert connection.closed_by_server(wait_s=1.0)
    assert httpx.get(f"{node.url}/v1/accounts/{dedup_id}").status_code == 404
    _no_errors_logged(node)


@pytest.mark.parametrize("path", ["/v1/transfers", "/v1/accounts/x/lock", "/admin/log-level"])
def test_a_client_that_hangs_up_mid_body_leaves_no_error_in_the_log(node: CofferServer, path: str) -> None:
    with RawConnection(node.url) as connection:
        connection.send(request_bytes(f"127.0.0.1:{node.port}", "POST", path, b'{"dedup_id":"x"' + b" " * 100)[:-50])
    with RawConnection(node.url) as connection:  # and one that hangs up while its read waits (min_seq ahead)
        connection.send(request_bytes(f"127.0.0.1:{node.port}", "GET", "/v1/accounts/x?min_seq=999999999"))
        time.sleep(0.2)
    time.sleep(0.5)
    assert httpx.get(f"{node.url}/healthz").status_code == 200
    _no_errors_logged(node)


def test_over_the_connection_cap_with_every_connection_busy_is_503_at_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    capped = _node(tmp_path_factory, "--connections-max", "4")
    busy: list[RawConnection] = []
    try:
        for _ in range(4):  # each mid-request: a head sent, its body not yet
            connection = RawConnection(capped.url)
            connection.send(request_bytes(f"127.0.0.1:{capped.port}", "POST", "/v1/transfers", b"{" + b" " * 50 + b"}")[:-10])
            busy.append(connection)
        time.sleep(0.2)
        with RawConnection(capped.url) as refused:
            answer = refused.response()  # written at connect, before any request
            assert answer.status == 503 and answer.headers.get("retry-after") == "1"
            assert answer.json()["error"]["code"] == "NOT_AVAILABLE"
    finally:
        for connection in busy:
            connection.close()
    try:
        assert httpx.get(f"{capped.url}/healthz", timeout=5.0).status_code == 200  # room again
        _no_errors_logged(capped)
    finally:
        capped.stop()
